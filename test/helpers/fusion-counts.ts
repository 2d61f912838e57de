// analyze's sign counts and a sparse method's kept/elected counts, computed by the rules written out
// here, independently of lib/fusion and lib/analyze (full sorts for the ranks, BigInt random numbers), from
// float64 deltas the tests take from the fixture models (post − base).
import path from 'node:path';
import { loadTensors } from './models.js';
import { decodeFloats } from './floats.js';

export const M64 = (1n << 64n) - 1n;
export function fnv1a64(s: string): bigint {
  let h = 0xcbf29ce484222325n;
  for (const b of Buffer.from(s, 'utf8')) h = ((h ^ BigInt(b)) * 0x100000001b3n) & M64;
  return h;
}
export function splitmix64(x: bigint): bigint {
  let z = (x + 0x9e3779b97f4a7c15n) & M64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
  return z ^ (z >> 31n);
}

export interface Signs {
  elements: number;
  agree: number;
  disagree: number;
  oneZero: number;
  bothZero: number;
}
/** Signs of x against y, element by element: both nonzero and the same sign, opposite signs, one zero, both zero. */
export function signs(x: ArrayLike<number>, y: ArrayLike<number>): Signs {
  const s = { elements: x.length, agree: 0, disagree: 0, oneZero: 0, bothZero: 0 };
  for (let j = 0; j < x.length; j++) {
    const a = x[j];
    const b = y[j];
    if (a === 0 && b === 0) s.bothZero++;
    else if (a === 0 || b === 0) s.oneZero++;
    else if (Number.isNaN(a) || Number.isNaN(b)) continue; // nonzero, without a sign
    else if (Math.sign(a) === Math.sign(b)) s.agree++;
    else s.disagree++;
  }
  return s;
}
export const sumSigns = (all: Signs[]): Signs =>
  all.reduce((a, s) => ({ elements: a.elements + s.elements, agree: a.agree + s.agree, disagree: a.disagree + s.disagree, oneZero: a.oneZero + s.oneZero, bothZero: a.bothZero + s.bothZero }), {
    elements: 0, agree: 0, disagree: 0, oneZero: 0, bothZero: 0,
  });

export interface Counts {
  elements: number;
  kept: number[];
  nonzero: number[];
  elected?: number[];
  pairs: { a: number; b: number; signs: Signs; kept: Signs }[];
}

export type Method = 'ties' | 'dare-linear' | 'dare-ties' | 'breadcrumbs' | 'breadcrumbs-ties';
export interface Spec {
  method: Method;
  density: number;
  gamma?: number;
  seed?: string;
}

/** One tensor's counts: masks by full sorts (ties) or BigInt DARE numbers, τ, sign election, and signs per pair. */
export function tensorCounts(name: string, deltas: number[][], weights: number[], s: Spec): Counts {
  const n = deltas[0].length;
  const k = (f: number) => Math.floor(f * n + 0.5);
  const masks = deltas.map((d, i) => {
    if (s.method.startsWith('dare')) {
      const key = fnv1a64(`${i}:${name}`) ^ BigInt(s.seed ?? '0');
      return d.map((_, j) => Number(splitmix64((key + BigInt(j)) & M64) >> 11n) * 2 ** -53 < s.density);
    }
    // |Δ| descending, NaN above +Inf (one NaN payload here), equal magnitudes by lower index first.
    const order = d.map((_, j) => j).sort((a, b) => {
      const [A, B] = [Math.abs(d[a]), Math.abs(d[b])];
      if (Number.isNaN(A) || Number.isNaN(B)) return Number.isNaN(A) && Number.isNaN(B) ? a - b : Number.isNaN(A) ? -1 : 1;
      return A === B ? a - b : B - A;
    });
    const rank = new Array<number>(n);
    order.forEach((j, r) => (rank[j] = r));
    const lo = s.method === 'ties' ? 0 : k(s.gamma ?? 0.01);
    const hi = lo + k(s.density);
    return d.map((_, j) => rank[j] >= lo && rank[j] < hi);
  });
  const taus = deltas.map((d, i) => d.map((x, j) => (!masks[i][j] ? 0 : s.method.startsWith('dare') ? weights[i] * (x / s.density) : weights[i] * x)));
  const c: Counts = {
    elements: n,
    kept: masks.map((m) => m.filter(Boolean).length),
    nonzero: taus.map((t, i) => t.filter((x, j) => masks[i][j] && x !== 0).length),
    pairs: [],
  };
  if (s.method.endsWith('ties')) {
    c.elected = taus.map(() => 0);
    for (let j = 0; j < n; j++) {
      let sum = taus[0][j];
      for (let i = 1; i < taus.length; i++) sum = sum + taus[i][j];
      taus.forEach((t, i) => {
        if (t[j] !== 0 && Math.sign(t[j]) === Math.sign(sum)) c.elected![i]++;
      });
    }
  }
  for (let a = 0; a < deltas.length; a++) for (let b = a + 1; b < deltas.length; b++) c.pairs.push({ a, b, signs: signs(deltas[a], deltas[b]), kept: signs(taus[a], taus[b]) });
  return c;
}

export function sumCounts(all: Counts[]): Counts {
  const first = all[0];
  return {
    elements: all.reduce((a, c) => a + c.elements, 0),
    kept: first.kept.map((_, i) => all.reduce((a, c) => a + c.kept[i], 0)),
    nonzero: first.nonzero.map((_, i) => all.reduce((a, c) => a + c.nonzero[i], 0)),
    ...(first.elected ? { elected: first.elected.map((_, i) => all.reduce((a, c) => a + c.elected![i], 0)) } : {}),
    pairs: first.pairs.map((p, i) => ({ a: p.a, b: p.b, signs: sumSigns(all.map((c) => c.pairs[i].signs)), kept: sumSigns(all.map((c) => c.pairs[i].kept)) })),
  };
}

async function floats(dir: string): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>();
  for (const [name, t] of await loadTensors(dir)) out.set(name, decodeFloats(t.dtype, t.bytes));
  return out;
}
/** post − base per tensor, in float64 (exact: the deltas are lossless). */
export async function deltaOf(family: string, post: string): Promise<Map<string, number[]>> {
  const [b, p] = await Promise.all([floats(path.join(family, 'base')), floats(path.join(family, post))]);
  return new Map([...b].map(([name, v]) => [name, p.get(name)!.map((x, i) => x - v[i])]));
}

