import { prepareFusedApply } from '../../lib/ops/fuse.js';
import { checkFusion } from '../../lib/fusion/options.js';
import { OUTPUT_KINDS } from '../../lib/ops/outputs.js';
import { assertBlobOutputApart } from '../../lib/storage/overlap.js';
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
    // Checked again here, whoever started the run: nothing below may write into or delete an input.
    assertBlobOutputApart({ label: 'output', ref: input.output }, [
      { label: 'base', ref: input.base },
      ...input.deltas.map((d, i) => ({ label: `deltas.${i}`, ref: d.ref })),
    ]);
    const fusion = checkFusion(input);
    plan = await prepareFusedApply(p.env, input.base, input.deltas, { shardSize: p.settings.shardSize, fusion });
    // Refused unless empty or an earlier model output; then only its own files are cleared.
    await clearForRun(p.env.resolve(input.output), OUTPUT_KINDS.model, plan.shards.map((s) => s.file), `output ${input.output}`);
  } catch (e) {
    if (e instanceof InputError || e instanceof SafetensorsError) return { rejected: e.message };
    throw e;
  }
  await p.run<ApplyPlan, unknown>(input.runId).savePlan(plan);
  return { runId: input.runId, planHash: plan.hash, shards: plan.shards.map((s) => ({ file: s.file, inputBytes: s.inputBytes })) };
}

register.activity('planModel', { handler: planModel });
