// DARE's random numbers, counter-based so every chunk, shard and machine draws the same ones:
// key = fnv1a64(UTF-8 "<i>:<tensor>") XOR seed; z = splitmix64(key + j); u = (z >> 11)·2⁻⁵³.
// Per element the 64-bit arithmetic runs on u32 pairs (BigInt per element would dominate the apply).

const MASK64 = (1n << 64n) - 1n;

/** FNV-1a, 64-bit, over bytes (once per tensor, so BigInt is fine here). */
export function fnv1a64(bytes: Uint8Array): bigint {
  let h = 0xcbf29ce484222325n;
  for (const b of bytes) h = ((h ^ BigInt(b)) * 0x100000001b3n) & MASK64;
  return h;
}

/** The per-(delta, tensor) key, as [hi, lo] u32 words. */
export function dareKey(delta: number, tensor: string, seed: bigint): [number, number] {
  const k = fnv1a64(new TextEncoder().encode(`${delta}:${tensor}`)) ^ seed;
  return [Number(k >> 32n), Number(k & 0xffffffffn)];
}

/** splitmix64 on BigInts: the definition, for tests and checks. */
export function splitmix64Big(x: bigint): bigint {
  let z = (x + 0x9e3779b97f4a7c15n) & MASK64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return z ^ (z >> 31n);
}

// (hi, lo) results of mul64, kept in module scratch to avoid allocating per element.
let rh = 0;
let rl = 0;

/** (ah:al)·(bh:bl) mod 2⁶⁴ into rh:rl. */
function mul64(ah: number, al: number, bh: number, bl: number): void {
  const a0 = al & 0xffff;
  const a1 = al >>> 16;
  const b0 = bl & 0xffff;
  const b1 = bl >>> 16;
  const p00 = a0 * b0;
  const p01 = a0 * b1;
  const p10 = a1 * b0;
  const p11 = a1 * b1;
  const mid = (p00 >>> 16) + (p01 & 0xffff) + (p10 & 0xffff);
  rl = (((mid & 0xffff) << 16) | (p00 & 0xffff)) >>> 0;
  const carry = p11 + (p01 >>> 16) + (p10 >>> 16) + Math.floor(mid / 65536);
  rh = (carry + Math.imul(ah, bl) + Math.imul(al, bh)) >>> 0;
}

const TWO32 = 4294967296;
const TWO_M53 = 2 ** -53;

/** u[j] = (splitmix64(key + j) >> 11)·2⁻⁵³ for j = start … start+n−1, into out[0..n). start < 2⁵³. */
export function dareUniforms(keyHi: number, keyLo: number, start: number, n: number, out: Float64Array): void {
  // x = key + start, then + 1 per element.
  const sl = start % TWO32;
  const sh = Math.floor(start / TWO32);
  let xl = keyLo + sl;
  let xh = (keyHi + sh + (xl >= TWO32 ? 1 : 0)) >>> 0;
  xl = xl >>> 0;
  for (let j = 0; j < n; j++) {
    // z = x + golden gamma
    let zl = xl + 0x7f4a7c15;
    let zh = (xh + 0x9e3779b9 + (zl >= TWO32 ? 1 : 0)) >>> 0;
    zl = zl >>> 0;
    // z ^= z >> 30; z *= 0xbf58476d1ce4e5b9
    mul64(zh ^ (zh >>> 30), (zl ^ ((zl >>> 30) | (zh << 2))) >>> 0, 0xbf58476d, 0x1ce4e5b9);
    zh = rh;
    zl = rl;
    // z ^= z >> 27; z *= 0x94d049bb133111eb
    mul64(zh ^ (zh >>> 27), (zl ^ ((zl >>> 27) | (zh << 5))) >>> 0, 0x94d049bb, 0x133111eb);
    zh = rh;
    zl = rl;
    // z ^= z >> 31; u = (z >> 11)·2⁻⁵³
    const fh = (zh ^ (zh >>> 31)) >>> 0;
    const fl = (zl ^ ((zl >>> 31) | (zh << 1))) >>> 0;
    out[j] = (fh * 2097152 + (fl >>> 11)) * TWO_M53;
    xl += 1;
    if (xl === TWO32) {
      xl = 0;
      xh = (xh + 1) >>> 0;
    }
  }
}
