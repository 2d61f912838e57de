import { finalizeCompute, type ComputeShardResult } from '../../lib/ops/compute.js';
import type { ComputePlan } from '../../lib/ops/plan.js';
import { REGISTRATION_FILE, type Registration } from '../../lib/ops/registry.js';
import { outputTags } from '../../lib/ops/outputs.js';
import type { ComputeDeltaInput } from '../contracts.js';
import { pipeline } from '../pipeline.js';
import * as register from '../app.js';

/** Writes the delta index, the chat files, the registration (probes and gate too), and delta.json last. */
export async function finalizeDelta(input: ComputeDeltaInput & { runId: string; planHash: string }) {
  const p = pipeline();
  const run = p.run<ComputePlan, ComputeShardResult>(input.runId);
  const plan = await run.loadPlan(input.planHash);
  const results: ComputeShardResult[] = [];
  for (let i = 0; i < plan.shards.length; i++) {
    const r = await run.loadShardResult(i);
    if (!r) throw new Error(`run ${input.runId}: shard ${plan.shards[i].file} has no recorded result`);
    results.push(r);
  }
  const out = p.env.resolve(input.output);
  const registration: Registration = {
    autoApply: input.autoApply,
    ...(input.probes !== undefined ? { probes: input.probes } : {}),
    ...(input.gate !== undefined ? { gate: input.gate } : {}),
  };
  await out.writeFile(REGISTRATION_FILE, JSON.stringify(registration) + '\n', { metadata: outputTags('delta') });
  // Where base and post are, in delta.json: the gate later compares re-posts with this post model.
  const manifest = await finalizeCompute(plan, results, p.env, out, { base: input.base, post: input.post });
  return {
    delta: input.output,
    shards: manifest.shards.length,
    tensors: Object.keys(manifest.tensors).length,
    bytes: manifest.shards.reduce((a, s) => a + s.bytes, 0),
    rounded: Object.values(manifest.tensors).reduce((a, t) => a + t.rounded, 0),
  };
}

register.activity('finalizeDelta', { handler: finalizeDelta });
