import { dtypeSize, isFloatDType, type FloatDType } from '../format/dtype.js';
import type { DeltaInput } from './types.js';

export const ALIGN = 64;

/** Hands out 64-byte-aligned offsets from a fixed region; nothing is freed (buffers live as long as the kernels). */
export class BumpArena {
  private next: number;
  constructor(
    start: number,
    private readonly end: number,
  ) {
    this.next = alignUp(start);
  }
  take(bytes: number): number {
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new RangeError(`alloc: bad size ${bytes}`);
    const at = this.next;
    if (at + bytes > this.end) throw new RangeError(`kernel arena exhausted: ${bytes} bytes requested, ${Math.max(0, this.end - at)} left`);
    this.next = alignUp(at + bytes);
    return at;
  }
}

export function alignUp(x: number): number {
  return Math.ceil(x / ALIGN) * ALIGN;
}

function need(what: string, buf: Uint8Array, n: number, dtype: FloatDType): void {
  if (!isFloatDType(dtype)) throw new TypeError(`${what}: ${String(dtype)} is not a float dtype`);
  if (buf.length < n * dtypeSize(dtype)) throw new RangeError(`${what}: ${buf.length} bytes hold fewer than ${n} ${dtype} elements`);
}

function checkCount(n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`bad element count ${n}`);
}

export function checkSubtract(dtype: FloatDType, base: Uint8Array, post: Uint8Array, n: number, outDtype: FloatDType, out: Uint8Array, probe?: FloatDType): void {
  checkCount(n);
  need('subtract base', base, n, dtype);
  need('subtract post', post, n, dtype);
  need('subtract out', out, n, outDtype);
  if (probe !== undefined && !isFloatDType(probe)) throw new TypeError(`subtract: probe ${String(probe)} is not a float dtype`);
}

export function checkApply(baseDtype: FloatDType, base: Uint8Array, deltas: readonly DeltaInput[], n: number, outDtype: FloatDType, out: Uint8Array): void {
  checkCount(n);
  if (deltas.length === 0) throw new RangeError('apply needs at least one delta');
  need('apply base', base, n, baseDtype);
  deltas.forEach((d, i) => {
    need(`apply delta ${i}`, d.data, n, d.dtype);
    if (typeof d.scale !== 'number') throw new TypeError(`apply delta ${i}: scale must be a number`);
  });
  need('apply out', out, n, outDtype);
}

/** Combines the 4 per-(i mod 4) partial sums in a fixed order, so every implementation gets the same bits. */
export function combine4(a: ArrayLike<number>): number {
  return a[0] + a[1] + (a[2] + a[3]);
}
