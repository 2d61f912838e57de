import { finalizeCompute, type ComputeShardResult } from '../../lib/ops/compute.js';
import type { ComputePlan } from '../../lib/ops/plan.js';
import { REGISTRATION_FILE, listDeltas, type Registration } from '../../lib/ops/registry.js';
import { ANALYSIS_FILE, writeAnalysis } from '../../lib/analyze/index.js';
import { outputTags } from '../../lib/ops/outputs.js';
import type { ComputeDeltaInput } from '../contracts.js';
import { pipeline } from '../pipeline.js';
import * as register from '../app.js';

/**
 * Writes the delta index, the chat files, the registration (probes and gate too), and delta.json last;
 * then analysis.json, with the similarity to every other delta registered on the same base. The delta
 * is complete without its analysis: a failed analysis is reported in the result, not as a failed run.
 */
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
  let analysis: string;
  try {
    const { deltas } = await listDeltas(p.deltas(), p.env.resolve);
    const against = deltas
      .filter((d) => d.name !== input.name && d.manifest.base.signature === manifest.base.signature)
      .map((d) => ({ ref: d.ref, label: d.name }));
    await writeAnalysis(p.env, input.output, { against });
    analysis = ANALYSIS_FILE;
  } catch (e) {
    analysis = `not written: ${(e as Error).message}`;
  }
  return {
    delta: input.output,
    shards: manifest.shards.length,
    tensors: Object.keys(manifest.tensors).length,
    bytes: manifest.shards.reduce((a, s) => a + s.bytes, 0),
    rounded: Object.values(manifest.tensors).reduce((a, t) => a + t.rounded, 0),
    analysis,
  };
}

register.activity('finalizeDelta', { handler: finalizeDelta });
