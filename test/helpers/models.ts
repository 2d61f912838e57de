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

/**
 * Every tensor of a (small) delta folder, either layout, each in its plain-layout dtype. Compact chunks are
 * decoded by the codec and widened here element by element with the reference helpers (widening is exact),
 * independently of `convert`; for tests only.
 */
export async function loadDelta(dir: string): Promise<Map<string, LoadedTensor>> {
  const { readFile } = await import('node:fs/promises');
  const { DELTA_LAYOUT, DELTA_MANIFEST, parseDeltaManifest } = await import('../../lib/ops/manifest.js');
  const m = parseDeltaManifest(await readFile(path.join(dir, DELTA_MANIFEST), 'utf8'), dir);
  if (m.layout === 'safetensors') return loadTensors(dir, DELTA_LAYOUT);
  const { CompactShard } = await import('../../lib/codec/reader.js');
  const { CodecPool } = await import('../../lib/codec/pool.js');
  const { chunkBound } = await import('../../lib/codec/format.js');
  const { readElement, writeElement } = await import('../../lib/kernels/index.js');
  const { dtypeSize } = await import('../../lib/format/dtype.js');
  const pool = new CodecPool(0);
  const out = new Map<string, LoadedTensor>();
  for (const s of m.shards) {
    const src = await new LocalStore(dir).openRead(s.file);
    try {
      const shard = await CompactShard.open(src);
      for (const t of shard.tensors.values()) {
        const raw = new Uint8Array(t.elements * 8);
        const frames = new Uint8Array(Math.max(1, t.chunks.length) * chunkBound(shard.chunkElements));
        const pieces = await shard.read(t, 0, t.elements, frames, raw, pool);
        const bytes = Buffer.alloc(t.elements * dtypeSize(t.dtype));
        for (const p of pieces) {
          const size = dtypeSize(p.dtype);
          if (p.dtype === t.dtype) bytes.set(raw.subarray(p.byteOffset, p.byteOffset + p.n * size), p.start * size);
          else for (let i = 0; i < p.n; i++) writeElement(t.dtype, bytes, p.start + i, readElement(p.dtype, raw.subarray(p.byteOffset), i));
        }
        out.set(t.name, { dtype: t.dtype, shape: t.shape, bytes });
      }
    } finally {
      await src.close();
    }
  }
  return out;
}
