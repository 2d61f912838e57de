import { describe, it, expect } from 'vitest';
import path from 'node:path';
import { readdir, readFile } from 'node:fs/promises';
import { readdirSync, statSync } from 'node:fs';
import { fixturesDir } from './helpers/fixtures.js';
import { localEnv, withTempDir } from './helpers/models.js';
import { runCompute, runApply } from '../lib/ops/run.js';
import { prepareCompute, executeComputeShard } from '../lib/ops/compute.js';
import { localOutput } from '../lib/storage/output.js';
import { LocalStore, WRITEBACK_BYTES } from '../lib/storage/local.js';
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import type { ByteSource } from '../lib/storage/types.js';
import type { ExecEnv } from '../lib/ops/env.js';

const BF16 = path.join(fixturesDir, 'tiny-llama-bf16');

/**
 * An input resolver whose reads fail once `failNow()` says so: an I/O error in the middle of a run.
 * The moment is chosen by what the run has done (see below), not by a count of reads.
 */
function failingEnv(failNow: () => boolean): ExecEnv {
  return {
    resolve: (ref) => {
      const store = new LocalStore(ref);
      const openRead = store.openRead.bind(store);
      store.openRead = async (file) => {
        const src = await openRead(file);
        const wrapped: ByteSource = {
          name: src.name,
          size: src.size,
          read: (o, l, into) => (failNow() ? Promise.reject(new Error('simulated I/O failure')) : src.read(o, l, into)),
          close: () => src.close(),
        };
        return wrapped;
      };
      return store;
    },
  };
}

/** Files (with sizes) in a folder and its hidden staging folders, as they are right now. */
function snapshot(dir: string): { file: string; bytes: number }[] {
  const out: { file: string; bytes: number }[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.push({ file: path.relative(dir, p), bytes: statSync(p).size });
    }
  };
  walk(dir);
  return out;
}

describe('durability', () => {
  it('a failure mid-run leaves no output that looks complete, inputs intact, and a rerun succeeds', () =>
    withTempDir(async (tmp) => {
      const out = path.join(tmp, 'delta');
      const inputs = [...(await readdir(`${BF16}/base`)).map((f) => `base/${f}`), ...(await readdir(`${BF16}/post`)).map((f) => `post/${f}`)];
      const before = await Promise.all(inputs.map((f) => readFile(path.join(BF16, f))));
      // Fail the first read after the second shard has begun writing: output has started for sure.
      let shardsStarted = 0;
      let atFailure: { file: string; bytes: number }[] | null = null;
      const failNow = () => {
        if (shardsStarted < 2) return false;
        atFailure ??= snapshot(tmp);
        return true;
      };
      const output = async () => {
        const target = await localOutput(out);
        const create = target.store.createShard.bind(target.store);
        target.store.createShard = async (...args) => {
          const sink = await create(...args);
          shardsStarted++;
          return sink;
        };
        return target;
      };
      await expect(
        runCompute({ ...failingEnv(failNow), bufferBytes: 1 << 16 }, { base: `${BF16}/base`, post: `${BF16}/post`, shardSize: 100_000 }, output),
      ).rejects.toThrow(/simulated I\/O failure/);
      // When the read failed, the first shard was in the staging folder, non-empty, and nothing marked the output complete.
      expect(atFailure).not.toBeNull();
      const staged = atFailure!.filter((f) => /^\.delta\.partial-[0-9a-f]+\/delta-00001-of-\d+\.(safetensors|pdelta)$/.test(f.file));
      expect(staged).toHaveLength(1);
      expect(staged[0].bytes).toBeGreaterThan(0);
      expect(atFailure!.some((f) => f.file.endsWith('delta.json') || f.file.endsWith('.index.json'))).toBe(false);
      expect(atFailure!.some((f) => !f.file.startsWith('.delta.partial-'))).toBe(false);
      // Afterwards: nothing at all, and every input byte as it was.
      expect(await readdir(tmp)).toEqual([]);
      const after = await Promise.all(inputs.map((f) => readFile(path.join(BF16, f))));
      inputs.forEach((f, i) => expect(after[i].equals(before[i]), f).toBe(true));
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
  it('starts writing a large shard back while it is written, and a failed writeback fails the commit with no file named', () =>
    withTempDir(async (tmp) => {
      // FileHandle is not exported: its prototype comes from a handle.
      const probe = await open(path.join(tmp, 'probe'), 'w');
      const proto = Object.getPrototypeOf(probe) as { datasync: () => Promise<void> };
      await probe.close();
      const real = proto.datasync;
      let started = 0;
      let fail = false;
      proto.datasync = function (this: unknown) {
        started++;
        return fail ? Promise.reject(new Error('EIO: writeback failed')) : real.call(this);
      };
      try {
        const piece = new Uint8Array(8 << 20).map((_, i) => (i * 131) & 0xff);
        const pieces = Math.ceil((2 * WRITEBACK_BYTES + 1) / piece.length);
        const store = new LocalStore(path.join(tmp, 'out'));
        const sink = await store.createShard('big.bin', 0, new Uint8Array(0));
        for (let i = 0; i < pieces; i++) await sink.write(piece);
        expect(started).toBeGreaterThanOrEqual(1); // before the commit: the disk works while the run goes on
        const r = await sink.commit(new Uint8Array(0));
        const whole = createHash('sha256');
        for (let i = 0; i < pieces; i++) whole.update(piece);
        expect(r).toEqual({ sha256: whole.digest('hex'), bytes: pieces * piece.length });
        expect(statSync(path.join(tmp, 'out', 'big.bin')).size).toBe(pieces * piece.length);

        fail = true;
        const bad = await store.createShard('bad.bin', 0, new Uint8Array(0));
        for (let i = 0; i < pieces; i++) await bad.write(piece);
        await expect(bad.commit(new Uint8Array(0))).rejects.toThrow(/EIO: writeback failed/);
        await bad.abort();
        expect(readdirSync(path.join(tmp, 'out')).sort()).toEqual(['big.bin']);
      } finally {
        proto.datasync = real;
      }
    }));
});
