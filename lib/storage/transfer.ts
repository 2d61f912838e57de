// Moving a whole checkpoint or delta folder between stores (upload to blob storage, download from
// it), streaming in bounded memory, with the completion marker last so a watcher sees it complete once.
import { InputError } from '../errors.js';
import { LocalStore } from './local.js';
import type { FileStat, Store } from './types.js';

/** What a download leaves in a local folder (written first): the source it holds, so a rerun may resume or refresh it. */
export const DOWNLOAD_TAG = '.paramdelta-download.json';
const DOWNLOAD_FORMAT = 'paramdelta.download';
/** LocalStore's temporary names (a write cut short leaves one behind). */
const TEMPORARY = /\.partial-[0-9a-f]{8}$/;

/** Files whose arrival marks a folder complete, most specific first (see checkpointCompleteness, openDelta). */
const MARKERS = ['delta.json', 'model.safetensors.index.json', 'pytorch_model.bin.index.json', 'model.safetensors', 'pytorch_model.bin'] as const;
const INDEXES = new Set<string>(['model.safetensors.index.json', 'pytorch_model.bin.index.json', 'delta.safetensors.index.json']);

export interface TransferPlan {
  from: string;
  to: string;
  /** Every file to consider, the marker last. */
  files: { file: string; size: number }[];
  marker: string;
  bytes: number;
}

export interface TransferResult {
  sent: string[];
  skipped: string[];
  bytes: number;
}

async function shardsNamedBy(from: Store, index: string): Promise<string[]> {
  let json: unknown;
  try {
    json = JSON.parse(await from.readText(index));
  } catch (e) {
    throw new InputError(`${from.ref}/${index}: not valid JSON (${(e as Error).message})`);
  }
  const map = (json as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== 'object' || map === null) throw new InputError(`${from.ref}/${index}: field "weight_map" is missing`);
  return [...new Set(Object.values(map as Record<string, unknown>).map(String))];
}

/**
 * Checks that `from` holds a whole checkpoint or delta (every shard its index or manifest names)
 * before anything is sent, and orders its files with the completion marker last.
 */
export async function planTransfer(from: Store, to: Store): Promise<TransferPlan> {
  const present = new Set(await from.list());
  const marker = MARKERS.find((m) => present.has(m));
  if (!marker) {
    throw new InputError(`${from.ref}: holds no ${MARKERS.join(', ')}; not a checkpoint or delta folder`);
  }
  const needed = new Set<string>();
  for (const index of INDEXES) if (present.has(index)) for (const s of await shardsNamedBy(from, index)) needed.add(s);
  if (marker === 'delta.json') {
    const manifest = JSON.parse(await from.readText(marker)) as { shards?: { file: string }[]; files?: { file: string }[] };
    for (const s of [...(manifest.shards ?? []), ...(manifest.files ?? [])]) needed.add(s.file);
  }
  const missing = [...needed].filter((f) => !present.has(f)).sort();
  if (missing.length) throw new InputError(`${from.ref}: incomplete, nothing was sent: missing ${missing.join(', ')}`);

  const files: TransferPlan['files'] = [];
  for (const file of [...present].filter((f) => f !== marker && !f.startsWith('.')).sort().concat(marker)) {
    const src = await from.openRead(file);
    files.push({ file, size: src.size });
    await src.close();
  }
  return { from: from.ref, to: to.ref, files, marker, bytes: files.reduce((a, f) => a + f.size, 0) };
}

function listed(names: string[]): string {
  const shown = names.slice(0, 5).join(', ');
  return names.length > 5 ? `${shown} and ${names.length - 5} more` : shown;
}

/** The files a local folder's download tag lists, when it is a download of `source`; otherwise null. */
async function taggedFiles(to: Store, source: string): Promise<string[] | null> {
  try {
    const tag = JSON.parse(await to.readText(DOWNLOAD_TAG)) as { format?: unknown; source?: unknown; files?: unknown };
    if (tag?.format !== DOWNLOAD_FORMAT || tag.source !== source) return null;
    return Array.isArray(tag.files) ? tag.files.map(String) : [];
  } catch {
    return null;
  }
}

/**
 * Where a transfer may write, checked before anything is sent; nothing is ever deleted. A blob
 * prefix may hold only files of this folder (an earlier or interrupted upload of it). A local
 * folder must be new, empty, or an earlier download of the same source (its DOWNLOAD_TAG says so,
 * and it holds only that source's files); the tag is written first. `force` writes into any other
 * folder anyway, replacing only files of the same names, and leaves no tag there.
 */
export async function prepareDestination(plan: TransferPlan, to: Store, opts: { force?: boolean; label?: string } = {}): Promise<void> {
  const label = opts.label ?? to.ref;
  const planned = new Set(plan.files.map((f) => f.file));
  const local = to instanceof LocalStore;
  const names = await to.list().catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw e;
  });
  const folders = names === null ? [] : (await to.listFolders()).map((f) => `${f}/`);
  const tagged = local && names?.includes(DOWNLOAD_TAG) ? await taggedFiles(to, plan.from) : null;
  const allowed = new Set([...planned, ...(tagged ?? []), ...(tagged ? [DOWNLOAD_TAG] : [])]);
  const foreign = [...(names ?? []).filter((n) => !allowed.has(n.replace(TEMPORARY, ''))), ...folders];
  if (foreign.length && !opts.force) {
    throw new InputError(
      local
        ? `${label}: holds ${listed(foreign)}, and is not an earlier download of ${plan.from}; download into a new or empty folder, or pass --force to write into it anyway (files of the same names are replaced, nothing is deleted)`
        : `${label}: holds ${listed(foreign)}, which ${plan.from} does not have; upload into an empty prefix, or pass --force to send into it anyway (files of the same names are replaced, nothing is deleted)`,
    );
  }
  const fresh = names === null || (names.length === 0 && folders.length === 0);
  if (local && (fresh || tagged)) {
    // Files of an earlier version of the source stay listed: they are still this download's.
    const tag = { format: DOWNLOAD_FORMAT, source: plan.from, files: [...new Set([...(tagged ?? []), ...planned])].sort() };
    await to.writeFile(DOWNLOAD_TAG, JSON.stringify(tag, null, 2) + '\n');
  }
}

/** Whether `to` already has this file: same size and, where both sides know it, the same MD5. */
async function alreadyThere(from: Store, to: Store, file: string, size: number): Promise<boolean> {
  const sized: FileStat | null = (await to.stat?.(file)) ?? null;
  if (!sized || sized.size !== size) return false;
  const there = sized.md5 ? sized : await to.stat?.(file, { md5: true });
  const here = there?.md5 ? await from.stat?.(file, { md5: true }) : null;
  return !!here?.md5 && here.md5 === there?.md5;
}

/** Copies one file through a sink, reading the next chunk while the last one is written. */
async function copyFile(from: Store, to: Store, file: string, chunkBytes: number, onProgress?: (bytes: number) => void): Promise<void> {
  const src = await from.openRead(file);
  const sink = await to.createShard(file, 0, undefined, { md5: true });
  const bufs = [new Uint8Array(Math.min(chunkBytes, Math.max(1, src.size))), new Uint8Array(Math.min(chunkBytes, Math.max(1, src.size)))];
  try {
    let writing: Promise<void> = Promise.resolve();
    for (let off = 0, i = 0; off < src.size; off += chunkBytes, i ^= 1) {
      const n = Math.min(chunkBytes, src.size - off);
      const data = await src.read(off, n, bufs[i]);
      await writing; // the other buffer is free again
      writing = sink.write(data).then(() => onProgress?.(n));
    }
    await writing;
    await sink.commit(new Uint8Array(0));
  } catch (e) {
    await sink.abort().catch(() => undefined);
    throw e;
  } finally {
    await src.close();
  }
}

/**
 * Sends every planned file that `to` lacks (all of them with `force`), the marker last; when any
 * other file was sent the marker is sent again too, so whoever watches for it sees the new whole.
 */
export async function transfer(
  plan: TransferPlan,
  from: Store,
  to: Store,
  opts: { force?: boolean; chunkBytes?: number; onProgress?: (bytes: number) => void } = {},
): Promise<TransferResult> {
  const chunk = opts.chunkBytes ?? 8 << 20;
  const result: TransferResult = { sent: [], skipped: [], bytes: 0 };
  for (const { file, size } of plan.files) {
    const isMarker = file === plan.marker;
    if (!opts.force && !(isMarker && result.sent.length > 0) && (await alreadyThere(from, to, file, size))) {
      result.skipped.push(file);
      opts.onProgress?.(size);
      continue;
    }
    await copyFile(from, to, file, chunk, opts.onProgress);
    result.sent.push(file);
    result.bytes += size;
  }
  return result;
}
