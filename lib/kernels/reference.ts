// Scalar reference kernels and element helpers: plain float64 JavaScript, written for clarity, used to check the
// WebAssembly kernels bit for bit. Node has no Float16Array and no bfloat16 type, and Math.fround is the only
// built-in narrowing, so rounding to BF16/F16 is written out here.
import { dtypeSize, type FloatDType } from '../format/dtype.js';
import { BumpArena, checkApply, checkSubtract, combine4 } from './common.js';
import type { DeltaInput, Kernels, SubtractStats } from './types.js';

// Bit reinterpretation through shared scratch (single-threaded). Little-endian host: w64[0] is the low word.
const f64 = new Float64Array(1);
const w64 = new Uint32Array(f64.buffer);
const f32 = new Float32Array(1);
const w32 = new Uint32Array(f32.buffer);

/** 2^k for −1022 ≤ k ≤ 1023, built from bits so it is exact whatever Math.pow does. */
const POW2 = new Float64Array(2046);
for (let k = -1022; k <= 1023; k++) {
  w64[0] = 0;
  w64[1] = (k + 1023) << 20;
  POW2[k + 1022] = f64[0];
}
function pow2(k: number): number {
  return POW2[k + 1022];
}

const TWO52 = pow2(52);
/** Round half to even to an integer, for 0 ≤ t < 2^51: the float64 addition itself rounds at the units place. */
function rint(t: number): number {
  return t + TWO52 - TWO52;
}

interface SmallFormat {
  mant: number; // explicit mantissa bits
  emin: number; // exponent of the smallest normal
  emax: number; // exponent of the largest finite binade
  bias: number;
  inf: number; // bits of +Inf
  qnan: number; // bits of the canonical quiet NaN
}
const BF16_FMT: SmallFormat = { mant: 7, emin: -126, emax: 127, bias: 127, inf: 0x7f80, qnan: 0x7fc0 };
const F16_FMT: SmallFormat = { mant: 10, emin: -14, emax: 15, bias: 15, inf: 0x7c00, qnan: 0x7e00 };

/** Rounds x once, half to even, to a 16-bit float format; NaN becomes the quiet NaN with x's sign bit. */
function roundSmall(x: number, f: SmallFormat): number {
  f64[0] = x;
  const hi = w64[1];
  const sign = (hi >>> 31) << 15;
  if (x !== x) return sign | f.qnan;
  const a = Math.abs(x);
  if (a === Infinity) return sign | f.inf;
  if (a >= pow2(f.emin)) {
    let e = ((hi >>> 20) & 0x7ff) - 1023;
    let k = rint(a / pow2(e - f.mant)); // significand scaled to an integer in [2^mant, 2^(mant+1)]
    if (k === pow2(f.mant + 1)) {
      k /= 2;
      e += 1;
    }
    if (e > f.emax) return sign | f.inf;
    return sign | ((e + f.bias) << f.mant) | (k - pow2(f.mant));
  }
  // Subnormal range: the quantum is fixed at 2^(emin − mant); k = 2^mant lands on the smallest normal's bits.
  return sign | rint(a / pow2(f.emin - f.mant));
}

export function bf16BitsToF64(bits: number): number {
  w32[0] = (bits & 0xffff) << 16;
  return f32[0];
}

export function f16BitsToF64(bits: number): number {
  const e = (bits >>> 10) & 0x1f;
  const m = bits & 0x3ff;
  const mag = e === 0 ? m * pow2(-24) : e === 31 ? (m === 0 ? Infinity : NaN) : (1024 + m) * pow2(e - 25);
  return bits & 0x8000 ? -mag : mag;
}

export function f64ToBf16Bits(x: number): number {
  return roundSmall(x, BF16_FMT);
}

export function f64ToF16Bits(x: number): number {
  return roundSmall(x, F16_FMT);
}

/** F32 bits of x rounded once (Math.fround is correctly rounded); NaN becomes the quiet NaN with x's sign. */
export function f64ToF32Bits(x: number): number {
  if (x !== x) {
    f64[0] = x;
    return ((w64[1] & 0x80000000) | 0x7fc00000) >>> 0;
  }
  f32[0] = x;
  return w32[0];
}

/** The value x takes once stored as `dtype` (NaN stays NaN). */
export function roundValue(dtype: FloatDType, x: number): number {
  switch (dtype) {
    case 'BF16':
      return bf16BitsToF64(f64ToBf16Bits(x));
    case 'F16':
      return f16BitsToF64(f64ToF16Bits(x));
    case 'F32':
      return Math.fround(x);
    case 'F64':
      return x;
  }
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function read(dtype: FloatDType, v: DataView, i: number): number {
  switch (dtype) {
    case 'BF16':
      return bf16BitsToF64(v.getUint16(2 * i, true));
    case 'F16':
      return f16BitsToF64(v.getUint16(2 * i, true));
    case 'F32':
      return v.getFloat32(4 * i, true);
    case 'F64':
      return v.getFloat64(8 * i, true);
  }
}

/** Sign bit of the stored element: the sign a NaN input passes on. */
function rawSign(dtype: FloatDType, v: DataView, i: number): number {
  const size = dtypeSize(dtype);
  return v.getUint8(size * i + size - 1) >>> 7;
}

/** Stores the quiet NaN with the given sign. */
function writeNaN(dtype: FloatDType, v: DataView, i: number, neg: number): void {
  switch (dtype) {
    case 'BF16':
      return v.setUint16(2 * i, (neg << 15) | 0x7fc0, true);
    case 'F16':
      return v.setUint16(2 * i, (neg << 15) | 0x7e00, true);
    case 'F32':
      return v.setUint32(4 * i, ((neg << 31) | 0x7fc00000) >>> 0, true);
    case 'F64':
      v.setUint32(8 * i, 0, true);
      return v.setUint32(8 * i + 4, ((neg << 31) | 0x7ff80000) >>> 0, true);
  }
}

/** Stores x (not NaN) rounded once to `dtype`; returns the stored value. */
function writeRounded(dtype: FloatDType, v: DataView, i: number, x: number): number {
  switch (dtype) {
    case 'BF16': {
      const bits = f64ToBf16Bits(x);
      v.setUint16(2 * i, bits, true);
      return bf16BitsToF64(bits);
    }
    case 'F16': {
      const bits = f64ToF16Bits(x);
      v.setUint16(2 * i, bits, true);
      return f16BitsToF64(bits);
    }
    case 'F32':
      v.setFloat32(4 * i, x, true);
      return Math.fround(x);
    case 'F64':
      v.setFloat64(8 * i, x, true);
      return x;
  }
}

/** Element i of little-endian `dtype` bytes, widened exactly to float64. */
export function readElement(dtype: FloatDType, bytes: Uint8Array, i: number): number {
  return read(dtype, viewOf(bytes), i);
}

/** Stores x as element i, rounded once from float64 (NaN: the quiet NaN with x's sign). */
export function writeElement(dtype: FloatDType, bytes: Uint8Array, i: number, x: number): void {
  const v = viewOf(bytes);
  if (x !== x) {
    f64[0] = x;
    writeNaN(dtype, v, i, w64[1] >>> 31);
  } else writeRounded(dtype, v, i, x);
}

function signOf(x: number): number {
  f64[0] = x;
  return w64[1] >>> 31;
}

export function referenceSubtract(
  dtype: FloatDType,
  base: Uint8Array,
  post: Uint8Array,
  n: number,
  outDtype: FloatDType,
  out: Uint8Array,
  stats: SubtractStats,
  probe?: FloatDType,
): void {
  checkSubtract(dtype, base, post, n, outDtype, out, probe);
  const bv = viewOf(base);
  const pv = viewOf(post);
  const ov = viewOf(out);
  // Squares go to 4 partial sums by i mod 4, combined in a fixed order: the order the SIMD kernels use.
  const sqD = new Float64Array(4);
  const sqB = new Float64Array(4);
  let rounded = 0;
  let maxError = 0;
  let misses = 0;
  const useProbe = probe !== undefined && probe !== 'F64';
  for (let i = 0; i < n; i++) {
    const b = read(dtype, bv, i);
    const p = read(dtype, pv, i);
    const d = p - b;
    if (d !== d) {
      // The NaN's sign: post's if post is NaN, else base's, else the invalid-operation NaN (negative).
      writeNaN(outDtype, ov, i, p !== p ? rawSign(dtype, pv, i) : b !== b ? rawSign(dtype, bv, i) : 1);
    } else {
      const w = writeRounded(outDtype, ov, i, d);
      if (w !== d) {
        rounded++;
        const err = Math.abs(w - d);
        if (err > maxError) maxError = err;
      }
      if (useProbe && roundValue(probe, d) !== d) misses++;
      if (Math.abs(d) < Infinity) sqD[i & 3] += d * d;
    }
    if (Math.abs(b) < Infinity) sqB[i & 3] += b * b;
  }
  stats.elements += n;
  stats.rounded += rounded;
  stats.maxError = Math.max(stats.maxError, maxError);
  stats.probeMisses += misses;
  stats.sumSqDelta += combine4(sqD);
  stats.sumSqBase += combine4(sqB);
}

export function referenceApply(baseDtype: FloatDType, base: Uint8Array, deltas: readonly DeltaInput[], n: number, outDtype: FloatDType, out: Uint8Array): void {
  checkApply(baseDtype, base, deltas, n, outDtype, out);
  const bv = viewOf(base);
  const ov = viewOf(out);
  const ds = deltas.map((d) => ({ dtype: d.dtype, v: viewOf(d.data), s: d.scale, sneg: signOf(d.scale) }));
  for (let i = 0; i < n; i++) {
    let x = read(baseDtype, bv, i);
    // A NaN's sign is tracked beside it: arithmetic on NaNs does not promise one.
    let neg = x !== x ? rawSign(baseDtype, bv, i) : 0;
    for (const d of ds) {
      if (x !== x) break; // x + anything keeps x's NaN
      const dv = read(d.dtype, d.v, i);
      const p = d.s * dv;
      if (p !== p) {
        x = NaN;
        neg = d.s !== d.s ? d.sneg : dv !== dv ? rawSign(d.dtype, d.v, i) : 1;
      } else {
        x = x + p;
        if (x !== x) neg = 1; // Inf − Inf
      }
    }
    if (x !== x) writeNaN(outDtype, ov, i, neg);
    else writeRounded(outDtype, ov, i, x);
  }
}

/** The reference kernels: the functions above over a plain ArrayBuffer arena. */
export function createReferenceKernels(arenaBytes: number): Kernels {
  const memory = new ArrayBuffer(arenaBytes);
  const arena = new BumpArena(0, arenaBytes);
  return {
    impl: 'reference',
    alloc: (bytes) => new Uint8Array(memory, arena.take(bytes), bytes),
    subtract: referenceSubtract,
    apply: referenceApply,
  };
}
