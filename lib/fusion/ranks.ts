import { rankCount, type FusionSpec } from './options.js';
import type { KeepRange } from './mask.js';
import type { RankElement } from './select.js';

/** The ranks [a, b) a rank method keeps of a tensor of n elements: ties [0, k(density)); breadcrumbs [k(γ), k(γ) + k(density)), ranks past n dropped. */
export function keptRanks(spec: FusionSpec, n: number): { a: number; b: number } {
  const a = spec.method === 'ties' ? 0 : rankCount(spec.gamma ?? 0, n);
  return { a, b: Math.min(n, a + rankCount(spec.density, n)) };
}

/** The ranks whose elements a range needs found (none when it keeps everything or nothing). */
export function boundaryRanks(spec: FusionSpec, n: number): number[] {
  const { a, b } = keptRanks(spec, n);
  if (a >= b) return [];
  return [...(a > 0 ? [a] : []), ...(b < n ? [b] : [])];
}

/** The kept range, given the elements found at boundaryRanks (in that order). */
export function keepRange(spec: FusionSpec, n: number, found: readonly RankElement[]): KeepRange {
  const { a, b } = keptRanks(spec, n);
  if (a >= b) return { none: true };
  let i = 0;
  const range: KeepRange = {};
  if (a > 0) range.from = found[i++];
  if (b < n) range.to = found[i++];
  return range;
}
