import { createHash } from 'node:crypto';
import { dtypeSize, type FloatDType } from '../format/dtype.js';
import { encodeHeader } from '../format/safetensors.js';
import { indexJson, shardFileName, tensorBytes } from '../format/checkpoint.js';
import { newSubtractStats } from '../kernels/index.js';
import { CODEC, COMPACT_EXTENSION, COMPACT_FORMAT_VERSION, DEFAULT_CHUNK_ELEMENTS, TRANSFORM, chunkBound } from '../codec/format.js';
import { CompactShards, type Piece } from '../codec/reader.js';
import { codecPool, sharedBytes } from '../codec/pool.js';
import { InputError, PlanError } from '../errors.js';
import type { Store } from '../storage/types.js';
import { outputTags } from './outputs.js';
import { TOOL_VERSION } from '../version.js';
import { DELTA_LAYOUT, DELTA_MANIFEST, DELTA_SHARD_STEM, type DeltaFormat, type DeltaManifest, type DeltaTensorEntry } from './manifest.js';
import { deltaCandidates, SHARD_METADATA, type ShardPlan } from './plan.js';
import { openDelta } from './delta.js';
import { compactSlots, encodeCompactChunks, shardTensors, writeCompactShard, type ComputeShardResult } from './compute.js';
import { SourceCache, alignedChunkElements, streamTensors, type Slot } from './stream.js';
import { DEFAULT_BUFFER_BYTES, kernelsFor, slotsFor, type ExecEnv } from './env.js';
import { withBuffers } from './buffers.js';

export interface ConvertTensorPlan {
  name: string;
  shape: number[];
  elements: number;
  modelDtype: FloatDType;
  /** The tensor's dtype in the plain layout (the widest chunk dtype in the compact one). */
  dtype: FloatDType;
  /** To compact: the dtypes a chunk may be narrowed to, exactly, smallest first. */
  candidates: FloatDType[];
  /** Where the source holds it: a shard, and for a plain source the data offset. */
  file: string;
  offset: number;
}

export interface ConvertPlan {
  kind: 'convert';
  delta: string;
  from: DeltaFormat;
  to: DeltaFormat;
  /** Compact chunk size of the source (from compact) or of the output (to compact). */
  chunkElements: number;
  shards: ShardPlan<ConvertTensorPlan>[];
  manifest: DeltaManifest;
  hash: string;
}

/**
 * Plans a conversion between the layouts; reads the manifest and shard headers only. The values stay
 * exactly the same: to compact, each chunk is stored in the smallest dtype that holds it exactly (when the
 * delta's dtype policy was `auto`); to plain, each tensor in its widest chunk dtype.
 */
export async function prepareConvert(env: ExecEnv, deltaRef: string, opts: { to: DeltaFormat; shardSize: number; chunkElements?: number }): Promise<ConvertPlan> {
  const d = await openDelta(env.resolve, deltaRef);
  const m = d.manifest;
  if (m.layout === opts.to) throw new InputError(`${deltaRef}: is already a ${opts.to} delta`);
  const chunkElements = opts.to === 'compact' ? (opts.chunkElements ?? DEFAULT_CHUNK_ELEMENTS) : m.compact!.chunkElements;
  if (!(Number.isSafeInteger(chunkElements) && chunkElements >= 64 && (chunkElements & (chunkElements - 1)) === 0)) {
    throw new PlanError([`chunk size ${chunkElements}: must be a power of two of at least 64 elements`]);
  }
  const tensors: ConvertTensorPlan[] = d.ckpt.tensors.map((t) => {
    const e = m.tensors[t.name];
    const dtype = t.dtype as FloatDType;
    const candidates = m.dtypePolicy === 'auto' ? deltaCandidates(e.modelDtype, 'auto').filter((c) => dtypeSize(c) <= dtypeSize(dtype)) : [dtype];
    return { name: t.name, shape: t.shape, elements: t.elements, modelDtype: e.modelDtype, dtype, candidates, file: t.file, offset: t.offset };
  });
  const groups: ConvertTensorPlan[][] = [];
  let size = 0;
  for (const t of tensors) {
    const b = tensorBytes(t.shape, t.dtype);
    if (!groups.length || (groups[groups.length - 1].length && size + b > opts.shardSize)) {
      groups.push([]);
      size = 0;
    }
    groups[groups.length - 1].push(t);
    size += b;
  }
  if (!groups.length) groups.push([]);
  const compact = opts.to === 'compact';
  const shards = groups.map((g, i) => ({
    file: shardFileName(DELTA_SHARD_STEM, i, groups.length, compact ? COMPACT_EXTENSION : undefined),
    prefixLength: compact ? 0 : encodeHeader(g.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })), SHARD_METADATA).bytes.length,
    tensors: g,
    inputBytes: g.reduce((a, t) => a + tensorBytes(t.shape, t.dtype), 0),
  }));
  const plan = { kind: 'convert' as const, delta: deltaRef, from: m.layout, to: opts.to, chunkElements, shards, manifest: m };
  return { ...plan, hash: createHash('sha256').update(JSON.stringify(plan)).digest('hex') };
}

/** Writes one shard of the converted delta. */
export async function executeConvertShard(plan: ConvertPlan, index: number, env: ExecEnv, out: Store): Promise<ComputeShardResult> {
  return plan.to === 'compact' ? toCompact(plan, index, env, out) : toPlain(plan, index, env, out);
}

/** Plain → compact: each chunk narrowed (exactly) and compressed; the kernels compute x − 0, which is x. */
async function toCompact(plan: ConvertPlan, index: number, env: ExecEnv, out: Store): Promise<ComputeShardResult> {
  const shard = plan.shards[index];
  const ch = plan.chunkElements;
  const maxIn = Math.max(1, ...shard.tensors.map((t) => dtypeSize(t.dtype)));
  const buffers = compactSlots(env, maxIn, ch);
  return withBuffers(buffers.key, buffers.create, async ({ encoder, slots, chunk }) => {
    for (const s of slots) s.inputs[0].fill(0);
    const sources = new SourceCache(env.resolve);
    const state = shard.tensors.map((t) => ({ hint: t.dtype, stats: newSubtractStats() }));
    try {
      return await writeCompactShard(out, shard.file, plan.hash, ch, slots, chunk, {
        tensors: shard.tensors.map((t) => ({ name: t.name, shape: t.shape, modelDtype: t.modelDtype, emptyDtype: t.dtype, elements: t.elements })),
        read: async (t, start, n, s) => {
          const tp = shard.tensors[t];
          const size = dtypeSize(tp.dtype);
          const src = await sources.get(plan.delta, tp.file);
          await src.read(tp.offset + start * size, n * size, s.inputs[1]);
        },
        compute: (t, n, s) => {
          const tp = shard.tensors[t];
          env.onProgress?.(n * dtypeSize(tp.dtype));
          return encodeCompactChunks(encoder, t, tp.dtype, tp.candidates, n, s, state[t]);
        },
        entry: (h) => ({ ...plan.manifest.tensors[h.name], file: shard.file, dtype: h.dtype }),
      });
    } finally {
      await sources.closeAll();
    }
  });
}

/** Compact → plain: chunks decoded on codec workers and widened to the tensor's dtype (exactly: x − 0 is x). */
async function toPlain(plan: ConvertPlan, index: number, env: ExecEnv, out: Store): Promise<ComputeShardResult> {
  const shard = plan.shards[index];
  const ch = plan.chunkElements;
  const count = slotsFor(env);
  const chunk = alignedChunkElements(8 * 3 + 8, env.bufferBytes ?? DEFAULT_BUFFER_BYTES, count, ch);
  const kernels = await kernelsFor(env, count * chunk * 16 + chunk * 8);
  const zeros = kernels.alloc(chunk * 8).fill(0);
  const slots: Slot[] = Array.from({ length: count }, () => ({
    inputs: [kernels.alloc(chunk * 8)],
    out: kernels.alloc(chunk * 8),
    aux: [sharedBytes((chunk / ch) * chunkBound(ch)), sharedBytes(chunk * 8)],
  }));
  const pool = codecPool();
  const sources = new SourceCache(env.resolve);
  const compact = new CompactShards((ref, file) => sources.get(ref, file));
  const pieces = new WeakMap<Slot, Piece[]>();
  const header = encodeHeader(shard.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })), SHARD_METADATA).bytes;
  const sink = await out.createShard(shard.file, header.length, header, { metadata: outputTags('delta', plan.hash) });
  try {
    await streamTensors(
      {
        count: shard.tensors.length,
        elements: (t) => shard.tensors[t].elements,
        read: async (t, start, n, s) => {
          const tp = shard.tensors[t];
          const cs = await compact.get(plan.delta, tp.file);
          pieces.set(s, await cs.read(cs.tensor(tp.name), start, n, s.aux![0], s.aux![1], pool));
        },
        compute: (t, _start, n, s) => {
          const tp = shard.tensors[t];
          const size = dtypeSize(tp.dtype);
          const all = pieces.get(s)!;
          const last = all[all.length - 1];
          s.inputs[0].set(s.aux![1].subarray(0, last.byteOffset + last.n * dtypeSize(last.dtype)));
          for (const p of all) {
            const data = s.inputs[0].subarray(p.byteOffset, p.byteOffset + p.n * dtypeSize(p.dtype));
            const to = s.out.subarray(p.start * size, (p.start + p.n) * size);
            if (p.dtype === tp.dtype) to.set(data);
            else kernels.subtract(p.dtype, zeros, data, p.n, tp.dtype, to, newSubtractStats());
          }
          env.onProgress?.(n * size);
          return s.out.subarray(0, n * size);
        },
        write: (bytes) => sink.write(bytes),
      },
      slots,
      chunk,
    );
    const r = await sink.commit(header);
    const tensors: Record<string, DeltaTensorEntry> = {};
    for (const t of shard.tensors) {
      const { compressedBytes: _c, rawBytes: _r, ...entry } = plan.manifest.tensors[t.name];
      tensors[t.name] = { ...entry, file: shard.file };
    }
    return { file: shard.file, sha256: r.sha256!, bytes: r.bytes, tensors };
  } catch (e) {
    await sink.abort().catch(() => undefined);
    throw e;
  } finally {
    await sources.closeAll();
  }
}

/** Copies the carried chat files, writes the index (plain layout) and delta.json last. */
export async function finalizeConvert(plan: ConvertPlan, shards: ComputeShardResult[], env: ExecEnv, out: Store): Promise<DeltaManifest> {
  const source = env.resolve(plan.delta);
  for (const f of plan.manifest.files) {
    const src = await source.openRead(f.file);
    try {
      await out.writeFile(f.file, await src.read(0, src.size), { metadata: outputTags('delta') });
    } finally {
      await src.close();
    }
  }
  const { tensors, entries, total } = shardTensors(shards);
  const compact = plan.to === 'compact';
  if (!compact) await out.writeFile(DELTA_LAYOUT.index, indexJson(entries, total), { metadata: outputTags('delta') });
  const { compact: _c, index: _i, ...rest } = plan.manifest;
  const manifest: DeltaManifest = {
    ...rest,
    formatVersion: compact ? 2 : 1,
    layout: plan.to,
    ...(compact
      ? { compact: { formatVersion: COMPACT_FORMAT_VERSION, codec: CODEC, transform: TRANSFORM, chunkElements: plan.chunkElements } }
      : { index: DELTA_LAYOUT.index }),
    tool: { name: 'paramdelta', version: TOOL_VERSION },
    createdAt: new Date().toISOString(),
    shards: shards.map((s) => ({ file: s.file, sha256: s.sha256, bytes: s.bytes })),
    tensors,
  };
  await out.writeFile(DELTA_MANIFEST, JSON.stringify(manifest, null, 2) + '\n', { metadata: outputTags('delta') });
  return manifest;
}
