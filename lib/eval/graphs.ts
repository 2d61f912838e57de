// The ONNX graphs evaluation runs, built in code with onnx-proto. Weights are graph inputs, so one
// session per graph shape serves every layer of a model (and every model of that shape).
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;
type Dim = number | string;
const T = onnx.TensorProto.DataType;
const A = onnx.AttributeProto.AttributeType;

/** Opset 17: ReduceMean/ReduceMax/ReduceLogSumExp take axes as attributes, Split and ReduceSum as inputs. */
const OPSET = 17;

type Attr = number | number[] | { f: number };

class GraphBuilder {
  private readonly nodes: import('onnx-proto').onnx.INodeProto[] = [];
  private readonly inputs: import('onnx-proto').onnx.IValueInfoProto[] = [];
  private readonly outputs: import('onnx-proto').onnx.IValueInfoProto[] = [];
  private readonly inits: import('onnx-proto').onnx.ITensorProto[] = [];
  private n = 0;

  private static info(name: string, elemType: number, dims: Dim[]) {
    return {
      name,
      type: { tensorType: { elemType, shape: { dim: dims.map((d) => (typeof d === 'string' ? { dimParam: d } : { dimValue: d })) } } },
    };
  }

  input(name: string, dims: Dim[], elemType: number = T.FLOAT): string {
    this.inputs.push(GraphBuilder.info(name, elemType, dims));
    return name;
  }

  output(from: string, name: string, dims: Dim[], elemType: number = T.FLOAT): void {
    this.nodes.push({ opType: 'Identity', input: [from], output: [name] });
    this.outputs.push(GraphBuilder.info(name, elemType, dims));
  }

  ints(values: number[]): string {
    const name = `c${this.n++}`;
    this.inits.push({ name, dataType: T.INT64, dims: [values.length], int64Data: values });
    return name;
  }

  scalar(value: number): string {
    const name = `c${this.n++}`;
    this.inits.push({ name, dataType: T.FLOAT, dims: [], floatData: [value] });
    return name;
  }

  op(opType: string, input: string[], attrs: Record<string, Attr> = {}, outputs = 1, domain = ''): string[] {
    const output = Array.from({ length: outputs }, () => `t${this.n++}`);
    const attribute = Object.entries(attrs).map(([name, v]) =>
      Array.isArray(v) ? { name, type: A.INTS, ints: v } : typeof v === 'number' ? { name, type: A.INT, i: v } : { name, type: A.FLOAT, f: v.f },
    );
    this.nodes.push({ opType, input, output, attribute, domain });
    return output;
  }

  /** One-output op. */
  o(opType: string, input: string[], attrs: Record<string, Attr> = {}): string {
    return this.op(opType, input, attrs)[0];
  }

  /** x · wᵀ for a weight stored as [out, in] (as checkpoints store it); ORT fuses the transpose into the GEMM. */
  linear(x: string, w: string, b?: string): string {
    const y = this.o('MatMul', [x, this.o('Transpose', [w], { perm: [1, 0] })]);
    return b ? this.o('Add', [y, b]) : y;
  }

  /** RMSNorm as transformers computes it: x · rsqrt(mean(x²) + eps) · w, over the last axis. */
  rmsNorm(x: string, w: string, eps: number): string {
    const ms = this.o('ReduceMean', [this.o('Mul', [x, x])], { axes: [-1], keepdims: 1 });
    return this.o('Mul', [this.o('Div', [x, this.o('Sqrt', [this.o('Add', [ms, this.scalar(eps)])])]), w]);
  }

  build(name: string): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: 8,
      opsetImport: [{ domain: '', version: OPSET }],
      producerName: 'paramdelta',
      graph: { name, node: this.nodes, input: this.inputs, output: this.outputs, initializer: this.inits },
    });
    return onnx.ModelProto.encode(model).finish();
  }
}

export interface LayerShape {
  hidden: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  intermediate: number;
  eps: number;
  /** Whether the fused q/k/v, o, gate/up and down projections carry a bias. */
  qkvBias: boolean;
  oBias: boolean;
  gateUpBias: boolean;
  downBias: boolean;
}

/**
 * The two halves of a decoder layer over a batch of right-padded sequences, x [B, T, H] → [B, T, H],
 * each its own graph so that only one half's weights need be in memory at a time:
 *
 * - attention: pre-norm, fused q/k/v projection, rotate-half rotary, grouped-query attention with an
 *   additive mask, output projection, residual. Inputs beside x: cos and sin [T, 1, hd] (sin already
 *   signed for rotate-half: [-sin, sin]) and the mask [rep·T, T] (causal, optionally windowed;
 *   rep = heads / kvHeads, stacked rep times). Right padding needs no mask of its own: a causal mask
 *   never lets a real position see a later one.
 * - mlp: pre-norm SwiGLU with a fused gate/up projection, residual.
 *
 * Weights come in checkpoint layout ([out, in]), q/k/v and gate/up concatenated by rows.
 */
export function attentionGraph(s: LayerShape): Uint8Array {
  const g = new GraphBuilder();
  const { hidden: H, heads, kvHeads, headDim: hd } = s;
  const rep = heads / kvHeads;
  const Q = heads * hd;
  const K = kvHeads * hd;
  const x = g.input('x', ['B', 'T', H]);
  const cos = g.input('cos', ['T', 1, hd]);
  const sin = g.input('sin', ['T', 1, hd]);
  const mask = g.input('mask', ['RT', 'T']);
  const ln1 = g.input('ln1', [H]);
  const wqkv = g.input('wqkv', [Q + 2 * K, H]);
  const bqkv = s.qkvBias ? g.input('bqkv', [Q + 2 * K]) : undefined;
  const wo = g.input('wo', [H, Q]);
  const bo = s.oBias ? g.input('bo', [H]) : undefined;

  const qkv = g.linear(g.rmsNorm(x, ln1, s.eps), wqkv, bqkv);
  const [q, k, v] = g.op('Split', [qkv, g.ints([Q, K, K])], { axis: -1 }, 3);
  const rotary = (t: string, n: number) => {
    const t4 = g.o('Reshape', [t, g.ints([0, 0, n, hd])]);
    const [lo, hi] = g.op('Split', [t4, g.ints([hd / 2, hd / 2])], { axis: -1 }, 2);
    return g.o('Add', [g.o('Mul', [t4, cos]), g.o('Mul', [g.o('Concat', [hi, lo], { axis: -1 }), sin])]);
  };
  const qr = g.o('Mul', [rotary(q, heads), g.scalar(1 / Math.sqrt(hd))]); // [B,T,heads,hd]
  const kr = rotary(k, kvHeads); // [B,T,kv,hd]
  // Query heads of one KV group side by side: [B,kv,rep·T,hd], so each group is one batched GEMM.
  const qg = g.o('Reshape', [g.o('Transpose', [g.o('Reshape', [qr, g.ints([0, 0, kvHeads, rep, hd])])], { perm: [0, 2, 3, 1, 4] }), g.ints([0, 0, -1, hd])]);
  const kt = g.o('Transpose', [kr], { perm: [0, 2, 3, 1] }); // [B,kv,hd,T]
  const vt = g.o('Transpose', [g.o('Reshape', [v, g.ints([0, 0, kvHeads, hd])])], { perm: [0, 2, 1, 3] }); // [B,kv,T,hd]
  const probs = g.o('Softmax', [g.o('Add', [g.o('MatMul', [qg, kt]), mask])], { axis: -1 });
  const ctx = g.o('MatMul', [probs, vt]); // [B,kv,rep·T,hd]
  const merged = g.o('Reshape', [
    g.o('Transpose', [g.o('Reshape', [ctx, g.ints([0, 0, rep, -1, hd])])], { perm: [0, 3, 1, 2, 4] }),
    g.ints([0, 0, Q]),
  ]);
  g.output(g.o('Add', [x, g.linear(merged, wo, bo)]), 'y', ['B', 'T', H]);
  return g.build('attention');
}

export function mlpGraph(s: LayerShape): Uint8Array {
  const g = new GraphBuilder();
  const { hidden: H, intermediate: I } = s;
  const x = g.input('x', ['B', 'T', H]);
  const ln2 = g.input('ln2', [H]);
  const wgu = g.input('wgu', [2 * I, H]);
  const bgu = s.gateUpBias ? g.input('bgu', [2 * I]) : undefined;
  const wd = g.input('wdown', [H, I]);
  const bd = s.downBias ? g.input('bdown', [H]) : undefined;
  const gu = g.linear(g.rmsNorm(x, ln2, s.eps), wgu, bgu);
  const [gate, up] = g.op('Split', [gu, g.ints([I, I])], { axis: -1 }, 2);
  const act = g.o('Mul', [g.o('Mul', [gate, g.o('Sigmoid', [gate])]), up]);
  g.output(g.o('Add', [x, g.linear(act, wd, bd)]), 'y', ['B', 'T', H]);
  return g.build('mlp');
}

/** The final RMSNorm over a batch, x [B, T, H] → [B, T, H]. */
export function normGraph(hidden: number, eps: number): Uint8Array {
  const g = new GraphBuilder();
  const x = g.input('x', ['B', 'T', hidden]);
  const w = g.input('w', [hidden]);
  g.output(g.rmsNorm(x, w, eps), 'y', ['B', 'T', hidden]);
  return g.build('final_norm');
}

/**
 * The head over one block of vocabulary rows, for a chunk of positions (already through the final
 * norm): logits h · Wᵀ [n, rows], and per position the block's max, argmax, log-sum-exp and the
 * logit at `index` (the target's row within the block, clamped; the caller keeps it only when the
 * target is inside the block).
 *
 * With `pairHidden`, a second model's inputs (suffix `_r`, the reference) come too, over the same
 * rows, and `klpart` = Σ softmax(ref)·(ref − model) over the block, from which KL(reference ‖ model)
 * is assembled.
 */
export function headGraph(hidden: number, pairHidden?: number): Uint8Array {
  const g = new GraphBuilder();
  const index = g.input('index', ['N', 1], T.INT64);
  const logitsOf = (suffix: string, H: number) => {
    const logits = g.linear(g.input(`h${suffix}`, ['N', H]), g.input(`w${suffix}`, ['V', H]));
    g.output(g.o('ReduceMax', [logits], { axes: [-1], keepdims: 0 }), `max${suffix}`, ['N']);
    g.output(g.o('ArgMax', [logits], { axis: -1, keepdims: 0 }), `argmax${suffix}`, ['N'], T.INT64);
    g.output(g.o('ReduceLogSumExp', [logits], { axes: [-1], keepdims: 0 }), `lse${suffix}`, ['N']);
    g.output(g.o('GatherElements', [logits, index], { axis: 1 }), `target${suffix}`, ['N', 1]);
    return logits;
  };
  const m = logitsOf('', hidden);
  if (pairHidden !== undefined) {
    const r = logitsOf('_r', pairHidden);
    const part = g.o('ReduceSum', [g.o('Mul', [g.o('Softmax', [r], { axis: -1 }), g.o('Sub', [r, m])]), g.ints([-1])], { keepdims: 0 });
    g.output(part, 'klpart', ['N']);
  }
  return g.build(pairHidden !== undefined ? 'head_pair' : 'head');
}

/** x [N, K] · w [K, M], nothing else: the plain GEMM the benchmark's ceiling is measured with. */
export function matmulGraph(k: number, m: number): Uint8Array {
  const g = new GraphBuilder();
  const x = g.input('x', ['N', k]);
  const w = g.input('w', [k, m]);
  g.output(g.o('MatMul', [x, w]), 'y', ['N', m]);
  return g.build('matmul');
}
