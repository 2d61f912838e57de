// Generates the WebAssembly text of the kernels: for each subtract (input, output, probe dtype) and each apply step
// (base, delta, output dtype) an exported driver, a call-free SIMD hot loop over groups of 8 elements, and a
// scalar twin for tails and for what the hot loop hands off (NaNs, whose sign the scalar code sets explicitly;
// F16 Inf/NaN inputs; rounding ties; rounded lanes to count; non-finite sums). No library emits SIMD rounding to
// BF16/F16, so those snippets are written out here; the tests check all of it against reference.ts.
import type { FloatDType } from '../format/dtype.js';

export const FORMATS: readonly FloatDType[] = ['BF16', 'F16', 'F32', 'F64'];
const SIZE: Record<FloatDType, number> = { BF16: 2, F16: 2, F32: 4, F64: 8 };

/** Memory layout below the arena (byte offsets). */
export const LAYOUT = {
  /** 16-byte constants the kernels load (see Func.const). */
  consts: 320,
  /** Elements per block when a multi-delta apply keeps x in float64 scratch, or when inputs are staged. */
  block: 2048,
  /** float64 x for one block. */
  scratch: 1024,
  /** Three staging areas of block·8 bytes for buffers that do not live in the instance's memory. */
  stage: 1024 + 2048 * 8,
  arena: 1024 + 2048 * 8 * 4,
} as const;

/** Where subtract keeps its running stats: 4 f64 Σd² partial sums (by i mod 4), 4 Σbase², two i64 counts, a max. */
export const STATS = { sqD: 0, sqB: 32, rounded: 64, misses: 72, maxError: 80, bytes: 88 } as const;

/** A subtract call's vector state while it runs (so that the redo can start again from STATS). */
const WORK = { sq: 128, sb: 160, cntR: 192, cntP: 208, cnt32: 224, mx: 240, spec: 256 } as const;

export function subtractName(x: FloatDType, y: FloatDType, probe: FloatDType | undefined): string {
  return `sub_${x}_${y}_${probe === undefined || probe === 'F64' ? 'none' : probe}`;
}
export function applyName(x: FloatDType, d: FloatDType, y: FloatDType): string {
  return `app_${x}_${d}_${y}`;
}

// ---------------------------------------------------------------------------------------------------------------
// Text helpers

const get = (l: string) => `(local.get ${l})`;
const set = (l: string, e: string) => `(local.set ${l} ${e})`;
const i32 = (v: number) => `(i32.const ${v})`;
const f64c = (v: string) => `(f64.const ${v})`;
const op = (name: string, ...args: string[]) => `(${name} ${args.join(' ')})`;

type ValType = 'i32' | 'i64' | 'f64' | 'v128';

class Func {
  private readonly decls = new Map<string, ValType>();
  private readonly init: string[] = [];
  readonly body: string[] = [];
  constructor(
    private readonly name: string,
    private readonly signature: string,
    private readonly exported: boolean,
  ) {}
  local(name: string, type: ValType): string {
    const prev = this.decls.get(name);
    if (prev !== undefined && prev !== type) throw new Error(`local ${name} redeclared`);
    this.decls.set(name, type);
    return `$${name}`;
  }
  /**
   * A v128 constant, loaded from the constant pool into a local at entry. Loading it (rather than v128.const)
   * keeps TurboFan from rematerializing the constant inside the loops, several instructions per use.
   */
  const(name: string, bytes: Uint8Array): string {
    if (!this.decls.has(name)) this.init.push(set(`$${name}`, `(v128.load offset=${poolOffset(name, bytes)} (i32.const 0))`));
    return this.local(name, 'v128');
  }
  emit(...lines: string[]): void {
    this.body.push(...lines);
  }
  text(): string {
    const locals = [...this.decls].map(([n, t]) => `(local $${n} ${t})`).join(' ');
    const exp = this.exported ? ` (export "${this.name}")` : '';
    return `(func $${this.name}${exp} ${this.signature}\n  ${locals}\n  ${[...this.init, ...this.body].join('\n  ')})\n`;
  }
}

// The constant pool: 16-byte constants at LAYOUT.consts, written by the module's data segment.
const pool = new Map<string, { offset: number; bytes: Uint8Array }>();
function poolOffset(name: string, bytes: Uint8Array): number {
  const have = pool.get(name);
  if (have) {
    if (!have.bytes.every((b, i) => b === bytes[i])) throw new Error(`constant ${name} redefined`);
    return have.offset;
  }
  const offset = LAYOUT.consts + 16 * pool.size;
  if (offset + 16 > LAYOUT.scratch) throw new Error('constant pool full');
  pool.set(name, { offset, bytes });
  return offset;
}
function dataSegment(): string {
  const esc = (b: Uint8Array) => [...b].map((x) => '\\' + x.toString(16).padStart(2, '0')).join('');
  return [...pool.values()].map((c) => `(data (i32.const ${c.offset}) "${esc(c.bytes)}")`).join('\n');
}

/** 2^k from its bits (normal range), so constants do not depend on Math.pow. */
function pow2(k: number): number {
  const v = new DataView(new ArrayBuffer(8));
  v.setBigUint64(0, BigInt(k + 1023) << 52n, true);
  return v.getFloat64(0, true);
}
function lanes(width: 2 | 4, put: (v: DataView, at: number) => void): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  for (let at = 0; at < 16; at += 16 / width) put(v, at);
  return b;
}
const i64x2 = (x: bigint) => lanes(2, (v, at) => v.setBigUint64(at, x, true));
const f64x2 = (x: number) => lanes(2, (v, at) => v.setFloat64(at, x, true));
const i32x4 = (x: number) => lanes(4, (v, at) => v.setUint32(at, x, true));

const K = {
  ZERO: i64x2(0n),
  SIGN: i64x2(0x8000000000000000n),
  EXP: i64x2(0x7ff0000000000000n),
  INF: f64x2(Infinity),
  H_EXP: i32x4(0x7c000000),
  H_MASK: i32x4(0x8fffe000),
  H_MAG: i32x4(0x7fff),
  H_SGN: i32x4(0x8000),
  H_UP: f64x2(pow2(112)),
  H_DOWN: f64x2(pow2(-112)),
};

/** Per-format constants of the rounding trick: clamp the binade to [lo, hi], magic = 2^binade · k. */
const GRID = {
  BF16: { lo: '0x1p-126', hi: '0x1p128', k: '0x1.8p45', vlo: pow2(-126), vhi: pow2(128), vk: 1.5 * pow2(45) },
  F16: { lo: '0x1p-14', hi: '0x1p16', k: '0x1.8p42', vlo: pow2(-14), vhi: pow2(16), vk: 1.5 * pow2(42) },
} as const;

// ---------------------------------------------------------------------------------------------------------------
// Scalar helpers (tails and hand-offs). Only the NaN paths care about signs, and those read raw bits.

function scalarHelpers(): string {
  const out: string[] = [];
  const fn = (s: string) => out.push(s);
  fn(`(func $w_BF16 (param $a i32) (result f64)
  (f64.promote_f32 (f32.reinterpret_i32 (i32.shl (i32.load16_u (local.get $a)) (i32.const 16)))))`);
  // (h & 0x7fff) << 13 is the F32 pattern of |h|·2^-112, subnormals included; exponent 31 is Inf/NaN.
  fn(`(func $w_F16 (param $a i32) (result f64) (local $h i32) (local $m f64)
  (local.set $h (i32.load16_u (local.get $a)))
  (local.set $m (if (result f64) (i32.ge_u (i32.and (local.get $h) (i32.const 0x7fff)) (i32.const 0x7c00))
    (then (if (result f64) (i32.eq (i32.and (local.get $h) (i32.const 0x7fff)) (i32.const 0x7c00)) (then (f64.const inf)) (else (f64.const nan))))
    (else (f64.mul (f64.promote_f32 (f32.reinterpret_i32 (i32.shl (i32.and (local.get $h) (i32.const 0x7fff)) (i32.const 13)))) (f64.const 0x1p112)))))
  (if (result f64) (i32.and (local.get $h) (i32.const 0x8000)) (then (f64.neg (local.get $m))) (else (local.get $m))))`);
  fn(`(func $w_F32 (param $a i32) (result f64) (f64.promote_f32 (f32.load (local.get $a))))`);
  fn(`(func $w_F64 (param $a i32) (result f64) (f64.load (local.get $a)))`);
  for (const fmt of FORMATS) {
    fn(`(func $neg_${fmt} (param $a i32) (result i32) (i32.shr_u (i32.load8_u offset=${SIZE[fmt] - 1} (local.get $a)) (i32.const 7)))`);
  }
  // |x| rounded half to even to the grid of its binade, with the binade clamped to [lo, hi]: adding
  // m = 1.5·2^(binade + 52 − mant bits) makes the float64 addition round at exactly that quantum; the low clamp
  // fixes the quantum in the subnormal range, the high one sends anything too large (and Inf) to ≥ 2^(emax+1).
  fn(`(func $grid (param $x f64) (param $lo f64) (param $hi f64) (param $k f64) (result f64) (local $m f64)
  (local.set $m (f64.mul (f64.min (f64.max (f64.reinterpret_i64 (i64.and (i64.reinterpret_f64 (local.get $x)) (i64.const 0x7ff0000000000000))) (local.get $lo)) (local.get $hi)) (local.get $k)))
  (f64.sub (f64.add (f64.abs (local.get $x)) (local.get $m)) (local.get $m)))`);
  const g = (f: 'BF16' | 'F16') => `(call $grid (local.get $x) ${f64c(GRID[f].lo)} ${f64c(GRID[f].hi)} ${f64c(GRID[f].k)})`;
  // BF16: the grid value is exact in F32 (or ≥ 2^128, which F32 rounds to Inf), so demote and take the top half.
  fn(`(func $v_BF16 (param $x f64) (result f64) (f64.promote_f32 (f32.demote_f64 (f64.copysign ${g('BF16')} (local.get $x)))))`);
  fn(`(func $st_BF16 (param $a i32) (param $x f64)
  (i32.store16 (local.get $a) (i32.shr_u (i32.reinterpret_f32 (f32.demote_f64 (f64.copysign ${g('BF16')} (local.get $x)))) (i32.const 16))))`);
  // F16: scaled by 2^-112 the F16 value is an F32 whose bits >> 13 are the F16 bits, subnormals included.
  fn(`(func $v_F16 (param $x f64) (result f64) (local $y f64)
  (local.set $y ${g('F16')})
  (f64.copysign (select (f64.const inf) (local.get $y) (f64.ge (local.get $y) (f64.const 0x1p16))) (local.get $x)))`);
  fn(`(func $st_F16 (param $a i32) (param $x f64) (local $y f64)
  (local.set $y ${g('F16')})
  (i32.store16 (local.get $a) (i32.or
    (select (i32.const 0x7c00) (i32.shr_u (i32.reinterpret_f32 (f32.demote_f64 (f64.mul (local.get $y) (f64.const 0x1p-112)))) (i32.const 13)) (f64.ge (local.get $y) (f64.const 0x1p16)))
    (i32.and (i32.wrap_i64 (i64.shr_u (i64.reinterpret_f64 (local.get $x)) (i64.const 48))) (i32.const 0x8000)))))`);
  fn(`(func $v_F32 (param $x f64) (result f64) (f64.promote_f32 (f32.demote_f64 (local.get $x))))`);
  fn(`(func $st_F32 (param $a i32) (param $x f64) (f32.store (local.get $a) (f32.demote_f64 (local.get $x))))`);
  fn(`(func $st_F64 (param $a i32) (param $x f64) (f64.store (local.get $a) (local.get $x)))`);
  fn(`(func $nan_BF16 (param $a i32) (param $neg i32) (i32.store16 (local.get $a) (i32.or (i32.shl (local.get $neg) (i32.const 15)) (i32.const 0x7fc0))))`);
  fn(`(func $nan_F16 (param $a i32) (param $neg i32) (i32.store16 (local.get $a) (i32.or (i32.shl (local.get $neg) (i32.const 15)) (i32.const 0x7e00))))`);
  fn(`(func $nan_F32 (param $a i32) (param $neg i32) (i32.store (local.get $a) (i32.or (i32.shl (local.get $neg) (i32.const 31)) (i32.const 0x7fc00000))))`);
  fn(`(func $nan_F64 (param $a i32) (param $neg i32) (i64.store (local.get $a) (i64.or (i64.shl (i64.extend_i32_u (local.get $neg)) (i64.const 63)) (i64.const 0x7ff8000000000000))))`);
  return out.join('\n');
}

const addr = (base: string, i: string, size: number) => `(i32.add ${get(base)} (i32.mul ${get(i)} ${i32(size)}))`;

/** One scalar loop over [i, end): `element` emits the body; $i is the element index. */
function scalarLoop(f: Func, element: string[]): void {
  f.emit(
    `(block $done (loop $next`,
    `  (br_if $done (i32.ge_u (local.get $i) (local.get $end)))`,
    ...element.map((l) => '  ' + l),
    `  (local.set $i (i32.add (local.get $i) (i32.const 1)))`,
    `  (br $next)))`,
  );
}

function scalarSubtract(x: FloatDType, y: FloatDType, probe: FloatDType | undefined): Func {
  const f = new Func(subtractName(x, y, probe) + '_s', '(param $pb i32) (param $pp i32) (param $po i32) (param $i i32) (param $end i32)', false);
  const [b, p, d, w, e] = ['b', 'p', 'd', 'w', 'e'].map((n) => f.local(n, 'f64'));
  const ab = f.local('ab', 'i32');
  const ap = f.local('ap', 'i32');
  const ao = f.local('ao', 'i32');
  const slot = f.local('slot', 'i32');
  const sx = SIZE[x];
  const body = [
    set(ab, addr('$pb', '$i', sx)),
    set(ap, addr('$pp', '$i', sx)),
    set(ao, addr('$po', '$i', SIZE[y])),
    set(b, `(call $w_${x} ${get(ab)})`),
    set(p, `(call $w_${x} ${get(ap)})`),
    set(d, op('f64.sub', get(p), get(b))),
    set(slot, `(i32.shl (i32.and (local.get $i) (i32.const 3)) (i32.const 3))`),
    `(if (f64.ne ${get(d)} ${get(d)})`,
    `  (then (call $nan_${y} ${get(ao)} (if (result i32) (f64.ne ${get(p)} ${get(p)}) (then (call $neg_${x} ${get(ap)}))`,
    `    (else (if (result i32) (f64.ne ${get(b)} ${get(b)}) (then (call $neg_${x} ${get(ab)})) (else (i32.const 1)))))))`,
    `  (else (call $st_${y} ${get(ao)} ${get(d)})`,
  ];
  if (y !== 'F64') {
    body.push(
      `    ${set(w, `(call $v_${y} ${get(d)})`)}`,
      `    (if (f64.ne ${get(w)} ${get(d)}) (then`,
      `      (i64.store offset=${STATS.rounded} (i32.const 0) (i64.add (i64.load offset=${STATS.rounded} (i32.const 0)) (i64.const 1)))`,
      `      ${set(e, `(f64.abs (f64.sub ${get(w)} ${get(d)}))`)}`,
      `      (if (f64.gt ${get(e)} (f64.load offset=${STATS.maxError} (i32.const 0))) (then (f64.store offset=${STATS.maxError} (i32.const 0) ${get(e)})))))`,
    );
  }
  if (probe !== undefined) {
    body.push(
      `    (if (f64.ne (call $v_${probe} ${get(d)}) ${get(d)}) (then`,
      `      (i64.store offset=${STATS.misses} (i32.const 0) (i64.add (i64.load offset=${STATS.misses} (i32.const 0)) (i64.const 1)))))`,
    );
  }
  body.push(
    `    (if (f64.lt (f64.abs ${get(d)}) (f64.const inf)) (then`,
    `      (f64.store offset=${STATS.sqD} ${get(slot)} (f64.add (f64.load offset=${STATS.sqD} ${get(slot)}) (f64.mul ${get(d)} ${get(d)})))))))`,
    `(if (f64.lt (f64.abs ${get(b)}) (f64.const inf)) (then`,
    `  (f64.store offset=${STATS.sqB} ${get(slot)} (f64.add (f64.load offset=${STATS.sqB} ${get(slot)}) (f64.mul ${get(b)} ${get(b)})))))`,
  );
  scalarLoop(f, body);
  return f;
}

function scalarApply(x: FloatDType, dt: FloatDType, y: FloatDType): Func {
  const f = new Func(applyName(x, dt, y) + '_s', '(param $pb i32) (param $pd i32) (param $po i32) (param $s f64) (param $sneg i32) (param $i i32) (param $end i32)', false);
  const [v, d, p] = ['x', 'd', 'p'].map((n) => f.local(n, 'f64'));
  const ab = f.local('ab', 'i32');
  const ad = f.local('ad', 'i32');
  const neg = f.local('neg', 'i32');
  scalarLoop(f, [
    set(ab, addr('$pb', '$i', SIZE[x])),
    set(ad, addr('$pd', '$i', SIZE[dt])),
    set(v, `(call $w_${x} ${get(ab)})`),
    set(neg, `(call $neg_${x} ${get(ab)})`),
    set(d, `(call $w_${dt} ${get(ad)})`),
    set(p, op('f64.mul', '(local.get $s)', get(d))),
    // A NaN x stays as it is; a NaN product passes on s's sign, else d's, else (0·Inf) the negative NaN.
    `(if (f64.eq ${get(v)} ${get(v)}) (then`,
    `  (if (f64.ne ${get(p)} ${get(p)})`,
    `    (then ${set(v, get(p))} ${set(neg, `(if (result i32) (f64.ne (local.get $s) (local.get $s)) (then (local.get $sneg)) (else (if (result i32) (f64.ne ${get(d)} ${get(d)}) (then (call $neg_${dt} ${get(ad)})) (else (i32.const 1)))))`)})`,
    `    (else ${set(v, op('f64.add', get(v), get(p)))} (if (f64.ne ${get(v)} ${get(v)}) (then ${set(neg, i32(1))}))))))`,
    `(if (f64.ne ${get(v)} ${get(v)}) (then (call $nan_${y} ${addr('$po', '$i', SIZE[y])} ${get(neg)}))`,
    `  (else (call $st_${y} ${addr('$po', '$i', SIZE[y])} ${get(v)})))`,
  ]);
  return f;
}

// ---------------------------------------------------------------------------------------------------------------
// SIMD snippets. A group is 8 elements: 4 pairs, each an f64x2.

/** Loads pair k of the group at `ptr` and widens it exactly to f64x2 into local `dst`. F16 also flags Inf/NaN in `spec`. */
function widenPair(f: Func, fmt: FloatDType, ptr: string, k: number, dst: string, spec: string | undefined): void {
  // Interleave zero halfwords below the 16-bit inputs: each i32 lane becomes (bits << 16).
  const unpack = (load: string) => `(i8x16.shuffle 0 1 16 17 2 3 18 19 4 5 20 21 6 7 22 23 ${get(f.const('ZERO', K.ZERO))} ${load})`;
  const load32 = `(v128.load32_zero offset=${4 * k} ${get(ptr)})`;
  switch (fmt) {
    case 'BF16':
      f.emit(set(dst, `(f64x2.promote_low_f32x4 ${unpack(load32)})`));
      return;
    case 'F16': {
      // (h << 16) >>s 3, masked to sign | bits 27..13, is the F32 pattern of h·2^-112 (subnormals too); × 2^112 after widening.
      const u = f.local(`u${dst.slice(1)}`, 'v128');
      const hexp = get(f.const('H_EXP', K.H_EXP));
      f.emit(set(u, unpack(load32)));
      if (spec) f.emit(set(spec, op('v128.or', get(spec), op('i32x4.eq', op('v128.and', get(u), hexp), hexp))));
      f.emit(set(dst, op('f64x2.mul', `(f64x2.promote_low_f32x4 (v128.and (i32x4.shr_s ${get(u)} (i32.const 3)) ${get(f.const('H_MASK', K.H_MASK))}))`, get(f.const('H_UP', K.H_UP)))));
      return;
    }
    case 'F32':
      f.emit(set(dst, `(f64x2.promote_low_f32x4 (v128.load64_zero offset=${8 * k} ${get(ptr)}))`));
      return;
    case 'F64':
      f.emit(set(dst, `(v128.load offset=${16 * k} ${get(ptr)})`));
      return;
  }
}

interface Rounded {
  /** Demoted F32 lanes 0..1 holding the rounded value exactly (BF16; F16 scaled by 2^-112; F32), or x itself (F64). */
  lanes: string;
  /** The stored value as f64x2 (±Inf on overflow). */
  value: () => string;
}

/**
 * Rounds pair `x` once to `fmt`, exactly: |x| is rounded on the float64 grid of its binade (the binade clamped
 * below to the smallest normal, so subnormals round at their fixed quantum) by adding and subtracting a magic
 * constant, as $grid does. The result is exact in F32 (BF16) or in F32 after scaling by 2^-112 (F16); results
 * at or above 2^(emax+1) overflow to Inf. Unlike $grid there is no upper clamp: only |x| ≥ 2^979 overflows the
 * constant (giving NaN), and such a delta has an infinite square, which sends the call to the scalar redo.
 * Used by subtract off the hot path.
 */
function roundExact(f: Func, fmt: FloatDType, x: string, tag: string): Rounded {
  if (fmt === 'F64') return { lanes: x, value: () => get(x) };
  const lanes = f.local(`f${tag}`, 'v128');
  if (fmt === 'F32') {
    f.emit(set(lanes, `(f32x4.demote_f64x2_zero ${get(x)})`));
    return { lanes, value: () => `(f64x2.promote_low_f32x4 ${get(lanes)})` };
  }
  const sgn = f.local(`sg${tag}`, 'v128');
  const m = f.local(`m${tag}`, 'v128');
  const ya = f.local(`ya${tag}`, 'v128');
  const c = GRID[fmt];
  const hi = get(f.const(`${fmt}_HI`, f64x2(c.vhi)));
  const binade = op('f64x2.pmax', op('v128.and', get(x), get(f.const('EXP', K.EXP))), get(f.const(`${fmt}_LO`, f64x2(c.vlo))));
  f.emit(
    set(sgn, op('v128.and', get(x), get(f.const('SIGN', K.SIGN)))),
    set(m, op('f64x2.mul', binade, get(f.const(`${fmt}_K`, f64x2(c.vk))))),
    set(ya, op('f64x2.sub', op('f64x2.add', op('v128.xor', get(x), get(sgn)), get(m)), get(m))),
  );
  if (fmt === 'BF16') {
    f.emit(set(lanes, `(f32x4.demote_f64x2_zero (v128.or ${get(ya)} ${get(sgn)}))`));
    return { lanes, value: () => `(f64x2.promote_low_f32x4 ${get(lanes)})` };
  }
  f.emit(set(lanes, `(f32x4.demote_f64x2_zero (v128.or (f64x2.mul (f64x2.pmin ${get(ya)} ${hi}) ${get(f.const('H_DOWN', K.H_DOWN))}) ${get(sgn)}))`));
  return {
    lanes,
    value: () => `(v128.or (v128.bitselect ${get(f.const('INF', K.INF))} ${get(ya)} (f64x2.ge ${get(ya)} ${hi})) ${get(sgn)})`,
  };
}

/** The value d takes in `fmt` (±Inf on overflow), for an exactness test. */
function valueIn(f: Func, fmt: FloatDType, d: string, tag: string): string {
  if (fmt === 'F32') return `(f64x2.promote_low_f32x4 (f32x4.demote_f64x2_zero ${get(d)}))`;
  return roundExact(f, fmt, d, tag).value();
}

const lo64 = (a: string, b: string) => `(i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 ${get(a)} ${get(b)})`;

/** Packs 4 pairs of exactly rounded lanes (from roundExact) into the vectors to store, 16 bytes apart. */
function packExact(f: Func, fmt: FloatDType, lanes: string[], tag: string): string[] {
  if (fmt === 'F64') return lanes;
  const v = [0, 1].map((j) => f.local(`pv${tag}${j}`, 'v128'));
  f.emit(set(v[0], lo64(lanes[0], lanes[1])), set(v[1], lo64(lanes[2], lanes[3])));
  if (fmt === 'F32') return v;
  for (const l of v) {
    // The 16-bit patterns into the low half of each i32 lane: BF16 is the top half; F16 is bits 27..13 plus the sign.
    if (fmt === 'BF16') f.emit(set(l, `(i32x4.shr_u ${get(l)} (i32.const 16))`));
    else f.emit(set(l, op('v128.or', op('v128.and', `(i32x4.shr_u ${get(l)} (i32.const 13))`, get(f.const('H_MAG', K.H_MAG))), op('v128.and', `(i32x4.shr_u ${get(l)} (i32.const 16))`, get(f.const('H_SGN', K.H_SGN))))));
  }
  const w = f.local(`pw${tag}`, 'v128');
  f.emit(set(w, `(i16x8.narrow_i32x4_u ${get(v[0])} ${get(v[1])})`));
  return [w];
}

interface GroupRounding {
  /** The vectors to store, 16 bytes apart. */
  vectors: string[];
  /** Nonzero where a lane is NaN. */
  nan: () => string;
  /** Nonzero where the fast rounding may be wrong (BF16/F16 double-rounding ties); such groups take the exact path. */
  tie?: () => string;
}

/**
 * Rounds a group's 4 pairs for the hot path. F32/F64 round in one step. BF16/F16 round twice: to F32 (for F16
 * after scaling by 2^-112, which puts F16 subnormals on the F32 subnormal grid), then half to even on the bit
 * pattern. Rounding twice equals rounding once unless the first rounding lands exactly on a tie of the second
 * (every 16-bit tie and boundary is an F32 value, so it cannot be jumped over); those lanes are flagged, about one
 * in 2^16 (BF16) or 2^13 (F16).
 */
function roundGroup(f: Func, fmt: FloatDType, xs: string[]): GroupRounding {
  if (fmt === 'F64') return { vectors: xs, nan: () => xs.map((x) => op('f64x2.ne', get(x), get(x))).reduce((a, b) => op('v128.or', a, b)) };
  const lanes = xs.map((x, k) => {
    const l = f.local(`f${k}`, 'v128');
    const scaled = fmt === 'F16' ? op('f64x2.mul', get(x), get(f.const('H_DOWN', K.H_DOWN))) : get(x);
    f.emit(set(l, `(f32x4.demote_f64x2_zero ${scaled})`));
    return l;
  });
  const v = [0, 1].map((j) => f.local(`v${j}`, 'v128'));
  f.emit(set(v[0], lo64(lanes[0], lanes[1])), set(v[1], lo64(lanes[2], lanes[3])));
  const nan = () => op('v128.or', op('f32x4.ne', get(v[0]), get(v[0])), op('f32x4.ne', get(v[1]), get(v[1])));
  if (fmt === 'F32') return { vectors: v, nan };
  const drop = fmt === 'BF16' ? 16 : 13; // F32 mantissa bits below the 16-bit format's
  const lowMask = get(f.const(`LOW${drop}`, i32x4((1 << drop) - 1)));
  const half = get(f.const(`TIE${drop}`, i32x4(1 << (drop - 1))));
  const tie = () => v.map((l) => op('i32x4.eq', op('v128.and', get(l), lowMask), half)).reduce((a, b) => op('v128.or', a, b));
  const h = v.map((l, j) => {
    const bits = f.local(`h${j}`, 'v128');
    // Round at bit `drop` by adding half: ties, the only case where that is not half to even, are flagged above.
    // The carry may run into the exponent, as it should (up to Inf).
    const rne = (a: string) => `(i32x4.shr_u (i32x4.add ${a} ${half}) (i32.const ${drop}))`;
    if (fmt === 'BF16') f.emit(set(bits, rne(get(l))));
    else {
      // F16: round the magnitude, cap overflow at Inf (0x7c00), put the sign back at bit 15.
      const a = f.local(`a${j}`, 'v128');
      f.emit(
        set(a, op('v128.and', get(l), get(f.const('ABS32', i32x4(0x7fffffff))))),
        set(bits, op('v128.or', op('i32x4.min_u', rne(get(a)), get(f.const('H_INF32', i32x4(0x7c00)))), op('v128.and', `(i32x4.shr_u ${get(l)} (i32.const 16))`, get(f.const('H_SGN', K.H_SGN))))),
      );
    }
    return bits;
  });
  const w = f.local('w16', 'v128');
  f.emit(set(w, `(i16x8.narrow_i32x4_u ${get(h[0])} ${get(h[1])})`));
  return { vectors: [w], nan, tie };
}

function storeVectors(f: Func, ptr: string, vectors: string[]): void {
  vectors.forEach((v, j) => f.emit(`(v128.store offset=${16 * j} ${get(ptr)} ${get(v)})`));
}

/**
 * The hot loop of a kernel, as its own function without calls (so TurboFan keeps its accumulators in registers):
 * from group $i on, `body` handles elements [i, i+8) and returns a condition that stops the loop at that group
 * (after `body`, before `commit`). The function returns the index it stopped at: $n8 when done, else the group
 * its caller must finish by other means before calling again from i + 8.
 */
function hotLoop(f: Func, pointers: [string, string, number][], parts: { body: () => string; commit: () => void; save: () => void }): void {
  for (const [q, p, size] of pointers) f.emit(set(q, `(i32.add ${get(p)} (i32.mul (local.get $i) (i32.const ${size})))`));
  f.emit(`(block $stop (loop $group`, `(br_if $stop (i32.ge_u (local.get $i) (local.get $n8)))`);
  const cond = parts.body();
  f.emit(`(br_if $stop ${cond})`);
  parts.commit();
  for (const [q, , size] of pointers) f.emit(set(q, `(i32.add ${get(q)} (i32.const ${8 * size}))`));
  f.emit(`(local.set $i (i32.add (local.get $i) (i32.const 8)))`, `(br $group)))`);
  parts.save();
  f.emit(`(local.get $i)`);
}

/** Calls `hot` until it reaches $n8, handing each group it stops at to `rare`. */
function driveLoop(f: Func, hot: string, rare: string): void {
  f.emit(
    `(block $done (loop $more`,
    `  (local.set $i ${hot})`,
    `  (br_if $done (i32.ge_u (local.get $i) (local.get $n8)))`,
    `  ${rare}`,
    `  (local.set $i (i32.add (local.get $i) (i32.const 8)))`,
    `  (br $more)))`,
  );
}

const load = (at: number) => `(v128.load offset=${at} (i32.const 0))`;
const store = (at: number, v: string) => `(v128.store offset=${at} (i32.const 0) ${v})`;

// ---------------------------------------------------------------------------------------------------------------
// Subtract

/** Mantissa bits below a format's precision (see subtractPlan). */
const LOW_BITS: Record<'BF16' | 'F16' | 'F32', bigint> = { BF16: (1n << 45n) - 1n, F16: (1n << 42n) - 1n, F32: (1n << 29n) - 1n };

/** What the three functions of one subtract kernel share. */
function subtractPlan(x: FloatDType, y: FloatDType, probe: FloatDType | undefined) {
  const pr = probe === 'F64' ? undefined : probe;
  // Exactness tests. With BF16/F16 inputs every delta lies on the 2^-133 grid (F16: on the 2^-24 grid, below
  // 2^17), so exactness in BF16/F32 is just "no mantissa bits below the format's precision"; for BF16 inputs that
  // also needs |d| < 2^128, which the scalar redo guarantees by firing whenever a Σd² slot reaches 2^256. With F16
  // inputs, exactness in F16 is the same test plus |d| < 2^16.
  const bitsTest = (t: FloatDType) => ((x === 'BF16' || x === 'F16') && (t === 'BF16' || t === 'F32')) || (x === 'F16' && t === 'F16');
  const yTest = y === 'F64' ? undefined : bitsTest(y) ? 'bits' : 'full';
  // The main case (F32 out, BF16 probe) counts the probe on the stored F32 patterns, 4 lanes at a time: a delta
  // exact in F32 is exact in BF16 iff its low 16 bits are 0. Groups with an F32-inexact lane take the rare path,
  // which swaps that count for an exact one.
  const pTest = pr === undefined ? undefined : y === 'F32' && pr === 'BF16' && yTest === 'bits' ? 'packed' : bitsTest(pr) ? 'bits' : 'full';
  const guard = x === 'BF16' && (yTest === 'bits' || pTest === 'bits' || pTest === 'packed') ? pow2(256) : Infinity;
  return { name: subtractName(x, y, probe), pr, yTest, pTest, guard };
}

const SUB_PARAMS = '(param $pb i32) (param $pp i32) (param $po i32)';

function subtractHot(x: FloatDType, y: FloatDType, probe: FloatDType | undefined): Func {
  const { name, pr, yTest, pTest } = subtractPlan(x, y, probe);
  const f = new Func(`${name}_hot`, `${SUB_PARAMS} (param $i i32) (param $n8 i32) (result i32)`, false);
  const [qb, qp, qo] = ['qb', 'qp', 'qo'].map((n) => f.local(n, 'i32'));
  const [cntP, bad, ok, big] = ['cntP', 'bad', 'ok', 'big'].map((n) => f.local(n, 'v128'));
  const cnt32 = pTest === 'packed' ? f.local('cnt32', 'v128') : undefined;
  const spec = x === 'F16' ? f.local('spec', 'v128') : undefined;
  // Partial sums by i mod 4: pairs 0 and 2 of a group feed sq[0] (slots 0, 1), pairs 1 and 3 feed sq[1].
  const sq = [0, 1].map((k) => f.local(`sq${k}`, 'v128'));
  const sb = [0, 1].map((k) => f.local(`sb${k}`, 'v128'));
  const zero = get(f.const('ZERO', K.ZERO));
  const low = (t: 'BF16' | 'F16' | 'F32') => get(f.const(`LOW_${t}`, i64x2(LOW_BITS[t])));
  const tooBig = (d: string) => op('f64x2.ge', op('f64x2.abs', get(d)), get(f.const('F16_HI', f64x2(GRID.F16.vhi))));
  const state: [string | undefined, number][] = [
    [sq[0], WORK.sq],
    [sq[1], WORK.sq + 16],
    [sb[0], WORK.sb],
    [sb[1], WORK.sb + 16],
    [cntP, WORK.cntP],
    [cnt32, WORK.cnt32],
    [spec, WORK.spec],
  ];
  for (const [l, at] of state) if (l) f.emit(set(l, load(at)));

  hotLoop(
    f,
    [
      [qb, '$pb', SIZE[x]],
      [qp, '$pp', SIZE[x]],
      [qo, '$po', SIZE[y]],
    ],
    {
      body: () => {
        const ds: string[] = [];
        // F32 out from BF16/F32 in: subtract 4 lanes in F32. That is the float64 delta rounded to F32: F32
        // subtraction rounds the exact difference correctly, and rounding it to float64 first changes nothing
        // (53 ≥ 2·24 + 2 bits, so double rounding is innocuous for F32 operands).
        const inF32 = y === 'F32' && (x === 'BF16' || x === 'F32');
        const quads = inF32
          ? [0, 1].map((j) => {
              const [b, p, o] = ['bq', 'pq', 'oq'].map((n) => f.local(`${n}${j}`, 'v128'));
              const quad = (ptr: string) =>
                x === 'F32' ? `(v128.load offset=${16 * j} ${get(ptr)})` : `(i8x16.shuffle 0 1 16 17 2 3 18 19 4 5 20 21 6 7 22 23 ${zero} (v128.load64_zero offset=${8 * j} ${get(ptr)}))`;
              f.emit(set(b, quad(qb)), set(p, quad(qp)), set(o, op('f32x4.sub', get(p), get(b))));
              return { b, p, o };
            })
          : [];
        const half = (v: string, k: number) => `(f64x2.promote_low_f32x4 ${k % 2 ? `(i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 ${get(v)} ${get(v)})` : get(v)})`;
        for (let k = 0; k < 4; k++) {
          const [b, p, d] = ['b', 'p', 'd'].map((n) => f.local(`${n}${k}`, 'v128'));
          ds.push(d);
          if (inF32) f.emit(set(b, half(quads[k >> 1].b, k)), set(p, half(quads[k >> 1].p, k)));
          else {
            widenPair(f, x, qb, k, b, spec);
            widenPair(f, x, qp, k, p, spec);
          }
          f.emit(
            set(d, op('f64x2.sub', get(p), get(b))),
            // No finiteness masks: a non-finite square poisons its sum, and then the whole call is redone in scalar.
            set(sq[k & 1], op('f64x2.add', get(sq[k & 1]), op('f64x2.mul', get(d), get(d)))),
            set(sb[k & 1], op('f64x2.add', get(sb[k & 1]), op('f64x2.mul', get(b), get(b)))),
          );
          // The output's exactness only picks groups for the exact (rare) count; the probe's is counted here.
          if (yTest === 'bits') {
            f.emit(set(bad, k === 0 ? get(d) : op('v128.or', get(bad), get(d))));
            if (y === 'F16') f.emit(set(big, k === 0 ? tooBig(d) : op('v128.or', get(big), tooBig(d))));
          } else if (yTest === 'full') {
            const e = op('f64x2.eq', valueIn(f, y, d, `e${k}`), get(d));
            f.emit(set(ok, k === 0 ? e : op('v128.and', get(ok), e)));
          }
          if (pr !== undefined && pTest !== 'packed') {
            let exact = pTest === 'bits' ? op('i64x2.eq', op('v128.and', get(d), low(pr)), zero) : op('f64x2.eq', valueIn(f, pr, d, `q${k}`), get(d));
            if (pTest === 'bits' && pr === 'F16') exact = op('v128.andnot', exact, tooBig(d));
            f.emit(set(cntP, op('i64x2.sub', get(cntP), exact)));
          }
        }
        const vectors = inF32 ? quads.map((q) => q.o) : roundGroup(f, y, ds).vectors;
        storeVectors(f, qo, vectors);
        if (cnt32) for (const v of vectors) f.emit(set(cnt32, op('i32x4.sub', get(cnt32), low16Zero(f, v))));
        // A double-rounding tie is an inexact lane, so the exactness test already sends its group to the exact path.
        if (yTest === 'bits' && y !== 'F64') {
          const lowBits = op('v128.and', get(bad), low(y)); // low bits of any delta (and distributes over or)
          return `(v128.any_true ${y === 'F16' ? op('v128.or', lowBits, get(big)) : lowBits})`;
        }
        if (yTest === 'full') return `(i32.eqz (i64x2.all_true ${get(ok)}))`;
        return '(i32.const 0)';
      },
      commit: () => {},
      save: () => {
        for (const [l, at] of state) if (l) f.emit(store(at, get(l)));
      },
    },
  );
  return f;
}

const low16Zero = (f: Func, v: string) => op('i32x4.eq', op('v128.and', get(v), get(f.const('LOW16', i32x4(0xffff)))), get(f.const('ZERO', K.ZERO)));

/** The group at $i has a rounded lane: count it exactly, and round it again exactly (the hot path may have met a tie). */
function subtractRare(x: FloatDType, y: FloatDType, probe: FloatDType | undefined): Func {
  const { name, pr, pTest } = subtractPlan(x, y, probe);
  const f = new Func(`${name}_rare`, `${SUB_PARAMS} (param $i i32)`, false);
  const [qb, qp, qo] = ['qb', 'qp', 'qo'].map((n) => f.local(n, 'i32'));
  const [cntR, cntP, cnt32, mx] = ['cntR', 'cntP', 'cnt32', 'mx'].map((n) => f.local(n, 'v128'));
  const state: [string, number][] = [
    [cntR, WORK.cntR],
    [cntP, WORK.cntP],
    [cnt32, WORK.cnt32],
    [mx, WORK.mx],
  ];
  for (const [l, at] of state) f.emit(set(l, load(at)));
  for (const [q, p, size] of [
    [qb, '$pb', SIZE[x]],
    [qp, '$pp', SIZE[x]],
    [qo, '$po', SIZE[y]],
  ] as const)
    f.emit(set(q, `(i32.add ${get(p)} (i32.mul (local.get $i) (i32.const ${size})))`));
  const ds: string[] = [];
  const lanes: string[] = [];
  for (let k = 0; k < 4; k++) {
    const [b, p, d, w] = ['b', 'p', 'd', 'w'].map((n) => f.local(`${n}${k}`, 'v128'));
    ds.push(d);
    widenPair(f, x, qb, k, b, undefined);
    widenPair(f, x, qp, k, p, undefined);
    f.emit(set(d, op('f64x2.sub', get(p), get(b))));
    if (y === 'F64') continue;
    const r = roundExact(f, y, d, `${k}`);
    lanes.push(r.lanes);
    // NaN lanes miscount here, but a NaN forces the scalar redo of the whole call.
    f.emit(
      set(w, r.value()),
      set(cntR, op('i64x2.sub', get(cntR), op('v128.not', op('f64x2.eq', get(w), get(d))))),
      set(mx, op('f64x2.pmax', get(mx), op('f64x2.abs', op('f64x2.sub', get(w), get(d))))),
    );
  }
  if (y === 'BF16' || y === 'F16') storeVectors(f, qo, packExact(f, y, lanes, 's'));
  if (pTest === 'packed' && pr !== undefined) {
    // Take back the packed probe count of this group and count it exactly instead.
    const zero = get(f.const('ZERO', K.ZERO));
    for (const v of packExact(f, 'F32', lanes, 'u')) f.emit(set(cnt32, op('i32x4.add', get(cnt32), low16Zero(f, v))));
    for (const d of ds) f.emit(set(cntP, op('i64x2.sub', get(cntP), op('i64x2.eq', op('v128.and', get(d), get(f.const('LOW_BF16', i64x2(LOW_BITS.BF16)))), zero))));
  }
  for (const [l, at] of state) f.emit(store(at, get(l)));
  return f;
}

function simdSubtract(x: FloatDType, y: FloatDType, probe: FloatDType | undefined): Func {
  const { name, pr, yTest, guard } = subtractPlan(x, y, probe);
  const f = new Func(name, `${SUB_PARAMS} (param $n i32)`, true);
  f.local('i', 'i32');
  f.local('n8', 'i32');
  const zero = get(f.const('ZERO', K.ZERO));
  f.emit(
    set('$n8', '(i32.and (local.get $n) (i32.const -8))'),
    ...[0, 16, 32, 48].map((o) => store(WORK.sq + o, load(STATS.sqD + o))),
    ...[WORK.cntR, WORK.cntP, WORK.cnt32, WORK.mx, WORK.spec].map((at) => store(at, zero)),
  );
  const args = '(local.get $pb) (local.get $pp) (local.get $po) (local.get $i)';
  driveLoop(f, `(call $${name}_hot ${args} (local.get $n8))`, yTest ? `(call $${name}_rare ${args})` : '');

  // Redo the whole call in scalar, from the stats as they were, if Σd² went NaN or Inf (a NaN or Inf delta, whose
  // square was not masked; also a genuine overflow, which the redo reproduces), if it reached the guard, or if an
  // F16 input was Inf/NaN. A non-finite base always makes a non-finite delta, so Σbase² needs no test of its own.
  const t = get(f.const(guard === Infinity ? 'INF' : 'GUARD', f64x2(guard)));
  const redo = [load(WORK.sq), load(WORK.sq + 16)].map((v) => op('v128.not', op('f64x2.lt', v, t)));
  if (x === 'F16') redo.push(load(WORK.spec));
  const scalar = `$${name}_s`;
  f.emit(`(if (v128.any_true ${redo.reduce((a, b) => op('v128.or', a, b))}) (then (call ${scalar} (local.get $pb) (local.get $pp) (local.get $po) (i32.const 0) (local.get $n)) (return)))`);
  const lanesum = (at: number) => `(i64.add (i64.load offset=${at} (i32.const 0)) (i64.load offset=${at + 8} (i32.const 0)))`;
  const exact = `(i64.add ${lanesum(WORK.cntP)} (i64.extend_i32_u ${[0, 4, 8, 12].map((o) => `(i32.load offset=${WORK.cnt32 + o} (i32.const 0))`).reduce((a, b) => op('i32.add', a, b))}))`;
  const addI64 = (at: number, v: string) => `(i64.store offset=${at} (i32.const 0) (i64.add (i64.load offset=${at} (i32.const 0)) ${v}))`;
  f.emit(
    ...[0, 16, 32, 48].map((o) => store(STATS.sqD + o, load(WORK.sq + o))),
    addI64(STATS.rounded, lanesum(WORK.cntR)),
    // cntP and cnt32 counted the exact lanes.
    ...(pr === undefined ? [] : [addI64(STATS.misses, `(i64.sub (i64.extend_i32_u (local.get $n8)) ${exact})`)]),
    `(f64.store offset=${STATS.maxError} (i32.const 0) (f64.max (f64.load offset=${STATS.maxError} (i32.const 0)) (f64.max (f64.load offset=${WORK.mx} (i32.const 0)) (f64.load offset=${WORK.mx + 8} (i32.const 0)))))`,
    `(call ${scalar} (local.get $pb) (local.get $pp) (local.get $po) (local.get $n8) (local.get $n))`,
  );
  return f;
}

// ---------------------------------------------------------------------------------------------------------------
// Apply: out = round_y(widen(base) + s·widen(delta)). Several deltas chain through F64 scratch (x = F64, y = F64).

const APP_PARAMS = '(param $pb i32) (param $pd i32) (param $po i32) (param $s f64)';

function applyHot(x: FloatDType, dt: FloatDType, y: FloatDType): Func {
  const f = new Func(`${applyName(x, dt, y)}_hot`, `${APP_PARAMS} (param $i i32) (param $n8 i32) (result i32)`, false);
  const [qb, qd, qo] = ['qb', 'qd', 'qo'].map((n) => f.local(n, 'i32'));
  const sv = f.local('sv', 'v128');
  const spec = x === 'F16' || dt === 'F16' ? f.local('spec', 'v128') : undefined;
  f.emit(set(sv, '(f64x2.splat (local.get $s))'));
  let vectors: string[] = [];
  hotLoop(
    f,
    [
      [qb, '$pb', SIZE[x]],
      [qd, '$pd', SIZE[dt]],
      [qo, '$po', SIZE[y]],
    ],
    {
      body: () => {
        if (spec) f.emit(set(spec, get(f.const('ZERO', K.ZERO))));
        const xs = [0, 1, 2, 3].map((k) => {
          const [b, d, v] = ['b', 'd', 'x'].map((n) => f.local(`${n}${k}`, 'v128'));
          widenPair(f, x, qb, k, b, spec);
          widenPair(f, dt, qd, k, d, spec);
          f.emit(set(v, op('f64x2.add', get(b), op('f64x2.mul', get(d), get(sv)))));
          return v;
        });
        const r = roundGroup(f, y, xs);
        vectors = r.vectors;
        // NaN results, double-rounding ties and F16 Inf/NaN inputs stop the loop before this group's stores: the
        // caller runs the scalar code on the group, which also gives NaNs their sign explicitly (so out may alias base).
        const conds = [r.nan(), ...(r.tie ? [r.tie()] : []), ...(spec ? [get(spec)] : [])];
        return `(v128.any_true ${conds.reduce((a, b) => op('v128.or', a, b))})`;
      },
      commit: () => storeVectors(f, qo, vectors),
      save: () => {},
    },
  );
  return f;
}

function simdApply(x: FloatDType, dt: FloatDType, y: FloatDType): Func {
  const name = applyName(x, dt, y);
  const f = new Func(name, `${APP_PARAMS} (param $sneg i32) (param $n i32)`, true);
  f.local('i', 'i32');
  f.local('n8', 'i32');
  f.emit(set('$n8', '(i32.and (local.get $n) (i32.const -8))'));
  const args = '(local.get $pb) (local.get $pd) (local.get $po) (local.get $s)';
  driveLoop(f, `(call $${name}_hot ${args} (local.get $i) (local.get $n8))`, `(call $${name}_s ${args} (local.get $sneg) (local.get $i) (i32.add (local.get $i) (i32.const 8)))`);
  f.emit(`(call $${name}_s ${args} (local.get $sneg) (local.get $n8) (local.get $n))`);
  return f;
}

/** The whole module's text. */
export function kernelsWat(): string {
  const parts = ['(module', '(import "env" "mem" (memory 1))', scalarHelpers()];
  for (const x of FORMATS) {
    for (const y of FORMATS) {
      for (const probe of [undefined, 'BF16', 'F16', 'F32'] as const) {
        parts.push(scalarSubtract(x, y, probe).text(), subtractHot(x, y, probe).text(), subtractRare(x, y, probe).text(), simdSubtract(x, y, probe).text());
      }
      for (const dt of FORMATS) parts.push(scalarApply(x, dt, y).text(), applyHot(x, dt, y).text(), simdApply(x, dt, y).text());
    }
  }
  parts.push(dataSegment(), ')');
  return parts.join('\n');
}
