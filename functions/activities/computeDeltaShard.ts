import * as df from 'durable-functions';
import { executeComputeShard, type ComputeShardResult } from '../../lib/ops/compute.js';
import type { ComputePlan } from '../../lib/ops/plan.js';
import type { ShardDone, ShardTask } from '../contracts.js';
import { pipeline } from '../pipeline.js';

/** Writes one delta shard; a shard already committed under the same plan is skipped (delivery is at least once). */
export async function computeDeltaShard(task: ShardTask): Promise<ShardDone> {
  const p = pipeline();
  const run = p.run<ComputePlan, ComputeShardResult>(task.runId);
  const plan = await run.loadPlan(task.planHash);
  const out = p.env.resolve(task.output);
  const file = plan.shards[task.index].file;
  if ((await out.shardTag?.(file)) === plan.hash) {
    const done = await run.loadShardResult(task.index);
    if (done) return { file, bytes: done.bytes, skipped: true };
  }
  const result = await executeComputeShard(plan, task.index, p.env, out);
  await run.saveShardResult(task.index, result);
  return { file, bytes: result.bytes, skipped: false };
}

df.app.activity('computeDeltaShard', { handler: computeDeltaShard });
