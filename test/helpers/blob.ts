import { mkdir, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { ContainerClient } from '@azure/storage-blob';

/** Uploads a local folder's files under `prefix`, in the given order of names (others after). */
export async function uploadFolder(container: ContainerClient, prefix: string, dir: string, first: string[] = []): Promise<void> {
  await container.createIfNotExists();
  const files = (await readdir(dir)).sort((a, b) => {
    const ia = first.indexOf(a);
    const ib = first.indexOf(b);
    return (ia < 0 ? 1e9 : ia) - (ib < 0 ? 1e9 : ib) || a.localeCompare(b);
  });
  for (const f of files) await container.getBlockBlobClient(`${prefix}/${f}`).uploadFile(path.join(dir, f));
}

/** Downloads every blob directly under `prefix` into `dir`. */
export async function downloadFolder(container: ContainerClient, prefix: string, dir: string): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const names: string[] = [];
  for await (const b of container.listBlobsByHierarchy('/', { prefix: `${prefix}/` })) {
    if (b.kind !== 'blob') continue;
    const file = b.name.slice(prefix.length + 1);
    await writeFile(path.join(dir, file), await container.getBlobClient(b.name).downloadToBuffer());
    names.push(file);
  }
  return names.sort();
}

export async function listNames(container: ContainerClient, prefix: string): Promise<string[]> {
  const names: string[] = [];
  for await (const b of container.listBlobsFlat({ prefix: `${prefix}/` })) names.push(b.name.slice(prefix.length + 1));
  return names.sort();
}
