// The fused two-delta sign-election loop (FusionKernel's ties2) as a WebAssembly kernel: the same float64
// operations in the same order, two elements at a time in SIMD lanes, with masks instead of branches (the
// JavaScript loop's branches follow random signs and cut-offs); lanes equal to a cut-off, which need the
// running tie counts, are counted one by one, and an odd last element takes a scalar loop. Hand-written text: no library emits this loop. BF16 results are rounded here by the
// same float32 trick as combine.ts's narrow, and a block with a lane that trick does not cover (an F32 midpoint
// it was not, NaN) is handed back to narrow whole.
import type { FloatDType } from '../format/dtype.js';
import { assemblerReady, compileModule, type WasmModuleSource } from '../wasm/assembler.js';

export const TIES2_BLOCK = 4096;
/** Byte offsets in the kernel's memory: the four tie counters (f64), then the block's arrays. */
const AT = { counters: 0, base: 64, d0: 64 + 8 * TIES2_BLOCK, d1: 64 + 16 * TIES2_BLOCK, x: 64 + 24 * TIES2_BLOCK, out: 64 + 32 * TIES2_BLOCK };
const PAGES = Math.ceil((AT.out + 8 * TIES2_BLOCK) / 65536);

/** The dtypes the kernel takes (F16 stays on the JavaScript path). */
export type Ties2DType = 'BF16' | 'F32' | 'F64';
const SIZE: Record<Ties2DType, number> = { BF16: 2, F32: 4, F64: 8 };

export function ties2Supported(t: FloatDType): t is Ties2DType {
  return t === 'BF16' || t === 'F32' || t === 'F64';
}

/** A float64 load of element $j of the array at `at`, widened from `t` as combine.ts's widen does. */
function load(t: Ties2DType, at: number): string {
  const addr = (s: number) => `(i32.add (i32.const ${at}) (i32.shl (local.get $j) (i32.const ${Math.log2(s)})))`;
  if (t === 'F64') return `(f64.load ${addr(8)})`;
  if (t === 'F32') return `(f64.promote_f32 (f32.load ${addr(4)}))`;
  return `(f64.promote_f32 (f32.reinterpret_i32 (i32.shl (i32.load16_u ${addr(2)}) (i32.const 16))))`;
}

/** Two float64 lanes from elements $j, $j+1 of the array at `at`, widened from `t` as widen does. */
function load2(t: Ties2DType, at: number): string {
  const addr = (s: number) => `(i32.add (i32.const ${at}) (i32.shl (local.get $j) (i32.const ${Math.log2(s)})))`;
  if (t === 'F64') return `(v128.load ${addr(8)})`;
  if (t === 'F32') return `(f64x2.promote_low_f32x4 (v128.load64_zero ${addr(4)}))`;
  return `(f64x2.promote_low_f32x4 (i32x4.shl (i32x4.extend_low_i16x8_u (v128.load32_zero ${addr(2)})) (i32.const 16)))`;
}

/** `v` where mask bit `k` (i32 0/1) is set, else +0: the JavaScript loop's `k ? v : 0` without a branch. */
const keep = (k: string, v: string) => `(f64.reinterpret_i64 (i64.and (i64.reinterpret_f64 ${v}) (i64.sub (i64.const 0) (i64.extend_i32_u ${k}))))`;

function wat(b: Ties2DType, t0: Ties2DType, t1: Ties2DType): string {
  // One operand's mask. An element equal to a boundary is rare: it takes a branch, where the count before it
  // decides and the count advances (whatever the other boundary says), as in the JavaScript loop.
  const mask = (i: number) => `
      (local.set $a (f64.abs (local.get $v${i})))
      (local.set $to (i32.eqz (f64.le (local.get $a) (local.get $T${i}))))
      (if (f64.eq (local.get $a) (local.get $T${i})) (then
        (local.set $to (i64.lt_u (local.get $st${i}) (local.get $tt${i})))
        (local.set $st${i} (i64.add (local.get $st${i}) (i64.const 1)))))
      (local.set $from (i32.const 0))
      (if (local.get $hasF${i}) (then
        (local.set $from (i32.eqz (f64.le (local.get $a) (local.get $F${i}))))
        (if (f64.eq (local.get $a) (local.get $F${i})) (then
          (local.set $from (i64.lt_u (local.get $sf${i}) (local.get $ft${i})))
          (local.set $sf${i} (i64.add (local.get $sf${i}) (i64.const 1)))))))
      (local.set $t${i} ${keep(`(i32.and (local.get $to) (i32.xor (local.get $from) (i32.const 1)))`, `(f64.mul (local.get $w${i}) (local.get $v${i}))`)})`;
  // The same, two elements at a time: lanes equal to a boundary (rare) are counted one by one, in order.
  const ties2Lanes = (m: string, eq: string, seen: string, ties: string) =>
    [0, 1]
      .map(
        (k) => `
        (if (i32x4.extract_lane ${2 * k} (local.get ${eq})) (then
          (local.set ${m} (i64x2.replace_lane ${k} (local.get ${m}) (i64.sub (i64.const 0) (i64.extend_i32_u (i64.lt_u (local.get ${seen}) (local.get ${ties}))))))
          (local.set ${seen} (i64.add (local.get ${seen}) (i64.const 1)))))`,
      )
      .join('');
  const mask2 = (i: number) => `
      (local.set $A (f64x2.abs (local.get $V${i})))
      (local.set $TO (v128.not (f64x2.le (local.get $A) (local.get $TV${i}))))
      (local.set $EQ (f64x2.eq (local.get $A) (local.get $TV${i})))
      (if (v128.any_true (local.get $EQ)) (then ${ties2Lanes('$TO', '$EQ', `$st${i}`, `$tt${i}`)}))
      (local.set $FR (v128.const i64x2 0 0))
      (if (local.get $hasF${i}) (then
        (local.set $FR (v128.not (f64x2.le (local.get $A) (local.get $FV${i}))))
        (local.set $EQ (f64x2.eq (local.get $A) (local.get $FV${i})))
        (if (v128.any_true (local.get $EQ)) (then ${ties2Lanes('$FR', '$EQ', `$sf${i}`, `$ft${i}`)}))))
      (local.set $TAU${i} (v128.and (f64x2.mul (local.get $WV${i}) (local.get $V${i})) (v128.andnot (local.get $TO) (local.get $FR))))`;
  const agrees2 = (i: number) =>
    `(v128.or (v128.and (f64x2.gt (local.get $TAU${i}) (local.get $Z)) (f64x2.gt (local.get $S) (local.get $Z))) (v128.and (f64x2.lt (local.get $TAU${i}) (local.get $Z)) (f64x2.lt (local.get $S) (local.get $Z))))`;
  const i4 = (v: number) => `(v128.const i32x4 ${v} ${v} ${v} ${v})`;
  const round2 =
    b === 'BF16'
      ? `
      (local.set $FB (f32x4.demote_f64x2_zero (local.get $X)))
      (local.set $HV (v128.or (local.get $HV) (v128.or
        (v128.and (i32x4.eq (v128.and (local.get $FB) ${i4(0xffff)}) ${i4(0x8000)})
          (i8x16.shuffle 0 1 2 3 8 9 10 11 0 1 2 3 8 9 10 11 (local.tee $NE (f64x2.ne (f64x2.promote_low_f32x4 (local.get $FB)) (local.get $X))) (local.get $NE)))
        (i32x4.gt_u (v128.and (local.get $FB) ${i4(0x7fffffff)}) ${i4(0x7f800000)}))))
      (i32.store (i32.add (i32.const ${AT.out}) (i32.shl (local.get $j) (i32.const 1)))
        (i32x4.extract_lane 0 (i8x16.shuffle 0 1 4 5 0 1 4 5 0 1 4 5 0 1 4 5
          (local.tee $R (i32x4.shr_u (i32x4.add (i32x4.add (local.get $FB) ${i4(0x7fff)}) (v128.and (i32x4.shr_u (local.get $FB) (i32.const 16)) ${i4(1)})) (i32.const 16)))
          (local.get $R))))`
      : '';
  const agrees = (i: number) =>
    `(i32.or (i32.and (f64.gt (local.get $t${i}) (f64.const 0)) (f64.gt (local.get $s) (f64.const 0))) (i32.and (f64.lt (local.get $t${i}) (f64.const 0)) (f64.lt (local.get $s) (f64.const 0))))`;
  const round =
    b === 'BF16'
      ? `
      (local.set $f (f32.demote_f64 (local.get $x)))
      (local.set $bits (i32.reinterpret_f32 (local.get $f)))
      (local.set $hard (i32.or (local.get $hard) (i32.or
        (i32.and (i32.eq (i32.and (local.get $bits) (i32.const 0xffff)) (i32.const 0x8000)) (f64.ne (f64.promote_f32 (local.get $f)) (local.get $x)))
        (i32.gt_u (i32.and (local.get $bits) (i32.const 0x7fffffff)) (i32.const 0x7f800000)))))
      (i32.store16 (i32.add (i32.const ${AT.out}) (i32.shl (local.get $j) (i32.const 1)))
        (i32.shr_u (i32.add (i32.add (local.get $bits) (i32.const 0x7fff)) (i32.and (i32.shr_u (local.get $bits) (i32.const 16)) (i32.const 1))) (i32.const 16)))`
      : '';
  return `(module
  (import "env" "mem" (memory ${PAGES} ${PAGES}))
  (func (export "ties2") (param $n i32) (param $T0 f64) (param $F0 f64) (param $T1 f64) (param $F1 f64)
    (param $hasF0 i32) (param $hasF1 i32) (param $tt0f f64) (param $ft0f f64) (param $tt1f f64) (param $ft1f f64)
    (param $w0 f64) (param $w1 f64) (param $norm i32) (param $lambda f64) (result i32)
    (local $j i32) (local $tt0 i64) (local $ft0 i64) (local $tt1 i64) (local $ft1 i64)
    (local $st0 i64) (local $sf0 i64) (local $st1 i64) (local $sf1 i64)
    (local $v0 f64) (local $v1 f64) (local $a f64) (local $to i32) (local $from i32)
    (local $t0 f64) (local $t1 f64) (local $s f64) (local $pa i32) (local $pb i32) (local $m f64) (local $ws f64)
    (local $x f64) (local $f f32) (local $bits i32) (local $hard i32)
    (local $TV0 v128) (local $TV1 v128) (local $FV0 v128) (local $FV1 v128) (local $WV0 v128) (local $WV1 v128) (local $LV v128) (local $Z v128)
    (local $V0 v128) (local $V1 v128) (local $A v128) (local $TO v128) (local $FR v128) (local $EQ v128) (local $TAU0 v128) (local $TAU1 v128)
    (local $S v128) (local $PA v128) (local $PB v128) (local $M v128) (local $WS v128) (local $X v128) (local $FB v128) (local $NE v128) (local $R v128) (local $HV v128)
    (local.set $tt0 (i64.trunc_f64_u (local.get $tt0f)))
    (local.set $ft0 (i64.trunc_f64_u (local.get $ft0f)))
    (local.set $tt1 (i64.trunc_f64_u (local.get $tt1f)))
    (local.set $ft1 (i64.trunc_f64_u (local.get $ft1f)))
    (local.set $st0 (i64.trunc_f64_u (f64.load (i32.const 0))))
    (local.set $sf0 (i64.trunc_f64_u (f64.load (i32.const 8))))
    (local.set $st1 (i64.trunc_f64_u (f64.load (i32.const 16))))
    (local.set $sf1 (i64.trunc_f64_u (f64.load (i32.const 24))))
    (local.set $TV0 (f64x2.splat (local.get $T0)))
    (local.set $TV1 (f64x2.splat (local.get $T1)))
    (local.set $FV0 (f64x2.splat (local.get $F0)))
    (local.set $FV1 (f64x2.splat (local.get $F1)))
    (local.set $WV0 (f64x2.splat (local.get $w0)))
    (local.set $WV1 (f64x2.splat (local.get $w1)))
    (local.set $LV (f64x2.splat (local.get $lambda)))
    (block $pairs (loop $pair
      (br_if $pairs (i32.gt_u (i32.add (local.get $j) (i32.const 2)) (local.get $n)))
      (local.set $V0 ${load2(t0, AT.d0)})
      (local.set $V1 ${load2(t1, AT.d1)})
      ${mask2(0)}
      ${mask2(1)}
      (local.set $S (f64x2.add (local.get $TAU0) (local.get $TAU1)))
      (local.set $PA ${agrees2(0)})
      (local.set $PB ${agrees2(1)})
      (local.set $M (f64x2.add (v128.and (local.get $TAU0) (local.get $PA)) (v128.and (local.get $TAU1) (local.get $PB))))
      (if (local.get $norm) (then
        (local.set $WS (f64x2.add (v128.and (local.get $WV0) (local.get $PA)) (v128.and (local.get $WV1) (local.get $PB))))
        (local.set $M (v128.and (f64x2.div (local.get $M) (local.get $WS)) (f64x2.ne (local.get $WS) (local.get $Z))))))
      (local.set $X (f64x2.add ${load2(b, AT.base)} (f64x2.mul (local.get $LV) (local.get $M))))
      (v128.store (i32.add (i32.const ${AT.x}) (i32.shl (local.get $j) (i32.const 3))) (local.get $X))
      ${round2}
      (local.set $j (i32.add (local.get $j) (i32.const 2)))
      (br $pair)))
    (local.set $hard (v128.any_true (local.get $HV)))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $j) (local.get $n)))
      (local.set $v0 ${load(t0, AT.d0)})
      (local.set $v1 ${load(t1, AT.d1)})
      ${mask(0)}
      ${mask(1)}
      (local.set $s (f64.add (local.get $t0) (local.get $t1)))
      (local.set $pa ${agrees(0)})
      (local.set $pb ${agrees(1)})
      (local.set $m (f64.add ${keep('(local.get $pa)', '(local.get $t0)')} ${keep('(local.get $pb)', '(local.get $t1)')}))
      (if (local.get $norm) (then
        (local.set $ws (f64.add ${keep('(local.get $pa)', '(local.get $w0)')} ${keep('(local.get $pb)', '(local.get $w1)')}))
        (local.set $m ${keep('(f64.ne (local.get $ws) (f64.const 0))', '(f64.div (local.get $m) (local.get $ws))')})))
      (local.set $x (f64.add ${load(b, AT.base)} (f64.mul (local.get $lambda) (local.get $m))))
      (f64.store (i32.add (i32.const ${AT.x}) (i32.shl (local.get $j) (i32.const 3))) (local.get $x))
      ${round}
      (local.set $j (i32.add (local.get $j) (i32.const 1)))
      (br $next)))
    (f64.store (i32.const 0) (f64.convert_i64_u (local.get $st0)))
    (f64.store (i32.const 8) (f64.convert_i64_u (local.get $sf0)))
    (f64.store (i32.const 16) (f64.convert_i64_u (local.get $st1)))
    (f64.store (i32.const 24) (f64.convert_i64_u (local.get $sf1)))
    (local.get $hard)))`;
}

/**
 * The same combine, four elements at a time, for deltas of BF16 or F32: their magnitudes compare as F32 bit
 * patterns (i32x4; the order of non-negative floats, NaN above +Inf), against thresholds ties2Thresholds gives.
 * Elements equal to a boundary are all kept, or none, by $kT/$kF (whether the counts before the block are still
 * below the boundary's ties); the kernel counts them, and the caller redoes with the exact kernel the one block
 * per tensor where a count crosses the boundary's ties, or a BF16 result the float32 trick does not cover.
 */
function wat4(b: Ties2DType, t0: Ties2DType, t1: Ties2DType, from: boolean): string {
  const i4 = (v: number) => `(v128.const i32x4 ${v} ${v} ${v} ${v})`;
  const addr = (at: number, shift: number, plus = 0) => `(i32.add (i32.const ${at + plus}) (i32.shl (local.get $j) (i32.const ${shift})))`;
  // Four F32 patterns (a BF16's is its bits shifted up 16).
  const pat = (t: Ties2DType, at: number) =>
    t === 'F32' ? `(v128.load ${addr(at, 2)})` : `(i32x4.shl (i32x4.extend_low_i16x8_u (v128.load64_zero ${addr(at, 1)})) (i32.const 16))`;
  const high = (v: string) => `(i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 ${v} ${v})`;
  const mask = (i: number) => `
      (local.set $A (v128.and (local.get $P${i}) ${i4(0x7fffffff)}))
      (local.set $E (i32x4.eq (local.get $A) (local.get $ET${i})))
      (local.set $CT${i} (i32x4.sub (local.get $CT${i}) (local.get $E)))
      (local.set $K${i} (v128.or (i32x4.gt_s (local.get $A) (local.get $GT${i})) (v128.and (local.get $E) (local.get $KT${i}))))
      ${
        from
          ? `(local.set $E (i32x4.eq (local.get $A) (local.get $EF${i})))
      (local.set $CF${i} (i32x4.sub (local.get $CF${i}) (local.get $E)))
      (local.set $K${i} (v128.andnot (local.get $K${i}) (v128.or (i32x4.gt_s (local.get $A) (local.get $GF${i})) (v128.and (local.get $E) (local.get $KF${i})))))`
          : ''
      }`;
  const agrees2 = (i: number) =>
    `(v128.or (v128.and (f64x2.gt (local.get $TAU${i}) (local.get $Z)) (f64x2.gt (local.get $S) (local.get $Z))) (v128.and (f64x2.lt (local.get $TAU${i}) (local.get $Z)) (f64x2.lt (local.get $S) (local.get $Z))))`;
  // One half (two lanes) of the float64 arithmetic, as the exact kernel does it: x into $X<h>.
  const half = (h: 'L' | 'H') => {
    const lanes = (v: string) => (h === 'L' ? v : high(v));
    const ext = h === 'L' ? 'i64x2.extend_low_i32x4_s' : 'i64x2.extend_high_i32x4_s';
    const baseHalf =
      b === 'F64' ? `(v128.load ${addr(AT.base, 3, h === 'L' ? 0 : 16)})` : `(f64x2.promote_low_f32x4 ${lanes('(local.get $PB4)')})`;
    return `
      (local.set $TAU0 (v128.and (f64x2.mul (local.get $WV0) (f64x2.promote_low_f32x4 ${lanes('(local.get $P0)')})) (${ext} (local.get $K0))))
      (local.set $TAU1 (v128.and (f64x2.mul (local.get $WV1) (f64x2.promote_low_f32x4 ${lanes('(local.get $P1)')})) (${ext} (local.get $K1))))
      (local.set $S (f64x2.add (local.get $TAU0) (local.get $TAU1)))
      (local.set $PA ${agrees2(0)})
      (local.set $PB ${agrees2(1)})
      (local.set $M (f64x2.add (v128.and (local.get $TAU0) (local.get $PA)) (v128.and (local.get $TAU1) (local.get $PB))))
      (if (local.get $norm) (then
        (local.set $WS (f64x2.add (v128.and (local.get $WV0) (local.get $PA)) (v128.and (local.get $WV1) (local.get $PB))))
        (local.set $M (v128.and (f64x2.div (local.get $M) (local.get $WS)) (f64x2.ne (local.get $WS) (local.get $Z))))))
      (local.set $X${h} (f64x2.add ${baseHalf} (f64x2.mul (local.get $LV) (local.get $M))))
      ${b === 'BF16' ? '' : `(v128.store ${addr(AT.x, 3, h === 'L' ? 0 : 16)} (local.get $X${h}))`}`;
  };
  const round4 =
    b === 'BF16'
      ? `
      (local.set $FL (f32x4.demote_f64x2_zero (local.get $XL)))
      (local.set $FH (f32x4.demote_f64x2_zero (local.get $XH)))
      (local.set $FB (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $FL) (local.get $FH)))
      (local.set $NE (i8x16.shuffle 0 1 2 3 8 9 10 11 16 17 18 19 24 25 26 27
        (f64x2.ne (f64x2.promote_low_f32x4 (local.get $FL)) (local.get $XL)) (f64x2.ne (f64x2.promote_low_f32x4 (local.get $FH)) (local.get $XH))))
      (local.set $HV (v128.or (local.get $HV) (v128.or
        (v128.and (i32x4.eq (v128.and (local.get $FB) ${i4(0xffff)}) ${i4(0x8000)}) (local.get $NE))
        (i32x4.gt_u (v128.and (local.get $FB) ${i4(0x7fffffff)}) ${i4(0x7f800000)}))))
      (local.set $R (i32x4.shr_u (i32x4.add (i32x4.add (local.get $FB) ${i4(0x7fff)}) (v128.and (i32x4.shr_u (local.get $FB) (i32.const 16)) ${i4(1)})) (i32.const 16)))
      (i64.store ${addr(AT.out, 1)} (i64x2.extract_lane 0 (i8x16.shuffle 0 1 4 5 8 9 12 13 0 1 4 5 8 9 12 13 (local.get $R) (local.get $R))))`
      : '';
  const sum = (v: string) => `(i32.add (i32.add (i32x4.extract_lane 0 (local.get ${v})) (i32x4.extract_lane 1 (local.get ${v}))) (i32.add (i32x4.extract_lane 2 (local.get ${v})) (i32x4.extract_lane 3 (local.get ${v}))))`;
  return `(module
  (import "env" "mem" (memory ${PAGES} ${PAGES}))
  (func (export "ties4") (param $n i32)
    (param $gT0 i32) (param $eT0 i32) (param $kT0 i32) (param $gF0 i32) (param $eF0 i32) (param $kF0 i32)
    (param $gT1 i32) (param $eT1 i32) (param $kT1 i32) (param $gF1 i32) (param $eF1 i32) (param $kF1 i32)
    (param $w0 f64) (param $w1 f64) (param $norm i32) (param $lambda f64) (result i32)
    (local $j i32)
    (local $GT0 v128) (local $ET0 v128) (local $KT0 v128) (local $GF0 v128) (local $EF0 v128) (local $KF0 v128)
    (local $GT1 v128) (local $ET1 v128) (local $KT1 v128) (local $GF1 v128) (local $EF1 v128) (local $KF1 v128)
    (local $CT0 v128) (local $CF0 v128) (local $CT1 v128) (local $CF1 v128)
    (local $WV0 v128) (local $WV1 v128) (local $LV v128) (local $Z v128)
    (local $P0 v128) (local $P1 v128) (local $PB4 v128) (local $A v128) (local $E v128) (local $K0 v128) (local $K1 v128)
    (local $TAU0 v128) (local $TAU1 v128) (local $S v128) (local $PA v128) (local $PB v128) (local $M v128) (local $WS v128)
    (local $XL v128) (local $XH v128) (local $FL v128) (local $FH v128) (local $FB v128) (local $NE v128) (local $R v128) (local $HV v128)
    ${[0, 1].map((i) => ['T', 'F'].map((c) => ['g', 'e', 'k'].map((p) => `(local.set $${p.toUpperCase()}${c}${i} (i32x4.splat (local.get $${p}${c}${i})))`).join(' ')).join('\n    ')).join('\n    ')}
    (local.set $WV0 (f64x2.splat (local.get $w0)))
    (local.set $WV1 (f64x2.splat (local.get $w1)))
    (local.set $LV (f64x2.splat (local.get $lambda)))
    (block $quads (loop $quad
      (br_if $quads (i32.gt_u (i32.add (local.get $j) (i32.const 4)) (local.get $n)))
      (local.set $P0 ${pat(t0, AT.d0)})
      (local.set $P1 ${pat(t1, AT.d1)})
      ${b === 'F64' ? '' : `(local.set $PB4 ${pat(b, AT.base)})`}
      ${mask(0)}
      ${mask(1)}
      ${half('L')}
      ${half('H')}
      ${round4}
      (local.set $j (i32.add (local.get $j) (i32.const 4)))
      (br $quad)))
    (i32.store (i32.const ${COUNTS}) ${sum('$CT0')})
    (i32.store (i32.const ${COUNTS + 4}) ${sum('$CF0')})
    (i32.store (i32.const ${COUNTS + 8}) ${sum('$CT1')})
    (i32.store (i32.const ${COUNTS + 12}) ${sum('$CF1')})
    (v128.any_true (local.get $HV))))`;
}

const ties2Name = (b: Ties2DType, t0: Ties2DType, t1: Ties2DType) => `ties2_${b}_${t0}_${t1}`;
const ties4Name = (b: Ties2DType, t0: Ties2DType, t1: Ties2DType, from: boolean) => `ties4_${b}_${t0}_${t1}${from ? '_from' : ''}`;

/** Every module this file can generate, for the build's pack (build/wasm-pack.ts); wat4 takes no F64 delta. */
export function* ties2Modules(): Generator<WasmModuleSource> {
  const source = import.meta.url;
  const all: Ties2DType[] = ['BF16', 'F32', 'F64'];
  for (const b of all) {
    for (const t0 of all) {
      for (const t1 of all) {
        yield { name: ties2Name(b, t0, t1), text: () => wat(b, t0, t1), source };
        if (t0 === 'F64' || t1 === 'F64') continue;
        for (const from of [false, true]) yield { name: ties4Name(b, t0, t1, from), text: () => wat4(b, t0, t1, from), source };
      }
    }
  }
}

/** Where wat4 leaves its counts of elements equal to each boundary: [to0, from0, to1, from1] (i32). */
const COUNTS = 32;

const f32Word = new Uint32Array(1);
const f32Num = new Float32Array(f32Word.buffer);
/**
 * wat4's thresholds for a boundary magnitude T (−1: none): an F32 magnitude is greater than T exactly when its
 * pattern is greater than `gt` (the largest F32 not above T), and equal to it when its pattern is `eq` (−1,
 * which no pattern is, when T is not an F32).
 */
export function ties2Thresholds(T: number): { gt: number; eq: number } {
  if (T < 0) return { gt: -1, eq: -1 };
  f32Num[0] = T;
  if (f32Num[0] > T) f32Word[0] -= 1;
  return { gt: f32Word[0] | 0, eq: f32Num[0] === T ? f32Word[0] | 0 : -1 };
}

interface WasmApi {
  Memory: new (d: { initial: number; maximum: number }) => { buffer: ArrayBuffer };
  Instance: new (module: object, imports: object) => { exports: Record<string, unknown> };
}
const WA = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

type Ties2Fn = (...args: number[]) => number;

/** One operand's cut-offs and tie counts for a block (counts: before the block; updated in place). */
export interface Ties2Operand {
  dtype: Ties2DType;
  data: Uint8Array;
  weight: number;
  T: number;
  F: number;
  hasF: boolean;
  tt: number;
  ft: number;
}

/** The kernel over its own small memory, blocks staged in and out; null where no WebAssembly can be had yet (reference kernels). */
export class Ties2Wasm {
  private readonly memory = new WA.Memory({ initial: PAGES, maximum: PAGES });
  private readonly u8 = new Uint8Array(this.memory.buffer);
  private readonly counters = new Float64Array(this.memory.buffer, 0, 4);
  private readonly counts = new Int32Array(this.memory.buffer, COUNTS, 4);
  /** x = base + λ·m of the last block, as float64. */
  readonly x = new Float64Array(this.memory.buffer, AT.x, TIES2_BLOCK);
  private readonly fns = new Map<string, Ties2Fn>();

  static create(): Ties2Wasm | null {
    return assemblerReady() ? new Ties2Wasm() : null;
  }

  private fn(b: Ties2DType, t0: Ties2DType, t1: Ties2DType): Ties2Fn {
    const name = ties2Name(b, t0, t1);
    let f = this.fns.get(name);
    if (!f) {
      f = new WA.Instance(compileModule(name, () => wat(b, t0, t1)), { env: { mem: this.memory } }).exports.ties2 as Ties2Fn;
      this.fns.set(name, f);
    }
    return f;
  }

  private fn4(b: Ties2DType, t0: Ties2DType, t1: Ties2DType, from: boolean): Ties2Fn {
    const name = ties4Name(b, t0, t1, from);
    let f = this.fns.get(name);
    if (!f) {
      f = new WA.Instance(compileModule(name, () => wat4(b, t0, t1, from)), { env: { mem: this.memory } }).exports.ties4 as Ties2Fn;
      this.fns.set(name, f);
    }
    return f;
  }

  /**
   * One block of len ≤ TIES2_BLOCK elements: fills `x`, and for a BF16 base also `out` unless it returns
   * false (then the caller rounds x itself). seen: [seenTo0, seenFrom0, seenTo1, seenFrom1], updated.
   */
  run(b: Ties2DType, base: Uint8Array, ops: readonly [Ties2Operand, Ties2Operand], at: number, len: number, seen: number[], normalize: boolean, lambda: number, out: Uint8Array): boolean {
    const u8 = this.u8;
    u8.set(base.subarray(0, len * SIZE[b]), AT.base);
    u8.set(ops[0].data.subarray(at * SIZE[ops[0].dtype], (at + len) * SIZE[ops[0].dtype]), AT.d0);
    u8.set(ops[1].data.subarray(at * SIZE[ops[1].dtype], (at + len) * SIZE[ops[1].dtype]), AT.d1);
    const [o0, o1] = ops;
    if (len % 4 === 0 && o0.dtype !== 'F64' && o1.dtype !== 'F64' && this.run4(b, ops, len, seen, normalize, lambda)) {
      if (b !== 'BF16') return false;
      out.set(u8.subarray(AT.out, AT.out + 2 * len));
      return true;
    }
    this.counters.set(seen);
    const hard = this.fn(b, o0.dtype, o1.dtype)(len, o0.T, o0.F, o1.T, o1.F, o0.hasF ? 1 : 0, o1.hasF ? 1 : 0, o0.tt, o0.ft, o1.tt, o1.ft, o0.weight, o1.weight, normalize ? 1 : 0, lambda);
    for (let i = 0; i < 4; i++) seen[i] = this.counters[i];
    if (b !== 'BF16' || hard) return false;
    out.set(u8.subarray(AT.out, AT.out + 2 * len));
    return true;
  }

  /** wat4 on the staged block; false where the exact kernel must redo it (a count crosses its ties, or a hard BF16 lane). */
  private run4(b: Ties2DType, ops: readonly [Ties2Operand, Ties2Operand], len: number, seen: number[], normalize: boolean, lambda: number): boolean {
    const [o0, o1] = ops;
    const from = o0.hasF || o1.hasF;
    const args: number[] = [len];
    ops.forEach((o, k) => {
      const to = ties2Thresholds(o.T);
      const fr = o.hasF ? ties2Thresholds(o.F) : { gt: 0x7fffffff, eq: -1 };
      args.push(to.gt, to.eq, seen[2 * k] < o.tt ? -1 : 0, fr.gt, fr.eq, seen[2 * k + 1] < o.ft ? -1 : 0);
    });
    args.push(o0.weight, o1.weight, normalize ? 1 : 0, lambda);
    const hard = this.fn4(b, o0.dtype, o1.dtype, from)(...args);
    if (b === 'BF16' && hard) return false;
    const ties = [o0.tt, o0.ft, o1.tt, o1.ft];
    const counts = this.counts;
    for (let i = 0; i < 4; i++) if (seen[i] < ties[i] && seen[i] + counts[i] > ties[i]) return false;
    for (let i = 0; i < 4; i++) seen[i] += counts[i];
    return true;
  }
}
