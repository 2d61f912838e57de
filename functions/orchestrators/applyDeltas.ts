import * as df from 'durable-functions';
import type { ApplyDeltasInput, PlanSummary } from '../contracts.js';
import { fanOutShards, report, shardRetry } from './fanout.js';

/** new base + Σ sᵢ·Δᵢ: plan, one activity per output shard, then files and model.safetensors.index.json last. */
export function* applyDeltasOrchestrator(ctx: df.OrchestrationContext): Generator<df.Task, unknown, unknown> {
  const input = ctx.df.getInput() as ApplyDeltasInput;
  report(ctx, { phase: 'planning', shardsDone: 0, shardsTotal: 0, bytesDone: 0, bytesTotal: 0 });
  const plan = (yield ctx.df.callActivityWithRetry('planModel', shardRetry(), { runId: ctx.df.instanceId, ...input })) as PlanSummary;
  const shards = yield* fanOutShards(ctx, 'applyDeltaShard', plan, input.output);
  const bytesTotal = plan.shards.reduce((a, s) => a + s.inputBytes, 0);
  report(ctx, { phase: 'finalizing', shardsDone: shards.length, shardsTotal: shards.length, bytesDone: bytesTotal, bytesTotal });
  const result = yield ctx.df.callActivityWithRetry('finalizeModel', shardRetry(), { runId: plan.runId, planHash: plan.planHash, output: input.output });
  report(ctx, { phase: 'completed', shardsDone: shards.length, shardsTotal: shards.length, bytesDone: bytesTotal, bytesTotal });
  return result;
}

df.app.orchestration('applyDeltas', applyDeltasOrchestrator);
