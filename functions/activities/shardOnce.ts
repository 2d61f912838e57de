import type { Store } from '../../lib/storage/types.js';
import type { ExecEnv } from '../../lib/ops/env.js';
import type { ShardDone, ShardTask } from '../contracts.js';
import { pipeline } from '../pipeline.js';

/**
 * Runs one shard of a stored plan, at most once per plan: delivery is at least once, so a shard
 * already committed under the same plan hash (with its result recorded) is skipped, and any other
 * attempt rewrites the same blob with the same bytes.
 */
export async function shardOnce<P extends { hash: string; shards: { file: string }[] }, R extends { bytes: number }>(
  task: ShardTask,
  execute: (plan: P, index: number, env: ExecEnv, out: Store) => Promise<R>,
): Promise<ShardDone> {
  const p = pipeline();
  const run = p.run<P, R>(task.runId);
  const plan = await run.loadPlan(task.planHash);
  const out = p.env.resolve(task.output);
  const file = plan.shards[task.index].file;
  if ((await out.shardTag?.(file)) === plan.hash) {
    const done = await run.loadShardResult(task.index);
    if (done) return { file, bytes: done.bytes, skipped: true };
  }
  const result = await execute(plan, task.index, p.env, out);
  await run.saveShardResult(task.index, result);
  return { file, bytes: result.bytes, skipped: false };
}
