// The WebAssembly SIMD kernels: each kernel's text from wat.ts, compiled on its first use in the process (a run
// uses a handful of the ~200; the binary from the build's pack, or assembled by wabt, see wasm/assembler.ts),
// instantiated on first use per createKernels over that instance's fixed-size memory, whose arena the caller's
// buffers live in.
import { dtypeSize, type FloatDType } from '../format/dtype.js';
import { BumpArena, checkApply, checkSubtract, combine4 } from './common.js';
import { referenceApply } from './reference.js';
import type { DeltaInput, Kernels, SubtractStats } from './types.js';
import { compileModule, loadAssembler } from '../wasm/assembler.js';
import { LAYOUT, STATS, applyName, applyWat, hasFusedApply, scaledApply, subtractName, subtractWat } from './wat.js';

// The few WebAssembly JS API members used here (the project's TypeScript libs do not declare the namespace).
interface WasmMemory {
  readonly buffer: ArrayBuffer | SharedArrayBuffer;
}
interface WasmApi {
  Memory: new (d: { initial: number; maximum: number; shared?: boolean }) => WasmMemory;
  Instance: new (module: object, imports: object) => { exports: Record<string, unknown> };
}
const WA = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

type SubtractFn = (pb: number, pp: number, po: number, n: number) => void;
/** (pb, pd…, po, s…, sneg…, n) for one or two deltas. */
type ApplyFn = (...args: number[]) => void;

const PAGE = 65536;
const BLOCK = LAYOUT.block;

const f64 = new Float64Array(1);
const w64 = new Uint32Array(f64.buffer);
/** Sign bit of a scale, which the kernels pass on when the scale itself is NaN. */
function signOf(x: number): number {
  f64[0] = x;
  return w64[1] >>> 31;
}

class WasmKernels implements Kernels {
  readonly impl = 'wasm' as const;
  private readonly arena: BumpArena;
  private readonly u8: Uint8Array;
  private readonly stats: Float64Array;
  private readonly counts: BigInt64Array;

  /** This instance's kernels, by export name, instantiated on first use. */
  private readonly kernels = new Map<string, unknown>();

  constructor(
    private readonly memory: WasmMemory,
    arenaBytes: number,
  ) {
    this.arena = new BumpArena(LAYOUT.arena, LAYOUT.arena + arenaBytes);
    this.u8 = new Uint8Array(memory.buffer);
    this.stats = new Float64Array(memory.buffer, 0, STATS.bytes / 8);
    this.counts = new BigInt64Array(memory.buffer, 0, STATS.bytes / 8);
  }

  private kernel(name: string, text: () => string): unknown {
    let fn = this.kernels.get(name);
    if (!fn) {
      fn = new WA.Instance(compileModule(name, text), { env: { mem: this.memory } }).exports[name];
      this.kernels.set(name, fn);
    }
    return fn;
  }

  private subtractKernel(x: FloatDType, y: FloatDType, probe: FloatDType | undefined): SubtractFn {
    const p = probe === 'F64' ? undefined : probe; // every delta is exact in F64: no probe to count
    return this.kernel(subtractName(x, y, p), () => subtractWat(x, y, p)) as SubtractFn;
  }

  private applyKernel(x: FloatDType, dts: readonly FloatDType[], y: FloatDType): ApplyFn {
    return this.kernel(applyName(x, dts, y), () => applyWat(x, dts, y)) as ApplyFn;
  }

  alloc(bytes: number): Uint8Array {
    return new Uint8Array(this.memory.buffer, this.arena.take(bytes), bytes);
  }

  /** Byte offset of `buf` in the instance's memory, or −1 when it lies elsewhere. */
  private offsetOf(buf: Uint8Array): number {
    return buf.buffer === this.memory.buffer ? buf.byteOffset : -1;
  }

  /** Pointer to elements [j, j+len) of an input: in place, or copied to staging area `area`. */
  private input(buf: Uint8Array, size: number, j: number, len: number, area: number): number {
    const at = this.offsetOf(buf);
    if (at >= 0) return at + j * size;
    const to = LAYOUT.stage + area * BLOCK * 8;
    this.u8.set(buf.subarray(j * size, (j + len) * size), to);
    return to;
  }

  subtract(dtype: FloatDType, base: Uint8Array, post: Uint8Array, n: number, outDtype: FloatDType, out: Uint8Array, stats: SubtractStats, probe?: FloatDType): void {
    checkSubtract(dtype, base, post, n, outDtype, out, probe);
    const fn = this.subtractKernel(dtype, outDtype, probe);
    this.u8.fill(0, 0, STATS.bytes);
    const size = dtypeSize(dtype);
    const osize = dtypeSize(outDtype);
    const [pb, pp, po] = [base, post, out].map((b) => this.offsetOf(b));
    if (pb >= 0 && pp >= 0 && po >= 0) fn(pb, pp, po, n);
    else {
      // Blocks are multiples of 8 elements, so the i mod 4 partial sums line up as in one call.
      for (let j = 0; j < n; j += BLOCK) {
        const len = Math.min(BLOCK, n - j);
        const o = po >= 0 ? po + j * osize : LAYOUT.stage + 3 * BLOCK * 8;
        fn(this.input(base, size, j, len, 0), this.input(post, size, j, len, 1), o, len);
        if (po < 0) out.set(this.u8.subarray(o, o + len * osize), j * osize);
      }
    }
    const s = this.stats;
    stats.elements += n;
    stats.rounded += Number(this.counts[STATS.rounded / 8]);
    stats.probeMisses += probe === undefined ? 0 : Number(this.counts[STATS.misses / 8]);
    stats.maxError = Math.max(stats.maxError, s[STATS.maxError / 8]);
    stats.sumSqDelta += combine4(s.subarray(STATS.sqD / 8, STATS.sqD / 8 + 4));
    stats.sumSqBase += combine4(s.subarray(STATS.sqB / 8, STATS.sqB / 8 + 4));
  }

  apply(baseDtype: FloatDType, base: Uint8Array, deltas: readonly DeltaInput[], n: number, outDtype: FloatDType, out: Uint8Array): void {
    checkApply(baseDtype, base, deltas, n, outDtype, out);
    // The kernels take F16 deltas' scales 2^112 times larger (see wat.ts); scales that would overflow are absurd,
    // and get the reference path rather than kernels of their own.
    if (deltas.some((d) => d.dtype === 'F16' && Math.abs(d.scale) > 2 ** 900 && Math.abs(d.scale) < Infinity)) return referenceApply(baseDtype, base, deltas, n, outDtype, out);
    // The kernels of scaledApply (see wat.ts) are exact for scales in [2^-700, 2^800], 0, ±Inf and NaN.
    const odd = (s: number) => s !== 0 && (Math.abs(s) < 2 ** -700 || (Math.abs(s) > 2 ** 800 && Math.abs(s) < Infinity));
    if (scaledApply(baseDtype, deltas.map((d) => d.dtype), outDtype) && deltas.some((d) => odd(d.scale))) return referenceApply(baseDtype, base, deltas, n, outDtype, out);
    const bsize = dtypeSize(baseDtype);
    const osize = dtypeSize(outDtype);
    const ds = deltas.map((d) => ({ ...d, size: dtypeSize(d.dtype), sneg: signOf(d.scale) }));
    const po = this.offsetOf(out);
    const outAt = (j: number) => (po >= 0 ? po + j * osize : LAYOUT.stage + 3 * BLOCK * 8);
    const dtypes = ds.map((d) => d.dtype);
    if (hasFusedApply(baseDtype, dtypes, outDtype)) {
      // One kernel call over everything, or block by block when an input or out must be staged.
      const fn = this.applyKernel(baseDtype, dtypes, outDtype);
      const scales = [...ds.map((d) => d.scale), ...ds.map((d) => d.sneg)];
      const pb = this.offsetOf(base);
      const pds = ds.map((d) => this.offsetOf(d.data));
      if (pb >= 0 && po >= 0 && pds.every((p) => p >= 0)) return fn(pb, ...pds, po, ...scales, n);
      for (let j = 0; j < n; j += BLOCK) {
        const len = Math.min(BLOCK, n - j);
        const o = outAt(j);
        fn(this.input(base, bsize, j, len, 0), ...ds.map((d, k) => this.input(d.data, d.size, j, len, 1 + k)), o, ...scales, len);
        if (po < 0) out.set(this.u8.subarray(o, o + len * osize), j * osize);
      }
      return;
    }
    // Block by block: x goes base → (F64 scratch → …) → out, one delta per kernel call; inputs from outside the
    // instance's memory are staged per block.
    const last = ds.length - 1;
    for (let j = 0; j < n; j += BLOCK) {
      const len = Math.min(BLOCK, n - j);
      const o = outAt(j);
      let x = this.input(base, bsize, j, len, 0);
      let xDtype = baseDtype;
      ds.forEach((d, k) => {
        const yDtype = k === last ? outDtype : 'F64';
        const y = k === last ? o : LAYOUT.scratch;
        const fn = this.applyKernel(xDtype, [d.dtype], yDtype);
        fn(x, this.input(d.data, d.size, j, len, 1), y, d.scale, d.sneg, len);
        x = y;
        xDtype = yDtype;
      });
      if (po < 0) out.set(this.u8.subarray(o, o + len * osize), j * osize);
    }
  }
}

export async function createWasmKernels(arenaBytes: number): Promise<Kernels> {
  const pages = Math.ceil((LAYOUT.arena + arenaBytes) / PAGE);
  if (pages > 65536) throw new RangeError(`kernel arena of ${arenaBytes} bytes exceeds the 4 GiB WebAssembly memory`);
  await loadAssembler();
  // Shared, so codec workers read a computed delta where the kernel wrote it (no copy); the kernels use no atomics.
  return new WasmKernels(new WA.Memory({ initial: pages, maximum: pages, shared: true }), arenaBytes);
}
