// What a causal LM checkpoint is, for evaluation: its architecture read from config.json and
// checked against the tensors it holds, before a byte of weights is read.
import type { Checkpoint, CheckpointTensor } from '../format/checkpoint.js';
import { isFloatDType } from '../format/dtype.js';
import { InputError, PlanError } from '../errors.js';

/** The model_type values evaluation supports: decoder-only, RMSNorm, rotate-half rotary, SwiGLU, GQA. */
export const EVAL_MODEL_TYPES = ['llama', 'mistral', 'qwen2'] as const;
export type EvalModelType = (typeof EVAL_MODEL_TYPES)[number];

/** How rotary frequencies are built: plain, linearly scaled, or Llama 3's piecewise scaling. */
export type RopeScaling =
  | { type: 'default' }
  | { type: 'linear'; factor: number }
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositions: number };

/** The projections of one decoder layer, in the order their weights are laid out for the kernels. */
export const LAYER_PROJECTIONS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type Projection = (typeof LAYER_PROJECTIONS)[number];

export interface ModelSpec {
  ref: string;
  modelType: EvalModelType;
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  eps: number;
  ropeTheta: number;
  rope: RopeScaling;
  /** Positions the model was built for (max_position_embeddings), or null when config.json does not say. */
  maxPositions: number | null;
  /** Per layer: the attention window in tokens (Mistral, Qwen2 with use_sliding_window), or null for full causal attention. */
  slidingWindow: (number | null)[];
  /** Projections that carry a bias (Qwen2: q, k, v); the same in every layer. */
  biases: Set<Projection>;
  /** The output head's tensor: lm_head.weight, or embed_tokens when tied. */
  headTensor: CheckpointTensor;
  embedTensor: CheckpointTensor;
  normTensor: CheckpointTensor;
  tied: boolean;
  /** Parameters, counted from the tensors read (the tied head counted once). */
  parameters: number;
  checkpoint: Checkpoint;
}

export function layerTensorName(layer: number, part: string): string {
  return `model.layers.${layer}.${part}`;
}

export function projectionPrefix(p: Projection): string {
  return p === 'gate_proj' || p === 'up_proj' || p === 'down_proj' ? `mlp.${p}` : `self_attn.${p}`;
}

function num(config: Record<string, unknown>, where: string, key: string, dflt?: number): number {
  const v = config[key];
  if (v === undefined || v === null) {
    if (dflt !== undefined) return dflt;
    throw new InputError(`${where}: field "${key}" is required for evaluation`);
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new InputError(`${where}: field "${key}" must be a number`);
  return v;
}

function int(config: Record<string, unknown>, where: string, key: string, dflt?: number): number {
  const v = num(config, where, key, dflt);
  if (!Number.isInteger(v) || v <= 0) throw new InputError(`${where}: field "${key}" must be a positive integer`);
  return v;
}

function ropeScaling(config: Record<string, unknown>, where: string, maxPositions: number | null): RopeScaling {
  const rs = config.rope_scaling;
  if (rs === undefined || rs === null) return { type: 'default' };
  if (typeof rs !== 'object' || Array.isArray(rs)) throw new InputError(`${where}: field "rope_scaling" must be an object or null`);
  const r = rs as Record<string, unknown>;
  const type = r.rope_type ?? r.type;
  const at = `${where}: rope_scaling`;
  const f = (k: string, d?: number) => num(r, at, k, d);
  switch (type) {
    case 'default':
      return { type: 'default' };
    case 'linear':
      return { type: 'linear', factor: f('factor') };
    case 'llama3':
      return {
        type: 'llama3',
        factor: f('factor'),
        lowFreqFactor: f('low_freq_factor'),
        highFreqFactor: f('high_freq_factor'),
        originalMaxPositions: f('original_max_position_embeddings', maxPositions ?? undefined),
      };
    default:
      throw new InputError(`${at}: type ${JSON.stringify(type)} is not supported for evaluation (supported: default, linear, llama3)`);
  }
}

/**
 * Reads the architecture from config.json and checks every tensor evaluation will read: present,
 * a float dtype, the shape the config implies. All problems are reported together.
 */
export function modelSpec(ref: string, ck: Checkpoint): ModelSpec {
  const where = `${ref}/config.json`;
  const c = ck.config;
  if (!c) throw new InputError(`${ref}: no config.json; evaluation needs the model's architecture`);
  const modelType = c.model_type;
  if (typeof modelType !== 'string' || !(EVAL_MODEL_TYPES as readonly string[]).includes(modelType)) {
    throw new InputError(
      `${where}: model_type ${JSON.stringify(modelType ?? null)} is not supported for evaluation (supported: ${EVAL_MODEL_TYPES.join(', ')})`,
    );
  }
  const hidden = int(c, where, 'hidden_size');
  const heads = int(c, where, 'num_attention_heads');
  const kvHeads = int(c, where, 'num_key_value_heads', heads);
  const headDim = int(c, where, 'head_dim', hidden / heads);
  if (heads % kvHeads !== 0) throw new InputError(`${where}: num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads}`);
  if (headDim % 2 !== 0) throw new InputError(`${where}: the head dimension ${headDim} must be even for rotary embeddings`);
  const layers = int(c, where, 'num_hidden_layers');
  const intermediate = int(c, where, 'intermediate_size');
  const maxPositions = c.max_position_embeddings == null ? null : int(c, where, 'max_position_embeddings');
  const eps = num(c, where, 'rms_norm_eps', 1e-6);
  const ropeTheta = num(c, where, 'rope_theta', 10000);
  if (c.partial_rotary_factor != null && c.partial_rotary_factor !== 1) {
    throw new InputError(`${where}: partial_rotary_factor ${String(c.partial_rotary_factor)} is not supported for evaluation`);
  }
  const rope = ropeScaling(c, where, maxPositions);

  const slidingWindow: (number | null)[] = [];
  const window = c.sliding_window == null ? null : int(c, where, 'sliding_window');
  for (let l = 0; l < layers; l++) {
    if (modelType === 'mistral') slidingWindow.push(window);
    else if (modelType === 'qwen2' && c.use_sliding_window === true && window !== null) {
      // transformers' Qwen2 slides the window only from layer max_window_layers on.
      slidingWindow.push(l >= int(c, where, 'max_window_layers', layers) ? window : null);
    } else slidingWindow.push(null);
  }

  const problems: string[] = [];
  const need = (name: string, shape: number[]): CheckpointTensor | undefined => {
    const t = ck.byName.get(name);
    if (!t) {
      problems.push(`${ref}: tensor "${name}" is missing`);
      return undefined;
    }
    if (!isFloatDType(t.dtype)) problems.push(`${ref}/${t.file}: tensor "${name}" is ${t.dtype}; evaluation reads BF16, F16, F32 or F64`);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      problems.push(`${ref}/${t.file}: tensor "${name}" has shape ${JSON.stringify(t.shape)}, but config.json implies ${JSON.stringify(shape)}`);
    }
    return t;
  };

  const embed = ck.byName.get('model.embed_tokens.weight');
  if (!embed) throw new InputError(`${ref}: tensor "model.embed_tokens.weight" is missing`);
  const vocab = embed.shape[0];
  need('model.embed_tokens.weight', [vocab, hidden]);
  if (c.vocab_size != null && c.vocab_size !== vocab) {
    problems.push(`${where}: vocab_size ${String(c.vocab_size)} differs from model.embed_tokens.weight's ${vocab} rows`);
  }
  const norm = need('model.norm.weight', [hidden]);
  const lmHead = ck.byName.get('lm_head.weight');
  const tied = c.tie_word_embeddings === true || !lmHead;
  const head = tied ? embed : need('lm_head.weight', [vocab, hidden]);

  const qDim = heads * headDim;
  const kvDim = kvHeads * headDim;
  const shapes: Record<Projection, number[]> = {
    q_proj: [qDim, hidden],
    k_proj: [kvDim, hidden],
    v_proj: [kvDim, hidden],
    o_proj: [hidden, qDim],
    gate_proj: [intermediate, hidden],
    up_proj: [intermediate, hidden],
    down_proj: [hidden, intermediate],
  };
  const biases = new Set<Projection>();
  for (const p of LAYER_PROJECTIONS) if (ck.byName.has(layerTensorName(0, `${projectionPrefix(p)}.bias`))) biases.add(p);
  for (let l = 0; l < layers; l++) {
    need(layerTensorName(l, 'input_layernorm.weight'), [hidden]);
    need(layerTensorName(l, 'post_attention_layernorm.weight'), [hidden]);
    for (const p of LAYER_PROJECTIONS) {
      need(layerTensorName(l, `${projectionPrefix(p)}.weight`), shapes[p]);
      const bias = layerTensorName(l, `${projectionPrefix(p)}.bias`);
      if (biases.has(p)) need(bias, [shapes[p][0]]);
      else if (ck.byName.has(bias)) problems.push(`${ref}: tensor "${bias}" is present, but layer 0 has no ${p} bias`);
    }
  }
  if (ck.byName.has(layerTensorName(layers, 'input_layernorm.weight'))) {
    problems.push(`${where}: num_hidden_layers is ${layers}, but the checkpoint has more layers`);
  }
  if (problems.length) throw new PlanError(problems);

  const perLayer =
    2 * hidden + qDim * hidden + 2 * kvDim * hidden + hidden * qDim + 3 * intermediate * hidden +
    [...biases].reduce((a, p) => a + shapes[p][0], 0);
  return {
    ref, modelType: modelType as EvalModelType, hidden, intermediate, layers, heads, kvHeads, headDim, vocab, eps, ropeTheta, rope, maxPositions, slidingWindow, biases,
    headTensor: head!, embedTensor: embed, normTensor: norm!, tied,
    parameters: layers * perLayer + vocab * hidden * (tied ? 1 : 2) + hidden,
    checkpoint: ck,
  };
}

/** Elements of one decoder layer's weights, biases included (what a layer holds in F32). */
export function layerElements(s: ModelSpec): number {
  const { attention, mlp } = halfElements(s);
  return attention + mlp;
}

/** Elements of the larger half of a layer (attention or MLP): what the kernels hold in F32 at a time. */
export function halfLayerElements(s: ModelSpec): number {
  const { attention, mlp } = halfElements(s);
  return Math.max(attention, mlp);
}

function halfElements(s: ModelSpec): { attention: number; mlp: number } {
  const q = s.heads * s.headDim;
  const kv = s.kvHeads * s.headDim;
  const H = s.hidden;
  const I = s.intermediate;
  const b = (p: Projection, n: number) => (s.biases.has(p) ? n : 0);
  const qkvBias = s.biases.has('q_proj') || s.biases.has('k_proj') || s.biases.has('v_proj') ? q + 2 * kv : 0;
  const guBias = s.biases.has('gate_proj') || s.biases.has('up_proj') ? 2 * I : 0;
  return {
    attention: H + (q + 2 * kv) * H + qkvBias + H * q + b('o_proj', H),
    mlp: H + 2 * I * H + guBias + H * I + b('down_proj', H),
  };
}

/**
 * Rotary inverse frequencies, in float64, as transformers computes them (ROPE_INIT_FUNCTIONS):
 * theta^(-2i/d), then the configured scaling.
 */
export function ropeInvFreq(s: Pick<ModelSpec, 'headDim' | 'ropeTheta' | 'rope'>): Float64Array {
  const half = s.headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(s.ropeTheta, (2 * i) / s.headDim);
  const r = s.rope;
  if (r.type === 'linear') for (let i = 0; i < half; i++) inv[i] /= r.factor;
  if (r.type === 'llama3') {
    const lowWavelen = r.originalMaxPositions / r.lowFreqFactor;
    const highWavelen = r.originalMaxPositions / r.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const wavelen = (2 * Math.PI) / inv[i];
      if (wavelen > lowWavelen) inv[i] = inv[i] / r.factor;
      else if (wavelen >= highWavelen) {
        const smooth = (r.originalMaxPositions / wavelen - r.lowFreqFactor) / (r.highFreqFactor - r.lowFreqFactor);
        inv[i] = (1 - smooth) * (inv[i] / r.factor) + smooth * inv[i];
      }
    }
  }
  return inv;
}
