import { describe, it, expect, vi, afterEach } from 'vitest';
import path from 'node:path';
import { cp, readFile, readdir, writeFile, chmod, stat } from 'node:fs/promises';
import { fixturesDir } from './helpers/fixtures.js';
import { loadTensors, withTempDir } from './helpers/models.js';
import { decodeFloats, roundTo } from './helpers/floats.js';
import { runCli } from './helpers/cli.js';

const BF16 = path.join(fixturesDir, 'tiny-llama-bf16');
const F32 = path.join(fixturesDir, 'tiny-llama-f32');

const run = runCli;

async function exists(p: string): Promise<boolean> {
  return stat(p).then(() => true, () => false);
}

/** Copies a fixture model to a writable folder so a test can corrupt it. */
async function copyModel(from: string, to: string): Promise<string> {
  await cp(from, to, { recursive: true });
  for (const f of await readdir(to)) await chmod(path.join(to, f), 0o644);
  await chmod(to, 0o755);
  return to;
}

afterEach(() => vi.restoreAllMocks());

describe('paramdelta CLI', () => {
  it('computes, verifies, applies and inspects, with the reference names as aliases', () =>
    withTempDir(async (tmp) => {
      const d = path.join(tmp, 'delta');
      const c = await run(['compute-delta', '--base-model', `${BF16}/base`, '--post-model', `${BF16}/post`, '--output', d, '--json']);
      expect(c.stderr).toBe('');
      expect(c.code).toBe(0);
      expect(JSON.parse(c.stdout).ok).toBe(true);
      const v = await run(['verify', '--base', `${BF16}/base`, '--post', `${BF16}/post`, '--delta-path', d]);
      expect(v.code).toBe(0);
      expect(v.stdout).toMatch(/verified: 21 tensors/);
      const out = path.join(tmp, 'out');
      const a = await run(['apply-delta', '--base', `${BF16}/newbase`, '--delta-path', d, '--scale', '0.5', '--output', out]);
      expect(a.code).toBe(0);
      const got = await readFile(path.join(out, 'model-00001-of-00001.safetensors'));
      expect(got.equals(await readFile(`${BF16}/expected/apply-post-0.5/model.safetensors`))).toBe(true);
      const i = await run(['inspect', d]);
      expect(i.code).toBe(0);
      expect(i.stdout).toMatch(/^delta /);
      expect(i.stdout).toMatch(/model\.layers\.0\.self_attn\.v_proj\.weight\s+BF16.*zero/);
      const ij = JSON.parse((await run(['inspect', `${BF16}/base`, '--json'])).stdout);
      expect(ij).toMatchObject({ kind: 'checkpoint', parameters: 137664, tensors: expect.any(Array) });
      const is = JSON.parse((await run(['inspect', `${BF16}/post2/model.safetensors`, '--json'])).stdout);
      expect(is).toMatchObject({ kind: 'shard', bytes: 275328 });
    }));

  it('fuses two deltas with per-delta scales in argument order', () =>
    withTempDir(async (tmp) => {
      for (const p of ['post', 'post2']) {
        expect((await run(['compute', '--base', `${F32}/base`, '--post', `${F32}/${p}`, '--out', path.join(tmp, p)])).code).toBe(0);
      }
      const out = path.join(tmp, 'out');
      const r = await run(['apply', '--base', `${F32}/newbase`, '--delta', path.join(tmp, 'post'), '--scale', '0.7', '--delta', path.join(tmp, 'post2'), '--scale', '0.3', '--out', out]);
      expect(r.code).toBe(0);
      const got = await readFile(path.join(out, 'model-00001-of-00001.safetensors'));
      expect(got.equals(await readFile(`${F32}/expected/apply-post-0.7-post2-0.3/model.safetensors`))).toBe(true);
    }));

  it('reports how many elements a lossy delta dtype rounded, and the largest error, as the fixtures say; verify then fails', () =>
    withTempDir(async (tmp) => {
      for (const [fam, policy, dtype] of [[BF16, 'bf16', 'BF16'], [F32, 'f32', 'F32']] as const) {
        // Counted here from the fixture tensors: the exact delta post − base (float64), and what `dtype` stores of it.
        const base = await loadTensors(`${fam}/base`);
        const post = await loadTensors(`${fam}/post`);
        const want = new Map<string, { rounded: number; maxError: number }>();
        for (const [name, b] of base) {
          const x = decodeFloats(b.dtype, b.bytes);
          const y = decodeFloats(b.dtype, post.get(name)!.bytes);
          let rounded = 0;
          let maxError = 0;
          let inexact = 0;
          for (let i = 0; i < x.length; i++) {
            const d = y[i] - x[i];
            if (x[i] + d !== y[i] || y[i] - d !== x[i]) inexact++;
            const stored = roundTo(dtype, d);
            if (stored !== d) {
              rounded++;
              maxError = Math.max(maxError, Math.abs(stored - d));
            }
          }
          expect(inexact, `${name}: post − base is exact in float64`).toBe(0);
          want.set(name, { rounded, maxError });
        }
        const total = [...want.values()].reduce((a, t) => a + t.rounded, 0);
        const tensors = [...want.values()].filter((t) => t.rounded > 0).length;
        const largest = Math.max(...[...want.values()].map((t) => t.maxError));
        expect(total).toBeGreaterThan(0);

        const d = path.join(tmp, policy);
        const c = await run(['compute', '--base', `${fam}/base`, '--post', `${fam}/post`, '--out', d, '--delta-dtype', policy]);
        expect(c.code).toBe(0);
        const m = /lossy: (\d+) elements in (\d+) tensors were rounded to (\w+); largest error (\S+)/.exec(c.stdout);
        expect(m, c.stdout).not.toBeNull();
        expect([Number(m![1]), Number(m![2]), m![3], Number(m![4])]).toEqual([total, tensors, policy, largest]);
        const manifest = JSON.parse(await readFile(path.join(d, 'delta.json'), 'utf8'));
        const recorded = manifest.tensors as Record<string, { rounded: number; maxError: number; dtype: string }>;
        expect(Object.keys(recorded).sort()).toEqual([...want.keys()].sort());
        for (const [name, t] of want) {
          expect(recorded[name], name).toMatchObject({ dtype, rounded: t.rounded, maxError: t.maxError });
        }
        const v = await run(['verify', '--base', `${fam}/base`, '--post', `${fam}/post`, '--delta', d]);
        expect(v.code).toBe(1);
      }
    }));

  it('exits 1 when verification finds a mismatch, naming the tensors', () =>
    withTempDir(async (tmp) => {
      const d = path.join(tmp, 'delta');
      await run(['compute', '--base', `${BF16}/base`, '--post', `${BF16}/post`, '--out', d]);
      const v = await run(['verify', '--base', `${BF16}/base`, '--post', `${BF16}/post2`, '--delta', d]);
      expect(v.code).toBe(1);
      expect(v.stdout).toMatch(/MISMATCH/);
      expect(v.stdout).toMatch(/model\.embed_tokens\.weight: \d+ elements differ/);
      // A corrupted delta shard fails its recorded sha256.
      const shard = (await readdir(d)).find((f) => f.endsWith('.pdelta'))!;
      await copyModel(d, path.join(tmp, 'd2'));
      const file = path.join(tmp, 'd2', shard);
      const bytes = await readFile(file);
      bytes[bytes.length - 1] ^= 1;
      await writeFile(file, bytes);
      const c = await run(['verify', '--base', `${BF16}/base`, '--post', `${BF16}/post`, '--delta', path.join(tmp, 'd2'), '--json']);
      expect(c.code).toBe(1);
      expect(JSON.parse(c.stdout).corruptShards).toEqual([shard]);
      // So does one in the plain layout, whose tensors are compared too.
      const p = path.join(tmp, 'plain');
      await run(['compute', '--base', `${BF16}/base`, '--post', `${BF16}/post`, '--out', p, '--delta-format', 'safetensors']);
      const plainShard = (await readdir(p)).find((f) => f.endsWith('.safetensors'))!;
      const plainBytes = await readFile(path.join(p, plainShard));
      plainBytes[plainBytes.length - 1] ^= 1;
      await writeFile(path.join(p, plainShard), plainBytes);
      const cp = await run(['verify', '--base', `${BF16}/base`, '--post', `${BF16}/post`, '--delta', p, '--json']);
      expect(cp.code).toBe(1);
      expect(JSON.parse(cp.stdout).corruptShards).toEqual([plainShard]);
    }));

  it('refuses an existing output folder unless --force', () =>
    withTempDir(async (tmp) => {
      const d = path.join(tmp, 'delta');
      const args = ['compute', '--base', `${BF16}/base`, '--post', `${BF16}/post`, '--out', d];
      expect((await run(args)).code).toBe(0);
      const again = await run(args);
      expect(again.code).toBe(2);
      expect(again.stderr).toMatch(/already exists; pass --force/);
      expect((await run([...args, '--force'])).code).toBe(0);
      expect(await readdir(tmp)).toEqual(['delta']);
    }));

  it('rejects bad input with exit 2, a one-line error naming the problem, and no output', () =>
    withTempDir(async (tmp) => {
      const out = path.join(tmp, 'out');
      const cases: [string[], RegExp][] = [
        [['compute', '--base', `${BF16}/base`, '--post', `${F32}/post`, '--out', out], /dtype BF16 in the base but F32 in post/],
        [['compute', '--base', path.join(tmp, 'nope'), '--post', `${BF16}/post`, '--out', out], /nope: no such folder/],
        [['compute', '--base', `${BF16}/base`, '--out', out], /--post is required/],
        [['compute', '--base', `${BF16}/base`, '--post', `${BF16}/post`, '--out', out, '--shard-size', 'big'], /--shard-size: "big"/],
        [['compute', '--base', `${BF16}/base`, '--post', `${BF16}/post`, '--out', `${BF16}/base/sub`], /overlaps the input/],
        [['apply', '--base', `${BF16}/newbase`, '--scale', '2', '--delta', `${BF16}/post`, '--out', out], /--scale must follow the --delta/],
        [['apply', '--base', `${BF16}/newbase`, '--delta', `${BF16}/post`, '--out', out], /no delta\.json/],
        [['frobnicate'], /unknown command/],
      ];
      for (const [args, msg] of cases) {
        const r = await run(args);
        expect(r.code, args.join(' ')).toBe(2);
        expect(r.stderr, args.join(' ')).toMatch(msg);
        expect(await exists(out), args.join(' ')).toBe(false);
      }
      expect(await readdir(tmp)).toEqual([]);
    }));

  it('names the tensor when a delta does not fit the new base, before writing anything', () =>
    withTempDir(async (tmp) => {
      const d = path.join(tmp, 'delta');
      await run(['compute', '--base', `${BF16}/base`, '--post', `${BF16}/post`, '--out', d]);
      // A new base whose embedding is missing and whose lm_head has another shape.
      const nb = await copyModel(`${BF16}/expected/apply-post-1.0`, path.join(tmp, 'nb'));
      const bytes = await readFile(path.join(nb, 'model.safetensors'));
      const n = Number(bytes.readBigUInt64LE(0));
      const header = JSON.parse(bytes.subarray(8, 8 + n).toString());
      header['lm_head.weight'].shape = [64, 256];
      header['model.embed_tokens.weight.renamed'] = header['model.embed_tokens.weight'];
      delete header['model.embed_tokens.weight'];
      const json = Buffer.from(JSON.stringify(header).padEnd(Math.ceil(n / 8) * 8 + 8));
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(json.length));
      await writeFile(path.join(nb, 'model.safetensors'), Buffer.concat([len, json, bytes.subarray(8 + n)]));
      const out = path.join(tmp, 'out');
      const r = await run(['apply', '--base', nb, '--delta', d, '--out', out]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/"model\.embed_tokens\.weight" is not in the new base/);
      expect(r.stderr).toMatch(/"lm_head\.weight" has shape \[256,64\] but the new base has \[64,256\]/);
      expect(await exists(out)).toBe(false);
    }));

  it('rejects malformed shards with an error naming the file and rule, and writes nothing', () =>
    withTempDir(async (tmp) => {
      const corruptions: [string, (b: Buffer) => Buffer, RegExp][] = [
        ['truncated', (b) => b.subarray(0, b.length - 10), /file-length/],
        ['too small', (b) => b.subarray(0, 5), /file-too-small/],
        ['bad json', (b) => Buffer.concat([b.subarray(0, 8), Buffer.from('{"a":'), b.subarray(13)]), /header-json/],
        ['huge header', (b) => { const c = Buffer.from(b); c.writeBigUInt64LE(200_000_000n, 0); return c; }, /header-too-large/],
      ];
      for (const [label, corrupt, rule] of corruptions) {
        const base = await copyModel(`${BF16}/base`, path.join(tmp, `base-${label.replace(' ', '-')}`));
        const shard = path.join(base, 'model-00002-of-00002.safetensors');
        await writeFile(shard, corrupt(await readFile(shard)));
        const before = await readFile(shard);
        const out = path.join(tmp, 'out');
        const r = await run(['compute', '--base', base, '--post', `${BF16}/post`, '--out', out]);
        expect(r.code, label).toBe(2);
        expect(r.stderr, label).toMatch(/model-00002-of-00002\.safetensors/);
        expect(r.stderr, label).toMatch(rule);
        expect(r.stderr.trim().split('\n'), label).toHaveLength(1);
        expect(await exists(out), label).toBe(false);
        expect((await readFile(shard)).equals(before), label).toBe(true);
      }
    }));
});
