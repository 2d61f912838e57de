import { beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import type { FloatDType } from '../lib/format/dtype.js';
import {
  bf16BitsToF64,
  createKernels,
  f16BitsToF64,
  f64ToBf16Bits,
  f64ToF16Bits,
  f64ToF32Bits,
  newSubtractStats,
  readElement,
  writeElement,
  type DeltaInput,
  type Kernels,
  type SubtractStats,
} from '../lib/kernels/index.js';
import { FMT, bitsOf, fromBits, oracleDecode, oracleRound, type Fmt } from './helpers/floats.js';

const DTYPES: FloatDType[] = ['BF16', 'F16', 'F32', 'F64'];
const SIZE: Record<FloatDType, number> = { BF16: 2, F16: 2, F32: 4, F64: 8 };

// ---------------------------------------------------------------------------------------------------------------
// Exact helpers, independent of the code under test: float64 bits and a BigInt rounding oracle (test/helpers/floats.ts).

/** 2^k exactly, for −1074 ≤ k ≤ 1023. */
function p2(k: number): number {
  return k >= -1022 ? fromBits(BigInt(k + 1023) << 52n) : fromBits(1n << BigInt(k + 1074));
}
/** A NaN with the given sign, built from bits. */
function nan(neg: boolean): number {
  return fromBits((neg ? 0xfff8000000000000n : 0x7ff8000000000000n) | 0x1234n);
}

function rounders(): Record<'BF16' | 'F16' | 'F32', (x: number) => number> {
  return { BF16: f64ToBf16Bits, F16: f64ToF16Bits, F32: f64ToF32Bits };
}

// ---------------------------------------------------------------------------------------------------------------
// Hand-picked cases with answers worked out by hand (and checked against the oracle too).

const ONE = 1;
const HAND: Record<'BF16' | 'F16' | 'F32', [string, number, number][]> = {
  BF16: [
    ['1', ONE, 0x3f80],
    ['-1', -ONE, 0xbf80],
    ['1 + 2^-8: tie, down to even', ONE + p2(-8), 0x3f80],
    ['1 + 3·2^-8: tie, up to even', ONE + 3 * p2(-8), 0x3f82],
    ['1 + 2^-8 + 2^-40: above the tie (F32 first would make it a tie and give 0x3f80)', ONE + p2(-8) + p2(-40), 0x3f81],
    ['1 + 2^-8 − 2^-40: below the tie', ONE + p2(-8) - p2(-40), 0x3f80],
    ['−(1 + 2^-8 + 2^-40)', -(ONE + p2(-8) + p2(-40)), 0xbf81],
    ['max finite (2 − 2^-7)·2^127', (2 - p2(-7)) * p2(127), 0x7f7f],
    ['just below max + half ulp', (2 - p2(-8)) * p2(127) - p2(80), 0x7f7f],
    ['max + half ulp: tie, max is odd, so Inf', (2 - p2(-8)) * p2(127), 0x7f80],
    ['2^128 → Inf', p2(128), 0x7f80],
    ['−1e300 → −Inf', -1e300, 0xff80],
    ['smallest subnormal 2^-133', p2(-133), 0x0001],
    ['2^-134: tie between 0 and 2^-133, to even 0', p2(-134), 0x0000],
    ['−2^-134 → −0', -p2(-134), 0x8000],
    ['2^-134 + 2^-180: above the tie', p2(-134) + p2(-180), 0x0001],
    ['2^-134 + 2^-160: above the tie (F32 first would drop 2^-160 and give 0)', p2(-134) + p2(-160), 0x0001],
    ['3·2^-134: tie between 1 and 2, to 2', 3 * p2(-134), 0x0002],
    ['5·2^-134: tie between 2 and 3, to 2', 5 * p2(-134), 0x0002],
    ['largest subnormal 127·2^-133', 127 * p2(-133), 0x007f],
    ['2^-126 − 2^-134: tie between 0x7f and 0x80, to 0x80', p2(-126) - p2(-134), 0x0080],
    ['smallest normal 2^-126', p2(-126), 0x0080],
    ['float64 min subnormal → 0', p2(-1074), 0x0000],
    ['−float64 min subnormal → −0', -p2(-1074), 0x8000],
    ['+0', 0, 0x0000],
    ['−0', -0, 0x8000],
    ['Inf', Infinity, 0x7f80],
    ['−Inf', -Infinity, 0xff80],
    ['NaN', nan(false), 0x7fc0],
    ['−NaN', nan(true), 0xffc0],
  ],
  F16: [
    ['1', ONE, 0x3c00],
    ['1 + 2^-11: tie, down to even', ONE + p2(-11), 0x3c00],
    ['1 + 3·2^-11: tie, up to even', ONE + 3 * p2(-11), 0x3c02],
    ['1 + 2^-11 + 2^-40: above the tie (F32 first would make it a tie)', ONE + p2(-11) + p2(-40), 0x3c01],
    ['65504 max finite', 65504, 0x7bff],
    ['65519', 65519, 0x7bff],
    ['65520 − 2^-30', 65520 - p2(-30), 0x7bff],
    ['65520: tie, max is odd, so Inf', 65520, 0x7c00],
    ['65536 → Inf', 65536, 0x7c00],
    ['−1e10 → −Inf', -1e10, 0xfc00],
    ['smallest subnormal 2^-24', p2(-24), 0x0001],
    ['2^-25: tie, to 0', p2(-25), 0x0000],
    ['2^-25 + 2^-60', p2(-25) + p2(-60), 0x0001],
    ['2^-25 + 2^-50 (F32 first would drop 2^-50 and give 0)', p2(-25) + p2(-50), 0x0001],
    ['3·2^-25: tie, to 2', 3 * p2(-25), 0x0002],
    ['largest subnormal 1023·2^-24', 1023 * p2(-24), 0x03ff],
    ['2^-14 − 2^-25: tie between 0x3ff and 0x400, to 0x400', p2(-14) - p2(-25), 0x0400],
    ['smallest normal 2^-14', p2(-14), 0x0400],
    ['−0', -0, 0x8000],
    ['Inf', Infinity, 0x7c00],
    ['−Inf', -Infinity, 0xfc00],
    ['NaN', nan(false), 0x7e00],
    ['−NaN', nan(true), 0xfe00],
  ],
  F32: [
    ['1 + 2^-24: tie, down', ONE + p2(-24), 0x3f800000],
    ['1 + 3·2^-24: tie, up', ONE + 3 * p2(-24), 0x3f800002],
    ['max finite', (2 - p2(-23)) * p2(127), 0x7f7fffff],
    ['max + half ulp → Inf', (2 - p2(-24)) * p2(127), 0x7f800000],
    ['2^-149', p2(-149), 0x00000001],
    ['2^-150: tie, to 0', p2(-150), 0x00000000],
    ['3·2^-150: tie, to 2', 3 * p2(-150), 0x00000002],
    ['−0', -0, 0x80000000],
    ['NaN', nan(false), 0x7fc00000],
    ['−NaN', nan(true), 0xffc00000],
  ],
};

// ---------------------------------------------------------------------------------------------------------------
// Seeded random data.

function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32;
  };
}

/** Random float64 values concentrated at the ties and boundaries of `f`. */
function nearTies(r: () => number, f: Fmt, count: number): number[] {
  const out: number[] = [];
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)];
  for (let i = 0; i < count; i++) {
    // A representable value: random exponent across (and a little beyond) the format's range, random mantissa.
    const exp = f.emin - f.mant - 3 + Math.floor(r() * (f.emax - f.emin + f.mant + 8));
    const q = Math.max(exp, f.emin) - f.mant; // quantum at that exponent
    const k = Math.floor(r() * 2 ** (f.mant + 1));
    const v = k * p2(Math.min(1023, Math.max(-1074, q)));
    const half = p2(Math.max(-1074, q - 1));
    const nudge = pick([0, 0, p2(Math.max(-1074, q - 30)), p2(Math.max(-1074, q - 53)), 3 * p2(Math.max(-1074, q - 40))]);
    let x = v + pick([0, half, -half, half + nudge, half - nudge, nudge]);
    if (r() < 0.5) x = -x;
    out.push(x);
  }
  return out;
}

/** A standard normal deviate from r (Box–Muller). */
function gauss(r: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
}

type Profile = 'clean' | 'dirty';

/** Writes n random elements of `dtype`: normals over the whole range, subnormals, ±0, and (dirty) ±Inf and NaNs. */
function fillRandom(dtype: FloatDType, buf: Uint8Array, n: number, r: () => number, profile: Profile, like?: Uint8Array): void {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const expBits = { BF16: 8, F16: 5, F32: 8, F64: 11 }[dtype];
  const mant = { BF16: 7, F16: 10, F32: 23, F64: 52 }[dtype];
  const lv = like && new DataView(like.buffer, like.byteOffset, like.byteLength);
  for (let i = 0; i < n; i++) {
    const c = r();
    const neg = r() < 0.5 ? 1n : 0n;
    const maxField = 2 ** expBits - 1;
    let field: number;
    let m = BigInt(Math.floor(r() * 2 ** Math.min(mant, 30))) << BigInt(Math.max(0, mant - 30));
    if (mant > 30) m |= BigInt(Math.floor(r() * 2 ** 30)) & ((1n << BigInt(mant - 30)) - 1n);
    if (lv && c < 0.45) {
      // Close to the other operand: same pattern, nudged by a few units in the last place (small, exact-ish deltas).
      const b = readBits(dtype, lv, i) + BigInt(Math.floor(r() * 9) - 4);
      writeBits(dtype, v, i, b & ((1n << BigInt(SIZE[dtype] * 8)) - 1n));
      continue;
    }
    if (c < 0.55) field = 1 + Math.floor(r() * (maxField - 1)); // any normal
    else if (c < 0.8) field = Math.max(1, Math.min(maxField - 1, (maxField >> 1) - 12 + Math.floor(r() * 24))); // near 1
    else if (c < 0.88) field = 0; // subnormal (or zero)
    else if (c < 0.93) {
      field = 0;
      m = 0n;
    } else if (profile === 'dirty' && c < 0.965) {
      field = maxField;
      m = 0n; // ±Inf
    } else if (profile === 'dirty') {
      field = maxField;
      m = m | 1n; // NaN, payload random
    } else field = (maxField >> 1) + Math.floor(r() * 4);
    writeBits(dtype, v, i, (neg << BigInt(SIZE[dtype] * 8 - 1)) | (BigInt(field) << BigInt(mant)) | m);
  }
}

function readBits(dtype: FloatDType, v: DataView, i: number): bigint {
  const s = SIZE[dtype];
  return s === 2 ? BigInt(v.getUint16(2 * i, true)) : s === 4 ? BigInt(v.getUint32(4 * i, true)) : v.getBigUint64(8 * i, true);
}
function writeBits(dtype: FloatDType, v: DataView, i: number, b: bigint): void {
  const s = SIZE[dtype];
  if (s === 2) v.setUint16(2 * i, Number(b), true);
  else if (s === 4) v.setUint32(4 * i, Number(b), true);
  else v.setBigUint64(8 * i, b, true);
}

/** x stored as `dtype` and read back (x itself when representable). */
function readBack(dtype: FloatDType, x: number): number {
  const b = new Uint8Array(8);
  writeElement(dtype, b, 0, x);
  return readElement(dtype, b, 0);
}

function hex(buf: Uint8Array, dtype: FloatDType, i: number): string {
  const s = SIZE[dtype];
  return [...buf.subarray(s * i, s * i + s)]
    .reverse()
    .map((b) => b.toString(16).padStart(2, '0'))
    .join('');
}

/** Byte equality of the first n elements, reporting the first differing element. */
function expectSame(got: Uint8Array, want: Uint8Array, dtype: FloatDType, n: number, what: string): void {
  const s = SIZE[dtype];
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < s; j++) {
      if (got[s * i + j] !== want[s * i + j]) {
        expect.fail(`${what}: element ${i} is ${hex(got, dtype, i)}, want ${hex(want, dtype, i)}`);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------

let wasm: Kernels;
let ref: Kernels;
const MAX_N = 8192;
// Buffers in the wasm instance's memory, reused by the tests.
let B: Uint8Array, P: Uint8Array, O: Uint8Array, DS: Uint8Array[];

beforeAll(async () => {
  wasm = await createKernels({ arenaBytes: 16 << 20 });
  ref = await createKernels({ arenaBytes: 1 << 20, impl: 'reference' });
  B = wasm.alloc(MAX_N * 8);
  P = wasm.alloc(MAX_N * 8);
  O = wasm.alloc(MAX_N * 8);
  DS = [wasm.alloc(MAX_N * 8), wasm.alloc(MAX_N * 8), wasm.alloc(MAX_N * 8)];
});

describe('scalar helpers', () => {
  for (const name of ['BF16', 'F16', 'F32'] as const) {
    it(`rounds hand-picked ${name} cases as worked out by hand`, () => {
      const round = rounders()[name];
      for (const [what, x, want] of HAND[name]) {
        expect(oracleRound(x, FMT[name]), `oracle: ${what}`).toBe(want);
        expect(round(x), what).toBe(want);
      }
    });
  }

  it('would get the double-rounding traps wrong through F32 (the cases above are real traps)', () => {
    const viaF32 = (x: number) => {
      const f = new Float32Array([x]);
      const u = new Uint32Array(f.buffer)[0];
      return (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
    };
    expect(viaF32(ONE + p2(-8) + p2(-40))).toBe(0x3f80);
    expect(f64ToBf16Bits(ONE + p2(-8) + p2(-40))).toBe(0x3f81);
    expect(viaF32(p2(-134) + p2(-160))).toBe(0x0000);
    expect(f64ToBf16Bits(p2(-134) + p2(-160))).toBe(0x0001);
  });

  it('widens every BF16 and F16 pattern exactly', () => {
    for (let b = 0; b < 0x10000; b++) {
      for (const [name, widen] of [
        ['BF16', bf16BitsToF64],
        ['F16', f16BitsToF64],
      ] as const) {
        const want = oracleDecode(b, FMT[name]);
        const got = widen(b);
        if (Number.isNaN(want)) expect(Number.isNaN(got)).toBe(true);
        else if (!Object.is(got, want)) expect.fail(`${name} ${b.toString(16)}: got ${got}, want ${want}`);
      }
    }
  });

  it('reads and writes elements of every dtype', () => {
    const buf = new Uint8Array(8 * 4 + 1).subarray(1); // unaligned on purpose
    for (const dtype of DTYPES) {
      for (const x of [1.5, -0.25, 61440, p2(-20), -0]) {
        writeElement(dtype, buf, 3, x);
        expect(Object.is(readElement(dtype, buf, 3), x)).toBe(true);
      }
      writeElement(dtype, buf, 2, nan(true));
      expect(Number.isNaN(readElement(dtype, buf, 2))).toBe(true);
      expect(buf[SIZE[dtype] * 3 - 1] >> 7).toBe(1); // sign kept
    }
    writeElement('BF16', buf, 0, ONE + p2(-8) + p2(-40));
    expect(buf[0] | (buf[1] << 8)).toBe(0x3f81);
  });

  for (const name of ['BF16', 'F16', 'F32'] as const) {
    it(`matches the BigInt oracle on random doubles (${name})`, () => {
      const round = rounders()[name];
      fc.assert(
        fc.property(fc.double(), (x) => round(x) === oracleRound(x, FMT[name])),
        { numRuns: 20000, seed: 42 },
      );
    });

    it(`matches the BigInt oracle near ties and boundaries (${name})`, () => {
      const round = rounders()[name];
      for (const x of nearTies(rng(7 + name.length), FMT[name], 30000)) {
        const want = oracleRound(x, FMT[name]);
        if (round(x) !== want) expect.fail(`${name} of ${x} (${bitsOf(x).toString(16)}): got ${round(x).toString(16)}, want ${want.toString(16)}`);
      }
    });
  }
});

describe('wasm kernels round like the oracle', () => {
  // subtract(F64, zeros, x) stores x rounded (d = x − 0 keeps −0 and the NaN's sign); apply(F64 x, −0) does too.
  for (const name of ['BF16', 'F16', 'F32'] as const) {
    it(`through subtract and apply (${name})`, () => {
      const xs = [...HAND[name].map(([, x]) => x), ...nearTies(rng(99), FMT[name], MAX_N - HAND[name].length)];
      const n = xs.length;
      const pv = new DataView(P.buffer, P.byteOffset, n * 8);
      xs.forEach((x, i) => pv.setFloat64(8 * i, x, true));
      const want = xs.map((x) => oracleRound(x, FMT[name]));
      const check = (what: string) => {
        const ov = new DataView(O.buffer, O.byteOffset, n * SIZE[name]);
        for (let i = 0; i < n; i++) {
          const got = name === 'F32' ? ov.getUint32(4 * i, true) : ov.getUint16(2 * i, true);
          if (got !== want[i]) expect.fail(`${what} ${name} of ${xs[i]}: got ${got.toString(16)}, want ${want[i].toString(16)}`);
        }
      };
      B.fill(0, 0, n * 8);
      wasm.subtract('F64', B, P, n, name, O, newSubtractStats());
      check('subtract');
      const minusZero = DS[0];
      const dz = new DataView(minusZero.buffer, minusZero.byteOffset, n * 8);
      for (let i = 0; i < n; i++) dz.setFloat64(8 * i, -0, true);
      wasm.apply('F64', P, [{ dtype: 'F64', data: minusZero, scale: 1 }], n, name, O);
      check('apply');
    });
  }

  it('widens every BF16 and F16 pattern like the reference', () => {
    const n = 0x10000;
    const post = new Uint8Array(2 * n);
    const pv = new DataView(post.buffer);
    for (let b = 0; b < n; b++) pv.setUint16(2 * b, b, true);
    const base = new Uint8Array(2 * n); // +0
    for (const dtype of ['BF16', 'F16'] as const) {
      const w = new Uint8Array(8 * n);
      const r = new Uint8Array(8 * n);
      const sw = newSubtractStats();
      const sr = newSubtractStats();
      wasm.subtract(dtype, base, post, n, 'F64', w, sw);
      ref.subtract(dtype, base, post, n, 'F64', r, sr);
      expectSame(w, r, 'F64', n, dtype);
      expect(sw).toEqual(sr);
    }
  });
});

describe('wasm matches the reference bit for bit', () => {
  const LENGTHS = [0, 1, 7, 8, 9, 1003];
  const PROBES = [undefined, 'BF16', 'F16', 'F32', 'F64'] as const;

  function runSubtract(dtype: FloatDType, outDtype: FloatDType, n: number, profile: Profile, seed: number) {
    const r = rng(seed);
    fillRandom(dtype, B, n, r, profile);
    fillRandom(dtype, P, n, r, profile, B);
    for (const probe of PROBES) {
      const want = new Uint8Array(n * SIZE[outDtype]);
      const sw = newSubtractStats();
      const sr = newSubtractStats();
      ref.subtract(dtype, B, P, n, outDtype, want, sr, probe);
      O.fill(0xee);
      wasm.subtract(dtype, B, P, n, outDtype, O, sw, probe);
      const what = `subtract ${dtype}→${outDtype} probe ${probe} n=${n} ${profile}`;
      expectSame(O, want, outDtype, n, what);
      expect(sw, what).toEqual(sr);
    }
  }

  for (const dtype of DTYPES) {
    for (const outDtype of DTYPES) {
      it(`subtract ${dtype} → ${outDtype}`, () => {
        LENGTHS.forEach((n, j) => runSubtract(dtype, outDtype, n, 'clean', 1000 + j));
        runSubtract(dtype, outDtype, 1003, 'dirty', 77);
        runSubtract(dtype, outDtype, 5000, 'clean', 78);
      });
    }
  }

  const DELTA_SETS: FloatDType[][] = [['BF16'], ['F16'], ['F32'], ['F64'], ['F32', 'BF16'], ['F16', 'F64'], ['BF16', 'BF16'], ['F32', 'F16', 'BF16'], ['F64', 'F32', 'F32']];
  const SCALES = [1, 0.5, 0.7, 0.3, -1, 1e-3];

  function runApply(baseDtype: FloatDType, outDtype: FloatDType, n: number, profile: Profile, seed: number) {
    const r = rng(seed);
    fillRandom(baseDtype, B, n, r, profile);
    DELTA_SETS.forEach((set, s) => {
      const deltas: DeltaInput[] = set.map((dtype, k) => {
        fillRandom(dtype, DS[k], n, r, profile);
        return { dtype, data: DS[k], scale: SCALES[(s + 2 * k) % SCALES.length] };
      });
      const want = new Uint8Array(n * SIZE[outDtype]);
      ref.apply(baseDtype, B, deltas, n, outDtype, want);
      O.fill(0xee);
      wasm.apply(baseDtype, B, deltas, n, outDtype, O);
      expectSame(O, want, outDtype, n, `apply ${baseDtype} + ${set.join('+')} → ${outDtype} n=${n} ${profile}`);
    });
  }

  for (const baseDtype of DTYPES) {
    for (const outDtype of DTYPES) {
      it(`apply ${baseDtype} → ${outDtype}`, () => {
        LENGTHS.forEach((n, j) => runApply(baseDtype, outDtype, n, 'clean', 2000 + j));
        runApply(baseDtype, outDtype, 1003, 'dirty', 88);
        runApply(baseDtype, outDtype, 5000, 'clean', 89);
      });
    }
  }
});

describe('special paths', () => {
  function both(fn: (k: Kernels, out: Uint8Array, stats: SubtractStats) => void, outBytes: number) {
    const outs = [new Uint8Array(outBytes), new Uint8Array(outBytes)];
    const stats = [newSubtractStats(), newSubtractStats()];
    fn(ref, outs[0], stats[0]);
    fn(wasm, outs[1], stats[1]);
    return { ref: outs[0], wasm: outs[1], stats };
  }
  const f64s = (xs: number[]) => {
    const b = new Uint8Array(8 * xs.length);
    const v = new DataView(b.buffer);
    xs.forEach((x, i) => v.setFloat64(8 * i, x, true));
    return b;
  };
  const u16 = (b: Uint8Array, i: number) => b[2 * i] | (b[2 * i + 1] << 8);

  it('gives NaNs the x86 sign: first NaN operand, else negative', () => {
    // post NaN(+) − anything → +; base NaN(−) with finite post → −; Inf − Inf → −.
    const n = 12;
    const post = f64s([nan(false), 1, Infinity, -Infinity, nan(false), 2, 0, 0, 0, 0, 0, 0]);
    const base = f64s([nan(true), nan(true), Infinity, -Infinity, 3, nan(false), 0, 0, 0, 0, 0, 0]);
    const r = both((k, out, st) => k.subtract('F64', base, post, n, 'BF16', out, st), 2 * n);
    expectSame(r.wasm, r.ref, 'BF16', n, 'subtract NaNs');
    expect([0, 1, 2, 3, 4, 5].map((i) => u16(r.ref, i))).toEqual([0x7fc0, 0xffc0, 0xffc0, 0xffc0, 0x7fc0, 0x7fc0]);
    expect(r.stats[1]).toEqual(r.stats[0]);
  });

  it('gives apply NaNs the x86 sign too (0·Inf, NaN scale, Inf − Inf, NaN base)', () => {
    const n = 9;
    const base = f64s([1, 1, Infinity, nan(true), -0, 2, 3, 4, 5]);
    const d1 = f64s([Infinity, nan(true), -Infinity, 1, -0, 1, 1, 1, 1]);
    for (const [scale, want0] of [
      [0, 0xffc0], // 0·Inf: negative NaN
      [nan(false), 0x7fc0], // NaN scale: its sign
    ] as const) {
      const r = both((k, out) => k.apply('F64', base, [{ dtype: 'F64', data: d1, scale }], n, 'BF16', out), 2 * n);
      expectSame(r.wasm, r.ref, 'BF16', n, `apply scale ${scale}`);
      expect(u16(r.ref, 0)).toBe(want0);
    }
    const r = both((k, out) => k.apply('F64', base, [{ dtype: 'F64', data: d1, scale: 1 }], n, 'BF16', out), 2 * n);
    expectSame(r.wasm, r.ref, 'BF16', n, 'apply scale 1');
    expect([1, 2, 3, 4].map((i) => u16(r.ref, i))).toEqual([0xffc0, 0xffc0, 0xffc0, 0x8000]);
  });

  it('rounds ties and double-rounding traps built from bf16/f32 operands', () => {
    // x = 1 + 2^-8 (tie) and 1 + 2^-8 + 2^-40 (trap), reached through two F32 deltas; bf16 inputs for subtract.
    const n = 16;
    const base = new Uint8Array(2 * n);
    const d1 = new Uint8Array(4 * n);
    const d2 = new Uint8Array(4 * n);
    for (let i = 0; i < n; i++) {
      writeElement('BF16', base, i, i % 2 ? -1 : 1);
      writeElement('F32', d1, i, (i % 2 ? -1 : 1) * p2(-8));
      writeElement('F32', d2, i, (i % 2 ? -1 : 1) * (i % 4 < 2 ? p2(-40) : 0));
    }
    const deltas: DeltaInput[] = [
      { dtype: 'F32', data: d1, scale: 1 },
      { dtype: 'F32', data: d2, scale: 1 },
    ];
    const r = both((k, out) => k.apply('BF16', base, deltas, n, 'BF16', out), 2 * n);
    expectSame(r.wasm, r.ref, 'BF16', n, 'apply ties');
    expect([0, 1, 2, 3].map((i) => u16(r.ref, i))).toEqual([0x3f81, 0xbf81, 0x3f80, 0xbf80]);
    // bf16 post − base with an exact BF16 tie (1 + 2^-8) and an F16 tie (1 + 2^-11).
    const post = new Uint8Array(2 * n);
    for (let i = 0; i < n; i++) {
      writeElement('BF16', post, i, i % 2 ? 1 : 1 + p2(-7));
      writeElement('BF16', base, i, i % 2 ? -p2(-11) : p2(-8));
    }
    for (const out of ['BF16', 'F16'] as const) {
      const s = both((k, o, st) => k.subtract('BF16', base, post, n, out, o, st, 'F16'), 2 * n);
      expectSame(s.wasm, s.ref, out, n, `subtract ties → ${out}`);
      expect(s.stats[1]).toEqual(s.stats[0]);
    }
  });

  it('counts rounding exactly at the precision boundaries of every format', () => {
    // d = 2^k + 2^j (+ 2^(k−7)) spans k − j + 1 bits: around 8, 11 and 24 bits it crosses from exact to inexact in
    // BF16, F16 and F32, which random data rarely hits.
    const pairs: [number, number][] = [];
    for (let k = -20; k <= 40; k++) {
      for (let j = k - 40; j <= k; j++) {
        pairs.push([p2(k), -p2(j)]);
        pairs.push([p2(k) + p2(k - 7), -p2(j)]);
        pairs.push([-p2(k), p2(j)]);
      }
    }
    for (const dtype of DTYPES) {
      const usable = pairs.filter(([p, b]) => readBack(dtype, p) === p && readBack(dtype, b) === b);
      const n = usable.length;
      usable.forEach(([p, b], i) => {
        writeElement(dtype, P, i, p);
        writeElement(dtype, B, i, b);
      });
      for (const out of DTYPES) {
        for (const probe of [undefined, 'BF16', 'F16', 'F32'] as const) {
          const want = new Uint8Array(n * SIZE[out]);
          const sr = newSubtractStats();
          const sw = newSubtractStats();
          ref.subtract(dtype, B, P, n, out, want, sr, probe);
          wasm.subtract(dtype, B, P, n, out, O, sw, probe);
          expectSame(O, want, out, n, `boundaries ${dtype} → ${out} probe ${probe}`);
          expect(sw, `boundaries ${dtype} → ${out} probe ${probe}`).toEqual(sr);
        }
      }
    }
  });

  it('handles BF16 deltas beyond the F32 range (the 2^128 guard)', () => {
    const n = 9;
    const base = new Uint8Array(2 * n);
    const post = new Uint8Array(2 * n);
    const max = (2 - p2(-7)) * p2(127);
    for (let i = 0; i < n; i++) {
      writeElement('BF16', base, i, i === 3 ? -max : 0.5);
      writeElement('BF16', post, i, i === 3 ? max : 0.75);
    }
    for (const out of DTYPES) {
      const r = both((k, o, st) => k.subtract('BF16', base, post, n, out, o, st, 'BF16'), 8 * n);
      expectSame(r.wasm, r.ref, out, n, `guard → ${out}`);
      expect(r.stats[1]).toEqual(r.stats[0]);
      if (out === 'F32') {
        expect(r.stats[0].maxError).toBe(Infinity);
        expect(r.stats[0].rounded).toBe(1);
        expect(r.stats[0].probeMisses).toBe(1);
      }
    }
  });

  it('counts F16 deltas beyond the F16 range as rounded', () => {
    // Every delta exact in F16 except d = 2^16 (32768 − (−32768)), which has few bits but overflows.
    const n = 16;
    const base = new Uint8Array(2 * n);
    const post = new Uint8Array(2 * n);
    for (let i = 0; i < n; i++) {
      writeElement('F16', base, i, i === 5 ? -32768 : 0.5);
      writeElement('F16', post, i, i === 5 ? 32768 : 0.75 + i);
    }
    for (const probe of [undefined, 'F16'] as const) {
      const r = both((k, o, st) => k.subtract('F16', base, post, n, 'F16', o, st, probe), 2 * n);
      expectSame(r.wasm, r.ref, 'F16', n, 'F16 overflow');
      expect(r.stats[1]).toEqual(r.stats[0]);
      expect(r.stats[0].rounded).toBe(1);
      expect(r.stats[0].maxError).toBe(Infinity);
      expect(r.stats[0].probeMisses).toBe(probe ? 1 : 0);
    }
    // Compute's first pass: 2^16 is exact in F32, so only the F16 probe may miss it.
    const r = both((k, o, st) => k.subtract('F16', base, post, n, 'F32', o, st, 'F16'), 4 * n);
    expectSame(r.wasm, r.ref, 'F32', n, 'F16 overflow, F32 out');
    expect(r.stats[1]).toEqual(r.stats[0]);
    expect(r.stats[0].rounded).toBe(0);
    expect(r.stats[0].probeMisses).toBe(1);
  });

  it('accumulates stats over calls like one call', () => {
    const n = 1003;
    const r = rng(5);
    fillRandom('BF16', B, n, r, 'clean');
    fillRandom('BF16', P, n, r, 'clean', B);
    const one = newSubtractStats();
    wasm.subtract('BF16', B, P, n, 'F32', O, one, 'BF16');
    const two = newSubtractStats();
    wasm.subtract('BF16', B, P, 504, 'F32', O, two, 'BF16');
    wasm.subtract('BF16', B.subarray(1008), P.subarray(1008), n - 504, 'F32', O, two, 'BF16');
    expect(two.elements).toBe(one.elements);
    expect(two.rounded).toBe(one.rounded);
    expect(two.probeMisses).toBe(one.probeMisses);
    expect(two.maxError).toBe(one.maxError);
    expect(Math.abs(two.sumSqBase - one.sumSqBase)).toBeLessThan(1e-12 * one.sumSqBase); // two partial sums, another order
  });
});

describe('buffers and memory', () => {
  it('accepts buffers that are not from alloc, unaligned ones included', () => {
    const n = 5000; // several staging blocks
    const r = rng(11);
    fillRandom('BF16', B, n, r, 'dirty');
    fillRandom('BF16', P, n, r, 'clean', B);
    fillRandom('F32', DS[0], n, r, 'clean');
    fillRandom('F16', DS[1], n, r, 'clean');
    const copy = (src: Uint8Array, bytes: number) => {
      const c = new Uint8Array(bytes + 3).subarray(3);
      c.set(src.subarray(0, bytes));
      return c;
    };
    const base = copy(B, 2 * n);
    const post = copy(P, 2 * n);
    const d0 = copy(DS[0], 4 * n);
    const d1 = copy(DS[1], 2 * n);

    const inMem = newSubtractStats();
    wasm.subtract('BF16', B, P, n, 'F32', O, inMem, 'BF16');
    const want = O.slice(0, 4 * n);
    for (const [b, p] of [
      [base, post],
      [B, post],
      [base, P],
    ]) {
      const out = new Uint8Array(4 * n + 1).subarray(1);
      const st = newSubtractStats();
      wasm.subtract('BF16', b, p, n, 'F32', out, st, 'BF16');
      expectSame(out, want, 'F32', n, 'subtract, foreign buffers');
      expect(st).toEqual(inMem);
    }

    for (const deltas of [
      [{ dtype: 'F32' as const, data: DS[0], scale: 0.7 }],
      [
        { dtype: 'F32' as const, data: DS[0], scale: 0.7 },
        { dtype: 'F16' as const, data: DS[1], scale: 0.3 },
      ],
    ]) {
      wasm.apply('BF16', B, deltas, n, 'BF16', O);
      const wantApply = O.slice(0, 2 * n);
      const refOut = new Uint8Array(2 * n);
      ref.apply('BF16', B, deltas, n, 'BF16', refOut);
      expectSame(wantApply, refOut, 'BF16', n, 'apply, reference');
      const foreign = deltas.map((d) => ({ ...d, data: copy(d.data, SIZE[d.dtype] * n) }));
      const out = new Uint8Array(2 * n + 1).subarray(1);
      wasm.apply('BF16', base, foreign, n, 'BF16', out);
      expectSame(out, wantApply, 'BF16', n, 'apply, foreign buffers');
      wasm.apply('BF16', B, foreign, n, 'BF16', O);
      expectSame(O, wantApply, 'BF16', n, 'apply, foreign deltas');
    }
  });

  it('applies in place (out = base)', () => {
    const n = 1003;
    const r = rng(12);
    for (const k of [wasm, ref]) {
      for (const deltaCount of [1, 2]) {
        fillRandom('BF16', B, n, r, 'dirty');
        fillRandom('F32', DS[0], n, r, 'dirty');
        fillRandom('BF16', DS[1], n, r, 'clean');
        const deltas = [DS[0], DS[1]].slice(0, deltaCount).map((data, j) => ({ dtype: (j ? 'BF16' : 'F32') as FloatDType, data, scale: 0.5 }));
        const want = new Uint8Array(2 * n);
        ref.apply('BF16', B, deltas, n, 'BF16', want);
        const inPlace = k.impl === 'wasm' ? B : B.slice();
        k.apply('BF16', inPlace, deltas, n, 'BF16', inPlace);
        expectSame(inPlace, want, 'BF16', n, `${k.impl} in place, ${deltaCount} deltas`);
      }
    }
  });

  it('allocates 64-byte-aligned views that stay valid, and throws when the arena is exhausted', async () => {
    for (const impl of ['wasm', 'reference'] as const) {
      const k = await createKernels({ arenaBytes: 4096, impl });
      const a = k.alloc(100);
      a[99] = 7;
      const b = k.alloc(1000);
      expect(a.byteOffset % 64).toBe(0);
      expect(b.byteOffset % 64).toBe(0);
      expect(b.byteOffset - a.byteOffset).toBeGreaterThanOrEqual(100);
      expect(() => k.alloc(4096)).toThrow(/arena/);
      expect(a[99]).toBe(7);
      expect(a.length).toBe(100);
    }
  });

  it('rejects short buffers and empty delta lists', () => {
    expect(() => wasm.subtract('F32', B, P, 10, 'F32', new Uint8Array(39), newSubtractStats())).toThrow(RangeError);
    expect(() => wasm.apply('F32', B, [], 10, 'F32', O)).toThrow(RangeError);
  });
});

describe('every pairing on adversarial inputs', () => {
  /** Runs apply on both implementations and compares the outputs byte for byte; returns the reference's. */
  function sameApply(baseDtype: FloatDType, deltas: DeltaInput[], n: number, outDtype: FloatDType, what: string): Uint8Array {
    const want = new Uint8Array(n * SIZE[outDtype]);
    ref.apply(baseDtype, B, deltas, n, outDtype, want);
    O.fill(0xee);
    wasm.apply(baseDtype, B, deltas, n, outDtype, O);
    expectSame(O, want, outDtype, n, what);
    return want;
  }
  /** Runs subtract on both implementations: outputs byte for byte, stats equal. */
  function sameSubtract(dtype: FloatDType, n: number, outDtype: FloatDType, probe: FloatDType | undefined, what: string): SubtractStats {
    const want = new Uint8Array(n * SIZE[outDtype]);
    const sr = newSubtractStats();
    const sw = newSubtractStats();
    ref.subtract(dtype, B, P, n, outDtype, want, sr, probe);
    O.fill(0xee);
    wasm.subtract(dtype, B, P, n, outDtype, O, sw, probe);
    expectSame(O, want, outDtype, n, what);
    expect(sw, what).toEqual(sr);
    return sr;
  }

  it('applies two deltas of every dtype pairing to every base dtype (the fused kernels), and chains them to F64', () => {
    const n = 997; // not a multiple of a span: the scalar tail runs too
    const r = rng(31);
    const scaleSets = [
      [0.7, 0.3],
      [1, -1],
      [nan(true), 0.5],
      [0, Infinity],
      [1e-300, 2 ** 600],
    ];
    for (const x of DTYPES) {
      for (const d0 of DTYPES) {
        for (const d1 of DTYPES) {
          fillRandom(x, B, n, r, 'dirty');
          fillRandom(d0, DS[0], n, r, 'dirty');
          fillRandom(d1, DS[1], n, r, 'dirty', d0 === d1 ? DS[0] : undefined);
          scaleSets.forEach(([s0, s1], k) => {
            const deltas = [
              { dtype: d0, data: DS[0], scale: s0 },
              { dtype: d1, data: DS[1], scale: s1 },
            ];
            sameApply(x, deltas, n, x, `apply ${x} + ${d0}·${s0} + ${d1}·${s1}`);
            if (k === 0 && x !== 'F64') sameApply(x, deltas, n, 'F64', `apply ${x} + ${d0} + ${d1} → F64 (chained)`);
          });
        }
      }
    }
  });

  it('rounds exact ties, near ties and overflowing sums of one and two deltas to BF16 and F16 like the oracle', () => {
    const n = 4000;
    for (const x of ['BF16', 'F16'] as const) {
      for (const dt of DTYPES) {
        // Targets at and around the output's ties and boundaries (subnormal to overflow); the base is the target
        // rounded to x, the delta the remainder, so base + delta hits the target when the delta is representable.
        const r = rng(40 + dt.length + x.length);
        const targets = nearTies(r, FMT[x], n);
        const exact: boolean[] = [];
        targets.forEach((t, i) => {
          writeElement(x, B, i, t);
          const rest = t - readElement(x, B, i);
          writeElement(dt, DS[0], i, rest);
          writeElement(dt, DS[1], i, rest / 2);
          exact.push(Number.isFinite(rest) && readElement(dt, DS[0], i) === rest && readElement(dt, DS[1], i) === rest / 2 && Object.is(readElement(x, B, i) + rest, t));
        });
        const one = sameApply(x, [{ dtype: dt, data: DS[0], scale: 1 }], n, x, `${x} + ${dt} ties`);
        const two = sameApply(
          x,
          [
            { dtype: dt, data: DS[1], scale: 1 },
            { dtype: dt, data: DS[1], scale: 1 },
          ],
          n,
          x,
          `${x} + 2 ${dt} ties`,
        );
        const bits = (buf: Uint8Array, i: number) => buf[2 * i] | (buf[2 * i + 1] << 8);
        let checked = 0;
        targets.forEach((t, i) => {
          if (!exact[i]) return;
          checked++;
          const want = oracleRound(t, FMT[x]);
          if (bits(one, i) !== want) expect.fail(`${x} + ${dt}: ${t} gave ${bits(one, i).toString(16)}, oracle ${want.toString(16)}`);
          if (bits(two, i) !== want) expect.fail(`${x} + 2 ${dt}: ${t} gave ${bits(two, i).toString(16)}, oracle ${want.toString(16)}`);
        });
        expect(checked, `${x} + ${dt}: targets reached exactly`).toBeGreaterThan(n / 4);
      }
    }
  });

  it('subtracts to every dtype from inputs with huge exponent gaps, subnormals, ±0, Inf and NaN payloads', () => {
    const n = 2003;
    const r = rng(50);
    for (const x of DTYPES) {
      for (const y of DTYPES) {
        fillRandom(x, B, n, r, 'dirty');
        fillRandom(x, P, n, r, 'clean'); // independent of B: exponent gaps of any size
        for (const probe of [undefined, 'BF16', 'F16', 'F32'] as const) sameSubtract(x, n, y, probe, `subtract ${x} → ${y} probe ${probe}, gaps`);
      }
    }
  });

  it('subtracts to 16-bit and F32 outputs from 16-bit inputs with no, a few and many rounded groups', () => {
    // The test loop stores plain demotes where the group is exact, hands a group with a rounded lane to the exact
    // path, and after enough of those hands the rest of the call to the inline loop.
    const n = 4099;
    const pairs: [FloatDType, FloatDType][] = [
      ['BF16', 'BF16'],
      ['F16', 'F16'],
      ['F16', 'BF16'],
      ['BF16', 'F32'],
      ['F16', 'F32'],
    ];
    for (const [x, y] of pairs) {
      for (const rounded of [0, 3, 12, 40, 600, n]) {
        const r = rng(60 + rounded);
        fillRandom(x, B, n, r, 'clean');
        for (let i = 0; i < n; i++) writeElement(x, P, i, readElement(x, B, i) * (i % 3 === 0 ? 2 : 1)); // deltas fit x
        // Rounded deltas at spread-out positions: post unrelated to base there.
        for (let k = 0; k < rounded; k++) writeElement(x, P, Math.floor((k * n) / rounded), (r() - 0.5) * 2 ** Math.floor(r() * 20 - 10));
        for (const probe of [undefined, x === 'BF16' ? 'BF16' : 'F16'] as const) {
          const st = sameSubtract(x, n, y, probe, `subtract ${x} → ${y} probe ${probe}, ${rounded} rounded`);
          if (rounded === 0 && y !== 'F32' && (x === y || x === 'BF16')) expect(st.rounded).toBe(0);
        }
      }
    }
    // F16 deltas of 2^16 have few bits but overflow F16: the test loop must not take them for exact.
    for (let i = 0; i < n; i++) {
      writeElement('F16', B, i, i % 97 === 5 ? -32768 : 0.5);
      writeElement('F16', P, i, i % 97 === 5 ? 32768 : 0.75);
    }
    expect(sameSubtract('F16', n, 'F16', undefined, 'F16 overflow').rounded).toBe(Math.ceil((n - 5) / 97));
  });

  it('rounds lossy subtracts to 16-bit outputs at ties, subnormals and the overflow threshold in the vector loop', () => {
    // Finite deltas only, so no NaN or Inf sends the call to the scalar redo: the inline loop's signed rounding, its
    // rounded count and max error, and its overflow tests (BF16: the Σd² guard; F16: the max d²) are what is checked.
    const n = 4000;
    for (const x of DTYPES) {
      for (const y of ['BF16', 'F16'] as const) {
        const r = rng(100 + x.length * 7 + y.length);
        const over = y === 'BF16' ? (2 - p2(-8)) * p2(127) : 65520;
        const targets = nearTies(r, FMT[y], n);
        for (const mode of ['in range', 'near overflow'] as const) {
          targets.forEach((t, i) => {
            let d = mode === 'in range' ? (Math.abs(t) < over / 2 ? t : t * p2(-20)) : i % 5 === 0 ? Math.sign(t || 1) * over * (1 + (i % 3) * p2(-12) - (i % 2) * p2(-30)) : t;
            if (!(Math.abs(d) < Infinity)) d = 0;
            // base 0 or a small power of two, post = base + d as x holds it: d itself for F64, near it otherwise
            writeElement(x, B, i, i % 4 === 1 ? p2(-3) : i % 4 === 3 ? -p2(-7) : 0);
            writeElement(x, P, i, readElement(x, B, i) + d);
            if (!Number.isFinite(readElement(x, P, i))) writeElement(x, P, i, 0);
          });
          sameSubtract(x, n, y, undefined, `subtract ${x} → ${y} near ties, ${mode}`);
        }
      }
    }
  });

  describe('lossy subtracts between 16-bit formats (the F32-lane kernels)', () => {
    const NARROW = ['BF16', 'F16'] as const;
    type Narrow = (typeof NARROW)[number];
    const LAYOUT16 = { BF16: { mant: 7, maxField: 255, one: 127 }, F16: { mant: 10, maxField: 31, one: 15 } };
    /** Largest exponent-field gap whose differences are always exact in F32 (8 or 11 significant bits + gap ≤ 24). */
    const EXACT_GAP = { BF16: 16, F16: 13 };
    /** Largest field with no delta overflowing F32 or the output (BF16 out: |x| < 2^127; F16 out: |x| < 2^15). */
    const topField = (x: Narrow, y: Narrow) => (x === 'BF16' ? (y === 'BF16' ? 253 : 141) : y === 'BF16' ? 30 : 29);

    function put(x: Narrow, buf: Uint8Array, i: number, bits: number): void {
      new DataView(buf.buffer, buf.byteOffset, buf.byteLength).setUint16(2 * i, bits, true);
    }
    /** A pattern with the given field, a random mantissa and sign. */
    function pattern(x: Narrow, field: number, r: () => number): number {
      const { mant } = LAYOUT16[x];
      return (r() < 0.5 ? 0x8000 : 0) | (field << mant) | Math.floor(r() * 2 ** mant);
    }
    const fieldOf = (x: Narrow, bits: number) => (bits & 0x7fff) >> LAYOUT16[x].mant;
    /** Whether d lies exactly halfway between two neighbours in `y` (by the BigInt oracle). */
    function isTie(d: number, y: Narrow): boolean {
      const w = oracleDecode(oracleRound(d, FMT[y]), FMT[y]);
      if (w === d || !Number.isFinite(w)) return false;
      const other = 2 * d - w;
      return other !== w && oracleDecode(oracleRound(other, FMT[y]), FMT[y]) === other;
    }

    /** Random base/post pairs whose exponent fields differ by up to `spread`, base fields in [lo, hi]. */
    function fillPairs(x: Narrow, n: number, r: () => number, lo: number, hi: number, spread: number, top: number): void {
      for (let i = 0; i < n; i++) {
        const eb = lo + Math.floor(r() * (hi - lo + 1));
        const ep = Math.max(0, Math.min(top, eb + Math.floor(r() * (2 * spread + 1)) - spread));
        put(x, B, i, pattern(x, eb, r));
        put(x, P, i, r() < 0.1 ? pattern(x, eb, r) : pattern(x, ep, r));
      }
    }

    for (const x of NARROW) {
      for (const y of NARROW) {
        it(`${x} → ${y}: exponent gaps on both sides of the exact range, ties, subnormal outputs, large inputs`, () => {
          const n = 4096;
          const top = topField(x, y);
          const one = LAYOUT16[x].one;
          // Ranges of base fields: around 1; small enough for F16 subnormal deltas (and F16 subnormal inputs); the top.
          const ranges: [number, number][] = [
            [one - 4, one + 4],
            x === 'F16' ? [0, 6] : [one - 30, one - 12],
            [top - 6, top],
          ];
          let ties = 0;
          let beyond = 0;
          let subnormal = 0;
          ranges.forEach(([lo, hi], k) => {
            const r = rng(500 + 31 * k + (x === 'F16' ? 7 : 0) + (y === 'F16' ? 3 : 0));
            fillPairs(x, n, r, Math.max(0, lo), hi, EXACT_GAP[x] + 4, top);
            for (let i = 0; i < n; i++) {
              const bb = new DataView(B.buffer, B.byteOffset).getUint16(2 * i, true);
              const pb = new DataView(P.buffer, P.byteOffset).getUint16(2 * i, true);
              const d = readElement(x, P, i) - readElement(x, B, i);
              if (isTie(d, y)) ties++;
              if (Math.abs(fieldOf(x, bb) - fieldOf(x, pb)) > EXACT_GAP[x]) beyond++;
              if (y === 'F16' && d !== 0 && Math.abs(d) < p2(-14)) subnormal++;
            }
            const st = sameSubtract(x, n, y, undefined, `${x} → ${y}, base fields ${lo}..${hi}`);
            expect(st.rounded).toBeGreaterThan(0);
          });
          // The data reach what the test is about (counted independently of the kernels).
          expect(ties).toBeGreaterThan(20);
          expect(beyond).toBeGreaterThan(20);
          if (y === 'F16') expect(subnormal).toBeGreaterThan(20);
        });

        it(`${x} → ${y}: overflow to Inf, NaN and Inf inputs, fields just past the top, signed zeros`, () => {
          const n = 1003;
          const top = topField(x, y);
          const one = LAYOUT16[x].one;
          const nanBits = x === 'BF16' ? 0x7fc1 : 0x7e01;
          const infBits = x === 'BF16' ? 0x7f80 : 0x7c00;
          const big = (field: number, neg: boolean) => (neg ? 0x8000 : 0) | (field << LAYOUT16[x].mant) | ((1 << LAYOUT16[x].mant) - 1);
          const maxField = LAYOUT16[x].maxField - 1;
          const cases: [string, [number, number][]][] = [
            ['overflow to Inf', [[big(maxField, true), big(maxField, false)]]],
            ['fields just past the top', [[big(top + 1, false), big(top + 1, true)], [pattern(x, top + 1, rng(3)), pattern(x, top, rng(4))]]],
            ['NaN post', [[0x3c00, nanBits | 0x8000]]],
            ['NaN base', [[nanBits, 0x3c00]]],
            ['Inf − Inf', [[infBits, infBits]]],
            ['Inf against a finite value', [[infBits | 0x8000, 0x3c00]]],
            ['signed zeros', [[0x8000, 0x0000], [0x0000, 0x8000], [0x8000, 0x8000], [0x0000, 0x0000]]],
          ];
          for (const [what, pairs] of cases) {
            for (const at of [0, 5, 8, 500, n - 1]) {
              const r = rng(900 + at);
              fillPairs(x, n, r, one - 3, one + 3, EXACT_GAP[x], top);
              pairs.forEach(([b, p], k) => {
                put(x, B, (at + 3 * k) % n, b);
                put(x, P, (at + 3 * k) % n, p);
              });
              const st = sameSubtract(x, n, y, undefined, `${x} → ${y}, ${what} at ${at}`);
              // (F16 deltas always fit BF16.)
              if (what === 'overflow to Inf' && !(x === 'F16' && y === 'BF16')) expect(st.maxError).toBe(Infinity);
            }
          }
        });
      }
    }

    it('accumulates Σd², Σbase², counts and max error over calls and staging blocks like the reference', () => {
      const n = 5000; // several staging blocks
      for (const x of NARROW) {
        for (const y of NARROW) {
          const r = rng(1234);
          fillPairs(x, n, r, LAYOUT16[x].one - 8, LAYOUT16[x].one + 2, EXACT_GAP[x] + 2, topField(x, y));
          const copy = (src: Uint8Array) => {
            const c = new Uint8Array(2 * n + 1).subarray(1);
            c.set(src.subarray(0, 2 * n));
            return c;
          };
          const [b, p] = [copy(B), copy(P)];
          const sw = newSubtractStats();
          const sr = newSubtractStats();
          const want = new Uint8Array(2 * n);
          const got = new Uint8Array(2 * n);
          for (const [from, to] of [
            [0, 1000],
            [1000, 1001],
            [1001, n],
          ]) {
            ref.subtract(x, b.subarray(2 * from), p.subarray(2 * from), to - from, y, want.subarray(2 * from), sr);
            wasm.subtract(x, b.subarray(2 * from), p.subarray(2 * from), to - from, y, got.subarray(2 * from), sw);
          }
          expectSame(got, want, y, n, `${x} → ${y} in pieces`);
          expect(sw, `${x} → ${y} in pieces`).toEqual(sr);
          expect(sr.sumSqDelta).toBeGreaterThan(0);
        }
      }
    });
  });

  describe('lossy subtracts from F32 and F64 (BF16 rounded from fl32(d) in F32 lanes)', () => {
    // The F32-lane loop rounds r = fl32(d) half to even on its bits, which is d's rounding unless r is itself a
    // 16-bit midpoint and d is not r: such groups must leave the loop for the exact path. F16 outputs are checked
    // the same way (their kernels round in float64).
    const f32 = new Float32Array(1);
    const u32 = new Uint32Array(f32.buffer);
    const f32Of = (bits: number) => ((u32[0] = bits >>> 0), f32[0]);
    const bitsOf32 = (x: number) => ((f32[0] = x), u32[0]);
    /** A random finite 16-bit midpoint of `y` as an F32 value: BF16 low half 0x8000; F16 (normal or subnormal) half a quantum. */
    function midpoint(y: 'BF16' | 'F16', r: () => number): number {
      const neg = r() < 0.5 ? -1 : 1;
      if (y === 'BF16') {
        // Binades from the subnormal range to the top (field 0..254); low half 0x8000.
        const field = r() < 0.1 ? 0 : r() < 0.1 ? 254 : 1 + Math.floor(r() * 253);
        return neg * f32Of((field << 23) | (Math.floor(r() * 128) << 16) | 0x8000);
      }
      // F16: (2k + 1)·2^(E − 11) for E in [−14, 15] (k < 2^11), or a subnormal (2k + 1)·2^-25.
      if (r() < 0.2) return neg * (2 * Math.floor(r() * 1024) + 1) * p2(-25);
      const e = -14 + Math.floor(r() * 30);
      return neg * (2048 + 2 * Math.floor(r() * 1024) + 1) * p2(e - 11);
    }
    /** The exponent of |x|'s binade. */
    const binade = (x: number) => Math.floor(Math.log2(Math.abs(x)));
    /** Residuals below half an F32 ulp of m: d = m − b stays m in F32; some gaps also round in float64 (2^-53 and beyond). */
    const residuals = (m: number) => [30, 40, 53, 54, 60, 100].map((gap) => p2(Math.max(-149, binade(m) - gap)));
    const isMid = (d: number, y: 'BF16' | 'F16') => {
      const r32 = Math.fround(d);
      const w = oracleDecode(oracleRound(r32, FMT[y]), FMT[y]);
      return Number.isFinite(w) && w !== r32 && Number.isFinite(2 * r32 - w) && oracleDecode(oracleRound(2 * r32 - w, FMT[y]), FMT[y]) === 2 * r32 - w;
    };

    for (const x of ['F32', 'F64'] as const) {
      for (const y of ['BF16', 'F16'] as const) {
        it(`${x} → ${y}: fl32(d) on a midpoint with d above or below it, both signs, huge exponent gaps, among fine-tune deltas`, () => {
          const n = 4099;
          const r = rng(700 + x.length * 3 + y.length);
          let hits = 0;
          for (const every of [1, 3, 8, 64]) {
            for (let i = 0; i < n; i++) {
              // Background: fine-tune-like deltas; every `every`-th element a midpoint with a residual.
              const base = gauss(r) * 0.02;
              writeElement(x, B, i, base);
              writeElement(x, P, i, readElement(x, B, i) + gauss(r) * 1e-3);
              if (i % every !== every - 1) continue;
              const m = midpoint(y, r);
              const res = residuals(m)[Math.floor(r() * 6)] * (r() < 0.5 ? -1 : 1);
              // post − base = m − res; or base on the other side: −base + post, with the midpoint in post or base.
              const [b, p] = r() < 0.5 ? [res, m] : [-m, -res];
              writeElement(x, B, i, b);
              writeElement(x, P, i, p);
              const d = readElement(x, P, i) - readElement(x, B, i);
              if (isMid(d, y) && Math.fround(d) !== d) hits++;
            }
            sameSubtract(x, n, y, undefined, `${x} → ${y}, a midpoint every ${every}`);
          }
          // The data reach the case (checked independently of the kernels): fl32(d) a midpoint, d not.
          expect(hits).toBeGreaterThan(300);
        });
      }
    }

    it('F32 → BF16: calls with many midpoints (deltas of few bits) finish in the inline loop, from any group', () => {
      // Exact midpoints (d = fl32(d)) stop the F32-lane loop as the inexact ones do; past a rate of stops the call
      // goes to the inline loop at a span boundary. Inexact midpoints before and after that point, at every offset.
      const n = 4099;
      const r = rng(801);
      for (const x of ['F32', 'F64'] as const) {
        for (const start of [0, 8, 24, 200, 1000, 3000]) {
          for (const period of [1, 2, 3, 5]) {
            for (let i = 0; i < n; i++) {
              const base = gauss(r) * 0.02;
              writeElement(x, B, i, base);
              // From `start` on, one group in `period` gets an exact midpoint (1 + (2k + 1)·2^-8, base 0).
              const g = i >> 3;
              if (i >= start && g % period === 0 && (i & 7) === (g & 7)) {
                writeElement(x, B, i, 0);
                writeElement(x, P, i, (1 + (2 * (g & 63) + 1) * p2(-8)) * (g & 1 ? -1 : 1));
              } else writeElement(x, P, i, readElement(x, B, i) + gauss(r) * 1e-3);
              // Inexact midpoints sprinkled everywhere: d = m ± 2^-40 with fl32(d) = m.
              if (i % 97 === 13) {
                writeElement(x, B, i, (i & 1 ? 1 : -1) * p2(-40));
                writeElement(x, P, i, (i & 2 ? 1 : -1) * (1 + 3 * p2(-8)));
              }
            }
            sameSubtract(x, n, 'BF16', undefined, `${x} → BF16, exact midpoints from ${start}, one group in ${period}`);
          }
        }
      }
    });

    it('F32 → BF16: overflow near the threshold and past F32, signed zeros, subnormal deltas and outputs', () => {
      const n = 1003;
      const r = rng(802);
      const thr = f32Of(0x7f7f8000); // (2 − 2^-8)·2^127: BF16's overflow threshold, an F32 midpoint
      const max32 = f32Of(0x7f7fffff);
      const cases: [string, number, number][] = [
        ['just below the threshold', 0, f32Of(0x7f7f7fff)],
        ['just above the threshold', 0, f32Of(0x7f7f8001)],
        ['the threshold', 0, thr],
        ['the threshold, negative', 0, -thr],
        ['F32 max', 0, max32],
        ['past F32: fl32(d) = Inf, d finite', -max32, max32],
        ['past F32, negative', max32, -max32],
        ['threshold less a residual', p2(80), thr],
        ['threshold plus a residual', -p2(80), thr],
        ['−0 − +0', 0, -0],
        ['+0 − −0', -0, 0],
        ['−0 − −0', -0, -0],
        ['x − x', 1.5, 1.5],
        ['smallest subnormal delta', p2(-149), 2 * p2(-149)],
        ['subnormal BF16 midpoint', 0, 3 * p2(-134)],
        ['subnormal BF16 midpoint less 2^-149', p2(-149), 3 * p2(-134)],
        ['subnormal BF16 midpoint plus 2^-149', -p2(-149), 3 * p2(-134)],
        ['largest subnormal less a half', p2(-149), p2(-126) - p2(-134)],
      ];
      for (const [what, b, p] of cases) {
        for (const at of [0, 7, 8, 500, n - 1]) {
          fillRandom('F32', B, n, r, 'clean');
          fillRandom('F32', P, n, r, 'clean', B);
          writeElement('F32', B, at, b);
          writeElement('F32', P, at, p);
          const st = sameSubtract('F32', n, 'BF16', undefined, `F32 → BF16, ${what} at ${at}`);
          if (what.startsWith('past F32')) expect(st.maxError).toBe(Infinity);
        }
      }
      expect(bitsOf32(thr)).toBe(0x7f7f8000);
    });
  });

  describe('lossy subtracts from F32 and F64 to F16 (round16Sub in float64 lanes)', () => {
    // The inline loop rounds with a signed magic constant, finds exact lanes as stored − d = +0, stops at a group whose
    // stored pattern has an all-ones exponent (the band [65520, 65536) that rounds to Inf, and beyond) for a scalar
    // redo of the call, and counts exact lanes against $nspan. Deltas land at lanes of both groups of a span, in the
    // last span and in the tail; probes use the same loop.
    const cases: [string, number, number][] = [
      ['65519.99 (below the threshold)', 0, 65519.99],
      ['the threshold 65520', 0, 65520],
      ['the threshold, negative', 0, -65520],
      ['inside the Inf band', 100, 65630],
      ['just below 2^16', 0, 65535.5],
      ['2^16', 0, 65536],
      ['−2^16 − 1', 1, -65535],
      ['2^20', 0, p2(20)],
      ['2^100', -p2(100), p2(100) * 2],
      ['largest F32', 0, 3.4028234663852886e38],
      ['F32 max − (−F32 max): d past F32', -3.4028234663852886e38, 3.4028234663852886e38],
      ['65504 (max F16, exact)', 0, 65504],
      ['65504 + 15.99 (rounds down)', 0, 65519.98],
      ['−0 − +0', 0, -0],
      ['+0 − −0', -0, 0],
      ['−0 − −0', -0, -0],
      ['x − x', 1.5, 1.5],
      ['smallest F16 subnormal', 0, p2(-24)],
      ['a tie between 0 and the smallest subnormal', 0, p2(-25)],
      ['a negative tie to −0', 0, -p2(-25)],
      ['3·2^-25: a tie to even (2^-23)', 0, 3 * p2(-25)],
      ['just above the tie to 0', 0, p2(-25) + p2(-40)],
      ['largest subnormal plus a half quantum', 0, p2(-14) - p2(-25)],
      ['a tie at 1 + 2^-11', 1, 2 + p2(-11)],
      ['a tie at 1 + 3·2^-11', -1, p2(-10) * 1.5],
      ['far below F16: 2^-60', 0, p2(-60)],
      ['a tiny negative (rounds to −0)', 0, -p2(-30)],
    ];
    const f64Only: [string, number, number][] = [
      ['2^511 (d² finite)', 0, p2(511)],
      ['2^600 (d² overflows Σd²)', 0, p2(600)],
      ['2^1000', 0, p2(1000)],
      ['−2^1023', 0, -p2(1023)],
      ['float64 subnormal delta', 0, 5e-324],
      ['float64 subnormal, negative', 0, -p2(-1040)],
      ['float64 smallest normal', 0, p2(-1022)],
    ];
    /** Fine-tune-like inputs (no lane overflows F16, so the vector loop keeps every call). */
    const fineTune = (x: FloatDType, n: number, r: () => number) => {
      for (let i = 0; i < n; i++) {
        writeElement(x, B, i, (r() - 0.5) * 0.04);
        writeElement(x, P, i, readElement(x, B, i) + (r() - 0.5) * 2e-3);
      }
    };
    for (const x of ['F32', 'F64'] as const) {
      it(`${x} → F16: the Inf band and beyond, ties, subnormal outputs, ±0, among fine-tune deltas, with and without probes`, () => {
        const n = 1003;
        const r = rng(x === 'F32' ? 903 : 904);
        for (const [what, b, p] of x === 'F64' ? [...cases, ...f64Only] : cases) {
          for (const at of [0, 3, 9, 15, 500, 991, n - 1]) {
            fineTune(x, n, r);
            writeElement(x, B, at, b);
            writeElement(x, P, at, p);
            for (const probe of at === 9 ? [undefined, 'BF16', 'F16', 'F32'] as const : [undefined] as const) {
              const st = sameSubtract(x, n, 'F16', probe, `${x} → F16, ${what} at ${at}, probe ${probe}`);
              const d = readElement(x, P, at) - readElement(x, B, at);
              if (Math.abs(d) >= 65520) expect(st.maxError, what).toBe(Infinity);
              else expect(st.maxError, what).toBeLessThan(Infinity);
            }
          }
        }
      });

      it(`${x} → F16: exact and tied deltas in every lane, rounded count and max error over calls, redo after a clean call`, () => {
        const n = 4099;
        const r = rng(x === 'F32' ? 905 : 906);
        // Deltas on the F16 grid (exact), on its midpoints (ties both ways), and just off them, in every lane.
        for (let i = 0; i < n; i++) {
          const k = Math.floor(r() * 4096) - 2048;
          const e = Math.floor(r() * 30) - 24;
          const q = p2(e - 10);
          const d = i % 3 === 0 ? k * q : i % 3 === 1 ? (k + 0.5) * q : (k + 0.5) * q + (r() < 0.5 ? 1 : -1) * p2(e - 30);
          writeElement(x, B, i, i % 2 ? 0.25 : 0);
          writeElement(x, P, i, readElement(x, B, i) + d);
        }
        const st = sameSubtract(x, n, 'F16', undefined, `${x} → F16 grid, ties and near ties`);
        expect(st.rounded).toBeGreaterThan(n / 3);
        expect(st.rounded).toBeLessThan(n);
        // Over calls: a clean call, then one that overflows (redone in scalar from the stats so far), then a clean one.
        const sw = newSubtractStats();
        const sr = newSubtractStats();
        const m = 1000;
        const want = new Uint8Array(3 * m * 2);
        const got = new Uint8Array(3 * m * 2);
        for (let c = 0; c < 3; c++) {
          fineTune(x, m, r);
          if (c === 1) writeElement(x, P, 333, 70000);
          ref.subtract(x, B, P, m, 'F16', want.subarray(2 * m * c), sr);
          wasm.subtract(x, B, P, m, 'F16', got.subarray(2 * m * c), sw);
        }
        expectSame(got, want, 'F16', 3 * m, `${x} → F16 over calls`);
        expect(sw).toEqual(sr);
        expect(sr.maxError).toBe(Infinity);
        expect(sr.rounded).toBeGreaterThan(2 * m);
      });
    }
  });

  it('rounds F32/F64 → BF16 with a probe and BF16 → F16 with a probe (round16Sub\'s inline loop with its hand-off flag) across the Inf band and beyond', () => {
    const n = 1003;
    const r = rng(907);
    const thr = (2 - p2(-8)) * p2(127);
    const bf16Cases = [thr * (1 - p2(-20)), thr, -thr, thr * (1 + p2(-10)), p2(128), p2(130), -p2(200), p2(511), p2(600), p2(-133), p2(-134), 3 * p2(-134), -p2(-150), -0, 1 + p2(-8), 1 + 3 * p2(-8)];
    const f16Cases = [65519.99, 65520, -65530, 65536, p2(20), -p2(30), p2(-24), p2(-25), 3 * p2(-25), -p2(-26), -0, 1 + p2(-11)];
    const runs: [FloatDType, 'BF16' | 'F16', number[]][] = [
      ['F32', 'BF16', bf16Cases],
      ['F64', 'BF16', bf16Cases],
      ['BF16', 'F16', f16Cases],
    ];
    for (const [x, y, ds] of runs) {
      for (const d of ds) {
        for (const at of [0, 9, 991, n - 1]) {
          for (let i = 0; i < n; i++) {
            writeElement(x, B, i, (r() - 0.5) * 0.04);
            writeElement(x, P, i, readElement(x, B, i) + (r() - 0.5) * 2e-3);
          }
          writeElement(x, B, at, 0);
          writeElement(x, P, at, d);
          for (const probe of ['F32', x === 'BF16' ? 'BF16' : 'F16'] as const) sameSubtract(x, n, y, probe, `${x} → ${y} (probe ${probe}), d = ${d} at ${at}`);
        }
      }
    }
  });

  it('hands off NaNs in either group of an unrolled span, and runs the tails, at every length near a span', () => {
    const r = rng(70);
    for (const n of [1, 15, 16, 17, 31, 32, 33, 2047, 2048, 2049, 4111]) {
      for (const at of [0, 7, 8, 9, 15, 16, n - 1]) {
        if (at >= n) continue;
        fillRandom('BF16', B, n, r, 'clean');
        fillRandom('F32', DS[0], n, r, 'clean');
        fillRandom('F16', DS[1], n, r, 'clean');
        writeElement('F32', DS[0], at, nan(at % 2 === 0));
        sameApply('BF16', [{ dtype: 'F32', data: DS[0], scale: 1 }], n, 'BF16', `NaN at ${at} of ${n}, one delta`);
        sameApply(
          'BF16',
          [
            { dtype: 'F32', data: DS[0], scale: 0.5 },
            { dtype: 'F16', data: DS[1], scale: 0.25 },
          ],
          n,
          'BF16',
          `NaN at ${at} of ${n}, two deltas`,
        );
        fillRandom('BF16', P, n, r, 'clean', B);
        writeElement('BF16', P, at, 3 * 2 ** 100); // a delta F32 cannot hold: the group goes to the rare path
        sameSubtract('BF16', n, 'F32', 'BF16', `rounded at ${at} of ${n}`);
      }
    }
  });

  it('applies F16 deltas with scales near and beyond the range the kernels fold 2^112 into', () => {
    const n = 1003;
    const r = rng(80);
    fillRandom('BF16', B, n, r, 'dirty');
    fillRandom('F16', DS[0], n, r, 'dirty');
    for (const scale of [2 ** 800, 2 ** 900, 2 ** 901, -(2 ** 1000), Number.MAX_VALUE, 2 ** -1074, -1e-300, 65504]) {
      sameApply('BF16', [{ dtype: 'F16', data: DS[0], scale }], n, 'BF16', `F16 delta × ${scale}`);
      sameApply('F16', [{ dtype: 'F16', data: DS[0], scale }], n, 'F32', `F16 delta × ${scale} → F32`);
      // Only a wide output keeps s·d finite where a folded s·2^112 would overflow.
      sameApply('F64', [{ dtype: 'F16', data: DS[0], scale }], n, 'F64', `F16 delta × ${scale} → F64`);
      sameApply('F64', [{ dtype: 'F16', data: DS[0], scale }, { dtype: 'F16', data: DS[0], scale: 1 }], n, 'F64', `F16 deltas × ${scale}, 1 → F64`);
    }
    // An F16 base to F16 runs 2^-112 times too small: scales at and beyond the range where that stays exact.
    fillRandom('F16', B, n, r, 'dirty');
    fillRandom('F32', DS[1], n, r, 'dirty');
    for (const scale of [2 ** 800, 2 ** 801, 2 ** -700, 2 ** -701, -(2 ** -1074), 2 ** 1023, 0.7, -0, Infinity, nan(true)]) {
      for (const dt of ['BF16', 'F16', 'F32'] as const) {
        const data = dt === 'F32' ? DS[1] : DS[0];
        sameApply('F16', [{ dtype: dt, data, scale }], n, 'F16', `F16 + ${dt} × ${scale}`);
        sameApply('F16', [{ dtype: dt, data, scale }, { dtype: 'F32', data: DS[1], scale: 0.3 }], n, 'F16', `F16 + ${dt} × ${scale} + F32`);
      }
    }
  });

  it('rounds applies to BF16/F16 across the vector rounding\'s limits: the band below 2^(emax+1) it rounds to Inf, the binades above it it hands off, subnormal and ±0 results', () => {
    // x = base + s0·d0 (+ s1·d1) aimed at each region, both signs, every lane position: max finite, the overflow tie
    // and the band above it, 2^(emax+1) and past it (to 2^1000 from an F64 base), ties among subnormals and at the
    // smallest normal, exact cancellation to +0 and signed zeros. The scales are fractions of the region's quantum, so
    // small integer deltas of any dtype move x by exact multiples of a quarter quantum.
    const n = 2048;
    const r = rng(95);
    const int = (lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
    for (const y of ['BF16', 'F16'] as const) {
      const { emin, emax, mant } = y === 'BF16' ? { emin: -126, emax: 127, mant: 7 } : { emin: -14, emax: 15, mant: 10 };
      const [qTop, qLow] = [p2(emax - mant), p2(emin - mant)];
      const over = (2 - p2(-mant - 1)) * p2(emax);
      const region = (t: number) =>
        Object.is(t, -0) ? '−0' : t === 0 ? '+0' : Math.abs(t) < p2(emin) ? 'subnormal' : Math.abs(t) >= p2(emax + 1) ? 'above' : Math.abs(t) >= over ? 'Inf band' : 'finite';
      for (const [x, dts] of [
        [y, ['F16', 'F16']],
        [y, ['F16']],
        [y, ['BF16', 'F32']],
        ['F64', ['F16']],
      ] as [FloatDType, FloatDType[]][]) {
        const seen: Record<string, number> = {};
        for (const kind of ['top', 'past', 'low', 'zero'] as const) {
          const q = kind === 'top' || kind === 'past' ? qTop : qLow;
          const scales = kind === 'past' || kind === 'zero' ? [q, q / 2] : [q / 2, q / 4];
          const deltas = dts.map((dtype, k) => ({ dtype, data: DS[k], scale: scales[k] }));
          for (let i = 0; i < n; i++) {
            const sign = r() < 0.5 ? -1 : 1;
            let base: number;
            let ds: number[];
            if (kind === 'top') {
              base = sign * (2 - int(1, 3) * p2(-mant)) * p2(emax);
              ds = deltas.map(() => int(-8, 8));
            } else if (kind === 'past') {
              base = x === 'F64' && r() < 0.5 ? sign * p2(int(emax + 1, 1000)) : sign * (1 + r()) * p2(emax);
              ds = deltas.map(() => sign * p2(mant + int(0, 4)));
            } else if (kind === 'low') {
              base = sign * qLow * int(0, 2 ** (mant + 1) + 4);
              ds = deltas.map(() => int(-8, 8));
            } else if (r() < 0.5) {
              const k = int(1, 64);
              base = sign * qLow * k;
              ds = deltas.map((_, j) => (j === 0 ? -sign * k : r() < 0.5 ? -0 : 0));
            } else {
              base = r() < 0.5 ? -0 : 0;
              ds = deltas.map(() => (r() < 0.5 ? -0 : 0));
            }
            writeElement(x, B, i, base);
            let t = readElement(x, B, i);
            deltas.forEach((d, j) => {
              writeElement(d.dtype, d.data, i, ds[j]);
              t = t + d.scale * readElement(d.dtype, d.data, i);
            });
            seen[region(t)] = (seen[region(t)] ?? 0) + 1;
          }
          sameApply(x, deltas, n, y, `${x} + ${dts.join('+')} → ${y}, ${kind}`);
        }
        for (const k of ['finite', 'Inf band', 'above', 'subnormal', '+0', '−0']) {
          expect(seen[k] ?? 0, `${x} + ${dts.join('+')} → ${y}: results ${k} (${JSON.stringify(seen)})`).toBeGreaterThan(20);
        }
      }
    }
  });

  it('hands off an F16 Inf or NaN in any one input of an apply (base, first or second delta), in every lane', () => {
    const r = rng(96);
    const n = 64;
    const specials = [0x7c00, 0xfc00, 0x7e00, 0xfe01, 0x7c01];
    for (const [x, y] of [
      ['F16', 'F16'],
      ['BF16', 'BF16'],
      ['F16', 'F32'],
      ['F32', 'F32'],
    ] as [FloatDType, FloatDType][]) {
      for (const dts of [['F16', 'F16'], ['F16'], ['BF16', 'F16'], ['F16', 'F32']] as FloatDType[][]) {
        if (dts.length === 2 && y !== x) continue; // chained: the one-delta kernels take it
        const inputs = [...(x === 'F16' ? [B] : []), ...dts.flatMap((dt, k) => (dt === 'F16' ? [DS[k]] : []))];
        for (const [which, buf] of inputs.entries()) {
          for (let lane = 0; lane < 8; lane++) {
            fillRandom(x, B, n, r, 'clean');
            dts.forEach((dt, k) => fillRandom(dt, DS[k], n, r, 'clean'));
            const v = new DataView(buf.buffer, buf.byteOffset);
            for (const g of [0, 3, 7]) v.setUint16(2 * (8 * g + lane), specials[(g + lane) % specials.length], true);
            const deltas = dts.map((dt, k) => ({ dtype: dt, data: DS[k], scale: [0.7, -0.3][k] }));
            sameApply(x, deltas, n, y, `${x} + ${dts.join('+')} → ${y}: Inf/NaN in F16 input ${which}, lane ${lane}`);
          }
        }
      }
    }
  });

  it('accumulates stats over calls like the reference, through the fallback too', () => {
    const n = 4096;
    const r = rng(90);
    fillRandom('BF16', B, n, r, 'clean');
    fillRandom('BF16', P, n, r, 'clean', B);
    for (const y of ['BF16', 'F32'] as const) {
      const sw = newSubtractStats();
      const sr = newSubtractStats();
      const want = new Uint8Array(n * SIZE[y]);
      for (const [from, to] of [
        [0, 1000],
        [1000, 1001],
        [1001, 4096],
      ]) {
        const len = to - from;
        ref.subtract('BF16', B.subarray(2 * from), P.subarray(2 * from), len, y, want.subarray(SIZE[y] * from), sr, 'BF16');
        wasm.subtract('BF16', B.subarray(2 * from), P.subarray(2 * from), len, y, O.subarray(SIZE[y] * from), sw, 'BF16');
      }
      expectSame(O, want, y, n, `chunked → ${y}`);
      expect(sw).toEqual(sr);
    }
  });
});
