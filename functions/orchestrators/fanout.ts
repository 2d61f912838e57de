import * as df from 'durable-functions';
import type { PlanRejected, PlanSummary, Progress, ShardDone, ShardTask } from '../contracts.js';

/** Activities are retried: delivery is at least once and a shard may meet a transient storage error. */
export function shardRetry(): df.RetryOptions {
  const r = new df.RetryOptions(2000, 4);
  r.backoffCoefficient = 2;
  return r;
}

export function report(ctx: df.OrchestrationContext, p: Progress): void {
  ctx.df.setCustomStatus(p);
}

/**
 * Runs one activity per shard, all scheduled at once by one Task.any over every shard task (the
 * fan-out). It then joins them in order, yielding each task on its own: an already scheduled task
 * adds no action when yielded again, whereas a second Task.any/Task.all over the same tasks would
 * schedule them twice. Progress thus moves shard by shard; a failed shard (after its retries)
 * rethrows at its turn and fails the orchestration.
 */
export function* fanOutShards(
  ctx: df.OrchestrationContext,
  activity: string,
  plan: PlanSummary,
  output: string,
): Generator<df.Task, ShardDone[], unknown> {
  const bytesTotal = plan.shards.reduce((a, s) => a + s.inputBytes, 0);
  const progress: Progress = { phase: 'shards', shardsDone: 0, shardsTotal: plan.shards.length, bytesDone: 0, bytesTotal };
  report(ctx, progress);
  if (plan.shards.length === 0) return [];
  const tasks = plan.shards.map((_, index) => {
    const input: ShardTask = { runId: plan.runId, planHash: plan.planHash, index, output };
    return ctx.df.callActivityWithRetry(activity, shardRetry(), input);
  });
  yield ctx.df.Task.any(tasks);
  const results: ShardDone[] = [];
  for (let i = 0; i < tasks.length; i++) {
    results.push((yield tasks[i]) as ShardDone);
    progress.shardsDone++;
    progress.bytesDone += plan.shards[i].inputBytes;
    report(ctx, progress);
  }
  return results;
}

/**
 * The shape shared by computeDelta and applyDeltas: a planning activity (headers only, plan stored
 * as a blob), one activity per shard, then a finalizing activity that writes the completion marker.
 */
export function* planShardsFinalize(
  ctx: df.OrchestrationContext,
  activities: { plan: string; shard: string; finalize: string },
  planInput: object,
  output: string,
  finalizeInput: (plan: PlanSummary) => object,
): Generator<df.Task, unknown, unknown> {
  report(ctx, { phase: 'planning', shardsDone: 0, shardsTotal: 0, bytesDone: 0, bytesTotal: 0 });
  const planned = (yield ctx.df.callActivityWithRetry(activities.plan, shardRetry(), { runId: ctx.df.instanceId, ...planInput })) as
    | PlanSummary
    | PlanRejected;
  if ('rejected' in planned) throw new Error(planned.rejected);
  const plan = planned;
  const shards = yield* fanOutShards(ctx, activities.shard, plan, output);
  const bytesTotal = plan.shards.reduce((a, s) => a + s.inputBytes, 0);
  const done = { shardsDone: shards.length, shardsTotal: shards.length, bytesDone: bytesTotal, bytesTotal };
  report(ctx, { phase: 'finalizing', ...done });
  const result = yield ctx.df.callActivityWithRetry(activities.finalize, shardRetry(), finalizeInput(plan));
  report(ctx, { phase: 'completed', ...done });
  return result;
}
