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
}

export interface TensorStream {
  count: number;
  elements(t: number): number;
  /** Fills the slot's inputs with elements [start, start+n) of tensor t. */
  read(t: number, start: number, n: number, slot: Slot): Promise<void>;
  /** Processes a filled slot; returns the bytes to write, or null. Synchronous: it runs the kernel. */
  compute(t: number, start: number, n: number, slot: Slot): Uint8Array | null;
  write?(bytes: Uint8Array): Promise<void>;
  /** Called after a tensor's last chunk; a tensor may ask to be streamed again (writes are drained first). */
  finish?(t: number): 'next' | 'redo';
  redo?(t: number): Promise<void>;
}

/**
 * Streams tensors chunk by chunk with two slots: while the kernel works on one chunk, the next
 * chunk is being read and the previous one written, so I/O and arithmetic overlap and memory
 * stays at two chunks whatever the model size.
 */
export async function streamTensors(s: TensorStream, slots: [Slot, Slot], chunkElements: number): Promise<void> {
  const writes: (Promise<void> | null)[] = [null, null];
  let job = 0;
  const drain = async () => {
    await Promise.all(writes);
    writes[0] = writes[1] = null;
  };
  try {
    for (let t = 0; t < s.count; t++) {
      const total = s.elements(t);
      const starts: number[] = [];
      for (let i = 0; i < total; i += chunkElements) starts.push(i);
      const size = (i: number) => Math.min(chunkElements, total - starts[i]);
      let pending: Promise<void> | null = starts.length ? s.read(t, 0, size(0), slots[job % 2]) : null;
      for (let i = 0; i < starts.length; i++, job++) {
        const slot = slots[job % 2];
        const next = i + 1 < starts.length ? s.read(t, starts[i + 1], size(i + 1), slots[(job + 1) % 2]) : null;
        // Keep the prefetch from rejecting unobserved while we wait on the current chunk.
        next?.catch(() => undefined);
        await pending;
        await writes[job % 2];
        const out = s.compute(t, starts[i], size(i), slot);
        if (out && s.write) {
          const w = s.write(out);
          w.catch(() => undefined);
          writes[job % 2] = w;
        }
        pending = next;
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

/** Chunk length in elements so that two slots of `bytesPerElement` fit in `budget` bytes. */
export function chunkElementsFor(bytesPerElement: number, budget: number): number {
  const n = Math.floor(budget / (2 * bytesPerElement));
  return Math.max(4096, Math.min(1 << 21, n - (n % 64)));
}
