import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { BlobServiceClient } from '@azure/storage-blob';
import { loadTensors, localEnv, withTempDir, writeCheckpoint } from './helpers/models.js';
import { downloadFolder } from './helpers/blob.js';
import { decodeFloats, encodeFloats, roundTo } from './helpers/floats.js';
import { startAzurite, type Azurite } from '../cli/host/azurite.js';
import { prepareCompute, executeComputeShard, finalizeCompute } from '../lib/ops/compute.js';
import { DELTA_LAYOUT } from '../lib/ops/manifest.js';
import { LocalStore } from '../lib/storage/local.js';
import { BlobStore } from '../lib/storage/blob.js';
import type { Store } from '../lib/storage/types.js';

/**
 * A large tensor (more than one chunk) is streamed in F32 first, its dtype only known at its end; when
 * BF16 holds every delta it is written again in BF16, cutting the shard back with `truncate` (and when
 * only F64 does, written again in F64). The output must hold each tensor once, in its smallest exact dtype.
 */
const CHUNK_BUFFER = 1 << 16; // 4096-element chunks for BF16 inputs
const N = 64 * 128; // two chunks

const bf16 = (xs: number[]) => encodeFloats('BF16', xs);
// Base values: exact in BF16, mixed signs and binades.
const baseValues = Array.from({ length: N }, (_, i) => (i % 2 ? -1 : 1) * (1 + (i % 128) / 128) * 2 ** ((i % 7) - 3));

function family() {
  const twice = baseValues.map((x, i) => (i % 3 === 0 ? 2 * x : x)); // Δ ∈ {0, x}: BF16 holds it
  const f32 = baseValues.map((x, i) => (i % 5 === 0 ? 3 : x)); // 3 − x needs up to 12 bits: F32
  const f64 = baseValues.map((x, i) => (i === N - 1 ? 2 ** -40 : x)); // 2^-40 − x needs ~40 bits: F64
  const small = [0.5, 1, 1.5, 2];
  const base = [
    { name: 'a.small', dtype: 'BF16', shape: [4], bytes: bf16(small) },
    { name: 'b.shrink', dtype: 'BF16', shape: [64, 128], bytes: bf16(baseValues) },
    { name: 'c.keep', dtype: 'BF16', shape: [64, 128], bytes: bf16(baseValues) },
    { name: 'd.grow', dtype: 'BF16', shape: [64, 128], bytes: bf16(baseValues) },
  ];
  const post = [
    { ...base[0], bytes: bf16([0.5, 1, 1.75, 2]) },
    { ...base[1], bytes: bf16(twice) },
    { ...base[2], bytes: bf16(f32) },
    { ...base[3], bytes: bf16(f64) },
  ];
  return { base, post };
}

/** The delta each tensor must get: post − base in float64, in the smallest of BF16, F32, F64 that holds it all. */
function expectedDelta(base: Map<string, { bytes: Buffer }>, post: Map<string, { bytes: Buffer }>): Map<string, { dtype: string; bytes: Uint8Array }> {
  const out = new Map<string, { dtype: string; bytes: Uint8Array }>();
  for (const [name, b] of base) {
    const x = decodeFloats('BF16', b.bytes);
    const y = decodeFloats('BF16', post.get(name)!.bytes);
    const d = y.map((v, i) => v - x[i]);
    const dtype = (['BF16', 'F32', 'F64'] as const).find((t) => d.every((v) => roundTo(t, v) === v))!;
    out.set(name, { dtype, bytes: encodeFloats(dtype, d) });
  }
  return out;
}

/** Wraps a store's shards to record each truncate and how much had been written before it. */
function recordTruncates(store: Store, log: { to: number; written: number }[]): Store {
  const create = store.createShard.bind(store);
  store.createShard = async (...args) => {
    const sink = await create(...args);
    let written = 0;
    const write = sink.write.bind(sink);
    const truncate = sink.truncate.bind(sink);
    sink.write = (data) => {
      written += data.length;
      return write(data);
    };
    sink.truncate = async (length) => {
      log.push({ to: length, written });
      written = length;
      return truncate(length);
    };
    return sink;
  };
  return store;
}

async function computeInto(tmp: string, out: Store): Promise<{ truncates: { to: number; written: number }[]; shards: { file: string; sha256: string }[] }> {
  const { base, post } = family();
  await writeCheckpoint(path.join(tmp, 'base'), base);
  await writeCheckpoint(path.join(tmp, 'post'), post);
  const env = { ...localEnv, bufferBytes: CHUNK_BUFFER };
  const truncates: { to: number; written: number }[] = [];
  const plan = await prepareCompute(env, path.join(tmp, 'base'), path.join(tmp, 'post'), { shardSize: 5e9, format: 'safetensors' } /* the plain layout's redo: compact recomputes chunks in memory */);
  const sink = recordTruncates(out, truncates);
  const results = [];
  for (let i = 0; i < plan.shards.length; i++) results.push(await executeComputeShard(plan, i, env, sink));
  const manifest = await finalizeCompute(plan, results, env, out);
  return { truncates, shards: manifest.shards };
}

async function expectExact(tmp: string, deltaDir: string, shards: { file: string; sha256: string }[]): Promise<void> {
  const want = expectedDelta(await loadTensors(path.join(tmp, 'base')), await loadTensors(path.join(tmp, 'post')));
  expect([...want.values()].map((t) => t.dtype)).toEqual(['BF16', 'BF16', 'F32', 'F64']);
  // loadTensors re-reads every header, which refuses a file longer than its tensors.
  const got = await loadTensors(deltaDir, DELTA_LAYOUT);
  expect([...got.keys()]).toEqual([...want.keys()]);
  for (const [name, w] of want) {
    expect(got.get(name)!.dtype, name).toBe(w.dtype);
    expect(got.get(name)!.bytes.equals(Buffer.from(w.bytes)), name).toBe(true);
  }
  for (const s of shards) {
    expect(createHash('sha256').update(await readFile(path.join(deltaDir, s.file))).digest('hex'), s.file).toBe(s.sha256);
  }
}

describe('a dtype redo cuts the shard back with truncate', () => {
  it('on a local shard', () =>
    withTempDir(async (tmp) => {
      const { truncates, shards } = await computeInto(tmp, new LocalStore(path.join(tmp, 'delta')));
      // b.shrink and d.grow were each written again; the cut went back to where the tensor began.
      expect(truncates).toHaveLength(2);
      expect(truncates[0]).toEqual({ to: 4 * 2, written: 4 * 2 + N * 4 });
      expect(truncates[1]).toEqual({ to: 4 * 2 + N * 2 + N * 4, written: 4 * 2 + N * 2 + N * 4 + N * 4 });
      await expectExact(tmp, path.join(tmp, 'delta'), shards);
    }));

  describe('on a blob shard (Azurite)', () => {
    let azurite: Azurite;
    beforeAll(async () => {
      azurite = await startAzurite();
    });
    afterAll(async () => {
      await azurite?.stop();
    });

    it('drops the staged blocks past the cut', () =>
      withTempDir(async (tmp) => {
        const container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient('deltas');
        await container.createIfNotExists();
        const { truncates, shards } = await computeInto(tmp, new BlobStore(container, 'redo'));
        expect(truncates.map((t) => t.to)).toEqual([4 * 2, 4 * 2 + N * 2 + N * 4]);
        await downloadFolder(container, 'redo', path.join(tmp, 'got'));
        await expectExact(tmp, path.join(tmp, 'got'), shards);
      }));
  });
});
