import { finalizeApply } from '../../lib/ops/apply.js';
import type { ApplyPlan } from '../../lib/ops/plan.js';
import { pipeline } from '../pipeline.js';
import * as register from '../app.js';

/** Copies config and chat files, then writes model.safetensors.index.json last: the model is complete. */
export async function finalizeModel(input: { runId: string; planHash: string; output: string }) {
  const p = pipeline();
  const plan = await p.run<ApplyPlan, unknown>(input.runId).loadPlan(input.planHash);
  await finalizeApply(plan, p.env, p.env.resolve(input.output));
  return { model: input.output, shards: plan.shards.length, copied: plan.copied.length, files: plan.files.map((f) => f.file) };
}

register.activity('finalizeModel', { handler: finalizeModel });
