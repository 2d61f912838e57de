import { createReferenceKernels } from './reference.js';
import type { Kernels } from './types.js';
import { createWasmKernels } from './wasm.js';

export * from './types.js';
export { bf16BitsToF64, f16BitsToF64, f64ToBf16Bits, f64ToF16Bits, f64ToF32Bits, readElement, roundValue, writeElement } from './reference.js';

/** Kernels over an arena of `arenaBytes` for `alloc`; 'wasm' (default) is the fast path, 'reference' plain JS. */
export async function createKernels(opts: { arenaBytes: number; impl?: 'wasm' | 'reference' }): Promise<Kernels> {
  const { arenaBytes, impl = 'wasm' } = opts;
  if (!Number.isSafeInteger(arenaBytes) || arenaBytes < 0) throw new RangeError(`bad arena size ${arenaBytes}`);
  if (impl === 'reference') return createReferenceKernels(arenaBytes);
  if (impl === 'wasm') return createWasmKernels(arenaBytes);
  throw new TypeError(`unknown kernel implementation ${String(impl)}`);
}
