// TEMPORARY shim by the lead so the engine can be tested before wasm.ts lands; the kernels helper replaces this file.
import { createReferenceKernels } from './reference.js';
import type { Kernels } from './types.js';
export * from './types.js';
export async function createKernels(opts: { arenaBytes: number; impl?: 'wasm' | 'reference' }): Promise<Kernels> {
  return createReferenceKernels(opts.arenaBytes);
}
