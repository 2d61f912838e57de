// Figures about a delta: ‖Δ‖, ‖W‖ and their ratio per tensor, layer and kind; rounding; dtype mix; sizes;
// and cosine similarity with other deltas. Recorded norms (delta.json) need no streaming; similarity, older
// deltas and --base stream through the one loop, chunk by chunk, summing in float64.
import { dtypeSize, isFloatDType, type FloatDType } from '../format/dtype.js';
import { openCheckpoint, MODEL_LAYOUT, type Checkpoint, type CheckpointTensor } from '../format/checkpoint.js';
import { CompactShards } from '../codec/reader.js';
import { chunkLength } from '../codec/format.js';
import { codecPool, sharedBytes } from '../codec/pool.js';
import { frameBound } from '../codec/chunk.js';
import { InputError } from '../errors.js';
import { TOOL_VERSION } from '../version.js';
import { openDelta } from '../ops/delta.js';
import { modelIdentity } from '../ops/manifest.js';
import type { OpenedDelta } from '../ops/plan.js';
import { SourceCache, streamTensors, alignedChunkElements, type Slot } from '../ops/stream.js';
import { DEFAULT_BUFFER_BYTES, slotsFor, type ExecEnv } from '../ops/env.js';
import { ANALYSIS_FORMAT, TENSOR_KINDS, analysisSchema, type DeltaAnalysis, type FusionAnalysis, type FusionCounts, type Norms, type SignCounts, type Similarity, type TensorAnalysis, type TensorKind } from './report.js';
import { kindOf, layerOf } from './kinds.js';
import { widen } from './widen.js';
import { addSigns, countSigns, noSigns } from './signs.js';
import { addFusionCounts, FusionTally, noFusionCounts } from './fusion.js';
import { electsSign, usesRanks, type FusionSpec } from '../fusion/options.js';

export interface AnalyzeOptions {
  /** Deltas to compare with: a reference (the report names it as given), or a reference and the name to show. */
  against?: (string | { ref: string; label: string })[];
  /** The base the delta was taken from, streamed for ‖W‖ (needed only when delta.json records no base norms). */
  base?: string;
  /** Called once before any tensor data is read, with the bytes the analysis will stream (0: none). */
  onStart?: (bytes: number) => void;
  /**
   * A sparse fusion method (checkFusion's spec): count what it keeps of each delta and the signs among the
   * kept elements. The deltas are this one and then each `against`, in that order (as apply takes them); they
   * must hold the same tensors with the same shapes, taken from the same base.
   */
  fusion?: FusionSpec | null;
  /** With `fusion`: each delta's weight wᵢ, in the same order (default 1 each). */
  scales?: number[];
}

/** One input streamed alongside the delta: the delta itself, a delta to compare with, or the base. */
interface Source {
  ref: string;
  layout: 'compact' | 'safetensors';
  ckpt: Checkpoint;
  chunkElements?: number;
}

/** Per tensor sums of squares and products, in float64, over finite elements. */
interface Sums {
  delta: number;
  base: number;
  /** Per delta compared with: Σ Δ·Δⱼ, Σ Δⱼ² and the signs, or null where it lacks the tensor (or holds another shape). */
  against: ({ dot: number; sq: number; signs: SignCounts } | null)[];
}

/** A tensor the analysis streams, and which sources hold it (the delta itself always first). */
interface Streamed {
  name: string;
  elements: number;
  sources: { k: number; t: CheckpointTensor }[];
  /** Counted for the fusion method too. */
  fused: boolean;
}

/** A stretch of a chunk as read: its elements from `start`, in `dtype`. */
interface Piece {
  start: number;
  n: number;
  dtype: FloatDType;
  bytes: Uint8Array;
}

const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((x, i) => x === b[i]);
const gcd = (a: number, b: number): number => (b ? gcd(b, a % b) : a);

/**
 * Analyzes the delta at `ref` (either layout). ‖Δ‖ and ‖W‖ come from delta.json where it records them;
 * otherwise the delta (and `base`, when given) is streamed. Every `against` delta is streamed with it for
 * the cosine similarities. Memory stays within env.bufferBytes whatever the model size.
 */
export async function analyzeDelta(env: ExecEnv, ref: string, opts: AnalyzeOptions = {}): Promise<DeltaAnalysis> {
  const delta = await openDelta(env.resolve, ref);
  const m = delta.manifest;
  const against: { label: string; d: OpenedDelta }[] = [];
  for (const a of opts.against ?? []) {
    const r = typeof a === 'string' ? { ref: a, label: a } : a;
    against.push({ label: r.label, d: await openDelta(env.resolve, r.ref) });
  }
  const fusion = opts.fusion ?? null;
  const deltaCount = 1 + against.length;
  if (!fusion && opts.scales !== undefined) throw new InputError('--scale: has no meaning without a sparse --method');
  const scales = opts.scales ?? new Array<number>(deltaCount).fill(1);
  if (scales.length !== deltaCount || !scales.every(Number.isFinite)) throw new InputError(`--scale: ${deltaCount} finite weights expected (one per delta), got ${JSON.stringify(opts.scales)}`);
  if (fusion) checkFusable(ref, delta, against.map((a) => a.d));
  let base: Checkpoint | null = null;
  if (opts.base !== undefined) {
    base = await openCheckpoint(env.resolve(opts.base), MODEL_LAYOUT);
    if (modelIdentity(base).signature !== m.base.signature) {
      throw new InputError(`${opts.base}: not the base this delta was computed from (its tensor names, dtypes and shapes differ from ${ref}/delta.json's base)`);
    }
  }

  const names = delta.ckpt.tensors.map((t) => t.name);
  const sums = new Map<string, Sums>();
  const sources: Source[] = [
    { ref, layout: m.layout, ckpt: delta.ckpt, chunkElements: m.compact?.chunkElements },
    ...against.map(({ d }) => ({ ref: d.ref, layout: d.manifest.layout, ckpt: d.ckpt, chunkElements: d.manifest.compact?.chunkElements })),
    ...(base ? [{ ref: opts.base!, layout: 'safetensors' as const, ckpt: base }] : []),
  ];
  const baseIndex = base ? sources.length - 1 : -1;
  const streamed: Streamed[] = [];
  for (const t of delta.ckpt.tensors) {
    const list = [{ k: 0, t }];
    sources.forEach((s, k) => {
      if (k === 0) return;
      const o = s.ckpt.byName.get(t.name);
      if (o && isFloatDType(o.dtype) && sameShape(o.shape, t.shape)) list.push({ k, t: o });
    });
    // checkFusable made every delta hold the tensor; a non-float one takes no part in fusion (apply copies it).
    const fused = fusion !== null && isFloatDType(t.dtype) && list.filter((x) => x.k < deltaCount).length === deltaCount;
    const needed = m.tensors[t.name].deltaNorm === undefined || list.length > 1 || fused;
    sums.set(t.name, { delta: 0, base: 0, against: against.map((_, j) => (list.some((x) => x.k === j + 1) ? { dot: 0, sq: 0, signs: noSigns() } : null)) });
    if (needed && t.elements > 0) streamed.push({ name: t.name, elements: t.elements, sources: list, fused });
  }
  const tally = fusion ? new FusionTally(fusion, scales) : null;

  const cache = new SourceCache(env.resolve);
  try {
    const dtypes = await dtypeMix(delta, cache);
    const size = (t: CheckpointTensor) => dtypeSize(t.dtype);
    // A rank method reads the deltas once more (at least) to find the cut-offs.
    const rankPass = fusion && usesRanks(fusion.method) ? 1 : 0;
    const total = streamed.reduce((a, s) => a + s.sources.reduce((b, x) => b + s.elements * size(x.t) * (s.fused && x.k < deltaCount ? 1 + rankPass : 1), 0), 0);
    opts.onStart?.(total);
    if (streamed.length) await streamSums(env, sources, streamed, sums, baseIndex, cache, tally, deltaCount);
    // Pairs (0, j) of the tally are DELTA against --against j−1: the similarity's signs of fused tensors.
    for (const s of streamed) if (tally && s.fused) sums.get(s.name)!.against.forEach((a, j) => a && (a.signs = tally.counts(s.name).pairs[j].signs));
    const fusionReport = tally ? fusionAnalysis(tally, fusion!, [ref, ...against.map((a) => a.label)], scales, streamed.filter((s) => s.fused).map((s) => s.name)) : undefined;
    return report(ref, delta, against.map((a) => a.label), names, sums, dtypes, base !== null, streamed, fusionReport);
  } finally {
    await cache.closeAll();
  }
}

/** Elements per stored dtype: per tensor in the plain layout, per chunk in the compact one (each chunk has its own). */
async function dtypeMix(delta: OpenedDelta, cache: SourceCache): Promise<Record<string, number>> {
  const mix: Record<string, number> = {};
  const add = (d: string, n: number) => (mix[d] = (mix[d] ?? 0) + n);
  if (delta.manifest.layout !== 'compact') {
    for (const t of delta.ckpt.tensors) add(t.dtype, t.elements);
    return mix;
  }
  const shards = new CompactShards((r, f) => cache.get(r, f));
  for (const t of delta.ckpt.tensors) {
    const shard = await shards.get(delta.ref, t.file);
    const ct = shard.tensor(t.name);
    ct.chunks.forEach((c, i) => add(c[0], chunkLength(ct.elements, shard.chunkElements, i)));
  }
  return mix;
}

/**
 * Streams every listed tensor of every source that holds it, accumulating sums of squares, dot products and
 * signs, and the fusion tally's counts. A tensor a rank method needs cut-offs for streams its deltas first in
 * ranking passes (the radix select's, as many as it takes), then once more for the counts.
 */
async function streamSums(
  env: ExecEnv,
  sources: Source[],
  streamed: Streamed[],
  sums: Map<string, Sums>,
  baseIndex: number,
  cache: SourceCache,
  tally: FusionTally | null,
  deltaCount: number,
): Promise<void> {
  const width = sources.map((_, k) => Math.max(1, ...streamed.flatMap((s) => s.sources.filter((x) => x.k === k).map((x) => dtypeSize(x.t.dtype)))));
  const compact = sources.map((s) => s.layout === 'compact');
  // A stream chunk spans whole compact chunks of every compact source.
  const unit = sources.reduce((u, s) => (s.chunkElements ? (u * s.chunkElements) / gcd(u, s.chunkElements) : u), 1);
  const count = slotsFor(env);
  // Per element in flight: each source's bytes (a compact one's frames and decoded chunk too), and its float64 copy.
  const perElement = width.reduce((a, w, k) => a + w + 8 + (compact[k] ? 2 * w + 1 : 0), 0) + (tally ? 8 * deltaCount + 8 : 0);
  const chunk = alignedChunkElements(perElement, env.bufferBytes ?? DEFAULT_BUFFER_BYTES, count, unit);
  const slots: Slot[] = Array.from({ length: count }, () => ({
    inputs: width.map((w, k) => new Uint8Array(compact[k] ? 0 : chunk * w)),
    out: new Uint8Array(0),
    aux: sources.flatMap((s, k) =>
      compact[k] ? [sharedBytes((chunk / s.chunkElements!) * width[k] * frameBound(s.chunkElements!)), sharedBytes(chunk * width[k])] : [],
    ),
  }));
  const auxAt = sources.map((_, k) => 2 * compact.slice(0, k).filter(Boolean).length);
  const scratch = sources.map(() => new Float64Array(chunk));
  const words = scratch.map((x) => new Uint32Array(x.buffer));
  const ranking = (st: Streamed) => tally !== null && st.fused && tally.ranking(st.name, st.elements);
  const shards = new CompactShards((r, f) => cache.get(r, f));
  const pool = codecPool();
  const layouts = new WeakMap<Slot, Piece[][]>();

  await streamTensors(
    {
      count: streamed.length,
      elements: (i) => streamed[i].elements,
      read: async (i, start, n, slot) => {
        const pieces: Piece[][] = sources.map(() => []);
        layouts.set(slot, pieces);
        // A ranking pass reads the deltas only.
        const deltasOnly = ranking(streamed[i]);
        await Promise.all(
          streamed[i].sources.map(async ({ k, t }) => {
            if (deltasOnly && k >= deltaCount) return;
            const s = sources[k];
            if (compact[k]) {
              const shard = await shards.get(s.ref, t.file);
              const ct = shard.tensor(t.name);
              const dest = slot.aux![auxAt[k] + 1];
              const got = await shard.read(ct, start, n, slot.aux![auxAt[k]], dest, pool);
              pieces[k] = got.map((p) => ({ start: p.start, n: p.n, dtype: p.dtype, bytes: dest.subarray(p.byteOffset, p.byteOffset + p.n * dtypeSize(p.dtype)) }));
              return;
            }
            const w = dtypeSize(t.dtype);
            const src = await cache.get(s.ref, t.file);
            const bytes = await src.read(t.offset + start * w, n * w, slot.inputs[k]);
            pieces[k] = [{ start: 0, n, dtype: t.dtype as FloatDType, bytes }];
          }),
        );
      },
      compute: (i, start, n, slot) => {
        const st = streamed[i];
        const acc = sums.get(st.name)!;
        const pieces = layouts.get(slot)!;
        let bytes = 0;
        if (ranking(st)) {
          if (start === 0) tally!.rankBegin(st.name, st.elements);
          for (const { k, t } of st.sources) {
            if (k >= deltaCount) continue;
            for (const p of pieces[k]) widen(p.dtype, p.bytes, p.n, scratch[k], p.start);
            tally!.rankVisit(st.name, k, words[k], n);
            bytes += n * dtypeSize(t.dtype);
          }
          env.onProgress?.(bytes);
          return null;
        }
        for (const { k, t } of st.sources) {
          for (const p of pieces[k]) widen(p.dtype, p.bytes, p.n, scratch[k], p.start);
          bytes += n * dtypeSize(t.dtype);
        }
        const x = scratch[0];
        const fused = tally !== null && st.fused;
        acc.delta += sumSquares(x, n);
        for (const { k } of st.sources) {
          if (k === 0) continue;
          if (k === baseIndex) acc.base += sumSquares(scratch[k], n);
          else {
            const a = acc.against[k - 1]!;
            const y = scratch[k];
            let dot = 0;
            for (let e = 0; e < n; e++) {
              const p = x[e] * y[e];
              if (Number.isFinite(p)) dot += p;
            }
            a.dot += dot;
            a.sq += sumSquares(y, n);
            // A fused tensor's pair (0, k) is counted by the tally (taken from it after streaming).
            if (!fused) countSigns(x, y, n, a.signs);
          }
        }
        if (fused) tally!.count(st.name, st.elements, start, n, scratch.slice(0, deltaCount));
        env.onProgress?.(bytes);
        return null;
      },
      // A tensor that was ranking streams again: for another ranking pass, or (its cut-offs found) for the counts.
      finish: (i) => {
        const st = streamed[i];
        if (!ranking(st)) return 'next';
        tally!.rankEnd(st.name);
        return 'redo';
      },
      redo: async () => undefined,
    },
    slots,
    chunk,
  );
}

/** Σ x² over the finite elements of x[0..n). */
function sumSquares(x: Float64Array, n: number): number {
  let s = 0;
  for (let e = 0; e < n; e++) {
    const v = x[e];
    if (Number.isFinite(v)) s += v * v;
  }
  return s;
}

const norms = (dsq: number, wsq: number): Norms => {
  const deltaNorm = Math.sqrt(dsq);
  const weightNorm = Math.sqrt(wsq);
  return { deltaNorm, weightNorm, relative: weightNorm > 0 ? deltaNorm / weightNorm : 0 };
};
const cosine = (dot: number, a: number, b: number) => (a > 0 && b > 0 ? dot / Math.sqrt(a * b) : 0);
// JSON has no Infinity: a rounding that overflowed is reported as the largest double.
const finite = (x: number) => (Number.isFinite(x) ? x : Number.MAX_VALUE);

function report(
  ref: string,
  delta: OpenedDelta,
  labels: string[],
  names: string[],
  sums: Map<string, Sums>,
  dtypes: Record<string, number>,
  baseStreamed: boolean,
  streamed: { name: string; sources: { k: number }[] }[],
  fusion?: FusionAnalysis,
): DeltaAnalysis {
  const m = delta.manifest;
  const baseIndex = baseStreamed ? labels.length + 1 : -1;
  const fromBase = new Set(streamed.filter((s) => s.sources.some((x) => x.k === baseIndex)).map((s) => s.name));
  const weightNormSources: Record<string, number> = {};
  const tensors: TensorAnalysis[] = names.map((name) => {
    const e = m.tensors[name];
    const acc = sums.get(name)!;
    const t = delta.ckpt.byName.get(name)!;
    const deltaNorm = e.deltaNorm ?? Math.sqrt(acc.delta);
    let weightNorm: number;
    let source: string;
    if (fromBase.has(name) || (baseStreamed && t.elements === 0)) [weightNorm, source] = [Math.sqrt(acc.base), 'base'];
    else if (e.baseNorm !== undefined) [weightNorm, source] = [e.baseNorm, 'recorded'];
    else if (e.relNorm > 0) [weightNorm, source] = [deltaNorm / e.relNorm, 'relNorm'];
    // relNorm 0 with a nonzero delta: the base was all zeros. With a zero delta, ‖W‖ is not recorded anywhere.
    else [weightNorm, source] = [0, deltaNorm > 0 ? 'relNorm' : 'unknown'];
    weightNormSources[source] = (weightNormSources[source] ?? 0) + 1;
    return {
      name,
      layer: layerOf(name),
      kind: kindOf(name),
      dtype: e.dtype,
      modelDtype: e.modelDtype,
      elements: t.elements,
      rounded: e.rounded,
      maxError: finite(e.maxError),
      deltaNorm,
      weightNorm,
      relative: weightNorm > 0 ? deltaNorm / weightNorm : 0,
    };
  });

  // Groups sum squares: ‖Δ‖ of a group is the norm of its tensors taken together.
  const group = <K>(key: (t: TensorAnalysis) => K | null) => {
    const g = new Map<K, { d: number; w: number; n: number }>();
    for (const t of tensors) {
      const k = key(t);
      if (k === null) continue;
      const s = g.get(k) ?? { d: 0, w: 0, n: 0 };
      s.d += t.deltaNorm ** 2;
      s.w += t.weightNorm ** 2;
      s.n++;
      g.set(k, s);
    }
    return g;
  };
  const layerIds = [...new Set(tensors.flatMap((t) => (t.layer === null ? [] : [t.layer])))].sort((a, b) => a - b);
  const byLayerKind = group((t) => (t.layer === null ? null : `${t.layer}/${t.kind}`));
  const byLayer = group((t) => t.layer);
  const byKind = group((t) => t.kind);
  const all = group(() => 0).get(0) ?? { d: 0, w: 0, n: 0 };

  const layers = layerIds.map((layer) => {
    const s = byLayer.get(layer)!;
    const kinds: Partial<Record<TensorKind, Norms>> = {};
    for (const kind of TENSOR_KINDS) {
      const k = byLayerKind.get(`${layer}/${kind}`);
      if (k) kinds[kind] = norms(k.d, k.w);
    }
    return { layer, ...norms(s.d, s.w), kinds };
  });
  const kinds: DeltaAnalysis['kinds'] = {};
  for (const kind of TENSOR_KINDS) {
    const k = byKind.get(kind);
    if (k) kinds[kind] = { ...norms(k.d, k.w), tensors: k.n };
  }

  const similarity: Similarity[] = labels.map((label, j) => {
    const fresh = () => ({ dot: 0, a: 0, b: 0, signs: noSigns() });
    const total = fresh();
    const perLayer = new Map<number, typeof total>();
    const perKind = new Map<TensorKind, typeof total>();
    const perTensor: NonNullable<Similarity['tensors']> = [];
    let shared = 0;
    for (const t of tensors) {
      const acc = sums.get(t.name)!;
      const o = acc.against[j];
      if (!o) continue;
      shared++;
      // The stored delta: ‖Δ‖² as streamed (delta.json's deltaNorm is of the exact delta, before any rounding).
      const dsq = acc.delta;
      const add = (s: typeof total) => {
        s.dot += o.dot;
        s.a += dsq;
        s.b += o.sq;
        addSigns(s.signs, o.signs);
      };
      add(total);
      if (t.layer !== null) {
        if (!perLayer.has(t.layer)) perLayer.set(t.layer, fresh());
        add(perLayer.get(t.layer)!);
      }
      if (!perKind.has(t.kind)) perKind.set(t.kind, fresh());
      add(perKind.get(t.kind)!);
      perTensor.push({ name: t.name, cosine: cosine(o.dot, dsq, o.sq), signs: o.signs });
    }
    const kindCos: Partial<Record<TensorKind, number>> = {};
    const kindSigns: NonNullable<Similarity['kindSigns']> = {};
    for (const kind of TENSOR_KINDS) {
      const s = perKind.get(kind);
      if (s) {
        kindCos[kind] = cosine(s.dot, s.a, s.b);
        kindSigns[kind] = s.signs;
      }
    }
    return {
      against: label,
      cosine: cosine(total.dot, total.a, total.b),
      sharedTensors: shared,
      layers: [...perLayer.entries()].sort((a, b) => a[0] - b[0]).map(([layer, s]) => ({ layer, cosine: cosine(s.dot, s.a, s.b), signs: s.signs })),
      kinds: kindCos,
      signs: total.signs,
      kindSigns,
      tensors: perTensor,
    };
  });

  const modelType = (c: Record<string, unknown>) => (typeof c.model_type === 'string' ? c.model_type : null);
  const analysis: DeltaAnalysis = {
    format: ANALYSIS_FORMAT,
    formatVersion: 1,
    tool: { name: 'paramdelta', version: TOOL_VERSION },
    createdAt: new Date().toISOString(),
    delta: {
      ref,
      layout: m.layout,
      base: { modelType: modelType(m.base.config), signature: m.base.signature },
      post: { modelType: modelType(m.post.config), signature: m.post.signature },
      tensors: tensors.length,
      parameters: tensors.reduce((a, t) => a + t.elements, 0),
      rawBytes: tensors.reduce((a, t) => a + t.elements * dtypeSize(t.dtype as FloatDType), 0),
      storedBytes: m.shards.reduce((a, s) => a + s.bytes, 0),
      dtypes,
      weightNormSources,
    },
    totals: norms(all.d, all.w),
    layers,
    kinds,
    tensors,
    lossy: tensors.some((t) => t.rounded > 0),
    similarity,
    ...(fusion ? { fusion } : {}),
  };
  // The schema is the contract with the dashboard: a figure it would refuse is a bug here, not bad input.
  return analysisSchema.parse(analysis);
}

/** --method fuses deltas as apply would: each must hold the same tensors with the same shapes, from the same base. */
function checkFusable(ref: string, delta: OpenedDelta, others: OpenedDelta[]): void {
  const shape = (x: readonly number[]) => `[${x.join(', ')}]`;
  for (const o of others) {
    for (const t of delta.ckpt.tensors) {
      const u = o.ckpt.byName.get(t.name);
      if (!u) throw new InputError(`tensor "${t.name}": in ${ref} but not in ${o.ref}; --method counts deltas that hold the same tensors`);
      if (!sameShape(u.shape, t.shape)) throw new InputError(`tensor "${t.name}": shape ${shape(t.shape)} in ${ref} but ${shape(u.shape)} in ${o.ref}`);
    }
    for (const u of o.ckpt.tensors) if (!delta.ckpt.byName.has(u.name)) throw new InputError(`tensor "${u.name}": in ${o.ref} but not in ${ref}; --method counts deltas that hold the same tensors`);
    if (o.manifest.base.signature !== delta.manifest.base.signature) {
      throw new InputError(`${o.ref}: taken from another base than ${ref} (their delta.json base signatures differ: tensor dtypes or shapes of the bases differ); --method counts deltas of the same base`);
    }
  }
}

/** The fusion counts per tensor, layer, kind and in all (groups sum the integer counts). */
function fusionAnalysis(tally: FusionTally, spec: FusionSpec, refs: string[], scales: number[], names: string[]): FusionAnalysis {
  const electing = electsSign(spec.method);
  const K = refs.length;
  const tensors = names.map((name) => ({ name, ...tally.counts(name) }));
  const totals = noFusionCounts(K, electing);
  const layers = new Map<number, { all: FusionCounts; kinds: Partial<Record<TensorKind, FusionCounts>> }>();
  const kinds: Partial<Record<TensorKind, FusionCounts>> = {};
  for (const t of tensors) {
    addFusionCounts(totals, t);
    const kind = kindOf(t.name);
    addFusionCounts((kinds[kind] ??= noFusionCounts(K, electing)), t);
    const layer = layerOf(t.name);
    if (layer === null) continue;
    let l = layers.get(layer);
    if (!l) layers.set(layer, (l = { all: noFusionCounts(K, electing), kinds: {} }));
    addFusionCounts(l.all, t);
    addFusionCounts((l.kinds[kind] ??= noFusionCounts(K, electing)), t);
  }
  // Kinds in TENSOR_KINDS order, as the rest of the report lists them.
  const ordered = <V>(r: Partial<Record<TensorKind, V>>) => Object.fromEntries(TENSOR_KINDS.filter((k) => r[k]).map((k) => [k, r[k]!])) as Partial<Record<TensorKind, V>>;
  const { method, density, gamma, lambda, seed, normalize } = spec;
  return {
    method,
    density,
    ...(gamma !== undefined ? { gamma } : {}),
    lambda,
    ...(seed !== undefined ? { seed } : {}),
    ...(normalize !== undefined ? { normalize } : {}),
    deltas: refs.map((r, i) => ({ ref: r, scale: scales[i] })),
    totals,
    layers: [...layers.entries()].sort((a, b) => a[0] - b[0]).map(([layer, l]) => ({ layer, ...l.all, kinds: ordered(l.kinds) })),
    kinds: ordered(kinds),
    tensors,
  };
}
