import { createHash } from 'node:crypto';
import { dtypeSize, type FloatDType } from '../format/dtype.js';
import { encodeHeader } from '../format/safetensors.js';
import { openCheckpoint, indexJson, MODEL_LAYOUT, type Checkpoint } from '../format/checkpoint.js';
import { newSubtractStats, type Kernels, type SubtractStats } from '../kernels/index.js';
import { CODEC, COMPACT_FORMAT_VERSION, TRANSFORM, chunkBound } from '../codec/format.js';
import { CompactShardWriter } from '../codec/writer.js';
import { codecPool, sharedBytes, type CodecPool } from '../codec/pool.js';
import type { Store } from '../storage/types.js';
import { InputError } from '../errors.js';
import { readTokenTable } from '../format/tokenizer.js';
import { TOOL_VERSION } from '../version.js';
import { DEFAULT_DELTA_FORMAT, DELTA_FORMAT, DELTA_LAYOUT, DELTA_MANIFEST, type DeltaFormat, type DeltaManifest, type DeltaTensorEntry } from './manifest.js';
import { outputTags } from './outputs.js';
import { planCompute, SHARD_METADATA, type ComputePlan, type ComputeTensorPlan, type DeltaDtypePolicy, type ShardPlan } from './plan.js';
import { SourceCache, streamTensors, chunkElementsFor, alignedChunkElements, type Slot } from './stream.js';
import { DEFAULT_BUFFER_BYTES, kernelsFor, slotsFor, type ExecEnv } from './env.js';
import { withBuffers } from './buffers.js';

export interface ComputeShardResult {
  file: string;
  sha256: string;
  bytes: number;
  tensors: Record<string, DeltaTensorEntry>;
}

/**
 * Plans a delta: reads both checkpoints' headers, checks names, shapes and dtypes, and checks that
 * non-float tensors are equal. Every problem is raised here, before any output byte is written.
 */
export async function prepareCompute(
  env: ExecEnv,
  baseRef: string,
  postRef: string,
  opts: { policy?: DeltaDtypePolicy; shardSize: number; format?: DeltaFormat; chunkElements?: number },
): Promise<ComputePlan> {
  // The codec workers load while the plan is made and checked.
  if ((opts.format ?? DEFAULT_DELTA_FORMAT) === 'compact') codecPool().warm();
  const base = await openCheckpoint(env.resolve(baseRef), MODEL_LAYOUT);
  const post = await openCheckpoint(env.resolve(postRef), MODEL_LAYOUT);
  const plan = planCompute(base, post, {
    policy: opts.policy ?? 'auto',
    shardSize: opts.shardSize,
    tokens: { base: await readTokenTable(base.store), post: await readTokenTable(post.store) },
    postFiles: await post.store.list(),
    format: opts.format ?? DEFAULT_DELTA_FORMAT,
    chunkElements: opts.chunkElements,
  });
  await checkNonFloatEqual(env, plan);
  return plan;
}

async function checkNonFloatEqual(env: ExecEnv, plan: ComputePlan): Promise<void> {
  const sources = new SourceCache(env.resolve);
  const chunk = 8 << 20;
  const a = new Uint8Array(chunk);
  const b = new Uint8Array(chunk);
  const differ: string[] = [];
  try {
    for (const c of plan.nonFloatChecks) {
      const sb = await sources.get(plan.base, c.base.file);
      const sp = await sources.get(plan.post, c.post.file);
      for (let off = 0; off < c.byteLength; off += chunk) {
        const n = Math.min(chunk, c.byteLength - off);
        const [x, y] = await Promise.all([sb.read(c.base.offset + off, n, a), sp.read(c.post.offset + off, n, b)]);
        if (!Buffer.from(x.buffer, x.byteOffset, n).equals(Buffer.from(y.buffer, y.byteOffset, n))) {
          differ.push(c.name);
          break;
        }
      }
    }
  } finally {
    await sources.closeAll();
  }
  if (differ.length) {
    throw new InputError(
      `non-float tensors differ between base and post, and ParamΔ only differences floating-point weights: ${differ.map((n) => `"${n}"`).join(', ')}`,
    );
  }
}

/** Which dtype to try first: F32 when it is a candidate (most 16-bit deltas need it), else the only one. */
function speculate(candidates: FloatDType[]): FloatDType {
  return candidates.includes('F32') ? 'F32' : candidates[0];
}

/** The smaller candidate to check while writing `current`, if there is one. */
function probeFor(candidates: FloatDType[], current: FloatDType): FloatDType | undefined {
  return dtypeSize(candidates[0]) < dtypeSize(current) ? candidates[0] : undefined;
}

/** After a pass written in `current` (probing the smallest candidate): the smallest candidate that holds every delta exactly. */
function smallestExact(candidates: FloatDType[], current: FloatDType, st: SubtractStats): FloatDType {
  const probe = probeFor(candidates, current);
  if (probe && st.probeMisses === 0) return probe;
  return st.rounded > 0 ? candidates[candidates.length - 1] : current;
}

/** Writes one delta shard. Safe to run again: it rewrites the same file with the same bytes. */
export async function executeComputeShard(plan: ComputePlan, index: number, env: ExecEnv, out: Store): Promise<ComputeShardResult> {
  // Plans stored before the compact layout existed have no format: they were plain.
  return (plan.format ?? 'safetensors') === 'compact' ? executeCompactShard(plan, index, env, out) : executePlainShard(plan, index, env, out);
}

/** Reads elements [start, start+n) of a tensor of base and of post into a slot's two inputs. */
function chunkReader(plan: ComputePlan, shard: ShardPlan<ComputeTensorPlan>, sources: SourceCache) {
  return async (t: number, start: number, n: number, s: Slot) => {
    const tp = shard.tensors[t];
    const size = dtypeSize(tp.modelDtype);
    const base = tp.base;
    // Carried rows have no base: post − 0 is post's own values, exactly.
    if (!base) s.inputs[0].fill(0, 0, n * size);
    const [sb, sp] = await Promise.all([base ? sources.get(plan.base, base.file) : null, sources.get(plan.post, tp.post.file)]);
    await Promise.all([
      sb?.read(base!.offset + start * size, n * size, s.inputs[0]),
      sp.read(tp.post.offset + start * size, n * size, s.inputs[1]),
    ]);
  };
}

function tensorEntry(t: ComputeTensorPlan, file: string, dtype: FloatDType, st: SubtractStats): DeltaTensorEntry {
  return {
    dtype,
    modelDtype: t.modelDtype,
    shape: t.shape,
    file,
    zero: st.sumSqDelta === 0 && st.rounded === 0,
    rounded: st.rounded,
    maxError: st.maxError,
    relNorm: st.sumSqBase > 0 ? Math.sqrt(st.sumSqDelta / st.sumSqBase) : 0,
    deltaNorm: Math.sqrt(st.sumSqDelta),
    baseNorm: Math.sqrt(st.sumSqBase),
    ...(t.carried ? { carried: t.carried } : {}),
  };
}

/**
 * One compact chunk's delta (post − base) in the smallest candidate dtype that holds it exactly (the
 * widest otherwise), starting from `hint` (what the tensor's previous chunk needed) and probing the next
 * smaller one. A wrong guess recomputes the chunk from the inputs already in memory: nothing is read twice.
 */
function exactChunk(
  kernels: Kernels, inDtype: FloatDType, candidates: FloatDType[], base: Uint8Array, post: Uint8Array, n: number, out: Uint8Array, hint: FloatDType,
): { dtype: FloatDType; stats: SubtractStats } {
  const c = candidates;
  let i = Math.max(0, c.indexOf(hint));
  for (;;) {
    const probe = i > 0 ? c[i - 1] : undefined;
    const stats = newSubtractStats();
    kernels.subtract(inDtype, base, post, n, c[i], out, stats, probe);
    if (stats.rounded > 0 && i < c.length - 1) i++;
    else if (probe !== undefined && stats.probeMisses === 0 && stats.rounded === 0) i--;
    else return { dtype: c[i], stats };
  }
}

export function addStats(into: SubtractStats, st: SubtractStats): void {
  into.elements += st.elements;
  into.rounded += st.rounded;
  into.maxError = Math.max(into.maxError, st.maxError);
  into.probeMisses += st.probeMisses;
  into.sumSqDelta += st.sumSqDelta;
  into.sumSqBase += st.sumSqBase;
}

export interface EncodedChunk {
  t: number;
  dtype: FloatDType;
  n: number;
  frames: Uint8Array;
  lengths: number[];
}

/** What encoding a stream chunk into compact chunks needs: kernels, codec workers, the chunk grid. */
export interface CompactEncoder {
  kernels: Kernels;
  pool: CodecPool;
  chunkElements: number;
  /** Bytes reserved in slot.aux[0] per compact chunk's frames (slot.aux[1] holds the chunks to encode). */
  frameBytes: number;
}

/**
 * Computes post − base for the n elements in a slot's two inputs, compact chunk by compact chunk, each in
 * its smallest exact dtype (into slot.out), and compresses them on codec workers (into slot.aux[0]).
 * `tensor.hint` carries the dtype guess from chunk to chunk; `tensor.stats` accumulates.
 */
export function encodeCompactChunks(
  e: CompactEncoder, t: number, inDtype: FloatDType, candidates: FloatDType[], n: number, s: Slot,
  tensor: { hint: FloatDType; stats: SubtractStats },
): Promise<EncodedChunk[]> {
  const ch = e.chunkElements;
  const size = dtypeSize(inDtype);
  const encoded: Promise<EncodedChunk>[] = [];
  for (let j = 0; j * ch < n; j++) {
    const len = Math.min(ch, n - j * ch);
    const r = exactChunk(e.kernels, inDtype, candidates, s.inputs[0].subarray(j * ch * size), s.inputs[1].subarray(j * ch * size), len, s.out.subarray(j * ch * 8), tensor.hint);
    tensor.hint = r.dtype;
    addStats(tensor.stats, r.stats);
    // The WebAssembly kernels' memory is shared with the codec workers; other kernels' output is copied there.
    const bytes = len * dtypeSize(r.dtype);
    const computed = s.out.subarray(j * ch * 8, j * ch * 8 + bytes);
    const raw = s.aux![1] ? s.aux![1].subarray(j * ch * 8, j * ch * 8 + bytes) : computed;
    if (raw !== computed) raw.set(computed);
    const frames = s.aux![0].subarray(j * e.frameBytes, (j + 1) * e.frameBytes);
    encoded.push(e.pool.encode(raw, len, dtypeSize(r.dtype), frames).then((lengths) => ({ t, dtype: r.dtype, n: len, frames, lengths })));
  }
  return Promise.all(encoded);
}

/**
 * Slots for encoding compact chunks: two inputs of up to `inBytes` per element in the kernels' memory;
 * the delta and its frames shared with codec workers. Returns their shape's key and how to make them.
 */
export function compactSlots(env: ExecEnv, inBytes: number, ch: number): { key: string; create: () => Promise<{ encoder: CompactEncoder; slots: Slot[]; chunk: number }> } {
  const count = slotsFor(env);
  // Per element in flight: both inputs, the delta (up to F64) twice (kernels' and shared memory), its frames.
  const chunk = alignedChunkElements(2 * inBytes + 24, env.bufferBytes ?? DEFAULT_BUFFER_BYTES, count, ch);
  const key = JSON.stringify(['compact', env.kernels ?? 'wasm', count, chunk, inBytes, ch]);
  return { key, create: () => createCompactSlots(env, inBytes, ch, count, chunk) };
}

async function createCompactSlots(env: ExecEnv, inBytes: number, ch: number, count: number, chunk: number) {
  const kernels = await kernelsFor(env, count * chunk * (2 * inBytes + 8));
  const frameBytes = chunkBound(ch);
  const slots: Slot[] = Array.from({ length: count }, () => {
    const out = kernels.alloc(chunk * 8);
    // aux[1]: a shared copy of the delta, only where the kernels' own memory is not shared.
    const aux = [sharedBytes((chunk / ch) * frameBytes)];
    if (!(out.buffer instanceof SharedArrayBuffer)) aux.push(sharedBytes(chunk * 8));
    return { inputs: [kernels.alloc(chunk * inBytes), kernels.alloc(chunk * inBytes)], out, aux };
  });
  return { encoder: { kernels, pool: codecPool(), chunkElements: ch, frameBytes }, slots, chunk };
}

/** Appends encoded chunks to a compact shard, in order. */
export async function writeEncoded(w: CompactShardWriter, chunks: EncodedChunk[]): Promise<void> {
  await Promise.all(chunks.map((c) => w.addChunk(c.t, c.dtype, c.n, c.frames, c.lengths)));
}

/**
 * Writes one compact delta shard. Each stream chunk is a whole number of compact chunks: the kernel
 * computes each in its smallest exact dtype on this thread, codec workers split and compress them while
 * the next chunks are read and computed, and their frames are appended in order.
 */
async function executeCompactShard(plan: ComputePlan, index: number, env: ExecEnv, out: Store): Promise<ComputeShardResult> {
  const shard = plan.shards[index];
  const ch = plan.chunkElements!;
  const maxIn = Math.max(1, ...shard.tensors.map((t) => dtypeSize(t.modelDtype)));
  const buffers = compactSlots(env, maxIn, ch);
  return withBuffers(buffers.key, buffers.create, async ({ encoder, slots, chunk }) => {
    const sources = new SourceCache(env.resolve);
    const state = shard.tensors.map((t) => ({ hint: speculate(t.candidates), stats: newSubtractStats() }));
    try {
      return await writeCompactShard(out, shard.file, plan.hash, ch, slots, chunk, {
        tensors: shard.tensors.map((t) => ({ name: t.name, shape: t.shape, modelDtype: t.modelDtype, emptyDtype: t.candidates[0], elements: t.elements })),
        read: chunkReader(plan, shard, sources),
        compute: (t, n, s) => {
          const tp = shard.tensors[t];
          env.onProgress?.(2 * n * dtypeSize(tp.modelDtype));
          return encodeCompactChunks(encoder, t, tp.modelDtype, tp.candidates, n, s, state[t]);
        },
        entry: (h, i) => tensorEntry(shard.tensors[i], shard.file, h.dtype, state[i].stats),
      });
    } finally {
      await sources.closeAll();
    }
  });
}

/** What one compact shard is written from: its tensors, how a chunk is read and encoded, and each tensor's manifest entry. */
export interface CompactShardSource {
  tensors: (Parameters<typeof CompactShardWriter.create>[2][number] & { elements: number })[];
  read: (t: number, start: number, n: number, s: Slot) => Promise<void>;
  compute: (t: number, n: number, s: Slot) => EncodedChunk[] | Promise<EncodedChunk[]>;
  entry: (h: { name: string; dtype: FloatDType }, i: number) => DeltaTensorEntry;
}

/**
 * The one loop that writes a compact shard (compute and convert): chunks streamed through the slots,
 * encoded, appended in order, then committed; the shard is aborted, never left half-written, on failure.
 */
export async function writeCompactShard(
  out: Store, file: string, planHash: string, chunkElements: number, slots: Slot[], chunk: number, src: CompactShardSource,
): Promise<ComputeShardResult> {
  let writer: CompactShardWriter | null = null;
  try {
    const w = (writer = await CompactShardWriter.create(
      out,
      file,
      src.tensors.map(({ elements: _, ...t }) => t),
      chunkElements,
      outputTags('delta', planHash),
    ));
    await streamTensors<EncodedChunk[]>(
      {
        count: src.tensors.length,
        elements: (t) => src.tensors[t].elements,
        read: src.read,
        compute: (t, _start, n, s) => src.compute(t, n, s),
        write: (chunks) => writeEncoded(w, chunks),
      },
      slots,
      chunk,
    );
    const result = await w.commit();
    const tensors: Record<string, DeltaTensorEntry> = {};
    result.header.tensors.forEach((h, i) => {
      tensors[h.name] = { ...src.entry(h, i), compressedBytes: h.compressedBytes, rawBytes: h.rawBytes };
    });
    return { file, sha256: result.sha256, bytes: result.bytes, tensors };
  } catch (e) {
    await writer?.abort().catch(() => undefined);
    throw e;
  }
}

/** Writes one plain (safetensors) delta shard: each tensor in one dtype, a tensor guessed wrong streamed again. */
async function executePlainShard(plan: ComputePlan, index: number, env: ExecEnv, out: Store): Promise<ComputeShardResult> {
  const shard = plan.shards[index];
  const budget = env.bufferBytes ?? DEFAULT_BUFFER_BYTES;
  const maxIn = Math.max(1, ...shard.tensors.map((t) => dtypeSize(t.modelDtype)));
  const count = slotsFor(env);
  const chunk = chunkElementsFor(2 * maxIn + 8, budget, count);
  const kernels = await kernelsFor(env, count * chunk * (2 * maxIn + 8));
  const slot = (): Slot => ({ inputs: [kernels.alloc(chunk * maxIn), kernels.alloc(chunk * maxIn)], out: kernels.alloc(chunk * 8) });
  const slots: Slot[] = Array.from({ length: count }, slot);

  const sources = new SourceCache(env.resolve);
  const dtypes: FloatDType[] = shard.tensors.map((t) => speculate(t.candidates));
  // A dtype is decided once the whole tensor has been seen (or the policy fixes it).
  const decided = shard.tensors.map((t) => t.candidates.length === 1);
  const readChunk = chunkReader(plan, shard, sources);
  // The shard's sha256 streams only if the header hashed first stays true, so settle the dtypes
  // of tensors that fit in one chunk (norms, biases: cheap to read twice) before the header.
  try {
    for (let t = 0; t < shard.tensors.length; t++) {
      const tp = shard.tensors[t];
      if (decided[t] || tp.elements > chunk) continue;
      const st = newSubtractStats();
      if (tp.elements > 0) {
        await readChunk(t, 0, tp.elements, slots[0]);
        kernels.subtract(tp.modelDtype, slots[0].inputs[0], slots[0].inputs[1], tp.elements, dtypes[t], slots[0].out, st, probeFor(tp.candidates, dtypes[t]));
      }
      dtypes[t] = smallestExact(tp.candidates, dtypes[t], st);
      decided[t] = true;
    }
  } catch (e) {
    await sources.closeAll();
    throw e;
  }
  const header = () => encodeHeader(shard.tensors.map((t, i) => ({ name: t.name, dtype: dtypes[i], shape: t.shape })), SHARD_METADATA, shard.prefixLength - 8).bytes;
  const sink = await out.createShard(shard.file, shard.prefixLength, header(), { metadata: outputTags('delta', plan.hash) });
  const stats: SubtractStats[] = shard.tensors.map(() => newSubtractStats());
  let bodyLength = 0;
  const tensorStart: number[] = [];

  try {
    await streamTensors(
      {
        count: shard.tensors.length,
        elements: (t) => shard.tensors[t].elements,
        read: (t, start, n, s) => {
          if (start === 0) tensorStart[t] = bodyLength;
          return readChunk(t, start, n, s);
        },
        compute: (t, _start, n, s) => {
          const tp = shard.tensors[t];
          const probe = decided[t] ? undefined : probeFor(tp.candidates, dtypes[t]);
          kernels.subtract(tp.modelDtype, s.inputs[0], s.inputs[1], n, dtypes[t], s.out, stats[t], probe);
          env.onProgress?.(2 * n * dtypeSize(tp.modelDtype));
          const bytes = s.out.subarray(0, n * dtypeSize(dtypes[t]));
          bodyLength += bytes.length;
          return bytes;
        },
        write: (bytes) => sink.write(bytes),
        finish: (t) => {
          if (decided[t]) return 'next';
          decided[t] = true;
          const best = smallestExact(shard.tensors[t].candidates, dtypes[t], stats[t]);
          if (best === dtypes[t]) return 'next';
          dtypes[t] = best; // a large tensor guessed wrong: write it again in the right dtype
          return 'redo';
        },
        redo: async (t) => {
          bodyLength = tensorStart[t];
          stats[t] = newSubtractStats();
          await sink.truncate(bodyLength);
        },
      },
      slots,
      chunk,
    );
    const result = await sink.commit(header());
    const tensors: Record<string, DeltaTensorEntry> = {};
    shard.tensors.forEach((t, i) => (tensors[t.name] = tensorEntry(t, shard.file, dtypes[i], stats[i])));
    return { file: shard.file, sha256: result.sha256!, bytes: result.bytes, tensors };
  } catch (e) {
    await sink.abort().catch(() => undefined);
    throw e;
  } finally {
    await sources.closeAll();
  }
}

/** The tensors of every shard result, in shard order: the manifest's entries, the index's, and their plain bytes. */
export function shardTensors(shards: readonly Pick<ComputeShardResult, 'file' | 'tensors'>[]): {
  tensors: DeltaManifest['tensors'];
  entries: { name: string; file: string }[];
  total: number;
} {
  const tensors: DeltaManifest['tensors'] = {};
  const entries: { name: string; file: string }[] = [];
  let total = 0;
  for (const s of shards) {
    for (const [name, t] of Object.entries(s.tensors)) {
      tensors[name] = t;
      entries.push({ name, file: s.file });
      total += t.shape.reduce((a, b) => a * b, 1) * dtypeSize(t.dtype);
    }
  }
  return { tensors, entries, total };
}

/**
 * Writes the delta index, the post model's chat files, and `delta.json` last: the mark of a complete delta.
 * `sources`: base and post references to record in delta.json (the pipeline's, inside its containers).
 */
export async function finalizeCompute(
  plan: ComputePlan,
  shards: ComputeShardResult[],
  env: ExecEnv,
  out: Store,
  sources?: { base: string; post: string },
): Promise<DeltaManifest> {
  const post = env.resolve(plan.post);
  const tags = outputTags('delta');
  const files: DeltaManifest['files'] = [];
  for (const file of plan.files) {
    const src = await post.openRead(file);
    let data: Uint8Array;
    try {
      data = await src.read(0, src.size);
    } finally {
      await src.close();
    }
    await out.writeFile(file, data, { metadata: tags });
    files.push({ file, sha256: createHash('sha256').update(data).digest('hex'), bytes: data.length });
  }
  const { tensors, entries, total } = shardTensors(shards);
  const compact = (plan.format ?? 'safetensors') === 'compact';
  // Compact shards describe themselves; the plain layout keeps the index transformers reads.
  if (!compact) await out.writeFile(DELTA_LAYOUT.index, indexJson(entries, total), { metadata: tags });
  const manifest: DeltaManifest = {
    format: DELTA_FORMAT,
    formatVersion: compact ? 2 : 1,
    layout: compact ? 'compact' : 'safetensors',
    ...(compact
      ? { compact: { formatVersion: COMPACT_FORMAT_VERSION, codec: CODEC, transform: TRANSFORM, chunkElements: plan.chunkElements! } }
      : { index: DELTA_LAYOUT.index }),
    tool: { name: 'paramdelta', version: TOOL_VERSION },
    createdAt: new Date().toISOString(),
    base: plan.identity.base,
    post: plan.identity.post,
    dtypePolicy: plan.policy,
    shards: shards.map((s) => ({ file: s.file, sha256: s.sha256, bytes: s.bytes })),
    tensors,
    unchangedNonFloat: plan.unchangedNonFloat,
    files,
    ...(sources ? { sources: { base: sources.base, post: sources.post } } : {}),
    ...(plan.vocab ? { vocab: plan.vocab } : {}),
    ...(plan.tied ? { tied: plan.tied } : {}),
  };
  await out.writeFile(DELTA_MANIFEST, JSON.stringify(manifest, null, 2) + '\n', { metadata: tags });
  return manifest;
}

export type { Checkpoint };
