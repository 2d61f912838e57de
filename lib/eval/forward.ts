// The layer-streamed forward pass: half a decoder layer's weights in memory at a time, every
// sequence's hidden states carried through it, then the head in blocks of vocabulary rows.
import type * as Ort from 'onnxruntime-node';
import { halfLayerElements, layerTensorName, projectionPrefix, ropeInvFreq, type ModelSpec, type Projection } from './arch.js';
import { attentionGraph, headGraph, mlpGraph, normGraph, type LayerShape } from './graphs.js';
import type { EvalRuntime, Feeds } from './runtime.js';
import { WeightReader } from './weights.js';

/** How much work one kernel call gets; memory for activations follows from these. */
export interface BatchLimits {
  /** Padded tokens per decoder-layer call (default 256 on CPU, 8192 on CUDA). */
  batchTokens: number;
  /** Bytes of attention scores per call: batch × heads × T² × 4 (a single longer sequence still runs, alone). */
  attentionBytes: number;
  /** Bytes of logits per head call: positions × vocabulary rows × 4. */
  logitBytes: number;
  /** Bytes of head rows widened at a time (default and most: the weight arena, the larger half-layer in F32). */
  headBlockBytes?: number;
}

export const DEFAULT_LIMITS: Record<'cpu' | 'cuda', BatchLimits> = {
  cpu: { batchTokens: 256, attentionBytes: 64 << 20, logitBytes: 16 << 20 },
  cuda: { batchTokens: 8192, attentionBytes: 1 << 30, logitBytes: 1 << 30 },
};

/** Sequences run together in one call, right-padded to the longest. */
export interface Batch {
  /** Indices into the input sequences, longest first. */
  seqs: number[];
  T: number;
}

/** Groups sequences of similar length (longest first), so padding stays small and every call is bounded. */
export function planBatches(lengths: number[], heads: number, limits: BatchLimits): Batch[] {
  const order = lengths.map((_, i) => i).sort((a, b) => lengths[b] - lengths[a] || a - b);
  const batches: Batch[] = [];
  for (const i of order) {
    const last = batches[batches.length - 1];
    const n = last ? last.seqs.length + 1 : 0;
    if (last && n * last.T <= limits.batchTokens && n * heads * last.T * last.T * 4 <= limits.attentionBytes) last.seqs.push(i);
    else batches.push({ seqs: [i], T: lengths[i] });
  }
  return batches;
}

/**
 * Rows of the head's work: every batch's padded positions, batch after batch (B·T rows each). The
 * hidden states stay in this layout from the embedding to the head, so nothing is copied to pack them.
 */
export interface RowLayout {
  batches: Batch[];
  /** First row of each batch. */
  offsets: number[];
  total: number;
  /** The row of sequence `seq`, position `t`. */
  rowOf(seq: number, t: number): number;
}

export function rowLayout(batches: Batch[], sequences: number): RowLayout {
  const offsets: number[] = [];
  const where: { batch: number; row: number }[] = new Array(sequences);
  let total = 0;
  batches.forEach((b, bi) => {
    offsets.push(total);
    b.seqs.forEach((si, row) => (where[si] = { batch: bi, row }));
    total += b.seqs.length * b.T;
  });
  return {
    batches,
    offsets,
    total,
    rowOf: (seq, t) => offsets[where[seq].batch] + where[seq].row * batches[where[seq].batch].T + t,
  };
}

function layerShape(s: ModelSpec): LayerShape {
  const b = (p: Projection) => s.biases.has(p);
  return {
    hidden: s.hidden,
    heads: s.heads,
    kvHeads: s.kvHeads,
    headDim: s.headDim,
    intermediate: s.intermediate,
    eps: s.eps,
    qkvBias: b('q_proj') || b('k_proj') || b('v_proj'),
    oBias: b('o_proj'),
    gateUpBias: b('gate_proj') || b('up_proj'),
    downBias: b('down_proj'),
  };
}

export type LayerHalf = 'attention' | 'mlp';

/**
 * Half a layer's weights in float32, laid out as its graph takes them: views into the weight arena,
 * which each half (and later the head's row blocks) fills from the start.
 */
class HalfLayerWeights {
  readonly buffers: Record<string, Float32Array> = {};
  /** Which checkpoint tensors fill which buffer, at which element offset. */
  private readonly parts: { buffer: string; part: string; at: number; projection?: Projection }[] = [];

  constructor(private readonly s: ModelSpec, shape: LayerShape, half: LayerHalf, arena: Float32Array) {
    const q = s.heads * s.headDim;
    const kv = s.kvHeads * s.headDim;
    const H = s.hidden;
    const I = s.intermediate;
    let used = 0;
    const add = (buffer: string, elements: number, parts: { part: string; at: number; projection?: Projection }[]) => {
      if (used + elements > arena.length) throw new Error(`weight arena of ${arena.length} elements is too small for layer buffer ${buffer}`);
      this.buffers[buffer] = arena.subarray(used, used + elements);
      used += elements;
      for (const p of parts) this.parts.push({ buffer, ...p });
    };
    const w = (p: Projection) => `${projectionPrefix(p)}.weight`;
    const bias = (p: Projection) => `${projectionPrefix(p)}.bias`;
    if (half === 'attention') {
      add('ln1', H, [{ part: 'input_layernorm.weight', at: 0 }]);
      add('wqkv', (q + 2 * kv) * H, [{ part: w('q_proj'), at: 0 }, { part: w('k_proj'), at: q * H }, { part: w('v_proj'), at: (q + kv) * H }]);
      if (shape.qkvBias) {
        add('bqkv', q + 2 * kv, [
          { part: bias('q_proj'), at: 0, projection: 'q_proj' },
          { part: bias('k_proj'), at: q, projection: 'k_proj' },
          { part: bias('v_proj'), at: q + kv, projection: 'v_proj' },
        ]);
      }
      add('wo', H * q, [{ part: w('o_proj'), at: 0 }]);
      if (shape.oBias) add('bo', H, [{ part: bias('o_proj'), at: 0 }]);
    } else {
      add('ln2', H, [{ part: 'post_attention_layernorm.weight', at: 0 }]);
      add('wgu', 2 * I * H, [{ part: w('gate_proj'), at: 0 }, { part: w('up_proj'), at: I * H }]);
      if (shape.gateUpBias) {
        add('bgu', 2 * I, [
          { part: bias('gate_proj'), at: 0, projection: 'gate_proj' },
          { part: bias('up_proj'), at: I, projection: 'up_proj' },
        ]);
      }
      add('wdown', H * I, [{ part: w('down_proj'), at: 0 }]);
      if (shape.downBias) add('bdown', H, [{ part: bias('down_proj'), at: 0 }]);
    }
  }

  async load(reader: WeightReader, layer: number): Promise<void> {
    // A fused bias is zero where its projection has none (say q with a bias, k without); the arena
    // held other weights a moment ago.
    for (const b of ['bqkv', 'bgu']) this.buffers[b]?.fill(0);
    for (const p of this.parts) {
      if (p.projection && !this.s.biases.has(p.projection)) continue;
      const t = this.s.checkpoint.byName.get(layerTensorName(layer, p.part))!;
      await reader.readTensor(t, this.buffers[p.buffer], p.at);
    }
  }
}

/** Rotary tables for positions 0 … T−1: cos [T,1,hd] and the rotate-half-signed sin [T,1,hd], angles in float64. */
export function rotaryTables(s: ModelSpec, T: number): { cos: Float32Array; sin: Float32Array } {
  const inv = ropeInvFreq(s);
  const hd = s.headDim;
  const half = hd / 2;
  const cos = new Float32Array(T * hd);
  const sin = new Float32Array(T * hd);
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < half; i++) {
      const a = t * inv[i];
      const c = Math.cos(a);
      const sn = Math.sin(a);
      cos[t * hd + i] = c;
      cos[t * hd + half + i] = c;
      sin[t * hd + i] = -sn;
      sin[t * hd + half + i] = sn;
    }
  }
  return { cos, sin };
}

/** Additive attention mask [rep·T, T]: 0 where query i may see key j (j ≤ i, within the window), −∞ elsewhere. */
export function attentionMask(T: number, rep: number, window: number | null): Float32Array {
  const m = new Float32Array(rep * T * T);
  for (let r = 0; r < rep; r++) {
    for (let i = 0; i < T; i++) {
      const row = (r * T + i) * T;
      for (let j = 0; j < T; j++) m[row + j] = j <= i && (window === null || i - j < window) ? 0 : -Infinity;
    }
  }
  return m;
}

/** Writes each token's embedding row into the batches' hidden states, reading embed_tokens in row blocks. */
async function embed(s: ModelSpec, reader: WeightReader, sequences: number[][], batches: Batch[], xs: Float32Array[], block: Float32Array): Promise<void> {
  const H = s.hidden;
  // Every (token, where) pair, by token id, so each block of rows is read once and only if needed.
  const uses: { token: number; x: Float32Array; at: number }[] = [];
  batches.forEach((b, bi) => b.seqs.forEach((si, row) => sequences[si].forEach((token, t) => uses.push({ token, x: xs[bi], at: (row * b.T + t) * H }))));
  uses.sort((a, b) => a.token - b.token);
  const rowsPerBlock = Math.max(1, Math.floor(block.length / H));
  for (let u = 0; u < uses.length; ) {
    const r0 = uses[u].token;
    const rows = Math.min(rowsPerBlock, s.vocab - r0);
    await reader.readRows(s.embedTensor, r0, rows, block.subarray(0, rows * H));
    for (; u < uses.length && uses[u].token < r0 + rows; u++) {
      const off = (uses[u].token - r0) * H;
      uses[u].x.set(block.subarray(off, off + H), uses[u].at);
    }
  }
}

export interface ForwardOptions {
  limits: BatchLimits;
  /**
   * The one float32 buffer weights are widened into: half a layer's at a time, then the head's row
   * blocks (at least weightArenaElements()). Allocated once, so memory does not wait on the GC.
   */
  arena: Float32Array;
  onBytes?: (n: number) => void;
  /** Called after each layer, for progress. */
  onLayer?: (layer: number, layers: number) => void;
}

/**
 * Runs every sequence through the model's decoder layers, half a layer's weights at a time, and
 * returns the last hidden states after the final norm, per batch ([B·T, hidden] each, as
 * rowLayout() numbers the rows).
 */
export async function forwardHidden(rt: EvalRuntime, s: ModelSpec, sequences: number[][], batches: Batch[], opts: ForwardOptions): Promise<Float32Array[]> {
  const H = s.hidden;
  const rep = s.heads / s.kvHeads;
  const reader = new WeightReader(s.checkpoint, opts.onBytes);
  try {
    const xs: Float32Array[] = batches.map((b) => new Float32Array(b.seqs.length * b.T * H));
    await embed(s, reader, sequences, batches, xs, opts.arena);
    const shape = layerShape(s);
    const key = JSON.stringify(shape);
    const halves = (['attention', 'mlp'] as const).map((half) => {
      const weights = new HalfLayerWeights(s, shape, half, opts.arena);
      const feeds: Feeds = {};
      for (const [name, buf] of Object.entries(weights.buffers)) feeds[name] = rt.tensor(buf, weightDims(name, s));
      const session = rt.session(`${half}:${key}`, () => (half === 'attention' ? attentionGraph(shape) : mlpGraph(shape)));
      return { half, weights, feeds, session };
    });
    // Rotary tables and masks depend only on T (and the window), so they are shared by batches and layers.
    const tables = new Map<string, Ort.Tensor>();
    const table = (k: string, make: () => Ort.Tensor) => tables.get(k) ?? (tables.set(k, make()), tables.get(k)!);
    for (let l = 0; l < s.layers; l++) {
      const window = s.slidingWindow[l];
      for (const h of halves) {
        // Each half's weights overwrite the other's in the arena: memory holds the larger half only.
        await h.weights.load(reader, l);
        const session = await h.session;
        for (let bi = 0; bi < batches.length; bi++) {
          const { T, seqs } = batches[bi];
          const feeds: Feeds = { ...h.feeds, x: rt.tensor(xs[bi], [seqs.length, T, H]) };
          if (h.half === 'attention') {
            if (!tables.has(`cos${T}`)) {
              const { cos, sin } = rotaryTables(s, T);
              tables.set(`cos${T}`, rt.tensor(cos, [T, 1, s.headDim]));
              tables.set(`sin${T}`, rt.tensor(sin, [T, 1, s.headDim]));
            }
            feeds.cos = tables.get(`cos${T}`)!;
            feeds.sin = tables.get(`sin${T}`)!;
            feeds.mask = table(`mask${T}:${window}`, () => rt.tensor(attentionMask(T, rep, window), [rep * T, T]));
          }
          xs[bi] = (await session.run(feeds)).y.data as Float32Array;
        }
      }
      opts.onLayer?.(l + 1, s.layers);
    }
    // The final norm, batch by batch.
    const norm = opts.arena.subarray(0, H);
    await reader.readTensor(s.normTensor, norm);
    const normSession = await rt.session(`norm:${H}:${s.eps}`, () => normGraph(H, s.eps));
    for (let bi = 0; bi < batches.length; bi++) {
      const b = batches[bi];
      xs[bi] = (await normSession.run({ x: rt.tensor(xs[bi], [b.seqs.length, b.T, H]), w: rt.tensor(norm, [H]) })).y.data as Float32Array;
    }
    return xs;
  } finally {
    await reader.close();
  }
}

function weightDims(name: string, s: ModelSpec): number[] {
  const q = s.heads * s.headDim;
  const kv = s.kvHeads * s.headDim;
  const H = s.hidden;
  const I = s.intermediate;
  const dims: Record<string, number[]> = {
    ln1: [H], ln2: [H], wqkv: [q + 2 * kv, H], bqkv: [q + 2 * kv], wo: [H, q], bo: [H], wgu: [2 * I, H], bgu: [2 * I], wdown: [H, I], bdown: [H],
  };
  return dims[name];
}

/** Per position, over the rows seen so far: log-sum-exp, the best row and its logit, the target's logit. */
export class HeadStats {
  constructor(
    n: number,
    readonly lse = new Float64Array(n).fill(-Infinity),
    readonly max = new Float64Array(n).fill(-Infinity),
    readonly argmax = new Int32Array(n).fill(-1),
    readonly target = new Float64Array(n).fill(NaN),
  ) {}

  clone(): HeadStats {
    return new HeadStats(0, this.lse.slice(), this.max.slice(), this.argmax.slice(), this.target.slice());
  }

  /** Folds in one block of rows [v0, v1) for positions [p0, p0 + n). */
  fold(out: Ort.InferenceSession.OnnxValueMapType, suffix: string, p0: number, v0: number, v1: number, targets: Int32Array): void {
    const max = out[`max${suffix}`].data as Float32Array;
    const arg = out[`argmax${suffix}`].data as BigInt64Array;
    const lse = out[`lse${suffix}`].data as Float32Array;
    const tgt = out[`target${suffix}`].data as Float32Array;
    for (let i = 0; i < max.length; i++) {
      const p = p0 + i;
      if (max[i] > this.max[p]) {
        this.max[p] = max[i];
        this.argmax[p] = v0 + Number(arg[i]);
      }
      this.lse[p] = logAddExp(this.lse[p], lse[i]);
      if (targets[p] >= v0 && targets[p] < v1) this.target[p] = tgt[i];
    }
  }
}

export function logAddExp(a: number, b: number): number {
  if (a === -Infinity) return b;
  if (b === -Infinity) return a;
  const m = Math.max(a, b);
  return m + Math.log(Math.exp(a - m) + Math.exp(b - m));
}

/** The head is read in blocks of at least this many rows. */
const HEAD_MIN_ROWS = 64;

/** Elements the weight arena needs for these models: the larger half of a layer, or the head's smallest row blocks side by side. */
export function weightArenaElements(specs: ModelSpec[]): number {
  return Math.max(...specs.map(halfLayerElements), HEAD_MIN_ROWS * specs.reduce((a, s) => a + s.hidden, 0));
}

/** A model's normed last hidden states, per batch as forwardHidden returns them. */
export interface HeadInput {
  spec: ModelSpec;
  hidden: Float32Array[];
}

export interface HeadResult {
  /** Per model (model first, then the reference), over its whole vocabulary. */
  stats: HeadStats[];
  /** With a reference: over the rows both vocabularies share. */
  shared?: { stats: HeadStats[]; kl: Float64Array };
}

/**
 * The output head of one model, or of a model and its reference together, over every row of the
 * layout (rows whose target is −1, the last position and padding, are computed and ignored), reading the head's rows in blocks (the clarifications allow row blocks) so its
 * memory is bounded like a layer's. With a reference, KL(reference ‖ model) and the top-1 tokens are
 * computed over the shared rows [0, min(V_model, V_ref)), each distribution renormalized there.
 */
export async function headPass(rt: EvalRuntime, inputs: HeadInput[], layout: RowLayout, targets: Int32Array, opts: ForwardOptions): Promise<HeadResult> {
  const P = layout.total;
  const stats = inputs.map(() => new HeadStats(P));
  const readers = inputs.map((m) => new WeightReader(m.spec.checkpoint, opts.onBytes));
  try {
    const blockElements = Math.min(opts.arena.length, (opts.limits.headBlockBytes ?? Infinity) / 4);
    const sharedRows = Math.min(...inputs.map((m) => m.spec.vocab));
    const rowsFor = (members: number[]) => Math.max(HEAD_MIN_ROWS, Math.floor(blockElements / members.reduce((a, m) => a + inputs[m].spec.hidden, 0)));

    // Runs blocks of rows [from, to) for the given models (one alone, or model and reference together).
    const pass = async (members: number[], from: number, to: number, kl?: { acc: Float64Array; refLse: Float64Array }) => {
      if (from >= to) return;
      const pair = members.length === 2;
      const [a, b] = members.map((m) => inputs[m].spec);
      const key = pair ? `head2:${a.hidden}:${b.hidden}` : `head:${a.hidden}`;
      const session = await rt.session(key, () => headGraph(a.hidden, pair ? b.hidden : undefined));
      const rows = Math.min(rowsFor(members), to - from);
      let carved = 0;
      const blocks = members.map((m) => opts.arena.subarray(carved, (carved += rows * inputs[m].spec.hidden)));
      const chunk = Math.max(16, Math.min(P, Math.floor(opts.limits.logitBytes / (rows * 4 * members.length))));
      const index = new BigInt64Array(chunk);
      for (let v0 = from; v0 < to; v0 += rows) {
        const v1 = Math.min(to, v0 + rows);
        const n = v1 - v0;
        const w: Ort.Tensor[] = [];
        for (let k = 0; k < members.length; k++) {
          const spec = inputs[members[k]].spec;
          const view = blocks[k].subarray(0, n * spec.hidden);
          await readers[members[k]].readRows(spec.headTensor, v0, n, view);
          w.push(rt.tensor(view, [n, spec.hidden]));
        }
        for (let bi = 0; bi < layout.batches.length; bi++) {
          const batchRows = layout.batches[bi].seqs.length * layout.batches[bi].T;
          for (let r0 = 0; r0 < batchRows; r0 += chunk) {
            const c = Math.min(chunk, batchRows - r0);
            const p0 = layout.offsets[bi] + r0;
            for (let i = 0; i < c; i++) index[i] = BigInt(Math.min(n - 1, Math.max(0, targets[p0 + i] - v0)));
            const feeds: Feeds = { index: rt.int64(index.subarray(0, c), [c, 1]) };
            members.forEach((m, k) => {
              const sfx = k === 0 ? '' : '_r';
              const H = inputs[m].spec.hidden;
              feeds[`h${sfx}`] = rt.tensor(inputs[m].hidden[bi].subarray(r0 * H, (r0 + c) * H), [c, H]);
              feeds[`w${sfx}`] = w[k];
            });
            const out = await session.run(feeds);
            if (kl) {
              // Σ_v p_ref(v)(ref_v − model_v) over rows seen so far, kept relative to the running log-sum-exp.
              const part = out.klpart.data as Float32Array;
              const lseBlock = out.lse_r.data as Float32Array;
              for (let i = 0; i < c; i++) {
                const p = p0 + i;
                const before = kl.refLse[p];
                const after = logAddExp(before, lseBlock[i]);
                kl.acc[p] = (before === -Infinity ? 0 : kl.acc[p] * Math.exp(before - after)) + Math.exp(lseBlock[i] - after) * part[i];
                kl.refLse[p] = after;
              }
            }
            members.forEach((m, k) => stats[m].fold(out, k === 0 ? '' : '_r', p0, v0, v1, targets));
          }
        }
      }
    };

    if (inputs.length === 1) {
      await pass([0], 0, inputs[0].spec.vocab);
      return { stats };
    }
    const kl = { acc: new Float64Array(P), refLse: new Float64Array(P).fill(-Infinity) };
    await pass([0, 1], 0, sharedRows, kl);
    const shared = stats.map((s) => s.clone());
    const klOut = new Float64Array(P);
    for (let p = 0; p < P; p++) klOut[p] = kl.acc[p] - shared[1].lse[p] + shared[0].lse[p];
    for (let m = 0; m < inputs.length; m++) await pass([m], sharedRows, inputs[m].spec.vocab);
    return { stats, shared: { stats: shared, kl: klOut } };
  } finally {
    for (const r of readers) await r.close();
  }
}
