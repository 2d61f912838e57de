import { isFloatDType } from '../format/dtype.js';
import { widen } from '../fusion/combine.js';
import type { KeepRange } from '../fusion/mask.js';
import { usesRanks, type FusionSpec } from '../fusion/options.js';
import { boundaryRanks, keepRange } from '../fusion/ranks.js';
import { RankSelect } from '../fusion/select.js';
import { ApplyChunks, applySlots, prepareApply } from './apply.js';
import { withBuffers } from './buffers.js';
import type { ExecEnv } from './env.js';
import { rehash, type ApplyPlan } from './plan.js';
import { SourceCache, streamTensors } from './stream.js';
import type { VocabPairing } from './vocab.js';

/**
 * Plans an apply with a fusion method: prepareApply, then, for the rank methods, each tensor's kept
 * ranges per delta, found in streaming passes over the deltas before anything is written.
 */
export async function prepareFusedApply(
  env: ExecEnv,
  baseRef: string,
  deltas: { ref: string; scale?: number }[],
  opts: { shardSize: number; vocab?: VocabPairing; fusion?: FusionSpec | null },
): Promise<ApplyPlan> {
  const plan = await prepareApply(env, baseRef, deltas, opts);
  if (!plan.fusion || !usesRanks(plan.fusion.method)) return plan;
  return rehash({ ...plan, fusion: { ...plan.fusion, cutoffs: await rankCutoffs(plan, env) } });
}

const BLOCK = 8192;

async function rankCutoffs(plan: ApplyPlan, env: ExecEnv): Promise<Record<string, KeepRange[]>> {
  const spec = plan.fusion!;
  const cutoffs: Record<string, KeepRange[]> = {};
  const all = plan.shards.flatMap((s) => s.tensors).filter((t) => t.deltas.length > 0 && isFloatDType(t.dtype));
  for (const t of all) if (boundaryRanks(spec, t.elements).length === 0) cutoffs[t.name] = t.deltas.map(() => keepRange(spec, t.elements, []));
  const tensors = all.filter((t) => !cutoffs[t.name]);
  if (!tensors.length) return cutoffs;
  const buffers = applySlots(env, plan.deltas, tensors);
  await withBuffers(buffers.key, buffers.create, async ({ kernels, slots, chunk }) => {
    const sources = new SourceCache(env.resolve);
    const chunks = new ApplyChunks(plan, sources, kernels);
    const values = new Float64Array(BLOCK);
    const words = new Uint32Array(values.buffer);
    const scratch = new Uint32Array(BLOCK);
    let selects: RankSelect[] = [];
    try {
      await streamTensors(
        {
          count: tensors.length,
          elements: (t) => tensors[t].elements,
          read: (t, start, n, s) => chunks.read(tensors[t], start, n, s, false),
          compute: (t, start, n, s) => {
            const tp = tensors[t];
            if (start === 0) {
              // A tensor's first chunk starts a pass (its first, or a redo).
              if (!selects.length) selects = tp.deltas.map(() => new RankSelect(boundaryRanks(spec, tp.elements), tp.elements));
              selects.forEach((r) => r.begin());
            }
            for (const { a, b, deltas } of chunks.stretches(tp, n, s, false)) {
              deltas.forEach((d, k) => {
                if (!selects[k].pending) return;
                const size = d.data.byteLength / (b - a);
                if ((d.dtype === 'F32' || d.dtype === 'BF16') && selects[k].takesF32) {
                  // The first digit straight from the F32 (BF16: widened to F32) patterns, without float64.
                  selects[k].visitPatterns(d.data, size as 2 | 4, b - a);
                  return;
                }
                for (let at = 0; at < b - a; at += BLOCK) {
                  const len = Math.min(BLOCK, b - a - at);
                  widen(d.dtype, d.data.subarray(at * size), len, values, scratch);
                  selects[k].visit(words, len);
                }
              });
            }
            return null;
          },
          finish: (t) => {
            selects.forEach((r) => r.end());
            if (selects.some((r) => r.pending)) return 'redo';
            const tp = tensors[t];
            cutoffs[tp.name] = selects.map((r) => keepRange(spec, tp.elements, r.results()));
            selects = [];
            return 'next';
          },
          redo: async () => undefined,
        },
        slots,
        chunk,
      );
    } finally {
      await sources.closeAll();
    }
  });
  return cutoffs;
}
