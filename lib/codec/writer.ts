import { dtypeSize, type FloatDType } from '../format/dtype.js';
import type { ShardSink, Store } from '../storage/types.js';
import {
  CODEC, COMPACT_FORMAT, COMPACT_FORMAT_VERSION, COMPACT_MAGIC, TRANSFORM, encodeTrailer, widest,
  type CompactChunk, type CompactShardHeader, type CompactTensorHeader,
} from './format.js';

export interface CompactTensorSpec {
  name: string;
  shape: number[];
  modelDtype: FloatDType;
  /** The dtype recorded for a tensor with no elements (default: the model's). */
  emptyDtype?: FloatDType;
}

/**
 * Writes one compact shard front to back: the magic, each tensor's chunks in order (each chunk's byte-plane
 * frames back to back), then the header with every chunk table and the trailer. Nothing needs a reserved
 * prefix, so the sink hashes the shard while it streams.
 */
export class CompactShardWriter {
  private offset = COMPACT_MAGIC.length;
  private readonly pending: Promise<void>[] = [];
  private readonly tables: { chunks: CompactChunk[]; raw: number; stored: number }[];

  private constructor(
    private readonly sink: ShardSink,
    private readonly tensors: CompactTensorSpec[],
    private readonly chunkElements: number,
  ) {
    this.tables = tensors.map(() => ({ chunks: [], raw: 0, stored: 0 }));
  }

  static async create(
    out: Store,
    file: string,
    tensors: CompactTensorSpec[],
    chunkElements: number,
    metadata?: Record<string, string>,
  ): Promise<CompactShardWriter> {
    const sink = await out.createShard(file, 0, new Uint8Array(0), { metadata });
    const w = new CompactShardWriter(sink, tensors, chunkElements);
    const start = sink.write(new Uint8Array(COMPACT_MAGIC));
    start.catch(() => undefined); // settles with the next write or the commit
    w.pending.push(start);
    return w;
  }

  get name(): string {
    return this.sink.name;
  }

  /**
   * Appends tensor t's next chunk (n elements in `dtype`, frames of the given lengths). Calls must come in
   * file order: the offset is taken when called. The caller keeps `frames` untouched until this settles.
   */
  addChunk(t: number, dtype: FloatDType, n: number, frames: Uint8Array, lengths: number[]): Promise<void> {
    const total = lengths.reduce((a, b) => a + b, 0);
    const table = this.tables[t];
    table.chunks.push([dtype, this.offset, lengths]);
    table.raw += n * dtypeSize(dtype);
    table.stored += total;
    this.offset += total;
    return this.sink.write(frames.subarray(0, total));
  }

  /** The header as written so far: every tensor's chunk table and sizes. */
  header(): CompactShardHeader {
    const tensors: CompactTensorHeader[] = this.tensors.map((t, i) => ({
      name: t.name,
      shape: t.shape,
      modelDtype: t.modelDtype,
      dtype: widest(this.tables[i].chunks.map((c) => c[0]), t.emptyDtype ?? t.modelDtype),
      rawBytes: this.tables[i].raw,
      compressedBytes: this.tables[i].stored,
      chunks: this.tables[i].chunks,
    }));
    return { format: COMPACT_FORMAT, formatVersion: COMPACT_FORMAT_VERSION, codec: CODEC, transform: TRANSFORM, chunkElements: this.chunkElements, tensors };
  }

  /** Writes the header and trailer and makes the shard visible; returns its size and sha256. */
  async commit(): Promise<{ sha256: string; bytes: number; header: CompactShardHeader }> {
    await Promise.all(this.pending);
    const header = this.header();
    const text = Buffer.from(JSON.stringify(header), 'utf8');
    await this.sink.write(text);
    await this.sink.write(encodeTrailer(this.offset, text.length));
    const r = await this.sink.commit(new Uint8Array(0));
    return { sha256: r.sha256!, bytes: r.bytes, header };
  }

  abort(): Promise<void> {
    return this.sink.abort();
  }
}
