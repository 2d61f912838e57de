import { openCheckpoint } from '../../lib/format/checkpoint.js';
import { applyRefusal } from '../../lib/ops/compat.js';
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
    const reason = d.autoApply ? await applyRefusal(p.env, input.base, d.ref, { shardSize: p.settings.shardSize }) : 'autoApply is off for this delta';
    if (reason) skipped.push({ name: d.name, reason });
    else compatible.push({ name: d.name, ref: d.ref, output: `${p.settings.containers.postedModels}/${input.name}/${d.name}` });
  }
  return { compatible, skipped };
}

register.activity('findCompatibleDeltas', { handler: findCompatibleDeltas });
