// Sign counts of two arrays compared element by element (SignCounts in report.ts).
import type { SignCounts } from './report.js';

export const noSigns = (): SignCounts => ({ elements: 0, agree: 0, disagree: 0, oneZero: 0, bothZero: 0 });

/** Adds the signs of x[0..n) against y[0..n) to `into`: zero is ±0, NaN is nonzero without a sign. */
export function countSigns(x: Float64Array, y: Float64Array, n: number, into: SignCounts): void {
  let agree = 0;
  let disagree = 0;
  let oneZero = 0;
  let bothZero = 0;
  // Branch-free: the signs of fine-tuning deltas are close to random, so branches on them mispredict.
  for (let e = 0; e < n; e++) {
    const a = x[e];
    const b = y[e];
    const za = +(a === 0);
    const zb = +(b === 0);
    const pa = +(a > 0);
    const na = +(a < 0);
    const pb = +(b > 0);
    const nb = +(b < 0);
    bothZero += za & zb;
    oneZero += za ^ zb;
    agree += (pa & pb) | (na & nb);
    disagree += (pa & nb) | (na & pb);
  }
  into.elements += n;
  into.agree += agree;
  into.disagree += disagree;
  into.oneZero += oneZero;
  into.bothZero += bothZero;
}

export function addSigns(into: SignCounts, from: SignCounts): void {
  into.elements += from.elements;
  into.agree += from.agree;
  into.disagree += from.disagree;
  into.oneZero += from.oneZero;
  into.bothZero += from.bothZero;
}
