// Chunk buffers (kernel memory, shared memory for codec workers) outlive one shard: a run of many shards
// would otherwise hold each shard's buffers until the garbage collector frees them, and peak memory would
// grow with the shard count. Each shard takes a set for itself; concurrent shards never share one.

const idle = new Map<string, unknown[]>();
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
    idle.clear();
    order = [];
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
