import { describe, it, expect } from 'vitest';
import path from 'node:path';
import { readdir, readFile } from 'node:fs/promises';
import { fixturesDir } from './helpers/fixtures.js';
import { localEnv, withTempDir } from './helpers/models.js';
import { runCompute, runApply } from '../lib/ops/run.js';
import { prepareCompute, executeComputeShard } from '../lib/ops/compute.js';
import { localOutput } from '../lib/storage/output.js';
import { LocalStore } from '../lib/storage/local.js';
import type { ByteSource } from '../lib/storage/types.js';
import type { ExecEnv } from '../lib/ops/env.js';

const BF16 = path.join(fixturesDir, 'tiny-llama-bf16');

/** A resolver whose reads start failing after `okReads` reads: an I/O error in the middle of a run. */
function failingEnv(okReads: number): ExecEnv {
  let reads = 0;
  return {
    resolve: (ref) => {
      const store = new LocalStore(ref);
      const openRead = store.openRead.bind(store);
      store.openRead = async (file) => {
        const src = await openRead(file);
        const wrapped: ByteSource = {
          name: src.name,
          size: src.size,
          read: (o, l, into) => (++reads > okReads ? Promise.reject(new Error('simulated I/O failure')) : src.read(o, l, into)),
          close: () => src.close(),
        };
        return wrapped;
      };
      return store;
    },
  };
}

describe('durability', () => {
  it('a failure mid-run leaves no output that looks complete, inputs intact, and a rerun succeeds', () =>
    withTempDir(async (tmp) => {
      const out = path.join(tmp, 'delta');
      const before = await readFile(path.join(BF16, 'post/model-00001-of-00003.safetensors'));
      await expect(
        runCompute({ ...failingEnv(30), bufferBytes: 1 << 16 }, { base: `${BF16}/base`, post: `${BF16}/post`, shardSize: 100_000 }, () => localOutput(out)),
      ).rejects.toThrow(/simulated I\/O failure/);
      expect(await readdir(tmp)).toEqual([]);
      expect((await readFile(path.join(BF16, 'post/model-00001-of-00003.safetensors'))).equals(before)).toBe(true);
      await runCompute(localEnv, { base: `${BF16}/base`, post: `${BF16}/post`, shardSize: 100_000 }, () => localOutput(out));
      expect(await readdir(tmp)).toEqual(['delta']);
      expect(await readdir(out)).toContain('delta.json');
    }));

  it('a killed run (no cleanup at all) leaves only a hidden partial folder, and a rerun succeeds', () =>
    withTempDir(async (tmp) => {
      const out = path.join(tmp, 'delta');
      const plan = await prepareCompute(localEnv, `${BF16}/base`, `${BF16}/post`, { shardSize: 100_000 });
      const target = await localOutput(out);
      await executeComputeShard(plan, 0, localEnv, target.store);
      // The process dies here: nothing published, nothing discarded.
      const left = await readdir(tmp);
      expect(left).toHaveLength(1);
      expect(left[0]).toMatch(/^\.delta\.partial-/);
      expect(await readdir(path.join(tmp, left[0]))).not.toContain('delta.json');
      await runCompute(localEnv, { base: `${BF16}/base`, post: `${BF16}/post`, shardSize: 100_000 }, () => localOutput(out));
      expect(await readdir(out)).toContain('delta.json');
      await runApply(localEnv, { base: `${BF16}/newbase`, deltas: [{ ref: out }], shardSize: 5e9 }, () => localOutput(path.join(tmp, 'm')));
      expect(
        (await readFile(path.join(tmp, 'm/model-00001-of-00001.safetensors'))).equals(
          await readFile(path.join(BF16, 'expected/apply-post-1.0/model.safetensors')),
        ),
      ).toBe(true);
    }));
});
