// The compact shard format (docs/compact-format.md): a leading magic, zstd frames, a JSON header with
// every tensor's chunk table, and a fixed trailer that locates the header.
import { z } from 'zod';
import { dtypeSize, FLOAT_DTYPES, type FloatDType } from '../format/dtype.js';
import { InputError } from '../errors.js';
import { frameBound, ZSTD_INFO, ZSTD_LEVEL } from './chunk.js';

export const COMPACT_MAGIC = Buffer.from('PDCOMPCT', 'ascii');
export const COMPACT_FORMAT = 'paramdelta.compact';
export const COMPACT_FORMAT_VERSION = 1;
/** Shard files are `delta-00001-of-0000N.pdelta`. */
export const COMPACT_EXTENSION = '.pdelta';
/** u64 header offset, u64 header length, the magic again. */
export const TRAILER_BYTES = 24;
/** A header is about 100 bytes per chunk; anything far larger is damage, not a header to read into memory. */
export const MAX_HEADER_BYTES = 64 << 20;
/** Elements per chunk: at most 4 MiB even as F64; a power of two so chunk grids of several deltas nest. */
export const DEFAULT_CHUNK_ELEMENTS = 1 << 19;
export const TRANSFORM = 'byteplanes';

const floatDType = z.enum(FLOAT_DTYPES);
/** [dtype, offset of the first frame, [length of each byte plane's frame]] */
const chunkSchema = z.tuple([floatDType, z.number().int().nonnegative(), z.array(z.number().int().nonnegative())]);

const tensorSchema = z.object({
  name: z.string(),
  shape: z.array(z.number().int().nonnegative()),
  modelDtype: floatDType,
  /** The widest chunk dtype: what the plain layout stores for this tensor. */
  dtype: floatDType,
  rawBytes: z.number().int().nonnegative(),
  compressedBytes: z.number().int().nonnegative(),
  chunks: z.array(chunkSchema),
});

export const codecSchema = z.object({
  name: z.literal('zstd'),
  level: z.number().int(),
  parameters: z.record(z.string(), z.number()).optional(),
});

export const shardHeaderSchema = z.object({
  format: z.literal(COMPACT_FORMAT),
  formatVersion: z.literal(COMPACT_FORMAT_VERSION),
  codec: codecSchema,
  transform: z.literal(TRANSFORM),
  chunkElements: z.number().int().positive().refine((n) => (n & (n - 1)) === 0 && n <= 1 << 24, 'must be a power of two up to 2^24'),
  tensors: z.array(tensorSchema),
});

export type CompactShardHeader = z.infer<typeof shardHeaderSchema>;
export type CompactTensorHeader = z.infer<typeof tensorSchema>;
export type CompactChunk = z.infer<typeof chunkSchema>;
export type CodecInfo = z.infer<typeof codecSchema>;

export const CODEC: CodecInfo = { name: 'zstd', level: ZSTD_LEVEL, parameters: { ...ZSTD_INFO } };

export function elementsOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Elements of chunk c of a tensor of `elements`. */
export function chunkLength(elements: number, chunkElements: number, c: number): number {
  return Math.min(chunkElements, elements - c * chunkElements);
}

/** Widest of the dtypes (by element size); `fallback` when there are none. */
export function widest(dtypes: Iterable<FloatDType>, fallback: FloatDType): FloatDType {
  let w = fallback;
  let first = true;
  for (const d of dtypes) {
    if (first || dtypeSize(d) > dtypeSize(w)) w = d;
    first = false;
  }
  return w;
}

/** Most bytes a chunk of n elements of up to 8 bytes can take once encoded. */
export function chunkBound(n: number, maxSize = 8): number {
  return maxSize * frameBound(n);
}

export function encodeTrailer(headerOffset: number, headerLength: number): Uint8Array {
  const b = Buffer.alloc(TRAILER_BYTES);
  b.writeBigUInt64LE(BigInt(headerOffset), 0);
  b.writeBigUInt64LE(BigInt(headerLength), 8);
  COMPACT_MAGIC.copy(b, 16);
  return b;
}

/** Reads the trailer: where the header is. `where` names the shard for errors. */
export function parseTrailer(trailer: Uint8Array, fileSize: number, where: string): { offset: number; length: number } {
  const b = Buffer.from(trailer.buffer, trailer.byteOffset, trailer.length);
  if (b.length !== TRAILER_BYTES || !b.subarray(16).equals(COMPACT_MAGIC)) {
    throw new InputError(`${where}: not a compact delta shard (no ${COMPACT_MAGIC.toString('ascii')} trailer); the file is truncated or corrupt`);
  }
  const offset = Number(b.readBigUInt64LE(0));
  const length = Number(b.readBigUInt64LE(8));
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < COMPACT_MAGIC.length || offset + length + TRAILER_BYTES !== fileSize) {
    throw new InputError(`${where}: trailer places the header at ${offset} (+${length} bytes), which does not end where the ${fileSize}-byte file does`);
  }
  if (length > MAX_HEADER_BYTES) throw new InputError(`${where}: header of ${length} bytes is larger than any shard needs (${MAX_HEADER_BYTES}); the file is corrupt`);
  return { offset, length };
}

/**
 * Parses and checks a shard header: every chunk lies inside the frame area and within zstd's bound for
 * its size, chunk counts and sizes agree with the shapes, and the recorded sizes add up. Anything else is
 * an InputError naming the shard, the tensor and the chunk.
 */
export function parseShardHeader(text: string, headerOffset: number, where: string): CompactShardHeader {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new InputError(`${where}: header is not valid JSON (${(e as Error).message})`);
  }
  const r = shardHeaderSchema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new InputError(`${where}: header field "${issue.path.join('.')}": ${issue.message}`);
  }
  const h = r.data;
  const seen = new Set<string>();
  for (const t of h.tensors) {
    const at = `${where}: tensor "${t.name}"`;
    if (seen.has(t.name)) throw new InputError(`${at} appears twice`);
    seen.add(t.name);
    const elements = elementsOf(t.shape);
    const count = Math.ceil(elements / h.chunkElements);
    if (t.chunks.length !== count) throw new InputError(`${at}: ${t.chunks.length} chunks, but its shape needs ${count}`);
    let raw = 0;
    let stored = 0;
    t.chunks.forEach(([dtype, offset, lengths], c) => {
      const n = chunkLength(elements, h.chunkElements, c);
      const size = dtypeSize(dtype);
      const end = offset + lengths.reduce((a, b) => a + b, 0);
      const chunk = `${at}, chunk ${c} (elements ${c * h.chunkElements}–${c * h.chunkElements + n - 1})`;
      if (lengths.length !== size) throw new InputError(`${chunk}: ${lengths.length} frames for ${dtype}, which has ${size} byte planes`);
      if (offset < COMPACT_MAGIC.length || end > headerOffset) {
        throw new InputError(`${chunk}: the chunk table points at bytes ${offset}–${end}, outside the frame area (${COMPACT_MAGIC.length}–${headerOffset})`);
      }
      if (lengths.some((l) => l > frameBound(n))) throw new InputError(`${chunk}: a frame is longer than zstd's bound for ${n} bytes`);
      raw += n * size;
      stored += end - offset;
    });
    if (t.rawBytes !== raw || t.compressedBytes !== stored) {
      throw new InputError(`${at}: recorded sizes (${t.rawBytes} raw, ${t.compressedBytes} compressed) differ from its chunks (${raw}, ${stored})`);
    }
    const w = widest(t.chunks.map((c) => c[0]), t.modelDtype);
    if (t.chunks.length && t.dtype !== w) throw new InputError(`${at}: dtype ${t.dtype}, but its widest chunk is ${w}`);
  }
  return h;
}
