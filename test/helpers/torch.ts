// Writes PyTorch checkpoints the way torch.save does (zip of data.pkl + data/<key> records, each record's
// data 64-byte aligned by an "FB" extra field, sizes in data descriptors, pickle protocol 2), so tests can
// make .bin twins of any safetensors fixture. Written from the format, independently of lib/format.
import { crc32, deflateRawSync } from 'node:zlib';

/** Builds pickle bytes opcode by opcode (protocol 2 opcodes, plus whatever a test needs to be refused). */
export class PickleWriter {
  private readonly out: number[] = [];

  raw(...bytes: number[]): this {
    this.out.push(...bytes);
    return this;
  }
  op(ch: string): this {
    return this.raw(ch.charCodeAt(0));
  }
  proto(v = 2): this {
    return this.raw(0x80, v);
  }
  stop(): this {
    return this.op('.');
  }
  mark(): this {
    return this.op('(');
  }
  global(module: string, name: string): this {
    return this.op('c').text(`${module}\n${name}\n`);
  }
  /** Raw text bytes (no opcode). */
  text(s: string): this {
    return this.raw(...new TextEncoder().encode(s));
  }
  unicode(s: string): this {
    const b = new TextEncoder().encode(s);
    return this.op('X').u32(b.length).raw(...b);
  }
  int(n: number): this {
    if (n >= 0 && n < 256) return this.raw(0x4b, n);
    if (n >= 0 && n < 65536) return this.raw(0x4d, n & 255, n >> 8);
    if (n >= -(2 ** 31) && n < 2 ** 31) return this.op('J').u32(n >>> 0);
    // LONG1: little-endian two's complement, 8 bytes is plenty here.
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigInt64(0, BigInt(n), true);
    return this.raw(0x8a, 8, ...b);
  }
  u32(n: number): this {
    return this.raw(n & 255, (n >>> 8) & 255, (n >>> 16) & 255, (n >>> 24) & 255);
  }
  tuple(items: (() => void)[]): this {
    if (items.length === 0) return this.op(')');
    if (items.length <= 3) {
      items.forEach((f) => f());
      return this.raw(0x84 + items.length);
    }
    this.mark();
    items.forEach((f) => f());
    return this.op('t');
  }
  intTuple(ns: readonly number[]): this {
    return this.tuple(ns.map((n) => () => this.int(n)));
  }
  put(i: number): this {
    return this.raw(0x71, i);
  }
  get(i: number): this {
    return this.raw(0x68, i);
  }
  bytes(): Uint8Array {
    return Uint8Array.from(this.out);
  }
}

const STORAGE_CLASS: Record<string, string> = {
  F32: 'FloatStorage', F16: 'HalfStorage', BF16: 'BFloat16Storage', F64: 'DoubleStorage', I32: 'IntStorage',
  I64: 'LongStorage', I16: 'ShortStorage', I8: 'CharStorage', U8: 'ByteStorage', BOOL: 'BoolStorage',
};
const V3_DTYPE: Record<string, string> = { U16: 'uint16', U32: 'uint32', U64: 'uint64', F8_E5M2: 'float8_e5m2', F8_E4M3: 'float8_e4m3fn' };
const SIZE: Record<string, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I32: 4, I64: 8, I16: 2, I8: 1, U8: 1, BOOL: 1, U16: 2, U32: 4, U64: 8, F8_E5M2: 1, F8_E4M3: 1 };

export interface TorchTensorSpec {
  name: string;
  dtype: string;
  shape: number[];
  /** The tensor's own bytes; omitted when it views another tensor's storage (`share`). */
  bytes?: Uint8Array;
  /** Name of an earlier tensor whose storage this one views (tied weights, fused buffers). */
  share?: string;
  /** In elements, within the storage. */
  storageOffset?: number;
  stride?: number[];
}

export interface TorchSaveOptions {
  /** The folder inside the zip: torch ≥ 2 writes "archive", older torch the file's stem. */
  archive?: string;
  /** Records newer torch adds: .format_version, .storage_alignment, byteorder, .data/serialization_id. */
  current?: boolean;
  zip64?: boolean;
  /** A state_dict() (OrderedDict with _metadata) rather than a plain dict. */
  ordered?: boolean;
  /** Compress the storage records (torch never does; for refusal tests). */
  deflateStorages?: boolean;
  byteorder?: string;
}

const contiguous = (shape: number[]) => shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));

/** The data.pkl and storage records torch.save would write for these tensors. */
export function torchPickle(tensors: TorchTensorSpec[], ordered = true): { pickle: Uint8Array; storages: Map<string, Uint8Array> } {
  const storages = new Map<string, Uint8Array>();
  const storageOf = new Map<string, { key: string; dtype: string; numel: number }>();
  const p = new PickleWriter().proto(2);
  if (ordered) p.global('collections', 'OrderedDict').put(0).op(')').op('R');
  else p.op('}');
  p.mark();
  let rebuildMemo = false;
  for (const t of tensors) {
    let s = t.share === undefined ? undefined : storageOf.get(t.share);
    if (t.share !== undefined && !s) throw new Error(`no tensor ${t.share} to share`);
    if (!s) {
      s = { key: String(storages.size), dtype: t.dtype, numel: t.bytes!.length / SIZE[t.dtype] };
      storages.set(s.key, t.bytes!);
    }
    storageOf.set(t.name, s);
    const v3 = V3_DTYPE[t.dtype] !== undefined;
    p.unicode(t.name);
    if (v3) p.global('torch._utils', '_rebuild_tensor_v3');
    else if (rebuildMemo) p.get(1);
    else {
      p.global('torch._utils', '_rebuild_tensor_v2').put(1);
      rebuildMemo = true;
    }
    p.mark();
    p.mark().unicode('storage');
    if (v3) p.global('torch', 'UntypedStorage').unicode(s.key).unicode('cpu').int(s.numel * SIZE[s.dtype]);
    else p.global('torch', STORAGE_CLASS[s.dtype]).unicode(s.key).unicode('cpu').int(s.numel);
    p.op('t').op('Q');
    p.int(t.storageOffset ?? 0).intTuple(t.shape).intTuple(t.stride ?? contiguous(t.shape)).op('\x89');
    p.global('collections', 'OrderedDict').op(')').op('R');
    if (v3) p.global('torch', V3_DTYPE[t.dtype]);
    p.op('t').op('R');
  }
  p.op('u');
  if (ordered) p.op('}').unicode('_metadata').get(0).op(')').op('R').mark().unicode('').op('}').unicode('version').int(1).op('s').op('u').op('s').op('b');
  return { pickle: p.stop().bytes(), storages };
}

export interface ZipRecord {
  name: string;
  data: Uint8Array;
  /** 0 stored (default), 8 deflated. */
  method?: number;
}

/** A zip as PyTorchStreamWriter lays it out: data aligned to 64 via an "FB" extra, sizes in data descriptors. */
export function zipArchive(records: ZipRecord[], opts: { zip64?: boolean; align?: number } = {}): Uint8Array {
  const align = opts.align ?? 64;
  const parts: Uint8Array[] = [];
  let pos = 0;
  const push = (b: Uint8Array) => {
    parts.push(b);
    pos += b.length;
  };
  const central: Uint8Array[] = [];
  const enc = new TextEncoder();
  for (const r of records) {
    const name = enc.encode(r.name);
    const method = r.method ?? 0;
    const body = method === 8 ? new Uint8Array(deflateRawSync(r.data)) : r.data;
    const crc = crc32(r.data) >>> 0;
    const lho = pos;
    const base = lho + 30 + name.length;
    const pad = (align - ((base + 4) % align)) % align;
    const extra = new Uint8Array(4 + pad);
    const ev = new DataView(extra.buffer);
    ev.setUint16(0, 0x4246, true); // "FB"
    ev.setUint16(2, pad, true);
    extra.fill(0x5a, 4); // 'Z'
    const lh = new Uint8Array(30 + name.length);
    const lv = new DataView(lh.buffer);
    lv.setUint32(0, 0x04034b50, true);
    lv.setUint16(4, opts.zip64 ? 45 : 20, true);
    lv.setUint16(6, 0x0808, true);
    lv.setUint16(8, method, true);
    lv.setUint16(26, name.length, true);
    lv.setUint16(28, extra.length, true);
    lh.set(name, 30);
    push(lh);
    push(extra);
    push(body);
    const dd = new Uint8Array(opts.zip64 ? 24 : 16);
    const dv = new DataView(dd.buffer);
    dv.setUint32(0, 0x08074b50, true);
    dv.setUint32(4, crc, true);
    if (opts.zip64) {
      dv.setBigUint64(8, BigInt(body.length), true);
      dv.setBigUint64(16, BigInt(r.data.length), true);
    } else {
      dv.setUint32(8, body.length, true);
      dv.setUint32(12, r.data.length, true);
    }
    push(dd);
    const z64 = opts.zip64 ? new Uint8Array(4 + 24) : new Uint8Array(0);
    if (opts.zip64) {
      const zv = new DataView(z64.buffer);
      zv.setUint16(0, 1, true);
      zv.setUint16(2, 24, true);
      zv.setBigUint64(4, BigInt(r.data.length), true);
      zv.setBigUint64(12, BigInt(body.length), true);
      zv.setBigUint64(20, BigInt(lho), true);
    }
    const ch = new Uint8Array(46 + name.length + z64.length);
    const cv = new DataView(ch.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint16(4, 0x031e, true);
    cv.setUint16(6, opts.zip64 ? 45 : 20, true);
    cv.setUint16(8, 0x0808, true);
    cv.setUint16(10, method, true);
    cv.setUint32(16, crc, true);
    cv.setUint32(20, opts.zip64 ? 0xffffffff : body.length, true);
    cv.setUint32(24, opts.zip64 ? 0xffffffff : r.data.length, true);
    cv.setUint16(28, name.length, true);
    cv.setUint16(30, z64.length, true);
    cv.setUint32(42, opts.zip64 ? 0xffffffff : lho, true);
    ch.set(name, 46);
    ch.set(z64, 46 + name.length);
    central.push(ch);
  }
  const cdOffset = pos;
  for (const c of central) push(c);
  const cdSize = pos - cdOffset;
  if (opts.zip64) {
    const z = new Uint8Array(56);
    const zv = new DataView(z.buffer);
    zv.setUint32(0, 0x06064b50, true);
    zv.setBigUint64(4, 44n, true);
    zv.setUint16(12, 45, true);
    zv.setUint16(14, 45, true);
    zv.setBigUint64(24, BigInt(records.length), true);
    zv.setBigUint64(32, BigInt(records.length), true);
    zv.setBigUint64(40, BigInt(cdSize), true);
    zv.setBigUint64(48, BigInt(cdOffset), true);
    const zAt = pos;
    push(z);
    const loc = new Uint8Array(20);
    const lv = new DataView(loc.buffer);
    lv.setUint32(0, 0x07064b50, true);
    lv.setBigUint64(8, BigInt(zAt), true);
    lv.setUint32(16, 1, true);
    push(loc);
  }
  const e = new Uint8Array(22);
  const ev = new DataView(e.buffer);
  ev.setUint32(0, 0x06054b50, true);
  ev.setUint16(8, opts.zip64 ? 0xffff : records.length, true);
  ev.setUint16(10, opts.zip64 ? 0xffff : records.length, true);
  ev.setUint32(12, opts.zip64 ? 0xffffffff : cdSize, true);
  ev.setUint32(16, opts.zip64 ? 0xffffffff : cdOffset, true);
  push(e);
  const out = new Uint8Array(pos);
  let at = 0;
  for (const b of parts) {
    out.set(b, at);
    at += b.length;
  }
  return out;
}

/** A whole torch.save file for these tensors. */
export function torchSave(tensors: TorchTensorSpec[], opts: TorchSaveOptions = {}): Uint8Array {
  const a = opts.archive ?? 'archive';
  const { pickle, storages } = torchPickle(tensors, opts.ordered ?? true);
  const text = (s: string) => new TextEncoder().encode(s);
  const records: ZipRecord[] = [{ name: `${a}/data.pkl`, data: pickle }];
  if (opts.current ?? true) {
    records.push({ name: `${a}/.format_version`, data: text('1') });
    records.push({ name: `${a}/.storage_alignment`, data: text('64') });
    records.push({ name: `${a}/byteorder`, data: text(opts.byteorder ?? 'little') });
  }
  // torch writes storages in sorted key order: "0", "1", "10", "11", ..., "2".
  for (const key of [...storages.keys()].sort()) {
    records.push({ name: `${a}/data/${key}`, data: storages.get(key)!, method: opts.deflateStorages ? 8 : 0 });
  }
  records.push({ name: `${a}/version`, data: text('3\n') });
  if (opts.current ?? true) records.push({ name: `${a}/.data/serialization_id`, data: text('1234567890123456789012345678901234567890') });
  return zipArchive(records, { zip64: opts.zip64 });
}
