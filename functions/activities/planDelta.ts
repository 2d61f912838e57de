import { prepareCompute } from '../../lib/ops/compute.js';
import { OUTPUT_KINDS } from '../../lib/ops/outputs.js';
import { assertBlobOutputApart } from '../../lib/storage/overlap.js';
import { type ComputePlan } from '../../lib/ops/plan.js';
import { clearForRun } from '../../lib/storage/output.js';
import type { ComputeDeltaInput, PlanRejected, PlanSummary } from '../contracts.js';
import { pipeline } from '../pipeline.js';
import { InputError } from '../../lib/errors.js';
import { SafetensorsError } from '../../lib/format/safetensors.js';
import * as register from '../app.js';

/** Reads both checkpoints' headers, checks them, and stores the plan as a blob; returns only a summary. */
export async function planDelta(input: ComputeDeltaInput & { runId: string }): Promise<PlanSummary | PlanRejected> {
  const p = pipeline();
  await p.ready();
  let plan;
  try {
    // Checked again here, whoever started the run: nothing below may write into or delete an input.
    assertBlobOutputApart({ label: 'output', ref: input.output }, [
      { label: 'base', ref: input.base },
      { label: 'post', ref: input.post },
    ]);
    plan = await prepareCompute(p.env, input.base, input.post, {
      policy: input.deltaDtype,
      format: input.deltaFormat ?? 'safetensors',
      shardSize: p.settings.shardSize,
    });
    // Refused unless empty or an earlier delta output; then only its own files are cleared.
    await clearForRun(p.env.resolve(input.output), OUTPUT_KINDS.delta, plan.shards.map((s) => s.file), `output ${input.output}`);
  } catch (e) {
    if (e instanceof InputError || e instanceof SafetensorsError) return { rejected: e.message };
    throw e;
  }
  await p.run<ComputePlan, unknown>(input.runId).savePlan(plan);
  return { runId: input.runId, planHash: plan.hash, shards: plan.shards.map((s) => ({ file: s.file, inputBytes: s.inputBytes })) };
}

register.activity('planDelta', { handler: planDelta });
