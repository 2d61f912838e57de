import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import path from 'node:path';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { fixturesDir } from './helpers/fixtures.js';
import { loadTensors, localEnv } from './helpers/models.js';
import { decodeFloats, roundTo } from './helpers/floats.js';
import { runCli } from './helpers/cli.js';
import { runCompute } from '../lib/ops/run.js';
import { localOutput } from '../lib/storage/output.js';
import type { DeltaFormat } from '../lib/ops/manifest.js';
import type { DeltaDtypePolicy } from '../lib/ops/plan.js';
import { analyzeDelta, analysisSchema, kindOf, layerOf, type DeltaAnalysis } from '../lib/analyze/index.js';
import { InputError } from '../lib/errors.js';

const BF16 = path.join(fixturesDir, 'tiny-llama-bf16');
const STORIES = path.join(fixturesDir, 'stories260K-tuned-bf16');
const legacyDelta = new URL('./data/legacy-delta-v0.1.0-tiny-llama-bf16/', import.meta.url).pathname.replace(/\/$/, '');
/** Small chunk buffers, so every tensor streams in several chunks (and a compact one spans several compact chunks). */
const smallEnv = { ...localEnv, bufferBytes: 1 << 16 };

type Floats = Map<string, { dtype: string; shape: number[]; values: number[] }>;
async function floats(dir: string): Promise<Floats> {
  const out: Floats = new Map();
  for (const [name, t] of await loadTensors(dir)) out.set(name, { dtype: t.dtype, shape: t.shape, values: decodeFloats(t.dtype, t.bytes) });
  return out;
}

/** Per tensor: the exact delta post − base (float64), Σ Δ² and Σ W², computed here from the fixture tensors. */
interface Truth {
  name: string;
  dtype: string;
  shape: number[];
  delta: number[];
  dsq: number;
  wsq: number;
}
async function truth(family: string, post: string): Promise<Map<string, Truth>> {
  const [b, p] = await Promise.all([floats(path.join(family, 'base')), floats(path.join(family, post))]);
  const out = new Map<string, Truth>();
  for (const [name, bt] of b) {
    const delta = p.get(name)!.values.map((x, i) => x - bt.values[i]);
    out.set(name, {
      name, dtype: bt.dtype, shape: bt.shape, delta,
      dsq: delta.reduce((a, x) => a + x * x, 0),
      wsq: bt.values.reduce((a, x) => a + x * x, 0),
    });
  }
  return out;
}

/** What the tensor is, spelled out for these fixtures' Llama names. */
function expectedKind(name: string): string {
  if (name.endsWith('norm.weight')) return 'norm';
  if (name === 'model.embed_tokens.weight') return 'embedding';
  if (name === 'lm_head.weight') return 'head';
  if (name.includes('.self_attn.')) return 'attention';
  if (name.includes('.mlp.')) return 'mlp';
  return 'other';
}
const expectedLayer = (name: string) => (name.startsWith('model.layers.') ? Number(name.split('.')[2]) : null);

function close(got: number, want: number, rel = 1e-12) {
  expect(Math.abs(got - want)).toBeLessThanOrEqual(rel * Math.max(Math.abs(want), 1e-300));
}

/** Sums of squares over a group of tensors. */
function groupNorms(ts: Truth[]) {
  const d = ts.reduce((a, t) => a + t.dsq, 0);
  const w = ts.reduce((a, t) => a + t.wsq, 0);
  return { deltaNorm: Math.sqrt(d), weightNorm: Math.sqrt(w), relative: w > 0 ? Math.sqrt(d) / Math.sqrt(w) : 0 };
}
function expectNorms(got: { deltaNorm: number; weightNorm: number; relative: number }, want: ReturnType<typeof groupNorms>, rel = 1e-12) {
  close(got.deltaNorm, want.deltaNorm, rel);
  close(got.weightNorm, want.weightNorm, rel);
  close(got.relative, want.relative, rel);
}

/** Every figure of an analysis whose ‖Δ‖ and ‖W‖ are exact, against the truth. */
function expectFigures(a: DeltaAnalysis, t: Map<string, Truth>, rel = 1e-12) {
  expect(analysisSchema.parse(JSON.parse(JSON.stringify(a)))).toBeTruthy();
  const all = [...t.values()];
  expect(a.tensors.map((x) => x.name).sort()).toEqual(all.map((x) => x.name).sort());
  expect(a.delta.tensors).toBe(all.length);
  expect(a.delta.parameters).toBe(all.reduce((s, x) => s + x.delta.length, 0));
  for (const got of a.tensors) {
    const want = t.get(got.name)!;
    expect(got.kind, got.name).toBe(expectedKind(got.name));
    expect(got.layer, got.name).toBe(expectedLayer(got.name));
    expect(got.elements).toBe(want.delta.length);
    expect(got.modelDtype).toBe(want.dtype);
    expectNorms(got, groupNorms([want]), rel);
  }
  expectNorms(a.totals, groupNorms(all), rel);
  const layers = [...new Set(all.map((x) => expectedLayer(x.name)).filter((l) => l !== null))].sort();
  expect(a.layers.map((l) => l.layer)).toEqual(layers);
  for (const l of a.layers) {
    const inLayer = all.filter((x) => expectedLayer(x.name) === l.layer);
    expectNorms(l, groupNorms(inLayer), rel);
    const kinds = [...new Set(inLayer.map((x) => expectedKind(x.name)))].sort();
    expect(Object.keys(l.kinds).sort()).toEqual(kinds);
    for (const k of kinds) expectNorms((l.kinds as any)[k], groupNorms(inLayer.filter((x) => expectedKind(x.name) === k)), rel);
  }
  const kinds = [...new Set(all.map((x) => expectedKind(x.name)))].sort();
  expect(Object.keys(a.kinds).sort()).toEqual(kinds);
  for (const k of kinds) {
    const group = all.filter((x) => expectedKind(x.name) === k);
    expectNorms((a.kinds as any)[k], groupNorms(group), rel);
    expect((a.kinds as any)[k].tensors).toBe(group.length);
  }
}

/** Cosine over tensors both hold with the same shape, overall, by layer and by kind, computed from the truths. */
function expectCosines(s: DeltaAnalysis['similarity'][number], a: Map<string, Truth>, b: Map<string, Truth>) {
  const shared = [...a.values()].filter((x) => b.has(x.name) && JSON.stringify(b.get(x.name)!.shape) === JSON.stringify(x.shape));
  expect(s.sharedTensors).toBe(shared.length);
  const cos = (ts: Truth[]) => {
    let dot = 0, aa = 0, bb = 0;
    for (const x of ts) {
      const y = b.get(x.name)!.delta;
      x.delta.forEach((v, i) => ((dot += v * y[i]), (aa += v * v), (bb += y[i] * y[i])));
    }
    return aa > 0 && bb > 0 ? dot / Math.sqrt(aa * bb) : 0;
  };
  const near = (got: number, want: number) => expect(Math.abs(got - want)).toBeLessThanOrEqual(1e-12);
  near(s.cosine, cos(shared));
  const layers = [...new Set(shared.map((x) => expectedLayer(x.name)).filter((l) => l !== null))].sort();
  expect(s.layers.map((l) => l.layer)).toEqual(layers);
  for (const l of s.layers) near(l.cosine, cos(shared.filter((x) => expectedLayer(x.name) === l.layer)));
  const kinds = [...new Set(shared.map((x) => expectedKind(x.name)))].sort();
  expect(Object.keys(s.kinds).sort()).toEqual(kinds);
  for (const k of kinds) near((s.kinds as any)[k], cos(shared.filter((x) => expectedKind(x.name) === k)));
}

let tmp: string;
const dir = (name: string) => path.join(tmp, name);
function compute(base: string, post: string, out: string, format: DeltaFormat, opts: { chunkElements?: number; policy?: DeltaDtypePolicy } = {}) {
  return runCompute(localEnv, { base, post, shardSize: 5e9, format, ...opts }, () => localOutput(out));
}
let post: Map<string, Truth>;
let post2: Map<string, Truth>;

beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'paramdelta-analyze-'));
  await Promise.all([
    compute(path.join(BF16, 'base'), path.join(BF16, 'post'), dir('compact'), 'compact', { chunkElements: 1024 }),
    compute(path.join(BF16, 'base'), path.join(BF16, 'post'), dir('plain'), 'safetensors'),
    compute(path.join(BF16, 'base'), path.join(BF16, 'post2'), dir('post2'), 'safetensors'),
    compute(path.join(BF16, 'base'), path.join(BF16, 'post'), dir('lossy'), 'safetensors', { policy: 'bf16' }),
    compute(path.join(STORIES, 'base'), path.join(STORIES, 'post'), dir('stories'), 'compact'),
  ]);
  [post, post2] = await Promise.all([truth(BF16, 'post'), truth(BF16, 'post2')]);
}, 60_000);

afterAll(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** The smallest of (BF16, F32, F64) that holds every value exactly. */
function smallestExact(values: number[]): string {
  const bf16 = values.every((v) => roundTo('BF16', v) === v);
  if (bf16) return 'BF16';
  return values.every((v) => Math.fround(v) === v) ? 'F32' : 'F64';
}

describe('analyzeDelta: tiny-llama-bf16 post − base', () => {
  it.each(['plain', 'compact'])('%s layout: every figure equals the values computed from the fixture tensors', async (layout) => {
    const a = await analyzeDelta(smallEnv, dir(layout));
    expectFigures(a, post);
    expect(a.delta.ref).toBe(dir(layout));
    expect(a.delta.layout).toBe(layout === 'plain' ? 'safetensors' : 'compact');
    expect(a.delta.base.modelType).toBe('llama');
    expect(a.delta.weightNormSources).toEqual({ recorded: post.size });
    expect(a.lossy).toBe(false);
    expect(a.similarity).toEqual([]);
    // Sizes: the plain dtype of each tensor (the smallest exact one), and the shard files as stored.
    const dtypes = new Map([...post.values()].map((t) => [t.name, smallestExact(t.delta)]));
    for (const t of a.tensors) expect(t.dtype, t.name).toBe(dtypes.get(t.name));
    const size = { BF16: 2, F32: 4, F64: 8 } as Record<string, number>;
    expect(a.delta.rawBytes).toBe([...post.values()].reduce((s, t) => s + t.delta.length * size[dtypes.get(t.name)!], 0));
    const shards = (await readdir(dir(layout))).filter((f) => /^delta-\d+-of-\d+\.(safetensors|pdelta)$/.test(f));
    expect(shards.length).toBeGreaterThan(0);
    expect(a.delta.storedBytes).toBe((await Promise.all(shards.map((f) => stat(path.join(dir(layout), f))))).reduce((s, st) => s + st.size, 0));
    // The dtype mix: per tensor in the plain layout, per 1024-element chunk in the compact one.
    const mix: Record<string, number> = {};
    for (const t of post.values()) {
      const step = layout === 'plain' ? t.delta.length : 1024;
      for (let i = 0; i < t.delta.length; i += step) {
        const part = t.delta.slice(i, i + step);
        const d = layout === 'plain' ? dtypes.get(t.name)! : smallestExact(part);
        mix[d] = (mix[d] ?? 0) + part.length;
      }
    }
    expect(a.delta.dtypes).toEqual(mix);
  });

  it('a lossy BF16 delta: rounding counts and largest error per tensor, and ‖Δ‖ of the exact delta', async () => {
    const a = await analyzeDelta(localEnv, dir('lossy'));
    expectFigures(a, post);
    expect(a.lossy).toBe(true);
    expect(a.delta.dtypes).toEqual({ BF16: a.delta.parameters });
    let anyRounded = false;
    for (const t of a.tensors) {
      const d = post.get(t.name)!.delta;
      const errors = d.map((v) => Math.abs(roundTo('BF16', v) - v));
      expect(t.rounded, t.name).toBe(errors.filter((e) => e > 0).length);
      expect(t.maxError, t.name).toBe(Math.max(0, ...errors));
      anyRounded ||= t.rounded > 0;
    }
    expect(anyRounded).toBe(true);
  });

  it('an older delta (no recorded norms): ‖Δ‖ streamed, ‖W‖ from relNorm, or exact from --base', async () => {
    const a = await analyzeDelta(smallEnv, legacyDelta);
    // v_proj of layer 0 has a zero delta: its relNorm says nothing about ‖W‖.
    expect(a.delta.weightNormSources).toEqual({ relNorm: post.size - 1, unknown: 1 });
    const vproj = 'model.layers.0.self_attn.v_proj.weight';
    for (const t of a.tensors) {
      const want = post.get(t.name)!;
      close(t.deltaNorm, Math.sqrt(want.dsq));
      if (t.name === vproj) expect(t.weightNorm).toBe(0);
      else close(t.weightNorm, Math.sqrt(want.wsq), 1e-10);
    }
    const b = await analyzeDelta(smallEnv, legacyDelta, { base: path.join(BF16, 'base') });
    expect(b.delta.weightNormSources).toEqual({ base: post.size });
    expectFigures(b, post);
    await expect(analyzeDelta(localEnv, legacyDelta, { base: path.join(STORIES, 'base') })).rejects.toThrow(InputError);
  });
});

describe('analyzeDelta: similarity', () => {
  it('post and post2 deltas on the same base (compact against plain), both ways; a delta against itself is 1', async () => {
    const a = await analyzeDelta(smallEnv, dir('compact'), { against: [{ ref: dir('post2'), label: 'post2' }, dir('plain')] });
    expectFigures(a, post);
    expect(a.similarity.map((s) => s.against)).toEqual(['post2', dir('plain')]);
    expectCosines(a.similarity[0], post, post2);
    expectCosines(a.similarity[1], post, post);
    expect(Math.abs(a.similarity[1].cosine - 1)).toBeLessThan(1e-12);
    const b = await analyzeDelta(smallEnv, dir('post2'), { against: [dir('compact')] });
    expectFigures(b, post2);
    expectCosines(b.similarity[0], post2, post);
  });

  it('a real fine-tune (stories260K-tuned-bf16, tied embeddings) against a delta of another model: only tensors of the same shape count', async () => {
    const stories = await truth(STORIES, 'post');
    const a = await analyzeDelta(smallEnv, dir('stories'), { against: [dir('plain')] });
    expectFigures(a, stories);
    expect(a.layers).toHaveLength(5); // config.json: num_hidden_layers 5
    expect(a.kinds.head).toBeUndefined(); // tied: no lm_head
    expectCosines(a.similarity[0], stories, post);
    expect(a.similarity[0].sharedTensors).toBeGreaterThan(0);
    expect(a.similarity[0].sharedTensors).toBeLessThan(stories.size);
  });
});

describe('tensor kinds and layers from names', () => {
  it.each([
    ['model.embed_tokens.weight', 'embedding', null],
    ['lm_head.weight', 'head', null],
    ['model.norm.weight', 'norm', null],
    ['model.layers.12.self_attn.q_proj.weight', 'attention', 12],
    ['model.layers.3.self_attn.k_proj.bias', 'attention', 3], // Qwen2
    ['model.layers.3.self_attn.q_norm.weight', 'norm', 3], // Qwen3
    ['model.layers.0.mlp.down_proj.weight', 'mlp', 0],
    ['model.layers.7.block_sparse_moe.experts.2.w1.weight', 'mlp', 7], // Mixtral
    ['model.layers.7.input_layernorm.weight', 'norm', 7],
    ['model.layers.7.post_attention_layernorm.weight', 'norm', 7],
    ['model.rotary_emb.inv_freq', 'other', null],
  ])('%s: %s, layer %s', (name, kind, layer) => {
    expect(kindOf(name)).toBe(kind);
    expect(layerOf(name)).toBe(layer);
  });
});

describe('paramdelta analyze', () => {
  it('--json prints the report; the text shows the tables and the similarity', async () => {
    const j = await runCli(['analyze', dir('compact'), '--against', dir('post2'), '--json']);
    expect(j.code).toBe(0);
    const a = analysisSchema.parse(JSON.parse(j.stdout));
    expectFigures(a, post);
    expect(a.similarity.map((s) => s.against)).toEqual([dir('post2')]);
    expectCosines(a.similarity[0], post, post2);

    const t = await runCli(['analyze', dir('lossy'), '--against', dir('post2'), '--against', dir('plain'), '--top', '3']);
    expect(t.code).toBe(0);
    expect(t.stdout).toContain('‖Δ‖/‖W‖ by layer');
    expect(t.stdout).toContain('top 3 tensors by ‖Δ‖/‖W‖');
    expect(t.stdout).toMatch(/lossy: \d+ elements rounded in \d+ tensors/);
    expect(t.stdout).toContain(`${dir('post2')}: `);
    expect(t.stdout).toContain(`${dir('plain')}: 1.0000 over 21 shared tensors`);
  });

  it('--html writes one self-contained page holding the same report; never over a file or into an input', async () => {
    const page = path.join(tmp, 'report.html');
    const r = await runCli(['analyze', dir('compact'), '--against', dir('post2'), '--html', page, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const html = await readFile(page, 'utf8');
    const data = /<script id="paramdelta-analysis" type="application\/json">([\s\S]*?)<\/script>/.exec(html);
    expect(analysisSchema.parse(JSON.parse(data![1]))).toEqual({ ...analysisSchema.parse(JSON.parse(r.stdout)), createdAt: expect.any(String) });
    expect(html).not.toMatch(/<script[^>]+src=|<link[^>]+href=["']?https?:/);
    const again = await runCli(['analyze', dir('compact'), '--html', page]);
    expect([again.code, again.stderr]).toEqual([2, `paramdelta: error: --html ${page}: already exists; pass --force to replace it\n`]);
    const inside = await runCli(['analyze', dir('compact'), '--html', path.join(dir('compact'), 'r.html')]);
    expect(inside.code).toBe(2);
    expect(inside.stderr).toMatch(/--html: .* overlaps the input DELTA/);
    expect(await readdir(dir('compact'))).not.toContain('r.html');
  });

  it('bad input exits 2 with one line naming it', async () => {
    const r = await runCli(['analyze', path.join(BF16, 'base')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/no delta\.json/);
    const b = await runCli(['analyze', legacyDelta, '--base', path.join(STORIES, 'base')]);
    expect(b.code).toBe(2);
    expect(b.stderr).toMatch(/not the base this delta was computed from/);
  });
});
