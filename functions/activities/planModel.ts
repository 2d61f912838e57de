import { prepareApply } from '../../lib/ops/apply.js';
import { MODEL_INDEX } from '../../lib/format/checkpoint.js';
import { type ApplyPlan } from '../../lib/ops/plan.js';
import { clearForRun } from '../../lib/storage/output.js';
import type { ApplyDeltasInput, PlanRejected, PlanSummary } from '../contracts.js';
import { pipeline } from '../pipeline.js';
import { InputError } from '../../lib/errors.js';
import { SafetensorsError } from '../../lib/format/safetensors.js';
import * as register from '../app.js';

/** Checks every delta against the new base (headers only) and stores the plan as a blob. */
export async function planModel(input: ApplyDeltasInput & { runId: string }): Promise<PlanSummary | PlanRejected> {
  const p = pipeline();
  await p.ready();
  let plan;
  try {
    plan = await prepareApply(p.env, input.base, input.deltas, { shardSize: p.settings.shardSize });
  } catch (e) {
    if (e instanceof InputError || e instanceof SafetensorsError) return { rejected: e.message };
    throw e;
  }
  await clearForRun(p.env.resolve(input.output), MODEL_INDEX, plan.shards.map((s) => s.file));
  await p.run<ApplyPlan, unknown>(input.runId).savePlan(plan);
  return { runId: input.runId, planHash: plan.hash, shards: plan.shards.map((s) => ({ file: s.file, inputBytes: s.inputBytes })) };
}

register.activity('planModel', { handler: planModel });
