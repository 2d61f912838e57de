// Sparse fusion (issue 12): every method checked byte for byte against values this file computes itself,
// from the fixture tensors, by the rules (plain float64, full sorts, BigInt random numbers).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import path from 'node:path';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { fixturesDir } from './helpers/fixtures.js';
import { loadTensors, localEnv, writeCheckpoint } from './helpers/models.js';
import { decodeFloats, encodeFloats, roundTo } from './helpers/floats.js';
import { runCli } from './helpers/cli.js';
import { runApply, runCompute } from '../lib/ops/run.js';
import { prepareFusedApply } from '../lib/ops/fuse.js';
import { executeApplyShard, finalizeApply } from '../lib/ops/apply.js';
import { localOutput } from '../lib/storage/output.js';
import { LocalStore } from '../lib/storage/local.js';
import { checkFusion, type FusionRequest } from '../lib/fusion/options.js';
import { RankSelect } from '../lib/fusion/select.js';
import { FusionKernel } from '../lib/fusion/combine.js';
import { Ties2Wasm } from '../lib/fusion/ties2.js';
import { loadAssembler } from '../lib/wasm/assembler.js';
import { dareKey, dareUniforms } from '../lib/fusion/rng.js';
import type { ApplyPlan } from '../lib/ops/plan.js';
import type { DeltaFormat } from '../lib/ops/manifest.js';
import { M64, fnv1a64, splitmix64 } from './helpers/fusion-counts.js';

type Dt = 'BF16' | 'F16' | 'F32' | 'F64';
const FAMILIES = ['tiny-llama-bf16', 'tiny-llama-f16', 'tiny-llama-f32'];

// ---- The rules, written out independently of lib/fusion ----

/** u for elements 0 … n−1 of delta i's tensor; the same in every family (tensor names agree), so cached. */
const uCache = new Map<string, number[]>();
function uniforms(i: number, name: string, seed: bigint, n: number): number[] {
  const id = `${i}:${name}:${seed}`;
  let u = uCache.get(id);
  if (!u) {
    const key = fnv1a64(`${i}:${name}`) ^ seed;
    u = Array.from({ length: n }, (_, j) => Number(splitmix64((key + BigInt(j)) & M64) >> 11n) * 2 ** -53);
    uCache.set(id, u);
  }
  return u;
}

interface Spec {
  method: 'ties' | 'dare-linear' | 'dare-ties' | 'breadcrumbs' | 'breadcrumbs-ties';
  density: number;
  gamma?: number;
  lambda?: number;
  seed?: string;
  normalize?: boolean;
}

/** new base + λ·m for one tensor, in float64, before the one rounding. */
function fuseTensor(name: string, base: number[], deltas: number[][], weights: number[], s: Spec): number[] {
  const n = base.length;
  const k = (f: number) => Math.floor(f * n + 0.5);
  const taus = deltas.map((d, i) => {
    const w = weights[i];
    if (s.method.startsWith('dare')) {
      const u = uniforms(i, name, BigInt(s.seed ?? '0'), n);
      return d.map((x, j) => (u[j] < s.density ? w * (x / s.density) : 0));
    }
    const order = d.map((_, j) => j).sort((a, b) => Math.abs(d[b]) - Math.abs(d[a]) || a - b);
    const rank = new Array<number>(n);
    order.forEach((j, r) => (rank[j] = r));
    const lo = s.method === 'ties' ? 0 : k(s.gamma ?? 0.01);
    const hi = lo + k(s.density);
    return d.map((x, j) => (rank[j] >= lo && rank[j] < hi ? w * x : 0));
  });
  const electing = s.method.endsWith('ties');
  const normalize = s.normalize ?? true;
  return base.map((b, j) => {
    let m: number;
    if (!electing) {
      m = taus[0][j];
      for (let i = 1; i < taus.length; i++) m = m + taus[i][j];
    } else {
      let sum = taus[0][j];
      for (let i = 1; i < taus.length; i++) sum = sum + taus[i][j];
      const sigma = Math.sign(sum);
      const agree = taus.map((t, i) => i).filter((i) => taus[i][j] !== 0 && Math.sign(taus[i][j]) === sigma);
      if (!agree.length) m = 0;
      else {
        m = agree.slice(1).reduce((a, i) => a + taus[i][j], taus[agree[0]][j]);
        if (normalize) {
          const ws = agree.slice(1).reduce((a, i) => a + weights[i], weights[agree[0]]);
          m = ws === 0 ? 0 : m / ws;
        }
      }
    }
    return b + (s.lambda ?? 1) * m;
  });
}

// ---- Fixtures: three posts per family (post, post2, and post3 written here) and their deltas ----

interface Family {
  dir: string;
  /** The new base's tensors, and each post's delta as float64 (post − base, exact). */
  newbase: Map<string, { dtype: Dt; values: number[] }>;
  deltas: Map<string, number[]>[];
  /** Delta folders computed by paramdelta: [layout][post]. */
  refs: Record<DeltaFormat, string[]>;
}

let tmp: string;
const families = new Map<string, Family>();

function floats(m: Map<string, { dtype: string; bytes: Buffer }>): Map<string, { dtype: Dt; values: number[] }> {
  return new Map([...m].map(([k, t]) => [k, { dtype: t.dtype as Dt, values: decodeFloats(t.dtype, t.bytes) }]));
}

async function family(name: string): Promise<Family> {
  const dir = path.join(fixturesDir, name);
  const base = floats(await loadTensors(path.join(dir, 'base')));
  const posts = [floats(await loadTensors(path.join(dir, 'post'))), floats(await loadTensors(path.join(dir, 'post2')))];
  // A third post-training: base moved by a mix of the other two's changes, rounded to the model dtype.
  const post3 = new Map(
    [...base].map(([k, b]) => [
      k,
      { dtype: b.dtype, values: b.values.map((x, j) => roundTo(b.dtype, x + 0.75 * (posts[1].get(k)!.values[j] - posts[0].get(k)!.values[j]) * (j % 3 === 0 ? -1 : 1))) },
    ]),
  );
  const post3Dir = path.join(tmp, name, 'post3');
  const shapes = await loadTensors(path.join(dir, 'base'));
  await writeCheckpoint(
    post3Dir,
    [...post3].map(([k, t]) => ({ name: k, dtype: t.dtype, shape: shapes.get(k)!.shape, bytes: encodeFloats(t.dtype, t.values) })),
    { 'config.json': await readFile(path.join(dir, 'base', 'config.json'), 'utf8') },
  );
  posts.push(post3);
  const deltas = posts.map((p) => new Map([...base].map(([k, b]) => [k, p.get(k)!.values.map((x, j) => x - b.values[j])])));
  const postDirs = [path.join(dir, 'post'), path.join(dir, 'post2'), post3Dir];
  const refs: Record<DeltaFormat, string[]> = { compact: [], safetensors: [] };
  // Plain-layout deltas for one family only (the layout test uses them).
  for (const format of name === 'tiny-llama-bf16' ? (['compact', 'safetensors'] as const) : (['compact'] as const)) {
    for (const [i, post] of postDirs.entries()) {
      const out = path.join(tmp, name, `${format}-d${i}`);
      // Small compact chunks, so that a small chunk budget really splits tensors.
      await runCompute(localEnv, { base: path.join(dir, 'base'), post, shardSize: 5e9, format, chunkElements: 1024 }, () => localOutput(out));
      refs[format].push(out);
    }
  }
  return { dir, newbase: floats(await loadTensors(path.join(dir, 'newbase'))), deltas, refs };
}

beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'paramdelta-fusion-'));
  for (const f of FAMILIES) families.set(f, await family(f));
}, 120_000);

afterAll(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

function expected(f: Family, use: number[], weights: number[], s: Spec): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const [name, b] of f.newbase) {
    const x = fuseTensor(name, b.values, use.map((i) => f.deltas[i].get(name)!), weights, s);
    out.set(name, Buffer.from(encodeFloats(b.dtype, x)));
  }
  return out;
}

async function applyFused(
  f: Family,
  use: number[],
  weights: number[],
  req: FusionRequest,
  out: string,
  opts: { format?: DeltaFormat; bufferBytes?: number; shardSize?: number } = {},
): Promise<ApplyPlan> {
  const deltas = use.map((i, k) => ({ ref: f.refs[opts.format ?? 'compact'][i], scale: weights[k] }));
  const env = { ...localEnv, ...(opts.bufferBytes ? { bufferBytes: opts.bufferBytes } : {}) };
  const { plan } = await runApply(env, { base: path.join(f.dir, 'newbase'), deltas, shardSize: opts.shardSize ?? 5e9, fusion: checkFusion(req) }, () => localOutput(out));
  return plan;
}

async function expectTensors(dir: string, want: Map<string, Buffer>): Promise<void> {
  const got = await loadTensors(dir);
  expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
  for (const [name, w] of want) expect(got.get(name)!.bytes.equals(w), name).toBe(true);
}

/** Which deltas (0: post, 1: post2, 2: post3), their weights, and the options. */
const CASES: { label: string; use: number[]; weights: number[]; spec: Spec }[] = [
  { label: 'ties, two deltas, weights, normalized', use: [0, 1], weights: [0.7, 0.3], spec: { method: 'ties', density: 0.3 } },
  { label: 'ties, three deltas, λ 1.5, not normalized', use: [0, 1, 2], weights: [1, 0.5, 0.25], spec: { method: 'ties', density: 0.5, lambda: 1.5, normalize: false } },
  { label: 'ties, three deltas, a negative weight, normalized', use: [2, 0, 1], weights: [-0.5, 1, 0.5], spec: { method: 'ties', density: 0.2, normalize: true } },
  { label: 'dare-linear, two deltas, seed 0', use: [0, 1], weights: [0.6, 0.4], spec: { method: 'dare-linear', density: 0.4, seed: '0' } },
  { label: 'dare-linear, two deltas, seed 2^64−1', use: [0, 1], weights: [0.6, 0.4], spec: { method: 'dare-linear', density: 0.4, seed: '18446744073709551615' } },
  { label: 'dare-ties, three deltas, seed 12345, normalized', use: [0, 1, 2], weights: [1, 1, 0.5], spec: { method: 'dare-ties', density: 0.3, seed: '12345' } },
  { label: 'dare-ties, two deltas, seed 7, λ 0.8, not normalized', use: [1, 2], weights: [0.9, 0.6], spec: { method: 'dare-ties', density: 0.7, seed: '7', lambda: 0.8, normalize: false } },
  { label: 'breadcrumbs, two deltas', use: [0, 1], weights: [0.5, 0.5], spec: { method: 'breadcrumbs', density: 0.6, gamma: 0.05 } },
  { label: 'breadcrumbs, three deltas, default γ, λ 2', use: [0, 1, 2], weights: [1, 0.3, 0.3], spec: { method: 'breadcrumbs', density: 0.25, lambda: 2 } },
  { label: 'breadcrumbs-ties, three deltas, not normalized', use: [0, 1, 2], weights: [0.7, 0.2, 0.4], spec: { method: 'breadcrumbs-ties', density: 0.3, gamma: 0.1, normalize: false } },
  { label: 'breadcrumbs-ties, two deltas, ranks past n dropped', use: [0, 2], weights: [1, 0.5], spec: { method: 'breadcrumbs-ties', density: 1, gamma: 0.2 } },
];

/** Every case on the BF16 family (where equal magnitudes abound); two on each of the others. */
const RUNS = FAMILIES.flatMap((name) =>
  CASES.filter((c, i) => name === 'tiny-llama-bf16' || (name === 'tiny-llama-f16' ? [1, 5] : [6, 9]).includes(i)).map((c) => ({ name, ...c })),
);

describe('fusion on the fixture families', () => {
  it.each(RUNS)('$name: $label: equals the rules byte for byte', async ({ name, use, weights, spec }) => {
    const f = families.get(name)!;
    const out = path.join(tmp, name, `out-${Math.random().toString(36).slice(2)}`);
    await applyFused(f, use, weights, spec, out);
    await expectTensors(out, expected(f, use, weights, spec));
    const manifest = JSON.parse(await readFile(path.join(out, 'paramdelta.json'), 'utf8'));
    expect(manifest.fusion).toEqual({ ...checkFusion(spec) });
  });
});

describe('fusion does not depend on chunks, shards or processes', () => {
  const f = () => families.get('tiny-llama-bf16')!;
  it.each([
    { method: 'dare-ties', density: 0.5, seed: '99' },
    { method: 'ties', density: 0.35 },
    { method: 'breadcrumbs', density: 0.5, gamma: 0.1 },
  ] as Spec[])('$method: small chunks, many shards, plain deltas and shards run apart all give the same bytes', async (spec) => {
    const use = [0, 1, 2];
    const weights = [0.5, 0.8, 0.3];
    const want = expected(f(), use, weights, spec);
    const whole = path.join(tmp, `whole-${spec.method}`);
    await applyFused(f(), use, weights, spec, whole);
    // The smallest chunk budget (4096-element chunks: the larger tensors take several) and many output shards.
    const small = path.join(tmp, `small-${spec.method}`);
    const plan = await applyFused(f(), use, weights, spec, small, { bufferBytes: 1, shardSize: 40_000 });
    expect(plan.shards.length).toBeGreaterThan(3);
    await expectTensors(whole, want);
    await expectTensors(small, want);
    // The same deltas in the plain layout.
    const plain = path.join(tmp, `plain-${spec.method}`);
    await applyFused(f(), use, weights, spec, plain, { format: 'safetensors', bufferBytes: 1 });
    await expectTensors(plain, want);
    // Shards executed from a copy of the plan (as a worker gets it), last shard first, each with fresh state.
    const apart = path.join(tmp, `apart-${spec.method}`);
    const env = { ...localEnv, bufferBytes: 1 << 16 };
    const deltas = use.map((i, k) => ({ ref: f().refs.compact[i], scale: weights[k] }));
    const p = await prepareFusedApply(env, path.join(f().dir, 'newbase'), deltas, { shardSize: 40_000, fusion: checkFusion(spec) });
    expect(p.hash).toBe(plan.hash);
    const target = await localOutput(apart);
    for (let i = p.shards.length - 1; i >= 0; i--) await executeApplyShard(JSON.parse(JSON.stringify(p)) as ApplyPlan, i, env, target.store);
    await finalizeApply(p, env, target.store);
    await target.publish();
    await expectTensors(apart, want);
  });
});

describe('the parts', () => {
  it('DARE numbers: u32-pair splitmix64 equals the BigInt definition, across 2^32 and 2^64 wrap-arounds', () => {
    const cases: [number, string, bigint, number][] = [
      [0, 'model.embed_tokens.weight', 0n, 0],
      [2, 'x', M64, 4294967290],
      [1, 'ünïcode.weight', 12345678901234567890n, 2 ** 40 - 3],
    ];
    for (const [i, name, seed, start] of cases) {
      const [hi, lo] = dareKey(i, name, seed);
      expect((BigInt(hi) << 32n) | BigInt(lo)).toBe(fnv1a64(`${i}:${name}`) ^ seed);
      const got = new Float64Array(20);
      dareUniforms(hi, lo, start, 20, got);
      const key = fnv1a64(`${i}:${name}`) ^ seed;
      const want = Array.from({ length: 20 }, (_, j) => Number(splitmix64((key + BigInt(start + j)) & M64) >> 11n) * 2 ** -53);
      expect([...got]).toEqual(want);
    }
    // A key one below 2^64: key + j wraps.
    const got = new Float64Array(4);
    dareUniforms(0xffffffff, 0xfffffffe, 0, 4, got);
    expect([...got]).toEqual([0n, 1n, 2n, 3n].map((j) => Number(splitmix64((M64 - 1n + j) & M64) >> 11n) * 2 ** -53));
  });

  it('rank select: histogram and collect passes find the magnitude at each rank, and how many equal ones rank before it', () => {
    let state = 42;
    const rand = () => ((state = (Math.imul(state, 1103515245) + 12345) >>> 0) / 2 ** 32);
    // Few distinct magnitudes (bins of one value), many (mixed bins refined digit by digit), near neighbours (the last digit).
    for (const [n, distinct, limit, spread] of [[5000, 3, 16, 0.37], [5000, 5000, 16, 0.37], [3000, 40, 100, 0.37], [2000, 2000, 1 << 18, 0.37], [4000, 64, 8, 2 ** -40]] as const) {
      const values = Float64Array.from({ length: n }, () => {
        const v = 1 + Math.floor(rand() * distinct) * spread;
        return rand() < 0.5 ? -v : v;
      });
      const order = [...values.keys()].sort((a, b) => Math.abs(values[b]) - Math.abs(values[a]) || a - b);
      const ranks = [0, 1, Math.floor(n / 3), n - 1];
      const sel = new RankSelect(ranks, n, limit);
      let passes = 0;
      while (sel.pending) {
        sel.begin();
        for (let at = 0; at < n; at += 777) {
          const block = values.slice(at, Math.min(n, at + 777));
          sel.visit(new Uint32Array(block.buffer), block.length);
        }
        sel.end();
        passes++;
      }
      expect(passes).toBeLessThanOrEqual(6);
      const want = ranks.map((r) => {
        const mag = Math.abs(values[order[r]]);
        return { mag, ties: order.slice(0, r).filter((j) => Math.abs(values[j]) === mag).length };
      });
      const got = sel.results().map((e) => ({ mag: new Float64Array(new Uint32Array([e.lo, e.hi]).buffer)[0], ties: e.ties }));
      expect(got).toEqual(want);
    }
  });

  it('options: density required and in (0, 1], seeds as decimal strings up to 2^64−1, options that mean nothing refused', () => {
    expect(checkFusion({})).toBeNull();
    expect(checkFusion({ method: 'ties', density: 0.5 })).toEqual({ method: 'ties', density: 0.5, lambda: 1, normalize: true });
    expect(checkFusion({ method: 'dare-linear', density: 1, seed: '18446744073709551615', normalize: false })).toEqual({
      method: 'dare-linear', density: 1, lambda: 1, seed: '18446744073709551615',
    });
    expect(checkFusion({ method: 'breadcrumbs', density: 0.1 })).toMatchObject({ gamma: 0.01 });
    expect(() => checkFusion({ method: 'ties' })).toThrow(/^density: required/);
    expect(() => checkFusion({ method: 'ties', density: 0 })).toThrow(/^density:/);
    expect(() => checkFusion({ method: 'ties', density: 1.01 })).toThrow(/^density:/);
    expect(() => checkFusion({ method: 'dare-ties', density: 0.5, seed: '18446744073709551616' })).toThrow(/^seed:/);
    expect(() => checkFusion({ method: 'dare-ties', density: 0.5, seed: -1 })).toThrow(/^seed:/);
    expect(() => checkFusion({ method: 'dare-ties', density: 0.5, seed: '1e3' })).toThrow(/^seed:/);
    expect(() => checkFusion({ method: 'magic' })).toThrow(/^method:/);
    expect(() => checkFusion({ method: 'linear', density: 0.5 })).toThrow(/^density:/);
    expect(() => checkFusion({ method: 'ties', density: 0.5, seed: 1 })).toThrow(/^seed:/);
  });
});

describe('the CLI', () => {
  it('apply --method dare-ties with a decimal-string seed equals the rules; inspect shows the method; bad options exit 2', async () => {
    const f = families.get('tiny-llama-f16')!;
    const out = path.join(tmp, 'cli-out');
    const r = await runCli([
      'apply', '--base', path.join(f.dir, 'newbase'), '--delta', f.refs.compact[0], '--scale', '0.6', '--delta', f.refs.compact[2], '--scale', '0.9',
      '--method', 'dare-ties', '--density', '0.45', '--seed', '9007199254740993', '--no-normalize', '--lambda', '1.25', '--out', out,
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    await expectTensors(out, expected(f, [0, 2], [0.6, 0.9], { method: 'dare-ties', density: 0.45, seed: '9007199254740993', normalize: false, lambda: 1.25 }));
    const i = await runCli(['inspect', out]);
    expect(i.stdout).toContain('method: dare-ties (density 0.45, λ 1.25, seed 9007199254740993, no normalize)');
    for (const bad of [['--method', 'ties'], ['--method', 'ties', '--density', '2'], ['--method', 'dare-linear', '--density', '0.5', '--seed', 'x'], ['--method', 'nope', '--density', '0.5']]) {
      const e = await runCli(['apply', '--base', path.join(f.dir, 'newbase'), '--delta', f.refs.compact[0], ...bad, '--out', path.join(tmp, 'cli-bad')]);
      expect(e.code, bad.join(' ')).toBe(2);
      expect(await new LocalStore(path.join(tmp, 'cli-bad')).exists('model.safetensors.index.json').catch(() => false)).toBe(false);
    }
  });
});

describe('rank select from F32 patterns', () => {
  it('finds the same elements as the sort when the first digit comes from F32 or BF16 bits, by the WebAssembly key histogram or the JavaScript loop (zeros, subnormals, Inf, NaN, stretches of float64 between)', async () => {
    await loadAssembler();
    let state = 11;
    const rand = () => ((state = (Math.imul(state, 1103515245) + 12345) >>> 0) / 2 ** 32);
    const special = [0, -0, 2 ** -149, -(2 ** -140), 3 * 2 ** -130, Infinity, -Infinity, NaN, -NaN, 1.5, -1.5];
    let secondDigits = 0;
    const cases = [[20000, 4, true, 64, false], [40000, 6000, false, 64, false], [40000, 6000, true, 64, false], [40000, 6000, true, 1 << 18, false], [20000, 30, true, 64, false], [40000, 300, true, 64, true], [40000, 3, false, 1 << 18, true]] as const;
    for (const [n, distinct, mixedDtypes, limit, bf16] of cases) {
      const values = Float32Array.from({ length: n }, () => (rand() < 0.1 ? special[Math.floor(rand() * special.length)] : (rand() < 0.5 ? -1 : 1) * 2 ** -Math.floor(rand() * 3) * (1 + (Math.floor(rand() * distinct) * (bf16 ? 2 ** 16 : 977)) / 2 ** 23)));
      const bits = new Uint32Array(values.buffer);
      if (bf16) for (let j = 0; j < n; j++) bits[j] &= 0xffff0000; // BF16 values (NaN payloads kept nonzero by the list)
      // Magnitudes rank as their F32 patterns do: NaN above +Inf, NaNs by payload; then by index.
      const order = [...values.keys()].sort((a, b) => (bits[b] & 0x7fffffff) - (bits[a] & 0x7fffffff) || a - b);
      // Also the first Inf's rank: its magnitude must come back as Inf, not as a large finite number.
      const inf = order.findIndex((j) => Math.abs(values[j]) === Infinity);
      const ranks = [0, 7, ...(inf > 0 ? [inf] : []), Math.floor(n / 5), n - 1];
      for (const wasm of [true, false]) {
        // A small collect limit histograms the second digit; the default collects the bucket.
        const sel = new RankSelect(ranks, n, limit, wasm);
        for (let pass = 0; sel.pending; pass++) {
          sel.begin();
          if (pass === 1 && sel.takesF32) secondDigits++;
          for (let at = 0, block = 0; at < n; at += 2000, block++) {
            const e = Math.min(n, at + 2000);
            // Every third block through visit (a stretch of another dtype) or none, the rest as F32 or BF16 patterns while allowed.
            if ((!mixedDtypes || block % 3 !== 2) && sel.takesF32) {
              if (bf16) sel.visitPatterns(new Uint8Array(Uint16Array.from(bits.subarray(at, e), (w) => w >>> 16).buffer), 2, e - at);
              else if (block % 2) sel.visitPatterns(new Uint8Array(bits.slice(at, e).buffer), 4, e - at);
              else sel.visitF32(bits.slice(at, e), e - at);
            } else sel.visit(new Uint32Array(Float64Array.from(values.subarray(at, e)).buffer), e - at);
          }
          sel.end();
        }
        const want = ranks.map((r) => {
          const j = order[r];
          return { mag: Math.abs(values[j]), pattern: bits[j] & 0x7fffffff, ties: order.slice(0, r).filter((i) => (bits[i] & 0x7fffffff) === (bits[j] & 0x7fffffff)).length };
        });
        // Back from the float64 pattern to the F32 one (exact for every F32, NaN payloads included).
        const got = sel.results().map((e) => {
          const mag = new Float64Array(new Uint32Array([e.lo, e.hi]).buffer)[0];
          return { mag, pattern: new Uint32Array(Float32Array.of(mag).buffer)[0], ties: e.ties };
        });
        expect(got, `n ${n} distinct ${distinct} wasm ${wasm}`).toEqual(want);
      }
    }
    // The second digit came from F32 patterns too, in some case.
    expect(secondDigits).toBeGreaterThan(0);
  });
});

describe('the WebAssembly two-delta TIES kernel', () => {
  it('gives the JavaScript loop\'s bytes on adversarial inputs (ties at cut-offs, signed zeros, subnormals, NaN/Inf, midpoints)', async () => {
    await loadAssembler();
    let state = 7;
    const rand = () => ((state = (Math.imul(state, 1103515245) + 12345) >>> 0) / 2 ** 32);
    const pick = <T,>(xs: readonly T[]) => xs[Math.floor(rand() * xs.length)];
    // Deltas from a small pool, so that many equal the cut-offs and sums land on BF16 midpoints (1 + 2^-8)
    // or next to one (2^-8 + 2^-40: an F32 midpoint the float64 is not).
    const pool = [0, -0, 2 ** -8, -(2 ** -8), 3 * 2 ** -9, -(3 * 2 ** -9), 2 ** -8 + 2 ** -40, 2 ** -140, -(2 ** -149), 1, -1, 0.5, Infinity, -Infinity, NaN, 2 ** 127, -(2 ** 127)];
    const bases = [1, -1, 0, -0, 2 ** -130, 3 * 2 ** -9, 2 ** 127 * 1.9921875, NaN, Infinity, -Infinity, 65504];
    const enc = (dt: Dt, xs: number[]): Uint8Array => {
      if (dt === 'F64') return new Uint8Array(Float64Array.from(xs).buffer);
      if (dt === 'F32') return new Uint8Array(Float32Array.from(xs).buffer);
      const f = Float32Array.from(xs);
      return new Uint8Array(Uint16Array.from(new Uint32Array(f.buffer), (b) => b >>> 16).buffer);
    };
    const bitsOf = (mag: number, ties: number) => {
      const w = new Uint32Array(Float64Array.of(mag).buffer);
      return { lo: w[0], hi: w[1], ties };
    };
    const combos: [Dt, Dt, Dt][] = [['BF16', 'F32', 'F32'], ['BF16', 'BF16', 'F32'], ['BF16', 'BF16', 'BF16'], ['BF16', 'F64', 'F32'], ['F32', 'F32', 'BF16'], ['F64', 'F64', 'F64']];
    let compared = 0;
    for (const [base, t0, t1] of combos) {
      for (const normalize of [true, false]) {
        const n = 9003;
        const d0 = Array.from({ length: n }, () => pick(pool));
        const d1 = Array.from({ length: n }, () => (rand() < 0.3 ? pick(pool) * 0.75 : pick(pool)));
        const b = Array.from({ length: n }, () => pick(bases));
        const range = (d: number[], from: boolean) => {
          const mags = d.map(Math.abs).filter((v) => v === v);
          const to = pick(mags);
          const r: { to?: ReturnType<typeof bitsOf>; from?: ReturnType<typeof bitsOf> } = { to: bitsOf(to, Math.floor(rand() * 50)) };
          if (from) r.from = bitsOf(Math.max(to, pick(mags)), Math.floor(rand() * 50));
          return r;
        };
        const spec = { method: 'breadcrumbs-ties' as const, density: 0.2, lambda: pick([1, 0.5, -1.5]), normalize };
        const operands = [
          { delta: 0, weight: pick([0.7, 1, -0.5]), dtype: t0, data: enc(t0, d0), keep: range(d0, rand() < 0.5) },
          { delta: 1, weight: pick([0.5, 2, 0]), dtype: t1, data: enc(t1, d1), keep: range(d1, rand() < 0.5) },
        ];
        const baseBytes = enc(base, b);
        const size = base === 'F64' ? 8 : base === 'F32' ? 4 : 2;
        const outs = [true, false].map((wasm) => {
          const k = new FusionKernel(spec as never);
          if (!wasm) (k as unknown as { wasm: null }).wasm = null;
          const out = new Uint8Array(n * size);
          // Two chunks, so that the tie counts carry from one call to the next.
          for (const [a, e] of [[0, 5001], [5001, n]]) {
            const ops = operands.map((o) => ({ ...o, data: o.data.subarray(a * (o.dtype === 'F64' ? 8 : o.dtype === 'F32' ? 4 : 2)) }));
            k.combine('t', base, baseBytes.subarray(a * size), ops, a, e - a, out.subarray(a * size, e * size));
          }
          expect((k as unknown as { wasm: unknown }).wasm === null).toBe(!wasm);
          return out;
        });
        expect(Buffer.from(outs[0]).equals(Buffer.from(outs[1]))).toBe(true);
        compared++;
      }
    }
    expect(compared).toBe(combos.length * 2);
  });
});

describe('the four-lane TIES kernel (F32 patterns, boundary ties kept per block)', () => {
  it('gives the JavaScript loop\'s bytes: cut-offs that are no F32, at 0 and Inf, ties crossing inside blocks, NaN, ±0, subnormals', async () => {
    await loadAssembler();
    let state = 99;
    const rand = () => ((state = (Math.imul(state, 1103515245) + 12345) >>> 0) / 2 ** 32);
    const pick = <T,>(xs: readonly T[]) => xs[Math.floor(rand() * xs.length)];
    // NaN and Inf (which send a BF16 block to the exact kernel) only in elements 12288 … 12799.
    const pool = [0, -0, 2 ** -8, 3 * 2 ** -9, 2 ** -149, 2 ** -130, 1, 0.5, 3.4028234663852886e38, 2 ** -8 + 2 ** -16, 2 ** -8 + 2 ** -23];
    const wild = [Infinity, NaN, -NaN, 2 ** -8];
    const bases = [1, -1, 0, -0, 2 ** -130, 3 * 2 ** -9, 1 + 2 ** -8, 65504, 2 ** 127 * 1.9921875];
    const wildBases = [NaN, Infinity, -Infinity, 1];
    const special = (j: number) => j >= 12288 && j < 12800;
    const enc = (dt: Dt, xs: number[]): Uint8Array => {
      if (dt === 'F64') return new Uint8Array(Float64Array.from(xs).buffer);
      if (dt === 'F32') return new Uint8Array(Float32Array.from(xs).buffer);
      const f = Float32Array.from(xs);
      return new Uint8Array(Uint16Array.from(new Uint32Array(f.buffer), (b) => b >>> 16).buffer);
    };
    const bitsOf = (mag: number, ties: number) => {
      const w = new Uint32Array(Float64Array.of(mag).buffer);
      return { lo: w[0], hi: w[1], ties };
    };
    // Cut-off magnitudes: elements' own (ties), and values no F32 or BF16 holds (from a float64 stretch), 0, Inf, beyond F32.
    const cutoff = (mags: number[]) => (rand() < 0.6 ? pick(mags) : pick([0, Infinity, 2 ** -8 + 2 ** -40, 3 * 2 ** -9 - 2 ** -60, 1e-50, 1e300, 2 ** -149 * 0.75]));
    let compared = 0;
    let fast = 0;
    let exact = 0;
    // An F64 base shows every difference in m; BF16 rounds small ones away.
    const combos: [Dt, Dt, Dt][] = [['BF16', 'F32', 'F32'], ['BF16', 'BF16', 'F32'], ['BF16', 'BF16', 'BF16'], ['F32', 'F32', 'BF16'], ['F64', 'BF16', 'F32'], ['F64', 'F32', 'F32'], ['F64', 'BF16', 'BF16']];
    for (const [base, t0, t1] of combos) {
      for (let round = 0; round < 12; round++) {
        const n = 3 * 4096 + 4 * Math.floor(rand() * 300) + (round === 11 ? 3 : 0);
        // Runs of equal elements, so that a boundary's ties cross inside a block and blocks hold none or only equal ones.
        const run = (): number[] => {
          const xs: number[] = [];
          while (xs.length < n) {
            const v = (special(xs.length) ? pick(wild) : pick(pool)) * (rand() < 0.2 ? 0.75 : 1);
            const len = rand() < 0.1 ? 1 + Math.floor(rand() * 3000) : 1 + Math.floor(rand() * 8);
            for (let i = 0; i < len && xs.length < n; i++) xs.push(rand() < 0.5 ? v : -v);
          }
          return xs;
        };
        const d0 = run();
        const d1 = run();
        const b = Array.from({ length: n }, (_, j) => pick(special(j) ? wildBases : bases));
        const normalize = round % 2 === 0;
        const range = (d: number[]) => {
          const mags = d.map(Math.abs).filter((v) => v === v);
          // Tie counts: none, all, past all, at a block's end (the next block starts exactly at the count) or one
          // either side of it, anything; a cut-off no element equals (from a float64 stretch) may have many.
          const ties = (m: number) => {
            const at = d.flatMap((v, j) => (Math.abs(v) === m ? [j] : []));
            if (!at.length) return Math.floor(rand() * 100);
            const inBlocks = at.filter((j) => j < 4096 * (1 + Math.floor(rand() * 2))).length;
            return Math.max(0, pick([0, at.length, at.length + 1, inBlocks, inBlocks - 1, inBlocks + 1, inBlocks - 1, inBlocks + 1, Math.floor(rand() * (at.length + 2))]));
          };
          const to = cutoff(mags);
          const r: { to?: ReturnType<typeof bitsOf>; from?: ReturnType<typeof bitsOf> } = { to: bitsOf(to, ties(to)) };
          if (round % 3 === 1) {
            const from = Math.max(to, cutoff(mags));
            r.from = bitsOf(from, ties(from));
          }
          if (round % 6 === 4 && rand() < 0.5) delete r.to;
          return r;
        };
        const spec = { method: 'breadcrumbs-ties' as const, density: 0.2, lambda: pick([1, 0.5, -1.5]), normalize };
        const operands = [
          { delta: 0, weight: pick([0.7, 1, -0.5]), dtype: t0, data: enc(t0, d0), keep: range(d0) },
          { delta: 1, weight: pick([0.5, 2, 0]), dtype: t1, data: enc(t1, d1), keep: range(d1) },
        ];
        const baseBytes = enc(base, b);
        const size = base === 'F64' ? 8 : base === 'F32' ? 4 : 2;
        const cut = 4 * Math.floor(rand() * (n / 4));
        const outs = [true, false].map((wasm) => {
          const k = new FusionKernel(spec as never);
          const w = wasm ? Ties2Wasm.create()! : null;
          (k as unknown as { wasm: Ties2Wasm | null }).wasm = w;
          if (w) {
            // Count the blocks the four-lane kernel settled (the others went to the exact one).
            const inner = w as unknown as { run4: (...a: unknown[]) => boolean };
            const run4 = inner.run4.bind(w);
            inner.run4 = (...a: unknown[]) => {
              const done = run4(...a);
              if (done) fast++;
              else exact++;
              return done;
            };
          }
          const out = new Uint8Array(n * size);
          for (const [a, e] of [[0, cut], [cut, n]]) {
            if (a === e) continue;
            const ops = operands.map((o) => ({ ...o, data: o.data.subarray(a * (o.dtype === 'F64' ? 8 : o.dtype === 'F32' ? 4 : 2)) }));
            k.combine('t', base, baseBytes.subarray(a * size), ops, a, e - a, out.subarray(a * size, e * size));
          }
          return out;
        });
        expect(Buffer.from(outs[0]).equals(Buffer.from(outs[1])), `${base} ${t0} ${t1} round ${round}`).toBe(true);
        compared++;
      }
    }
    expect(compared).toBe(combos.length * 12);
    // Most blocks take the four-lane kernel; some (crossings, NaN) the exact one.
    expect(fast).toBeGreaterThan(exact);
    expect(exact).toBeGreaterThan(0);
  });
});
