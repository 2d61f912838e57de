import type { ByteSource, Store } from '../storage/types.js';

/** Resolves a checkpoint reference (a path, or az://container/prefix) to its folder. */
export type Resolver = (ref: string) => Store;

/** Opens each input file once per run and closes them all at the end. */
export class SourceCache {
  private readonly open = new Map<string, Promise<ByteSource>>();
  constructor(private readonly resolve: Resolver) {}

  get(ref: string, file: string): Promise<ByteSource> {
    const key = `${ref}\u0000${file}`;
    let src = this.open.get(key);
    if (!src) {
      src = this.resolve(ref).openRead(file);
      this.open.set(key, src);
    }
    return src;
  }

  async closeAll(): Promise<void> {
    const all = [...this.open.values()];
    this.open.clear();
    await Promise.all(all.map(async (p) => (await p.catch(() => null))?.close()));
  }
}

/** Buffers for one chunk in flight: one per input, and the output. */
export interface Slot {
  inputs: Uint8Array[];
  out: Uint8Array;
  /** Further buffers an operation keeps per slot (compressed frames, in the compact layout). */
  aux?: Uint8Array[];
}

export interface TensorStream<R = Uint8Array> {
  count: number;
  elements(t: number): number;
  /** Fills the slot's inputs with elements [start, start+n) of tensor t. */
  read(t: number, start: number, n: number, slot: Slot): Promise<void>;
  /**
   * Processes a filled slot and returns what to write, or null. It runs the kernel synchronously; it may
   * return a promise for work that continues elsewhere (encoding on a codec worker), which overlaps with
   * the next chunks. Either way the slot's inputs are free once it returns.
   */
  compute(t: number, start: number, n: number, slot: Slot): R | Promise<R> | null;
  /** Writes a chunk's result; called in chunk order, whenever compute's results settle. */
  write?(result: R): Promise<void>;
  /** Called after a tensor's last chunk; a tensor may ask to be streamed again (writes are drained first). */
  finish?(t: number): 'next' | 'redo';
  redo?(t: number): Promise<void>;
}

/**
 * Streams tensors chunk by chunk through a ring of slots: while the kernel works on one chunk, the
 * next ones are being read and earlier ones encoded and written, so I/O, arithmetic and compression
 * overlap and memory stays at a few chunks whatever the model size. A slot's input buffers are free
 * once its chunk has been computed; its output buffers once that chunk's write has settled.
 */
export async function streamTensors<R = Uint8Array>(s: TensorStream<R>, slots: Slot[], chunkElements: number): Promise<void> {
  const k = slots.length;
  const writes: (Promise<void> | null)[] = slots.map(() => null);
  // Settles once the previous chunk's write has been issued: writes start in chunk order.
  let issued: Promise<void> = Promise.resolve();
  let job = 0;
  const drain = async () => {
    await Promise.all(writes);
    writes.fill(null);
  };
  try {
    for (let t = 0; t < s.count; t++) {
      const total = s.elements(t);
      const starts: number[] = [];
      for (let i = 0; i < total; i += chunkElements) starts.push(i);
      const size = (i: number) => Math.min(chunkElements, total - starts[i]);
      const first = job;
      const reads = new Map<number, Promise<void>>();
      const issue = (i: number) => {
        if (i >= starts.length || reads.has(i)) return;
        const r = s.read(t, starts[i], size(i), slots[(first + i) % k]);
        r.catch(() => undefined); // awaited in turn; keep an early failure from going unobserved
        reads.set(i, r);
      };
      for (let i = 0; i < k - 1; i++) issue(i);
      for (let i = 0; i < starts.length; i++, job++) {
        issue(i + k - 1);
        await reads.get(i);
        reads.delete(i);
        await writes[job % k];
        const out = s.compute(t, starts[i], size(i), slots[job % k]);
        if (out !== null && s.write) {
          const write = s.write.bind(s);
          let w: Promise<void> = Promise.resolve();
          const before = issued;
          issued = (async () => {
            const [, result] = await Promise.all([before, out]);
            w = write(result);
            w.catch(() => undefined);
          })();
          const settled = issued.then(() => w);
          settled.catch(() => undefined);
          writes[job % k] = settled;
        }
      }
      if (s.finish?.(t) === 'redo') {
        await drain();
        await s.redo?.(t);
        t--;
      }
    }
  } catch (e) {
    await drain().catch(() => undefined);
    throw e;
  }
  await drain();
}

/** Chunk length in elements so that `slots` slots of `bytesPerElement` fit in `budget` bytes. */
export function chunkElementsFor(bytesPerElement: number, budget: number, slots: number): number {
  const n = Math.floor(budget / (slots * bytesPerElement));
  return Math.max(4096, Math.min(1 << 21, n - (n % 64)));
}

/** chunkElementsFor, rounded down to whole `unit`-element compact chunks (at least one), so reads start on chunk boundaries. */
export function alignedChunkElements(bytesPerElement: number, budget: number, slots: number, unit: number): number {
  const n = chunkElementsFor(bytesPerElement, budget, slots);
  return Math.max(unit, n - (n % unit));
}
