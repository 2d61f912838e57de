// Chunk buffers (kernel memory, shared memory for codec workers) outlive one shard: a run of many shards
// would otherwise hold each shard's buffers until the garbage collector frees them, and peak memory would
// grow with the shard count. Each shard takes a set for itself; concurrent shards never share one.

import v8 from 'node:v8';
import vm from 'node:vm';

const idle = new Map<string, unknown[]>();

let gc: (() => void) | null | undefined;
let lastGc = -Infinity;
/**
 * A full collection, so the sets just dropped (kernel memory, shared memory: tens of MiB outside the
 * heap) are freed now rather than after another 64 MB of allocations, when V8 would get to them. At
 * most one a second: a switch of shape is rare in a run, frequent only in tests of tiny shards.
 */
function collectDropped(): void {
  const now = performance.now();
  if (now - lastGc < 1000) return;
  lastGc = now;
  if (gc === undefined) {
    try {
      v8.setFlagsFromString('--expose-gc');
      gc = vm.runInNewContext('gc') as () => void;
    } catch {
      gc = null;
    }
  }
  gc?.();
}
/** Sets kept idle at most, all shapes together (the most recently used). */
const KEEP = 2;
let order: string[] = [];

/**
 * Runs `use` with a set of buffers of the shape `key`: an idle one, or a new one from `create`. The set is
 * kept for reuse only when `use` succeeds: after a failure, work still in flight (a codec worker finishing
 * a chunk) may write into it.
 */
export async function withBuffers<T, R>(key: string, create: () => Promise<T>, use: (buffers: T) => Promise<R>): Promise<R> {
  const list = idle.get(key);
  let buffers = list?.pop() as T | undefined;
  if (buffers === undefined) {
    // A set of another shape is not coming back soon: let the collector have it before this one grows memory.
    const dropped = idle.size > 0;
    idle.clear();
    order = [];
    if (dropped) collectDropped();
    buffers = await create();
  }
  const result = await use(buffers);
  const kept = idle.get(key) ?? [];
  kept.push(buffers);
  idle.set(key, kept);
  order = [...order.filter((k) => k !== key), key];
  let total = [...idle.values()].reduce((a, l) => a + l.length, 0);
  while (total > KEEP) {
    const oldest = order.find((k) => (idle.get(k)?.length ?? 0) > 0)!;
    idle.get(oldest)!.shift();
    if (!idle.get(oldest)!.length) {
      idle.delete(oldest);
      order = order.filter((k) => k !== oldest);
    }
    total--;
  }
  return result;
}
