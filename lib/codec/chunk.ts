// One chunk's transform and entropy coding: byte planes, each plane one zstd frame. This file is also the
// codec worker's entry point, which Node loads directly (as TypeScript source under the test runner, with
// Node's own type stripping), so it imports nothing of the project and uses only erasable TypeScript.
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import zstd from 'zstd-napi/binding.js';

/** zstd level 1 with minimum match 7 compressed byte planes of real deltas best (see docs/compact-format.md). */
export const ZSTD_LEVEL = 1;
export const ZSTD_PARAMETERS = { minMatch: 7, checksumFlag: 1, contentSizeFlag: 1 } as const;

/** A frame failed to decode: corrupt or truncated input, never a bug. */
export class CorruptFrameError extends Error {
  override name = 'CorruptFrameError';
}

/** Largest frame zstd can produce for `bytes` of input. */
export function frameBound(bytes: number): number {
  return zstd.compressBound(bytes);
}

let cctx: InstanceType<typeof zstd.CCtx> | null = null;
let dctx: InstanceType<typeof zstd.DCtx> | null = null;
let scratch = new Uint8Array(0);

function compressor(): InstanceType<typeof zstd.CCtx> {
  if (!cctx) {
    cctx = new zstd.CCtx();
    cctx.setParameter(zstd.CParameter.compressionLevel, ZSTD_LEVEL);
    for (const [k, v] of Object.entries(ZSTD_PARAMETERS)) cctx.setParameter(zstd.CParameter[k as keyof typeof zstd.CParameter], v);
  }
  return cctx;
}

function scratchFor(bytes: number): Uint8Array {
  if (scratch.length < bytes) scratch = new Uint8Array(bytes);
  return scratch;
}

/**
 * Plane b holds byte b of every little-endian element: planes[b·n + i] = raw[i·size + b]. Written per
 * element size with word loads, about 3 GB/s; a generic loop is several times slower.
 */
export function splitPlanes(raw: Uint8Array, n: number, size: number, planes: Uint8Array): void {
  if (size === 2 && raw.byteOffset % 2 === 0) {
    const s = new Uint16Array(raw.buffer, raw.byteOffset, n);
    const p0 = planes.subarray(0, n);
    const p1 = planes.subarray(n, 2 * n);
    for (let i = 0; i < n; i++) {
      const v = s[i];
      p0[i] = v;
      p1[i] = v >>> 8;
    }
  } else if ((size === 4 || size === 8) && raw.byteOffset % 4 === 0) {
    const s = new Uint32Array(raw.buffer, raw.byteOffset, (n * size) / 4);
    const words = size / 4;
    for (let w = 0; w < words; w++) {
      const p0 = planes.subarray((4 * w) * n, (4 * w + 1) * n);
      const p1 = planes.subarray((4 * w + 1) * n, (4 * w + 2) * n);
      const p2 = planes.subarray((4 * w + 2) * n, (4 * w + 3) * n);
      const p3 = planes.subarray((4 * w + 3) * n, (4 * w + 4) * n);
      for (let i = 0, j = w; i < n; i++, j += words) {
        const v = s[j];
        p0[i] = v;
        p1[i] = v >>> 8;
        p2[i] = v >>> 16;
        p3[i] = v >>> 24;
      }
    }
  } else {
    for (let i = 0; i < n; i++) for (let b = 0; b < size; b++) planes[b * n + i] = raw[i * size + b];
  }
}

/** The inverse of splitPlanes. */
export function joinPlanes(planes: Uint8Array, n: number, size: number, raw: Uint8Array): void {
  if (size === 2 && raw.byteOffset % 2 === 0) {
    const d = new Uint16Array(raw.buffer, raw.byteOffset, n);
    const p0 = planes.subarray(0, n);
    const p1 = planes.subarray(n, 2 * n);
    for (let i = 0; i < n; i++) d[i] = p0[i] | (p1[i] << 8);
  } else if ((size === 4 || size === 8) && raw.byteOffset % 4 === 0) {
    const d = new Uint32Array(raw.buffer, raw.byteOffset, (n * size) / 4);
    const words = size / 4;
    for (let w = 0; w < words; w++) {
      const p0 = planes.subarray((4 * w) * n, (4 * w + 1) * n);
      const p1 = planes.subarray((4 * w + 1) * n, (4 * w + 2) * n);
      const p2 = planes.subarray((4 * w + 2) * n, (4 * w + 3) * n);
      const p3 = planes.subarray((4 * w + 3) * n, (4 * w + 4) * n);
      for (let i = 0, j = w; i < n; i++, j += words) d[j] = p0[i] | (p1[i] << 8) | (p2[i] << 16) | (p3[i] << 24);
    }
  } else {
    for (let i = 0; i < n; i++) for (let b = 0; b < size; b++) raw[i * size + b] = planes[b * n + i];
  }
}

/**
 * Encodes n elements of `size` bytes from `raw`: splits them into byte planes and compresses each plane
 * into one zstd frame, frames back to back in `out`. Returns each frame's length.
 */
export function encodeChunk(raw: Uint8Array, n: number, size: number, out: Uint8Array): number[] {
  const planes = scratchFor(n * size);
  splitPlanes(raw, n, size, planes);
  const c = compressor();
  const lengths: number[] = [];
  let at = 0;
  for (let b = 0; b < size; b++) {
    const len = c.compress2(out.subarray(at), planes.subarray(b * n, (b + 1) * n));
    lengths.push(len);
    at += len;
  }
  return lengths;
}

/** Decodes the frames of one chunk (lengths as encodeChunk returned them) into n elements of `size` bytes in `raw`. */
export function decodeChunk(frames: Uint8Array, lengths: readonly number[], n: number, size: number, raw: Uint8Array): void {
  if (lengths.length !== size) throw new CorruptFrameError(`${lengths.length} frames for ${size}-byte elements`);
  const planes = scratchFor(n * size);
  dctx ??= new zstd.DCtx();
  let at = 0;
  for (let b = 0; b < size; b++) {
    const frame = frames.subarray(at, at + lengths[b]);
    at += lengths[b];
    let got: number;
    try {
      // The frame must say how long it is: decompress would otherwise accept a frame shorter than the plane.
      if (zstd.getFrameContentSize(frame) !== n) throw new Error(`frame does not hold ${n} bytes`);
      got = dctx.decompress(planes.subarray(b * n, (b + 1) * n), frame);
    } catch (e) {
      throw new CorruptFrameError(`byte plane ${b}: ${(e as Error).message}`);
    }
    if (got !== n) throw new CorruptFrameError(`byte plane ${b}: ${got} bytes decoded, ${n} expected`);
  }
  joinPlanes(planes, n, size, raw);
}

export type CodecJob =
  | { id: number; op: 'encode'; raw: Uint8Array; n: number; size: number; out: Uint8Array }
  | { id: number; op: 'decode'; frames: Uint8Array; lengths: number[]; n: number; size: number; raw: Uint8Array };

export type CodecReply = { id: number; lengths?: number[]; error?: string; corrupt?: boolean };

/** Runs one job; buffers are views of SharedArrayBuffers when the job crossed a thread. */
export function runJob(job: CodecJob): CodecReply {
  try {
    if (job.op === 'encode') return { id: job.id, lengths: encodeChunk(job.raw, job.n, job.size, job.out) };
    decodeChunk(job.frames, job.lengths, job.n, job.size, job.raw);
    return { id: job.id };
  } catch (e) {
    return { id: job.id, error: (e as Error).message, corrupt: e instanceof CorruptFrameError };
  }
}

export const WORKER_MARK = 'paramdelta-codec';

if (!isMainThread && parentPort && workerData === WORKER_MARK) {
  const port = parentPort;
  port.on('message', (job: CodecJob) => port.postMessage(runJob(job)));
}
