import { createHash } from 'node:crypto';
import { dtypeSize, isFloatDType, type DType, type FloatDType } from '../format/dtype.js';
import { encodeHeader, maxHeaderLength } from '../format/safetensors.js';
import { shardFileName, tensorBytes, MODEL_LAYOUT, type Checkpoint, type CheckpointTensor } from '../format/checkpoint.js';
import { PlanError } from '../errors.js';
import type { TokenTable } from '../format/tokenizer.js';
import {
  addedRows, carriedSlice, deltaVocabRecord, embedOf, pairForCompute, planApplyVocab, weightTensors,
  type ApplyVocabInputs, type TokenizerEdit,
} from './vocab.js';
import { COMPACT_EXTENSION, DEFAULT_CHUNK_ELEMENTS } from '../codec/format.js';
import type { FusionSpec } from '../fusion/options.js';
import type { KeepRange } from '../fusion/mask.js';
import {
  CHAT_FILES, DELTA_LAYOUT, DELTA_SHARD_STEM, modelIdentity,
  type DeltaFormat, type DeltaManifest, type DeltaVocabRecord, type ModelIdentity, type ModelVocabRecord,
} from './manifest.js';

export type DeltaDtypePolicy = 'auto' | 'f32' | 'f64' | 'bf16' | 'f16';
export const DELTA_DTYPE_POLICIES: readonly DeltaDtypePolicy[] = ['auto', 'f32', 'f64', 'bf16', 'f16'];
export const DEFAULT_SHARD_SIZE = 5e9;
export const SHARD_METADATA = { format: 'pt' };

export type { TensorRef, ApplyTensorPlan, ApplyDeltaRef, OpenedDelta } from './plan-types.js';
import type { TensorRef, ApplyTensorPlan, ApplyDeltaRef, OpenedDelta } from './plan-types.js';


export interface ComputeTensorPlan {
  name: string;
  shape: number[];
  elements: number;
  modelDtype: FloatDType;
  /** The dtypes the delta may take, smallest first; one entry when the policy fixes it. */
  candidates: FloatDType[];
  /** Null: carried rows (lib/ops/vocab.ts), stored as post's own values (post − 0). */
  base: TensorRef | null;
  post: TensorRef;
  /** Carried rows [rows[0], rows[1]) of vocabulary tensor `of`. */
  carried?: { of: string; rows: [number, number] };
}

export interface ShardPlan<T> {
  file: string;
  /** Bytes reserved for the 8-byte length plus the JSON header. */
  prefixLength: number;
  tensors: T[];
  /** Input bytes this shard reads (for progress). */
  inputBytes: number;
}

export interface ComputePlan {
  kind: 'compute';
  base: string;
  post: string;
  policy: DeltaDtypePolicy;
  format: DeltaFormat;
  /** Compact layout: elements per chunk. */
  chunkElements?: number;
  shards: ShardPlan<ComputeTensorPlan>[];
  /** Post-model chat files to copy into the delta. */
  files: string[];
  identity: { base: ModelIdentity; post: ModelIdentity };
  unchangedNonFloat: string[];
  /** Non-float tensors to compare during execution's planning step (name, base, post, byteLength). */
  nonFloatChecks: { name: string; base: TensorRef; post: TensorRef; byteLength: number }[];
  /** Rows of the vocabulary tensors, and tied heads (lib/ops/vocab.ts); recorded in delta.json. */
  vocab?: DeltaVocabRecord;
  tied?: { base: boolean; post: boolean };
  hash: string;
}

export interface ApplyDeltaSource {
  ref: string;
  scale: number;
  layout: DeltaFormat;
  /** Compact layout: elements per chunk (chunk reads start on multiples of it). */
  chunkElements?: number;
}



export interface ApplyPlan {
  kind: 'apply';
  base: string;
  deltas: ApplyDeltaSource[];
  shards: ShardPlan<ApplyTensorPlan>[];
  /** Tensors of the new base that no delta touches, copied as they are. */
  copied: string[];
  /** Non-tensor files for the output: config.json from the new base, chat files from the first delta that has them. */
  files: { from: string; file: string }[];
  /** Rows of the vocabulary tensors and the tied head (lib/ops/vocab.ts): recorded, and written into config.json and the tokenizer files. */
  vocab?: { record?: ModelVocabRecord; tied: boolean; config: Record<string, unknown>; tokenizer: TokenizerEdit | null };
  /** A sparse fusion method (absent: linear, new base + Σ wᵢ·Δᵢ); rank methods carry each tensor's kept ranges per delta. */
  fusion?: FusionPlan;
  hash: string;
}

export interface FusionPlan extends FusionSpec {
  /** Rank methods: per tensor, one kept range per entry of its `deltas`. */
  cutoffs: Record<string, KeepRange[]>;
}

function ref(t: CheckpointTensor): TensorRef {
  return { file: t.file, offset: t.offset, dtype: t.dtype };
}

/** The plan with its hash computed again (after planning added to it). */
export function rehash<T extends { hash: string }>(plan: T): T {
  const { hash: _, ...rest } = plan;
  return withHash<T>(rest);
}

function withHash<T extends { hash: string }>(plan: Omit<T, 'hash'>): T {
  const hash = createHash('sha256').update(JSON.stringify(plan)).digest('hex');
  return { ...plan, hash } as T;
}

const POLICY_DTYPE: Record<Exclude<DeltaDtypePolicy, 'auto'>, FloatDType> = { f32: 'F32', f64: 'F64', bf16: 'BF16', f16: 'F16' };

/** `auto`: the smallest of (model dtype, F32, F64) that holds the delta exactly, decided per tensor while it streams. */
export function deltaCandidates(modelDtype: FloatDType, policy: DeltaDtypePolicy): FloatDType[] {
  if (policy !== 'auto') return [POLICY_DTYPE[policy]];
  const c: FloatDType[] = [modelDtype, 'F32', 'F64'];
  return [...new Set(c)].sort((a, b) => dtypeSize(a) - dtypeSize(b));
}

/** Greedy split into shards of at most `maxBytes` (a tensor larger than that gets a shard of its own). */
function splitShards<T>(items: T[], bytes: (t: T) => number, maxBytes: number): T[][] {
  const groups: T[][] = [];
  let cur: T[] = [];
  let size = 0;
  for (const it of items) {
    const b = bytes(it);
    if (cur.length && size + b > maxBytes) {
      groups.push(cur);
      cur = [];
      size = 0;
    }
    cur.push(it);
    size += b;
  }
  if (cur.length || groups.length === 0) groups.push(cur);
  return groups;
}

export function planCompute(
  base: Checkpoint,
  post: Checkpoint,
  opts: {
    policy: DeltaDtypePolicy; shardSize: number; postFiles: readonly string[]; format: DeltaFormat; chunkElements?: number;
    /** tokenizer.json token tables of base and post, for the vocab record. */
    tokens?: { base: TokenTable | null; post: TokenTable | null };
  },
): ComputePlan {
  const problems: string[] = [];
  const tensors: ComputeTensorPlan[] = [];
  const nonFloatChecks: ComputePlan['nonFloatChecks'] = [];
  const paired = pairForCompute(base, post);
  problems.push(...paired.problems);
  const rows = { base: -1, post: -1 };
  const carried: Record<string, string> = {};
  for (const { name, base: b, post: p } of paired.pairs) {
    const added = addedRows({ name, base: b, post: p });
    if (added && b.dtype === p.dtype && isFloatDType(b.dtype)) {
      // Post added tokens: Δ on the base's rows, post's own values for the rest.
      if ((rows.base >= 0 && rows.base !== added.rows) || (rows.post >= 0 && rows.post !== added.postRows)) {
        problems.push(`tensor "${name}": ${added.rows} rows in the base and ${added.postRows} in post, unlike the other vocabulary tensors`);
        continue;
      }
      Object.assign(rows, { base: added.rows, post: added.postRows });
      const c = carriedSlice({ name, base: b, post: p });
      carried[name] = c.name;
      const candidates = deltaCandidates(b.dtype, opts.policy);
      tensors.push({ name, shape: b.shape, elements: b.elements, modelDtype: b.dtype, candidates, base: ref(b), post: ref(p) });
      tensors.push({ ...c, modelDtype: b.dtype, candidates, base: null, carried: { of: name, rows: [added.rows, added.postRows] } });
      continue;
    }
    if (JSON.stringify(b.shape) !== JSON.stringify(p.shape)) {
      problems.push(`tensor "${name}": shape [${b.shape}] in the base but [${p.shape}] in post`);
      continue;
    }
    if (b.dtype !== p.dtype) {
      problems.push(`tensor "${name}": dtype ${b.dtype} in the base but ${p.dtype} in post; convert one model first`);
      continue;
    }
    if (isFloatDType(b.dtype)) {
      tensors.push({
        name, shape: b.shape, elements: b.elements, modelDtype: b.dtype,
        candidates: deltaCandidates(b.dtype, opts.policy), base: ref(b), post: ref(p),
      });
    } else {
      nonFloatChecks.push({ name, base: ref(b), post: ref(p), byteLength: b.byteLength });
    }
  }
  if (problems.length) throw new PlanError(problems);
  const embed = embedOf(base);
  const vocab = embed
    ? deltaVocabRecord(rows.base >= 0 ? rows.base : embed.shape[0], rows.post >= 0 ? rows.post : embed.shape[0], carried, opts.tokens?.base ?? null, opts.tokens?.post ?? null)
    : undefined;

  // Size shards by the most likely dtype: F32 for 16-bit models, the model dtype otherwise.
  const likely = (t: ComputeTensorPlan) => tensorBytes(t.shape, t.candidates.length > 1 ? t.candidates[1] : t.candidates[0]);
  const compact = opts.format === 'compact';
  const chunkElements = opts.chunkElements ?? DEFAULT_CHUNK_ELEMENTS;
  if (compact && !(Number.isSafeInteger(chunkElements) && chunkElements >= 64 && (chunkElements & (chunkElements - 1)) === 0)) {
    throw new PlanError([`chunk size ${chunkElements}: must be a power of two of at least 64 elements`]);
  }
  const groups = splitShards(tensors, likely, opts.shardSize);
  const shards = groups.map((g, i) => ({
    file: shardFileName(DELTA_SHARD_STEM, i, groups.length, compact ? COMPACT_EXTENSION : undefined),
    // A compact shard's header goes at its end: nothing is reserved at the front.
    prefixLength: compact ? 0 : 8 + maxHeaderLength(g.map((t) => ({ name: t.name, shape: t.shape, dtypes: t.candidates })), SHARD_METADATA),
    tensors: g,
    inputBytes: g.reduce((s, t) => s + (t.base ? 2 : 1) * tensorBytes(t.shape, t.modelDtype), 0),
  }));
  return withHash<ComputePlan>({
    kind: 'compute',
    base: base.store.ref,
    post: post.store.ref,
    policy: opts.policy,
    format: opts.format,
    ...(compact ? { chunkElements } : {}),
    shards,
    files: chatFilesIn(opts.postFiles),
    identity: { base: modelIdentity(base), post: modelIdentity(post) },
    unchangedNonFloat: nonFloatChecks.map((c) => c.name),
    nonFloatChecks,
    ...(vocab ? { vocab, tied: paired.tied } : {}),
  });
}

export function chatFilesIn(listing: readonly string[]): string[] {
  return CHAT_FILES.filter((f) => listing.includes(f));
}


export function planApply(
  base: Checkpoint,
  deltas: OpenedDelta[],
  opts: { shardSize: number; baseFiles: string[]; vocab?: Omit<ApplyVocabInputs, 'newBaseFiles'>; fusion?: FusionSpec | null },
): ApplyPlan {
  const problems: string[] = [];
  const perTensor = new Map<string, ApplyDeltaRef[]>();
  const vocab = planApplyVocab(base, deltas, { pairing: 'tokens', newBase: null, deltas: deltas.map(() => null), ...opts.vocab, newBaseFiles: opts.baseFiles }, problems);
  // A vocabulary refusal says all there is to say: the tensor-by-tensor checks below would only repeat it.
  if (problems.length) throw new PlanError(problems);
  deltas.forEach((d, i) => {
    for (const dt of d.ckpt.tensors) {
      if (vocab?.consumed[i].has(dt.name)) continue;
      const b = base.byName.get(dt.name);
      if (!b) {
        problems.push(`delta ${d.ref}: tensor "${dt.name}" is not in the new base (${base.store.ref})`);
        continue;
      }
      if (JSON.stringify(b.shape) !== JSON.stringify(dt.shape)) {
        problems.push(`delta ${d.ref}: tensor "${dt.name}" has shape [${dt.shape}] but the new base has [${b.shape}]`);
        continue;
      }
      if (!isFloatDType(b.dtype) || !isFloatDType(dt.dtype)) {
        problems.push(`delta ${d.ref}: tensor "${dt.name}" is ${dt.dtype} and the new base's is ${b.dtype}; both must be floating point`);
        continue;
      }
      const list = perTensor.get(dt.name) ?? [];
      list.push({ delta: i, ref: ref(dt) });
      perTensor.set(dt.name, list);
    }
    if (!Number.isFinite(d.scale)) problems.push(`delta ${d.ref}: scale ${d.scale} is not a finite number`);
  });
  for (const t of vocab?.tensors ?? []) {
    for (const p of t.pieces ?? [t]) {
      for (const d of p.deltas) {
        if (!isFloatDType(p.dtype) || !isFloatDType(d.ref.dtype)) problems.push(`delta ${deltas[d.delta].ref}: tensor "${d.tensor ?? t.name}" is ${d.ref.dtype} and the new base's is ${p.dtype}; both must be floating point`);
      }
    }
  }
  if (problems.length) throw new PlanError(problems);

  const vocabTensors = new Map((vocab?.tensors ?? []).map((t) => [t.name, t]));
  const tensors: ApplyTensorPlan[] = weightTensors(base).map(
    (b) => vocabTensors.get(b.name) ?? { name: b.name, shape: b.shape, elements: b.elements, dtype: b.dtype, base: ref(b), deltas: perTensor.get(b.name) ?? [] },
  );
  // A tied new base gets a head of its own when a delta has one.
  for (const t of vocabTensors.values()) if (!tensors.includes(t)) tensors.push(t);
  // Sparse fusion ranks whole tensors of equal shape; rows gathered from several sources are not that.
  const pieced = tensors.filter((t) => t.pieces);
  if (opts.fusion && pieced.length) {
    throw new PlanError([
      `method ${opts.fusion.method}: tensor "${pieced[0].name}" takes rows from several sources (carried or appended vocabulary rows, a tied head); sparse fusion needs deltas whose tensors match the new base row for row: use the linear method`,
    ]);
  }
  const inputs = (t: ApplyTensorPlan): number =>
    t.pieces ? t.pieces.reduce((a, p) => a + inputs(p), 0) : (t.base ? tensorBytes(t.shape, t.dtype) : 0) + t.deltas.reduce((a, d) => a + tensorBytes(t.shape, d.ref.dtype), 0);
  const groups = splitShards(tensors, (t) => tensorBytes(t.shape, t.dtype), opts.shardSize);
  const shards = groups.map((g, i) => ({
    file: shardFileName('model', i, groups.length),
    prefixLength: encodeHeader(g, SHARD_METADATA).bytes.length,
    tensors: g,
    inputBytes: g.reduce((s, t) => s + inputs(t), 0),
  }));

  const files: ApplyPlan['files'] = [];
  if (opts.baseFiles.includes('config.json')) files.push({ from: base.store.ref, file: 'config.json' });
  const chatSource = deltas.find((d) => d.manifest.files.length > 0);
  if (vocab?.tokenizer) {
    // Rows moved against post's tokenizer: the new base's tokenizer files, post's chat files beside them.
    const own = new Set(['tokenizer.json', 'tokenizer_config.json', 'tokenizer.model', 'added_tokens.json']);
    const fromBase = chatFilesIn(opts.baseFiles).filter((f) => own.has(f));
    files.push(...fromBase.map((file) => ({ from: base.store.ref, file })));
    if (!fromBase.includes('tokenizer_config.json') && vocab.tokenizer.chatFrom) files.push({ from: vocab.tokenizer.chatFrom, file: 'tokenizer_config.json' });
    if (chatSource) files.push(...chatSource.manifest.files.filter((f) => !own.has(f.file)).map((f) => ({ from: chatSource.ref, file: f.file })));
  } else {
    const chat = chatSource ? chatSource.manifest.files.map((f) => ({ from: chatSource.ref, file: f.file })) : [];
    // Without a post model's chat files, keep the new base's own tokenizer so the output still loads.
    const fallback = chatSource ? [] : chatFilesIn(opts.baseFiles).map((file) => ({ from: base.store.ref, file }));
    files.push(...chat, ...fallback);
  }

  return withHash<ApplyPlan>({
    kind: 'apply',
    base: base.store.ref,
    deltas: deltas.map((d) => ({
      ref: d.ref,
      scale: d.scale,
      layout: d.manifest.layout,
      ...(d.manifest.compact ? { chunkElements: d.manifest.compact.chunkElements } : {}),
    })),
    shards,
    copied: tensors.filter((t) => t.deltas.length === 0 && !t.pieces).map((t) => t.name),
    files,
    ...(vocab && (vocab.record || Object.keys(vocab.config).length || vocab.tokenizer || vocab.tiedAnywhere)
      ? { vocab: { ...(vocab.record ? { record: vocab.record } : {}), tied: vocab.tied, config: vocab.config, tokenizer: vocab.tokenizer } }
      : {}),
    ...(opts.fusion ? { fusion: { ...opts.fusion, cutoffs: {} } } : {}),
  });
}

export { MODEL_LAYOUT, DELTA_LAYOUT };
