import { describe, expect, it } from 'vitest';
import { ReadAhead } from '../lib/storage/readahead.js';

/** A source of `size` bytes (byte i is i mod 251) that records every fetch. */
function source(size: number) {
  const bytes = Uint8Array.from({ length: size }, (_, i) => i % 251);
  const fetches: [number, number][] = [];
  const fetch = async (offset: number, length: number, into: Uint8Array) => {
    fetches.push([offset, length]);
    await new Promise((r) => setTimeout(r, 1));
    into.set(bytes.subarray(offset, offset + length));
    return into.subarray(0, length);
  };
  return { bytes, fetches, fetch };
}

const covered = (ranges: [number, number][], at: number) => ranges.some(([o, l]) => o <= at && at < o + l);

describe('ReadAhead', () => {
  it('serves declared reads from large windows, fetching declared bytes only, each once', async () => {
    const src = source(10_000);
    const ra = new ReadAhead(src.fetch, 1000, 2);
    // Two tensors back to back (they merge), a gap, then a third.
    const declared: [number, number][] = [[100, 1500], [1600, 900], [4000, 2600]];
    for (const [o, l] of declared) ra.expect(o, l);
    // Read them as a stream would: chunks of 300 bytes, two in flight at a time.
    const reads: [number, number][] = [];
    for (const [o, l] of declared) for (let at = 0; at < l; at += 300) reads.push([o + at, Math.min(300, l - at)]);
    for (let i = 0; i < reads.length; i += 2) {
      const pair = reads.slice(i, i + 2);
      const got = await Promise.all(pair.map(([o, l]) => ra.read(o, l, new Uint8Array(l))));
      pair.forEach(([o, l], k) => expect(Buffer.from(got[k]).equals(Buffer.from(src.bytes.subarray(o, o + l)))).toBe(true));
    }
    // Every fetched byte was declared, and fetched once.
    const fetched = new Map<number, number>();
    for (const [o, l] of src.fetches) for (let b = o; b < o + l; b++) fetched.set(b, (fetched.get(b) ?? 0) + 1);
    for (const [b, n] of fetched) {
      expect(covered(declared, b), `byte ${b}`).toBe(true);
      expect(n, `byte ${b}`).toBe(1);
    }
    expect(fetched.size).toBe(1500 + 900 + 2600);
    // In windows of up to 1000 bytes, not one request per 300-byte read.
    expect(src.fetches.length).toBe(2 + 1 + 3);
    expect(Math.max(...src.fetches.map(([, l]) => l))).toBe(1000);
    await ra.close();
  });

  it('reads outside the plan, or behind it, straight from the source', async () => {
    const src = source(5000);
    const ra = new ReadAhead(src.fetch, 1000, 2);
    ra.expect(1000, 2000);
    const out = await ra.read(4000, 500, new Uint8Array(600));
    expect(Buffer.from(out).equals(Buffer.from(src.bytes.subarray(4000, 4500)))).toBe(true);
    expect(src.fetches).toEqual([[4000, 500]]);
    // A read straddling the plan's start: the part before it directly, the rest from a window.
    const a = await ra.read(900, 300, new Uint8Array(300));
    expect(Buffer.from(a).equals(Buffer.from(src.bytes.subarray(900, 1200)))).toBe(true);
    expect(src.fetches[1]).toEqual([900, 300]);
    // Behind the plan's cursor, once its window is gone: direct again, and still right.
    for (let at = 1000; at < 3000; at += 500) await ra.read(at, 500, new Uint8Array(500));
    const again = await ra.read(1000, 100, new Uint8Array(100));
    expect(Buffer.from(again).equals(Buffer.from(src.bytes.subarray(1000, 1100)))).toBe(true);
    expect(src.fetches[src.fetches.length - 1]).toEqual([1000, 100]);
    await ra.close();
  });

  it('a failed window fails its reads, and the bytes are fetched again on the next read', async () => {
    const src = source(4000);
    let fail = true;
    const ra = new ReadAhead(
      async (o, l, into) => {
        if (fail && o === 0) {
          fail = false;
          throw new Error('connection reset');
        }
        return src.fetch(o, l, into);
      },
      1000,
      2,
    );
    ra.expect(0, 4000);
    await expect(ra.read(0, 500, new Uint8Array(500))).rejects.toThrow(/connection reset/);
    const got = await ra.read(0, 500, new Uint8Array(500));
    expect(Buffer.from(got).equals(Buffer.from(src.bytes.subarray(0, 500)))).toBe(true);
    await ra.close();
  });

  it('reuses window buffers across sources, never more than were in use at once, and never a failed one', async () => {
    const src = source(8000);
    const buffers = new Set<ArrayBufferLike>();
    let failNext = false;
    const failed: ArrayBufferLike[] = [];
    const fetch = async (o: number, l: number, into: Uint8Array) => {
      if (into.length > 100) buffers.add(into.buffer); // windows only, not direct reads into the caller's buffer
      if (failNext && into.length > 100) {
        failNext = false;
        failed.push(into.buffer);
        throw new Error('reset');
      }
      return src.fetch(o, l, into);
    };
    const readAll = async (ra: ReadAhead, from: number, to: number) => {
      ra.expect(from, to - from);
      for (let at = from; at < to; at += 250) {
        const got = await ra.read(at, 250, new Uint8Array(250));
        expect(Buffer.from(got).equals(Buffer.from(src.bytes.subarray(at, at + 250)))).toBe(true);
      }
    };
    // Two sources at once, two windows each: four buffers in use at most.
    const a = new ReadAhead(fetch, 1000, 2);
    const b = new ReadAhead(fetch, 1000, 2);
    await Promise.all([readAll(a, 0, 4000), readAll(b, 4000, 8000)]);
    await Promise.all([a.close(), b.close()]);
    expect(buffers.size).toBe(4);
    // The next sources take the same buffers.
    const c = new ReadAhead(fetch, 1000, 2);
    const d = new ReadAhead(fetch, 1000, 2);
    await Promise.all([readAll(c, 0, 4000), readAll(d, 4000, 8000)]);
    await Promise.all([c.close(), d.close()]);
    expect(buffers.size).toBe(4);
    // A window whose fetch failed may still be written by pieces in flight: its buffer is not reused.
    failNext = true;
    const e = new ReadAhead(fetch, 1000, 2);
    e.expect(0, 2000);
    await expect(e.read(0, 250, new Uint8Array(250))).rejects.toThrow(/reset/);
    await readAll(e, 250, 2000);
    await e.close();
    // Four in use again: the three good buffers and a new one, not the failed one.
    buffers.clear();
    const g = new ReadAhead(fetch, 1000, 2);
    const h = new ReadAhead(fetch, 1000, 2);
    await Promise.all([readAll(g, 0, 4000), readAll(h, 4000, 8000)]);
    await Promise.all([g.close(), h.close()]);
    expect(failed.length).toBe(1);
    expect(buffers.size).toBe(4);
    expect(buffers.has(failed[0])).toBe(false);
  });
});
