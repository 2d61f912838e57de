import { openCheckpoint } from '../../lib/format/checkpoint.js';
import { prepareApply } from '../../lib/ops/apply.js';
import { InputError } from '../../lib/errors.js';
import { listDeltas } from '../../lib/ops/registry.js';
import type { RepostBaseInput } from '../contracts.js';
import { pipeline } from '../pipeline.js';
import * as register from '../app.js';

export interface Compatibility {
  compatible: { name: string; ref: string; output: string }[];
  skipped: { name: string; reason: string }[];
}

/** Every registered delta that apply would accept onto the new base (names, shapes, dtypes, vocabularies, tied heads). */
export async function findCompatibleDeltas(input: RepostBaseInput): Promise<Compatibility> {
  const p = pipeline();
  await openCheckpoint(p.env.resolve(input.base));
  const { deltas, skipped } = await listDeltas(p.deltas(), p.env.resolve);
  const compatible: Compatibility['compatible'] = [];
  for (const d of deltas) {
    // Exactly what apply accepts: its own planning, which reads headers and tokenizers only.
    const reason = d.autoApply ? await refusal(() => prepareApply(p.env, input.base, [{ ref: d.ref }], { shardSize: p.settings.shardSize })) : 'autoApply is off for this delta';
    if (reason) skipped.push({ name: d.name, reason });
    else compatible.push({ name: d.name, ref: d.ref, output: `${p.settings.containers.postedModels}/${input.name}/${d.name}` });
  }
  return { compatible, skipped };
}

async function refusal(plan: () => Promise<unknown>): Promise<string | null> {
  try {
    await plan();
    return null;
  } catch (e) {
    if (e instanceof InputError) return e.message;
    throw e;
  }
}

register.activity('findCompatibleDeltas', { handler: findCompatibleDeltas });
