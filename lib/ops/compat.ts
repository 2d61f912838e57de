import { isFloatDType } from '../format/dtype.js';
import type { Checkpoint } from '../format/checkpoint.js';
import type { ModelIdentity } from './manifest.js';
import { InputError } from '../errors.js';
import { prepareApply } from './apply.js';
import type { ExecEnv } from './env.js';

/**
 * Why apply would refuse this delta on this new base, or null when it would accept it: apply's own
 * planning (headers, tokenizers, vocabularies, tied heads), so a re-post offers exactly what apply accepts.
 */
export async function applyRefusal(env: ExecEnv, baseRef: string, deltaRef: string, opts: { shardSize: number }): Promise<string | null> {
  try {
    await prepareApply(env, baseRef, [{ ref: deltaRef }], opts);
    return null;
  } catch (e) {
    if (e instanceof InputError) return e.message;
    throw e;
  }
}

/**
 * A stricter, header-only check kept for callers that have no delta folder at hand: why a delta recorded
 * against `recordedBase` cannot be applied to `candidate`, or null when it can:
 * same tensor names, shapes and float dtypes (non-float tensors are copied, so only names matter).
 */
export function incompatibility(recordedBase: ModelIdentity, candidate: Checkpoint): string | null {
  const problems: string[] = [];
  const recorded = new Map(recordedBase.tensors.map(([name, dtype, shape]) => [name, { dtype, shape }]));
  for (const [name, r] of recorded) {
    const c = candidate.byName.get(name);
    if (!c) problems.push(`tensor "${name}" is missing`);
    else if (JSON.stringify(c.shape) !== JSON.stringify(r.shape)) problems.push(`tensor "${name}" has shape [${c.shape}], the delta's base had [${r.shape}]`);
    else if (isFloatDType(r.dtype) && c.dtype !== r.dtype) problems.push(`tensor "${name}" is ${c.dtype}, the delta's base had ${r.dtype}`);
  }
  for (const t of candidate.tensors) if (!recorded.has(t.name)) problems.push(`tensor "${t.name}" is not in the delta's base`);
  if (!problems.length) return null;
  const shown = problems.slice(0, 3).join('; ');
  return problems.length > 3 ? `${shown}; and ${problems.length - 3} more` : shown;
}
