import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import { planesBinary, runJob, WORKER_MARK, type CodecJob, type CodecReply } from './chunk.js';

/** A chunk's frames could not be decoded: the caller names the shard, tensor and chunk. */
export class ChunkDecodeError extends Error {
  override name = 'ChunkDecodeError';
  /** decodeMany: index of the chunk that failed. */
  chunk?: number;
}

type Pending = { job: CodecJob; resolve: (r: CodecReply) => void };

/**
 * The parent's Node options, less those that only make sense for an inline script: a worker inherits
 * execArgv, and Node refuses to start a file worker under `--input-type` (as `node --input-type=module -e`
 * runs the CLI in the benchmarks), which silently left every job on the calling thread.
 */
export function workerExecArgv(argv: readonly string[] = process.execArgv): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith('--input-type')) {
      if (a === '--input-type') i++;
      continue;
    }
    if (a === '-e' || a === '--eval' || a === '-p' || a === '--print') {
      i++;
      continue;
    }
    if (a.startsWith('--eval=') || a.startsWith('--print=')) continue;
    out.push(a);
  }
  return out;
}

/** Bytes that worker threads can read and write without a copy. */
export function sharedBytes(bytes: number): Uint8Array {
  return new Uint8Array(new SharedArrayBuffer(Math.max(8, bytes)));
}

function isShared(b: Uint8Array): boolean {
  return b.buffer instanceof SharedArrayBuffer;
}

/**
 * Encodes and decodes chunks on worker threads, so zstd runs on the other cores while the main thread reads,
 * runs the kernels and writes. Jobs go to whichever worker is free; buffers must be views of
 * SharedArrayBuffers (sharedBytes), or the job runs on the calling thread. With 0 threads every job runs
 * on the calling thread. Idle workers do not keep the process alive.
 */
export class CodecPool {
  private readonly workers: { w: Worker; busy: Pending | null }[] = [];
  private readonly queue: Pending[] = [];
  private seq = 0;
  private broken = false;
  private planes: Uint8Array | null = null;
  private starting: Promise<void> | null = null;

  constructor(readonly threads: number) {}

  private spawn(): void {
    const here = import.meta.url;
    // Built JavaScript next to the built pool; under the test runner the TypeScript source, which Node strips.
    const url = new URL(here.endsWith('.ts') ? './chunk.ts' : './chunk.js', here);
    const slot: { w: Worker; busy: Pending | null } = { w: new Worker(url, { execArgv: workerExecArgv(), workerData: { mark: WORKER_MARK, planes: this.planes } }), busy: null };
    slot.w.on('message', (r: CodecReply) => {
      const p = slot.busy;
      slot.busy = null;
      slot.w.unref();
      p?.resolve(r);
      this.pump();
    });
    // A worker that fails (cannot load the zstd binding, an old Node without type stripping under the test
    // runner) hands its job back: from then on every job runs on the calling thread.
    const fail = () => {
      const i = this.workers.indexOf(slot);
      if (i < 0) return;
      this.workers.splice(i, 1);
      this.broken = true;
      if (slot.busy) this.queue.unshift(slot.busy);
      slot.busy = null;
      this.pump();
    };
    slot.w.on('error', fail);
    slot.w.on('exit', fail);
    // After the listeners: adding a 'message' listener refs the worker's port again.
    slot.w.unref();
    this.workers.push(slot);
  }

  /** Workers get the transposes' binary, assembled here once, rather than each loading wabt. */
  private start(): Promise<void> {
    this.starting ??= planesBinary().then(
      (b) => {
        this.planes = b;
        this.pump();
      },
      () => {
        this.broken = true;
        this.pump();
      },
    );
    return this.starting;
  }

  /**
   * Starts every worker now rather than on the first job: a worker takes a few hundred milliseconds to load,
   * which then overlaps with planning instead of stalling the first chunks. Idle workers hold nothing open.
   */
  warm(): void {
    if (this.threads === 0 || this.broken) return;
    void this.start().then(() => {
      while (!this.broken && this.workers.length < this.threads) this.spawn();
    });
  }

  private pump(): void {
    while (this.queue.length) {
      if (this.broken || this.threads === 0) {
        const p = this.queue.shift()!;
        void runJob(p.job).then(p.resolve);
        continue;
      }
      if (!this.planes) {
        this.start();
        return;
      }
      if (this.workers.length < this.threads) this.spawn();
      const free = this.workers.find((s) => !s.busy);
      if (!free) return;
      const p = this.queue.shift()!;
      free.busy = p;
      free.w.ref();
      free.w.postMessage(p.job);
    }
  }

  private submit(job: CodecJob, shared: boolean): Promise<CodecReply> {
    if (!shared || this.threads === 0 || this.broken) return runJob(job);
    return new Promise((resolve) => {
      this.queue.push({ job, resolve });
      this.pump();
    });
  }

  /** Splits n elements of `size` bytes into byte planes and compresses each into `out`; returns the frame lengths. */
  async encode(raw: Uint8Array, n: number, size: number, out: Uint8Array): Promise<number[]> {
    const r = await this.submit({ id: this.seq++, op: 'encode', raw, n, size, out }, isShared(raw) && isShared(out));
    if (r.error) throw new Error(`zstd encoding failed: ${r.error}`);
    return r.lengths!;
  }

  /** Decodes one chunk's frames into `raw`; a corrupt frame raises ChunkDecodeError. */
  async decode(frames: Uint8Array, lengths: number[], n: number, size: number, raw: Uint8Array): Promise<void> {
    const r = await this.submit({ id: this.seq++, op: 'decode', frames, lengths, n, size, raw }, isShared(frames) && isShared(raw));
    if (r.error) throw r.corrupt ? new ChunkDecodeError(r.error) : new Error(`zstd decoding failed: ${r.error}`);
  }

  /**
   * Decodes several chunks whose frames lie in `frames` and whose elements go to `raw`, as one job per
   * worker at most (a message costs more than decoding a small chunk). Chunks: [frame offset, lengths, n,
   * size, byte offset in raw]. A corrupt frame raises ChunkDecodeError with `chunk` set to its index.
   */
  async decodeMany(frames: Uint8Array, raw: Uint8Array, chunks: [number, number[], number, number, number][]): Promise<void> {
    const shared = isShared(frames) && isShared(raw);
    const jobs = Math.max(1, Math.min(chunks.length, shared && !this.broken ? this.threads : 1));
    const per = Math.ceil(chunks.length / jobs);
    await Promise.all(
      Array.from({ length: jobs }, async (_, j) => {
        const part = chunks.slice(j * per, (j + 1) * per);
        if (!part.length) return;
        const r = await this.submit({ id: this.seq++, op: 'decodeMany', frames, raw, chunks: part }, shared);
        if (!r.error) return;
        if (!r.corrupt) throw new Error(`zstd decoding failed: ${r.error}`);
        const e = new ChunkDecodeError(r.error);
        e.chunk = j * per + (r.failed ?? 0);
        throw e;
      }),
    );
  }

  /** Worker threads running now (0 when every job runs on the calling thread). */
  get running(): number {
    return this.broken ? 0 : this.workers.length;
  }

  async close(): Promise<void> {
    const all = this.workers.splice(0);
    await Promise.all(all.map((s) => s.w.terminate()));
  }
}

let shared: CodecPool | null = null;

/** Codec threads: PARAMDELTA_CODEC_THREADS, else one per core up to 2 (the main thread keeps the kernels and I/O). */
export function codecThreads(): number {
  const env = process.env.PARAMDELTA_CODEC_THREADS;
  if (env !== undefined && /^\d+$/.test(env)) return Number(env);
  return Math.min(2, availableParallelism());
}

/** The process-wide pool (workers start on first use and never hold the process open). */
export function codecPool(): CodecPool {
  shared ??= new CodecPool(codecThreads());
  return shared;
}
