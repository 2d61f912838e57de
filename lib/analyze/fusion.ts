// What a sparse fusion method does to each delta, counted as the deltas stream: the elements each mask
// keeps, those that survive the sign election, and the signs between deltas, in all and among the kept
// elements. The rules are lib/fusion's (options, rank cut-offs by its radix select, DARE's numbers); the
// masks are applied here to count, not to combine.
import { dareTau, rankedTau, type KeepRange, type TieProgress } from '../fusion/mask.js';
import { electsSign, usesDare, usesRanks, type FusionSpec } from '../fusion/options.js';
import { boundaryRanks, keepRange } from '../fusion/ranks.js';
import { dareKey, dareUniforms } from '../fusion/rng.js';
import { RankSelect } from '../fusion/select.js';
import type { FusionCounts } from './report.js';
import { addSigns, countSigns, noSigns } from './signs.js';

export function noFusionCounts(deltas: number, electing: boolean): FusionCounts {
  const pairs: FusionCounts['pairs'] = [];
  for (let a = 0; a < deltas; a++) for (let b = a + 1; b < deltas; b++) pairs.push({ a, b, signs: noSigns(), kept: noSigns() });
  const zeros = () => new Array<number>(deltas).fill(0);
  return { elements: 0, kept: zeros(), nonzero: zeros(), ...(electing ? { elected: zeros() } : {}), pairs };
}

export function addFusionCounts(into: FusionCounts, from: FusionCounts): void {
  into.elements += from.elements;
  from.kept.forEach((x, k) => (into.kept[k] += x));
  from.nonzero.forEach((x, k) => (into.nonzero[k] += x));
  from.elected?.forEach((x, k) => (into.elected![k] += x));
  from.pairs.forEach((p, i) => {
    addSigns(into.pairs[i].signs, p.signs);
    addSigns(into.pairs[i].kept, p.kept);
  });
}

/** One tensor's state: its rank searches while ranking, then its kept ranges and tie counts while counting. */
interface TensorState {
  elements: number;
  selects: RankSelect[] | null;
  keep: KeepRange[] | null;
  /** Per delta: elements equal to each boundary's magnitude seen so far (equal magnitudes rank by flat index). */
  ties: TieProgress[];
  next: number;
  counts: FusionCounts;
}

/** Counts per tensor for one sparse method over K deltas with weights `scales`. */
export class FusionTally {
  private readonly states = new Map<string, TensorState>();
  private readonly electing: boolean;
  private readonly seed: bigint;
  private taus: Float64Array[] = [];
  private u = new Float64Array(0);

  constructor(
    readonly spec: FusionSpec,
    readonly scales: readonly number[],
  ) {
    this.electing = electsSign(spec.method);
    this.seed = BigInt(spec.seed ?? '0');
  }

  private state(name: string, elements: number): TensorState {
    let s = this.states.get(name);
    if (!s) {
      const K = this.scales.length;
      const ranked = usesRanks(this.spec.method);
      const needsPasses = ranked && boundaryRanks(this.spec, elements).length > 0;
      s = {
        elements,
        selects: null,
        // Ranges that need no cut-off (keep all, or nothing) are known at once.
        keep: ranked && !needsPasses ? this.scales.map(() => keepRange(this.spec, elements, [])) : null,
        ties: this.scales.map(() => ({ seenFrom: 0, seenTo: 0 })),
        next: 0,
        counts: noFusionCounts(K, this.electing),
      };
      this.states.set(name, s);
    }
    return s;
  }

  /** Whether the tensor's deltas still need a ranking pass before counting. */
  ranking(name: string, elements: number): boolean {
    return usesRanks(this.spec.method) && this.state(name, elements).keep === null;
  }

  /** Starts a ranking pass over the tensor (its first or a further one). */
  rankBegin(name: string, elements: number): void {
    const s = this.state(name, elements);
    s.selects ??= this.scales.map(() => new RankSelect(boundaryRanks(this.spec, elements), elements));
    s.selects.forEach((r) => r.begin());
  }

  /** Delta k's next n elements, in flat-index order, as float64 words. */
  rankVisit(name: string, k: number, words: Uint32Array, n: number): void {
    const r = this.states.get(name)!.selects![k];
    if (r.pending) r.visit(words, n);
  }

  /** Ends a ranking pass; true when the cut-offs are found (otherwise the tensor needs another pass). */
  rankEnd(name: string): boolean {
    const s = this.states.get(name)!;
    s.selects!.forEach((r) => r.end());
    if (s.selects!.some((r) => r.pending)) return false;
    s.keep = s.selects!.map((r) => keepRange(this.spec, s.elements, r.results()));
    s.selects = null;
    return true;
  }

  /** Counts elements start … start+n−1 of the tensor; deltas[k][0..n) holds delta k's values (widened), chunks in order. */
  count(name: string, elements: number, start: number, n: number, deltas: Float64Array[]): void {
    const s = this.state(name, elements);
    if (s.next !== start) throw new Error(`analyze: tensor "${name}" streamed out of order (${start}, expected ${s.next})`);
    s.next = start + n;
    const K = this.scales.length;
    if (this.taus.length < K || this.taus[0].length < n) this.taus = Array.from({ length: K }, () => new Float64Array(Math.max(n, this.taus[0]?.length ?? 0)));
    const c = s.counts;
    c.elements += n;
    for (let k = 0; k < K; k++) {
      const [kept, nonzero] = usesDare(this.spec.method) ? this.dareTau(name, k, start, n, deltas[k]) : this.rankTau(s, k, n, deltas[k]);
      c.kept[k] += kept;
      c.nonzero[k] += nonzero;
    }
    if (this.electing) this.elect(n, c.elected!);
    for (const pair of c.pairs) {
      countSigns(deltas[pair.a], deltas[pair.b], n, pair.signs);
      countSigns(this.taus[pair.a], this.taus[pair.b], n, pair.kept);
    }
  }

  /** DARE: τ = w·(Δ/density) where u[j] < density, else 0, into taus[k]; returns [kept, kept with τ ≠ 0]. */
  private dareTau(name: string, k: number, start: number, n: number, d: Float64Array): [number, number] {
    if (this.u.length < n) this.u = new Float64Array(n);
    const [kh, kl] = dareKey(k, name, this.seed);
    dareUniforms(kh, kl, start, n, this.u);
    const kept = dareTau(this.u, this.spec.density, d, this.scales[k], n, this.taus[k]);
    return [kept, nonzeros(this.taus[k], n)];
  }

  /** Rank methods: τ = w·Δ where the element's rank is in the kept range, else 0, into taus[k] (apply's own mask). */
  private rankTau(s: TensorState, k: number, n: number, d: Float64Array): [number, number] {
    const kept = rankedTau(s.keep![k], s.ties[k], d, this.scales[k], n, this.taus[k]);
    return [kept, nonzeros(this.taus[k], n)];
  }

  /** σ = sign(Σ τᵢ in order); counts per delta the τᵢ that enter the merge: nonzero with sign σ (none where σ is ±0 or NaN). */
  private elect(n: number, elected: number[]): void {
    const taus = this.taus;
    const K = this.scales.length;
    if (K === 2) {
      // The common case, without the inner loops.
      const t0 = taus[0];
      const t1 = taus[1];
      let e0 = 0;
      let e1 = 0;
      for (let e = 0; e < n; e++) {
        const a = t0[e];
        const b = t1[e];
        // τ ≠ 0 with sign σ exactly when τ·σ > 0 (σ is ±1, ±0 or NaN; |σ| = 1 keeps τ's magnitude), without branches.
        const sigma = Math.sign(a + b);
        e0 += +(a * sigma > 0);
        e1 += +(b * sigma > 0);
      }
      elected[0] += e0;
      elected[1] += e1;
      return;
    }
    const got = new Float64Array(K);
    for (let e = 0; e < n; e++) {
      let sum = taus[0][e];
      for (let k = 1; k < K; k++) sum = sum + taus[k][e];
      const sigma = Math.sign(sum);
      for (let k = 0; k < K; k++) {
        const t = taus[k][e];
        if (t !== 0 && Math.sign(t) === sigma) got[k]++;
      }
    }
    for (let k = 0; k < K; k++) elected[k] += got[k];
  }

  /** The tensor's counts once streamed (zeros for a tensor never streamed). */
  counts(name: string): FusionCounts {
    return this.states.get(name)?.counts ?? noFusionCounts(this.scales.length, this.electing);
  }
}

/** How many of t[0..n) are not zero (NaN counts). */
function nonzeros(t: Float64Array, n: number): number {
  let c = 0;
  for (let e = 0; e < n; e++) c += +(t[e] !== 0);
  return c;
}
