import type { FloatDType } from '../format/dtype.js';

/** What `subtract` learned about the deltas it wrote; accumulates over calls. */
export interface SubtractStats {
  /** Elements processed so far. */
  elements: number;
  /** Elements whose stored delta differs from the float64 delta (a NaN stored for a NaN counts as exact). */
  rounded: number;
  /** Max |stored − float64 delta| (0 if none rounded; Infinity if rounding overflowed to Inf). */
  maxError: number;
  /** Elements whose float64 delta is not exactly representable in the `probe` dtype (0 without a probe). */
  probeMisses: number;
  /** Σ d² over finite deltas d, accumulated in float64 (for a reported norm ratio only). */
  sumSqDelta: number;
  /** Σ base² over finite base elements. */
  sumSqBase: number;
}

export function newSubtractStats(): SubtractStats {
  return { elements: 0, rounded: 0, maxError: 0, probeMisses: 0, sumSqDelta: 0, sumSqBase: 0 };
}

/** One delta operand of `apply`: little-endian elements of `dtype`, multiplied by `scale`. */
export interface DeltaInput {
  dtype: FloatDType;
  data: Uint8Array;
  scale: number;
}

/**
 * The numeric kernels. Arithmetic contract: inputs widen exactly to float64, deltas are `post − base`,
 * apply computes x = base; x = x + s·Δ per delta (product rounded, then sum rounded, no FMA), and the result
 * is rounded once, half to even, to the output dtype. A NaN result is stored as the quiet NaN carrying the
 * sign that x86-64 SSE arithmetic gives it (first NaN operand wins; Inf − Inf and 0·Inf give −NaN), made
 * explicit so both implementations agree bit for bit on every platform.
 */
export interface Kernels {
  readonly impl: 'wasm' | 'reference';
  /**
   * A 64-byte-aligned buffer; for wasm, a view into the instance's memory so kernels run zero-copy on it.
   * Throws when the arena is exhausted. Memory never grows after creation (views stay valid).
   */
  alloc(bytes: number): Uint8Array;
  /**
   * out[i] = round_outDtype(widen(post[i]) − widen(base[i])) for i < n, accumulating `stats`; base and post are
   * little-endian `dtype`. `out` must not overlap the inputs.
   */
  subtract(
    dtype: FloatDType,
    base: Uint8Array,
    post: Uint8Array,
    n: number,
    outDtype: FloatDType,
    out: Uint8Array,
    stats: SubtractStats,
    probe?: FloatDType,
  ): void;
  /**
   * out[i] = round_outDtype(x) where x = widen(base[i]), then x = x + scale·widen(delta[i]) for each delta in
   * order. `out` may be `base` itself (same dtype), but must not otherwise overlap an input.
   */
  apply(baseDtype: FloatDType, base: Uint8Array, deltas: readonly DeltaInput[], n: number, outDtype: FloatDType, out: Uint8Array): void;
}
