import { describe, it, expect } from 'vitest';
import path from 'node:path';
import { mkdir, writeFile } from 'node:fs/promises';
import { runCli } from './helpers/cli.js';
import { withTempDir } from './helpers/models.js';
import fc from 'fast-check';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { DTYPE_SIZES, type DType } from '../lib/format/dtype.js';
import type { ByteSource } from '../lib/storage/types.js';
import {
  MAX_HEADER_LENGTH,
  SafetensorsError,
  elementCount,
  encodeHeader,
  maxHeaderLength,
  parseHeader,
  readHeader,
  readTensorBytes,
  type SafetensorsHeader,
} from '../lib/format/safetensors.js';
import { fixturesDir } from './helpers/fixtures.js';

class MemorySource implements ByteSource {
  constructor(
    readonly name: string,
    private readonly bytes: Uint8Array,
  ) {}
  get size(): number {
    return this.bytes.length;
  }
  async read(offset: number, length: number, into?: Uint8Array): Promise<Uint8Array> {
    if (offset < 0 || length < 0 || offset + length > this.bytes.length) throw new RangeError(`short read at ${offset}+${length}`);
    const out = into ? into.subarray(0, length) : new Uint8Array(length);
    out.set(this.bytes.subarray(offset, offset + length));
    return out;
  }
  async close(): Promise<void> {}
}

const enc = new TextEncoder();

/** A file: u64 N, the header bytes as given, then `dataLength` zero bytes. */
function fileOf(header: string | Uint8Array, dataLength = 0, n?: number | bigint): Uint8Array {
  const h = typeof header === 'string' ? enc.encode(header) : header;
  const out = new Uint8Array(8 + h.length + dataLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(n ?? h.length), true);
  out.set(h, 8);
  return out;
}

const src = (bytes: Uint8Array, name = 'bad.safetensors') => new MemorySource(name, bytes);
const entry = (dtype: string, shape: unknown, offsets: unknown) => ({ dtype, shape, data_offsets: offsets });

async function expectRule(bytes: Uint8Array, rule: string, tensor?: string): Promise<void> {
  const err = await readHeader(src(bytes)).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(SafetensorsError);
  const e = err as SafetensorsError;
  expect(e.rule).toBe(rule);
  expect(e.file).toBe('bad.safetensors');
  expect(e.tensor).toBe(tensor);
  expect(e.message).toContain('bad.safetensors');
  expect(e.message).toContain(`[rule: ${rule}]`);
  // Names are quoted as JSON, so control characters in them are escaped.
  if (tensor !== undefined) expect(e.message).toContain(`tensor ${JSON.stringify(tensor)}`);
  await expectCliRefuses(bytes, rule);
}

/** The same file as a checkpoint given to `paramdelta compute`: exit 2, the rule named, no output at all. */
async function expectCliRefuses(bytes: Uint8Array, rule: string): Promise<void> {
  await withTempDir(async (tmp) => {
    const model = path.join(tmp, 'model');
    await mkdir(model);
    await writeFile(path.join(model, 'model.safetensors'), bytes);
    const r = await runCli(['compute', '--base', model, '--post', model, '--out', path.join(tmp, 'out')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(path.join(model, 'model.safetensors'));
    expect(r.stderr).toContain(`[rule: ${rule}]`);
    expect(await readdir(tmp)).toEqual(['model']);
    expect(Buffer.from(await readFile(path.join(model, 'model.safetensors'))).equals(Buffer.from(bytes))).toBe(true);
  });
}

function f16(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const frac = bits & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

function decode(dtype: DType, b: Uint8Array): number[] {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const n = b.byteLength / DTYPE_SIZES[dtype];
  const get: Record<string, (i: number) => number> = {
    U8: (i) => v.getUint8(i),
    I8: (i) => v.getInt8(i),
    U16: (i) => v.getUint16(2 * i, true),
    I16: (i) => v.getInt16(2 * i, true),
    U32: (i) => v.getUint32(4 * i, true),
    I32: (i) => v.getInt32(4 * i, true),
    F16: (i) => f16(v.getUint16(2 * i, true)),
    F32: (i) => v.getFloat32(4 * i, true),
    F64: (i) => v.getFloat64(8 * i, true),
  };
  return Array.from({ length: n }, (_, i) => get[dtype](i));
}

describe('safetensors samples', () => {
  const dir = join(fixturesDir, 'safetensors-samples');
  // The samples hold -3..2 in each dtype; unsigned ones wrap.
  const expected: Record<string, [DType, number[]]> = {
    B: ['U8', [253, 254, 255, 0, 1, 2]],
    H: ['U16', [65533, 65534, 65535, 0, 1, 2]],
    I: ['U32', [4294967293, 4294967294, 4294967295, 0, 1, 2]],
    b: ['I8', [-3, -2, -1, 0, 1, 2]],
    h: ['I16', [-3, -2, -1, 0, 1, 2]],
    i: ['I32', [-3, -2, -1, 0, 1, 2]],
    e: ['F16', [-3, -2, -1, 0, 1, 2]],
    f: ['F32', [-3, -2, -1, 0, 1, 2]],
    d: ['F64', [-3, -2, -1, 0, 1, 2]],
  };

  it('parses every sample file', async () => {
    const files = (await readdir(dir)).filter((f) => f.endsWith('.safetensors'));
    expect(files).toHaveLength(10);
    for (const f of files) {
      const h = await readHeader(src(await readFile(join(dir, f)), f));
      expect(h.file).toBe(f);
      expect({ ...h.metadata }).toEqual({ test: 'a' });
      expect(h.tensors.length).toBe(f === 'overall.safetensors' ? 9 : 1);
    }
  });

  it('reads each per-dtype tensor, matching overall.safetensors', async () => {
    const overallSrc = src(await readFile(join(dir, 'overall.safetensors')), 'overall.safetensors');
    const overall = await readHeader(overallSrc);
    expect(overall.tensors.map((t) => t.name)).toEqual(['B', 'H', 'I', 'b', 'd', 'e', 'f', 'h', 'i']);
    for (const [name, [dtype, values]] of Object.entries(expected)) {
      const s = src(await readFile(join(dir, `${name}.safetensors`)), `${name}.safetensors`);
      const h = await readHeader(s);
      const t = h.byName.get(name)!;
      expect(t).toMatchObject({ name, dtype, shape: [6], begin: 0, end: 6 * DTYPE_SIZES[dtype] });
      const bytes = await readTensorBytes(s, h, t);
      expect(decode(dtype, bytes)).toEqual(values);
      const o = overall.byName.get(name)!;
      expect(o).toMatchObject({ dtype, shape: [6] });
      expect(await readTensorBytes(overallSrc, overall, o)).toEqual(bytes);
    }
  });
});

describe('readTensorBytes', () => {
  async function sample() {
    const s = src(await readFile(join(fixturesDir, 'safetensors-samples', 'overall.safetensors')), 'overall.safetensors');
    return { s, h: await readHeader(s) };
  }

  it('reads a sub-range, optionally into a given buffer', async () => {
    const { s, h } = await sample();
    const t = h.byName.get('f')!; // F32 -3..2
    expect(decode('F32', await readTensorBytes(s, h, t, 8, 12))).toEqual([-1, 0, 1]);
    expect(decode('F32', await readTensorBytes(s, h, t, 16))).toEqual([1, 2]);
    const into = new Uint8Array(4);
    const got = await readTensorBytes(s, h, t, 20, 4, into);
    expect(got.buffer).toBe(into.buffer);
    expect(decode('F32', into)).toEqual([2]);
    expect(await readTensorBytes(s, h, t, 24, 0)).toHaveLength(0);
  });

  it('rejects ranges beyond the tensor', async () => {
    const { s, h } = await sample();
    const t = h.byName.get('f')!;
    for (const [offset, length] of [
      [0, 25],
      [20, 8],
      [25, undefined],
      [-1, 4],
      [0, -1],
      [1.5, 2],
    ] as [number, number | undefined][]) {
      const p = readTensorBytes(s, h, t, offset, length);
      await expect(p).rejects.toBeInstanceOf(SafetensorsError);
      await expect(p).rejects.toMatchObject({ rule: 'read-range', tensor: 'f', file: 'overall.safetensors' });
    }
  });
});

describe('validation', () => {
  const ok = (tensors: Record<string, unknown>, extra = '') => JSON.stringify(tensors) + extra;

  it('accepts surrounding whitespace and an empty header with no data', async () => {
    const h = await readHeader(src(fileOf(` \t\r\n${ok({ a: entry('U8', [2], [0, 2]) })}\n \t\r`, 2)));
    expect(h.tensors.map((t) => t.name)).toEqual(['a']);
    expect(h.metadata).toBeNull();
    const empty = await readHeader(src(fileOf('{}')));
    expect(empty).toMatchObject({ headerLength: 2, dataStart: 10, fileSize: 10, tensors: [] });
  });

  it('file-too-small', async () => {
    await expectRule(new Uint8Array(7), 'file-too-small');
  });

  it('header-too-large', async () => {
    await expectRule(fileOf('{}', 0, MAX_HEADER_LENGTH + 1), 'header-too-large');
    await expectRule(fileOf('{}', 0, 2n ** 64n - 1n), 'header-too-large');
  });

  it('header-past-eof', async () => {
    await expectRule(fileOf('{}', 0, 3), 'header-past-eof');
  });

  it('header-utf8', async () => {
    await expectRule(fileOf(new Uint8Array([0x7b, 0x22, 0xc3, 0x28, 0x22, 0x7d])), 'header-utf8');
  });

  it('header-json', async () => {
    await expectRule(fileOf('{"a":'), 'header-json');
    await expectRule(fileOf('{} {}'), 'header-json');
    // A byte-order mark is not JSON whitespace and must not be silently dropped.
    await expectRule(fileOf(new Uint8Array([0xef, 0xbb, 0xbf, 0x7b, 0x7d])), 'header-json');
  });

  // Found by fuzzing (bench/chaos/fuzz.ts): a shape nested 10,000 deep made the error message's
  // JSON.stringify overflow the stack (a RangeError, so exit 3), and 6 MB of brackets took JSON.parse 2 s.
  it('header-depth', async () => {
    const deep = (d: number) => '['.repeat(d) + ']'.repeat(d);
    await expectRule(fileOf(`{"t":{"dtype":"F32","shape":${deep(10_000)},"data_offsets":[0,0]}}`), 'header-depth');
    await expectRule(fileOf(`{"t":${deep(3_000_000)}}`), 'header-depth');
    await expectRule(fileOf(`{"__metadata__":{"a":${deep(65)}}}`), 'header-depth');
    // 64 levels are still parsed (and rejected for what they are); brackets inside strings do not count.
    await expectRule(fileOf(`{"t":{"dtype":"F32","shape":${deep(62)},"data_offsets":[0,0]}}`), 'shape', 't');
    const h = await readHeader(src(fileOf(`{"__metadata__":{"a":"${'['.repeat(100)}\\\\\\"]"}}`)));
    expect(h.metadata).toEqual({ a: `${'['.repeat(100)}\\"]` });
  });

  it('quotes at most a little of a long header value in its message', async () => {
    const shape = Array.from({ length: 100_000 }, () => -1);
    const err = await readHeader(src(fileOf(ok({ t: entry('U8', shape, [0, 0]) })))).catch((e: unknown) => e);
    expect(err).toMatchObject({ rule: 'shape', tensor: 't' });
    expect((err as Error).message.length).toBeLessThan(300);
  });

  it('header-not-object', async () => {
    for (const h of ['[]', 'null', '"x"', '3']) await expectRule(fileOf(h), 'header-not-object');
  });

  it('metadata', async () => {
    await expectRule(fileOf('{"__metadata__":{"a":1}}'), 'metadata');
    await expectRule(fileOf('{"__metadata__":["a"]}'), 'metadata');
    await expectRule(fileOf('{"__metadata__":{"a":"x","a":"y"}}'), 'metadata');
    await expectRule(fileOf('{"__metadata__":{},"__metadata__":{}}'), 'metadata');
  });

  it('tensor-entry', async () => {
    await expectRule(fileOf(ok({ t: 5 })), 'tensor-entry', 't');
    await expectRule(fileOf(ok({ t: [] })), 'tensor-entry', 't');
    await expectRule(fileOf(ok({ t: { dtype: 'U8', shape: [0] } })), 'tensor-entry', 't');
    await expectRule(fileOf(ok({ t: { ...entry('U8', [0], [0, 0]), extra: 1 } })), 'tensor-entry', 't');
    await expectRule(fileOf('{"t":{"dtype":"U8","shape":[0],"dtype":"U8","data_offsets":[0,0]}}'), 'tensor-entry', 't');
  });

  it('dtype', async () => {
    await expectRule(fileOf(ok({ t: entry('Q4', [0], [0, 0]) })), 'dtype', 't');
    await expectRule(fileOf(ok({ t: { dtype: 4, shape: [0], data_offsets: [0, 0] } })), 'dtype', 't');
    await expectRule(fileOf(ok({ t: entry('toString', [0], [0, 0]) })), 'dtype', 't');
  });

  it('shape', async () => {
    for (const shape of [[-1], [1.5], ['2'], 2, [2 ** 53]]) {
      await expectRule(fileOf(ok({ t: entry('U8', shape, [0, 0]) })), 'shape', 't');
    }
  });

  it('data-offsets', async () => {
    for (const offsets of [[2, 1], [0], [0, 1, 2], [-1, 0], [0, 0.5], '0,1', [0, 2 ** 53]]) {
      await expectRule(fileOf(ok({ t: entry('U8', [1], offsets) })), 'data-offsets', 't');
    }
  });

  it('byte-length', async () => {
    await expectRule(fileOf(ok({ t: entry('F32', [2], [0, 4]) }), 4), 'byte-length', 't');
    await expectRule(fileOf(ok({ t: entry('F32', [2, 0], [0, 8]) }), 8), 'byte-length', 't');
    // Element count 2^54 overflows; the dtype size pushes 2^51 elements past 2^53 bytes.
    await expectRule(fileOf(ok({ t: entry('U8', [2 ** 27, 2 ** 27], [0, 0]) })), 'byte-length', 't');
    await expectRule(fileOf(ok({ t: entry('F64', [2 ** 51], [0, 0]) })), 'byte-length', 't');
  });

  it('offsets-tiling', async () => {
    const hole = ok({ a: entry('U8', [4], [0, 4]), b: entry('U8', [4], [8, 12]) });
    await expectRule(fileOf(hole, 12), 'offsets-tiling', 'b');
    const overlap = ok({ a: entry('U8', [4], [0, 4]), b: entry('U8', [4], [2, 6]) });
    await expectRule(fileOf(overlap, 6), 'offsets-tiling', 'b');
    await expectRule(fileOf(ok({ a: entry('U8', [4], [4, 8]) }), 8), 'offsets-tiling', 'a');
  });

  it('file-length', async () => {
    await expectRule(fileOf(ok({ a: entry('U8', [4], [0, 4]) }), 5), 'file-length');
    await expectRule(fileOf(ok({ a: entry('U8', [4], [0, 4]) }), 3), 'file-length');
    await expectRule(fileOf('{}', 1), 'file-length');
    await expectRule(fileOf('{"__metadata__":{}}', 8), 'file-length');
  });

  it('duplicate-name', async () => {
    await expectRule(fileOf(`{"a":${JSON.stringify(entry('U8', [0], [0, 0]))},"a":${JSON.stringify(entry('U8', [0], [0, 0]))}}`), 'duplicate-name', 'a');
    // Escapes decode before comparing: "\u0061" is "a".
    await expectRule(fileOf(`{"a":${JSON.stringify(entry('U8', [1], [0, 1]))},"\\u0061":${JSON.stringify(entry('U8', [1], [1, 2]))}}`, 2), 'duplicate-name', 'a');
  });

  it('name-nul', async () => {
    await expectRule(fileOf(ok({ 'a\0b': entry('U8', [0], [0, 0]) })), 'name-nul', 'a\0b');
  });

  it('name-empty', async () => {
    await expectRule(fileOf(ok({ '': entry('U8', [0], [0, 0]) })), 'name-empty', '');
  });

  it('keeps JSON order for zero-size tensors and names that look like indices', async () => {
    const text = `{"z":${JSON.stringify(entry('U8', [0], [0, 0]))},"b":${JSON.stringify(entry('U8', [2], [0, 2]))},"1":${JSON.stringify(entry('U8', [0], [0, 0]))},"0":${JSON.stringify(entry('U8', [1], [2, 3]))}}`;
    const h = parseHeader('x', enc.encode(text), 8 + enc.encode(text).length + 3);
    expect(h.tensors.map((t) => t.name)).toEqual(['z', '1', 'b', '0']);
  });

  it('elementCount', () => {
    expect(elementCount([])).toBe(1);
    expect(elementCount([3, 0, 5])).toBe(0);
    expect(elementCount([2 ** 26, 2 ** 26])).toBe(2 ** 52);
    expect(() => elementCount([2 ** 26, 2 ** 26, 2])).toThrow(RangeError);
    expect(() => elementCount([2 ** 27, 2 ** 27])).toThrow(RangeError);
  });
});

describe('encodeHeader', () => {
  const dtypes = Object.keys(DTYPE_SIZES) as DType[];
  const nameChars = fc.constantFrom('a', 'Z', '.', '"', '\\', '/', '\n', '\t', '\u0001', '\u2028', 'é', '漢', '😀', '\ud800', ' ', '0');
  const name = fc
    .oneof(fc.string({ unit: nameChars, minLength: 1, maxLength: 6 }), fc.string({ unit: 'binary', minLength: 1, maxLength: 6 }))
    .filter((s) => !s.includes('\0') && s !== '__metadata__');
  const shape = fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 3 });
  const metadata = fc.option(fc.dictionary(fc.string({ maxLength: 5 }), fc.string({ maxLength: 5 }), { maxKeys: 3 }));

  async function roundTrip(bytes: Uint8Array, dataLength: number): Promise<SafetensorsHeader> {
    const file = new Uint8Array(bytes.length + dataLength);
    file.set(bytes);
    return readHeader(src(file, 'prop.safetensors'));
  }

  it('round-trips through readHeader', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uniqueArray(fc.record({ name, dtype: fc.constantFrom(...dtypes), shape }), { selector: (t) => t.name, maxLength: 6 }),
        metadata,
        async (tensors, meta) => {
          const { bytes, offsets, dataLength } = encodeHeader(tensors, meta);
          const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
          expect(n % 8).toBe(0);
          expect(bytes.length).toBe(8 + n);
          const h = await roundTrip(bytes, dataLength);
          expect(h.headerLength).toBe(n);
          expect(h.tensors.map((t) => [t.name, t.dtype, t.shape, [t.begin, t.end]])).toEqual(tensors.map((t, i) => [t.name, t.dtype, t.shape, offsets[i]]));
          expect(h.metadata === null ? null : Object.entries(h.metadata)).toEqual(meta === null ? null : Object.entries(meta));
          expect(dataLength).toBe(tensors.reduce((s, t) => s + elementCount(t.shape) * DTYPE_SIZES[t.dtype], 0));
        },
      ),
      { numRuns: 300 },
    );
  });

  it('fits any dtype choice into the space maxHeaderLength reserves', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(
          fc.record({ name, shape: fc.array(fc.integer({ min: 0, max: 3000 }), { maxLength: 3 }), dtypes: fc.uniqueArray(fc.constantFrom(...dtypes), { minLength: 1, maxLength: 4 }) }),
          { selector: (t) => t.name, maxLength: 5 },
        ),
        fc.array(fc.nat(), { minLength: 5, maxLength: 5 }),
        metadata,
        (tensors, picks, meta) => {
          const reserve = maxHeaderLength(tensors, meta);
          expect(reserve % 8).toBe(0);
          const chosen = tensors.map((t, i) => ({ name: t.name, shape: t.shape, dtype: t.dtypes[picks[i] % t.dtypes.length] }));
          const { bytes, dataLength } = encodeHeader(chosen, meta, reserve);
          expect(bytes.length).toBe(8 + reserve);
          // Data areas here can be gigabytes, so parse the header against the file size alone.
          const h = parseHeader('prop.safetensors', bytes.subarray(8), bytes.length + dataLength);
          expect(h.tensors.map((t) => t.dtype)).toEqual(chosen.map((t) => t.dtype));
        },
      ),
      { numRuns: 300 },
    );
  });

  it('pads to exactly reserve and rejects a reserve too small or not a multiple of 8', () => {
    const t = [{ name: 'w', dtype: 'F32' as DType, shape: [2] }];
    const natural = encodeHeader(t, null).bytes.length - 8;
    expect(encodeHeader(t, null, natural + 16).bytes.length).toBe(8 + natural + 16);
    expect(() => encodeHeader(t, null, natural - 8)).toThrow(RangeError);
    expect(() => encodeHeader(t, null, natural + 4)).toThrow(RangeError);
    expect(() => encodeHeader([...t, ...t], null)).toThrow(RangeError);
    expect(() => encodeHeader([{ name: '', dtype: 'U8', shape: [] }], null)).toThrow(RangeError);
  });

  it('reproduces the reference files byte for byte', async () => {
    const files: string[] = [];
    for (const family of ['tiny-llama-bf16', 'tiny-llama-f16', 'tiny-llama-f32', 'stories260K-bf16', 'stories260K-f32']) {
      for (const f of await readdir(join(fixturesDir, family), { recursive: true })) {
        if (f.endsWith('.safetensors')) files.push(join(fixturesDir, family, f));
      }
    }
    expect(files.length).toBeGreaterThanOrEqual(4);
    for (const path of [
      'tiny-llama-bf16/expected/apply-post-1.0/model.safetensors',
      'tiny-llama-f16/expected/apply-post-1.0/model.safetensors',
      'tiny-llama-f32/expected/apply-post-1.0/model.safetensors',
      'tiny-llama-bf16/expected/delta-post/model.safetensors',
    ]) {
      expect(files).toContain(join(fixturesDir, path));
    }
    for (const path of files) {
      const bytes = new Uint8Array(await readFile(path));
      const h = await readHeader(src(bytes, path));
      const out = encodeHeader(h.tensors, { format: 'pt' });
      expect(Buffer.from(out.bytes).equals(Buffer.from(bytes.subarray(0, h.dataStart))), path).toBe(true);
      expect(out.dataLength).toBe(h.fileSize - h.dataStart);
      expect(out.offsets).toEqual(h.tensors.map((t) => [t.begin, t.end]));
    }
  });
});
