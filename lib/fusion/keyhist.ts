// The ranking pass's first digit as a WebAssembly kernel: per key (the top 16 bits of an F32 magnitude's
// pattern: exponent and 8 mantissa bits, which map one to one onto the float64 pattern's top 20), a count and
// the OR of the patterns and of their complements, so that a key holds one magnitude exactly when the two ORs
// share no bit. Zeros count as key 0; subnormals, Inf and NaN (rare) are listed for the caller to widen.
// Hand-written text: no library emits this loop.
import { compileKernel, wabtLoaded } from '../kernels/wasm.js';

/** Elements per call. */
export const KEYHIST_BLOCK = 16384;
const KEYS = 1 << 16;
/** Byte offsets: the key table (count, OR, OR of complements, unused: 16 bytes a key), the block, the rare patterns. */
const AT = { table: 0, block: 16 * KEYS, rare: 16 * KEYS + 4 * KEYHIST_BLOCK };
const PAGES = Math.ceil((AT.rare + 4 * KEYHIST_BLOCK) / 65536);

function wat(bf16: boolean): string {
  const load = bf16
    ? `(i32.shl (i32.load16_u (i32.add (i32.const ${AT.block}) (i32.shl (local.get $j) (i32.const 1)))) (i32.const 16))`
    : `(i32.load (i32.add (i32.const ${AT.block}) (i32.shl (local.get $j) (i32.const 2))))`;
  return `(module
  (import "env" "mem" (memory ${PAGES} ${PAGES}))
  (func (export "keyhist") (param $n i32) (result i32)
    (local $j i32) (local $w i32) (local $e i32) (local $rare i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $j) (local.get $n)))
      (local.set $w (i32.and ${load} (i32.const 0x7fffffff)))
      (if (i32.and (i32.ge_u (i32.sub (local.get $w) (i32.const 0x800000)) (i32.const 0x7f000000)) (i32.ne (local.get $w) (i32.const 0)))
        (then
          (i32.store (i32.add (i32.const ${AT.rare}) (i32.shl (local.get $rare) (i32.const 2))) (local.get $w))
          (local.set $rare (i32.add (local.get $rare) (i32.const 1))))
        (else
          (local.set $e (i32.shl (i32.shr_u (local.get $w) (i32.const 15)) (i32.const 4)))
          (i32.store (local.get $e) (i32.add (i32.load (local.get $e)) (i32.const 1)))
          (i32.store offset=4 (local.get $e) (i32.or (i32.load offset=4 (local.get $e)) (local.get $w)))
          (i32.store offset=8 (local.get $e) (i32.or (i32.load offset=8 (local.get $e)) (i32.xor (local.get $w) (i32.const -1))))))
      (local.set $j (i32.add (local.get $j) (i32.const 1)))
      (br $next)))
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
  /** Per key: [count, OR of patterns, OR of complements, unused]. */
  readonly table = new Uint32Array(this.memory.buffer, AT.table, 4 * KEYS);
  private readonly rareWords = new Uint32Array(this.memory.buffer, AT.rare, KEYHIST_BLOCK);
  private readonly f32 = this.fn(false);
  private readonly bf16 = this.fn(true);

  /** A KeyHist, or null where wabt is not loaded (the JavaScript loop then counts). */
  static create(): KeyHist | null {
    return wabtLoaded() ? new KeyHist() : null;
  }

  private fn(bf16: boolean): (n: number) => number {
    const name = bf16 ? 'keyhist_bf16' : 'keyhist_f32';
    return new WA.Instance(compileKernel(name, () => wat(bf16)), { env: { mem: this.memory } }).exports.keyhist as (n: number) => number;
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

const spare: KeyHist[] = [];

/** A cleared KeyHist from the pool (null without wabt). */
export function takeKeyHist(): KeyHist | null {
  const k = spare.pop() ?? KeyHist.create();
  k?.clear();
  return k;
}

export function giveKeyHist(k: KeyHist): void {
  if (spare.length < 4) spare.push(k);
}
