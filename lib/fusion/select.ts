// Exact rank cut-offs in bounded memory: a radix select over the float64 bit patterns of |Δ| (which order
// like the magnitudes, NaN above +Inf), a few streaming passes per tensor. Each pass histograms the next
// digit of the elements that share the digits found so far; a bin that holds one magnitude only settles it
// at once (common: deltas of 16-bit models have few distinct values), and a small mixed bin is collected
// and sorted. Nothing holds or sorts a whole tensor.
import { InputError } from '../errors.js';
import { KEYHIST_BLOCK, giveKeyHist, takeKeyHist, type KeyHist } from './keyhist.js';

/**
 * The element at some rank, as its |Δ| (float64 bits, hi and lo words) and how many elements of that same
 * magnitude rank before it: equal magnitudes rank by flat index, so those are the first `ties` of them in
 * index order. An element ranks before it when its |Δ| is larger, or equal and among those first `ties`.
 */
export interface RankElement {
  hi: number;
  lo: number;
  ties: number;
}

/** Digits of the 63-bit pattern, from the top: widths 20, 16, 16, 12 (the sign bit is always 0). */
const WIDTHS = [20, 16, 16, 12];
/** A bucket at most this large is collected and sorted rather than histogrammed again (12 bytes an element). */
export const COLLECT_LIMIT = 1 << 18;
/** Before any histogram pass, a tensor is collected whole only when at most this large. */
const FIRST_COLLECT_LIMIT = 1 << 14;

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

type Action = 'histogram' | 'collect';

/** A histogram pass's arrays: counts, and per bin its first pattern and whether another followed. */
interface Bins {
  hist: Uint32Array;
  firstHi: Uint32Array;
  firstLo: Uint32Array;
  mixed: Uint8Array;
}
// Reused from tensor to tensor (13 MiB a set at the first digit), so that a model of many tensors does not
// leave a trail of them for the collector: peak memory stays at the sets in use at once.
const spare: Bins[] = [];
const SPARE_SETS = 4;

function takeBins(bins: number): Bins {
  const i = spare.findIndex((b) => b.hist.length === bins);
  if (i < 0) return { hist: new Uint32Array(bins), firstHi: new Uint32Array(bins), firstLo: new Uint32Array(bins), mixed: new Uint8Array(bins) };
  const b = spare.splice(i, 1)[0];
  b.hist.fill(0);
  b.mixed.fill(0);
  return b;
}

function giveBins(b: Bins): void {
  spare.push(b);
  if (spare.length > SPARE_SETS) spare.shift();
}

/** The (hi, lo) masks of the top `bits` bits of the 64-bit pattern. */
function masks(bits: number): [number, number] {
  const hiBits = Math.min(32, bits);
  const loBits = Math.max(0, bits - 32);
  return [hiBits === 0 ? 0 : (0xffffffff << (32 - hiBits)) >>> 0, loBits === 0 ? 0 : (0xffffffff << (32 - loBits)) >>> 0];
}

/** Finds the element at rank r of one tensor's delta, ranks ordering |Δ| descending and then flat index ascending. */
class RankSearch {
  level = 0;
  /** Top bits settled so far, and their value: an element is in the current bucket when its top bits equal it. */
  bits = 0;
  maskHi = 0;
  maskLo = 0;
  valueHi = 0;
  valueLo = 0;
  /** Elements ranked strictly before the current bucket. */
  above = 0;
  /** Elements in the current bucket. */
  count: number;
  action: Action = 'histogram';
  /** A histogram pass's bins: counts, and each bin's first element's pattern and whether a different one followed (equal magnitudes are common). */
  bins: Bins | null = null;
  /** visitF32's counts, by the top 16 bits of the F32 magnitude (see visitF32). */
  keys: { hist: Uint32Array; first: Uint32Array; mixed: Uint8Array } | null = null;
  got: { hi: Uint32Array; lo: Uint32Array; n: number } | null = null;
  result: RankElement | null = null;

  constructor(readonly rank: number, n: number, private readonly limit: number) {
    this.count = n;
  }

  begin(): void {
    // A whole small tensor is collected at once; a larger one is histogrammed first (cheaper than sorting it).
    this.action = this.count <= (this.level === 0 ? Math.min(this.limit, FIRST_COLLECT_LIMIT) : this.limit) ? 'collect' : 'histogram';
    if (this.action === 'histogram') this.bins = takeBins(1 << WIDTHS[this.level]);
    if (this.action === 'collect') this.got = { hi: new Uint32Array(this.count), lo: new Uint32Array(this.count), n: 0 };
  }

  /** Whether visitF32 may take this pass's elements: the first digit's histogram. */
  get takesF32(): boolean {
    // The second digit too (or the bucket's collection), when the bucket holds normal F32 magnitudes
    // (float64 exponents 897 … 1150).
    const e = this.valueHi >>> 20;
    if (this.level === 0) return this.action === 'histogram';
    return this.level === 1 && e >= 897 && e <= 1150;
  }

  /**
   * The first digit's histogram from F32 bit patterns, without widening: a normal F32's top 16 magnitude bits
   * (exponent, 8 mantissa bits) map one to one onto the float64 pattern's top 20, so they are counted in a
   * small array of their own (cache-resident) and folded into the bins at end(); zeros, subnormals, Inf and
   * NaN are widened and counted as visit does.
   */
  visitF32(bits: Uint32Array, n: number): void {
    if (this.level === 1) return this.visitF32Second(bits, n);
    const k = (this.keys ??= { hist: new Uint32Array(1 << 16), first: new Uint32Array(1 << 16), mixed: new Uint8Array(1 << 16) });
    const { hist: kh, first: kf, mixed: km } = k;
    for (let j = 0; j < n; j++) {
      const w = bits[j] & 0x7fffffff;
      // Zeros (common in deltas) take the key path too, as key 0 (subnormals, the other patterns of that key,
      // do not); the test is branch-free, so that only a rare subnormal, Inf or NaN branches.
      if ((+(((w - 0x800000) >>> 0) >= 0x7f000000) & +(w !== 0)) !== 0) {
        this.countRare(w);
        continue;
      }
      const key = w >>> 15;
      if (kh[key]++ === 0) kf[key] = w;
      km[key] |= +(kf[key] !== w);
    }
  }

  /** The first digit of a subnormal, Inf or NaN F32 magnitude (pattern w), widened to float64 as visit counts it. */
  countRare(w: number): void {
    const { hist: h, firstHi: fh, firstLo: fl, mixed } = this.bins!;
    f32Bits[0] = w;
    f64Value[0] = f32Value[0];
    const hi = f64Words[1] & 0x7fffffff;
    const lo = f64Words[0];
    const b = hi >>> 12;
    if (h[b]++ === 0) {
      fh[b] = hi;
      fl[b] = lo;
    } else if (fh[b] !== hi || fl[b] !== lo) mixed[b] = 1;
  }

  /** Folds a KeyHist's table (per key: count, unused, OR of patterns, OR of complements) into the bins, as foldF32 folds visitF32's counts. */
  foldKeys(table: Uint32Array): void {
    const { hist: h, firstHi: fh, firstLo: fl, mixed } = this.bins!;
    for (let key = 0; key < 1 << 16; key++) {
      const c = table[4 * key];
      if (c === 0) continue;
      // One pattern exactly when no bit is set in one and clear in another; then OR is that pattern.
      const w = table[4 * key + 2];
      const many = (w & table[4 * key + 3]) !== 0 ? 1 : 0;
      const hi = key === 0 ? 0 : ((((w >>> 23) + 896) << 20) | ((w >>> 3) & 0xfffff)) >>> 0;
      const b = hi >>> 12;
      const lo = ((w & 7) << 29) >>> 0;
      if (h[b] === 0) {
        fh[b] = hi;
        fl[b] = lo;
        mixed[b] = many;
      } else if (many || fh[b] !== hi || fl[b] !== lo) mixed[b] = 1;
      h[b] += c;
    }
  }

  /**
   * The second digit (or the bucket's collection) from F32 patterns: the bucket's elements are the normal F32s whose top 16 magnitude bits
   * are its key, and the digit, float64 bits 43 … 28, is then their low 15 bits shifted left once.
   */
  private visitF32Second(bits: Uint32Array, n: number): void {
    const key = (((this.valueHi >>> 20) - 896) << 8) | ((this.valueHi >>> 12) & 0xff);
    if (this.action === 'collect') {
      const g = this.got!;
      for (let j = 0; j < n; j++) {
        const w = bits[j] & 0x7fffffff;
        if (w >>> 15 !== key) continue;
        if (g.n === this.count) throw changed();
        g.hi[g.n] = ((((w >>> 23) + 896) << 20) | ((w >>> 3) & 0xfffff)) >>> 0;
        g.lo[g.n++] = ((w & 7) << 29) >>> 0;
      }
      return;
    }
    const { hist: h, firstHi: fh, firstLo: fl, mixed } = this.bins!;
    for (let j = 0; j < n; j++) {
      const w = bits[j] & 0x7fffffff;
      if (w >>> 15 !== key) continue;
      const hi = ((((w >>> 23) + 896) << 20) | ((w >>> 3) & 0xfffff)) >>> 0;
      const lo = ((w & 7) << 29) >>> 0;
      const b = (w & 0x7fff) << 1;
      if (h[b]++ === 0) {
        fh[b] = hi;
        fl[b] = lo;
      } else if (fh[b] !== hi || fl[b] !== lo) mixed[b] = 1;
    }
  }

  /** Folds visitF32's counts into the bins (normal F32 magnitudes only: exponent + 896 is the float64's). */
  private foldF32(): void {
    const k = this.keys;
    if (!k) return;
    this.keys = null;
    const { hist: h, firstHi: fh, firstLo: fl, mixed } = this.bins!;
    for (let key = 0; key < 1 << 16; key++) {
      const c = k.hist[key];
      if (c === 0) continue;
      const w = k.first[key];
      // Key 0 holds zeros only (float64 pattern 0).
      const hi = key === 0 ? 0 : ((((w >>> 23) + 896) << 20) | ((w >>> 3) & 0xfffff)) >>> 0;
      const b = hi >>> 12;
      const lo = ((w & 7) << 29) >>> 0;
      // The bin may also hold elements visit counted (a stretch of another dtype): merge as visit would.
      if (h[b] === 0) {
        fh[b] = hi;
        fl[b] = lo;
        mixed[b] = k.mixed[key];
      } else if (k.mixed[key] || fh[b] !== hi || fl[b] !== lo) mixed[b] = 1;
      h[b] += c;
    }
  }

  /** Values of the next n elements (in flat-index order) as float64, viewed as u32 words (little-endian: lo, hi). */
  visit(words: Uint32Array, n: number): void {
    const L = this.level;
    const { maskHi: mh, maskLo: ml, valueHi: vh, valueLo: vl } = this;
    if (this.action === 'histogram') {
      const { hist: h, firstHi: fh, firstLo: fl, mixed } = this.bins!;
      if (L === 0) {
        // The first digit (every element counts): the top 20 bits, the sign bit being 0.
        for (let j = 0; j < n; j++) {
          const hi = words[2 * j + 1] & 0x7fffffff;
          const lo = words[2 * j];
          const b = hi >>> 12;
          if (h[b]++ === 0) {
            fh[b] = hi;
            fl[b] = lo;
          } else if (fh[b] !== hi || fl[b] !== lo) mixed[b] = 1;
        }
        return;
      }
      for (let j = 0; j < n; j++) {
        const hi = (words[2 * j + 1] & 0x7fffffff) >>> 0;
        const lo = words[2 * j];
        if (((hi & mh) >>> 0) !== vh || ((lo & ml) >>> 0) !== vl) continue;
        const b = digit(L, hi, lo);
        if (h[b]++ === 0) {
          fh[b] = hi;
          fl[b] = lo;
        } else if (fh[b] !== hi || fl[b] !== lo) mixed[b] = 1;
      }
    } else if (this.action === 'collect') {
      const g = this.got!;
      for (let j = 0; j < n; j++) {
        const hi = (words[2 * j + 1] & 0x7fffffff) >>> 0;
        const lo = words[2 * j];
        if (((hi & mh) >>> 0) !== vh || ((lo & ml) >>> 0) !== vl) continue;
        if (g.n === this.count) throw changed();
        g.hi[g.n] = hi;
        g.lo[g.n++] = lo;
      }
    }
  }

  private settle(bits: number, hi: number, lo: number): void {
    this.bits = bits;
    [this.maskHi, this.maskLo] = masks(bits);
    this.valueHi = (hi & this.maskHi) >>> 0;
    this.valueLo = (lo & this.maskLo) >>> 0;
  }

  end(): void {
    this.foldF32();
    const need = this.rank - this.above;
    if (this.action === 'histogram') {
      const { hist: h, firstHi, firstLo, mixed } = this.bins!;
      let cum = 0;
      let bin = h.length - 1;
      for (; bin >= 0; bin--) {
        if (cum + h[bin] > need) break;
        cum += h[bin];
      }
      if (bin < 0) throw changed();
      this.above += cum;
      this.count = h[bin];
      const hi = firstHi[bin];
      const lo = firstLo[bin];
      this.settle(this.bits + WIDTHS[this.level], hi, lo);
      this.level++;
      // A bin holding one magnitude only (or the last digit) settles the element: `need` of its kind rank before it.
      if (!mixed[bin] || this.bits === 64) this.result = { hi, lo, ties: need - cum };
      giveBins(this.bins!);
      this.bins = null;
    } else if (this.action === 'collect') {
      const g = this.got!;
      if (g.n !== this.count) throw changed();
      // Collected in flat-index order; a stable sort by magnitude keeps equal ones in that order.
      const order = Array.from({ length: g.n }, (_, i) => i);
      order.sort((a, b) => g.hi[b] - g.hi[a] || g.lo[b] - g.lo[a]);
      const at = order[need];
      let first = need;
      while (first > 0 && g.hi[order[first - 1]] === g.hi[at] && g.lo[order[first - 1]] === g.lo[at]) first--;
      this.result = { hi: g.hi[at], lo: g.lo[at], ties: need - first };
      this.got = null;
    }
  }
}

const f32Bits = new Uint32Array(1);
const f32Value = new Float32Array(f32Bits.buffer);
const f64Value = new Float64Array(1);
const f64Words = new Uint32Array(f64Value.buffer);

const changed = () => new InputError(`a delta changed while apply was ranking its magnitudes; plan again`);

/** Several rank searches over the same stream of values (one delta of one tensor), pass by pass. */
export class RankSelect {
  private readonly searches: RankSearch[];
  /** This pass's first-digit key histogram (WebAssembly), shared by the searches at their first digit. */
  private keys: KeyHist | null = null;
  private scratch: Uint32Array | null = null;
  /**
   * `limit`: the largest bucket collected (smaller in tests, to exercise every kind of pass); `wasm`: count the
   * first digit of F32 and BF16 patterns with the WebAssembly kernel where it is loaded (else the JavaScript loop).
   */
  constructor(ranks: number[], n: number, limit = COLLECT_LIMIT, private readonly wasm = true) {
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
    if (this.wasm && this.firstDigit().length) this.keys = takeKeyHist();
  }

  /** The pending searches at their first digit's histogram. */
  private firstDigit(): RankSearch[] {
    return this.searches.filter((s) => s.result === null && s.level === 0 && s.action === 'histogram');
  }

  /** The next n elements' values, in flat-index order, as float64 viewed as u32 words. */
  visit(words: Uint32Array, n: number): void {
    for (const s of this.searches) if (s.result === null) s.visit(words, n);
  }

  /** Whether visitF32 may take the next elements (every pending search is at its first histogram). */
  get takesF32(): boolean {
    return this.searches.every((s) => s.result !== null || s.takesF32);
  }

  /** The next n elements as F32 bit patterns (only where takesF32). */
  visitF32(bits: Uint32Array, n: number): void {
    if (this.keys) return this.visitPatterns(new Uint8Array(bits.buffer, bits.byteOffset, 4 * n), 4, n);
    for (const s of this.searches) if (s.result === null) s.visitF32(bits, n);
  }

  /** The next n elements as little-endian F32 (size 4) or BF16 (size 2) bytes (only where takesF32). */
  visitPatterns(bytes: Uint8Array, size: 2 | 4, n: number): void {
    const first = this.keys ? this.firstDigit() : [];
    const others = this.searches.filter((s) => s.result === null && !first.includes(s));
    for (let at = 0; at < n; at += KEYHIST_BLOCK) {
      const len = Math.min(KEYHIST_BLOCK, n - at);
      const src = bytes.subarray(at * size, (at + len) * size);
      if (this.keys) for (const w of this.keys.add(src, size, len)) for (const s of first) s.countRare(w);
      if (others.length) {
        const bits = this.patterns(src, size, len);
        for (const s of others) s.visitF32(bits, len);
      }
    }
  }

  /** F32 patterns of len elements (BF16: shifted up 16), aligned. */
  private patterns(src: Uint8Array, size: 2 | 4, len: number): Uint32Array {
    const scratch = (this.scratch ??= new Uint32Array(KEYHIST_BLOCK));
    if (size === 4) {
      if (src.byteOffset % 4 === 0) return new Uint32Array(src.buffer, src.byteOffset, len);
      new Uint8Array(scratch.buffer).set(src);
      return scratch;
    }
    const v = src.byteOffset % 2 === 0 ? new Uint16Array(src.buffer, src.byteOffset, len) : new Uint16Array(src.slice().buffer);
    for (let j = 0; j < len; j++) scratch[j] = v[j] << 16;
    return scratch;
  }

  end(): void {
    if (this.keys) {
      for (const s of this.firstDigit()) s.foldKeys(this.keys.table);
      giveKeyHist(this.keys);
      this.keys = null;
    }
    for (const s of this.searches) if (s.result === null) s.end();
  }

  /** The elements at the given ranks, once no search is pending. */
  results(): RankElement[] {
    return this.searches.map((s) => s.result!);
  }
}
