// The zip layout torch.save writes: stored (uncompressed) records, zip64 when large, read by range.
// Hand-written: zip libraries read by stream and inflate; we need only entry offsets, each checked,
// through a ByteSource, so tensor bytes can be read in place later.
import { crc32, inflateRawSync } from 'node:zlib';
import type { ByteSource } from '../storage/types.js';
import { InputError } from '../errors.js';

export class ZipError extends InputError {
  override name = 'ZipError';
  constructor(
    readonly file: string,
    detail: string,
    readonly entry?: string,
  ) {
    super(`${file}: ${entry === undefined ? '' : `zip entry "${entry}": `}${detail}`);
  }
}

/** The central directory may not exceed this (a state dict of 100k tensors takes ~10 MB). */
export const MAX_DIRECTORY_BYTES = 64 << 20;
/** Records read whole (data.pkl and small markers) may not exceed this. */
export const MAX_RECORD_BYTES = 256 << 20;

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const EOCD_SIZE = 22;
const LOCATOR_SIZE = 20;
const ZIP64_EOCD_SIZE = 56;
const CENTRAL_SIZE = 46;
const LOCAL_SIZE = 30;
const MAX_COMMENT = 0xffff;

export const METHOD_STORED = 0;
export const METHOD_DEFLATE = 8;

export interface ZipEntry {
  name: string;
  method: number;
  flags: number;
  crc32: number;
  compressedSize: number;
  size: number;
  localHeaderOffset: number;
  /** Where the next entry's local header (or the central directory) starts: this entry must end before it. */
  limit: number;
}

export interface ZipDirectory {
  file: string;
  fileSize: number;
  /** In central-directory order. */
  entries: ZipEntry[];
  byName: Map<string, ZipEntry>;
  zip64: boolean;
}

const u16 = (b: Uint8Array, at: number) => b[at] | (b[at + 1] << 8);
const u32 = (b: Uint8Array, at: number) => (b[at] | (b[at + 1] << 8) | (b[at + 2] << 16)) + b[at + 3] * 0x1000000;

/** A little-endian u64 as a number, or -1 when it exceeds 2^53-1 (no real file is that large). */
function u64(b: Uint8Array, at: number): number {
  const hi = u32(b, at + 4);
  if (hi >= 0x200000) return -1;
  return hi * 0x100000000 + u32(b, at);
}

/** Whether the source starts like a zip archive (a local header, or the end record of an empty one). */
export async function looksLikeZip(src: ByteSource): Promise<boolean> {
  if (src.size < 4) return false;
  const sig = u32(await src.read(0, 4), 0);
  return sig === SIG_LOCAL || sig === SIG_EOCD;
}

/**
 * Reads and checks the central directory: the end record (zip64 included), every entry's sizes and
 * offsets inside the file, names well formed and unique, and no two entries overlapping.
 */
export async function readZipDirectory(src: ByteSource): Promise<ZipDirectory> {
  const file = src.name;
  const fail = (detail: string, entry?: string): never => {
    throw new ZipError(file, detail, entry);
  };
  const size = src.size;
  if (size < EOCD_SIZE) fail(`not a zip archive (${size} bytes, shorter than the end-of-directory record)`);

  // The end record sits in the last 22 + comment bytes; torch writes no comment, so try that first and
  // only then scan back for the signature whose comment reaches EOF exactly (never touching tensor data
  // in the common case).
  let tailLength = Math.min(size, EOCD_SIZE + LOCATOR_SIZE);
  let tailStart = size - tailLength;
  let tail = await src.read(tailStart, tailLength);
  let eocd = tailLength - EOCD_SIZE;
  if (u32(tail, eocd) !== SIG_EOCD || u16(tail, eocd + 20) !== 0) {
    tailLength = Math.min(size, EOCD_SIZE + MAX_COMMENT);
    tailStart = size - tailLength;
    tail = await src.read(tailStart, tailLength);
    eocd = -1;
    for (let i = tailLength - EOCD_SIZE; i >= 0; i--) {
      if (u32(tail, i) === SIG_EOCD && i + EOCD_SIZE + u16(tail, i + 20) === tailLength) {
        eocd = i;
        break;
      }
    }
  }
  if (eocd < 0) fail('not a zip archive (no end-of-central-directory record)');
  const eocdAt = tailStart + eocd;
  let disk = u16(tail, eocd + 4);
  let cdDisk = u16(tail, eocd + 6);
  let entriesOnDisk = u16(tail, eocd + 8);
  let count = u16(tail, eocd + 10);
  let cdSize = u32(tail, eocd + 12);
  let cdOffset = u32(tail, eocd + 16);
  let directoryEnd = eocdAt;

  const locatorAt = eocdAt - LOCATOR_SIZE;
  const locator =
    locatorAt < 0 ? null : locatorAt >= tailStart ? tail.subarray(locatorAt - tailStart, eocd) : await src.read(locatorAt, LOCATOR_SIZE);
  const zip64 = locator !== null && u32(locator, 0) === SIG_ZIP64_LOCATOR;
  if (zip64) {
    const at = u64(locator, 8);
    if (u32(locator, 4) !== 0 || u32(locator, 16) > 1) fail('multi-disk archives are not supported');
    if (at < 0 || at + ZIP64_EOCD_SIZE > locatorAt) fail(`zip64 end record offset ${at} is outside the file`);
    const rec = await src.read(at, ZIP64_EOCD_SIZE);
    if (u32(rec, 0) !== SIG_ZIP64_EOCD) fail(`no zip64 end record at offset ${at}`);
    const recSize = u64(rec, 4);
    if (recSize < ZIP64_EOCD_SIZE - 12 || at + 12 + recSize > locatorAt) fail(`zip64 end record size ${recSize} runs past its locator`);
    disk = u32(rec, 16);
    cdDisk = u32(rec, 20);
    entriesOnDisk = u64(rec, 24);
    count = u64(rec, 32);
    cdSize = u64(rec, 40);
    cdOffset = u64(rec, 48);
    directoryEnd = at;
  } else if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    fail('end record points to zip64 values, but there is no zip64 locator');
  }
  if (disk !== 0 || cdDisk !== 0 || entriesOnDisk !== count) fail('multi-disk archives are not supported');
  if (count < 0 || cdSize < 0 || cdOffset < 0 || cdOffset + cdSize > directoryEnd) {
    fail(`central directory (${cdSize} bytes at ${cdOffset}) is outside the file`);
  }
  if (cdSize > MAX_DIRECTORY_BYTES) fail(`central directory of ${cdSize} bytes exceeds ${MAX_DIRECTORY_BYTES}`);
  if (count * CENTRAL_SIZE > cdSize) fail(`${count} entries cannot fit in a ${cdSize}-byte central directory`);

  const cd = await src.read(cdOffset, cdSize);
  const names = new TextDecoder('utf-8', { fatal: true });
  const entries: ZipEntry[] = [];
  const byName = new Map<string, ZipEntry>();
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + CENTRAL_SIZE > cdSize || u32(cd, p) !== SIG_CENTRAL) fail(`central directory entry ${i} is malformed`);
    const flags = u16(cd, p + 8);
    const method = u16(cd, p + 10);
    const crc = u32(cd, p + 16);
    let compressedSize = u32(cd, p + 20);
    let usize = u32(cd, p + 24);
    const nameLen = u16(cd, p + 28);
    const extraLen = u16(cd, p + 30);
    const commentLen = u16(cd, p + 32);
    let startDisk = u16(cd, p + 34);
    let lho = u32(cd, p + 42);
    const end = p + CENTRAL_SIZE + nameLen + extraLen + commentLen;
    if (end > cdSize) fail(`central directory entry ${i} runs past the directory`);
    let name = '';
    try {
      name = names.decode(cd.subarray(p + CENTRAL_SIZE, p + CENTRAL_SIZE + nameLen));
    } catch {
      fail(`central directory entry ${i}: name is not valid UTF-8`);
    }
    checkName(file, name);
    // Zip64 extended information: each saturated field, in this order, moves here as a u64.
    const extra = cd.subarray(p + CENTRAL_SIZE + nameLen, p + CENTRAL_SIZE + nameLen + extraLen);
    for (let q = 0; q + 4 <= extra.length; ) {
      const id = u16(extra, q);
      const len = u16(extra, q + 2);
      if (q + 4 + len > extra.length) fail('extra field runs past its entry', name);
      if (id === 0x0001) {
        const field = extra.subarray(q + 4, q + 4 + len);
        let r = 0;
        const next = (what: string) => {
          if (r + 8 > field.length) fail(`zip64 extra field lacks the ${what}`, name);
          const v = u64(field, r);
          if (v < 0) fail(`zip64 ${what} exceeds 2^53-1`, name);
          r += 8;
          return v;
        };
        if (usize === 0xffffffff) usize = next('size');
        if (compressedSize === 0xffffffff) compressedSize = next('compressed size');
        if (lho === 0xffffffff) lho = next('local header offset');
        if (startDisk === 0xffff) {
          if (r + 4 > field.length) fail('zip64 extra field lacks the disk number', name);
          startDisk = u32(field, r);
        }
      }
      q += 4 + len;
    }
    if (startDisk !== 0) fail('entry is on another disk', name);
    if (flags & 0x1) fail('entry is encrypted', name);
    if (byName.has(name)) fail('name appears more than once', name);
    if (method === METHOD_STORED && compressedSize !== usize) fail(`stored entry has ${compressedSize} bytes but a size of ${usize}`, name);
    // Bounded below by the fixed local header; checked exactly once the local header is read.
    if (lho + LOCAL_SIZE + nameLen + compressedSize > cdOffset) fail(`data (local header at ${lho}) runs past the central directory`, name);
    const e: ZipEntry = { name, method, flags, crc32: crc, compressedSize, size: usize, localHeaderOffset: lho, limit: cdOffset };
    entries.push(e);
    byName.set(name, e);
    p = end;
  }
  if (p !== cdSize) fail(`central directory has ${cdSize - p} bytes after its ${count} entries`);

  // Entries must not overlap: each ends before the next local header.
  const ordered = [...entries].sort((a, b) => a.localHeaderOffset - b.localHeaderOffset);
  for (let i = 0; i + 1 < ordered.length; i++) {
    const a = ordered[i];
    const b = ordered[i + 1];
    a.limit = b.localHeaderOffset;
    if (a.localHeaderOffset + LOCAL_SIZE + a.compressedSize > a.limit) fail(`overlaps entry "${b.name}"`, a.name);
  }
  return { file, fileSize: size, entries, byName, zip64 };
}

/** Names are relative paths with no empty, "." or ".." segments, no backslashes and no NUL. */
function checkName(file: string, name: string): void {
  const bad =
    name === '' || name.includes('\0') || name.includes('\\') || name.startsWith('/') ||
    name.split('/').some((s, i, all) => s === '.' || s === '..' || (s === '' && i !== all.length - 1));
  if (bad) throw new ZipError(file, `entry name ${JSON.stringify(name)} is not a plain relative path`);
}

/** Absolute offset of an entry's data, from its local header (checked against the directory). */
export async function entryDataOffset(src: ByteSource, dir: ZipDirectory, e: ZipEntry): Promise<number> {
  const fail = (detail: string): never => {
    throw new ZipError(src.name, detail, e.name);
  };
  if (src.size !== dir.fileSize) fail(`file is ${src.size} bytes, its directory was read from ${dir.fileSize}`);
  const nameBytes = new TextEncoder().encode(e.name);
  const want = LOCAL_SIZE + nameBytes.length;
  if (e.localHeaderOffset + want > e.limit) fail(`local header at ${e.localHeaderOffset} runs into the next entry`);
  const h = await src.read(e.localHeaderOffset, want);
  if (u32(h, 0) !== SIG_LOCAL) fail(`no local header at offset ${e.localHeaderOffset}`);
  if (u16(h, 8) !== e.method) fail(`local header says method ${u16(h, 8)}, the directory ${e.method}`);
  if (u16(h, 26) !== nameBytes.length || !nameBytes.every((b, i) => h[LOCAL_SIZE + i] === b)) {
    fail('local header names another entry');
  }
  // Without a data descriptor (flag bit 3) the local header repeats the sizes; they must agree.
  if (!(u16(h, 6) & 0x8)) {
    const cs = u32(h, 18);
    const us = u32(h, 22);
    if ((cs !== 0xffffffff && cs !== e.compressedSize) || (us !== 0xffffffff && us !== e.size)) {
      fail(`local header sizes (${cs}, ${us}) differ from the directory's (${e.compressedSize}, ${e.size})`);
    }
  }
  const offset = e.localHeaderOffset + want + u16(h, 28);
  if (offset + e.compressedSize > e.limit) fail(`data (${e.compressedSize} bytes at ${offset}) runs into the next entry`);
  return offset;
}

/** Absolute offset of a stored entry's bytes, for reading them in place; compressed entries are refused. */
export async function storedDataOffset(src: ByteSource, dir: ZipDirectory, e: ZipEntry): Promise<number> {
  if (e.method !== METHOD_STORED) {
    throw new ZipError(src.name, `is compressed (method ${e.method}); torch.save stores tensor data uncompressed, so it can be read in place`, e.name);
  }
  return entryDataOffset(src, dir, e);
}

/** Reads a small entry whole (stored or deflated), checking its size and CRC-32. */
export async function readEntry(src: ByteSource, dir: ZipDirectory, e: ZipEntry, maxBytes = MAX_RECORD_BYTES): Promise<Uint8Array> {
  const fail = (detail: string): never => {
    throw new ZipError(src.name, detail, e.name);
  };
  if (e.size > maxBytes || e.compressedSize > maxBytes) fail(`is ${Math.max(e.size, e.compressedSize)} bytes, more than the ${maxBytes} allowed`);
  const offset = await entryDataOffset(src, dir, e);
  const raw = await src.read(offset, e.compressedSize);
  let data: Uint8Array = raw;
  if (e.method === METHOD_DEFLATE) {
    try {
      data = inflateRawSync(raw, { maxOutputLength: Math.max(1, e.size) });
    } catch (err) {
      fail(`cannot be inflated (${(err as Error).message})`);
    }
  } else if (e.method !== METHOD_STORED) {
    fail(`uses compression method ${e.method}; only stored and deflated records are read`);
  }
  if (data.length !== e.size) fail(`holds ${data.length} bytes, the directory says ${e.size}`);
  // A writer may skip checksums (torch can), leaving 0.
  if (e.crc32 !== 0 && crc32(data) >>> 0 !== e.crc32) fail('CRC-32 does not match its data');
  return data;
}
