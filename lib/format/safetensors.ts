// The safetensors format: an 8-byte little-endian u64 N, N bytes of JSON header, then the data area.
import { type DType, isDType, dtypeSize } from './dtype.js';
import type { ByteSource } from '../storage/types.js';

export const MAX_HEADER_LENGTH = 100_000_000;
/**
 * A header nests three levels (the object, a tensor entry, its shape and offsets). Anything much deeper
 * is refused before JSON.parse, whose time and memory per byte grow with nesting (a few megabytes of
 * brackets took seconds), and so that no message built from a parsed value can recurse too deep.
 */
export const MAX_HEADER_DEPTH = 64;

export class SafetensorsError extends Error {
  constructor(
    readonly file: string,
    readonly rule: string,
    detail: string,
    readonly tensor?: string,
  ) {
    super(`${file}: ${tensor === undefined ? '' : `tensor ${shown(tensor)}: `}${detail} [rule: ${rule}]`);
    this.name = 'SafetensorsError';
  }
}

export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** Byte offsets relative to the data area (the header's data_offsets). */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  file: string;
  fileSize: number;
  headerLength: number;
  dataStart: number;
  metadata: Record<string, string> | null;
  /** Sorted by (begin, end), stably, so zero-size tensors at one offset keep their JSON order. */
  tensors: TensorInfo[];
  byName: Map<string, TensorInfo>;
}

/** A header value quoted in a message, cut short: values can be megabytes long. */
function shown(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 120 ? `${s.slice(0, 120)}…` : s;
}

/**
 * Whether brackets outside strings nest deeper than `max`. Runs before JSON.parse, so on any text;
 * hand-written because JSON.parse has no depth limit.
 */
function nestsDeeperThan(t: string, max: number): boolean {
  let depth = 0;
  for (let i = 0; i < t.length; i++) {
    const c = t.charCodeAt(i);
    if (c === 0x22) {
      for (i++; i < t.length && t.charCodeAt(i) !== 0x22; i++) if (t.charCodeAt(i) === 0x5c) i++;
    } else if (c === 0x7b || c === 0x5b) {
      if (++depth > max) return true;
    } else if (c === 0x7d || c === 0x5d) depth--;
  }
  return false;
}

const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

export function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!isCount(d)) throw new RangeError(`invalid dimension ${d}`);
    n *= d; // exact whenever the true product is safe; a larger one rounds to ≥ 2^53
    if (n > Number.MAX_SAFE_INTEGER) throw new RangeError(`element count of [${shape}] exceeds 2^53-1`);
  }
  return n;
}

function byteLength(shape: readonly number[], dtype: DType): number {
  const n = elementCount(shape) * dtypeSize(dtype);
  if (n > Number.MAX_SAFE_INTEGER) throw new RangeError(`byte length of [${shape}] ${dtype} exceeds 2^53-1`);
  return n;
}

const isWs = (c: string | undefined) => c === ' ' || c === '\t' || c === '\n' || c === '\r';
function skipWs(t: string, i: number): number {
  while (isWs(t[i])) i++;
  return i;
}

/**
 * Keys of the JSON object at t[i] === '{' in text order, duplicates kept, with where each value starts.
 * Hand-written because JSON.parse silently keeps only the last duplicate; only run on text JSON.parse accepted.
 */
function objectKeys(t: string, i: number): { key: string; at: number }[] {
  const keys: { key: string; at: number }[] = [];
  for (let depth = 0; i < t.length; i++) {
    const c = t[i];
    if (c === '"') {
      let j = i + 1;
      while (j < t.length && t[j] !== '"') j += t[j] === '\\' ? 2 : 1;
      const colon = skipWs(t, j + 1);
      if (depth === 1 && t[colon] === ':') keys.push({ key: JSON.parse(t.slice(i, j + 1)), at: skipWs(t, colon + 1) });
      i = j;
    } else if (c === '{' || c === '[') depth++;
    else if ((c === '}' || c === ']') && --depth === 0) break;
  }
  return keys;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

export function parseHeader(file: string, headerJson: Uint8Array, fileSize: number): SafetensorsHeader {
  function fail(rule: string, detail: string, tensor?: string): never {
    throw new SafetensorsError(file, rule, detail, tensor);
  }
  const headerLength = headerJson.length;
  const dataStart = 8 + headerLength;
  if (dataStart > fileSize) fail('header-past-eof', `header of ${headerLength} bytes runs past the end of a ${fileSize}-byte file`);

  let text = '';
  try {
    // ignoreBOM keeps a BOM in the text, so JSON.parse rejects it instead of it vanishing silently.
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(headerJson);
  } catch {
    fail('header-utf8', 'header is not valid UTF-8');
  }
  if (nestsDeeperThan(text, MAX_HEADER_DEPTH)) fail('header-depth', `header JSON nests deeper than ${MAX_HEADER_DEPTH} levels`);
  let root: unknown;
  try {
    root = JSON.parse(text);
  } catch (e) {
    fail('header-json', `header is not valid JSON (${(e as Error).message})`);
  }
  if (!isObject(root)) fail('header-not-object', 'header JSON is not an object');

  let metadata: Record<string, string> | null = null;
  const seen = new Set<string>();
  const tensors: TensorInfo[] = [];
  for (const { key: name, at } of objectKeys(text, skipWs(text, 0))) {
    const value = root[name];
    if (name === '__metadata__') {
      if (metadata !== null) fail('metadata', '__metadata__ appears more than once');
      if (!isObject(value)) fail('metadata', '__metadata__ is not an object');
      // Null prototype so a "__proto__" key is an ordinary entry.
      metadata = Object.create(null) as Record<string, string>;
      const keys = objectKeys(text, at);
      for (const { key } of keys) {
        if (typeof value[key] !== 'string') fail('metadata', `__metadata__ value for ${shown(key)} is not a string`);
        if (key in metadata) fail('metadata', `__metadata__ key ${shown(key)} appears more than once`);
        metadata[key] = value[key] as string;
      }
      continue;
    }
    if (seen.has(name)) fail('duplicate-name', 'tensor name appears more than once', name);
    seen.add(name);
    if (name === '') fail('name-empty', 'tensor name is empty', name);
    if (name.includes('\0')) fail('name-nul', 'tensor name contains NUL', name);
    if (!isObject(value)) fail('tensor-entry', 'entry is not an object', name);
    const keys = objectKeys(text, at).map((k) => k.key);
    const wanted = ['data_offsets', 'dtype', 'shape'];
    if (keys.length !== 3 || [...keys].sort().some((k, i) => k !== wanted[i])) {
      fail('tensor-entry', `entry must have exactly dtype, shape and data_offsets, has ${shown(keys)}`, name);
    }
    const { dtype, shape, data_offsets: offsets } = value;
    if (typeof dtype !== 'string' || !isDType(dtype)) fail('dtype', `unknown dtype ${shown(dtype)}`, name);
    if (!Array.isArray(shape) || !shape.every(isCount)) fail('shape', `shape ${shown(shape)} is not a list of non-negative integers`, name);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount) || offsets[0] > offsets[1]) {
      fail('data-offsets', `data_offsets ${shown(offsets)} are not [begin, end] with 0 ≤ begin ≤ end`, name);
    }
    const [begin, end] = offsets as [number, number];
    let expected = -1;
    try {
      expected = byteLength(shape, dtype);
    } catch (e) {
      fail('byte-length', (e as Error).message, name);
    }
    if (end - begin !== expected) fail('byte-length', `data_offsets span ${end - begin} bytes, shape ${shown(shape)} ${dtype} needs ${expected}`, name);
    tensors.push({ name, dtype, shape, begin, end });
  }

  tensors.sort((a, b) => a.begin - b.begin || a.end - b.end); // stable
  let pos = 0;
  for (const t of tensors) {
    if (t.begin !== pos) {
      fail('offsets-tiling', `data begins at ${t.begin}, expected ${pos} (${t.begin > pos ? 'a hole' : 'an overlap'} in the data area)`, t.name);
    }
    pos = t.end;
  }
  if (dataStart + pos !== fileSize) {
    fail('file-length', `tensors end at byte ${dataStart + pos} of the file, but the file is ${fileSize} bytes`);
  }
  return { file, fileSize, headerLength, dataStart, metadata, tensors, byName: new Map(tensors.map((t) => [t.name, t])) };
}

export async function readHeader(src: ByteSource): Promise<SafetensorsHeader> {
  if (src.size < 8) throw new SafetensorsError(src.name, 'file-too-small', `file is ${src.size} bytes, shorter than the 8-byte header length`);
  const prefix = await src.read(0, 8);
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_LENGTH)) throw new SafetensorsError(src.name, 'header-too-large', `header length ${n} exceeds ${MAX_HEADER_LENGTH}`);
  if (8n + n > BigInt(src.size)) {
    throw new SafetensorsError(src.name, 'header-past-eof', `header of ${n} bytes runs past the end of a ${src.size}-byte file`);
  }
  return parseHeader(src.name, await src.read(8, Number(n)), src.size);
}

/** Reads `length` bytes starting `offset` bytes into the tensor's data; bounds-checked against the tensor. */
export async function readTensorBytes(
  src: ByteSource,
  h: SafetensorsHeader,
  t: TensorInfo,
  offset = 0,
  length = t.end - t.begin - offset,
  into?: Uint8Array,
): Promise<Uint8Array> {
  const size = t.end - t.begin;
  if (!isCount(offset) || !isCount(length) || offset + length > size) {
    throw new SafetensorsError(src.name, 'read-range', `cannot read ${length} bytes at ${offset} of a ${size}-byte tensor`, t.name);
  }
  // A source of another size is not the file this header came from.
  if (src.size !== h.fileSize) throw new SafetensorsError(src.name, 'file-changed', `file is ${src.size} bytes, header was read from ${h.fileSize}`);
  return src.read(h.dataStart + t.begin + offset, length, into);
}

export interface PlannedTensor {
  name: string;
  dtype: DType;
  shape: readonly number[];
}

/** Compact header JSON, built by hand so keys keep the given order (objects would put "0", "1"… first). */
function headerText(
  entries: readonly { name: string; dtype: string; shape: readonly number[]; begin: number; end: number }[],
  metadata: Record<string, string> | null,
): string {
  const parts = metadata === null ? [] : [`"__metadata__":${JSON.stringify(metadata)}`];
  for (const e of entries) {
    parts.push(`${JSON.stringify(e.name)}:{"dtype":${JSON.stringify(e.dtype)},"shape":${JSON.stringify(e.shape)},"data_offsets":[${e.begin},${e.end}]}`);
  }
  return `{${parts.join(',')}}`;
}

function checkPlan(tensors: readonly { name: string; shape: readonly number[] }[], metadata: Record<string, string> | null): void {
  const names = new Set<string>();
  for (const { name, shape } of tensors) {
    if (name === '' || name.includes('\0') || name === '__metadata__' || names.has(name)) {
      throw new RangeError(`invalid or duplicate tensor name ${JSON.stringify(name)}`);
    }
    names.add(name);
    elementCount(shape); // validates dims
  }
  if (metadata !== null && !Object.values(metadata).every((v) => typeof v === 'string')) throw new TypeError('metadata values must be strings');
}

/** Data offsets laid out contiguously in order, each tensor taking `size(i)` bytes per element. */
function layout<T extends { shape: readonly number[] }>(tensors: readonly T[], size: (t: T) => number): [number, number][] {
  let pos = 0;
  return tensors.map((t) => {
    const begin = pos;
    pos += elementCount(t.shape) * size(t);
    if (pos > Number.MAX_SAFE_INTEGER) throw new RangeError('data area exceeds 2^53-1 bytes');
    return [begin, pos];
  });
}

const roundUp8 = (n: number) => Math.ceil(n / 8) * 8;

/**
 * Encodes the file prefix: 8-byte little-endian u64 N, then N header bytes.
 * Header JSON is compact, `__metadata__` first when metadata is non-null, then tensors in the given order
 * with contiguous data_offsets, padded with spaces so N is a multiple of 8 (or exactly `reserve`).
 */
export function encodeHeader(
  tensors: readonly PlannedTensor[],
  metadata: Record<string, string> | null,
  reserve?: number,
): { bytes: Uint8Array; offsets: [number, number][]; dataLength: number } {
  checkPlan(tensors, metadata);
  for (const t of tensors) if (!isDType(t.dtype)) throw new RangeError(`unknown dtype ${t.dtype} for ${JSON.stringify(t.name)}`);
  const offsets = layout(tensors, (t) => dtypeSize(t.dtype));
  const json = new TextEncoder().encode(headerText(tensors.map((t, i) => ({ ...t, begin: offsets[i][0], end: offsets[i][1] })), metadata));
  let n = roundUp8(json.length);
  if (reserve !== undefined) {
    if (!isCount(reserve) || reserve % 8 !== 0) throw new RangeError(`reserve ${reserve} is not a multiple of 8`);
    if (json.length > reserve) throw new RangeError(`header needs ${json.length} bytes, only ${reserve} reserved`);
    n = reserve;
  }
  if (n > MAX_HEADER_LENGTH) throw new RangeError(`header of ${n} bytes exceeds ${MAX_HEADER_LENGTH}`);
  const bytes = new Uint8Array(8 + n).fill(0x20, 8 + json.length);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(n), true);
  bytes.set(json, 8);
  return { bytes, offsets, dataLength: offsets.length ? offsets[offsets.length - 1][1] : 0 };
}

/**
 * An N (rounded up to 8) at least as large as any encodeHeader could produce when each tensor may take any
 * dtype in its list: every dtype string at its longest and every offset at its largest, which each bound
 * their part of the JSON independently.
 */
export function maxHeaderLength(
  tensors: readonly { name: string; shape: readonly number[]; dtypes: readonly DType[] }[],
  metadata: Record<string, string> | null,
): number {
  checkPlan(tensors, metadata);
  for (const t of tensors) {
    if (t.dtypes.length === 0 || !t.dtypes.every(isDType)) throw new RangeError(`no valid dtypes for ${JSON.stringify(t.name)}`);
  }
  const offsets = layout(tensors, (t) => Math.max(...t.dtypes.map(dtypeSize)));
  const longest = (ds: readonly DType[]) => ds.reduce((a, b) => (b.length > a.length ? b : a));
  const text = headerText(tensors.map((t, i) => ({ name: t.name, dtype: longest(t.dtypes), shape: t.shape, begin: offsets[i][0], end: offsets[i][1] })), metadata);
  return roundUp8(new TextEncoder().encode(text).length);
}
