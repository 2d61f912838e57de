// One chunk's transform and entropy coding: byte planes, each plane one zstd frame. This file is also the
// codec worker's entry point, which Node loads directly (as TypeScript source under the test runner, with
// Node's own type stripping), so it imports nothing of the project at load (types aside, which are erased; the
// assembler only where the main thread needs it) and uses only erasable TypeScript.
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import zstd from 'zstd-napi/binding.js';
import type { WasmModuleSource } from '../wasm/assembler.js';

/**
 * Each byte plane is compressed in one of two modes, chosen by its content (so the same plane always gives
 * the same frame). Planes of long runs (the low bytes of a delta, nearly all zero) compress best by matching
 * runs: zstd level 1 with minimum match 7 and a small hash table and window. Dense planes (sign, exponent,
 * high mantissa) carry only order-0 entropy that Huffman coding of literals captures; there, match finding
 * costs time and finds spurious short matches, so a fast negative level with Huffman literals forced on
 * (zstd's experimental literal compression mode: negative levels otherwise store literals raw) is both
 * faster and smaller. Measured per plane kind in docs/compact-format.md. Frames carry their size and a
 * checksum, so damage is caught chunk by chunk; a reader needs none of these settings.
 */
export const ZSTD_LEVEL = 1;
export const ZSTD_PARAMETERS = { minMatch: 7, hashLog: 12, windowLog: 17, checksumFlag: 1, contentSizeFlag: 1 } as const;
/** The dense planes' level (negative: zstd's fast strategy, skipping ahead faster the lower it is). */
export const ZSTD_LITERALS_LEVEL = -200;
/** ZSTD_c_literalCompressionMode (experimental; not in the binding's enum) and its ZSTD_ps_enable value. */
const LITERAL_COMPRESSION_MODE = 1002;
const PS_ENABLE = 1;
/** A plane whose sampled bytes equal their successor this often is one of runs (see docs/compact-format.md). */
export const RUNS_THRESHOLD = 0.85;
/** What the header records of the encoder (for information). */
export const ZSTD_INFO = { ...ZSTD_PARAMETERS, literalsLevel: ZSTD_LITERALS_LEVEL, literalCompressionMode: PS_ENABLE, runsThreshold: RUNS_THRESHOLD };

/** A frame failed to decode: corrupt or truncated input, never a bug. */
export class CorruptFrameError extends Error {
  override name = 'CorruptFrameError';
}

/** Largest frame zstd can produce for `bytes` of input. */
export function frameBound(bytes: number): number {
  return zstd.compressBound(bytes);
}

let runsCtx: InstanceType<typeof zstd.CCtx> | null = null;
let literalsCtx: InstanceType<typeof zstd.CCtx> | null = null;
let dctx: InstanceType<typeof zstd.DCtx> | null = null;

function compressor(level: number, literals: boolean): InstanceType<typeof zstd.CCtx> {
  const c = new zstd.CCtx();
  c.setParameter(zstd.CParameter.compressionLevel, level);
  for (const [k, v] of Object.entries(ZSTD_PARAMETERS)) c.setParameter(zstd.CParameter[k as keyof typeof zstd.CParameter], v);
  if (literals) c.setParameter(LITERAL_COMPRESSION_MODE as zstd.CParameter, PS_ENABLE);
  return c;
}

/**
 * Whether a plane is one of runs: the fraction of sampled positions whose byte equals the next one, over
 * about 8192 samples (a pure function of the plane, so encoding stays deterministic).
 */
export function isRuns(plane: Uint8Array): boolean {
  const n = plane.length - 1;
  if (n <= 0) return true;
  const step = Math.max(1, Math.floor(n / 8192));
  let same = 0;
  let count = 0;
  for (let i = 0; i < n; i += step, count++) if (plane[i] === plane[i + 1]) same++;
  return same >= RUNS_THRESHOLD * count;
}

/** The compression context for one plane: runs or literals. */
function compressorFor(plane: Uint8Array): InstanceType<typeof zstd.CCtx> {
  if (isRuns(plane)) return (runsCtx ??= compressor(ZSTD_LEVEL, false));
  return (literalsCtx ??= compressor(ZSTD_LITERALS_LEVEL, true));
}

/** Plane b holds byte b of every little-endian element: planes[b·n + i] = raw[i·size + b]. Plain loop, for tails and checks. */
export function splitPlanes(raw: Uint8Array, n: number, size: number, planes: Uint8Array, from = 0): void {
  for (let i = from; i < n; i++) for (let b = 0; b < size; b++) planes[b * n + i] = raw[i * size + b];
}

/** The inverse of splitPlanes. */
export function joinPlanes(planes: Uint8Array, n: number, size: number, raw: Uint8Array, from = 0): void {
  for (let i = from; i < n; i++) for (let b = 0; b < size; b++) raw[i * size + b] = planes[b * n + i];
}

// The byte-plane transposes as WebAssembly SIMD shuffles, 16 elements per step: several times faster than any
// JavaScript loop, and no library offers them. Each works in its instance's own memory.
const lanes = (f: (i: number) => number) => Array.from({ length: 16 }, (_, i) => f(i)).join(' ');
const shuffle = (a: string, b: string, f: (i: number) => number) => `(i8x16.shuffle ${lanes(f)} ${a} ${b})`;
const get = (v: string) => `(local.get $${v})`;
/** Interleaves bytes: lo = a0 b0 a1 b1 … a7 b7, hi = a8 b8 … a15 b15. */
const zip8 = (a: string, b: string, hi: boolean) => shuffle(get(a), get(b), (i) => (i % 2 ? 16 : 0) + (hi ? 8 : 0) + (i >> 1));
/** Interleaves 16-bit lanes: part k of (a0a1 b0b1 a2a3 b2b3 …). */
const zip16 = (a: string, b: string, hi: boolean) => shuffle(get(a), get(b), (i) => ((i >> 1) % 2 ? 16 : 0) + (hi ? 8 : 0) + 2 * (i >> 2) + (i % 2));
/** Interleaves 32-bit lanes. */
const zip32 = (a: string, b: string, hi: boolean) => shuffle(get(a), get(b), (i) => ((i >> 2) % 2 ? 16 : 0) + (hi ? 8 : 0) + 4 * (i >> 3) + (i % 4));
/** From 8 elements of 4 bytes in a, b: byte k of each, then byte k+1 of each. */
const bytePair = (a: string, b: string, k: number) => shuffle(get(a), get(b), (i) => (i < 8 ? 4 * i + k : 4 * (i - 8) + k + 1));
const halves = (a: string, b: string, hi: boolean) => shuffle(get(a), get(b), (i) => (i < 8 ? 0 : 16) + (hi ? 8 : 0) + (i % 8));

export function planesWat(): string {
  const V = (names: string[]) => names.map((v) => `(local $${v} v128)`).join(' ');
  const loop = (locals: string, body: string) => `
    (param $e i32) (param $p i32) (param $n i32) (param $count i32) (local $i i32) ${locals}
    (block $done (loop $top
      (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
      ${body}
      (local.set $i (i32.add (local.get $i) (i32.const 16)))
      (br $top)))`;
  // Plane b of element i is at p + b·n + i; element i's bytes at e + i·size.
  const plane = (b: number) => `(i32.add (i32.add (local.get $p) (local.get $i)) (i32.mul (local.get $n) (i32.const ${b})))`;
  const elem = (size: number, k: number) => `(i32.add (i32.add (local.get $e) (i32.mul (local.get $i) (i32.const ${size}))) (i32.const ${16 * k}))`;
  const load = (v: string, at: string) => `(local.set $${v} (v128.load ${at}))`;
  const store = (at: string, x: string) => `(v128.store ${at} ${x})`;
  const set = (v: string, x: string) => `(local.set $${v} ${x})`;
  // 16 elements of 4 bytes: x0..x3 hold elements 0-3 … 12-15; planes q0..q3.
  const split4 = (x: string[], q: string[], t: string[]) => [
    set(t[0], bytePair(x[0], x[1], 0)),
    set(t[1], bytePair(x[0], x[1], 2)),
    set(t[2], bytePair(x[2], x[3], 0)),
    set(t[3], bytePair(x[2], x[3], 2)),
    set(q[0], halves(t[0], t[2], false)),
    set(q[1], halves(t[0], t[2], true)),
    set(q[2], halves(t[1], t[3], false)),
    set(q[3], halves(t[1], t[3], true)),
  ].join('\n');
  const join4 = (q: string[], x: string[], t: string[]) => [
    set(t[0], zip8(q[0], q[1], false)),
    set(t[1], zip8(q[0], q[1], true)),
    set(t[2], zip8(q[2], q[3], false)),
    set(t[3], zip8(q[2], q[3], true)),
    set(x[0], zip16(t[0], t[2], false)),
    set(x[1], zip16(t[0], t[2], true)),
    set(x[2], zip16(t[1], t[3], false)),
    set(x[3], zip16(t[1], t[3], true)),
  ].join('\n');
  const r = (p: string, n: number) => Array.from({ length: n }, (_, i) => `${p}${i}`);
  const split2 = loop(V([...r('x', 2)]), [
    load('x0', elem(2, 0)), load('x1', elem(2, 1)),
    store(plane(0), shuffle(get('x0'), get('x1'), (i) => 2 * i)),
    store(plane(1), shuffle(get('x0'), get('x1'), (i) => 2 * i + 1)),
  ].join('\n'));
  const join2 = loop(V(r('q', 2)), [
    load('q0', plane(0)), load('q1', plane(1)),
    store(elem(2, 0), zip8('q0', 'q1', false)),
    store(elem(2, 1), zip8('q0', 'q1', true)),
  ].join('\n'));
  const split4f = loop(V([...r('x', 4), ...r('q', 4), ...r('t', 4)]), [
    ...r('x', 4).map((x, k) => load(x, elem(4, k))),
    split4(r('x', 4), r('q', 4), r('t', 4)),
    ...r('q', 4).map((q, b) => store(plane(b), get(q))),
  ].join('\n'));
  const join4f = loop(V([...r('x', 4), ...r('q', 4), ...r('t', 4)]), [
    ...r('q', 4).map((q, b) => load(q, plane(b))),
    join4(r('q', 4), r('x', 4), r('t', 4)),
    ...r('x', 4).map((x, k) => store(elem(4, k), get(x))),
  ].join('\n'));
  // 8 bytes: low and high 32-bit words apart, then each as 4-byte elements.
  const split8 = loop(V([...r('x', 8), ...r('l', 4), ...r('h', 4), ...r('q', 8), ...r('t', 4)]), [
    ...r('x', 8).map((x, k) => load(x, elem(8, k))),
    ...[0, 1, 2, 3].flatMap((k) => [
      set(`l${k}`, shuffle(get(`x${2 * k}`), get(`x${2 * k + 1}`), (i) => 8 * (i >> 2) + (i % 4))),
      set(`h${k}`, shuffle(get(`x${2 * k}`), get(`x${2 * k + 1}`), (i) => 8 * (i >> 2) + 4 + (i % 4))),
    ]),
    split4(r('l', 4), r('q', 4).slice(0, 4), r('t', 4)),
    split4(r('h', 4), ['q4', 'q5', 'q6', 'q7'], r('t', 4)),
    ...r('q', 8).map((q, b) => store(plane(b), get(q))),
  ].join('\n'));
  const join8 = loop(V([...r('x', 8), ...r('l', 4), ...r('h', 4), ...r('q', 8), ...r('t', 4)]), [
    ...r('q', 8).map((q, b) => load(q, plane(b))),
    join4(r('q', 4).slice(0, 4), r('l', 4), r('t', 4)),
    join4(['q4', 'q5', 'q6', 'q7'], r('h', 4), r('t', 4)),
    ...[0, 1, 2, 3].flatMap((k) => [
      store(elem(8, 2 * k), zip32(`l${k}`, `h${k}`, false)),
      store(elem(8, 2 * k + 1), zip32(`l${k}`, `h${k}`, true)),
    ]),
  ].join('\n'));
  const fn = (name: string, body: string) => `(func (export "${name}") ${body})`;
  return `(module (memory (export "mem") 1 65536)
    ${fn('split2', split2)} ${fn('join2', join2)} ${fn('split4', split4f)} ${fn('join4', join4f)} ${fn('split8', split8)} ${fn('join8', join8)})`;
}

// The few WebAssembly JS API members used here (the project's TypeScript libs do not declare the namespace).
interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}
type Transpose = (elements: number, planes: number, n: number, count: number) => void;
interface WasmApi {
  instantiate(bytes: Uint8Array): Promise<{ instance: { exports: Record<string, unknown> } }>;
}
const WA = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

/** The transposes, assembled once per thread; their memory holds one chunk's planes, then its elements. */
class PlaneCodec {
  // No parameter properties: Node's type stripping, which loads this file in workers under the test runner, refuses them.
  private readonly exports: Record<string, unknown>;
  constructor(exports: Record<string, unknown>) {
    this.exports = exports;
  }

  private get memory(): WasmMemory {
    return this.exports.mem as WasmMemory;
  }

  /** The instance's bytes, with room for `bytes` of planes followed by `bytes` of elements. */
  private room(bytes: number): Uint8Array {
    const need = Math.ceil((2 * bytes + 16) / 65536) - this.memory.buffer.byteLength / 65536;
    if (need > 0) this.memory.grow(need);
    return new Uint8Array(this.memory.buffer);
  }

  private transpose(op: 'split' | 'join', size: number, n: number, bytes: number): void {
    if (size !== 2 && size !== 4 && size !== 8) throw new Error(`no byte-plane transpose for ${size}-byte elements`);
    (this.exports[`${op}${size}`] as Transpose)(bytes, 0, n, n - (n % 16));
  }

  encode(raw: Uint8Array, n: number, size: number, out: Uint8Array): number[] {
    const bytes = n * size;
    const mem = this.room(bytes);
    const elements = mem.subarray(bytes, 2 * bytes);
    elements.set(raw.subarray(0, bytes));
    this.transpose('split', size, n, bytes);
    splitPlanes(elements, n, size, mem, n - (n % 16));
    const lengths: number[] = [];
    let at = 0;
    for (let b = 0; b < size; b++) {
      const plane = mem.subarray(b * n, (b + 1) * n);
      const len = compressorFor(plane).compress2(out.subarray(at), plane);
      lengths.push(len);
      at += len;
    }
    return lengths;
  }

  decode(frames: Uint8Array, lengths: readonly number[], n: number, size: number, raw: Uint8Array): void {
    if (lengths.length !== size) throw new CorruptFrameError(`${lengths.length} frames for ${size}-byte elements`);
    const bytes = n * size;
    const mem = this.room(bytes);
    dctx ??= new zstd.DCtx();
    let at = 0;
    for (let b = 0; b < size; b++) {
      const frame = frames.subarray(at, at + lengths[b]);
      at += lengths[b];
      let got: number;
      try {
        // The frame must say how long it is: decompress would otherwise accept a frame shorter than the plane.
        if (zstd.getFrameContentSize(frame) !== n) throw new Error(`frame does not hold ${n} bytes`);
        got = dctx.decompress(mem.subarray(b * n, (b + 1) * n), frame);
      } catch (e) {
        throw new CorruptFrameError(`byte plane ${b}: ${(e as Error).message}`);
      }
      if (got !== n) throw new CorruptFrameError(`byte plane ${b}: ${got} bytes decoded, ${n} expected`);
    }
    this.transpose('join', size, n, bytes);
    const elements = mem.subarray(bytes, 2 * bytes);
    joinPlanes(mem, n, size, elements, n - (n % 16));
    raw.set(elements);
  }
}

let binary: Promise<Uint8Array> | null = null;

/** The transposes' module, for the build's pack (build/wasm-pack.ts). */
export const planesModule: WasmModuleSource = { name: 'planes', text: planesWat, source: import.meta.url };

/** The transposes' WebAssembly binary, had once per process (wasm/assembler.ts) and handed to codec workers. */
export function planesBinary(): Promise<Uint8Array> {
  binary ??= (async () => {
    // Imported here, not at the top (see above): workers never assemble.
    const { assemble, loadAssembler } = await import('../wasm/assembler.js');
    await loadAssembler();
    return assemble('planes', planesWat);
  })();
  return binary;
}

let codec: Promise<PlaneCodec> | null = null;

/** This thread's plane codec: a worker instantiates the binary it was given, the main thread assembles it. */
export function planeCodec(): Promise<PlaneCodec> {
  codec ??= (async () => {
    const given = (workerData as { planes?: Uint8Array } | null)?.planes;
    const { instance } = await WA.instantiate(given && !isMainThread ? given : await planesBinary());
    return new PlaneCodec(instance.exports);
  })();
  return codec;
}

/**
 * Encodes n elements of `size` bytes from `raw`: splits them into byte planes and compresses each plane
 * into one zstd frame, frames back to back in `out`. Returns each frame's length.
 */
export async function encodeChunk(raw: Uint8Array, n: number, size: number, out: Uint8Array): Promise<number[]> {
  return (await planeCodec()).encode(raw, n, size, out);
}

/** Decodes the frames of one chunk (lengths as encodeChunk returned them) into n elements of `size` bytes in `raw`. */
export async function decodeChunk(frames: Uint8Array, lengths: readonly number[], n: number, size: number, raw: Uint8Array): Promise<void> {
  (await planeCodec()).decode(frames, lengths, n, size, raw);
}

export type CodecJob =
  | { id: number; op: 'encode'; raw: Uint8Array; n: number; size: number; out: Uint8Array }
  | { id: number; op: 'decode'; frames: Uint8Array; lengths: number[]; n: number; size: number; raw: Uint8Array }
  // Several chunks in one message (posting a job costs more than decoding a small chunk): each is
  // [offset of its frames in `frames`, frame lengths, n, size, byte offset in `raw`].
  | { id: number; op: 'decodeMany'; frames: Uint8Array; raw: Uint8Array; chunks: [number, number[], number, number, number][] };

export type CodecReply = { id: number; lengths?: number[]; error?: string; corrupt?: boolean; /** decodeMany: the chunk that failed. */ failed?: number };

/** Runs one job; buffers are views of SharedArrayBuffers when the job crossed a thread. */
export async function runJob(job: CodecJob): Promise<CodecReply> {
  try {
    if (job.op === 'encode') return { id: job.id, lengths: await encodeChunk(job.raw, job.n, job.size, job.out) };
    if (job.op === 'decodeMany') {
      const codec = await planeCodec();
      for (let i = 0; i < job.chunks.length; i++) {
        const [at, lengths, n, size, to] = job.chunks[i];
        try {
          codec.decode(job.frames.subarray(at, at + lengths.reduce((a, b) => a + b, 0)), lengths, n, size, job.raw.subarray(to, to + n * size));
        } catch (e) {
          return { id: job.id, error: (e as Error).message, corrupt: e instanceof CorruptFrameError, failed: i };
        }
      }
      return { id: job.id };
    }
    await decodeChunk(job.frames, job.lengths, job.n, job.size, job.raw);
    return { id: job.id };
  } catch (e) {
    return { id: job.id, error: (e as Error).message, corrupt: e instanceof CorruptFrameError };
  }
}

export const WORKER_MARK = 'paramdelta-codec';

if (!isMainThread && parentPort && (workerData as { mark?: string } | null)?.mark === WORKER_MARK) {
  const port = parentPort;
  port.on('message', async (job: CodecJob) => port.postMessage(await runJob(job)));
  planeCodec().catch(() => undefined); // instantiated while the main thread plans; a failure surfaces on the first job

}
