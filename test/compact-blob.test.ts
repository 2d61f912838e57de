import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import path from 'node:path';
import { readFile } from 'node:fs/promises';
import type { BlobServiceClient } from '@azure/storage-blob';
import { startAzurite, type Azurite } from '../cli/host/azurite.js';
import { blobServiceFromConnectionString } from '../lib/storage/azure.js';
import { blobResolver, ensureContainers } from '../lib/storage/blob.js';
import type { ByteSource, Store } from '../lib/storage/types.js';
import { runCompute } from '../lib/ops/run.js';
import { prepareApply, executeApplyShard } from '../lib/ops/apply.js';
import { localOutput } from '../lib/storage/output.js';
import { BLOB_SLOTS, type ExecEnv } from '../lib/ops/env.js';
import { openCheckpoint } from '../lib/format/checkpoint.js';
import { LocalStore } from '../lib/storage/local.js';
import { fixturesDir } from './helpers/fixtures.js';
import { loadTensors, localEnv, withTempDir } from './helpers/models.js';
import { uploadFolder } from './helpers/blob.js';

const F32 = path.join(fixturesDir, 'tiny-llama-f32');
let azurite: Azurite;
let service: BlobServiceClient;

beforeAll(async () => {
  azurite = await startAzurite();
  service = blobServiceFromConnectionString(azurite.connectionString);
  await ensureContainers(service, ['models', 'deltas', 'posted-models']);
});
afterAll(async () => {
  await azurite?.stop();
});

/** A resolver whose byte sources count what they read, and what they are told will be read (fetched ahead), per file. */
function countingResolver(inner: (ref: string) => Store, counts: Map<string, number>, declared = new Map<string, number>()): (ref: string) => Store {
  return (ref) => {
    const store = inner(ref);
    return Object.assign(Object.create(store) as Store, {
      openRead: async (file: string): Promise<ByteSource> => {
        const src = await store.openRead(file);
        return {
          name: src.name,
          size: src.size,
          read: (offset: number, length: number, into?: Uint8Array) => {
            counts.set(file, (counts.get(file) ?? 0) + length);
            return src.read(offset, length, into);
          },
          expect: (offset: number, length: number) => {
            declared.set(file, (declared.get(file) ?? 0) + length);
            src.expect?.(offset, length);
          },
          close: () => src.close(),
        };
      },
    });
  };
}

describe('a compact delta in blob storage', () => {
  it('is read with ranged reads: one output shard downloads its own tensors\' chunks and the shard header, nothing else', () =>
    withTempDir(async (tmp) => {
      const delta = path.join(tmp, 'delta');
      await runCompute(localEnv, { base: path.join(F32, 'base'), post: path.join(F32, 'post'), shardSize: 5e9, format: 'compact', chunkElements: 4096 }, () => localOutput(delta));
      await uploadFolder(service.getContainerClient('deltas'), 'ranged', delta);
      await uploadFolder(service.getContainerClient('models'), 'ranged/newbase', path.join(F32, 'newbase'));

      const counts = new Map<string, number>();
      const declared = new Map<string, number>();
      const env: ExecEnv = { resolve: countingResolver(blobResolver(service, ['models', 'deltas', 'posted-models']), counts, declared), slots: BLOB_SLOTS };
      const plan = await prepareApply(env, 'models/ranged/newbase', [{ ref: 'deltas/ranged' }], { shardSize: 120_000 });
      expect(plan.shards.length).toBeGreaterThan(3);
      const index = 2;
      counts.clear();
      declared.clear();
      const out = env.resolve('posted-models/ranged');
      await executeApplyShard(plan, index, env, out);

      // What that shard needs, from the delta shard's own trailer and header, parsed here by hand.
      const file = 'delta-00001-of-00001.pdelta';
      const bytes = await readFile(path.join(delta, file));
      const headerOffset = Number(bytes.readBigUInt64LE(bytes.length - 24));
      const headerLength = Number(bytes.readBigUInt64LE(bytes.length - 16));
      const header = JSON.parse(bytes.subarray(headerOffset, headerOffset + headerLength).toString('utf8'));
      const wanted = new Set(plan.shards[index].tensors.map((t) => t.name));
      let frames = 0;
      for (const t of header.tensors) {
        if (wanted.has(t.name)) for (const [, , lengths] of t.chunks) frames += lengths.reduce((a: number, b: number) => a + b, 0);
      }
      expect(frames).toBeGreaterThan(0);
      expect(counts.get(file)).toBe(24 + headerLength + frames);
      // Read-ahead windows fetch only declared bytes (test/readahead.test.ts): exactly those chunks' frames.
      expect(declared.get(file)).toBe(frames);
      expect(counts.get(file)).toBeLessThan(bytes.length / 2);

      // And the shard holds the expected tensors, byte for byte.
      const local = path.join(tmp, 'shard');
      const { mkdir, writeFile } = await import('node:fs/promises');
      await mkdir(local);
      const shardFile = plan.shards[index].file;
      await writeFile(path.join(local, 'model.safetensors'), await service.getContainerClient('posted-models').getBlobClient(`ranged/${shardFile}`).downloadToBuffer());
      const got = await openCheckpoint(new LocalStore(local));
      const want = await loadTensors(path.join(F32, 'expected/apply-post-1.0'));
      const gotTensors = await loadTensors(local);
      expect(got.tensors.map((t) => t.name)).toEqual([...wanted]);
      for (const name of wanted) expect(gotTensors.get(name)!.bytes.equals(want.get(name)!.bytes), name).toBe(true);
    }));
});
