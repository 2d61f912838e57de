import { dtypeSize, type FloatDType } from '../format/dtype.js';
import type { ByteSource } from '../storage/types.js';
import { InputError } from '../errors.js';
import {
  COMPACT_MAGIC, TRAILER_BYTES, chunkLength, elementsOf, parseShardHeader, parseTrailer,
  type CompactShardHeader, type CompactTensorHeader,
} from './format.js';
import { ChunkDecodeError, type CodecPool } from './pool.js';

export interface CompactTensor extends CompactTensorHeader {
  elements: number;
}

/** Part of a decoded element range that one chunk fills: its elements, relative to the range, and where its bytes went. */
export interface Piece {
  /** First element, relative to the start of the range. */
  start: number;
  n: number;
  dtype: FloatDType;
  /** Byte offset in the destination: chunks are packed one after another, each in its own dtype. */
  byteOffset: number;
}

/** An opened compact shard: its header and chunk tables, read with two ranged reads (trailer, then header). */
export class CompactShard {
  readonly tensors: Map<string, CompactTensor>;

  private constructor(
    readonly source: ByteSource,
    readonly header: CompactShardHeader,
  ) {
    this.tensors = new Map(header.tensors.map((t) => [t.name, { ...t, elements: elementsOf(t.shape) }]));
  }

  static async open(src: ByteSource): Promise<CompactShard> {
    if (src.size < COMPACT_MAGIC.length + TRAILER_BYTES) {
      throw new InputError(`${src.name}: ${src.size} bytes is too short for a compact delta shard; the file is truncated`);
    }
    const { offset, length } = parseTrailer(await src.read(src.size - TRAILER_BYTES, TRAILER_BYTES), src.size, src.name);
    const text = Buffer.from(await src.read(offset, length)).toString('utf8');
    return new CompactShard(src, parseShardHeader(text, offset, src.name));
  }

  get chunkElements(): number {
    return this.header.chunkElements;
  }

  tensor(name: string): CompactTensor {
    const t = this.tensors.get(name);
    if (!t) throw new InputError(`${this.source.name}: has no tensor "${name}"`);
    return t;
  }

  /** How elements [start, start+n) of a tensor are laid out once decoded; `start` must be on a chunk boundary. */
  pieces(t: CompactTensor, start: number, n: number): Piece[] {
    const ch = this.chunkElements;
    if (start % ch !== 0) throw new RangeError(`${this.source.name}: range starts at ${start}, not on a ${ch}-element chunk boundary`);
    const pieces: Piece[] = [];
    let byteOffset = 0;
    for (let c = start / ch; c * ch < start + n; c++) {
      const len = Math.min(chunkLength(t.elements, ch, c), start + n - c * ch);
      if (len !== chunkLength(t.elements, ch, c)) throw new RangeError(`${this.source.name}: range ends inside chunk ${c} of "${t.name}"`);
      const dtype = t.chunks[c][0];
      pieces.push({ start: c * ch - start, n: len, dtype, byteOffset });
      byteOffset += len * dtypeSize(dtype);
    }
    return pieces;
  }

  /** Bytes of the frames of chunks [first, last]. */
  private span(t: CompactTensor, first: number, last: number): { from: number; to: number; contiguous: boolean } {
    let contiguous = true;
    const endOf = (c: number) => t.chunks[c][1] + t.chunks[c][2].reduce((a, b) => a + b, 0);
    for (let c = first + 1; c <= last; c++) if (t.chunks[c][1] !== endOf(c - 1)) contiguous = false;
    return { from: t.chunks[first][1], to: endOf(last), contiguous };
  }

  /**
   * Decodes elements [start, start+n) of a tensor into `dest`, packed chunk by chunk (see pieces), reading
   * only those chunks' frames: one ranged read into `compressed` when they are contiguous (as written).
   */
  async read(t: CompactTensor, start: number, n: number, compressed: Uint8Array, dest: Uint8Array, pool: CodecPool): Promise<Piece[]> {
    const pieces = this.pieces(t, start, n);
    if (!pieces.length) return pieces;
    const end = pieces[pieces.length - 1];
    if (end.byteOffset + end.n * dtypeSize(end.dtype) > dest.length) throw new RangeError(`${this.source.name}: "${t.name}" decodes to more than the ${dest.length}-byte buffer`);
    const first = start / this.chunkElements;
    const last = first + pieces.length - 1;
    const { from, to, contiguous } = this.span(t, first, last);
    // Where each chunk's frames start in `compressed` (a source may return its bytes elsewhere: copied in).
    const frames: number[] = [];
    if (contiguous) {
      if (to - from > compressed.length) throw new RangeError(`${this.source.name}: ${to - from} bytes of frames exceed the ${compressed.length}-byte buffer`);
      const got = await this.source.read(from, to - from, compressed);
      if (got.buffer !== compressed.buffer || got.byteOffset !== compressed.byteOffset) compressed.set(got);
      for (let c = first; c <= last; c++) frames.push(t.chunks[c][1] - from);
    } else {
      let at = 0;
      for (let c = first; c <= last; c++) {
        const len = t.chunks[c][2].reduce((a, b) => a + b, 0);
        if (at + len > compressed.length) throw new RangeError(`${this.source.name}: chunk frames exceed the ${compressed.length}-byte buffer`);
        const into = compressed.subarray(at, at + len);
        const got = await this.source.read(t.chunks[c][1], len, into);
        if (got.buffer !== into.buffer || got.byteOffset !== into.byteOffset) into.set(got);
        frames.push(at);
        at += len;
      }
    }
    // One job per codec worker for the whole range, not one per chunk: frames all lie in `compressed`.
    const jobs = pieces.map((p, i): [number, number[], number, number, number] => [
      frames[i], t.chunks[first + i][2], p.n, dtypeSize(p.dtype), p.byteOffset,
    ]);
    try {
      await pool.decodeMany(compressed, dest, jobs);
    } catch (e) {
      if (!(e instanceof ChunkDecodeError)) throw e;
      const c = first + (e.chunk ?? 0);
      const at = c * this.chunkElements;
      throw new InputError(
        `${this.source.name}: tensor "${t.name}", chunk ${c} (elements ${at}–${at + pieces[c - first].n - 1}): corrupt data, ${e.message}; the delta shard is damaged, fetch or compute it again`,
      );
    }
    return pieces;
  }
}

/** Opens each compact shard of a run once (its trailer and header), through the run's open sources. */
export class CompactShards {
  private readonly open = new Map<string, Promise<CompactShard>>();
  constructor(private readonly source: (ref: string, file: string) => Promise<ByteSource>) {}

  get(ref: string, file: string): Promise<CompactShard> {
    const key = `${ref}\u0000${file}`;
    let s = this.open.get(key);
    if (!s) {
      s = this.source(ref, file).then((src) => CompactShard.open(src));
      s.catch(() => this.open.delete(key));
      this.open.set(key, s);
    }
    return s;
  }
}
