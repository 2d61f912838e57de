import { finalizeApply } from '../../lib/ops/apply.js';
import type { ApplyPlan } from '../../lib/ops/plan.js';
import { PENDING_INDEX } from '../../lib/eval/gate.js';
import { pipeline } from '../pipeline.js';
import * as register from '../app.js';

/**
 * Copies config and chat files, then writes model.safetensors.index.json last: the model is
 * complete. A held model (a re-post) gets its index under the pending name; its gate publishes it.
 */
export async function finalizeModel(input: { runId: string; planHash: string; output: string; held?: boolean }) {
  const p = pipeline();
  const plan = await p.run<ApplyPlan, unknown>(input.runId).loadPlan(input.planHash);
  await finalizeApply(plan, p.env, p.env.resolve(input.output), input.held ? { index: PENDING_INDEX } : {});
  return {
    model: input.output,
    shards: plan.shards.length,
    copied: plan.copied.length,
    files: plan.files.map((f) => f.file),
    ...(input.held ? { held: true } : {}),
  };
}

register.activity('finalizeModel', { handler: finalizeModel });
