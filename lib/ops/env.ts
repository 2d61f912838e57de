import { createKernels, type Kernels } from '../kernels/index.js';
import type { Resolver } from './stream.js';

/** What an operation needs from its surroundings: where references lead, and how to report. */
export interface ExecEnv {
  resolve: Resolver;
  /** Kernel implementation; 'reference' is the plain-JS path kept to check the fast one. */
  kernels?: 'wasm' | 'reference';
  /** Bytes for chunk buffers (default 64 MiB); peak memory stays near this whatever the model size. */
  bufferBytes?: number;
  /**
   * Chunks in flight per shard: one computing, the rest reading ahead or writing behind. Local disks
   * gain from more, smaller reads; blob storage from fewer, bigger requests (see README, Performance).
   */
  slots?: number;
  /** Input bytes consumed so far, for progress bars and orchestration status. */
  onProgress?: (bytes: number) => void;
}

export const DEFAULT_BUFFER_BYTES = 64 << 20;
export const LOCAL_SLOTS = 4;
export const BLOB_SLOTS = 2;

export function slotsFor(env: ExecEnv): number {
  return Math.max(2, env.slots ?? LOCAL_SLOTS);
}

export async function kernelsFor(env: ExecEnv, bytes: number): Promise<Kernels> {
  return createKernels({ arenaBytes: bytes + (1 << 20), impl: env.kernels ?? 'wasm' });
}
