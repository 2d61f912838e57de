import * as df from 'durable-functions';
import { prepareCompute } from '../../lib/ops/compute.js';
import { DELTA_MANIFEST } from '../../lib/ops/manifest.js';
import { type ComputePlan } from '../../lib/ops/plan.js';
import { clearForRun } from '../../lib/storage/output.js';
import type { ComputeDeltaInput, PlanRejected, PlanSummary } from '../contracts.js';
import { pipeline } from '../pipeline.js';
import { InputError } from '../../lib/errors.js';
import { SafetensorsError } from '../../lib/format/safetensors.js';

/** Reads both checkpoints' headers, checks them, and stores the plan as a blob; returns only a summary. */
export async function planDelta(input: ComputeDeltaInput & { runId: string }): Promise<PlanSummary | PlanRejected> {
  const p = pipeline();
  await p.ready();
  let plan;
  try {
    plan = await prepareCompute(p.env, input.base, input.post, {
      policy: input.deltaDtype,
      format: input.deltaFormat ?? 'safetensors',
      shardSize: p.settings.shardSize,
    });
  } catch (e) {
    if (e instanceof InputError || e instanceof SafetensorsError) return { rejected: e.message };
    throw e;
  }
  await clearForRun(p.env.resolve(input.output), DELTA_MANIFEST, plan.shards.map((s) => s.file));
  await p.run<ComputePlan, unknown>(input.runId).savePlan(plan);
  return { runId: input.runId, planHash: plan.hash, shards: plan.shards.map((s) => ({ file: s.file, inputBytes: s.inputBytes })) };
}

df.app.activity('planDelta', { handler: planDelta });
