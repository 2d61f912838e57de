import * as df from 'durable-functions';
import { executeApplyShard, type ApplyShardResult } from '../../lib/ops/apply.js';
import type { ApplyPlan } from '../../lib/ops/plan.js';
import type { ShardDone, ShardTask } from '../contracts.js';
import { pipeline } from '../pipeline.js';

/** Writes one output shard; a shard already committed under the same plan is skipped. */
export async function applyDeltaShard(task: ShardTask): Promise<ShardDone> {
  const p = pipeline();
  const run = p.run<ApplyPlan, ApplyShardResult>(task.runId);
  const plan = await run.loadPlan(task.planHash);
  const out = p.env.resolve(task.output);
  const file = plan.shards[task.index].file;
  if ((await out.shardTag?.(file)) === plan.hash) {
    const done = await run.loadShardResult(task.index);
    if (done) return { file, bytes: done.bytes, skipped: true };
  }
  const result = await executeApplyShard(plan, task.index, p.env, out);
  await run.saveShardResult(task.index, result);
  return { file, bytes: result.bytes, skipped: false };
}

df.app.activity('applyDeltaShard', { handler: applyDeltaShard });
