import { describe, it, expect } from 'vitest';
import zstd from 'zstd-napi/binding.js';
import { decodeChunk, encodeChunk, frameBound, isRuns } from '../lib/codec/chunk.js';
import { ChunkDecodeError, CodecPool, sharedBytes, workerExecArgv } from '../lib/codec/pool.js';
import { streamTensors, type Slot } from '../lib/ops/stream.js';

/** Deterministic bytes with the look of a delta: mostly-zero low bytes, busy high ones. */
function sample(n: number, size: number, seed = 1): Uint8Array {
  const b = new Uint8Array(n * size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < b.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const byte = i % size;
    b[i] = byte < size / 2 ? ((x >>> 0) % 97 === 0 ? x & 0xff : 0) : (x >>> 8) & 0xff;
  }
  return b;
}

describe('chunk codec', () => {
  it.each([2, 4, 8])('%i-byte elements: one zstd frame per byte plane, and back', async (size) => {
    for (const n of [1, 15, 16, 17, 100, 4099]) {
      const raw = sample(n, size, n);
      const out = new Uint8Array(size * frameBound(n));
      const lengths = await encodeChunk(raw, n, size, out);
      expect(lengths).toHaveLength(size);
      // Each frame, decompressed here on its own, is plane b: byte b of every element.
      let at = 0;
      for (let b = 0; b < size; b++) {
        const got = new Uint8Array(n);
        expect(zstd.decompress(got, out.subarray(at, at + lengths[b]))).toBe(n);
        const want = Uint8Array.from({ length: n }, (_, i) => raw[i * size + b]);
        expect(Buffer.from(got).equals(Buffer.from(want)), `n ${n}, plane ${b}`).toBe(true);
        at += lengths[b];
      }
      const back = new Uint8Array(n * size);
      await decodeChunk(out, lengths, n, size, back);
      expect(Buffer.from(back).equals(Buffer.from(raw)), `n ${n}`).toBe(true);
    }
  });

  it('compresses runs planes by matching and dense planes by Huffman coding, each exactly', async () => {
    let x = 12345;
    const next = () => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 16) & 0xff;
    // Dense: 16 symbols (4 bits a byte), no runs. Runs: zeros with a few busy bytes.
    const dense = (n: number) => Uint8Array.from({ length: n }, () => [0x40, 0x41, 0x3f, 0xc0, 0xbf, 0x42, 0x3e, 0xc1][next() % 8] + (next() % 2) * 8);
    const runs = (n: number) => Uint8Array.from({ length: n }, () => (next() % 50 === 0 ? next() : 0));
    const n = 1 << 16;
    expect(isRuns(runs(n))).toBe(true);
    expect(isRuns(dense(n))).toBe(false);
    // A single-byte chunk's planes are runs; so is a constant plane.
    expect(isRuns(new Uint8Array(1))).toBe(true);
    expect(isRuns(new Uint8Array(n).fill(0xa5))).toBe(true);
    // Adversarial planes at and around the threshold, halves of each kind, sizes around the sampling step.
    const threshold = (k: number) => Uint8Array.from({ length: n }, (_, i) => (i % 100 < k ? 0 : (i * 131 + next()) & 0xff));
    const halves = new Uint8Array(n);
    halves.set(runs(n / 2));
    halves.set(dense(n / 2), n / 2);
    const planes = [dense(n), runs(n), threshold(84), threshold(85), threshold(86), threshold(90), halves, dense(8193), dense(16385), runs(3), dense(2)];
    for (const [i, plane] of planes.entries()) {
      // One plane is a chunk of 1-byte elements: encode, decode with zstd alone and with the codec.
      const out = new Uint8Array(2 * frameBound(plane.length));
      const raw = new Uint8Array(plane.length * 2);
      for (let j = 0; j < plane.length; j++) raw[2 * j + 1] = plane[j];
      const lengths = await encodeChunk(raw, plane.length, 2, out);
      const got = new Uint8Array(plane.length);
      expect(zstd.decompress(got, out.subarray(lengths[0], lengths[0] + lengths[1]))).toBe(plane.length);
      expect(Buffer.from(got).equals(Buffer.from(plane)), `plane ${i}`).toBe(true);
      const back = new Uint8Array(raw.length);
      await decodeChunk(out, lengths, plane.length, 2, back);
      expect(Buffer.from(back).equals(Buffer.from(raw)), `plane ${i}`).toBe(true);
    }
    // The dense mode's fast negative level still Huffman-codes its literals (it would store them raw otherwise).
    const d = dense(n);
    const raw = new Uint8Array(n);
    raw.set(d);
    const out = new Uint8Array(frameBound(n) * 2);
    const [len] = await encodeChunk(raw, n / 2, 2, out);
    expect(len).toBeLessThan(0.6 * (n / 2)); // 4 bits a byte: about half, where raw literals would be all of it
  });

  it('gives the same frames on worker threads as on the calling thread, and names corrupt frames', async () => {
    const n = 50_000;
    const size = 4;
    const inline = new CodecPool(0);
    const workers = new CodecPool(2);
    try {
      const raw = sharedBytes(n * size);
      raw.set(sample(n, size, 7));
      const a = sharedBytes(size * frameBound(n));
      const b = sharedBytes(size * frameBound(n));
      const [la, lb] = await Promise.all([inline.encode(raw, n, size, a), workers.encode(raw, n, size, b)]);
      expect(lb).toEqual(la);
      expect(workers.running).toBeGreaterThan(0); // the workers started (under the test runner too)
      const total = la.reduce((x, y) => x + y, 0);
      expect(Buffer.from(b.subarray(0, total)).equals(Buffer.from(a.subarray(0, total)))).toBe(true);

      const back = sharedBytes(n * size);
      await workers.decode(b, lb, n, size, back);
      expect(Buffer.from(back.subarray(0, n * size)).equals(Buffer.from(raw.subarray(0, n * size)))).toBe(true);

      b[la[0] + Math.floor(la[1] / 2)] ^= 0x40; // inside plane 1's frame
      for (const pool of [inline, workers]) {
        const err = await pool.decode(b, lb, n, size, back).catch((e) => e);
        expect(err).toBeInstanceOf(ChunkDecodeError);
        expect(err.message).toMatch(/byte plane 1/);
      }
    } finally {
      await workers.close();
    }
  });

  it('gives workers the parent\'s Node options less those of an inline script', () => {
    expect(workerExecArgv(['--input-type=module', '-e', 'x', '--max-old-space-size=512'])).toEqual(['--max-old-space-size=512']);
    expect(workerExecArgv(['--input-type', 'module', '--print', 'x', '--eval=y', '--cpu-prof'])).toEqual(['--cpu-prof']);
  });

  it('decodes many chunks as one job per worker, each to its place, and names the corrupt one by index', async () => {
    const size = 2;
    const lens = [3000, 5000, 1000, 4000, 2500];
    const inline = new CodecPool(0);
    const workers = new CodecPool(2);
    try {
      const frames = sharedBytes(lens.reduce((a, n) => a + size * frameBound(n), 0));
      const want = lens.map((n, i) => sample(n, size, 20 + i));
      const chunks: [number, number[], number, number, number][] = [];
      let at = 0;
      let to = 0;
      for (const [i, n] of lens.entries()) {
        const raw = sharedBytes(n * size);
        raw.set(want[i]);
        const lengths = await inline.encode(raw, n, size, frames.subarray(at));
        chunks.push([at, lengths, n, size, to]);
        at += lengths.reduce((a, b) => a + b, 0);
        to += n * size;
      }
      for (const pool of [inline, workers]) {
        const dest = sharedBytes(to);
        await pool.decodeMany(frames, dest, chunks);
        chunks.forEach(([, , n, , off], i) => expect(Buffer.from(dest.subarray(off, off + n * size)).equals(Buffer.from(want[i]))).toBe(true));
      }
      frames[chunks[3][0] + chunks[3][1][0] + 3] ^= 0x20; // inside chunk 3's second plane
      for (const pool of [inline, workers]) {
        const err = await pool.decodeMany(frames, sharedBytes(to), chunks).catch((e) => e);
        expect(err).toBeInstanceOf(ChunkDecodeError);
        expect(err.chunk).toBe(3);
      }
    } finally {
      await workers.close();
    }
  });
});

describe('the streaming loop', () => {
  it('writes chunks in order even when their asynchronous results settle out of order', async () => {
    const slots: Slot[] = Array.from({ length: 4 }, () => ({ inputs: [new Uint8Array(8)], out: new Uint8Array(8) }));
    const written: number[] = [];
    let inFlight = 0;
    let maxInFlight = 0;
    await streamTensors<number>(
      {
        count: 2,
        elements: () => 10,
        read: async () => undefined,
        compute: (t, start) => {
          inFlight++;
          maxInFlight = Math.max(maxInFlight, inFlight);
          // Later chunks finish first.
          return new Promise((resolve) => setTimeout(() => (inFlight--, resolve(t * 100 + start)), 20 - start));
        },
        write: async (r) => {
          written.push(r);
        },
      },
      slots,
      2,
    );
    expect(written).toEqual([0, 2, 4, 6, 8, 100, 102, 104, 106, 108]);
    expect(maxInFlight).toBeGreaterThan(1); // results overlapped
    expect(maxInFlight).toBeLessThanOrEqual(4); // never more than the slots
  });

  it('fails with the first failing chunk and writes nothing after it', async () => {
    const slots: Slot[] = Array.from({ length: 3 }, () => ({ inputs: [], out: new Uint8Array(0) }));
    const written: number[] = [];
    const err = await streamTensors<number>(
      {
        count: 1,
        elements: () => 6,
        read: async () => undefined,
        compute: (_t, start) => (start === 2 ? Promise.reject(new Error('encoding failed at 2')) : Promise.resolve(start)),
        write: async (r) => {
          written.push(r);
        },
      },
      slots,
      1,
    ).catch((e) => e);
    expect(err.message).toBe('encoding failed at 2');
    expect(written).toEqual([0, 1]);
  });
});

describe('chunk buffers', () => {
  it('are reused by the next shard of the same shape, never by two at once, and dropped after a failure', async () => {
    const { withBuffers } = await import('../lib/ops/buffers.js');
    let made = 0;
    const create = async () => ({ id: ++made });
    const key = `test-${Math.random()}`;
    const first = await withBuffers(key, create, async (b) => b.id);
    const second = await withBuffers(key, create, async (b) => b.id);
    expect(second).toBe(first);
    // Two at once get two sets.
    const both = await Promise.all([
      withBuffers(key, create, async (b) => (await new Promise((r) => setTimeout(r, 10)), b.id)),
      withBuffers(key, create, async (b) => (await new Promise((r) => setTimeout(r, 10)), b.id)),
    ]);
    expect(new Set(both).size).toBe(2);
    // A failed use does not give its set back.
    const failed = await withBuffers(`${key}-x`, create, async (b) => {
      throw Object.assign(new Error('boom'), { id: b.id });
    }).catch((e) => e.id);
    const after = await withBuffers(`${key}-x`, create, async (b) => b.id);
    expect(after).not.toBe(failed);
  });
});
