import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { openCheckpoint, MODEL_LAYOUT, type CheckpointLayout } from '../../lib/format/checkpoint.js';
import { LocalStore } from '../../lib/storage/local.js';
import type { ExecEnv } from '../../lib/ops/env.js';

export const localEnv: ExecEnv = { resolve: (ref) => new LocalStore(ref) };

export interface LoadedTensor {
  dtype: string;
  shape: number[];
  bytes: Buffer;
}

/** Every tensor of a (small) checkpoint folder, by name; for tests only. */
export async function loadTensors(dir: string, layout: CheckpointLayout = MODEL_LAYOUT): Promise<Map<string, LoadedTensor>> {
  const ckpt = await openCheckpoint(new LocalStore(dir), layout);
  const out = new Map<string, LoadedTensor>();
  for (const t of ckpt.tensors) {
    const src = await ckpt.store.openRead(t.file);
    try {
      out.set(t.name, { dtype: t.dtype, shape: t.shape, bytes: Buffer.from(await src.read(t.offset, t.byteLength)) });
    } finally {
      await src.close();
    }
  }
  return out;
}

export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(path.join(tmpdir(), 'paramdelta-test-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Writes a single-file checkpoint (model.safetensors) from in-memory tensors; for tests only. */
export async function writeCheckpoint(
  dir: string,
  tensors: { name: string; dtype: string; shape: number[]; bytes: Uint8Array }[],
  extraFiles: Record<string, string> = {},
): Promise<void> {
  const { mkdir, writeFile } = await import('node:fs/promises');
  const { encodeHeader } = await import('../../lib/format/safetensors.js');
  await mkdir(dir, { recursive: true });
  const prefix = encodeHeader(tensors as never, { format: 'pt' }).bytes;
  await writeFile(path.join(dir, 'model.safetensors'), Buffer.concat([prefix, ...tensors.map((t) => t.bytes)]));
  for (const [f, text] of Object.entries(extraFiles)) await writeFile(path.join(dir, f), text);
}
