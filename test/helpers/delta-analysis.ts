// A DeltaAnalysis (lib/analyze/report.ts) computed here, directly from the models' tensors, for the
// dashboard and `analyze --html` tests: the figures the charts must show, found independently of
// any paramdelta code (BF16 decoded by hand, sums in float64).
import type { DeltaAnalysis, Norms, TensorKind } from '../../lib/analyze/report.js';
import type { LoadedTensor } from './models.js';
import { TOOL_VERSION } from '../../lib/version.js';

/** BF16 bits widened to float32 (its upper half): exact. */
export function bf16Values(t: LoadedTensor): Float64Array {
  if (t.dtype !== 'BF16') throw new Error(`expected BF16, got ${t.dtype}`);
  const n = t.bytes.length / 2;
  const wide = new Uint32Array(n);
  for (let i = 0; i < n; i++) wide[i] = t.bytes.readUInt16LE(2 * i) << 16;
  return Float64Array.from(new Float32Array(wide.buffer));
}

export function kindOf(name: string): TensorKind {
  if (/lm_head/.test(name)) return 'head';
  if (/embed/.test(name)) return 'embedding';
  if (/norm/.test(name)) return 'norm';
  if (/self_attn|attention/.test(name)) return 'attention';
  if (/mlp|feed_forward/.test(name)) return 'mlp';
  return 'other';
}

export const layerOf = (name: string): number | null => {
  const m = /\.layers\.(\d+)\./.exec(name);
  return m ? Number(m[1]) : null;
};

const norms = (d2: number, w2: number): Norms => {
  const deltaNorm = Math.sqrt(d2), weightNorm = Math.sqrt(w2);
  return { deltaNorm, weightNorm, relative: weightNorm > 0 ? deltaNorm / weightNorm : 0 };
};

export interface DeltaOf {
  /** Δ per tensor, float64, in the base's tensor order. */
  delta: Map<string, Float64Array>;
  base: Map<string, Float64Array>;
}

export function deltaOf(base: Map<string, LoadedTensor>, post: Map<string, LoadedTensor>): DeltaOf {
  const delta = new Map<string, Float64Array>();
  const b = new Map<string, Float64Array>();
  for (const [name, t] of base) {
    const w = bf16Values(t);
    const p = bf16Values(post.get(name)!);
    b.set(name, w);
    delta.set(name, w.map((x, i) => p[i] - x));
  }
  return { delta, base: b };
}

/** Σ over groups of squared sums, keyed by a group function. */
function groupSquares(d: DeltaOf, key: (name: string) => string | null): Map<string, { d2: number; w2: number; tensors: number }> {
  const out = new Map<string, { d2: number; w2: number; tensors: number }>();
  for (const [name, delta] of d.delta) {
    const k = key(name);
    if (k === null) continue;
    const w = d.base.get(name)!;
    let d2 = 0, w2 = 0;
    for (let i = 0; i < delta.length; i++) {
      d2 += delta[i] * delta[i];
      w2 += w[i] * w[i];
    }
    const g = out.get(k) ?? { d2: 0, w2: 0, tensors: 0 };
    g.d2 += d2;
    g.w2 += w2;
    g.tensors++;
    out.set(k, g);
  }
  return out;
}

function cosine(a: DeltaOf, b: DeltaOf, names: string[]): number {
  let ab = 0, aa = 0, bb = 0;
  for (const n of names) {
    const x = a.delta.get(n)!, y = b.delta.get(n)!;
    for (let i = 0; i < x.length; i++) {
      ab += x[i] * y[i];
      aa += x[i] * x[i];
      bb += y[i] * y[i];
    }
  }
  return aa > 0 && bb > 0 ? ab / Math.sqrt(aa * bb) : 0;
}

export interface AnalysisInputs {
  ref: string;
  d: DeltaOf;
  /** The delta's dtype per tensor and the model's (from delta.json), and its stored bytes. */
  dtypes: Map<string, { dtype: string; modelDtype: string }>;
  storedBytes: number;
  /** Per tensor: elements the delta dtype rounded (0 for an exact delta). */
  rounded?: Map<string, number>;
  against: { ref: string; d: DeltaOf }[];
  signatures: { base: string; post: string };
}

const SIZES: Record<string, number> = { F64: 8, F32: 4, BF16: 2, F16: 2 };

export function analysisOf(x: AnalysisInputs): DeltaAnalysis {
  const names = [...x.d.delta.keys()];
  const perTensor = groupSquares(x.d, (n) => n);
  const layersSeen = [...new Set(names.map(layerOf).filter((l): l is number => l !== null))].sort((a, b) => a - b);
  const byLayer = groupSquares(x.d, (n) => (layerOf(n) === null ? null : String(layerOf(n))));
  const byLayerKind = groupSquares(x.d, (n) => (layerOf(n) === null ? null : `${layerOf(n)}/${kindOf(n)}`));
  const byKind = groupSquares(x.d, kindOf);
  const all = groupSquares(x.d, () => 'all').get('all')!;
  const dtypes: Record<string, number> = {};
  let parameters = 0, rawBytes = 0;
  for (const n of names) {
    const e = x.d.delta.get(n)!.length;
    const dt = x.dtypes.get(n)!.dtype;
    parameters += e;
    rawBytes += e * SIZES[dt];
    dtypes[dt] = (dtypes[dt] ?? 0) + e;
  }
  const kindsOf = (pick: (k: TensorKind) => { d2: number; w2: number } | undefined) => {
    const out: Partial<Record<TensorKind, Norms>> = {};
    for (const k of ['attention', 'mlp', 'norm', 'embedding', 'head', 'other'] as TensorKind[]) {
      const g = pick(k);
      if (g) out[k] = norms(g.d2, g.w2);
    }
    return out;
  };
  const rounded = x.rounded ?? new Map<string, number>();
  return {
    format: 'paramdelta.analysis',
    formatVersion: 1,
    tool: { name: 'paramdelta', version: TOOL_VERSION },
    createdAt: new Date().toISOString(),
    delta: {
      ref: x.ref,
      layout: 'compact',
      base: { modelType: 'llama', signature: x.signatures.base },
      post: { modelType: 'llama', signature: x.signatures.post },
      tensors: names.length,
      parameters,
      rawBytes,
      storedBytes: x.storedBytes,
      dtypes,
    },
    totals: norms(all.d2, all.w2),
    layers: layersSeen.map((l) => {
      const g = byLayer.get(String(l))!;
      return { layer: l, ...norms(g.d2, g.w2), kinds: kindsOf((k) => byLayerKind.get(`${l}/${k}`)) };
    }),
    kinds: Object.fromEntries(
      Object.entries(kindsOf((k) => byKind.get(k))).map(([k, v]) => [k, { ...v, tensors: byKind.get(k)!.tensors }]),
    ),
    tensors: names.map((n) => {
      const g = perTensor.get(n)!;
      return {
        name: n, layer: layerOf(n), kind: kindOf(n), ...norms(g.d2, g.w2),
        dtype: x.dtypes.get(n)!.dtype, modelDtype: x.dtypes.get(n)!.modelDtype,
        elements: x.d.delta.get(n)!.length, rounded: rounded.get(n) ?? 0, maxError: 0,
      };
    }),
    lossy: [...rounded.values()].some((r) => r > 0),
    similarity: x.against.map((o) => {
      const shared = names.filter((n) => o.d.delta.get(n)?.length === x.d.delta.get(n)!.length);
      const kinds: Partial<Record<TensorKind, number>> = {};
      for (const k of new Set(shared.map(kindOf))) kinds[k] = cosine(x.d, o.d, shared.filter((n) => kindOf(n) === k));
      return {
        against: o.ref,
        cosine: cosine(x.d, o.d, shared),
        sharedTensors: shared.length,
        layers: layersSeen.map((l) => ({ layer: l, cosine: cosine(x.d, o.d, shared.filter((n) => layerOf(n) === l)) })),
        kinds,
      };
    }),
  };
}
