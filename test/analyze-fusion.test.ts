// analyze's sign agreement between deltas and, with a sparse --method, each delta's kept fraction, the share
// that survives the sign election and the signs among kept elements (issue 12). Every count is computed in
// the tests from the fixture tensors (post − base in float64) by the rules, written out independently
// of lib/fusion and lib/analyze (test/helpers/fusion-counts.ts), and compared exactly.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import path from 'node:path';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { fixturesDir } from './helpers/fixtures.js';
import { loadTensors, localEnv } from './helpers/models.js';
import { deltaOf, signs, sumCounts, sumSigns, tensorCounts, type Counts, type Spec } from './helpers/fusion-counts.js';
import { runCli } from './helpers/cli.js';
import { runCompute } from '../lib/ops/run.js';
import { localOutput } from '../lib/storage/output.js';
import { analyzeDelta, analysisSchema, type DeltaAnalysis } from '../lib/analyze/index.js';
import { checkFusion, type FusionRequest } from '../lib/fusion/options.js';
import { InputError } from '../lib/errors.js';

const TINY = path.join(fixturesDir, 'tiny-llama-bf16');
const STORIES = path.join(fixturesDir, 'stories260K-tuned-f32');
const STORIES_BF16 = path.join(fixturesDir, 'stories260K-tuned-bf16');
/** Small chunk buffers: every tensor streams in several chunks, and each ranking pass too. */
const smallEnv = { ...localEnv, bufferBytes: 1 << 16 };

/** Llama names, spelled out for these fixtures. */
function kind(name: string): string {
  if (name.endsWith('norm.weight')) return 'norm';
  if (name === 'model.embed_tokens.weight') return 'embedding';
  if (name === 'lm_head.weight') return 'head';
  if (name.includes('.self_attn.')) return 'attention';
  return name.includes('.mlp.') ? 'mlp' : 'other';
}
const layer = (name: string) => (name.startsWith('model.layers.') ? Number(name.split('.')[2]) : null);

/** Every fusion figure of the report: per tensor, per layer (and kind within it), per kind and in all. */
function expectFusion(a: DeltaAnalysis, deltas: Map<string, number[]>[], weights: number[], s: Spec) {
  expect(analysisSchema.parse(JSON.parse(JSON.stringify(a)))).toBeTruthy();
  const f = a.fusion!;
  expect(f.method).toBe(s.method);
  expect(f.deltas.map((d) => d.scale)).toEqual(weights);
  const names = [...deltas[0].keys()];
  const want = new Map(names.map((name) => [name, tensorCounts(name, deltas.map((d) => d.get(name)!), weights, s)]));
  expect(f.tensors.map((t) => t.name).sort()).toEqual([...names].sort());
  for (const t of f.tensors) {
    const { name, ...got } = t;
    expect(got, name).toEqual(want.get(name));
  }
  const group = (pick: (name: string) => boolean) => sumCounts(names.filter(pick).map((x) => want.get(x)!));
  expect(f.totals).toEqual(group(() => true));
  const kinds = [...new Set(names.map(kind))].sort();
  expect(Object.keys(f.kinds).sort()).toEqual(kinds);
  for (const k of kinds) expect((f.kinds as Record<string, Counts>)[k], k).toEqual(group((x) => kind(x) === k));
  const layers = [...new Set(names.map(layer).filter((l) => l !== null))].sort();
  expect(f.layers.map((l) => l.layer)).toEqual(layers);
  for (const l of f.layers) {
    const { layer: id, kinds: lk, ...all } = l;
    expect(all).toEqual(group((x) => layer(x) === id));
    for (const [k, c] of Object.entries(lk)) expect(c, `${id}/${k}`).toEqual(group((x) => layer(x) === id && kind(x) === k));
  }
  // Sanity on the rules: a rank method keeps k(density) of each tensor (within the ranks that exist).
  if (!s.method.startsWith('dare')) for (const t of f.tensors) expect(t.kept.every((x) => x <= t.elements)).toBe(true);
  return f;
}

let tmp: string;
const dir = (name: string) => path.join(tmp, name);
function compute(family: string, post: string, out: string, format: 'compact' | 'safetensors', chunkElements?: number) {
  return runCompute(localEnv, { base: path.join(family, 'base'), post: path.join(family, post), shardSize: 5e9, format, ...(chunkElements ? { chunkElements } : {}) }, () => localOutput(dir(out)));
}
const spec = (r: FusionRequest) => checkFusion(r)!;
let tiny: Map<string, number[]>[];
let stories: Map<string, number[]>[];

beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'paramdelta-analyze-fusion-'));
  await Promise.all([
    compute(TINY, 'post', 'chat', 'compact', 1024),
    compute(TINY, 'post2', 'math', 'safetensors'),
    // A third delta, synthesized from the family: newbase − base.
    compute(TINY, 'newbase', 'third', 'compact', 4096),
    compute(STORIES, 'post', 'stories-chat', 'compact', 2048),
    compute(STORIES, 'newbase', 'stories-other', 'safetensors'),
    compute(STORIES_BF16, 'post', 'stories-bf16', 'compact'),
  ]);
  tiny = await Promise.all(['post', 'post2', 'newbase'].map((p) => deltaOf(TINY, p)));
  stories = await Promise.all(['post', 'newbase'].map((p) => deltaOf(STORIES, p)));
}, 60_000);

afterAll(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe('analyze: sign agreement with each --against delta', () => {
  it('per tensor, layer, kind and in all, over the tensors both hold with the same shape (compact against plain)', async () => {
    const a = await analyzeDelta(smallEnv, dir('chat'), { against: [dir('math'), dir('third')] });
    expect(a.fusion).toBeUndefined();
    for (const [j, other] of [tiny[1], tiny[2]].entries()) {
      const s = a.similarity[j];
      const per = new Map([...tiny[0]].map(([name, d]) => [name, signs(d, other.get(name)!)]));
      expect(new Map(s.tensors!.map((t) => [t.name, t.signs]))).toEqual(per);
      expect(s.signs).toEqual(sumSigns([...per.values()]));
      for (const l of s.layers) expect(l.signs).toEqual(sumSigns([...per].filter(([n]) => layer(n) === l.layer).map(([, x]) => x)));
      const kinds = [...new Set([...per.keys()].map(kind))].sort();
      expect(Object.keys(s.kindSigns!).sort()).toEqual(kinds);
      for (const k of kinds) expect(s.kindSigns![k as 'mlp']).toEqual(sumSigns([...per].filter(([n]) => kind(n) === k).map(([, x]) => x)));
    }
    // These posts were trained apart: about half the signs agree, and few elements are zero in both.
    const s = a.similarity[0].signs!;
    expect(s.agree + s.disagree + s.oneZero + s.bothZero).toBe(s.elements);
  });

  it('against a delta of another model: only the tensors of the same shape count', async () => {
    const a = await analyzeDelta(smallEnv, dir('stories-chat'), { against: [dir('chat')] });
    const s = a.similarity[0];
    const [mine, theirs] = await Promise.all([loadTensors(path.join(STORIES, 'base')), loadTensors(path.join(TINY, 'base'))]);
    const shared = [...mine].filter(([n, t]) => JSON.stringify(theirs.get(n)?.shape) === JSON.stringify(t.shape)).map(([n]) => n);
    expect(shared.length).toBeGreaterThan(0);
    expect(shared.length).toBeLessThan(mine.size);
    expect(s.tensors!.map((t) => t.name).sort()).toEqual([...shared].sort());
    expect(s.signs).toEqual(sumSigns(shared.map((n) => signs(stories[0].get(n)!, tiny[0].get(n)!))));
  });
});

describe('analyze --method: kept fraction, elected share and signs among kept elements', () => {
  it('ties, two deltas (compact and plain), several chunks per tensor', async () => {
    const s: Spec = { method: 'ties', density: 0.3 };
    const a = await analyzeDelta(smallEnv, dir('chat'), { against: [dir('math')], fusion: spec(s) });
    const f = expectFusion(a, tiny.slice(0, 2), [1, 1], s);
    // ties keeps k(density) of every tensor.
    for (const t of f.tensors) expect(t.kept).toEqual([0, 1].map(() => Math.floor(0.3 * t.elements + 0.5)));
    // The pair's signs are the similarity's.
    expect(f.totals.pairs[0].signs).toEqual(a.similarity[0].signs);
  });

  it('breadcrumbs-ties over three deltas, with weights (one negative: its τ flips sign)', async () => {
    const s: Spec = { method: 'breadcrumbs-ties', density: 0.4, gamma: 0.05 };
    const weights = [1, 0.5, -2];
    const a = await analyzeDelta(smallEnv, dir('chat'), { against: [dir('math'), dir('third')], fusion: spec(s), scales: weights });
    const f = expectFusion(a, tiny, weights, s);
    expect(f.deltas.map((d) => d.ref)).toEqual([dir('chat'), dir('math'), dir('third')]);
    expect(f.totals.pairs.map((p) => [p.a, p.b])).toEqual([[0, 1], [0, 2], [1, 2]]);
  });

  it.each([
    [{ method: 'dare-ties', density: 0.25, seed: '0' }],
    [{ method: 'dare-ties', density: 0.25, seed: '18446744073709551615' }],
    [{ method: 'dare-linear', density: 0.6, seed: '7' }],
    [{ method: 'breadcrumbs', density: 0.5 }],
  ] as [Spec][])('%o: two deltas', async (s) => {
    const a = await analyzeDelta(smallEnv, dir('chat'), { against: [dir('math')], fusion: spec(s) });
    const f = expectFusion(a, tiny.slice(0, 2), [1, 1], s);
    expect(f.totals.elected === undefined).toBe(!s.method.endsWith('ties'));
  });

  it('a real fine-tune (stories260K-tuned-f32, larger tensors: histogram passes) and its newbase delta, ties and dare-ties', async () => {
    for (const s of [{ method: 'ties', density: 0.2 }, { method: 'dare-ties', density: 0.3, seed: '42' }] as Spec[]) {
      const a = await analyzeDelta(smallEnv, dir('stories-chat'), { against: [dir('stories-other')], fusion: spec(s) });
      expectFusion(a, stories, [1, 1], s);
    }
  });

  it('refuses deltas that do not hold the same tensors, shapes and base, naming the tensor, before reading any tensor', async () => {
    const ties = spec({ method: 'ties', density: 0.5 });
    let started = false;
    const err = await analyzeDelta(localEnv, dir('chat'), { against: [dir('stories-chat')], fusion: ties, onStart: () => (started = true) }).catch((e) => e);
    expect(err).toBeInstanceOf(InputError);
    expect(err.message).toMatch(/^tensor "model\.embed_tokens\.weight": shape \[\d+, \d+\] in .*chat but \[\d+, \d+\] in .*stories-chat$/);
    expect(started).toBe(false);
    // Same tensors and shapes, another base (stories260K-tuned-bf16 against -f32: the dtypes differ).
    await expect(analyzeDelta(localEnv, dir('stories-bf16'), { against: [dir('stories-chat')], fusion: ties })).rejects.toThrow(/taken from another base/);
    await expect(analyzeDelta(localEnv, dir('chat'), { against: [dir('math')], fusion: ties, scales: [1] })).rejects.toThrow(/--scale: 2 finite weights expected/);
    await expect(analyzeDelta(localEnv, dir('chat'), { against: [dir('math')], scales: [1, 1] })).rejects.toThrow(/--scale: has no meaning without a sparse --method/);
  });
});

describe('FusionTally on adversarial values', () => {
  // ±0, ±Inf, NaN, the smallest subnormal and many equal magnitudes (ties at every cut-off), a negative and a
  // zero weight (0·Inf is NaN: a kept, nonzero τ without a sign), streamed in uneven chunks.
  const VALUES = [0, -0, 1, -1, 0.5, -0.5, 0.5, Infinity, -Infinity, NaN, 2 ** -1074, -(2 ** -1074), 3, -3, 0.25];
  let seed = 12345;
  const next = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0), seed);
  const n = 301;
  const deltas = [0, 1, 2].map(() => Array.from({ length: n }, () => VALUES[next() % VALUES.length]));
  it.each([
    [{ method: 'ties', density: 0.3 }],
    [{ method: 'breadcrumbs-ties', density: 0.3, gamma: 0.1 }],
    [{ method: 'breadcrumbs', density: 0.95, gamma: 0.1 }],
    [{ method: 'dare-ties', density: 0.5, seed: '3' }],
    [{ method: 'dare-linear', density: 0.5, seed: '3' }],
  ] as [Spec][])('%o', async (s) => {
    const { FusionTally } = await import('../lib/analyze/fusion.js');
    const weights = [1, -0.5, 0];
    const tally = new FusionTally(spec(s), weights);
    const arrays = deltas.map((d) => Float64Array.from(d));
    const cuts = [0, 7, 64, 65, 200, n];
    const words = (k: number, a: number, b: number) => new Uint32Array(arrays[k].slice(a, b).buffer);
    let passes = 0;
    while (tally.ranking('t', n)) {
      tally.rankBegin('t', n);
      for (let c = 0; c + 1 < cuts.length; c++) for (let k = 0; k < 3; k++) tally.rankVisit('t', k, words(k, cuts[c], cuts[c + 1]), cuts[c + 1] - cuts[c]);
      tally.rankEnd('t');
      expect(++passes).toBeLessThan(6);
    }
    for (let c = 0; c + 1 < cuts.length; c++) tally.count('t', n, cuts[c], cuts[c + 1] - cuts[c], arrays.map((x) => x.slice(cuts[c], cuts[c + 1])));
    expect(tally.counts('t')).toEqual(tensorCounts('t', deltas, weights, s));
  });
});

describe('paramdelta analyze --method', () => {
  it('--json holds the fusion counts; the text shows kept, elected and agreement; --scale follows its delta', async () => {
    const args = ['analyze', dir('chat'), '--scale', '2', '--against', dir('math'), '--against', dir('third'), '--scale', '-1', '--method', 'ties', '--density', '0.3'];
    const j = await runCli([...args, '--json']);
    expect(j.code, j.stderr).toBe(0);
    const a = analysisSchema.parse(JSON.parse(j.stdout));
    expectFusion(a, tiny, [2, 1, -1], { method: 'ties', density: 0.3 });
    expect(a.fusion).toMatchObject({ method: 'ties', density: 0.3, lambda: 1, normalize: true });
    const t = await runCli([...args, '--top', '2']);
    expect(t.code, t.stderr).toBe(0);
    const f = a.fusion!;
    const pct = (x: number, n: number) => `${((100 * x) / n).toFixed(1)}%`;
    expect(t.stdout).toContain(`fusion by ties (density 0.3, λ 1, normalize): deltas 0 ${dir('chat')} (scale 2), 1 ${dir('math')} (scale 1), 2 ${dir('third')} (scale -1)`);
    expect(t.stdout).toContain(`   1 kept ${pct(f.totals.kept[1], f.totals.elements)}, kept≠0 ${pct(f.totals.nonzero[1], f.totals.elements)}, elected ${pct(f.totals.elected![1], f.totals.elements)}`);
    const p = f.totals.pairs[2].signs;
    expect(t.stdout).toContain(`sign agreement 1–2: all ${pct(p.agree, p.agree + p.disagree)} of the ${pct(p.agree + p.disagree, p.elements)} of elements where both are nonzero`);
    expect(t.stdout).toContain('2 tensors with the least sign agreement 0–1');
    const plain = await runCli(['analyze', dir('chat'), '--against', dir('math')]);
    expect(plain.stdout).toMatch(/sign agreement: \d+\.\d% of the \d+\.\d% of elements where both are nonzero/);
    expect(plain.stdout).toContain('kept fractions: pass a sparse --method');
  });

  it.each([
    [['--density', '0.3'], /--density: has no meaning for method linear/],
    [['--method', 'ties'], /--density: required for method ties/],
    [['--method', 'ties', '--density', '1.5'], /--density: 1.5 is not a number in \(0, 1\]/],
    [['--method', 'ties', '--density', 'x'], /--density x: not a finite number/],
    [['--method', 'dare-ties', '--density', '0.3', '--seed', '-1'], /--seed: -1 is not a u64/],
    [['--method', 'ties', '--density', '0.3', '--seed', '1'], /--seed: has no meaning for method ties/],
    [['--method', 'magic', '--density', '0.3'], /argument 'magic' is invalid/],
    [['--scale', '2'], /--scale: has no meaning without a sparse --method/],
    [['--method', 'ties', '--density', '0.3', '--scale', '1', '--scale', '2'], /--scale 2: that --against already has a --scale/],
  ])('%o exits 2 naming the option', async (extra, message) => {
    const r = await runCli(['analyze', dir('chat'), '--against', dir('math'), ...extra]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stdout).toBe('');
  });

  it('--html holds the same report, fusion included', async () => {
    const page = path.join(tmp, 'fusion.html');
    const r = await runCli(['analyze', dir('chat'), '--against', dir('math'), '--method', 'dare-ties', '--density', '0.4', '--html', page, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const data = /<script id="paramdelta-analysis" type="application\/json">([\s\S]*?)<\/script>/.exec(await readFile(page, 'utf8'));
    const inPage = analysisSchema.parse(JSON.parse(data![1]));
    expect(inPage.fusion).toEqual(analysisSchema.parse(JSON.parse(r.stdout)).fusion);
    expectFusion(inPage, tiny.slice(0, 2), [1, 1], { method: 'dare-ties', density: 0.4 });
  });

  it('mismatched deltas exit 2 naming the tensor', async () => {
    const r = await runCli(['analyze', dir('chat'), '--against', dir('stories-chat'), '--method', 'ties', '--density', '0.2']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^paramdelta: error: tensor "model\.embed_tokens\.weight": shape/);
  });
});
