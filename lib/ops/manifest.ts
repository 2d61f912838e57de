import { createHash } from 'node:crypto';
import { z } from 'zod';
import { DTYPE_SIZES, FLOAT_DTYPES, type DType } from '../format/dtype.js';
import type { Checkpoint, CheckpointLayout } from '../format/checkpoint.js';
import { InputError } from '../errors.js';
import { codecSchema } from '../codec/format.js';
import type { FusionSpec } from '../fusion/options.js';

export const DELTA_MANIFEST = 'delta.json';
/** paramdelta's own record in a model folder it wrote (apply), written just before the index. */
export const MODEL_MANIFEST = 'paramdelta.json';
/** The `format` field of each manifest: the tag that marks a folder as paramdelta's own output. */
export const DELTA_FORMAT = 'paramdelta.delta';
export const MODEL_FORMAT = 'paramdelta.model';
export const DELTA_LAYOUT: CheckpointLayout = { single: 'delta.safetensors', index: 'delta.safetensors.index.json' };
export const DELTA_SHARD_STEM = 'delta';

/** How a delta's tensors are stored: compact (chunked, byte planes, zstd; the default) or plain safetensors. */
export const DELTA_FORMATS = ['compact', 'safetensors'] as const;
export type DeltaFormat = (typeof DELTA_FORMATS)[number];
export const DEFAULT_DELTA_FORMAT: DeltaFormat = 'compact';

/** Non-tensor files a chat model needs; copied from post into the delta, then into every applied model. */
export const CHAT_FILES = [
  'tokenizer_config.json',
  'tokenizer.json',
  'tokenizer.model',
  'special_tokens_map.json',
  'generation_config.json',
  'chat_template.jinja',
  'added_tokens.json',
] as const;

/** config.json fields that identify an architecture and its shapes. */
const IDENTITY_CONFIG_FIELDS = [
  'architectures', 'model_type', 'hidden_size', 'intermediate_size', 'num_hidden_layers',
  'num_attention_heads', 'num_key_value_heads', 'head_dim', 'vocab_size', 'tie_word_embeddings', 'torch_dtype',
];

const floatDType = z.enum(FLOAT_DTYPES);
const anyDType = z.enum(Object.keys(DTYPE_SIZES) as [DType, ...DType[]]);

const identitySchema = z.object({
  config: z.record(z.string(), z.unknown()),
  /** sha256 over the sorted (name, dtype, shape) list: equal signatures mean interchangeable tensor layouts. */
  signature: z.string(),
  tensors: z.array(z.tuple([z.string(), anyDType, z.array(z.number().int().nonnegative())])),
});
export type ModelIdentity = z.infer<typeof identitySchema>;

const deltaTensorSchema = z.object({
  dtype: floatDType,
  modelDtype: floatDType,
  shape: z.array(z.number().int().nonnegative()),
  file: z.string(),
  /** True when post equals base here; the tensor is still stored (as zeros in the model dtype). */
  zero: z.boolean(),
  /** Elements the chosen dtype could not hold exactly, and the largest resulting error. */
  rounded: z.number().int().nonnegative(),
  maxError: z.number().nonnegative(),
  /** ‖Δ‖ / ‖base‖ over finite elements (0 when base is all zero). */
  relNorm: z.number().nonnegative(),
  /** ‖Δ‖ and ‖base‖ over finite elements, in float64 (absent in deltas written before analysis existed). */
  deltaNorm: z.number().nonnegative().optional(),
  baseNorm: z.number().nonnegative().optional(),
  /** Compact layout: the tensor's frames, and its chunks decoded (each chunk in the smallest exact dtype). */
  compressedBytes: z.number().int().nonnegative().optional(),
  rawBytes: z.number().int().nonnegative().optional(),
  /** Carried rows (issue 9): this tensor holds post's own rows [rows[0], rows[1]) of vocabulary tensor `of`, not a difference. */
  carried: z.object({ of: z.string(), rows: z.tuple([z.number().int().nonnegative(), z.number().int().nonnegative()]) }).optional(),
});
export type DeltaTensorEntry = z.infer<typeof deltaTensorSchema>;

const tokenSchema = z.string().nullable();
const vocabRecordSchema = z.object({
  /** Rows of the vocabulary-sized tensors in the base (V: the delta's rows) and in post (V_post). */
  baseRows: z.number().int().nonnegative(),
  postRows: z.number().int().nonnegative(),
  /** V_post > V: rows [V, V_post) stored as post's own values (vocabulary tensor → its carried tensor), with post's token strings. */
  carried: z.object({ tensors: z.record(z.string(), z.string()), tokens: z.array(tokenSchema) }).optional(),
  /**
   * The base's token contents, rows [0, V): those of `file` (post's tokenizer.json in this folder; null: none)
   * except the rows listed. Null when the base has no tokenizer.json.
   */
  baseTokens: z.object({ file: z.string().nullable(), except: z.record(z.string(), tokenSchema) }).nullable(),
});
export type DeltaVocabRecord = z.infer<typeof vocabRecordSchema>;

const fileEntry = z.object({ file: z.string(), sha256: z.string().regex(/^[0-9a-f]{64}$/), bytes: z.number().int().nonnegative() });

export const deltaManifestSchema = z.object({
  format: z.literal(DELTA_FORMAT),
  /** 1: plain safetensors shards (what every version reads); 2: compact shards (docs/compact-format.md). */
  formatVersion: z.union([z.literal(1), z.literal(2)]),
  /** Absent in deltas written before the compact layout existed: those are plain. */
  layout: z.enum(DELTA_FORMATS).default('safetensors'),
  /** Compact layout: the shard format, codec, transform and chunk size every shard uses. */
  compact: z
    .object({ formatVersion: z.number().int(), codec: codecSchema, transform: z.string(), chunkElements: z.number().int().positive() })
    .optional(),
  tool: z.object({ name: z.literal('paramdelta'), version: z.string() }),
  createdAt: z.string(),
  base: identitySchema,
  post: identitySchema,
  dtypePolicy: z.enum(['auto', 'f32', 'f64', 'bf16', 'f16']),
  /** The plain layout's delta.safetensors.index.json; compact shards describe themselves. */
  index: z.string().optional(),
  shards: z.array(fileEntry),
  tensors: z.record(z.string(), deltaTensorSchema),
  /** Integer/bool/F8 tensors, checked equal in base and post and so not part of the delta. */
  unchangedNonFloat: z.array(z.string()),
  /** Post-model files a chat model needs, copied next to the shards. */
  files: z.array(fileEntry),
  /**
   * Where base and post were when the delta was computed (the pipeline records them): the quality
   * gate compares a re-posted model with the old post while it is still there. Absent in older deltas.
   */
  sources: z.object({ base: z.string(), post: z.string() }).optional(),
  /** The vocabulary-sized tensors' rows (lib/ops/vocab.ts); absent in deltas written before it was recorded. */
  vocab: vocabRecordSchema.optional(),
  /** Whether base and post tie lm_head to embed_tokens; absent in deltas written before it was recorded. */
  tied: z.object({ base: z.boolean(), post: z.boolean() }).optional(),
});
export type DeltaManifest = z.infer<typeof deltaManifestSchema>;

/** What `apply` records about a model it wrote. */
export interface ModelManifest {
  format: typeof MODEL_FORMAT;
  formatVersion: 1;
  tool: { name: 'paramdelta'; version: string };
  createdAt: string;
  /** The new base, and each delta applied to it with its scale, in order. */
  base: string;
  deltas: { ref: string; scale: number }[];
  shards: string[];
  /** Rows of the vocabulary-sized tensors, when they are not simply the new base's (lib/ops/vocab.ts). */
  vocab?: ModelVocabRecord;
  /** Whether the output ties lm_head to embed_tokens, when a delta or the new base has a head of its own. */
  tied?: boolean;
  /** A sparse fusion method and its options (absent: linear, new base + Σ scale·Δ). */
  fusion?: FusionSpec;
}

/** Where each row of the output's vocabulary-sized tensors came from. */
export interface ModelVocabRecord {
  /** Rows: the output's, the new base's, and the deltas' base (V). */
  rows: number;
  newBaseRows: number;
  deltaBaseRows: number;
  /** How rows were paired: by token content (the default) or by index (`--vocab rows`). */
  pairing: 'tokens' | 'rows';
  /** Row ranges [start, end): new base + Σ scale·Δ, and the new base's own rows. */
  applied: [number, number][];
  newBase: [number, number][];
  /** Post's own rows: put in the new base's row for the same token (carried) or added at the end (appended). */
  carried: { row: number; postRow: number; token: string | null }[];
  appended: { row: number; postRow: number; token: string | null }[];
}

export function modelIdentity(ckpt: Checkpoint): ModelIdentity {
  const config: Record<string, unknown> = {};
  for (const k of IDENTITY_CONFIG_FIELDS) if (ckpt.config && k in ckpt.config) config[k] = ckpt.config[k];
  const tensors = ckpt.tensors.map((t) => [t.name, t.dtype, t.shape] as [string, DType, number[]]);
  return { config, signature: tensorSignature(tensors), tensors };
}

export function tensorSignature(tensors: readonly [string, string, readonly number[]][]): string {
  const sorted = [...tensors].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return createHash('sha256').update(JSON.stringify(sorted)).digest('hex');
}

export function parseDeltaManifest(text: string, where: string): DeltaManifest {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new InputError(`${where}: not valid JSON (${(e as Error).message})`);
  }
  const r = deltaManifestSchema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new InputError(`${where}: field "${issue.path.join('.')}": ${issue.message}`);
  }
  const m = r.data;
  const compact = m.layout === 'compact';
  if (compact !== (m.formatVersion === 2) || compact !== (m.compact !== undefined) || (!compact && m.index === undefined)) {
    throw new InputError(`${where}: formatVersion ${m.formatVersion} does not match layout "${m.layout}"`);
  }
  return m;
}
