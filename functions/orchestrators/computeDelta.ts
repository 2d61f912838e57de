import * as df from 'durable-functions';
import type { ComputeDeltaInput, PlanSummary } from '../contracts.js';
import { fanOutShards, report, shardRetry } from './fanout.js';

/** Δ = post − base: plan (headers only), one activity per delta shard, then index and delta.json last. */
export function* computeDeltaOrchestrator(ctx: df.OrchestrationContext): Generator<df.Task, unknown, unknown> {
  const input = ctx.df.getInput() as ComputeDeltaInput;
  report(ctx, { phase: 'planning', shardsDone: 0, shardsTotal: 0, bytesDone: 0, bytesTotal: 0 });
  const plan = (yield ctx.df.callActivityWithRetry('planDelta', shardRetry(), { runId: ctx.df.instanceId, ...input })) as PlanSummary;
  const shards = yield* fanOutShards(ctx, 'computeDeltaShard', plan, input.output);
  const bytesTotal = plan.shards.reduce((a, s) => a + s.inputBytes, 0);
  report(ctx, { phase: 'finalizing', shardsDone: shards.length, shardsTotal: shards.length, bytesDone: bytesTotal, bytesTotal });
  const result = yield ctx.df.callActivityWithRetry('finalizeDelta', shardRetry(), { ...input, runId: plan.runId, planHash: plan.planHash });
  report(ctx, { phase: 'completed', shardsDone: shards.length, shardsTotal: shards.length, bytesDone: bytesTotal, bytesTotal });
  return result;
}

df.app.orchestration('computeDelta', computeDeltaOrchestrator);
