// Little-endian float elements widened exactly to float64, for summing. By hand: a table per 16-bit format
// and typed-array views make this a plain indexed loop (no library widens BF16/F16 into a Float64Array).
import type { FloatDType } from '../format/dtype.js';
import { bf16BitsToF64, f16BitsToF64 } from '../kernels/index.js';

const LITTLE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const tables: Partial<Record<'BF16' | 'F16', Float64Array>> = {};

function table(dtype: 'BF16' | 'F16'): Float64Array {
  let t = tables[dtype];
  if (!t) {
    const decode = dtype === 'BF16' ? bf16BitsToF64 : f16BitsToF64;
    t = new Float64Array(65536);
    for (let b = 0; b < 65536; b++) t[b] = decode(b);
    tables[dtype] = t;
  }
  return t;
}

/** Writes the n elements of `bytes` into out[at .. at+n), each widened exactly to float64. */
export function widen(dtype: FloatDType, bytes: Uint8Array, n: number, out: Float64Array, at = 0): void {
  const size = dtype === 'F64' ? 8 : dtype === 'F32' ? 4 : 2;
  const aligned = LITTLE && bytes.byteOffset % size === 0;
  if (!aligned) {
    const v = new DataView(bytes.buffer, bytes.byteOffset, n * size);
    if (dtype === 'F64') for (let i = 0; i < n; i++) out[at + i] = v.getFloat64(8 * i, true);
    else if (dtype === 'F32') for (let i = 0; i < n; i++) out[at + i] = v.getFloat32(4 * i, true);
    else {
      const t = table(dtype);
      for (let i = 0; i < n; i++) out[at + i] = t[v.getUint16(2 * i, true)];
    }
    return;
  }
  if (dtype === 'F64') {
    out.set(new Float64Array(bytes.buffer, bytes.byteOffset, n), at);
  } else if (dtype === 'F32') {
    out.set(new Float32Array(bytes.buffer, bytes.byteOffset, n), at);
  } else {
    const t = table(dtype);
    const u = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
    for (let i = 0; i < n; i++) out[at + i] = t[u[i]];
  }
}
