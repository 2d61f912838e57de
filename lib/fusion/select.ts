// Exact rank cut-offs in bounded memory: a radix select over the float64 bit patterns of |Δ| (which order
// like the magnitudes, NaN above +Inf), a few streaming passes per tensor. Each pass histograms the next
// digit of the elements that share the digits found so far; once that bucket is small it is collected
// (bit pattern, flat index) and sorted, which also settles equal magnitudes by flat index. Nothing holds
// or sorts a whole tensor.
import { InputError } from '../errors.js';

/** The element at some rank: its |Δ| as float64 bits (hi, lo words) and its flat index. */
export interface RankElement {
  hi: number;
  lo: number;
  index: number;
}

/** Digits of the 63-bit pattern, from the top: widths 20, 16, 16, 12 (the sign bit is always 0). */
const WIDTHS = [20, 16, 16, 12];
/** A bucket at most this large is collected and sorted rather than histogrammed again (12 bytes an element). */
export const COLLECT_LIMIT = 1 << 18;

function digit(level: number, hi: number, lo: number): number {
  switch (level) {
    case 0:
      return hi >>> 12;
    case 1:
      return ((hi & 0xfff) << 4) | (lo >>> 28);
    case 2:
      return (lo >>> 12) & 0xffff;
    default:
      return lo & 0xfff;
  }
}

type Action = 'histogram' | 'collect' | 'ties';

/** Finds the element at rank r of one tensor's delta, ranks ordering |Δ| descending and then flat index ascending. */
class RankSearch {
  level = 0;
  readonly digits: number[] = [];
  /** Elements ranked strictly before the current bucket. */
  above = 0;
  /** Elements in the current bucket. */
  count: number;
  action: Action = 'histogram';
  hist: Uint32Array | null = null;
  got: { hi: Uint32Array; lo: Uint32Array; index: Float64Array; n: number } | null = null;
  seen = 0;
  result: RankElement | null = null;

  constructor(readonly rank: number, n: number, private readonly limit: number) {
    this.count = n;
  }

  begin(): void {
    this.action = this.count <= this.limit ? 'collect' : this.level < WIDTHS.length ? 'histogram' : 'ties';
    if (this.action === 'histogram') this.hist = new Uint32Array(1 << WIDTHS[this.level]);
    if (this.action === 'collect') this.got = { hi: new Uint32Array(this.count), lo: new Uint32Array(this.count), index: new Float64Array(this.count), n: 0 };
    this.seen = 0;
  }

  /** Values of elements start … start+n−1 as float64, viewed as u32 words (little-endian: lo, hi). */
  visit(start: number, words: Uint32Array, n: number): void {
    const L = this.level;
    const d = this.digits;
    const matches = (hi: number, lo: number) => {
      for (let l = 0; l < L; l++) if (digit(l, hi, lo) !== d[l]) return false;
      return true;
    };
    if (this.action === 'histogram') {
      const h = this.hist!;
      for (let j = 0; j < n; j++) {
        const hi = words[2 * j + 1] & 0x7fffffff;
        const lo = words[2 * j];
        if (L === 0 || matches(hi, lo)) h[digit(L, hi, lo)]++;
      }
    } else if (this.action === 'collect') {
      const g = this.got!;
      for (let j = 0; j < n; j++) {
        const hi = words[2 * j + 1] & 0x7fffffff;
        const lo = words[2 * j];
        if (matches(hi, lo)) {
          if (g.n === this.count) throw new InputError(`a delta changed while apply was ranking its magnitudes; plan again`);
          g.hi[g.n] = hi;
          g.lo[g.n] = lo >>> 0;
          g.index[g.n++] = start + j;
        }
      }
    } else {
      const need = this.rank - this.above;
      for (let j = 0; j < n && this.result === null; j++) {
        const hi = words[2 * j + 1] & 0x7fffffff;
        const lo = words[2 * j];
        if (matches(hi, lo) && this.seen++ === need) this.result = { hi, lo: lo >>> 0, index: start + j };
      }
    }
  }

  end(): void {
    const need = this.rank - this.above;
    if (this.action === 'histogram') {
      const h = this.hist!;
      let cum = 0;
      let bin = h.length - 1;
      for (; bin >= 0; bin--) {
        if (cum + h[bin] > need) break;
        cum += h[bin];
      }
      if (bin < 0) throw new InputError(`a delta changed while apply was ranking its magnitudes; plan again`);
      this.digits.push(bin);
      this.above += cum;
      this.count = h[bin];
      this.level++;
      this.hist = null;
    } else if (this.action === 'collect') {
      const g = this.got!;
      if (g.n !== this.count) throw new InputError(`a delta changed while apply was ranking its magnitudes; plan again`);
      // Collected in flat-index order; a stable sort by magnitude keeps equal ones in that order.
      const order = Array.from({ length: g.n }, (_, i) => i);
      order.sort((a, b) => g.hi[b] - g.hi[a] || g.lo[b] - g.lo[a]);
      const at = order[need];
      this.result = { hi: g.hi[at], lo: g.lo[at], index: g.index[at] };
      this.got = null;
    } else if (this.result === null) {
      throw new InputError(`a delta changed while apply was ranking its magnitudes; plan again`);
    }
  }
}

/** Several rank searches over the same stream of values (one delta of one tensor), pass by pass. */
export class RankSelect {
  private readonly searches: RankSearch[];
  /** `limit`: the largest bucket collected (smaller in tests, to exercise every kind of pass). */
  constructor(ranks: number[], n: number, limit = COLLECT_LIMIT) {
    this.searches = ranks.map((r) => {
      if (!(Number.isSafeInteger(r) && r >= 0 && r < n)) throw new RangeError(`rank ${r} outside [0, ${n})`);
      return new RankSearch(r, n, limit);
    });
  }

  get pending(): boolean {
    return this.searches.some((s) => s.result === null);
  }

  begin(): void {
    for (const s of this.searches) if (s.result === null) s.begin();
  }

  visit(start: number, words: Uint32Array, n: number): void {
    for (const s of this.searches) if (s.result === null) s.visit(start, words, n);
  }

  end(): void {
    for (const s of this.searches) if (s.result === null) s.end();
  }

  /** The elements at the given ranks, once no search is pending. */
  results(): RankElement[] {
    return this.searches.map((s) => s.result!);
  }
}
