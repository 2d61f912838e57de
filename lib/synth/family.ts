import path from 'node:path';
import { mkdir, writeFile } from 'node:fs/promises';
import { encodeHeader, type PlannedTensor } from '../format/safetensors.js';
import { indexJson, shardFileName } from '../format/checkpoint.js';
import { LocalStore } from '../storage/local.js';
import { SHARD_METADATA } from '../ops/plan.js';

/**
 * Writes a synthetic Llama-shaped model family (base, post, newbase) of about `bytes` per model,
 * for demos and benchmarks. Values are random 16-bit floats of realistic magnitude; post and
 * newbase move each element by a few units in the last place, so deltas look like fine-tuning.
 */
export interface FamilyOptions {
  dtype: 'BF16' | 'F16';
  /** Approximate size of one model. */
  bytes: number;
  shards: number;
  hidden?: number;
  seed?: number;
}

function llamaTensors(bytes: number, hidden: number, elemSize: number): PlannedTensor[] {
  const inter = Math.round((hidden * 8) / 3 / 64) * 64;
  // Small models get a small vocabulary, so the embeddings do not dwarf the layers.
  const vocab = Math.min(32000, Math.max(256, Math.round(bytes / elemSize / hidden / 16)));
  const perLayer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden;
  const fixed = 2 * vocab * hidden + hidden;
  const layers = Math.max(1, Math.ceil((bytes / elemSize - fixed) / perLayer));
  const dtype = elemSize === 2 ? 'BF16' : 'F32';
  const t: PlannedTensor[] = [{ name: 'model.embed_tokens.weight', dtype, shape: [vocab, hidden] }];
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    for (const m of ['q', 'k', 'v', 'o']) t.push({ name: `${p}.self_attn.${m}_proj.weight`, dtype, shape: [hidden, hidden] });
    t.push({ name: `${p}.mlp.gate_proj.weight`, dtype, shape: [inter, hidden] });
    t.push({ name: `${p}.mlp.up_proj.weight`, dtype, shape: [inter, hidden] });
    t.push({ name: `${p}.mlp.down_proj.weight`, dtype, shape: [hidden, inter] });
    t.push({ name: `${p}.input_layernorm.weight`, dtype, shape: [hidden] });
    t.push({ name: `${p}.post_attention_layernorm.weight`, dtype, shape: [hidden] });
  }
  t.push({ name: 'model.norm.weight', dtype, shape: [hidden] });
  t.push({ name: 'lm_head.weight', dtype, shape: [vocab, hidden] });
  return t;
}

/** xorshift32: fast, seedable, and good enough for weights nobody trains. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 0x9e3779b9;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

async function writeModel(
  dir: string,
  tensors: PlannedTensor[],
  shards: number,
  dtype: 'BF16' | 'F16',
  fill: (name: string, out: Uint16Array, start: number) => void,
  extraFiles: Record<string, string>,
): Promise<void> {
  await mkdir(dir, { recursive: true });
  const store = new LocalStore(dir);
  const planned = tensors.map((t) => ({ ...t, dtype }));
  const per = Math.ceil(planned.length / shards);
  const groups: PlannedTensor[][] = [];
  for (let i = 0; i < planned.length; i += per) groups.push(planned.slice(i, i + per));
  const chunk = new Uint16Array(1 << 20);
  const entries: { name: string; file: string }[] = [];
  let total = 0;
  for (let g = 0; g < groups.length; g++) {
    const file = shardFileName('model', g, groups.length);
    const prefix = encodeHeader(groups[g], SHARD_METADATA).bytes;
    const sink = await store.createShard(file, prefix.length);
    for (const t of groups[g]) {
      const n = t.shape.reduce((a, b) => a * b, 1);
      for (let start = 0; start < n; start += chunk.length) {
        const view = chunk.subarray(0, Math.min(chunk.length, n - start));
        fill(t.name, view, start);
        await sink.write(new Uint8Array(view.buffer, view.byteOffset, view.byteLength));
      }
      entries.push({ name: t.name, file });
      total += n * 2;
    }
    await sink.commit(prefix);
  }
  await writeFile(path.join(dir, 'model.safetensors.index.json'), indexJson(entries, total));
  for (const [f, text] of Object.entries(extraFiles)) await writeFile(path.join(dir, f), text);
}

/** A complete Llama config.json for the synthetic tensors (heads of 128, or of 64 below hidden 1024; no GQA). */
function llamaConfig(tensors: PlannedTensor[], hidden: number, torchDtype: string): string {
  const shape = (name: string) => tensors.find((t) => t.name === name)!.shape;
  const layers = tensors.filter((t) => t.name.endsWith('.input_layernorm.weight')).length;
  const heads = hidden / (hidden >= 1024 ? 128 : 64);
  return JSON.stringify(
    {
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      hidden_size: hidden,
      intermediate_size: shape('model.layers.0.mlp.gate_proj.weight')[0],
      num_hidden_layers: layers,
      num_attention_heads: heads,
      num_key_value_heads: heads,
      vocab_size: shape('model.embed_tokens.weight')[0],
      max_position_embeddings: 4096,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      tie_word_embeddings: false,
      torch_dtype: torchDtype,
    },
    null,
    2,
  );
}

/** 16-bit patterns for the synthetic weights of one tensor. */
function baseValues(opts: FamilyOptions): (name: string, out: Uint16Array, start: number) => void {
  // Exponent field range for magnitudes 2^-9 .. 2^-2 (norm weights sit near 1).
  const [expShift, expLo, expSpan, one] = opts.dtype === 'BF16' ? [7, 118, 8, 0x3f80] : [10, 6, 8, 0x3c00];
  return (name, out, start) => {
    const r = rng(seedOf(opts, name) + start);
    const norm = name.endsWith('norm.weight');
    for (let i = 0; i < out.length; i++) {
      const x = r();
      out[i] = norm ? one + (x & 0x1f) : ((x >>> 31) << 15) | ((expLo + ((x >>> 8) % expSpan)) << expShift) | (x & ((1 << expShift) - 1));
    }
  };
}

const seedOf = (opts: FamilyOptions, name: string) => [...name].reduce((h, c) => Math.imul(h ^ c.charCodeAt(0), 16777619), opts.seed ?? 2166136261);
const hiddenOf = (opts: FamilyOptions) => opts.hidden ?? (opts.bytes < 256 * 2 ** 20 ? 512 : 1024);
const torchDtypeOf = (opts: FamilyOptions) => (opts.dtype === 'BF16' ? 'bfloat16' : 'float16');

/** One synthetic Llama-shaped model (the family's base), with a complete config.json: for evaluation benchmarks. */
export async function writeSyntheticModel(dir: string, opts: FamilyOptions): Promise<{ dir: string; bytes: number; parameters: number }> {
  const hidden = hiddenOf(opts);
  const tensors = llamaTensors(opts.bytes, hidden, 2);
  await writeModel(dir, tensors, opts.shards, opts.dtype, baseValues(opts), { 'config.json': llamaConfig(tensors, hidden, torchDtypeOf(opts)) });
  const parameters = tensors.reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0);
  return { dir, bytes: 2 * parameters, parameters };
}

export async function writeSyntheticFamily(root: string, opts: FamilyOptions): Promise<{ base: string; post: string; newbase: string; bytes: number }> {
  const hidden = hiddenOf(opts);
  const tensors = llamaTensors(opts.bytes, hidden, 2);
  const baseValue = baseValues(opts);
  // A variant moves each element a few units in the last place, and about 1 in 64 by a large amount
  // (a sign flip), as fine-tuning does; those large moves are why BF16 deltas usually need F32.
  const variant = (salt: number, spread: number) => (name: string, out: Uint16Array, start: number) => {
    baseValue(name, out, start);
    const r = rng(seedOf(opts, name) ^ salt ^ start);
    const norm = name.endsWith('norm.weight');
    for (let i = 0; i < out.length; i++) {
      const x = r();
      out[i] += (x % (2 * spread + 1)) - spread;
      if (!norm && (x >>> 26) === 0) out[i] ^= 0x8000;
    }
  };
  const config = llamaConfig(tensors, hidden, torchDtypeOf(opts));
  const chat = JSON.stringify({ chat_template: "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}" });
  const dirs = { base: path.join(root, 'base'), post: path.join(root, 'post'), newbase: path.join(root, 'newbase') };
  await writeModel(dirs.base, tensors, opts.shards, opts.dtype, baseValue, { 'config.json': config });
  await writeModel(dirs.post, tensors, opts.shards + 1, opts.dtype, variant(0x5eed, 3), {
    'config.json': config,
    'tokenizer_config.json': chat,
  });
  await writeModel(dirs.newbase, tensors, opts.shards, opts.dtype, variant(0xba5e, 2), { 'config.json': config });
  return { ...dirs, bytes: tensors.reduce((a, t) => a + 2 * t.shape.reduce((x, y) => x * y, 1), 0) };
}
