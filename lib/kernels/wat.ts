// Generates the WebAssembly text of the kernels, one module per kernel (wasm.ts assembles each on first use): for a
// subtract (input, output, probe dtype) or an apply (base, delta dtypes, output dtype), an exported driver, a
// call-free SIMD hot loop over groups of 8 elements, and a scalar twin for tails and for what the hot loop hands off (NaNs, whose sign the scalar code sets explicitly; F16
// Inf/NaN inputs; non-finite sums). Every hot loop rounds exactly, once, from float64 (no double rounding through
// F32; the F32-lane subtracts between 16-bit formats round F32 deltas only where those are the float64 delta, and
// F32/F64 → BF16 rounds fl32(d) only where no BF16 midpoint can lie between it and d), so no data but NaN and Inf
// leaves it (the F32/F64 → BF16 loop also stops at groups with a midpoint lane; F32/F64 → F16 stops at an overflowing
// group, for the scalar redo that overflow always meant). No library emits SIMD rounding to BF16/F16, so those snippets are
// written out here; the tests check all of it against reference.ts.
import type { FloatDType } from '../format/dtype.js';
import type { WasmModuleSource } from '../wasm/assembler.js';

export const FORMATS: readonly FloatDType[] = ['BF16', 'F16', 'F32', 'F64'];
const SIZE: Record<FloatDType, number> = { BF16: 2, F16: 2, F32: 4, F64: 8 };

/** Memory layout below the arena (byte offsets). */
export const LAYOUT = {
  /** 16-byte constants the kernels load (see Func.const). */
  consts: 320,
  /** Elements per block when a multi-delta apply keeps x in float64 scratch, or when inputs are staged. */
  block: 2048,
  /** float64 x for one block. */
  scratch: 2048,
  /** Four staging areas of block·8 bytes (base, two deltas or post, out) for buffers outside the instance's memory. */
  stage: 2048 + 2048 * 8,
  arena: 2048 + 2048 * 8 * 5,
} as const;

/** Where subtract keeps its running stats: 4 f64 Σd² partial sums (by i mod 4), 4 Σbase², two i64 counts, a max. */
export const STATS = { sqD: 0, sqB: 32, rounded: 64, misses: 72, maxError: 80, bytes: 88 } as const;

/** A subtract call's vector state while it runs (so that the redo can start again from STATS). */
const WORK = { sq: 128, sb: 160, cntR: 192, cntP: 208, cnt32: 224, mx: 240, spec: 256, mx32: 272, mn32: 288 } as const;

export function subtractName(x: FloatDType, y: FloatDType, probe: FloatDType | undefined): string {
  return `sub_${x}_${y}_${probe === undefined || probe === 'F64' ? 'none' : probe}`;
}
/** An apply kernel: base dtype x, one or two delta dtypes, output dtype y. */
export function applyName(x: FloatDType, ds: readonly FloatDType[], y: FloatDType): string {
  return `app_${x}_${ds.join('_')}_${y}`;
}

/**
 * An F16 base rounded back to F16, with BF16, F16 or F32 deltas: the hot loop runs 2^-112 times too small, which
 * saves scaling the F16 inputs (see widenGroup). Exact, as every product and sum stays normal and finite when scaled
 * by 2^-112, for scales in [2^-700, 2^800] (wasm.ts sends other finite nonzero scales to the reference path).
 */
export const scaledApply = (x: FloatDType, ds: readonly FloatDType[], y: FloatDType) => x === 'F16' && y === 'F16' && !ds.includes('F64');

/** A 16-bit base with 16-bit deltas. */
const narrowApply = (x: FloatDType, ds: readonly FloatDType[]) => SIZE[x] === 2 && ds.every((d) => SIZE[d] === 2);

/** The fused kernels for two deltas exist for y = x (what apply writes); other pairings chain one-delta kernels. */
export function hasFusedApply(x: FloatDType, ds: readonly FloatDType[], y: FloatDType): boolean {
  return ds.length === 1 || (ds.length === 2 && y === x);
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
  /** Appended to the names of locals declared from now on: each unrolled group gets locals of its own. */
  suffix = '';
  constructor(
    private readonly name: string,
    private readonly signature: string,
    private readonly exported: boolean,
  ) {}
  local(name: string, type: ValType): string {
    return this.declare(name + this.suffix, type);
  }
  private declare(name: string, type: ValType): string {
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
    return this.declare(name, 'v128');
  }
  /** A v128 constant read from the pool where it is used: for constants a loop needs rarely, so none pins a register. */
  constAt(name: string, bytes: Uint8Array): string {
    return `(v128.load offset=${poolOffset(name, bytes)} (i32.const 0))`;
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
const lanes16 = (x: number) => {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  for (let at = 0; at < 16; at += 2) v.setUint16(at, x, true);
  return b;
};

const K = {
  SIGN: i64x2(0x8000000000000000n),
  EXP: i64x2(0x7ff0000000000000n),
  INF: f64x2(Infinity),
  H_MASK: i32x4(0x8fffe000),
  H_MAG: i32x4(0x7fff),
  H_SGN: i32x4(0x8000),
  H_UP: f64x2(pow2(112)),
  H_EXP16: lanes16(0x7c00),
  ABS: i64x2(0x7fffffffffffffffn),
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

/** The parameters of an apply function: pointers, then scales, then `rest`. */
function applyParams(dts: readonly FloatDType[], rest: string): string {
  const js = dts.map((_, j) => j);
  return ['(param $pb i32)', ...js.map((j) => `(param $pd${j} i32)`), '(param $po i32)', ...js.map((j) => `(param $s${j} f64)`), rest].join(' ');
}
const applyArgs = (dts: readonly FloatDType[]) => ['$pb', ...dts.map((_, j) => `$pd${j}`), '$po', ...dts.map((_, j) => `$s${j}`)].map(get).join(' ');
const snegParams = (dts: readonly FloatDType[]) => dts.map((_, j) => `(param $sneg${j} i32)`).join(' ');
const snegArgs = (dts: readonly FloatDType[]) => dts.map((_, j) => get(`$sneg${j}`)).join(' ');

function scalarApply(x: FloatDType, dts: readonly FloatDType[], y: FloatDType): Func {
  const f = new Func(applyName(x, dts, y) + '_s', applyParams(dts, `${snegParams(dts)} (param $i i32) (param $end i32)`), false);
  const [v, d, p] = ['x', 'd', 'p'].map((n) => f.local(n, 'f64'));
  const ab = f.local('ab', 'i32');
  const ad = f.local('ad', 'i32');
  const neg = f.local('neg', 'i32');
  const body = [set(ab, addr('$pb', '$i', SIZE[x])), set(v, `(call $w_${x} ${get(ab)})`), set(neg, `(call $neg_${x} ${get(ab)})`)];
  dts.forEach((dt, j) => {
    const s = `(local.get $s${j})`;
    body.push(
      set(ad, addr(`$pd${j}`, '$i', SIZE[dt])),
      set(d, `(call $w_${dt} ${get(ad)})`),
      set(p, op('f64.mul', s, get(d))),
      // A NaN x stays as it is; a NaN product passes on s's sign, else d's, else (0·Inf) the negative NaN.
      `(if (f64.eq ${get(v)} ${get(v)}) (then`,
      `  (if (f64.ne ${get(p)} ${get(p)})`,
      `    (then ${set(v, get(p))} ${set(neg, `(if (result i32) (f64.ne ${s} ${s}) (then (local.get $sneg${j})) (else (if (result i32) (f64.ne ${get(d)} ${get(d)}) (then (call $neg_${dt} ${get(ad)})) (else (i32.const 1)))))`)})`,
      `    (else ${set(v, op('f64.add', get(v), get(p)))} (if (f64.ne ${get(v)} ${get(v)}) (then ${set(neg, i32(1))}))))))`,
    );
  });
  body.push(
    `(if (f64.ne ${get(v)} ${get(v)}) (then (call $nan_${y} ${addr('$po', '$i', SIZE[y])} ${get(neg)}))`,
    `  (else (call $st_${y} ${addr('$po', '$i', SIZE[y])} ${get(v)})))`,
  );
  scalarLoop(f, body);
  return f;
}

// ---------------------------------------------------------------------------------------------------------------
// SIMD snippets. A group is 8 elements: 4 pairs, each an f64x2.

/**
 * 16-bit elements 0..3 (`high` false) or 4..7 of `v` into the high halves of i32 lanes, zero below: an interleave
 * with zero, which V8 emits as one punpcklwd/punpckhwd (other byte patterns cost two pshufb and an or).
 */
const toHighHalves = (f: Func, v: string, high: boolean) =>
  `(i8x16.shuffle ${high ? '8 9 24 25 10 11 26 27 12 13 28 29 14 15 30 31' : '0 1 16 17 2 3 18 19 4 5 20 21 6 7 22 23'} ${ZERO} ${v})`;
/** The high 64 bits of a vector, in its low half (one pshufd). */
const HIGH64 = '8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15';
const high64 = (v: string) => `(i8x16.shuffle ${HIGH64} ${v} ${v})`;

/**
 * Loads the group at `ptr` and widens it exactly to 4 f64x2 pairs (locals `${tag}0` … `${tag}3`). 16-bit formats load
 * the whole group once and interleave it with zeros into the high halves of F32 lanes. F16 also ors a mask of its
 * Inf/NaN lanes into `spec` (their widened values are wrong; the caller hands those off); `prescaled` F16 values
 * come out 2^-112 times too small, for a caller that multiplies them by its own factor times 2^112.
 */
function widenGroup(f: Func, fmt: FloatDType, ptr: string, tag: string, spec: string | undefined, prescaled = false, g = 0): string[] {
  const pairs = [0, 1, 2, 3].map((k) => f.local(`${tag}${k}`, 'v128'));
  const at = 8 * SIZE[fmt] * g; // the group's byte offset from ptr
  switch (fmt) {
    case 'F64':
      pairs.forEach((p, k) => f.emit(set(p, `(v128.load offset=${at + 16 * k} ${get(ptr)})`)));
      break;
    case 'F32':
      pairs.forEach((p, k) => f.emit(set(p, `(f64x2.promote_low_f32x4 (v128.load64_zero offset=${at + 8 * k} ${get(ptr)}))`)));
      break;
    case 'BF16': {
      const raw = f.local(`${tag}_raw`, 'v128');
      f.emit(set(raw, `(v128.load offset=${at} ${get(ptr)})`));
      for (const j of [0, 1]) {
        const u = f.local(`${tag}_u${j}`, 'v128');
        f.emit(set(u, toHighHalves(f, get(raw), j === 1)), set(pairs[2 * j], `(f64x2.promote_low_f32x4 ${get(u)})`), set(pairs[2 * j + 1], `(f64x2.promote_low_f32x4 ${high64(get(u))})`));
      }
      break;
    }
    case 'F16': {
      // (h << 16) >>s 3, masked to sign | bits 27..13, is the F32 pattern of h·2^-112 (subnormals too); promoted, it
      // is scaled back by 2^112 in float64 (not in F32, where x86 takes a slow assist on subnormal operands), or not
      // at all when the caller folded 2^112 into its own factor. Exponent 31 (Inf/NaN) is flagged instead.
      const raw = f.local(`${tag}_raw`, 'v128');
      f.emit(set(raw, `(v128.load offset=${at} ${get(ptr)})`));
      const e31 = get(f.const('H_EXP16', K.H_EXP16));
      if (spec) f.emit(set(spec, op('v128.or', get(spec), op('i16x8.eq', op('v128.and', get(raw), e31), e31))));
      const up = (v: string) => (prescaled ? v : op('f64x2.mul', v, get(f.const('H_UP', K.H_UP))));
      for (const j of [0, 1]) {
        const q = f.local(`${tag}_q${j}`, 'v128');
        f.emit(
          set(q, op('v128.and', `(i32x4.shr_s ${toHighHalves(f, get(raw), j === 1)} (i32.const 3))`, get(f.const('H_MASK', K.H_MASK)))),
          set(pairs[2 * j], up(`(f64x2.promote_low_f32x4 ${get(q)})`)),
          set(pairs[2 * j + 1], up(`(f64x2.promote_low_f32x4 ${high64(get(q))})`)),
        );
      }
      break;
    }
  }
  return pairs;
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
 * constant, as $grid does: the float64 addition itself rounds half to even at exactly the format's quantum. The
 * result is exact in F32 (BF16) or in F32 after scaling by 2^-112 (F16); results at or above 2^(emax+1) overflow
 * to Inf. Unlike $grid there is no upper clamp: only |x| ≥ 2^979 overflows the constant, and then (as for
 * x = ±Inf) the lanes come out NaN, which the callers hand off to the scalar code.
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
  // An integer max of the exponent bits (their low dwords are 0): any vector ALU pipe, not an FP one.
  const binade = op('i32x4.max_s', op('v128.and', get(x), get(f.const('EXP', K.EXP))), get(f.const(`${fmt}_LO`, f64x2(c.vlo))));
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

/** Zero, written in place: V8 emits it as one xor of a register with itself, so it pins no register. */
const ZERO = '(v128.const i64x2 0 0)';

const lo64 = (a: string, b: string) => `(i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 ${get(a)} ${get(b)})`;

/** Packs 4 pairs of exactly rounded lanes (from roundExact): the F32 patterns (2 vectors; none for F64) and the vectors to store. */
function packExact(f: Func, fmt: FloatDType, lanes: string[], tag: string): { f32: string[]; vectors: string[] } {
  if (fmt === 'F64') return { f32: [], vectors: lanes };
  const v = [0, 1].map((j) => f.local(`pv${tag}${j}`, 'v128'));
  f.emit(set(v[0], lo64(lanes[0], lanes[1])), set(v[1], lo64(lanes[2], lanes[3])));
  if (fmt === 'F32') return { f32: v, vectors: v };
  const h = v.map((l, j) => {
    // The 16-bit patterns into the low half of each i32 lane: BF16 is the top half; F16 is bits 27..13 plus the sign.
    const bits = f.local(`ph${tag}${j}`, 'v128');
    if (fmt === 'BF16') f.emit(set(bits, `(i32x4.shr_u ${get(l)} (i32.const 16))`));
    else f.emit(set(bits, op('v128.or', op('v128.and', `(i32x4.shr_u ${get(l)} (i32.const 13))`, get(f.const('H_MAG', K.H_MAG))), op('v128.and', `(i32x4.shr_u ${get(l)} (i32.const 16))`, get(f.const('H_SGN', K.H_SGN))))));
    return bits;
  });
  const w = f.local(`pw${tag}`, 'v128');
  f.emit(set(w, `(i16x8.narrow_i32x4_u ${get(h[0])} ${get(h[1])})`));
  return { f32: v, vectors: [w] };
}

interface GroupRounding {
  /** The vectors to store, 16 bytes apart. */
  vectors: string[];
  /**
   * Nonzero where a lane must be handed off: a NaN, and for BF16/F16 also any |x| at or above the format's overflow
   * threshold (Inf included), which the fast rounding does not cover.
   */
  special: () => string;
  /** Per pair, the stored value and x, or for BF16/F16 their magnitudes: equal iff exact, |difference| the error. */
  compare: () => [string, string][];
  /** Per pair, stored − x (round16Sub): +0 iff exact, never −0. */
  errors?: () => string[];
}

/** The 16-bit formats: explicit mantissa bits, smallest normal exponent, and the least |x| that rounds to Inf. */
const SMALL = {
  BF16: { mant: 7, emin: -126, over: (2 - pow2(-8)) * pow2(127) },
  F16: { mant: 10, emin: -14, over: (2 - pow2(-11)) * pow2(15) },
} as const;

/**
 * Rounds a group's 4 pairs once, exactly, to BF16/F16. With binade e = max(exponent of |x|, emin), let m be
 * 1.5·2^(e+52−mant) plus (e − emin)·2^mant units in its last place. The float64 sum |x| + m stays in m's binade,
 * so the addition itself rounds |x| half to even to a multiple of that unit, 2^(e−mant): the format's quantum at
 * |x| (fixed below emin, for subnormals). (e − emin)·2^mant is even, so the ties go the right way, and the sum's
 * low 32 bits are then (e − emin)·2^mant + k for k = |x| rounded, in quanta: the BF16/F16 bit pattern of |x|
 * (k = 2^(mant+1) carries into the next binade, and subnormals come out right too). Overflow, Inf and NaN are
 * left to the caller (see GroupRounding.special). No conversions: no F32 subnormals.
 */
function round16(f: Func, fmt: 'BF16' | 'F16', xs: string[], scaled = false): GroupRounding {
  // `scaled`: x comes 2^-112 times too small (F16 only): the same rounding with the format's range moved down by 112.
  const { mant } = SMALL[fmt];
  const emin = SMALL[fmt].emin - (scaled ? 112 : 0);
  const over = SMALL[fmt].over * (scaled ? pow2(-112) : 1);
  const key = scaled ? `${fmt}S` : fmt;
  const magic = ((BigInt(52 - mant) << 52n) + (1n << 51n) - (BigInt(1023 + emin) << BigInt(mant))) & ((1n << 64n) - 1n);
  const c = (name: string, bytes: Uint8Array) => get(f.const(name, bytes));
  const ts: string[] = [];
  const ms: string[] = [];
  const ss: string[] = [];
  xs.forEach((x, k) => {
    const [t, e, m, sum] = ['t', 'e', 'm', 's'].map((n) => f.local(`r${n}${k}`, 'v128'));
    f.emit(
      set(t, op('v128.and', get(x), c('ABS', K.ABS))),
      // An integer max of the exponent bits (their low dwords are 0): any vector ALU pipe, not an FP one.
      set(e, op('i32x4.max_s', op('v128.and', get(x), c('EXP', K.EXP)), c(`${key}_LO`, f64x2(pow2(emin))))),
      set(m, op('i64x2.add', get(e), op('i64x2.add', `(i64x2.shr_u ${get(e)} (i32.const ${52 - mant}))`, c(`${key}_MAGIC`, i64x2(magic))))),
      set(sum, op('f64x2.add', get(t), get(m))),
    );
    ts.push(t);
    ms.push(m);
    ss.push(sum);
  });
  // Gather the low dwords of the sums (the magnitudes) and the high dwords of x (the signs), 4 lanes at a time.
  const h = [0, 1].map((j) => {
    const bits = f.local(`rh${j}`, 'v128');
    f.emit(set(bits, op('v128.or', dwords(ss[2 * j], ss[2 * j + 1], false), op('v128.and', `(i32x4.shr_u ${dwords(xs[2 * j], xs[2 * j + 1], true)} (i32.const 16))`, f.constAt('H_SGN', K.H_SGN)))));
    return bits;
  });
  const w = f.local('rw', 'v128');
  f.emit(set(w, `(i16x8.narrow_i32x4_u ${get(h[0])} ${get(h[1])})`));
  return {
    vectors: [w],
    // |x| ≥ over (NaN included) iff the high dword of |x|'s bits is ≥ over's (whose low dword is 0): one signed
    // 64-bit compare of the lanewise i32 max, whose high dwords are the largest high dword and dominate.
    special: () => op('i64x2.gt_s', [op('i32x4.max_s', get(ts[0]), get(ts[1])), op('i32x4.max_s', get(ts[2]), get(ts[3]))].reduce((a, b) => op('i32x4.max_s', a, b)), f.constAt(`${key}_OVER`, i64x2(overHigh(over)))),
    compare: () => xs.map((_, k) => [op('f64x2.sub', get(ss[k]), get(ms[k])), get(ts[k])] as [string, string]),
  };
}

/** The low (or, `odd`, high) dwords of the float64 pairs in locals a and b, as one i32x4. */
const dwords = (a: string, b: string, odd: boolean) => (odd ? `(i8x16.shuffle 4 5 6 7 12 13 14 15 20 21 22 23 28 29 30 31 ${get(a)} ${get(b)})` : `(i8x16.shuffle 0 1 2 3 8 9 10 11 16 17 18 19 24 25 26 27 ${get(a)} ${get(b)})`);
/** Pair k (0, 1) of float64 magic constants from their low and high dwords (magicDwords' ml, mh). */
const magicPair = (ml: string, mh: string, k: number) =>
  k ? `(i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 ${get(ml)} ${get(mh)})` : `(i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 ${get(ml)} ${get(mh)})`;

/** An i32x4 splat constant of the signed-magic rounding (round16Sub, round16Apply), named A_<name>. */
const magicConst = (f: Func, name: string, v: number) => get(f.const(`A_${name}`, i32x4(v >>> 0)));

/**
 * The signed magic constant's dwords for two pairs a, b (see round16Apply): x's high dwords' sign, the binade
 * e = max(exponent bits, lo), m's high dword e + (52 − mant)·2^20 + 2^19 ored with the sign, m's low dword.
 */
function magicDwords(f: Func, mant: number, lo: string, a: string, b: string, name: (n: string) => string): Record<'sg' | 'e' | 'mh' | 'ml', string> {
  const c = (n: string, v: number) => magicConst(f, n, v);
  const [hi, sg, e, mh, ml] = ['hi', 'sg', 'e', 'mh', 'ml'].map((n) => f.local(name(n), 'v128'));
  f.emit(
    set(hi, dwords(a, b, true)),
    set(sg, op('v128.and', get(hi), c('SIGN32', 0x80000000))),
    set(e, op('i32x4.max_s', op('v128.and', get(hi), c('EXP64HI', 0x7ff00000)), lo)),
    set(mh, op('v128.or', op('i32x4.add', get(e), c(`MHI${mant}`, ((52 - mant) << 20) + (1 << 19))), get(sg))),
    set(ml, `(i32x4.shr_u ${op('i32x4.sub', get(e), lo)} (i32.const ${20 - mant}))`),
  );
  return { sg, e, mh, ml };
}

/**
 * round16 for the subtracts' float64 lanes, with round16Apply's magic constant: m built from x's high dwords, two pairs
 * at a time in one i32x4, carrying x's sign, so x + m rounds x itself (no abs) and the sums' low dwords are the
 * patterns of |x| rounded, the signs narrowed in by signed saturation. s − m is the stored value with x's sign (exact:
 * s and m share a binade; +0 for x = ±0), so errors() gives (s − m) − x: +0 iff the lane is exact (never −0), its
 * magnitude the error. For |x| in [over, 2^(emax+1)) the sum carries into Inf's pattern, right for the store, but s − m
 * is the finite 2^(emax+1) where the reference's error is Inf; larger |x| (up to 2^512, beyond which d² overflows Σd²)
 * give larger magnitude patterns, up to the unsigned narrow's saturation at 0xffff. So special() flags every lane whose
 * magnitude pattern (before the sign) is at least Inf's, unsigned: the caller hands those off (NaN and Inf deltas,
 * whose patterns are arbitrary, poison Σd² instead).
 */
function round16Sub(f: Func, fmt: 'BF16' | 'F16', xs: string[]): GroupRounding {
  const { mant, emin } = SMALL[fmt];
  const c = (name: string, v: number) => magicConst(f, name, v);
  const lo = c(`LO${1023 + emin}`, (1023 + emin) << 20);
  const sgs: string[] = [];
  const ms: string[] = [];
  const ss: string[] = [];
  const los = [0, 1].map((j) => {
    const [a, b] = [xs[2 * j], xs[2 * j + 1]];
    const { sg, mh, ml } = magicDwords(f, mant, lo, a, b, (n) => `u${n}${j}`);
    sgs.push(sg);
    const [ma, mb, sa, sb] = ['ma', 'mb', 'sa', 'sb'].map((n) => f.local(`u${n}${j}`, 'v128'));
    f.emit(
      set(ma, magicPair(ml, mh, 0)),
      set(mb, magicPair(ml, mh, 1)),
      set(sa, op('f64x2.add', get(a), get(ma))),
      set(sb, op('f64x2.add', get(b), get(mb))),
    );
    ms.push(ma, mb);
    ss.push(sa, sb);
    return dwords(sa, sb, false);
  });
  const [u, w] = [f.local('uu', 'v128'), f.local('uw', 'v128')];
  f.emit(set(u, `(i16x8.narrow_i32x4_u ${los[0]} ${los[1]})`), set(w, op('v128.or', get(u), `(i16x8.narrow_i32x4_s ${get(sgs[0])} ${get(sgs[1])})`)));
  return {
    vectors: [w],
    special: () => op('i16x8.ge_u', get(u), get(f.const(`${fmt}_EXP16`, lanes16(NARROW[fmt].exp)))),
    compare: () => xs.map((x, k) => [op('f64x2.sub', get(ss[k]), get(ms[k])), get(x)] as [string, string]),
    errors: () => xs.map((x, k) => op('f64x2.sub', op('f64x2.sub', get(ss[k]), get(ms[k])), get(x))),
  };
}

/** (high dword of over's bits − 1) · 2^32 + 2^32 − 1: exceeded by a 64-bit pattern iff its high dword is ≥ over's. */
function overHigh(over: number): bigint {
  const v = new DataView(new ArrayBuffer(8));
  v.setFloat64(0, over, true);
  if (v.getUint32(0, true) !== 0) throw new Error('overflow threshold with a nonzero low dword');
  return ((BigInt(v.getUint32(4, true)) - 1n) << 32n) | 0xffffffffn;
}

/** Rounds a group's 4 pairs once, exactly, to `fmt`. */
function roundGroup(f: Func, fmt: FloatDType, xs: string[], scaled = false): GroupRounding {
  if (fmt === 'BF16' || fmt === 'F16') return round16(f, fmt, xs, scaled);
  const nanOf = (v: string, t: 'f32x4' | 'f64x2') => op(`${t}.ne`, get(v), get(v));
  if (fmt === 'F64') return { vectors: xs, special: () => xs.map((x) => nanOf(x, 'f64x2')).reduce((a, b) => op('v128.or', a, b)), compare: () => xs.map((x) => [get(x), get(x)]) };
  const rs = xs.map((x, k) => roundExact(f, fmt, x, `r${k}`));
  const packed = packExact(f, fmt, rs.map((r) => r.lanes), 'r');
  return {
    vectors: packed.vectors,
    special: () => packed.f32.map((v) => nanOf(v, 'f32x4')).reduce((a, b) => op('v128.or', a, b)),
    compare: () => rs.map((r, k) => [r.value(), get(xs[k])]),
  };
}

/** The Σd² and Σbase² partial sums' locals (slots by i mod 4: pairs 0 and 2 of a group feed [0]) and their WORK slots. */
function sumLocals(f: Func): { sq: string[]; sb: string[]; slots: [string, number][] } {
  const sq = [0, 1].map((k) => f.local(`sq${k}`, 'v128'));
  const sb = [0, 1].map((k) => f.local(`sb${k}`, 'v128'));
  return { sq, sb, slots: [[sq[0], WORK.sq], [sq[1], WORK.sq + 16], [sb[0], WORK.sb], [sb[1], WORK.sb + 16]] };
}

/** Loads a call's vector state (locals and their WORK offsets; undefined: unused) from WORK; save() stores it back. */
function loadWork(f: Func, state: [string | undefined, number][]): () => void {
  const live = state.filter((e): e is [string, number] => e[0] !== undefined);
  for (const [l, at] of live) f.emit(set(l, load(at)));
  return () => {
    for (const [l, at] of live) f.emit(store(at, get(l)));
  };
}

/** Points each of a group's pointer locals at element $i of its buffer: [local, pointer param, element size]. */
function pointAtGroup(f: Func, pointers: readonly (readonly [string, string, number])[]): void {
  for (const [q, p, size] of pointers) f.emit(set(q, `(i32.add ${get(p)} (i32.mul (local.get $i) (i32.const ${size})))`));
}

/** Four vectors folded pairwise by `fn` (shorter dependency chains than a running fold). */
const tree4 = (v: string[], fn: string) => op(fn, op(fn, v[0], v[1]), op(fn, v[2], v[3]));

/** Counts the group's rounded elements into `cntR` and keeps the largest rounding error in `mx`, from compare()'s pairs. */
function countRounded(f: Func, pairs: [string, string][], cntR: string, mx: string): void {
  pairs.forEach(([stored, exact], k) => {
    const [w, v] = [f.local(`w${k}`, 'v128'), f.local(`v${k}`, 'v128')];
    f.emit(
      set(w, stored),
      set(v, exact),
      set(cntR, op('i64x2.sub', get(cntR), op('f64x2.ne', get(w), get(v)))),
      set(mx, op('f64x2.pmax', get(mx), op('v128.and', op('f64x2.sub', get(w), get(v)), get(f.const('ABS', K.ABS))))),
    );
  });
}

function storeVectors(f: Func, ptr: string, vectors: string[], at = 0): void {
  vectors.forEach((v, j) => f.emit(`(v128.store offset=${at + 16 * j} ${get(ptr)} ${get(v)})`));
}

/**
 * Groups of 8 elements per iteration of a hot loop. Two halve the loop's overhead (stack check, pointers, the stop
 * test); the fused two-delta applies keep one, since their three input streams already fill the 16 registers and
 * unrolled they spill more than they save (measured), and so do one-delta applies of 16-bit deltas to a 16-bit
 * base (their widening and rounding fill the registers: 3–4.5 % faster with one, measured).
 */
function unrollFor(kernel: 'subtract' | 'apply', deltas = 1, narrow = false): number {
  return kernel === 'apply' && (deltas === 2 || narrow) ? 1 : 2;
}

/**
 * The hot loop of a kernel, as its own function without calls (so TurboFan keeps its accumulators in registers):
 * from element $i on, each iteration handles `unroll` groups of 8, `body(g)` emitting group g (with locals of its
 * own) and returning a mask whose lanes stop the loop there (after every `body`, before any `commit`). The function
 * returns the index it stopped at: $nspan when done, else the start of the 8·unroll elements its caller must finish
 * by other means before calling again after them.
 */
function hotLoop(f: Func, unroll: number, pointers: [string, string, number][], parts: { body: (g: number) => string | undefined; commit: (g: number) => void; save: () => void; bitmask?: boolean }): void {
  const span = 8 * unroll;
  pointAtGroup(f, pointers);
  f.emit(`(block $stop (loop $group`, `(br_if $stop (i32.ge_u (local.get $i) (local.get $nspan)))`);
  const conds: string[] = [];
  for (let g = 0; g < unroll; g++) {
    f.suffix = `.g${g}`;
    const cond = parts.body(g);
    if (cond) conds.push(cond);
  }
  f.suffix = '';
  // i8x16.bitmask of lane masks is a shorter test than any_true (pmovmskb, test, jump: no setcc).
  const any = parts.bitmask ? 'i8x16.bitmask' : 'v128.any_true';
  if (conds.length) f.emit(`(br_if $stop (${any} ${conds.reduce((a, b) => op('v128.or', a, b))}))`);
  for (let g = 0; g < unroll; g++) parts.commit(g);
  for (const [q, , size] of pointers) f.emit(set(q, `(i32.add ${get(q)} (i32.const ${span * size}))`));
  f.emit(`(local.set $i (i32.add (local.get $i) (i32.const ${span})))`, `(br $group)))`);
  parts.save();
  f.emit(`(local.get $i)`);
}

/** Calls `hot` until it reaches $nspan, handing the `span` elements at each index it stops at to `rare`. */
function driveLoop(f: Func, span: number, hot: string, rare: string): void {
  f.emit(
    `(block $done (loop $more`,
    `  (local.set $i ${hot})`,
    `  (br_if $done (i32.ge_u (local.get $i) (local.get $nspan)))`,
    `  ${rare}`,
    `  (br_if $done (i32.ge_u (local.get $i) (local.get $nspan)))`,
    `  (local.set $i (i32.add (local.get $i) (i32.const ${span})))`,
    `  (br $more)))`,
  );
}

const load = (at: number) => `(v128.load offset=${at} (i32.const 0))`;
const store = (at: number, v: string) => `(v128.store offset=${at} (i32.const 0) ${v})`;

// ---------------------------------------------------------------------------------------------------------------
// Subtract

/** Mantissa bits below a format's precision (see subtractPlan). */
const LOW_BITS: Record<'BF16' | 'F16' | 'F32', bigint> = { BF16: (1n << 45n) - 1n, F16: (1n << 42n) - 1n, F32: (1n << 29n) - 1n };

/** What the functions of one subtract kernel share. */
function subtractPlan(x: FloatDType, y: FloatDType, probe: FloatDType | undefined) {
  const pr = probe === 'F64' ? undefined : probe;
  // Exactness tests. With BF16/F16 inputs every delta lies on the 2^-133 grid (F16: on the 2^-24 grid, below
  // 2^17), so exactness in BF16/F32 is just "no mantissa bits below the format's precision"; for BF16 inputs that
  // also needs |d| < 2^128, which the scalar redo guarantees by firing whenever a Σd² slot reaches 2^256. With F16
  // inputs, exactness in F16 is the same test plus |d| < 2^16.
  const bitsTest = (t: FloatDType) => ((x === 'BF16' || x === 'F16') && (t === 'BF16' || t === 'F32')) || (x === 'F16' && t === 'F16');
  // How rounded lanes (count and max error) are found. 'inline': lane by lane in the hot loop. 'bits': where the
  // inputs' grid makes exactness a bit test, the hot loop only tests (and stores what is right for exact lanes),
  // and hands each group with a rounded lane to the rare function, which rounds it exactly and counts. That wins
  // where rounding is rare (F32 out from 16-bit inputs; compute's redo to the model dtype, which it does only
  // when every delta fits); a call that keeps handing groups over finishes with an 'inline' loop instead.
  const count: 'none' | 'bits' | 'inline' = y === 'F64' ? 'none' : bitsTest(y) ? 'bits' : 'inline';
  // Probe tests for each hot loop. Compute's first pass (F32 out, the model's own dtype as the probe) counts the
  // probe on the stored F32 patterns, 4 lanes at a time: a delta exact in F32 is exact in BF16 iff the pattern's
  // low 16 bits are 0, and (from F16 inputs, on the 2^-24 grid) exact in F16 iff its low 13 bits are 0 and it is
  // below 2^16. Groups with an F32-inexact lane take the rare path, which swaps that count for an exact one.
  const probeTest = (variant: 'bits' | 'inline' | 'none') =>
    pr === undefined ? undefined : variant === 'bits' && y === 'F32' && (pr === 'BF16' || pr === 'F16') && bitsTest(pr) ? 'packed' : bitsTest(pr) ? 'bits' : 'full';
  const pTest = probeTest(count);
  const guard = x === 'BF16' && (count === 'bits' || pTest === 'bits' || pTest === 'packed') ? pow2(256) : Infinity;
  return { name: subtractName(x, y, probe), pr, count, probeTest, pTest, guard };
}

/**
 * acc + b·b for Σbase², fused for BF16/F16/F32 inputs: their squares have at most 48 significant bits, so the product
 * is exact in float64 and relaxed_madd gives the reference's bits whether or not the hardware fuses it. BF16 → F64
 * keeps mul and add: its loop is fast enough for the fused latency on the accumulator chain to cost (2.6 → 2.1 G/s).
 */
function sumSquare(x: FloatDType, y: FloatDType, acc: string, b: string): string {
  return x === 'F64' || (x === 'BF16' && y === 'F64') ? op('f64x2.add', acc, op('f64x2.mul', b, b)) : op('f64x2.relaxed_madd', b, b, acc);
}

/**
 * F32/F64 → F16 (any probe), whose inline loop runs every span from 0 to $nspan: it stops only at a group with an
 * overflowing lane, where the driver redoes the whole call in scalar (no `spec` accumulator to keep in a register),
 * and it counts exact lanes (−1 each), to which the driver adds $nspan (no constant to keep for the lane count).
 */
const f16Inline = (x: FloatDType, y: FloatDType) => y === 'F16' && (x === 'F32' || x === 'F64');

/** Rare hand-offs a 'bits' subtract call takes before it finishes with its 'inline' loop. */
const FALLBACK_AFTER = 16;

const SUB_PARAMS = '(param $pb i32) (param $pp i32) (param $po i32)';

/** Widens pair k of two F32 quads' halves (k odd: the high half). */
const half = (v: string, k: number) => `(f64x2.promote_low_f32x4 ${k % 2 ? high64(get(v)) : get(v)})`;

/**
 * A subtract kernel's loop over spans: widen both inputs, d = post − base, the Σ sums, store d rounded to y, count
 * the probe, and count rounded lanes per `count` ('bits': the `_test` loop, stopping at groups with a rounded lane;
 * else the `_hot` loop, which never stops). Its vector state lives in WORK between calls.
 */
function subtractHot(x: FloatDType, y: FloatDType, probe: FloatDType | undefined, count: 'none' | 'bits' | 'inline'): Func {
  const { name, pr, probeTest } = subtractPlan(x, y, probe);
  const pTest = probeTest(count);
  const f = new Func(`${name}_${count === 'bits' ? 'test' : 'hot'}`, `${SUB_PARAMS} (param $i i32) (param $nspan i32) (result i32)`, false);
  const [qb, qp, qo] = ['qb', 'qp', 'qo'].map((n) => f.local(n, 'i32'));
  const cntP = pr !== undefined ? f.local('cntP', 'v128') : undefined;
  const cnt32 = pTest === 'packed' ? f.local('cnt32', 'v128') : undefined;
  const cntR = count === 'inline' ? f.local('cntR', 'v128') : undefined;
  const mx = count === 'inline' ? f.local('mx', 'v128') : undefined;
  const stopOver = count === 'inline' && f16Inline(x, y);
  const spec = x === 'F16' || (count === 'inline' && !stopOver && (y === 'BF16' || y === 'F16')) ? f.local('spec', 'v128') : undefined;
  const { sq, sb, slots } = sumLocals(f);
  const zero = ZERO;
  const low = (t: 'BF16' | 'F16' | 'F32') => get(f.const(`LOW_${t}`, i64x2(LOW_BITS[t])));
  const abs = (v: string) => op('v128.and', v, get(f.const('ABS', K.ABS)));
  const tooBig = (d: string) => op('f64x2.ge', abs(get(d)), get(f.const('F16_HI', f64x2(GRID.F16.vhi))));
  const state: [string | undefined, number][] = [
    ...slots,
    [cntP, WORK.cntP],
    [cnt32, WORK.cnt32],
    [cntR, WORK.cntR],
    [mx, WORK.mx],
    [spec, WORK.spec],
  ];
  const saveWork = loadWork(f, state);

  hotLoop(
    f,
    unrollFor('subtract'),
    [
      [qb, '$pb', SIZE[x]],
      [qp, '$pp', SIZE[x]],
      [qo, '$po', SIZE[y]],
    ],
    {
      body: (g) => {
        // F32 out from BF16/F32 in: subtract 4 lanes in F32. That is the float64 delta rounded to F32: F32
        // subtraction rounds the exact difference correctly, and rounding it to float64 first changes nothing
        // (53 ≥ 2·24 + 2 bits, so double rounding is innocuous for F32 operands).
        const inF32 = y === 'F32' && (x === 'BF16' || x === 'F32');
        const quads = inF32
          ? [0, 1].map((j) => {
              const [b, p, o] = ['bq', 'pq', 'oq'].map((n) => f.local(`${n}${j}`, 'v128'));
              const at = 8 * SIZE[x] * g;
              const quad = (ptr: string) => (x === 'F32' ? `(v128.load offset=${at + 16 * j} ${get(ptr)})` : toHighHalves(f, `(v128.load64_zero offset=${at + 8 * j} ${get(ptr)})`, false));
              f.emit(set(b, quad(qb)), set(p, quad(qp)), set(o, op('f32x4.sub', get(p), get(b))));
              return { b, p, o };
            })
          : [];
        let bs: string[];
        let ps: string[];
        if (inF32) {
          bs = [0, 1, 2, 3].map((k) => f.local(`b${k}`, 'v128'));
          ps = [0, 1, 2, 3].map((k) => f.local(`p${k}`, 'v128'));
          for (let k = 0; k < 4; k++) f.emit(set(bs[k], half(quads[k >> 1].b, k)), set(ps[k], half(quads[k >> 1].p, k)));
        } else {
          bs = widenGroup(f, x, qb, 'b', x === 'F16' ? spec : undefined, false, g);
          ps = widenGroup(f, x, qp, 'p', x === 'F16' ? spec : undefined, false, g);
        }
        const bad = count === 'bits' ? f.local('bad', 'v128') : undefined;
        const ds: string[] = [];
        for (let k = 0; k < 4; k++) {
          const d = f.local(`d${k}`, 'v128');
          ds.push(d);
          f.emit(
            set(d, op('f64x2.sub', get(ps[k]), get(bs[k]))),
            // No finiteness masks: a non-finite square poisons its sum, and then the whole call is redone in scalar.
            set(sq[k & 1], op('f64x2.add', get(sq[k & 1]), op('f64x2.mul', get(d), get(d)))),
            set(sb[k & 1], sumSquare(x, y, get(sb[k & 1]), get(bs[k]))),
          );
          if (bad) f.emit(set(bad, k === 0 ? get(d) : op('v128.or', get(bad), get(d))));
          if (cntP && pTest !== 'packed') {
            let exact = pTest === 'bits' ? op('i64x2.eq', op('v128.and', get(d), low(pr as 'BF16' | 'F16' | 'F32')), zero) : op('f64x2.eq', valueIn(f, pr as FloatDType, d, `q${k}`), get(d));
            if (pTest === 'bits' && pr === 'F16') exact = op('v128.andnot', exact, tooBig(d));
            f.emit(set(cntP, op('i64x2.sub', get(cntP), exact)));
          }
        }
        let vectors: string[];
        let compare: () => [string, string][];
        let errors: (() => string[]) | undefined;
        let big: string | undefined;
        let over: string | undefined;
        if (inF32) {
          vectors = quads.map((q) => q.o);
          compare = () => [0, 1, 2, 3].map((k) => [half(quads[k >> 1].o, k), get(ds[k])]);
        } else if (count === 'bits' && (y === 'BF16' || y === 'F16')) {
          // Exact lanes are exact in F32 too (F16 scaled by 2^-112), so their 16-bit patterns come from a plain demote.
          const lanes = ds.map((d, k) => {
            const l = f.local(`f${k}`, 'v128');
            f.emit(set(l, `(f32x4.demote_f64x2_zero ${y === 'F16' ? op('f64x2.mul', get(d), get(f.const('H_DOWN', K.H_DOWN))) : get(d)})`));
            return l;
          });
          const packed = packExact(f, y, lanes, 'x');
          vectors = packed.vectors;
          compare = () => [];
          // |d| ≥ 2^16 overflows F16 however few its bits: its scaled F32 pattern is ≥ 2^-96's.
          if (y === 'F16') big = packed.f32.map((v) => op('i32x4.gt_s', op('v128.and', get(v), get(f.const('ABS32', i32x4(0x7fffffff)))), get(f.const('F16_BIG32', i32x4(0x0f7fffff))))).reduce((a, b) => op('v128.or', a, b));
        } else {
          // From F32/F64 (where this loop is the main one) round16Sub; the 'bits' kernels' fallback loops keep round16.
          const r = (y === 'BF16' || y === 'F16') && (x === 'F32' || x === 'F64') ? round16Sub(f, y, ds) : roundGroup(f, y, ds);
          vectors = r.vectors;
          compare = r.compare;
          errors = r.errors;
          if (stopOver) over = r.special();
          // Overflowing lanes of a 16-bit output (NaN and Inf deltas too) send the whole call to the scalar redo.
          if (spec && (y === 'BF16' || y === 'F16')) f.emit(set(spec, op('v128.or', get(spec), r.special())));
        }
        storeVectors(f, qo, vectors, 8 * SIZE[y] * g);
        if (cnt32) for (const v of vectors) f.emit(set(cnt32, op('i32x4.sub', get(cnt32), exact32(f, pr as 'BF16' | 'F16', v))));
        if (cntR && mx && errors) {
          // stored − x per pair (round16Sub): +0 exactly where the lane is exact, so an integer compare finds those
          // (no float compare); exact lanes count −1 each, plus 4 per lane pair unless the driver adds $nspan instead.
          const es = errors().map((e, k) => {
            const l = f.local(`e${k}`, 'v128');
            f.emit(set(l, e));
            return l;
          });
          const exact = tree4(es.map((e) => op('i64x2.eq', get(e), zero)), 'i64x2.add');
          f.emit(
            set(cntR, op('i64x2.add', get(cntR), stopOver ? exact : op('i64x2.add', exact, get(f.const('FOUR64', i64x2(4n)))))),
            set(mx, op('f64x2.pmax', get(mx), tree4(es.map((e) => abs(get(e))), 'f64x2.pmax'))),
          );
        } else if (cntR && mx) {
          // NaN lanes miscount here, but a NaN forces the scalar redo of the whole call.
          countRounded(f, compare(), cntR, mx);
        }
        // Low bits of any delta (and distributes over or): a lane the store rounded (for F16, also one it overflowed).
        if (over) return over;
        if (!bad) return undefined;
        const lowBits = op('v128.and', get(bad), low(y as 'BF16' | 'F16' | 'F32'));
        return big ? op('v128.or', lowBits, big) : lowBits;
      },
      commit: () => {},
      save: saveWork,
      bitmask: count === 'inline',
    },
  );
  return f;
}

/** Lanes of F32 patterns `v` (of deltas exact in F32, from 16-bit inputs) that are exact in `probe`, as a mask. */
function exact32(f: Func, probe: 'BF16' | 'F16', v: string): string {
  const low = op('i32x4.eq', op('v128.and', get(v), get(f.const(`LOW32_${probe}`, i32x4(probe === 'BF16' ? 0xffff : 0x1fff)))), ZERO);
  if (probe === 'BF16') return low;
  return op('v128.andnot', low, op('i32x4.gt_s', op('v128.and', get(v), get(f.const('ABS32', i32x4(0x7fffffff)))), get(f.const('F16_TOP32', i32x4(0x477fffff)))));
}

/**
 * The group at $i has a rounded lane (count 'bits'): count the rounded lanes, and the probe exactly; for a 16-bit
 * output, also store the group rounded exactly (the test loop stored plain demotes, right only for exact lanes).
 */
function subtractRare(x: FloatDType, y: FloatDType, probe: FloatDType | undefined): Func {
  const { name, pr, pTest } = subtractPlan(x, y, probe);
  const f = new Func(`${name}_rare`, `${SUB_PARAMS} (param $i i32)`, false);
  const [qb, qp, qo] = ['qb', 'qp', 'qo'].map((n) => f.local(n, 'i32'));
  const [cntR, cntP, cnt32, mx, spec] = ['cntR', 'cntP', 'cnt32', 'mx', 'spec'].map((n) => f.local(n, 'v128'));
  const saveWork = loadWork(f, [
    [cntR, WORK.cntR],
    [cntP, WORK.cntP],
    [cnt32, WORK.cnt32],
    [mx, WORK.mx],
    [spec, WORK.spec],
  ]);
  pointAtGroup(f, [
    [qb, '$pb', SIZE[x]],
    [qp, '$pp', SIZE[x]],
    [qo, '$po', SIZE[y]],
  ]);
  const bs = widenGroup(f, x, qb, 'b', undefined);
  const ps = widenGroup(f, x, qp, 'p', undefined);
  const ds = bs.map((b, k) => {
    const d = f.local(`d${k}`, 'v128');
    f.emit(set(d, op('f64x2.sub', get(ps[k]), get(b))));
    return d;
  });
  const r = roundGroup(f, y, ds);
  if (y !== 'F32') {
    storeVectors(f, qo, r.vectors);
    // Overflowing lanes send the whole call to the scalar redo.
    f.emit(set(spec, op('v128.or', get(spec), r.special())));
  }
  // NaN lanes miscount here, but a NaN forces the scalar redo of the whole call.
  countRounded(f, r.compare(), cntR, mx);
  if (pTest === 'packed' && (pr === 'BF16' || pr === 'F16')) {
    // Take back the packed probe count of this group and count it exactly instead.
    for (const v of r.vectors) f.emit(set(cnt32, op('i32x4.add', get(cnt32), exact32(f, pr, v))));
    for (const d of ds) {
      let exact = op('i64x2.eq', op('v128.and', get(d), get(f.const(`LOW_${pr}`, i64x2(LOW_BITS[pr])))), ZERO);
      if (pr === 'F16') exact = op('v128.andnot', exact, op('f64x2.ge', op('v128.and', get(d), get(f.const('ABS', K.ABS))), get(f.const('F16_HI', f64x2(GRID.F16.vhi)))));
      f.emit(set(cntP, op('i64x2.sub', get(cntP), exact)));
    }
  }
  saveWork();
  return f;
}

// ---------------------------------------------------------------------------------------------------------------
// Lossy subtracts from F32 and F64 to BF16, rounded in F32 lanes. Let d be the float64 delta and r = fl32(d) (from
// F32 inputs, their F32 difference: fl32(fl64(p − b)) = fl32(p − b), as 53 ≥ 2·24 + 2 bits). Every BF16 value and
// every midpoint between two neighbouring ones is an F32 value, and r is the F32 value nearest d, so no midpoint
// lies strictly between r and d: rounding r half to even on its bits gives BF16(d), unless r is itself a midpoint
// (its low 16 bits are 0x8000) and d is not r. Groups with a midpoint lane stop the loop and go to the rare function
// (exact, in float64). The rounded count and max error compare the stored value with d in float64, as the inline
// loop does. Overflow needs nothing: |r| at or above the BF16 threshold (r = Inf included) rounds to Inf on the
// bits as d does, and the error is Inf in both. NaN and Inf deltas poison Σd², which sends the call to the scalar
// redo.

/** Subtracts whose test loop rounds in F32 lanes (see above): F32 or F64 in, BF16 out, no probe. */
const roundsInF32 = (x: FloatDType, y: FloatDType, probe: FloatDType | undefined) => (probe === undefined || probe === 'F64') && (x === 'F32' || x === 'F64') && y === 'BF16';

/**
 * The F32-rounding loop hands a call over to the inline loop once it has stopped more than FALLBACK_AFTER + i/2^STOP_SHIFT
 * times by element i: midpoints are common where deltas have few bits (most are exact, so harmless, but each
 * stops), and a stop costs several groups' time. Fine-tune deltas of F32 models stop about once per 700 elements.
 */
const STOP_SHIFT = 6;

function f32RoundHot(x: FloatDType): Func {
  const name = subtractName(x, 'BF16', undefined);
  const f = new Func(`${name}_test`, `${SUB_PARAMS} (param $i i32) (param $nspan i32) (result i32)`, false);
  const [qb, qp, qo] = ['qb', 'qp', 'qo'].map((n) => f.local(n, 'i32'));
  const { sq, sb, slots } = sumLocals(f);
  const [cntR, mx, gcnt, gmx] = ['cntR', 'mx', 'gcnt', 'gmx'].map((n) => f.local(n, 'v128'));
  const saveWork = loadWork(f, [...slots, [cntR, WORK.cntR], [mx, WORK.mx]]);
  const c = (name: string, bytes: Uint8Array) => get(f.const(name, bytes));
  // One group per iteration: unrolled, the loop spills its accumulators and runs slower (measured).
  hotLoop(
    f,
    1,
    [
      [qb, '$pb', SIZE[x]],
      [qp, '$pp', SIZE[x]],
      [qo, '$po', 2],
    ],
    {
      body: () => {
        const bs = widenGroup(f, x, qb, 'b', undefined);
        const ps = widenGroup(f, x, qp, 'p', undefined);
        const ds = bs.map((b, k) => {
          const d = f.local(`d${k}`, 'v128');
          f.emit(
            set(d, op('f64x2.sub', get(ps[k]), get(b))),
            // No finiteness masks: a non-finite square poisons its sum, and then the whole call is redone in scalar.
            set(sq[k & 1], op('f64x2.add', get(sq[k & 1]), op('f64x2.mul', get(d), get(d)))),
            set(sb[k & 1], sumSquare(x, 'BF16', get(sb[k & 1]), get(b))),
          );
          return d;
        });
        // r, four lanes at a time, rounded half to even on its bits (a carry into the exponent is right); w, the stored
        // value as an F32.
        const demote = (d: string) => `(f32x4.demote_f64x2_zero ${get(d)})`;
        const ws: string[] = [];
        const quads = [0, 1].map((j) => {
          const [r, t, w] = ['rq', 'rt', 'rw'].map((n) => f.local(`${n}${j}`, 'v128'));
          f.emit(
            // (Subtracting the F32 inputs again is faster than demoting and packing the float64 deltas.)
            set(r, x === 'F32' ? op('f32x4.sub', `(v128.load offset=${16 * j} ${get(qp)})`, `(v128.load offset=${16 * j} ${get(qb)})`) : lo64Of(demote(ds[2 * j]), demote(ds[2 * j + 1]))),
            set(t, op('i32x4.add', get(r), op('i32x4.add', op('v128.and', `(i32x4.shr_u ${get(r)} (i32.const 16))`, c('ONE', I32.ONE)), c('BF16_RND', I32.BF16_RND)))),
            set(w, op('v128.and', get(t), c('HI16', i32x4(0xffff0000)))),
          );
          for (const h of [0, 1]) {
            const wl = f.local(`w${2 * j + h}`, 'v128');
            f.emit(set(wl, `(f64x2.promote_low_f32x4 ${h ? high64(get(w)) : get(w)})`));
            ws.push(wl);
          }
          return { r, t };
        });
        f.emit(`(v128.store ${get(qo)} (i16x8.narrow_i32x4_u (i32x4.shr_u ${get(quads[0].t)} (i32.const 16)) (i32x4.shr_u ${get(quads[1].t)} (i32.const 16))))`);
        // The group's rounded lanes (−1 each) and largest error, folded as trees before the stop test and committed
        // after it (a group that stops is counted by the rare function instead).
        f.emit(
          set(gcnt, tree4(ds.map((d, k) => op('f64x2.ne', get(ws[k]), get(d))), 'i64x2.add')),
          set(gmx, tree4(ds.map((d, k) => op('v128.and', op('f64x2.sub', get(ws[k]), get(d)), c('ABS', K.ABS))), 'f64x2.pmax')),
        );
        // Midpoint lanes, by 16-bit compares (a high half can match only as 0x7fff, a NaN's, which the rare
        // function hands on to the redo).
        const mid = c('MID16', i32x4(0x7fff8000));
        return op('v128.or', op('i16x8.eq', get(quads[0].r), mid), op('i16x8.eq', get(quads[1].r), mid));
      },
      commit: () => f.emit(set(cntR, op('i64x2.sub', get(cntR), get(gcnt))), set(mx, op('f64x2.pmax', get(mx), get(gmx)))),
      save: saveWork,
      bitmask: true,
    },
  );
  return f;
}

/** The low halves of two vectors, as one (a single punpcklqdq). */
const lo64Of = (a: string, b: string) => `(i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 ${a} ${b})`;

function simdSubtract(x: FloatDType, y: FloatDType, probe: FloatDType | undefined): Func {
  const { name, pr, count, guard } = subtractPlan(x, y, probe);
  const f = new Func(name, `${SUB_PARAMS} (param $n i32)`, true);
  const unroll = unrollFor('subtract');
  f.local('i', 'i32');
  f.local('nspan', 'i32');
  const zero = ZERO;
  f.emit(
    set('$nspan', `(i32.and (local.get $n) (i32.const ${-8 * unroll}))`),
    ...[0, 16, 32, 48].map((o) => store(WORK.sq + o, load(STATS.sqD + o))),
    ...[WORK.cntR, WORK.cntP, WORK.cnt32, WORK.mx, WORK.spec].map((at) => store(at, zero)),
  );
  const args = '(local.get $pb) (local.get $pp) (local.get $po)';
  const hot = (from: string) => `(call $${name}_hot ${args} ${from} (local.get $nspan))`;
  if (roundsInF32(x, y, probe)) {
    // The F32-rounding loop (one group per iteration), each group it stops at to the rare function. Once it stops too
    // often (see STOP_SHIFT) the inline loop takes the rest, from the next span boundary it stops at (the inline
    // loop's spans are 16 elements, and $nspan a multiple of 16).
    f.local('stops', 'i32');
    const next = `(i32.add (local.get $i) (i32.const 8))`;
    const many = `(i32.gt_u (local.get $stops) (i32.add (i32.shr_u (local.get $i) (i32.const ${STOP_SHIFT})) (i32.const ${FALLBACK_AFTER})))`;
    const fallback = `(local.set $stops (i32.add (local.get $stops) (i32.const 1))) (if (i32.and ${many} (i32.eqz (i32.and ${next} (i32.const 8)))) (then (local.set $i ${hot(next)})))`;
    driveLoop(f, 8, `(call $${name}_test ${args} (local.get $i) (local.get $nspan))`, `(call $${name}_rare ${args} (local.get $i)) ${fallback}`);
  } else if (count === 'bits') {
    // The test loop, each group it stops at to the rare function; after FALLBACK_AFTER stops, the inline loop (which
    // never stops) takes the rest.
    f.local('stops', 'i32');
    const rare = Array.from({ length: unroll }, (_, g) => `(call $${name}_rare ${args} (i32.add (local.get $i) (i32.const ${8 * g})))`).join(' ');
    const fallback = `(local.set $stops (i32.add (local.get $stops) (i32.const 1))) (if (i32.ge_u (local.get $stops) (i32.const ${FALLBACK_AFTER})) (then (local.set $i ${hot(`(i32.add (local.get $i) (i32.const ${8 * unroll}))`)})))`;
    driveLoop(f, 8 * unroll, `(call $${name}_test ${args} (local.get $i) (local.get $nspan))`, `${rare} ${fallback}`);
  } else if (f16Inline(x, y)) {
    // The inline loop stops only at a group with an overflowing lane (see f16Inline): redo the call in scalar.
    driveLoop(f, 8 * unroll, hot('(local.get $i)'), `(call $${name}_s (local.get $pb) (local.get $pp) (local.get $po) (i32.const 0) (local.get $n)) (return)`);
  } else driveLoop(f, 8 * unroll, hot('(local.get $i)'), '');

  // Redo the whole call in scalar, from the stats as they were, if Σd² went NaN or Inf (a NaN or Inf delta, whose
  // square was not masked; also a genuine overflow, which the redo reproduces), if it reached the guard, if an F16
  // input was Inf/NaN, or if a delta overflows a 16-bit output. A non-finite base always makes a non-finite delta,
  // so Σbase² needs no test of its own.
  const t = get(f.const(guard === Infinity ? 'INF' : 'GUARD', f64x2(guard)));
  const redo = [load(WORK.sq), load(WORK.sq + 16)].map((v) => op('v128.not', op('f64x2.lt', v, t)));
  if (x === 'F16' || y === 'BF16' || y === 'F16') redo.push(load(WORK.spec));
  const scalar = `$${name}_s`;
  f.emit(`(if (v128.any_true ${redo.reduce((a, b) => op('v128.or', a, b))}) (then (call ${scalar} (local.get $pb) (local.get $pp) (local.get $po) (i32.const 0) (local.get $n)) (return)))`);
  const lanesum = (at: number) => `(i64.add (i64.load offset=${at} (i32.const 0)) (i64.load offset=${at + 8} (i32.const 0)))`;
  const exact = `(i64.add ${lanesum(WORK.cntP)} (i64.extend_i32_u ${[0, 4, 8, 12].map((o) => `(i32.load offset=${WORK.cnt32 + o} (i32.const 0))`).reduce((a, b) => op('i32.add', a, b))}))`;
  const addI64 = (at: number, v: string) => `(i64.store offset=${at} (i32.const 0) (i64.add (i64.load offset=${at} (i32.const 0)) ${v}))`;
  f.emit(
    ...[0, 16, 32, 48].map((o) => store(STATS.sqD + o, load(WORK.sq + o))),
    addI64(STATS.rounded, f16Inline(x, y) ? `(i64.add ${lanesum(WORK.cntR)} (i64.extend_i32_u (local.get $nspan)))` : lanesum(WORK.cntR)),
    // cntP and cnt32 counted the exact lanes.
    ...(pr === undefined ? [] : [addI64(STATS.misses, `(i64.sub (i64.extend_i32_u (local.get $nspan)) ${exact})`)]),
    `(f64.store offset=${STATS.maxError} (i32.const 0) (f64.max (f64.load offset=${STATS.maxError} (i32.const 0)) (f64.max (f64.load offset=${WORK.mx} (i32.const 0)) (f64.load offset=${WORK.mx + 8} (i32.const 0)))))`,
    `(call ${scalar} (local.get $pb) (local.get $pp) (local.get $po) (local.get $nspan) (local.get $n))`,
  );
  return f;
}

// ---------------------------------------------------------------------------------------------------------------
// Lossy subtract between 16-bit formats, in F32 lanes: four lanes per vector instead of float64 pairs. The difference
// of two BF16 (or two 2^-112-scaled F16) values with close exponents is exact in F32, so it is the float64 delta, and
// rounding it to BF16/F16 on its F32 bits rounds the float64 delta once. Groups with distant exponents, Inf/NaN, or
// inputs large enough to overflow go to the float64 rare function; the Σ sums stay float64, in the reference's order.

/** Subtracts that take the F32-lane family: 16-bit in, 16-bit out, no probe to count. */
const narrowSubtract = (x: FloatDType, y: FloatDType, probe: FloatDType | undefined) => SIZE[x] === 2 && SIZE[y] === 2 && (probe === undefined || probe === 'F64');

/**
 * F16 inputs work 2^-112 times too small throughout (see widenGroup), so their Σ sums run 2^-224 times too small:
 * every square is ≥ 2^-272, far from float64 underflow, so each scaled addition rounds exactly as the unscaled one.
 */
const SQ_SCALE = pow2(-224);

const I32 = {
  ONE: i32x4(1),
  EXP32: i32x4(0x7f800000),
  BF16_RND: i32x4(0x7fff),
  F16S_RND: i32x4(0xfff),
  // F16 from unscaled F32: the float64 magic of round16 in F32 (binade clamped at 2^-14; 23 − 10 = 13).
  F16_LO32: i32x4(0x38800000),
  F16_MAGIC32: i32x4((13 << 23) + (1 << 22) - (113 << 10)),
  F16_LOW22: i32x4(0x3fffff),
};

/** Widens 16-bit elements 0..3 (`high` false) or 4..7 of `raw` to F32 (F16: scaled by 2^-112). */
function widen32(f: Func, x: 'BF16' | 'F16', raw: string, high: boolean): string {
  const h = toHighHalves(f, get(raw), high);
  return x === 'BF16' ? h : op('v128.and', `(i32x4.shr_s ${h} (i32.const 3))`, get(f.const('H_MASK', K.H_MASK)));
}

/**
 * The F32 lanes' test, on the 16-bit exponent fields of base and post (8 lanes at once). Fields g apart give d at
 * most g + 9 (BF16) or g + 12 (F16) significant bits, one fewer from g = 8 (BF16) or 11 (F16) on, where |d| cannot
 * reach the next binade; subnormals lie on the smallest normal's grid. So d is exact in F32 up to `gap`. Fields
 * above `top` (`topF16` for F16 out) go to the rare function: Inf and NaN, and inputs large enough for |d| to pass
 * F32's max (BF16 field 254) or F16's (below fields 142 and 30, |x| ≤ 32640 and 32752, so |d| ≤ 65504).
 */
const NARROW = {
  BF16: { exp: 0x7f80, gap: 16 << 7, top: 253 << 7, topF16: 141 << 7 },
  F16: { exp: 0x7c00, gap: 13 << 10, top: 30 << 10, topF16: 29 << 10 },
} as const;

function narrowHot(x: 'BF16' | 'F16', y: 'BF16' | 'F16'): Func {
  const name = subtractName(x, y, undefined);
  const f = new Func(`${name}_n32`, `${SUB_PARAMS} (param $i i32) (param $nspan i32) (result i32)`, false);
  const [qb, qp, qo] = ['qb', 'qp', 'qo'].map((n) => f.local(n, 'i32'));
  const { sq, sb, slots } = sumLocals(f);
  const cntE = f.local('cntE', 'v128');
  const mx32 = f.local('mx32', 'v128');
  const mn32 = f.local('mn32', 'v128');
  const saveWork = loadWork(f, [...slots, [cntE, WORK.cnt32], [mx32, WORK.mx32], [y === 'BF16' ? mn32 : undefined, WORK.mn32]]);
  const c = (name: keyof typeof I32) => get(f.const(name, I32[name]));
  const abs32 = (v: string) => op('v128.and', v, get(f.const('ABS32', i32x4(0x7fffffff))));
  const bq = [0, 1].map((j) => f.local(`bq${j}`, 'v128'));
  const dq = [0, 1].map((j) => f.local(`dq${j}`, 'v128'));
  let raw: string[] = [];
  hotLoop(
    f,
    1,
    [
      [qb, '$pb', 2],
      [qp, '$pp', 2],
      [qo, '$po', 2],
    ],
    {
      body: () => {
        const [rb, rp] = (raw = ['rb', 'rp'].map((n) => f.local(n, 'v128')));
        f.emit(set(rb, `(v128.load ${get(qb)})`), set(rp, `(v128.load ${get(qp)})`));
        const g = NARROW[x];
        const exp = get(f.const(`${x}_EXP16`, lanes16(g.exp)));
        const [eb, ep] = [rb, rp].map((r) => op('v128.and', get(r), exp));
        const big = y === 'F16' ? g.topF16 : g.top;
        return op(
          'v128.or',
          op('i16x8.gt_s', op('i16x8.abs', op('i16x8.sub', eb, ep)), get(f.const(`${x}_GAP16`, lanes16(g.gap)))),
          // Masked fields are below 2^15: signed compares (one instruction) order them.
          op('i16x8.gt_s', op('i16x8.max_s', eb, ep), get(f.const(`${x}_TOP16_${big}`, lanes16(big)))),
        );
      },
      commit: () => {
        const [rb, rp] = raw;
        for (const j of [0, 1]) {
          const p = f.local(`pq${j}`, 'v128');
          f.emit(set(bq[j], widen32(f, x, rb, j === 1)), set(p, widen32(f, x, rp, j === 1)), set(dq[j], op('f32x4.sub', get(p), get(bq[j]))));
        }
        // Slots by i mod 4: lanes 0–1 of each quad feed sq[0], lanes 2–3 sq[1], quad 0 before quad 1. Squares of F32
        // values are exact in float64, so relaxed_madd matches the reference's product-then-sum.
        const dw: string[][] = [[], []];
        for (const j of [0, 1]) {
          for (const h of [0, 1]) {
            const e = f.local(`de${j}${h}`, 'v128');
            const b = f.local(`be${j}${h}`, 'v128');
            f.emit(
              set(e, `(f64x2.promote_low_f32x4 ${h ? high64(get(dq[j])) : get(dq[j])})`),
              set(sq[h], op('f64x2.relaxed_madd', get(e), get(e), get(sq[h]))),
              set(b, `(f64x2.promote_low_f32x4 ${h ? high64(get(bq[j])) : get(bq[j])})`),
              set(sb[h], op('f64x2.relaxed_madd', get(b), get(b), get(sb[h]))),
            );
            dw[j].push(e);
          }
        }
        const exact: string[] = [];
        const hs = [0, 1].map((j) => {
          const [u, w, a, hb] = ['u', 'w', 'a', 'hb'].map((n) => f.local(`${n}${j}`, 'v128'));
          if (y === 'BF16') {
            // Unscaled F32 delta (F16 inputs: scaled back in float64, exactly, from the promotes above).
            if (x === 'F16') {
              const up = (e: string) => `(f32x4.demote_f64x2_zero ${op('f64x2.mul', get(e), get(f.const('H_UP', K.H_UP)))})`;
              f.emit(set(u, `(i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 ${up(dw[j][0])} ${up(dw[j][1])})`));
            } else f.emit(set(u, get(dq[j])));
            // Half to even on the bits: add 0x7fff plus the kept lsb; a carry into the exponent is right.
            const r = f.local(`r${j}`, 'v128');
            f.emit(
              set(r, op('i32x4.add', get(u), op('i32x4.add', op('v128.and', `(i32x4.shr_u ${get(u)} (i32.const 16))`, c('ONE')), c('BF16_RND')))),
              set(hb, `(i32x4.shr_u ${get(r)} (i32.const 16))`),
              set(w, `(i32x4.shl ${get(hb)} (i32.const 16))`),
              set(a, get(u)),
            );
          } else if (x === 'F16') {
            // The scaled F32 pattern >> 13 is the F16 pattern, subnormals included: round half to even on the bits.
            const r = f.local(`r${j}`, 'v128');
            f.emit(
              set(a, abs32(get(dq[j]))),
              set(r, op('i32x4.add', get(a), op('i32x4.add', op('v128.and', `(i32x4.shr_u ${get(a)} (i32.const 13))`, c('ONE')), c('F16S_RND')))),
              set(hb, `(i32x4.shr_u ${get(r)} (i32.const 13))`),
              set(w, `(i32x4.shl ${get(hb)} (i32.const 13))`),
              set(hb, op('v128.or', get(hb), op('v128.and', `(i32x4.shr_u ${get(dq[j])} (i32.const 16))`, get(f.const('H_SGN', K.H_SGN))))),
            );
          } else {
            // F16 from an unscaled F32: round16's magic addition in F32 (below 2^-14 the quantum stays 2^-24).
            const [e, m, s] = ['e', 'm', 's'].map((n) => f.local(`${n}${j}`, 'v128'));
            f.emit(
              set(a, abs32(get(dq[j]))),
              set(e, op('i32x4.max_s', op('v128.and', get(dq[j]), c('EXP32')), c('F16_LO32'))),
              set(m, op('i32x4.add', get(e), op('i32x4.add', `(i32x4.shr_u ${get(e)} (i32.const 13))`, c('F16_MAGIC32')))),
              set(s, op('f32x4.add', get(a), get(m))),
              set(w, op('f32x4.sub', get(s), get(m))),
              set(hb, op('v128.or', op('v128.and', get(s), c('F16_LOW22')), op('v128.and', `(i32x4.shr_u ${get(dq[j])} (i32.const 16))`, get(f.const('H_SGN', K.H_SGN))))),
            );
          }
          // w and a share a sign, so w − a is the (exact) rounding error (never Inf: see NARROW). For BF16 its
          // largest and least values bound |error| without an abs per lane; F16 has the abs constant loaded anyway,
          // and one accumulator fewer spills less.
          const err = f.local(`err${j}`, 'v128');
          if (y === 'F16') f.emit(set(err, abs32(op('f32x4.sub', get(w), get(a)))), set(mx32, op('f32x4.pmax', get(mx32), get(err))));
          else f.emit(set(err, op('f32x4.sub', get(w), get(a))), set(mx32, op('f32x4.pmax', get(mx32), get(err))), set(mn32, op('f32x4.pmin', get(mn32), get(err))));
          exact.push(op('f32x4.eq', get(w), get(a)));
          return hb;
        });
        f.emit(set(cntE, op('i32x4.add', get(cntE), op('i32x4.add', exact[0], exact[1]))));
        f.emit(`(v128.store ${get(qo)} (i16x8.narrow_i32x4_u ${get(hs[0])} ${get(hs[1])}))`);
      },
      save: saveWork,
      bitmask: true,
    },
  );
  return f;
}

/** The group at $i, which the F32 lanes could not take, in float64: sums, rounding, counts (the WORK state). */
function narrowRare(x: 'BF16' | 'F16', y: 'BF16' | 'F16'): Func {
  const name = subtractName(x, y, undefined);
  const f = new Func(`${name}_n64`, `${SUB_PARAMS} (param $i i32)`, false);
  const [qb, qp, qo] = ['qb', 'qp', 'qo'].map((n) => f.local(n, 'i32'));
  const { sq, sb, slots } = sumLocals(f);
  const [cntR, mx, spec] = ['cntR', 'mx', 'spec'].map((n) => f.local(n, 'v128'));
  const saveWork = loadWork(f, [...slots, [cntR, WORK.cntR], [mx, WORK.mx], [spec, WORK.spec]]);
  pointAtGroup(f, [
    [qb, '$pb', 2],
    [qp, '$pp', 2],
    [qo, '$po', 2],
  ]);
  const scaled = x === 'F16';
  const bs = widenGroup(f, x, qb, 'b', scaled ? spec : undefined, scaled);
  const ps = widenGroup(f, x, qp, 'p', scaled ? spec : undefined, scaled);
  const ds = bs.map((b, k) => {
    const [d, u] = [f.local(`d${k}`, 'v128'), f.local(`u${k}`, 'v128')];
    f.emit(
      set(d, op('f64x2.sub', get(ps[k]), get(b))),
      // Non-finite squares need no masks: any NaN or Inf delta sets spec, and the call is then redone in scalar.
      set(sq[k & 1], op('f64x2.add', get(sq[k & 1]), op('f64x2.mul', get(d), get(d)))),
      set(sb[k & 1], op('f64x2.relaxed_madd', get(b), get(b), get(sb[k & 1]))),
      set(u, scaled ? op('f64x2.mul', get(d), get(f.const('H_UP', K.H_UP))) : get(d)),
    );
    return u;
  });
  const r = roundGroup(f, y, ds);
  storeVectors(f, qo, r.vectors);
  f.emit(set(spec, op('v128.or', get(spec), r.special())));
  countRounded(f, r.compare(), cntR, mx);
  saveWork();
  return f;
}

/**
 * BF16 → BF16 first runs the 'bits' test loop (subtractHot), which outpaces the F32 lanes while deltas fit (compute's
 * redo to the model dtype: 2.0 vs 1.5 G el/s); after FALLBACK_AFTER rounded spans the F32 lanes take the rest.
 */
const testFirst = (x: FloatDType, y: FloatDType) => x === 'BF16' && y === 'BF16';

function narrowDriver(x: 'BF16' | 'F16', y: 'BF16' | 'F16'): Func {
  const name = subtractName(x, y, undefined);
  const f = new Func(name, `${SUB_PARAMS} (param $n i32)`, true);
  f.local('i', 'i32');
  f.local('nspan', 'i32');
  f.local('stops', 'i32');
  f.local('start', 'i32');
  const scaled = x === 'F16';
  const toWork = (v: string) => (scaled ? op('f64x2.mul', v, get(f.const('SQ_DOWN', f64x2(SQ_SCALE)))) : v);
  const fromWork = (v: string) => (scaled ? op('f64x2.mul', v, get(f.const('SQ_UP', f64x2(pow2(224))))) : v);
  f.emit(
    set('$nspan', `(i32.and (local.get $n) (i32.const -8))`),
    ...[0, 16, 32, 48].map((o) => store(WORK.sq + o, toWork(load(STATS.sqD + o)))),
    ...[WORK.cntR, WORK.cnt32, WORK.mx, WORK.mx32, WORK.mn32, WORK.spec].map((at) => store(at, ZERO)),
  );
  const args = '(local.get $pb) (local.get $pp) (local.get $po)';
  if (testFirst(x, y)) {
    // The test loop's spans of 16, each it stops at to the rare function, until FALLBACK_AFTER stops.
    const span = 16;
    f.local('n16', 'i32');
    f.emit(
      set('$n16', `(i32.and (local.get $n) (i32.const -${span}))`),
      `(block $tested (loop $test`,
      `  (local.set $i (call $${name}_test ${args} (local.get $i) (local.get $n16)))`,
      `  (br_if $tested (i32.ge_u (local.get $i) (local.get $n16)))`,
      `  (call $${name}_rare ${args} (local.get $i)) (call $${name}_rare ${args} (i32.add (local.get $i) (i32.const 8)))`,
      `  (local.set $i (i32.add (local.get $i) (i32.const ${span})))`,
      `  (local.set $stops (i32.add (local.get $stops) (i32.const 1)))`,
      `  (br_if $test (i32.lt_u (local.get $stops) (i32.const ${FALLBACK_AFTER})))))`,
      set('$start', get('$i')),
      set('$stops', i32(0)),
    );
  }
  driveLoop(f, 8, `(call $${name}_n32 ${args} (local.get $i) (local.get $nspan))`, `(call $${name}_n64 ${args} (local.get $i)) (local.set $stops (i32.add (local.get $stops) (i32.const 1)))`);
  const scalar = `$${name}_s`;
  // A NaN or Inf anywhere, or a delta that overflows the output, and the whole call is redone in scalar; after the
  // test loop also when a Σd² slot reached 2^256 (its bit test needs |d| < 2^128, see subtractPlan) or went NaN.
  const redo = [load(WORK.spec)];
  if (testFirst(x, y)) redo.push(...[load(WORK.sq), load(WORK.sq + 16)].map((v) => op('v128.not', op('f64x2.lt', v, get(f.const('GUARD', f64x2(pow2(256))))))));
  f.emit(`(if (v128.any_true ${redo.reduce((a, b) => op('v128.or', a, b))}) (then (call ${scalar} ${args} (i32.const 0) (local.get $n)) (return)))`);
  const i64at = (at: number) => `(i64.load offset=${at} (i32.const 0))`;
  const i32at = (at: number) => `(i64.extend_i32_s (i32.load offset=${at} (i32.const 0)))`;
  // Rounded: the rare groups' count, plus the F32 groups' lanes less their exact ones (cnt32 holds −1 per exact lane);
  // the test loop's spans have none but those its rare function counted.
  const rounded = [i64at(WORK.cntR), i64at(WORK.cntR + 8), `(i64.extend_i32_u (i32.sub (i32.sub (local.get $nspan) (local.get $start)) (i32.shl (local.get $stops) (i32.const 3))))`, ...[0, 4, 8, 12].map((o) => i32at(WORK.cnt32 + o))].reduce((a, b) => op('i64.add', a, b));
  const f32at = (at: number) => `(f64.promote_f32 (f32.load offset=${at} (i32.const 0)))`;
  const mx32 = [0, 4, 8, 12].flatMap((o) => [f32at(WORK.mx32 + o), op('f64.neg', f32at(WORK.mn32 + o))]).reduce((a, b) => op('f64.max', a, b));
  const mxAll = op('f64.max', op('f64.max', `(f64.load offset=${WORK.mx} (i32.const 0))`, `(f64.load offset=${WORK.mx + 8} (i32.const 0))`), x === 'F16' && y === 'F16' ? op('f64.mul', mx32, f64c('0x1p112')) : mx32);
  f.emit(
    ...[0, 16, 32, 48].map((o) => store(STATS.sqD + o, fromWork(load(WORK.sq + o)))),
    `(i64.store offset=${STATS.rounded} (i32.const 0) (i64.add ${i64at(STATS.rounded)} ${rounded}))`,
    `(f64.store offset=${STATS.maxError} (i32.const 0) (f64.max (f64.load offset=${STATS.maxError} (i32.const 0)) ${mxAll}))`,
    `(call ${scalar} ${args} (local.get $nspan) (local.get $n))`,
  );
  return f;
}

// ---------------------------------------------------------------------------------------------------------------
// Apply: out = round_y(x) with x = widen(base), then x = x + s·widen(delta) per delta, in float64. One or two
// deltas are fused in one loop; more chain through F64 scratch (see wasm.ts).

/**
 * round16 for apply, in fewer instructions (the loop of BF16 + two F16 deltas: 115 x86 instructions a group, 13 of
 * them spills, against 143 and 22 with round16, by V8's --print-wasm-code; the subtracts from F32/F64 use its
 * variant round16Sub, the others keep round16). The same magic addition, with m built from x's high dwords, two pairs at a time in
 * one i32x4: the binade e = max(exponent bits, emin); m's high dword e + (52 − mant)·2^20 + 2^19, ored with x's sign;
 * m's low dword (e − emin) >> (20 − mant), that is (e − emin)·2^mant in float64 terms; two interleaves make the pairs
 * of m. As m has x's sign, x + m needs no abs: |x + m| = |x| + |m| (rounding is symmetric), and the sums' low dwords
 * are the BF16/F16 patterns of |x| rounded, as in round16; the sign dwords narrow to bit 15. Where round16 hands off
 * |x| ≥ over, this hands off only binades above emax (Inf, NaN, and finite x that large; one compare of the larger
 * e): for |x| in [over, 2^(emax+1)) the sum carries into the pattern of Inf, which is the right answer.
 */
function round16Apply(f: Func, fmt: 'BF16' | 'F16', xs: string[], scaled: boolean): { vectors: string[]; special: () => string } {
  const { mant } = SMALL[fmt];
  const shift = scaled ? 112 : 0;
  const emin = SMALL[fmt].emin - shift;
  const emax = (fmt === 'BF16' ? 127 : 15) - shift;
  // Constants named by their biased exponents (BF16 and the scaled F16 share emin).
  const c = (name: string, v: number) => magicConst(f, name, v);
  const lo = c(`LO${1023 + emin}`, (1023 + emin) << 20);
  const es: string[] = [];
  const sgs: string[] = [];
  const los = [0, 1].map((j) => {
    const [a, b] = [xs[2 * j], xs[2 * j + 1]];
    const { sg, e, mh, ml } = magicDwords(f, mant, lo, a, b, (n) => `a${n}${j}`);
    es.push(e);
    sgs.push(sg);
    const [sa, sb] = [f.local(`as${2 * j}`, 'v128'), f.local(`as${2 * j + 1}`, 'v128')];
    f.emit(
      set(sa, op('f64x2.add', get(a), magicPair(ml, mh, 0))),
      set(sb, op('f64x2.add', get(b), magicPair(ml, mh, 1))),
    );
    return dwords(sa, sb, false);
  });
  // The magnitudes' patterns (below 2^16) packed, and the signs: 0x80000000 narrows with signed saturation to 0x8000.
  const w = f.local('aw', 'v128');
  f.emit(set(w, op('v128.or', `(i16x8.narrow_i32x4_u ${los[0]} ${los[1]})`, `(i16x8.narrow_i32x4_s ${get(sgs[0])} ${get(sgs[1])})`)));
  return { vectors: [w], special: () => op('i32x4.gt_s', op('i32x4.max_s', get(es[0]), get(es[1])), c(`TOP${1023 + emax}`, (1023 + emax) << 20)) };
}

function applyHot(x: FloatDType, dts: readonly FloatDType[], y: FloatDType): Func {
  const f = new Func(`${applyName(x, dts, y)}_hot`, applyParams(dts, '(param $i i32) (param $nspan i32) (result i32)'), false);
  const qb = f.local('qb', 'i32');
  const qo = f.local('qo', 'i32');
  const qd = dts.map((_, j) => f.local(`qd${j}`, 'i32'));
  const sv = dts.map((_, j) => f.local(`sv${j}`, 'v128'));
  const scaled = scaledApply(x, dts, y);
  dts.forEach((_, j) => f.emit(set(sv[j], `(f64x2.splat (local.get $s${j}))`)));
  const vectors: string[][] = [];
  hotLoop(f, unrollFor('apply', dts.length, narrowApply(x, dts)), [[qb, '$pb', SIZE[x]], ...dts.map((dt, j): [string, string, number] => [qd[j], `$pd${j}`, SIZE[dt]]), [qo, '$po', SIZE[y]]], {
    body: (g) => {
      const xs = widenGroup(f, x, qb, 'x', undefined, scaled, g);
      dts.forEach((dt, j) => {
        const ds = widenGroup(f, dt, qd[j], `d${j}_`, undefined, true, g);
        xs.forEach((v, k) => f.emit(set(v, op('f64x2.add', get(v), op('f64x2.mul', get(ds[k]), get(sv[j]))))));
      });
      const r = y === 'BF16' || y === 'F16' ? round16Apply(f, y, xs, scaled) : roundGroup(f, y, xs, scaled);
      vectors[g] = r.vectors;
      // NaN results (for 16-bit outputs, also those too large for round16Apply) and F16 Inf/NaN inputs stop the loop
      // before the stores: the caller runs the scalar code on these elements, which also gives NaNs their sign
      // explicitly (so out may alias base).
      const f16 = [...(x === 'F16' ? ['x'] : []), ...dts.flatMap((dt, j) => (dt === 'F16' ? [`d${j}_`] : []))];
      if (!f16.length) return r.special();
      // Exponent 31 in any F16 input (the raw groups widenGroup loaded): the largest masked field is 0x7c00.
      const e31 = get(f.const('H_EXP16', K.H_EXP16));
      const field = f16.map((t) => op('v128.and', get(f.local(`${t}_raw`, 'v128')), e31)).reduce((a, b) => op('i16x8.max_u', a, b));
      return op('v128.or', r.special(), op('i16x8.eq', field, e31));
    },
    commit: (g) => storeVectors(f, qo, vectors[g], 8 * SIZE[y] * g),
    save: () => {},
    bitmask: true,
  });
  return f;
}

function simdApply(x: FloatDType, dts: readonly FloatDType[], y: FloatDType): Func {
  const name = applyName(x, dts, y);
  const f = new Func(name, applyParams(dts, `${snegParams(dts)} (param $n i32)`), true);
  const span = 8 * unrollFor('apply', dts.length, narrowApply(x, dts));
  f.local('i', 'i32');
  f.local('nspan', 'i32');
  f.emit(set('$nspan', `(i32.and (local.get $n) (i32.const ${-span}))`));
  const args = applyArgs(dts);
  // F16 deltas reach the hot loop widened 2^-112 too small (see widenGroup), so it gets their scales 2^112 times
  // larger: the same real products, so the same rounded ones. (wasm.ts keeps scales this would overflow away.)
  // An F16 base to F16 (scaledApply) works 2^-112 times too small throughout: F16 inputs need no scaling at all, other
  // deltas get their scales 2^112 times smaller.
  const scaled = scaledApply(x, dts, y);
  const hotScale = (dt: FloatDType, j: number) => (scaled ? (dt === 'F16' ? `(local.get $s${j})` : `(f64.mul (local.get $s${j}) (f64.const 0x1p-112))`) : dt === 'F16' ? `(f64.mul (local.get $s${j}) (f64.const 0x1p112))` : `(local.get $s${j})`);
  const hotArgs = ['$pb', ...dts.map((_, j) => `$pd${j}`), '$po'].map(get).concat(dts.map((dt, j) => hotScale(dt, j))).join(' ');
  driveLoop(f, span, `(call $${name}_hot ${hotArgs} (local.get $i) (local.get $nspan))`, `(call $${name}_s ${args} ${snegArgs(dts)} (local.get $i) (i32.add (local.get $i) (i32.const ${span})))`);
  f.emit(`(call $${name}_s ${args} ${snegArgs(dts)} (local.get $nspan) (local.get $n))`);
  return f;
}

/** A module around `funcs`: the imported memory, the scalar helpers, and the constant pool as registered so far. */
function moduleText(funcs: Func[]): string {
  const texts = funcs.map((f) => f.text()); // first, so that the pool holds every constant they load
  return ['(module', '(import "env" "mem" (memory 1 65536 shared))', scalarHelpers(), ...texts, dataSegment(), ')'].join('\n');
}

/** The module of one subtract kernel: its exported driver `subtractName(x, y, probe)` and what the driver calls. */
export function subtractWat(x: FloatDType, y: FloatDType, probe: FloatDType | undefined): string {
  if (narrowSubtract(x, y, probe)) {
    const [nx, ny] = [x, y] as ['BF16' | 'F16', 'BF16' | 'F16'];
    const test = testFirst(x, y) ? [subtractHot(x, y, undefined, 'bits'), subtractRare(x, y, undefined)] : [];
    return moduleText([scalarSubtract(x, y, undefined), narrowDriver(nx, ny), narrowHot(nx, ny), narrowRare(nx, ny), ...test]);
  }
  const { count } = subtractPlan(x, y, probe);
  const funcs = [scalarSubtract(x, y, probe), simdSubtract(x, y, probe), subtractHot(x, y, probe, count === 'bits' ? 'inline' : count)];
  if (count === 'bits') funcs.push(subtractHot(x, y, probe, 'bits'), subtractRare(x, y, probe));
  else if (roundsInF32(x, y, probe)) funcs.push(f32RoundHot(x), subtractRare(x, y, probe));
  return moduleText(funcs);
}

/** The module of one apply kernel (one delta, or two fused where hasFusedApply): its driver `applyName(x, dts, y)`. */
export function applyWat(x: FloatDType, dts: readonly FloatDType[], y: FloatDType): string {
  if (dts.length !== 1 && !hasFusedApply(x, dts, y)) throw new Error(`no fused apply kernel for ${applyName(x, dts, y)}`);
  return moduleText([scalarApply(x, dts, y), applyHot(x, dts, y), simdApply(x, dts, y)]);
}

/**
 * Every kernel module this file can generate: each subtract (model dtype, delta dtype, probe; an F64 probe is
 * none) and each apply (model dtype, one delta or two, output dtype) that hasFusedApply allows. The build
 * assembles them all into the pack the built code loads (build/wasm-pack.ts).
 */
export function* kernelModules(): Generator<WasmModuleSource> {
  const source = import.meta.url;
  for (const x of FORMATS) {
    for (const y of FORMATS) {
      for (const probe of [undefined, 'BF16', 'F16', 'F32'] as const) yield { name: subtractName(x, y, probe), text: () => subtractWat(x, y, probe), source };
      for (const d of FORMATS) {
        for (const ds of [[d], ...FORMATS.map((e) => [d, e])]) {
          if (hasFusedApply(x, ds, y)) yield { name: applyName(x, ds, y), text: () => applyWat(x, ds, y), source };
        }
      }
    }
  }
}
