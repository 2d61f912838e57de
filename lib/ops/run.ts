import type { OutputTarget } from '../storage/output.js';
import { prepareCompute, executeComputeShard, finalizeCompute } from './compute.js';
import { executeApplyShard, finalizeApply } from './apply.js';
import { prepareFusedApply } from './fuse.js';
import type { FusionSpec } from '../fusion/options.js';
import { prepareConvert, executeConvertShard, finalizeConvert, type ConvertPlan } from './convert.js';
import type { DeltaFormat, DeltaManifest } from './manifest.js';
import type { ApplyPlan, ComputePlan, DeltaDtypePolicy } from './plan.js';
import type { ExecEnv } from './env.js';
import type { VocabPairing } from './vocab.js';

export interface RunHooks {
  /** Called once the plan is checked, before anything is written; gets the total input bytes. */
  onPlan?(plan: ComputePlan | ApplyPlan | ConvertPlan, inputBytes: number): void;
}

/** Runs a whole compute in this process: plan, every shard, then the index and manifest. */
export async function runCompute(
  env: ExecEnv & RunHooks,
  args: { base: string; post: string; policy?: DeltaDtypePolicy; shardSize: number; format?: DeltaFormat; chunkElements?: number },
  output: (plan: ComputePlan) => Promise<OutputTarget>,
): Promise<{ plan: ComputePlan; manifest: DeltaManifest }> {
  const plan = await prepareCompute(env, args.base, args.post, args);
  env.onPlan?.(plan, plan.shards.reduce((a, s) => a + s.inputBytes, 0));
  const out = await output(plan);
  try {
    const results = [];
    for (let i = 0; i < plan.shards.length; i++) results.push(await executeComputeShard(plan, i, env, out.store));
    const manifest = await finalizeCompute(plan, results, env, out.store);
    await out.publish();
    return { plan, manifest };
  } catch (e) {
    await out.discard().catch(() => undefined);
    throw e;
  }
}

/** Runs a whole apply in this process: plan, every shard, then the files and the index last. */
export async function runApply(
  env: ExecEnv & RunHooks,
  args: { base: string; deltas: { ref: string; scale?: number }[]; shardSize: number; vocab?: VocabPairing; fusion?: FusionSpec | null },
  output: (plan: ApplyPlan) => Promise<OutputTarget>,
): Promise<{ plan: ApplyPlan }> {
  const plan = await prepareFusedApply(env, args.base, args.deltas, { shardSize: args.shardSize, vocab: args.vocab, fusion: args.fusion });
  env.onPlan?.(plan, plan.shards.reduce((a, s) => a + s.inputBytes, 0));
  const out = await output(plan);
  try {
    for (let i = 0; i < plan.shards.length; i++) await executeApplyShard(plan, i, env, out.store);
    await finalizeApply(plan, env, out.store);
    await out.publish();
    return { plan };
  } catch (e) {
    await out.discard().catch(() => undefined);
    throw e;
  }
}

/** Converts a delta to the other layout in this process: plan, every shard, then the files and delta.json last. */
export async function runConvert(
  env: ExecEnv & RunHooks,
  args: { delta: string; to: DeltaFormat; shardSize: number; chunkElements?: number },
  output: (plan: ConvertPlan) => Promise<OutputTarget>,
): Promise<{ plan: ConvertPlan; manifest: DeltaManifest }> {
  const plan = await prepareConvert(env, args.delta, args);
  env.onPlan?.(plan, plan.shards.reduce((a, s) => a + s.inputBytes, 0));
  const out = await output(plan);
  try {
    const results = [];
    for (let i = 0; i < plan.shards.length; i++) results.push(await executeConvertShard(plan, i, env, out.store));
    const manifest = await finalizeConvert(plan, results, env, out.store);
    await out.publish();
    return { plan, manifest };
  } catch (e) {
    await out.discard().catch(() => undefined);
    throw e;
  }
}
