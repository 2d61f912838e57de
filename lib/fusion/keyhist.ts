// The ranking pass's first digit as a WebAssembly kernel: per key (the top 16 bits of an F32 magnitude's
// pattern: exponent and 8 mantissa bits, which map one to one onto the float64 pattern's top 20), a count and
// the OR of the patterns and of their complements, so that a key holds one magnitude exactly when the two ORs
// share no bit. Zeros count as key 0; subnormals, Inf and NaN (rare) are listed for the caller to widen.
// Hand-written text: no library emits this loop.
import { assemblerReady, compileModule, type WasmModuleSource } from '../wasm/assembler.js';

/** Elements per call. */
export const KEYHIST_BLOCK = 16384;
const KEYS = 1 << 16;
/** Byte offsets: the key table (count, unused, OR of patterns, OR of complements: 16 bytes a key), the block, the rare patterns. */
const AT = { table: 0, block: 16 * KEYS, rare: 16 * KEYS + 4 * KEYHIST_BLOCK };
const PAGES = Math.ceil((AT.rare + 4 * KEYHIST_BLOCK) / 65536);

function wat(bf16: boolean): string {
  const i4 = (v: number) => `(v128.const i32x4 ${v} ${v} ${v} ${v})`;
  const addr = (shift: number) => `(i32.add (i32.const ${AT.block}) (i32.shl (local.get $j) (i32.const ${shift})))`;
  const load = bf16 ? `(i32.shl (i32.load16_u ${addr(1)}) (i32.const 16))` : `(i32.load ${addr(2)})`;
  const load4 = bf16 ? `(i32x4.shl (i32x4.extend_low_i16x8_u (v128.load64_zero ${addr(1)})) (i32.const 16))` : `(v128.load ${addr(2)})`;
  // One element: the rare ones listed, the others counted, their pattern ORed into the low word and its complement into the high one.
  const one = `
      (local.set $w (i32.and ${load} (i32.const 0x7fffffff)))
      (if (i32.and (i32.ge_u (i32.sub (local.get $w) (i32.const 0x800000)) (i32.const 0x7f000000)) (i32.ne (local.get $w) (i32.const 0)))
        (then
          (i32.store (i32.add (i32.const ${AT.rare}) (i32.shl (local.get $rare) (i32.const 2))) (local.get $w))
          (local.set $rare (i32.add (local.get $rare) (i32.const 1))))
        (else
          (local.set $e (i32.shl (i32.shr_u (local.get $w) (i32.const 15)) (i32.const 4)))
          (i32.store (local.get $e) (i32.add (i32.load (local.get $e)) (i32.const 1)))
          (i64.store offset=8 (local.get $e) (i64.or (i64.load offset=8 (local.get $e))
            (i64.or (i64.extend_i32_u (local.get $w)) (i64.shl (i64.extend_i32_u (i32.xor (local.get $w) (i32.const -1))) (i64.const 32)))))))
      (local.set $j (i32.add (local.get $j) (i32.const 1)))`;
  // Four at a time: keys and OR words in SIMD, then each lane's two updates (a group with a rare one goes one by one).
  const lane = (k: number) => `
          (local.set $e (i32x4.extract_lane ${k} (local.get $E)))
          (i32.store (local.get $e) (i32.add (i32.load (local.get $e)) (i32.const 1)))
          (i64.store offset=8 (local.get $e) (i64.or (i64.load offset=8 (local.get $e)) (i64x2.extract_lane ${k % 2} (local.get ${k < 2 ? '$L' : '$H'}))))`;
  return `(module
  (import "env" "mem" (memory ${PAGES} ${PAGES}))
  (func (export "keyhist") (param $n i32) (result i32)
    (local $j i32) (local $w i32) (local $e i32) (local $rare i32) (local $end i32)
    (local $V v128) (local $NV v128) (local $E v128) (local $L v128) (local $H v128)
    (block $quads (loop $quad
      (br_if $quads (i32.gt_u (i32.add (local.get $j) (i32.const 4)) (local.get $n)))
      (local.set $V (v128.and ${load4} ${i4(0x7fffffff)}))
      (if (v128.any_true (v128.andnot (i32x4.ge_u (i32x4.sub (local.get $V) ${i4(0x800000)}) ${i4(0x7f000000)}) (i32x4.eq (local.get $V) ${i4(0)})))
        (then
          (local.set $end (i32.add (local.get $j) (i32.const 4)))
          (block $d (loop $s (br_if $d (i32.ge_u (local.get $j) (local.get $end))) ${one} (br $s))))
        (else
          (local.set $E (i32x4.shl (i32x4.shr_u (local.get $V) (i32.const 15)) (i32.const 4)))
          (local.set $NV (v128.not (local.get $V)))
          (local.set $L (v128.or (i64x2.extend_low_i32x4_u (local.get $V)) (i64x2.shl (i64x2.extend_low_i32x4_u (local.get $NV)) (i32.const 32))))
          (local.set $H (v128.or (i64x2.extend_high_i32x4_u (local.get $V)) (i64x2.shl (i64x2.extend_high_i32x4_u (local.get $NV)) (i32.const 32))))
          ${lane(0)} ${lane(1)} ${lane(2)} ${lane(3)}
          (local.set $j (i32.add (local.get $j) (i32.const 4)))))
      (br $quad)))
    (block $done (loop $next (br_if $done (i32.ge_u (local.get $j) (local.get $n))) ${one} (br $next)))
    (local.get $rare)))`;
}

interface WasmApi {
  Memory: new (d: { initial: number; maximum: number }) => { buffer: ArrayBuffer };
  Instance: new (module: object, imports: object) => { exports: Record<string, unknown> };
}
const WA = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

/** One pass's key histogram over its own memory; blocks are staged in. */
export class KeyHist {
  private readonly memory = new WA.Memory({ initial: PAGES, maximum: PAGES });
  private readonly u8 = new Uint8Array(this.memory.buffer);
  /** Per key: [count, unused, OR of patterns, OR of complements]. */
  readonly table = new Uint32Array(this.memory.buffer, AT.table, 4 * KEYS);
  private readonly rareWords = new Uint32Array(this.memory.buffer, AT.rare, KEYHIST_BLOCK);
  private readonly f32 = this.fn(false);
  private readonly bf16 = this.fn(true);

  /** A KeyHist, or null where no WebAssembly can be had yet (the JavaScript loop then counts). */
  static create(): KeyHist | null {
    return assemblerReady() ? new KeyHist() : null;
  }

  private fn(bf16: boolean): (n: number) => number {
    const name = keyhistName(bf16);
    return new WA.Instance(compileModule(name, () => wat(bf16)), { env: { mem: this.memory } }).exports.keyhist as (n: number) => number;
  }

  clear(): void {
    this.table.fill(0);
  }

  /**
   * Counts n ≤ KEYHIST_BLOCK little-endian F32 (size 4) or BF16 (size 2) elements from `bytes`; returns the
   * subnormal, Inf and NaN magnitudes' F32 patterns (a view, valid until the next call), which it did not count.
   */
  add(bytes: Uint8Array, size: 2 | 4, n: number): Uint32Array {
    this.u8.set(bytes.subarray(0, n * size), AT.block);
    const rare = (size === 2 ? this.bf16 : this.f32)(n);
    return this.rareWords.subarray(0, rare);
  }
}

const keyhistName = (bf16: boolean) => (bf16 ? 'keyhist_bf16' : 'keyhist_f32');

/** Both modules this file can generate, for the build's pack (build/wasm-pack.ts). */
export function* keyhistModules(): Generator<WasmModuleSource> {
  for (const bf16 of [false, true]) yield { name: keyhistName(bf16), text: () => wat(bf16), source: import.meta.url };
}

const spare: KeyHist[] = [];

/** A cleared KeyHist from the pool (null where no WebAssembly can be had yet). */
export function takeKeyHist(): KeyHist | null {
  const k = spare.pop() ?? KeyHist.create();
  k?.clear();
  return k;
}

export function giveKeyHist(k: KeyHist): void {
  if (spare.length < 4) spare.push(k);
}
