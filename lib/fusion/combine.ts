// The fusion kernel: per element, in IEEE float64 with each operation rounded, in the order README.md
// ("Fusing several deltas") gives, then x = new base + λ·m rounded once to the new base's dtype. Plain
// JavaScript: the masks, the sign election and the random numbers have no counterpart in the wasm kernels.
import type { FloatDType } from '../format/dtype.js';
import { f16BitsToF64, f64ToBf16Bits, f64ToF16Bits } from '../kernels/reference.js';
import { electsSign, usesDare, type FusionSpec } from './options.js';
import { dareKey, dareUniforms } from './rng.js';
import { dareTau, magnitude, rankedTau, type KeepRange, type TieProgress } from './mask.js';
import { Ties2Wasm, ties2Supported, type Ties2DType, type Ties2Operand } from './ties2.js';

/** One delta operand: its plan index (i of "<i>:<tensor>"), weight, and this stretch's little-endian elements. */
export interface FusionOperand {
  delta: number;
  weight: number;
  dtype: FloatDType;
  data: Uint8Array;
  /** Rank methods: the kept range for this tensor. */
  keep?: KeepRange;
}

const BLOCK = 4096;
const narrowF32 = new Float32Array(BLOCK);
const narrowU32 = new Uint32Array(narrowF32.buffer);
let f16Table: Float64Array | null = null;

/** Widens `n` little-endian elements of `dtype` from `bytes` to float64 into out[0..n). */
export function widen(dtype: FloatDType, bytes: Uint8Array, n: number, out: Float64Array, scratch: Uint32Array): void {
  const size = dtype === 'F64' ? 8 : dtype === 'F32' ? 4 : 2;
  const b = bytes.byteOffset % size === 0 ? bytes : bytes.slice(0, n * size);
  switch (dtype) {
    case 'F64':
      out.set(new Float64Array(b.buffer, b.byteOffset, n));
      return;
    case 'F32':
      for (let j = 0, v = new Float32Array(b.buffer, b.byteOffset, n); j < n; j++) out[j] = v[j];
      return;
    case 'BF16': {
      const v = new Uint16Array(b.buffer, b.byteOffset, n);
      const f = new Float32Array(scratch.buffer, scratch.byteOffset, n);
      for (let j = 0; j < n; j++) scratch[j] = v[j] << 16;
      for (let j = 0; j < n; j++) out[j] = f[j];
      return;
    }
    case 'F16': {
      if (!f16Table) {
        f16Table = new Float64Array(65536);
        for (let i = 0; i < 65536; i++) f16Table[i] = f16BitsToF64(i);
      }
      const t = f16Table;
      for (let j = 0, v = new Uint16Array(b.buffer, b.byteOffset, n); j < n; j++) out[j] = t[v[j]];
      return;
    }
  }
}

/** Rounds x[0..n) once, half to even, to `dtype`, little-endian into `out`. */
function narrow(dtype: FloatDType, x: Float64Array, n: number, out: Uint8Array): void {
  const size = dtype === 'F64' ? 8 : dtype === 'F32' ? 4 : 2;
  const aligned = out.byteOffset % size === 0;
  const o = aligned ? out : new Uint8Array(n * size);
  switch (dtype) {
    case 'F64':
      new Float64Array(o.buffer, o.byteOffset, n).set(x.subarray(0, n));
      break;
    case 'F32':
      new Float32Array(o.buffer, o.byteOffset, n).set(x.subarray(0, n));
      break;
    case 'BF16': {
      // Through float32 (rounded by the engine), then half to even at bit 16: the same as rounding once,
      // except where the float32 lands exactly on a BF16 midpoint it was not; those, and NaN, take the general path.
      const f = narrowF32.subarray(0, n);
      f.set(x.subarray(0, n));
      const u = narrowU32;
      for (let j = 0, v = new Uint16Array(o.buffer, o.byteOffset, n); j < n; j++) {
        const b = u[j];
        if (((b & 0xffff) === 0x8000 && f[j] !== x[j]) || (b & 0x7fffffff) > 0x7f800000) v[j] = f64ToBf16Bits(x[j]);
        else v[j] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
      }
      break;
    }
    case 'F16':
      for (let j = 0, v = new Uint16Array(o.buffer, o.byteOffset, n); j < n; j++) v[j] = f64ToF16Bits(x[j]);
      break;
  }
  if (!aligned) out.set(o.subarray(0, n * size));
}

/**
 * Where a tensor's stream stands for one operand: the next flat index due, and how many elements equal to
 * each boundary's magnitude went by (equal magnitudes rank by flat index: the first `ties` of them rank
 * before the boundary). A tensor streams from its first element to its last, in order, in one shard.
 */
interface Progress extends TieProgress {
  next: number;
}

/** Combines chunks for one sparse method; holds a few blocks of scratch, reused across calls. */
export class FusionKernel {
  private readonly base = new Float64Array(BLOCK);
  private readonly delta = new Float64Array(BLOCK);
  private readonly u = new Float64Array(BLOCK);
  private readonly scratch = new Uint32Array(BLOCK);
  private taus: Float64Array[] = [];
  private readonly m = new Float64Array(BLOCK);
  private readonly keys = new Map<string, [number, number]>();
  private readonly progress = new Map<number, Progress>();
  private readonly seed: bigint;
  /** The WebAssembly ties2 (null: not available in this process). */
  private wasm: Ties2Wasm | null | undefined;

  constructor(private readonly spec: FusionSpec) {
    this.seed = BigInt(spec.seed ?? '0');
  }

  private key(delta: number, tensor: string): [number, number] {
    const id = `${delta}:${tensor}`;
    let k = this.keys.get(id);
    if (!k) {
      k = dareKey(delta, tensor, this.seed);
      this.keys.set(id, k);
    }
    return k;
  }

  /**
   * out = round_dtype(base + λ·m) for elements start … start+n−1 of `tensor` (flat indices), where m
   * combines the operands' masked, weighted deltas; operands come in plan order.
   */
  combine(tensor: string, dtype: FloatDType, base: Uint8Array, operands: readonly FusionOperand[], start: number, n: number, out: Uint8Array): void {
    const size = dtype === 'F64' ? 8 : dtype === 'F32' ? 4 : 2;
    while (this.taus.length < operands.length) this.taus.push(new Float64Array(BLOCK));
    const two = this.twoRanked(operands);
    for (let a = 0; a < n; a += BLOCK) {
      const len = Math.min(BLOCK, n - a);
      if (two) {
        const o = out.subarray(a * size, (a + len) * size);
        if (this.ties2Wasm(tensor, dtype, base.subarray(a * size), operands, a, start + a, len, two, o)) continue;
        this.ties2(tensor, dtype, base.subarray(a * size), operands, a, start + a, len, two);
        narrow(dtype, this.base, len, o);
        continue;
      }
      operands.forEach((op, k) => this.tau(tensor, op, a, start + a, len, this.taus[k]));
      this.mix(operands, len);
      widen(dtype, base.subarray(a * size), len, this.base, this.scratch);
      const x = this.base;
      const m = this.m;
      const lambda = this.spec.lambda;
      for (let j = 0; j < len; j++) x[j] = x[j] + lambda * m[j];
      narrow(dtype, x, len, out.subarray(a * size, (a + len) * size));
    }
  }

  /** Two operands of a sign-electing rank method, neither empty nor with a NaN boundary: their cut-offs as numbers, for ties2. */
  private twoRanked(ops: readonly FusionOperand[]): { F: number[]; T: number[] } | null {
    if (ops.length !== 2 || !electsSign(this.spec.method) || usesDare(this.spec.method)) return null;
    if (ops.some((o) => !o.keep || o.keep.none)) return null;
    const F = ops.map((o) => (o.keep!.from ? magnitude(o.keep!.from) : Infinity));
    const T = ops.map((o) => (o.keep!.to ? magnitude(o.keep!.to) : -1));
    return [...F, ...T].some((v) => v !== v) ? null : { F, T };
  }

  /** ties2 as a WebAssembly kernel where the dtypes allow and the assembler is ready (wasm/assembler.ts); false where it did nothing. */
  private ties2Wasm(tensor: string, dtype: FloatDType, base: Uint8Array, ops: readonly FusionOperand[], at: number, first: number, len: number, cut: { F: number[]; T: number[] }, out: Uint8Array): boolean {
    const [o0, o1] = ops;
    const d0 = o0.dtype;
    const d1 = o1.dtype;
    if (!ties2Supported(dtype) || !ties2Supported(d0) || !ties2Supported(d1)) return false;
    if (this.wasm === undefined) this.wasm = Ties2Wasm.create();
    if (!this.wasm) return false;
    const p0 = this.advance(tensor, o0.delta, first, len);
    const p1 = this.advance(tensor, o1.delta, first, len);
    const operand = (o: FusionOperand, dt: Ties2DType, k: number): Ties2Operand => ({
      dtype: dt,
      data: o.data,
      weight: o.weight,
      T: cut.T[k],
      F: cut.F[k],
      hasF: o.keep!.from !== undefined,
      tt: o.keep!.to?.ties ?? 0,
      ft: o.keep!.from?.ties ?? 0,
    });
    const seen = [p0.seenTo, p0.seenFrom, p1.seenTo, p1.seenFrom];
    const done = this.wasm.run(dtype, base, [operand(o0, d0, 0), operand(o1, d1, 1)], at, len, seen, this.spec.normalize !== false, this.spec.lambda, out);
    [p0.seenTo, p0.seenFrom, p1.seenTo, p1.seenFrom] = seen;
    if (!done) narrow(dtype, this.wasm.x, len, out);
    return true;
  }

  /**
   * The common case in one loop (the same arithmetic as tau, mix and the λ step, without their arrays):
   * x = base + λ·m for two ranked operands, sign election, into this.base.
   */
  private ties2(tensor: string, dtype: FloatDType, base: Uint8Array, ops: readonly FusionOperand[], at: number, first: number, len: number, cut: { F: number[]; T: number[] }): void {
    const d0 = this.delta;
    const d1 = this.u;
    const sz = (t: FloatDType) => (t === 'F64' ? 8 : t === 'F32' ? 4 : 2);
    widen(ops[0].dtype, ops[0].data.subarray(at * sz(ops[0].dtype)), len, d0, this.scratch);
    widen(ops[1].dtype, ops[1].data.subarray(at * sz(ops[1].dtype)), len, d1, this.scratch);
    widen(dtype, base, len, this.base, this.scratch);
    const p0 = this.advance(tensor, ops[0].delta, first, len);
    const p1 = this.advance(tensor, ops[1].delta, first, len);
    const x = this.base;
    const [F0, F1] = cut.F;
    const [T0, T1] = cut.T;
    const hasF0 = ops[0].keep!.from !== undefined;
    const hasF1 = ops[1].keep!.from !== undefined;
    const ft0 = ops[0].keep!.from?.ties ?? 0;
    const ft1 = ops[1].keep!.from?.ties ?? 0;
    const tt0 = ops[0].keep!.to?.ties ?? 0;
    const tt1 = ops[1].keep!.to?.ties ?? 0;
    const w0 = ops[0].weight;
    const w1 = ops[1].weight;
    const normalize = this.spec.normalize !== false;
    const lambda = this.spec.lambda;
    let sf0 = p0.seenFrom;
    let st0 = p0.seenTo;
    let sf1 = p1.seenFrom;
    let st1 = p1.seenTo;
    for (let j = 0; j < len; j++) {
      const v0 = d0[j];
      const v1 = d1[j];
      const a0 = Math.abs(v0);
      const a1 = Math.abs(v1);
      // Both counts advance whatever the other boundary says (no short circuit between them).
      const to0 = a0 > T0 || (a0 === T0 && st0++ < tt0) || a0 !== a0;
      const from0 = hasF0 && (a0 > F0 || (a0 === F0 && sf0++ < ft0) || a0 !== a0);
      const to1 = a1 > T1 || (a1 === T1 && st1++ < tt1) || a1 !== a1;
      const from1 = hasF1 && (a1 > F1 || (a1 === F1 && sf1++ < ft1) || a1 !== a1);
      const keep0 = to0 && !from0;
      const keep1 = to1 && !from1;
      const t0 = keep0 ? w0 * v0 : 0;
      const t1 = keep1 ? w1 * v1 : 0;
      const s = t0 + t1;
      // Agreeing: nonzero with the sign of s (none when s is ±0 or NaN). Adding a +0 for one that does not
      // agree changes nothing (an agreeing τ is nonzero), so the sums below are those of the rules.
      const sg = Math.sign(s);
      const pa = t0 !== 0 && Math.sign(t0) === sg;
      const pb = t1 !== 0 && Math.sign(t1) === sg;
      let m = (pa ? t0 : 0) + (pb ? t1 : 0);
      if (normalize) {
        const wsum = (pa ? w0 : 0) + (pb ? w1 : 0);
        m = wsum === 0 ? 0 : m / wsum;
      }
      x[j] = x[j] + lambda * m;
    }
    p0.seenFrom = sf0;
    p0.seenTo = st0;
    p1.seenFrom = sf1;
    p1.seenTo = st1;
  }

  /** The operand's place in the tensor's stream, checked to continue where the last chunk ended. */
  private advance(tensor: string, delta: number, first: number, len: number): Progress {
    let p = this.progress.get(delta);
    if (first === 0 || !p) this.progress.set(delta, (p = { next: 0, seenFrom: 0, seenTo: 0 }));
    if (p.next !== first) throw new Error(`fusion: tensor "${tensor}" streamed out of order (${first}, expected ${p.next})`);
    p.next = first + len;
    return p;
  }

  /** τ[j] for one operand: wᵢ·Δᵢ where kept (DARE: wᵢ·(Δᵢ/density)), else 0. */
  private tau(tensor: string, op: FusionOperand, at: number, first: number, len: number, tau: Float64Array): void {
    const size = op.dtype === 'F64' ? 8 : op.dtype === 'F32' ? 4 : 2;
    const d = this.delta;
    widen(op.dtype, op.data.subarray(at * size), len, d, this.scratch);
    const w = op.weight;
    if (usesDare(this.spec.method)) {
      const [kh, kl] = this.key(op.delta, tensor);
      dareUniforms(kh, kl, first, len, this.u);
      dareTau(this.u, this.spec.density, d, w, len, tau);
      return;
    }
    const keep = op.keep!;
    if (keep.none) {
      tau.fill(0, 0, len);
      return;
    }
    rankedTau(keep, this.advance(tensor, op.delta, first, len), d, w, len, tau);
  }

  /** m from the τ's: their sum in order, or (sign-electing) the sum of those agreeing with sign(Σ τ), maybe normalized. */
  private mix(operands: readonly FusionOperand[], len: number): void {
    const m = this.m;
    const taus = this.taus;
    const K = operands.length;
    if (!electsSign(this.spec.method)) {
      m.set(taus[0].subarray(0, len));
      for (let k = 1; k < K; k++) {
        const t = taus[k];
        for (let j = 0; j < len; j++) m[j] = m[j] + t[j];
      }
      return;
    }
    const normalize = this.spec.normalize !== false;
    if (K === 2) {
      // The common case, written out: τ's agreeing with sign(s) are those with the sign of s (zero agrees with nothing).
      const [t0, t1] = taus;
      const w0 = operands[0].weight;
      const w1 = operands[1].weight;
      const ws = w0 + w1;
      for (let j = 0; j < len; j++) {
        const a = t0[j];
        const b = t1[j];
        const s = a + b;
        const pa = s > 0 ? a > 0 : s < 0 ? a < 0 : false;
        const pb = s > 0 ? b > 0 : s < 0 ? b < 0 : false;
        if (pa && pb) m[j] = normalize ? (ws === 0 ? 0 : (a + b) / ws) : a + b;
        else if (pa) m[j] = normalize ? (w0 === 0 ? 0 : a / w0) : a;
        else if (pb) m[j] = normalize ? (w1 === 0 ? 0 : b / w1) : b;
        else m[j] = 0;
      }
      return;
    }
    for (let j = 0; j < len; j++) {
      let s = taus[0][j];
      for (let k = 1; k < K; k++) s = s + taus[k][j];
      const sigma = Math.sign(s);
      let sum = 0;
      let wsum = 0;
      let any = false;
      for (let k = 0; k < K; k++) {
        const t = taus[k][j];
        if (t !== 0 && Math.sign(t) === sigma) {
          if (any) {
            sum = sum + t;
            wsum = wsum + operands[k].weight;
          } else {
            sum = t;
            wsum = operands[k].weight;
            any = true;
          }
        }
      }
      m[j] = !any ? 0 : !normalize ? sum : wsum === 0 ? 0 : sum / wsum;
    }
  }
}
