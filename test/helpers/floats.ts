/** Exact float helpers, independent of the code under test: float64 bits and a BigInt rounding oracle. */

const dv = new DataView(new ArrayBuffer(8));
export function bitsOf(x: number): bigint {
  dv.setFloat64(0, x);
  return dv.getBigUint64(0);
}
export function fromBits(b: bigint): number {
  dv.setBigUint64(0, b);
  return dv.getFloat64(0);
}

export interface Fmt {
  mant: number;
  emin: number;
  emax: number;
  width: 16 | 32;
}
export const FMT: Record<'BF16' | 'F16' | 'F32', Fmt> = {
  BF16: { mant: 7, emin: -126, emax: 127, width: 16 },
  F16: { mant: 10, emin: -14, emax: 15, width: 16 },
  F32: { mant: 23, emin: -126, emax: 127, width: 32 },
};

function bitLength(m: bigint): number {
  return m.toString(2).length;
}

/** x rounded once, half to even, to `f`, as bits; NaN gives the quiet NaN with x's sign. Exact BigInt arithmetic. */
export function oracleRound(x: number, f: Fmt): number {
  const b = bitsOf(x);
  const sign = b >> 63n === 1n ? 2 ** (f.width - 1) : 0;
  const expBits = f.width - 1 - f.mant;
  const bias = f.emax;
  const inf = (2 ** expBits - 1) * 2 ** f.mant;
  const field = Number((b >> 52n) & 0x7ffn);
  const frac = b & ((1n << 52n) - 1n);
  if (field === 0x7ff) return sign + inf + (frac === 0n ? 0 : 2 ** (f.mant - 1));
  if (field === 0 && frac === 0n) return sign;
  const m = field === 0 ? frac : frac | (1n << 52n);
  const e = field === 0 ? -1074 : field - 1075; // |x| = m · 2^e
  const top = e + bitLength(m) - 1;
  let q = Math.max(top, f.emin) - f.mant; // exponent of the quantum
  let k: bigint;
  if (e >= q) k = m << BigInt(e - q);
  else {
    const sh = BigInt(q - e);
    k = m >> sh;
    const rem = m - (k << sh);
    const half = 1n << (sh - 1n);
    if (rem > half || (rem === half && (k & 1n) === 1n)) k += 1n;
  }
  if (k === 1n << BigInt(f.mant + 1)) {
    k >>= 1n;
    q += 1;
  }
  if (k >= 1n << BigInt(f.mant)) {
    const exp = q + f.mant;
    if (exp > f.emax) return sign + inf;
    return sign + (exp + bias) * 2 ** f.mant + Number(k - (1n << BigInt(f.mant)));
  }
  return sign + Number(k); // subnormal (k = 2^mant would be the smallest normal, same bits)
}

/** The exact value of 16-bit pattern `bits` of `f`, built as float64 bits. */
export function oracleDecode(bits: number, f: Fmt): number {
  const sign = bits >= 2 ** (f.width - 1) ? 1n << 63n : 0n;
  const mag = bits % 2 ** (f.width - 1);
  const field = Math.floor(mag / 2 ** f.mant);
  let m = BigInt(mag % 2 ** f.mant);
  if (field === 2 ** (f.width - 1 - f.mant) - 1) return fromBits(sign | (0x7ffn << 52n) | (m << BigInt(52 - f.mant)));
  if (field === 0 && m === 0n) return fromBits(sign);
  let exp = field === 0 ? f.emin : field - f.emax;
  if (field === 0) {
    while (m < 1n << BigInt(f.mant)) {
      m <<= 1n;
      exp -= 1;
    }
  }
  const fracBits = (m & ((1n << BigInt(f.mant)) - 1n)) << BigInt(52 - f.mant);
  return fromBits(sign | (BigInt(exp + 1023) << 52n) | fracBits);
}

/** Every element of a little-endian float tensor, widened exactly to float64. */
export function decodeFloats(dtype: string, bytes: Uint8Array): number[] {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (dtype) {
    case 'BF16':
    case 'F16':
      return Array.from({ length: bytes.length / 2 }, (_, i) => oracleDecode(v.getUint16(2 * i, true), FMT[dtype]));
    case 'F32':
      return Array.from({ length: bytes.length / 4 }, (_, i) => v.getFloat32(4 * i, true));
    case 'F64':
      return Array.from({ length: bytes.length / 8 }, (_, i) => v.getFloat64(8 * i, true));
    default:
      throw new Error(`not a float dtype: ${dtype}`);
  }
}

/** x rounded once, half to even, to `dtype`, as a float64 value. */
export function roundTo(dtype: 'BF16' | 'F16' | 'F32' | 'F64', x: number): number {
  return dtype === 'F64' ? x : oracleDecode(oracleRound(x, FMT[dtype]), FMT[dtype]);
}

/** The bytes of `values` stored in `dtype`, each rounded once, half to even. */
export function encodeFloats(dtype: 'BF16' | 'F16' | 'F32' | 'F64', values: readonly number[]): Uint8Array {
  const size = { BF16: 2, F16: 2, F32: 4, F64: 8 }[dtype];
  const out = new Uint8Array(values.length * size);
  const v = new DataView(out.buffer);
  values.forEach((x, i) => {
    if (dtype === 'F64') v.setFloat64(8 * i, x, true);
    else if (dtype === 'F32') v.setUint32(4 * i, oracleRound(x, FMT.F32), true);
    else v.setUint16(2 * i, oracleRound(x, FMT[dtype]), true);
  });
  return out;
}
