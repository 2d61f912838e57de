// The masks of the sparse methods, element by element: which of a delta's elements a method keeps and its
// τ = w·Δ there (DARE: w·(Δ/density)), else 0. The one rule that apply's kernel and analyze's counts share.
import type { RankElement } from './select.js';

/** Which ranks of one delta's tensor are kept: [from, to) as the elements at those ranks (absent: 0, or n). */
export interface KeepRange {
  /** Nothing kept (the range starts at or past n, or is empty). */
  none?: boolean;
  from?: RankElement;
  to?: RankElement;
}

/**
 * How many elements equal to each boundary's magnitude went by in a tensor's stream so far: equal
 * magnitudes rank by flat index, so the first `ties` of them rank before the boundary.
 */
export interface TieProgress {
  seenFrom: number;
  seenTo: number;
}

const magWords = new Uint32Array(2);
const magValue = new Float64Array(magWords.buffer);
/** The float64 whose bits a boundary holds. */
export function magnitude(e: RankElement): number {
  magWords[0] = e.lo;
  magWords[1] = e.hi;
  return magValue[0];
}

/**
 * Rank methods: tau[j] = w·d[j] where element j ranks before `to` and not before `from`, else 0, for the
 * next `len` elements of the stream; advances the tie counts. Returns how many it kept.
 */
export function rankedTau(keep: KeepRange, p: TieProgress, d: Float64Array, w: number, len: number, tau: Float64Array): number {
  if (keep.none) {
    tau.fill(0, 0, len);
    return 0;
  }
  // Magnitudes compare as numbers (the same order as their bits), NaN above all; a NaN boundary compares bits.
  const from = keep.from ? magnitude(keep.from) : null;
  const to = keep.to ? magnitude(keep.to) : null;
  if ((from !== null && from !== from) || (to !== null && to !== to)) return rankedTauByBits(keep, p, d, w, len, tau);
  const F = from ?? Infinity;
  const T = to ?? -1;
  const ft = keep.from?.ties ?? 0;
  const tt = keep.to?.ties ?? 0;
  let seenFrom = p.seenFrom;
  let seenTo = p.seenTo;
  let kept = 0;
  for (let j = 0; j < len; j++) {
    const a = Math.abs(d[j]);
    const beforeTo = a > T || (a === T && seenTo++ < tt) || a !== a;
    const beforeFrom = from !== null && (a > F || (a === F && seenFrom++ < ft) || a !== a);
    const k = beforeTo && !beforeFrom;
    kept += +k;
    tau[j] = k ? w * d[j] : 0;
  }
  p.seenFrom = seenFrom;
  p.seenTo = seenTo;
  return kept;
}

/** Whether |x| (float64 bits hi:lo, sign cleared) ranks before the element e, `seen` of e's magnitude having gone by. */
const before = (hi: number, lo: number, e: RankElement, seen: number) => hi > e.hi || (hi === e.hi && (lo > e.lo || (lo === e.lo && seen < e.ties)));

/** rankedTau on bit patterns, for a NaN boundary (NaNs rank among themselves by payload). */
function rankedTauByBits(keep: KeepRange, p: TieProgress, d: Float64Array, w: number, len: number, tau: Float64Array): number {
  const words = new Uint32Array(d.buffer, d.byteOffset, 2 * len);
  let kept = 0;
  for (let j = 0; j < len; j++) {
    const hi = (words[2 * j + 1] & 0x7fffffff) >>> 0;
    const lo = words[2 * j];
    let beforeTo = true;
    if (keep.to) {
      beforeTo = before(hi, lo, keep.to, p.seenTo);
      if (hi === keep.to.hi && lo === keep.to.lo) p.seenTo++;
    }
    let beforeFrom = false;
    if (keep.from) {
      beforeFrom = before(hi, lo, keep.from, p.seenFrom);
      if (hi === keep.from.hi && lo === keep.from.lo) p.seenFrom++;
    }
    const k = beforeTo && !beforeFrom;
    kept += +k;
    tau[j] = k ? w * d[j] : 0;
  }
  return kept;
}

/** DARE: tau[j] = w·(d[j]/density) where u[j] < density (the division first), else 0. Returns how many it kept. */
export function dareTau(u: Float64Array, density: number, d: Float64Array, w: number, len: number, tau: Float64Array): number {
  let kept = 0;
  for (let j = 0; j < len; j++) {
    const k = u[j] < density;
    kept += +k;
    tau[j] = k ? w * (d[j] / density) : 0;
  }
  return kept;
}
