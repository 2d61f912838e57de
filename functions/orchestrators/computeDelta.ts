import * as df from 'durable-functions';
import type { ComputeDeltaInput } from '../contracts.js';
import { planShardsFinalize } from './fanout.js';
import * as register from '../app.js';

/** Δ = post − base: plan (headers only), one activity per delta shard, then index and delta.json last. */
export function* computeDeltaOrchestrator(ctx: df.OrchestrationContext): Generator<df.Task, unknown, unknown> {
  const input = ctx.df.getInput() as ComputeDeltaInput;
  return yield* planShardsFinalize(
    ctx,
    { plan: 'planDelta', shard: 'computeDeltaShard', finalize: 'finalizeDelta' },
    input,
    input.output,
    (plan) => ({ ...input, runId: plan.runId, planHash: plan.planHash }),
  );
}

register.orchestration('computeDelta', computeDeltaOrchestrator);
