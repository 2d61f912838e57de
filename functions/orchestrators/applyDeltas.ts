import * as df from 'durable-functions';
import type { ApplyDeltasInput } from '../contracts.js';
import { planShardsFinalize } from './fanout.js';
import * as register from '../app.js';

/** new base + Σ sᵢ·Δᵢ: plan, one activity per output shard, then files and model.safetensors.index.json last. */
export function* applyDeltasOrchestrator(ctx: df.OrchestrationContext): Generator<df.Task, unknown, unknown> {
  const input = ctx.df.getInput() as ApplyDeltasInput;
  return yield* planShardsFinalize(
    ctx,
    { plan: 'planModel', shard: 'applyDeltaShard', finalize: 'finalizeModel' },
    input,
    input.output,
    (plan) => ({ runId: plan.runId, planHash: plan.planHash, output: input.output, ...(input.held ? { held: true } : {}) }),
  );
}

register.orchestration('applyDeltas', applyDeltasOrchestrator);
