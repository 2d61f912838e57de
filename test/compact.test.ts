import { describe, it, expect } from 'vitest';
import path from 'node:path';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { fixturesDir } from './helpers/fixtures.js';
import { loadDelta, loadTensors, localEnv, withTempDir } from './helpers/models.js';
import { runCli } from './helpers/cli.js';
import { runApply, runCompute, runConvert } from '../lib/ops/run.js';
import { verify } from '../lib/ops/verify.js';
import { inspect } from '../lib/ops/inspect.js';
import { localOutput } from '../lib/storage/output.js';
import { DELTA_MANIFEST, parseDeltaManifest, type DeltaFormat } from '../lib/ops/manifest.js';
import { InputError } from '../lib/errors.js';

const FAMILIES = ['tiny-llama-bf16', 'tiny-llama-f16', 'tiny-llama-f32'];
const legacyDelta = new URL('./data/legacy-delta-v0.1.0-tiny-llama-bf16/', import.meta.url).pathname;

const fam = (name: string, sub: string) => path.join(fixturesDir, name, sub);

function compute(base: string, post: string, out: string, format: DeltaFormat = 'compact', chunkElements?: number) {
  return runCompute(localEnv, { base, post, shardSize: 5e9, format, chunkElements }, () => localOutput(out));
}

function apply(base: string, deltas: { ref: string; scale?: number }[], out: string) {
  return runApply(localEnv, { base, deltas, shardSize: 5e9 }, () => localOutput(out));
}

async function expectSameFile(got: string, want: string) {
  const [a, b] = await Promise.all([readFile(got), readFile(want)]);
  expect(a.length).toBe(b.length);
  expect(a.equals(b)).toBe(true);
}

const model = (dir: string) => path.join(dir, 'model-00001-of-00001.safetensors');

/** A compact shard taken apart by hand (trailer: u64 header offset, u64 length, magic), to damage it on purpose. */
async function openShardBytes(file: string) {
  const bytes = await readFile(file);
  const trailer = bytes.subarray(bytes.length - 24);
  expect(trailer.subarray(16).toString('ascii')).toBe('PDCOMPCT');
  const offset = Number(trailer.readBigUInt64LE(0));
  const length = Number(trailer.readBigUInt64LE(8));
  const header = JSON.parse(bytes.subarray(offset, offset + length).toString('utf8'));
  return { bytes, offset, header };
}

/** Writes frames then a new header and trailer. */
async function writeShardBytes(file: string, frames: Buffer, header: unknown) {
  const text = Buffer.from(JSON.stringify(header));
  const trailer = Buffer.alloc(24);
  trailer.writeBigUInt64LE(BigInt(frames.length), 0);
  trailer.writeBigUInt64LE(BigInt(text.length), 8);
  trailer.write('PDCOMPCT', 16, 'ascii');
  await writeFile(file, Buffer.concat([frames, text, trailer]));
}

describe.each(FAMILIES)('%s: compact and plain deltas', (family) => {
  it('apply byte for byte, fused with each other, and convert both ways without changing a value', () =>
    withTempDir(async (tmp) => {
      const dc = path.join(tmp, 'compact');
      const dp = path.join(tmp, 'plain');
      const d2 = path.join(tmp, 'plain2');
      // Small chunks: every weight matrix spans several, some of which need other dtypes than their neighbours.
      await compute(fam(family, 'base'), fam(family, 'post'), dc, 'compact', 4096);
      await compute(fam(family, 'base'), fam(family, 'post'), dp, 'safetensors');
      await compute(fam(family, 'base'), fam(family, 'post2'), d2, 'safetensors');
      expect((await readdir(dc)).filter((f) => f.endsWith('.pdelta'))).toEqual(['delta-00001-of-00001.pdelta']);

      const want = await loadTensors(fam(family, 'expected/delta-post'));
      const got = await loadDelta(dc);
      expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
      for (const [n, w] of want) {
        expect(got.get(n)!.dtype, n).toBe(w.dtype);
        expect(got.get(n)!.bytes.equals(w.bytes), n).toBe(true);
      }

      await apply(fam(family, 'newbase'), [{ ref: dc }], path.join(tmp, 'a10'));
      await expectSameFile(model(path.join(tmp, 'a10')), fam(family, 'expected/apply-post-1.0/model.safetensors'));
      await apply(fam(family, 'newbase'), [{ ref: dc, scale: 0.7 }, { ref: d2, scale: 0.3 }], path.join(tmp, 'fused'));
      await expectSameFile(model(path.join(tmp, 'fused')), fam(family, 'expected/apply-post-0.7-post2-0.3/model.safetensors'));
      expect(await verify(localEnv, fam(family, 'base'), fam(family, 'post'), dc)).toMatchObject({ ok: true, mismatches: [], corruptShards: [] });

      // plain → compact writes exactly the shard compute writes; compact → plain the expected tensors.
      const toCompact = path.join(tmp, 'to-compact');
      await runConvert(localEnv, { delta: dp, to: 'compact', shardSize: 5e9, chunkElements: 4096 }, () => localOutput(toCompact));
      await expectSameFile(path.join(toCompact, 'delta-00001-of-00001.pdelta'), path.join(dc, 'delta-00001-of-00001.pdelta'));
      const toPlain = path.join(tmp, 'to-plain');
      await runConvert(localEnv, { delta: dc, to: 'safetensors', shardSize: 5e9 }, () => localOutput(toPlain));
      expect(await loadTensors(toPlain, { single: 'delta.safetensors', index: 'delta.safetensors.index.json' })).toEqual(want);
      const m = parseDeltaManifest(await readFile(path.join(toPlain, DELTA_MANIFEST), 'utf8'), 'delta.json');
      expect(m).toMatchObject({ layout: 'safetensors', formatVersion: 1 });
      expect(await readFile(path.join(toPlain, 'tokenizer_config.json'), 'utf8')).toBe(await readFile(fam(family, 'post/tokenizer_config.json'), 'utf8'));
    }));
});

describe('the compact layout', () => {
  it('stores chunks of one tensor in different dtypes where they need them', () =>
    withTempDir(async (tmp) => {
      const d = path.join(tmp, 'd');
      await compute(fam('tiny-llama-bf16', 'base'), fam('tiny-llama-bf16', 'post'), d, 'compact', 64);
      const { header } = await openShardBytes(path.join(d, 'delta-00001-of-00001.pdelta'));
      const mixed = header.tensors.filter((t: { chunks: [string][] }) => new Set(t.chunks.map((c) => c[0])).size > 1);
      expect(mixed.length).toBeGreaterThan(0);
      await apply(fam('tiny-llama-bf16', 'newbase'), [{ ref: d, scale: 0.5 }], path.join(tmp, 'o'));
      await expectSameFile(model(path.join(tmp, 'o')), fam('tiny-llama-bf16', 'expected/apply-post-0.5/model.safetensors'));
      // The manifest records the layout, and every tensor's sizes match its shard's header.
      const m = parseDeltaManifest(await readFile(path.join(d, DELTA_MANIFEST), 'utf8'), 'delta.json');
      expect(m).toMatchObject({ formatVersion: 2, layout: 'compact', compact: { chunkElements: 64, transform: 'byteplanes', codec: { name: 'zstd' } } });
      for (const t of header.tensors) expect([m.tensors[t.name].compressedBytes, m.tensors[t.name].rawBytes]).toEqual([t.compressedBytes, t.rawBytes]);
    }));

  it.each([
    ['stories260K-tuned-bf16', 0.6],
    ['stories260K-tuned-f32', 0.85],
  ])('%s (real fine-tune): round-trips exactly at most %s× the model bytes', (family, target) =>
    withTempDir(async (tmp) => {
      const d = path.join(tmp, 'd');
      const { manifest } = await compute(fam(family, 'base'), fam(family, 'post'), d);
      const stored = manifest.shards.reduce((a, s) => a + s.bytes, 0);
      const modelBytes = [...(await loadTensors(fam(family, 'post'))).values()].reduce((a, t) => a + t.bytes.length, 0);
      expect(stored / modelBytes).toBeLessThanOrEqual(target);
      expect(await verify(localEnv, fam(family, 'base'), fam(family, 'post'), d)).toMatchObject({ ok: true, mismatches: [] });
      await apply(fam(family, 'base'), [{ ref: d }], path.join(tmp, 'rt'));
      expect(await loadTensors(path.join(tmp, 'rt'))).toEqual(await loadTensors(fam(family, 'post')));
      // On the new base, compact and plain deltas give the same model.
      const plain = path.join(tmp, 'plain');
      await compute(fam(family, 'base'), fam(family, 'post'), plain, 'safetensors');
      await apply(fam(family, 'newbase'), [{ ref: d }], path.join(tmp, 'nc'));
      await apply(fam(family, 'newbase'), [{ ref: plain }], path.join(tmp, 'np'));
      await expectSameFile(model(path.join(tmp, 'nc')), model(path.join(tmp, 'np')));
    }));

  it('still applies the plain delta written by paramdelta 0.1.0, byte for byte, and converts it', () =>
    withTempDir(async (tmp) => {
      await apply(fam('tiny-llama-bf16', 'newbase'), [{ ref: legacyDelta }], path.join(tmp, 'o'));
      await expectSameFile(model(path.join(tmp, 'o')), fam('tiny-llama-bf16', 'expected/apply-post-1.0/model.safetensors'));
      expect(await verify(localEnv, fam('tiny-llama-bf16', 'base'), fam('tiny-llama-bf16', 'post'), legacyDelta)).toMatchObject({ ok: true, corruptShards: [] });
      expect((await inspect(legacyDelta)).delta).toMatchObject({ layout: 'safetensors' });
      const c = path.join(tmp, 'c');
      await runConvert(localEnv, { delta: legacyDelta, to: 'compact', shardSize: 5e9 }, () => localOutput(c));
      await apply(fam('tiny-llama-bf16', 'newbase'), [{ ref: c }], path.join(tmp, 'oc'));
      await expectSameFile(model(path.join(tmp, 'oc')), fam('tiny-llama-bf16', 'expected/apply-post-1.0/model.safetensors'));
    }));

  describe('a damaged shard is an InputError naming the shard, the tensor and the chunk, and leaves no output', () => {
    const TENSOR = 'model.layers.0.mlp.gate_proj.weight';

    async function damaged(tmp: string, damage: (s: Awaited<ReturnType<typeof openShardBytes>>, file: string) => Promise<void>) {
      const d = path.join(tmp, 'd');
      await compute(fam('tiny-llama-f32', 'base'), fam('tiny-llama-f32', 'post'), d, 'compact', 4096);
      const file = path.join(d, 'delta-00001-of-00001.pdelta');
      await damage(await openShardBytes(file), file);
      return d;
    }

    async function expectRefused(tmp: string, d: string, why: RegExp) {
      const out = path.join(tmp, 'out');
      const err = await apply(fam('tiny-llama-f32', 'newbase'), [{ ref: d }], out).catch((e) => e);
      expect(err).toBeInstanceOf(InputError);
      expect(err.message).toContain('delta-00001-of-00001.pdelta');
      expect(err.message).toContain(`tensor "${TENSOR}"`);
      expect(err.message).toMatch(/chunk 2\b/);
      expect(err.message).toMatch(why);
      expect((await readdir(tmp)).sort()).toEqual(['d']); // no output folder, no partial one
      const cli = await runCli(['apply', '--base', fam('tiny-llama-f32', 'newbase'), '--delta', d, '--out', out]);
      expect(cli.code).toBe(2);
      expect(cli.stderr).toContain(`tensor "${TENSOR}", chunk 2`);
      expect((await readdir(tmp)).sort()).toEqual(['d']);
    }

    const chunkOf = (header: { tensors: { name: string; chunks: [string, number, number[]][] }[] }) =>
      header.tensors.find((t) => t.name === TENSOR)!.chunks[2];

    it('a flipped byte inside a frame', () =>
      withTempDir(async (tmp) => {
        const d = await damaged(tmp, async ({ bytes, header }, file) => {
          // The middle of the chunk's longest frame.
          const [, offset, lengths] = chunkOf(header);
          const b = lengths.indexOf(Math.max(...lengths));
          const at = offset + lengths.slice(0, b).reduce((x, y) => x + y, 0) + Math.floor(lengths[b] / 2);
          bytes[at] ^= 0x10;
          await writeFile(file, bytes);
        });
        await expectRefused(tmp, d, /corrupt/);
        // verify reports the shard that fails its sha256, and why it could not be read.
        const v = await verify(localEnv, fam('tiny-llama-f32', 'base'), fam('tiny-llama-f32', 'post'), d);
        expect(v).toMatchObject({ ok: false, corruptShards: ['delta-00001-of-00001.pdelta'] });
        expect(v.damage).toContain(`tensor "${TENSOR}", chunk 2`);
      }));

    it('a truncated frame', () =>
      withTempDir(async (tmp) => {
        const d = await damaged(tmp, async ({ bytes, offset: headerOffset, header }, file) => {
          // Cut the last 5 bytes of the chunk's third frame; the table (offsets and sizes) is kept consistent.
          const chunk = chunkOf(header);
          const cutAt = chunk[1] + chunk[2][0] + chunk[2][1] + chunk[2][2];
          chunk[2][2] -= 5;
          for (const t of header.tensors) {
            for (const c of t.chunks) if (c[1] >= cutAt) c[1] -= 5;
            t.compressedBytes = t.chunks.reduce((a: number, c: [string, number, number[]]) => a + c[2].reduce((x, y) => x + y, 0), 0);
          }
          await writeShardBytes(file, Buffer.concat([bytes.subarray(0, cutAt - 5), bytes.subarray(cutAt, headerOffset)]), header);
        });
        await expectRefused(tmp, d, /corrupt/);
      }));

    it('a chunk table pointing outside the file', () =>
      withTempDir(async (tmp) => {
        const d = await damaged(tmp, async ({ bytes, offset, header }, file) => {
          chunkOf(header)[1] = bytes.length + 1000;
          await writeShardBytes(file, bytes.subarray(0, offset), header);
        });
        await expectRefused(tmp, d, /outside the frame area/);
      }));

    it('a truncated file', () =>
      withTempDir(async (tmp) => {
        const d = path.join(tmp, 'd');
        await compute(fam('tiny-llama-f32', 'base'), fam('tiny-llama-f32', 'post'), d);
        const file = path.join(d, 'delta-00001-of-00001.pdelta');
        const bytes = await readFile(file);
        await writeFile(file, bytes.subarray(0, bytes.length - 100));
        const err = await apply(fam('tiny-llama-f32', 'newbase'), [{ ref: d }], path.join(tmp, 'out')).catch((e) => e);
        expect(err).toBeInstanceOf(InputError);
        expect(err.message).toMatch(/delta-00001-of-00001\.pdelta: not a compact delta shard .*truncated/);
        expect((await readdir(tmp)).sort()).toEqual(['d']);
      }));
  });
});

describe('CLI', () => {
  it('compute writes compact by default and plain on request; inspect shows the ratios; convert switches layouts', () =>
    withTempDir(async (tmp) => {
      const f = 'stories260K-tuned-bf16';
      const c = await runCli(['compute', '--base', fam(f, 'base'), '--post', fam(f, 'post'), '--out', path.join(tmp, 'c')]);
      expect(c.code).toBe(0);
      expect(c.stdout).toMatch(/in 1 compact shard\(s\)/);
      const p = await runCli(['compute', '--base', fam(f, 'base'), '--post', fam(f, 'post'), '--out', path.join(tmp, 'p'), '--delta-format', 'safetensors']);
      expect(p.code).toBe(0);
      expect(await readdir(path.join(tmp, 'p'))).toContain('delta.safetensors.index.json');

      const ic = await runCli(['inspect', path.join(tmp, 'c'), '--json']);
      const ip = await runCli(['inspect', path.join(tmp, 'p'), '--json']);
      const dc = JSON.parse(ic.stdout).delta;
      const dp = JSON.parse(ip.stdout).delta;
      const shardBytes = async (dir: string) => {
        const files = (await readdir(dir)).filter((x) => /\.(pdelta|safetensors)$/.test(x) && x.startsWith('delta-'));
        let n = 0;
        for (const x of files) n += (await readFile(path.join(dir, x))).length;
        return n;
      };
      const modelBytes = [...(await loadTensors(fam(f, 'post'))).values()].reduce((a, t) => a + t.bytes.length, 0);
      const rawBytes = [...(await loadTensors(path.join(tmp, 'p'), { single: 'delta.safetensors', index: 'delta.safetensors.index.json' })).values()].reduce((a, t) => a + t.bytes.length, 0);
      expect(dc).toMatchObject({ layout: 'compact', storedBytes: await shardBytes(path.join(tmp, 'c')), rawBytes, modelBytes });
      expect(dp).toMatchObject({ layout: 'safetensors', storedBytes: await shardBytes(path.join(tmp, 'p')), rawBytes, modelBytes });
      const shard = JSON.parse((await runCli(['inspect', path.join(tmp, 'c', 'delta-00001-of-00001.pdelta'), '--json'])).stdout);
      expect(shard).toMatchObject({ kind: 'shard', bytes: rawBytes });
      expect(shard.tensors.reduce((a: number, t: { compressedBytes: number }) => a + t.compressedBytes, 0)).toBeLessThan(dc.storedBytes);
      const text = await runCli(['inspect', path.join(tmp, 'c')]);
      expect(text.stdout).toContain(`${(dc.storedBytes / dc.rawBytes).toFixed(3)}× the raw delta`);
      expect(text.stdout).toContain(`${(dc.storedBytes / dc.modelBytes).toFixed(3)}× the post model`);

      const back = await runCli(['convert', path.join(tmp, 'p'), '--to', 'compact', '--out', path.join(tmp, 'pc')]);
      expect(back.code).toBe(0);
      await expectSameFile(path.join(tmp, 'pc/delta-00001-of-00001.pdelta'), path.join(tmp, 'c/delta-00001-of-00001.pdelta'));
      const same = await runCli(['convert', path.join(tmp, 'c'), '--to', 'compact', '--out', path.join(tmp, 'cc')]);
      expect(same.code).toBe(2);
      expect(same.stderr).toMatch(/already a compact delta/);
      const bad = await runCli(['convert', path.join(tmp, 'c'), '--to', 'zip', '--out', path.join(tmp, 'x')]);
      expect(bad.code).toBe(2);
    }));
});
