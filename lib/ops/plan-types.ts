// The plan's tensor-level records, apart from plan.ts so that the modules planning calls into
// (vocab.ts) can build them without importing the planner back.
import type { DType } from '../format/dtype.js';
import type { Checkpoint } from '../format/checkpoint.js';
import type { DeltaManifest } from './manifest.js';

/** Where one tensor's bytes are: a shard of an input checkpoint. */
export interface TensorRef {
  file: string;
  offset: number;
  dtype: DType;
}

export interface ApplyTensorPlan {
  name: string;
  shape: number[];
  elements: number;
  dtype: DType;
  /** Null: zeros (rows carried from a post model that the new base lacks). */
  base: TensorRef | null;
  /** Empty: copied from the new base unchanged. */
  deltas: ApplyDeltaRef[];
  /** Rows from several sources, streamed in order (lib/ops/vocab.ts); the tensor's own base and deltas are then unused. */
  pieces?: ApplyTensorPlan[];
}

export interface ApplyDeltaRef {
  delta: number;
  ref: TensorRef;
  /** The delta's tensor, when not the output tensor's name (a tied head's Δ, carried rows). */
  tensor?: string;
  /** Its first element read. */
  start?: number;
  /** Overrides the delta's scale (carried rows are post's own values: 1). */
  scale?: number;
}

export interface OpenedDelta {
  ref: string;
  scale: number;
  manifest: DeltaManifest;
  ckpt: Checkpoint;
}
