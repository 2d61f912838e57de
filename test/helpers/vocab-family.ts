// Tiny Llama families for vocabulary and tied-head cases (issue 9): models small enough for the float64
// reference forward pass, each with the tokenizer.json the test gives it.
import path from 'node:path';
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import { decodeFloats, encodeFloats, roundTo } from './floats.js';
import { loadTensors, writeCheckpoint } from './models.js';
import { logSoftmax, referenceLogits } from './reference-lm.js';

export const H = 8;
const I = 16;
const HEADS = 2;

/** xorshift32 in [−0.5, 0.5). */
function values(n: number, seed: number, scale = 0.5): number[] {
  let s = seed >>> 0 || 0x9e3779b9;
  return Array.from({ length: n }, () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return (s / 2 ** 32 - 0.5) * scale;
  });
}
const hash = (text: string) => [...text].reduce((h, c) => Math.imul(h ^ c.charCodeAt(0), 16777619), 2166136261) >>> 0;

export interface ModelSpec {
  /** Token content of each row; null: a padding row. */
  tokens: (string | null)[];
  tied: boolean;
  /** Which model of the family: its weights move by this salt. */
  salt: number;
  /** Write tokenizer.json (default true). */
  tokenizer?: boolean;
  chatTemplate?: string;
  /** Rows whose token is an added special token. */
  special?: (t: string) => boolean;
}

export type Tensors = Map<string, { dtype: string; shape: number[]; values: number[] }>;

/** BF16 weights: the layers from the salt; each embedding row from its token's content (padding: its index) and the salt. */
export function modelTensors(spec: ModelSpec): Tensors {
  const t: Tensors = new Map();
  const put = (name: string, shape: number[], v: number[]) => t.set(name, { dtype: 'BF16', shape, values: v.map((x) => roundTo('BF16', x)) });
  const row = (tok: string | null, r: number, which: number) => values(H, hash(`${tok ?? `#${r}`}/${which}/${spec.salt}`));
  put('model.embed_tokens.weight', [spec.tokens.length, H], spec.tokens.flatMap((tok, r) => row(tok, r, 0)));
  const p = 'model.layers.0';
  for (const m of ['q', 'k', 'v', 'o']) put(`${p}.self_attn.${m}_proj.weight`, [H, H], values(H * H, hash(`${m}/${spec.salt}`)));
  put(`${p}.mlp.gate_proj.weight`, [I, H], values(I * H, hash(`g/${spec.salt}`)));
  put(`${p}.mlp.up_proj.weight`, [I, H], values(I * H, hash(`u/${spec.salt}`)));
  put(`${p}.mlp.down_proj.weight`, [H, I], values(H * I, hash(`d/${spec.salt}`)));
  put(`${p}.input_layernorm.weight`, [H], values(H, hash(`n1/${spec.salt}`)).map((x) => 1 + x));
  put(`${p}.post_attention_layernorm.weight`, [H], values(H, hash(`n2/${spec.salt}`)).map((x) => 1 + x));
  put('model.norm.weight', [H], values(H, hash(`n/${spec.salt}`)).map((x) => 1 + x));
  if (!spec.tied) put('lm_head.weight', [spec.tokens.length, H], spec.tokens.flatMap((tok, r) => row(tok, r, 1)));
  return t;
}

export function llamaConfig(rows: number, tied: boolean): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: H,
    intermediate_size: I,
    num_hidden_layers: 1,
    num_attention_heads: HEADS,
    num_key_value_heads: HEADS,
    vocab_size: rows,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: tied,
    torch_dtype: 'bfloat16',
  };
}

/** A tokenizer.json (BPE, no merges) with the given contents: `<...>` tokens as added special tokens, the rest in the model's vocab. */
export function tokenizerJson(tokens: readonly (string | null)[], special = (t: string) => t.startsWith('<')): string {
  const vocab: Record<string, number> = {};
  const added: unknown[] = [];
  tokens.forEach((t, id) => {
    if (t === null) return;
    if (special(t)) added.push({ id, content: t, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
    else vocab[t] = id;
  });
  return JSON.stringify({ version: '1.0', added_tokens: added, model: { type: 'BPE', vocab, merges: [] } });
}

export async function writeTensors(dir: string, tensors: Tensors, config: Record<string, unknown>, extra: Record<string, string> = {}): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeCheckpoint(
    dir,
    [...tensors].map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape, bytes: encodeFloats(t.dtype as 'BF16', t.values) })),
    { 'config.json': JSON.stringify(config, null, 2), ...extra },
  );
}

export async function writeModel(dir: string, spec: ModelSpec): Promise<Tensors> {
  const tensors = modelTensors(spec);
  const extra: Record<string, string> = {};
  if (spec.tokenizer !== false) extra['tokenizer.json'] = tokenizerJson(spec.tokens, spec.special);
  const cfg: Record<string, unknown> = { bos_token: '<s>', eos_token: '</s>' };
  if (spec.chatTemplate) cfg.chat_template = spec.chatTemplate;
  extra['tokenizer_config.json'] = JSON.stringify(cfg);
  await writeTensors(dir, tensors, llamaConfig(spec.tokens.length, spec.tied), extra);
  return tensors;
}

/** A folder's tensors widened to float64 (test-side decoding). */
export async function readTensors(dir: string): Promise<Tensors> {
  const out: Tensors = new Map();
  for (const [name, t] of await loadTensors(dir)) out.set(name, { dtype: t.dtype, shape: t.shape, values: decodeFloats(t.dtype, t.bytes) });
  return out;
}

export const rowsOf = (t: { shape: number[]; values: number[] }, a: number, b: number) => t.values.slice(a * H, b * H);

/** Mean next-token loss of a model folder over `tokens`, by the float64 reference forward pass. */
export async function loss(dir: string, tokens: number[]): Promise<number> {
  const logits = await referenceLogits(dir, tokens);
  let sum = 0;
  for (let i = 0; i + 1 < tokens.length; i++) sum -= logSoftmax(logits[i])[tokens[i + 1]];
  return sum / (tokens.length - 1);
}

export async function readJson(file: string): Promise<Record<string, unknown>> {
  return JSON.parse(await readFile(file, 'utf8'));
}

export async function writeJson(file: string, v: unknown): Promise<void> {
  await writeFile(file, JSON.stringify(v));
}

export const join = path.join;
