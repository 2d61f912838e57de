// Reads weights from checkpoint shards in bounded chunks and widens them to float32 for the kernels.
import type { Checkpoint, CheckpointTensor } from '../format/checkpoint.js';
import type { DType } from '../format/dtype.js';
import { dtypeSize } from '../format/dtype.js';
import type { ByteSource } from '../storage/types.js';
import { InputError } from '../errors.js';

/** Raw bytes read per request; the only buffer beside the float32 weights themselves. */
export const READ_CHUNK_BYTES = 8 << 20;

let f16Table: Float32Array | null = null;
/** Every binary16 value as float32 (exact); a table, since Node 22 has no Float16Array. */
function halfTable(): Float32Array {
  if (f16Table) return f16Table;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    t[h] = exp === 0 ? sign * frac * 2 ** -24 : exp === 31 ? (frac ? NaN : sign * Infinity) : sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return (f16Table = t);
}

/** Widens `count` elements of `dtype` from `raw` (at byte 0, aligned) into `out` at `at`. F64 is rounded to float32. */
export function widenToF32(dtype: DType, raw: Uint8Array, count: number, out: Float32Array, at: number): void {
  switch (dtype) {
    case 'BF16': {
      const src = new Uint16Array(raw.buffer, raw.byteOffset, count);
      const dst = new Uint32Array(out.buffer, out.byteOffset + at * 4, count);
      for (let i = 0; i < count; i++) dst[i] = src[i] << 16;
      return;
    }
    case 'F16': {
      const src = new Uint16Array(raw.buffer, raw.byteOffset, count);
      const t = halfTable();
      for (let i = 0; i < count; i++) out[at + i] = t[src[i]];
      return;
    }
    case 'F32':
      out.set(new Float32Array(raw.buffer, raw.byteOffset, count), at);
      return;
    case 'F64':
      out.set(new Float64Array(raw.buffer, raw.byteOffset, count), at);
      return;
    default:
      throw new InputError(`cannot widen ${dtype} to float32`);
  }
}

/** Reads tensors (or row ranges of them) of one checkpoint as float32, holding each shard open once. */
export class WeightReader {
  private readonly sources = new Map<string, Promise<ByteSource>>();
  private raw = new Uint8Array(0);

  constructor(private readonly ck: Checkpoint, private readonly onBytes?: (n: number) => void) {}

  private source(file: string): Promise<ByteSource> {
    let s = this.sources.get(file);
    if (!s) {
      s = this.ck.store.openRead(file);
      this.sources.set(file, s);
    }
    return s;
  }

  /** Rows [row0, row0 + rows) of a tensor whose first dimension counts rows, into `out` at `at`. */
  async readRows(t: CheckpointTensor, row0: number, rows: number, out: Float32Array, at = 0): Promise<void> {
    const size = dtypeSize(t.dtype);
    const rowElems = t.shape.length === 0 ? 1 : t.elements / t.shape[0];
    const total = rows * rowElems;
    if (row0 < 0 || rows < 0 || (t.shape.length > 0 && row0 + rows > t.shape[0])) throw new RangeError(`${t.name}: rows ${row0}+${rows} out of range`);
    if (at + total > out.length) throw new RangeError(`${t.name}: ${total} elements do not fit at ${at}`);
    const src = await this.source(t.file);
    // Whole elements per request, and at least one.
    const perChunk = Math.max(1, Math.floor(READ_CHUNK_BYTES / size));
    if (this.raw.length < Math.min(total, perChunk) * size) this.raw = new Uint8Array(Math.min(total, perChunk) * size);
    for (let done = 0; done < total; ) {
      const n = Math.min(perChunk, total - done);
      const bytes = await src.read(t.offset + (row0 * rowElems + done) * size, n * size, this.raw);
      widenToF32(t.dtype, bytes, n, out, at + done);
      this.onBytes?.(n * size);
      done += n;
    }
  }

  readTensor(t: CheckpointTensor, out: Float32Array, at = 0): Promise<void> {
    return this.readRows(t, 0, t.shape.length === 0 ? 1 : t.shape[0], out, at);
  }

  /** Raw chunk bytes can be dropped between phases. */
  release(): void {
    this.raw = new Uint8Array(0);
  }

  async close(): Promise<void> {
    const all = [...this.sources.values()];
    this.sources.clear();
    for (const s of all) await (await s).close();
  }
}
