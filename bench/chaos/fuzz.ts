/**
 * Parser fuzzing for the safetensors reader (lib/format/safetensors.ts), with fast-check: seeded and
 * reproducible. `npm test` runs it with 20,000 inputs (test/safetensors.fuzz.test.ts), `npm run chaos`
 * with 1,000,000.
 *
 * Every input goes through `readHeader` over an in-memory ByteSource that records each read, and, when
 * the header is accepted, every tensor is read back with `readTensorBytes`. Properties:
 *   - the only exception is the reader's own SafetensorsError;
 *   - no input takes longer than `maxMs` (1 s);
 *   - no read reaches outside the file;
 *   - an accepted header describes the file exactly (tensors tile the data area, byte lengths match);
 *   - a file written by encodeHeader reads back as written.
 * Inputs: valid files from encodeHeader; byte-level mutations of those and of the safetensors
 * project's sample files (flips, truncation, appended and inserted bytes, length-prefix edits,
 * invalid UTF-8, a BOM); JSON-level edits of valid headers (duplicate keys, huge, negative and
 * fractional numbers, overlapping and holey offsets, wrong dtype strings, missing and extra fields,
 * nested junk, non-object roots); and plain random bytes.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { DTYPE_SIZES, type DType } from '../../lib/format/dtype.js';
import { SafetensorsError, encodeHeader, readHeader, readTensorBytes, type PlannedTensor, type SafetensorsHeader } from '../../lib/format/safetensors.js';
import type { ByteSource } from '../../lib/storage/types.js';

export const DEFAULT_FUZZ_SEED = 0x5afe7e45;

export interface FuzzOptions {
  runs: number;
  seed?: number;
  /** Folder of seed files (the safetensors project's samples). */
  samplesDir?: string;
  /** Longest time one input may take, in ms. */
  maxMs?: number;
  /** Called every `progressEvery` inputs. */
  onProgress?: (done: number) => void;
  progressEvery?: number;
}

export interface FuzzReport {
  runs: number;
  seed: number;
  ms: number;
  /** Inputs the reader accepted, and rejections by rule. */
  accepted: number;
  rejected: Record<string, number>;
  /** Inputs by generator. */
  kinds: Record<string, number>;
  slowestMs: number;
  reads: number;
}

/** An in-memory file that records every read, and refuses (and remembers) any read outside it. */
export class RecordingSource implements ByteSource {
  readonly reads: [number, number][] = [];
  readonly outside: string[] = [];
  constructor(
    readonly name: string,
    private readonly bytes: Uint8Array,
  ) {}
  get size(): number {
    return this.bytes.length;
  }
  async read(offset: number, length: number, into?: Uint8Array): Promise<Uint8Array> {
    this.reads.push([offset, length]);
    const ok = Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0 && offset + length <= this.bytes.length;
    if (!ok || (into && into.length < length)) {
      this.outside.push(`read(${offset}, ${length}${into ? `, into ${into.length} bytes` : ''}) of a ${this.bytes.length}-byte file`);
      throw new Error('fuzz: read outside the file');
    }
    const out = into ? into.subarray(0, length) : new Uint8Array(length);
    out.set(this.bytes.subarray(offset, offset + length));
    return out;
  }
  async close(): Promise<void> {}
}

// ---------------------------------------------------------------------------------------------------------------
// Generators

interface Case {
  kind: string;
  bytes: Uint8Array;
  /** For files written by encodeHeader: what must read back. */
  expect?: { tensors: PlannedTensor[]; metadata: Record<string, string> | null; offsets: [number, number][] };
}

const DTYPES = Object.keys(DTYPE_SIZES) as DType[];
const enc = new TextEncoder();

/** xorshift32 fill, so data areas cost one integer of generated entropy. */
function filled(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = s & 0xff;
  }
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function u64(n: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, n), true);
  return b;
}

const tensorName = fc
  .oneof(
    { arbitrary: fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 12 }), weight: 6 },
    { arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 8 }), weight: 2 },
    { arbitrary: fc.constantFrom('__proto__', 'constructor', 'toString', '0', '1', '10', 'model.layers.0.mlp.up_proj.weight', 'a"b', 'a\\b', '\u00e9', '\u{1f600}'), weight: 2 },
  )
  .filter((n) => n !== '' && !n.includes('\0') && n !== '__metadata__');

const plannedTensor = fc.record({
  name: tensorName,
  dtype: fc.constantFrom(...DTYPES),
  shape: fc.array(fc.nat(5), { maxLength: 3 }),
});

const metadataArb = fc.option(
  fc
    .uniqueArray(fc.tuple(fc.oneof(fc.string({ maxLength: 6 }), fc.constant('__proto__')), fc.string({ maxLength: 10 })), { selector: (e) => e[0], maxLength: 3 })
    .map((entries) => Object.fromEntries(entries) as Record<string, string>),
  { nil: null },
);

interface Layout {
  tensors: PlannedTensor[];
  metadata: Record<string, string> | null;
  extraPad: number;
  fill: number;
}

const layoutArb: fc.Arbitrary<Layout> = fc.record({
  tensors: fc.uniqueArray(plannedTensor, { selector: (t) => t.name, maxLength: 6 }),
  metadata: metadataArb,
  extraPad: fc.nat(3),
  fill: fc.integer(),
});

function encodeLayout(l: Layout): Case {
  const first = encodeHeader(l.tensors, l.metadata);
  const reserve = l.extraPad ? first.bytes.length - 8 + 8 * l.extraPad : undefined;
  const { bytes, offsets, dataLength } = reserve === undefined ? first : encodeHeader(l.tensors, l.metadata, reserve);
  return {
    kind: 'valid',
    bytes: concat(bytes, filled(dataLength, l.fill)),
    expect: { tensors: l.tensors, metadata: l.metadata, offsets },
  };
}

const validFile = layoutArb.map(encodeLayout);

function loadSamples(dir: string | undefined): Uint8Array[] {
  if (!dir) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.safetensors'))
    .sort()
    .map((f) => new Uint8Array(readFileSync(path.join(dir, f))));
}

// Byte-level mutations: positions and lengths are taken modulo the current size when applied.
type Mutation =
  | { op: 'flip'; at: number; bit: number }
  | { op: 'set'; at: number; value: number }
  | { op: 'truncate'; to: number }
  | { op: 'append'; bytes: Uint8Array }
  | { op: 'insert'; at: number; bytes: Uint8Array; inHeader: boolean }
  | { op: 'delete'; at: number; count: number }
  | { op: 'prefix'; value: bigint | 'header+1' | 'header-1' | 'size-8' | 'size-7' };

const JUNK_BYTES = [
  [0xef, 0xbb, 0xbf], // BOM
  [0xc0, 0x80], // overlong NUL
  [0xed, 0xa0, 0x80], // UTF-8 encoded surrogate
  [0xff],
  [0xf4, 0x90, 0x80, 0x80], // past U+10FFFF
  [0xe2, 0x82], // truncated sequence
  [0x00],
  [0x22], // "
  [0x5c], // backslash
  [0x7b], // {
  [0x7d], // }
  [0x5b, 0x5d], // []
  [0x2c], // ,
  [0x20, 0x09, 0x0a, 0x0d], // JSON whitespace
  [0x0b, 0x0c], // not JSON whitespace
].map((b) => new Uint8Array(b));

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('flip' as const), at: fc.nat(), bit: fc.nat(7) }),
  fc.record({ op: fc.constant('set' as const), at: fc.nat(), value: fc.constantFrom(0, 0x20, 0x22, 0x2c, 0x30, 0x39, 0x5b, 0x5d, 0x7b, 0x7d, 0x80, 0xff) }),
  fc.record({ op: fc.constant('truncate' as const), to: fc.nat() }),
  fc.record({ op: fc.constant('append' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
  fc.record({
    op: fc.constant('insert' as const),
    at: fc.nat(),
    bytes: fc.oneof(fc.constantFrom(...JUNK_BYTES), fc.uint8Array({ minLength: 1, maxLength: 8 })),
    inHeader: fc.boolean(),
  }),
  fc.record({ op: fc.constant('delete' as const), at: fc.nat(), count: fc.integer({ min: 1, max: 8 }) }),
  fc.record({
    op: fc.constant('prefix' as const),
    value: fc.oneof(
      fc.constantFrom<'header+1' | 'header-1' | 'size-8' | 'size-7'>('header+1', 'header-1', 'size-8', 'size-7'),
      fc.constantFrom(0n, 1n, 2n, 7n, 8n, 99_999_999n, 100_000_000n, 100_000_001n, 2n ** 31n, 2n ** 32n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 63n, 2n ** 64n - 1n),
      fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
      fc.bigInt({ min: 0n, max: 4096n }),
    ),
  }),
);

function headerLengthOf(b: Uint8Array): number {
  if (b.length < 8) return 0;
  const n = new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true);
  return n > BigInt(b.length - 8) ? b.length - 8 : Number(n);
}

function applyMutation(b: Uint8Array, m: Mutation): Uint8Array {
  switch (m.op) {
    case 'flip': {
      if (!b.length) return b;
      const c = b.slice();
      c[m.at % c.length] ^= 1 << m.bit;
      return c;
    }
    case 'set': {
      if (!b.length) return b;
      const c = b.slice();
      c[m.at % c.length] = m.value;
      return c;
    }
    case 'truncate':
      return b.subarray(0, m.to % (b.length + 1));
    case 'append':
      return concat(b, m.bytes);
    case 'insert': {
      // Inside the header, with the length prefix grown to match, so the parser sees the new bytes.
      if (m.inHeader && b.length >= 8) {
        const n = headerLengthOf(b);
        const at = 8 + (m.at % (n + 1));
        const out = concat(b.subarray(0, at), m.bytes, b.subarray(at));
        out.set(u64(BigInt(n + m.bytes.length)), 0);
        return out;
      }
      const at = m.at % (b.length + 1);
      return concat(b.subarray(0, at), m.bytes, b.subarray(at));
    }
    case 'delete': {
      if (!b.length) return b;
      const at = m.at % b.length;
      return concat(b.subarray(0, at), b.subarray(Math.min(b.length, at + m.count)));
    }
    case 'prefix': {
      if (b.length < 8) return b;
      const c = b.slice();
      const n = BigInt(headerLengthOf(b));
      const size = BigInt(b.length);
      const v = m.value === 'header+1' ? n + 1n : m.value === 'header-1' ? n - 1n : m.value === 'size-8' ? size - 8n : m.value === 'size-7' ? size - 7n : m.value;
      c.set(u64(v), 0);
      return c;
    }
  }
}

function mutated(seeds: Uint8Array[]): fc.Arbitrary<Case> {
  const source: fc.Arbitrary<Uint8Array> = seeds.length
    ? fc.oneof({ arbitrary: validFile.map((c) => c.bytes), weight: 2 }, { arbitrary: fc.constantFrom(...seeds), weight: 1 })
    : validFile.map((c) => c.bytes);
  return fc.tuple(source, fc.array(mutation, { minLength: 1, maxLength: 4 })).map(([b, ms]) => ({
    kind: 'mutated',
    bytes: ms.reduce(applyMutation, b),
  }));
}

// JSON-level edits of a valid header, written out as text so duplicates and odd spellings survive.

const NUMBERS = [
  '-1', '-0', '0.0', '0.5', '1.5', '1E2', '1e-7', '1e308', '1e309', '-1e309', '1e400', '9007199254740991', '9007199254740992',
  '9007199254740993', '18446744073709551615', '18446744073709551616', '123456789012345678901234567890',
];
const DTYPE_STRINGS = ['f32', 'F32 ', ' F32', 'F8', 'F8_E4M3FN', 'BF32', 'I4', 'Q8', '', '__proto__', 'toString', 'constructor', 'hasOwnProperty', 'F\u0000'];

function nested(depth: number, open: string, close: string): string {
  return open.repeat(depth) + close.repeat(depth);
}

/** Values for a field or a whole entry: odd numbers, wrong types, arbitrary JSON, nested junk (rarely very deep). */
const oddValue: fc.Arbitrary<string> = fc.oneof(
  { arbitrary: fc.constantFrom(...NUMBERS, 'null', 'true', 'false', '""', '"7"', '[]', '{}', '[[]]', '[{}]', '[null]', '[1,2,3]', '[-1,2]', '[2,1]', '[0]', '[0.5,1]', '[1e20,1e20]', '["0","4"]'), weight: 6 },
  { arbitrary: fc.constantFrom(...DTYPE_STRINGS).map((s) => JSON.stringify(s)), weight: 2 },
  { arbitrary: fc.tuple(fc.constantFrom(...NUMBERS, '0', '4', '8'), fc.constantFrom(...NUMBERS, '0', '4', '8')).map(([a, b]) => `[${a},${b}]`), weight: 3 },
  { arbitrary: fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)), weight: 3 },
  { arbitrary: fc.tuple(fc.integer({ min: 1, max: 300 }), fc.boolean()).map(([d, arr]) => (arr ? nested(d, '[', ']') : nested(d, '{"a":', '}').replace(/:}/, ':0}'))), weight: 1 },
  // Deep nesting: JSON.parse copes, but anything recursive over the parsed value would not.
  { arbitrary: fc.integer({ min: 1_000, max: 20_000 }).map((d) => nested(d, '[', ']')), weight: 1 },
);

/** Very deep nesting, megabytes of it: rare, since each costs milliseconds. */
const hugeNesting: fc.Arbitrary<string> = fc.integer({ min: 500_000, max: 3_000_000 }).map((d) => nested(d, '[', ']'));

type Pair = [key: string, value: string];

type JsonEdit =
  | { op: 'dup'; i: number }
  | { op: 'dupField'; i: number; field: number }
  | { op: 'dropField'; i: number; field: number }
  | { op: 'extraField'; i: number; key: string; value: string }
  | { op: 'setField'; i: number; field: number; value: string }
  | { op: 'shift'; i: number; end: boolean; by: number }
  | { op: 'move'; i: number; by: number }
  | { op: 'setEntry'; i: number; value: string }
  | { op: 'rename'; i: number; name: string }
  | { op: 'metadata'; value: string }
  | { op: 'dupMetadata' }
  | { op: 'root'; text: string }
  | { op: 'ws'; at: number; text: string };

const FIELDS = ['dtype', 'shape', 'data_offsets'] as const;

const jsonEdit: fc.Arbitrary<JsonEdit> = fc.oneof(
  fc.record({ op: fc.constant('dup' as const), i: fc.nat() }),
  fc.record({ op: fc.constant('dupField' as const), i: fc.nat(), field: fc.nat(2) }),
  fc.record({ op: fc.constant('dropField' as const), i: fc.nat(), field: fc.nat(2) }),
  fc.record({ op: fc.constant('extraField' as const), i: fc.nat(), key: fc.constantFrom('dtype', 'extra', '__proto__', 'data_offsets ', ''), value: oddValue }),
  { arbitrary: fc.record({ op: fc.constant('setField' as const), i: fc.nat(), field: fc.nat(2), value: oddValue }), weight: 4 },
  { arbitrary: fc.record({ op: fc.constant('shift' as const), i: fc.nat(), end: fc.boolean(), by: fc.oneof(fc.integer({ min: -16, max: 16 }), fc.constantFrom(2 ** 31, 2 ** 53, -(2 ** 53))) }), weight: 3 },
  // Both offsets moved together: the span still fits, so the data area gets a hole or an overlap.
  { arbitrary: fc.record({ op: fc.constant('move' as const), i: fc.nat(), by: fc.integer({ min: -16, max: 16 }) }), weight: 3 },
  fc.record({ op: fc.constant('setEntry' as const), i: fc.nat(), value: oddValue }),
  fc.record({ op: fc.constant('rename' as const), i: fc.nat(), name: fc.constantFrom('', '\u0000', 'a\u0000b', '__metadata__', '\ud800', 'x', 'y') }),
  fc.record({ op: fc.constant('metadata' as const), value: fc.oneof(oddValue, fc.constantFrom('{"a":1}', '{"a":"x","a":"y"}', '{"a":{"b":"c"}}', '{"__proto__":"x"}', '{"a":null}')) }),
  fc.record({ op: fc.constant('dupMetadata' as const) }),
  fc.record({ op: fc.constant('root' as const), text: fc.constantFrom('[]', '"x"', '0', 'null', 'true', '{', '}', '{}{}', '{"a":{}} x', '{"a":1,}', "{'a':1}", '{"a"}', '{,}') }),
  fc.record({ op: fc.constant('ws' as const), at: fc.nat(), text: fc.constantFrom(' ', '\t', '\n', '\r', '\u000b', '\u00a0', '\ufeff', '\u2028', '/**/') }),
);

function entryText(fields: Pair[]): string {
  return `{${fields.map(([k, v]) => `${k}:${v}`).join(',')}}`;
}

/** Applies edits to a valid layout's header; also returns how long the data area must be to match the (edited) offsets. */
function editedHeader(l: Layout, edits: JsonEdit[], deep: string | null): { text: string; dataLength: number } {
  const { offsets, dataLength } = encodeHeader(l.tensors, l.metadata);
  const meta: string | null = l.metadata === null ? null : JSON.stringify(l.metadata);
  const offs = offsets.map((o) => [...o] as [number, number]);
  const entries: { name: string; fields: Pair[] | null; raw: string | null }[] = l.tensors.map((t) => ({
    name: JSON.stringify(t.name),
    fields: [
      ['"dtype"', JSON.stringify(t.dtype)],
      ['"shape"', JSON.stringify(t.shape)],
      ['"data_offsets"', ''], // filled in below, after shifts
    ],
    raw: null,
  }));
  let metaText = meta;
  let dupMeta = false;
  let root: string | null = null;
  const ws: { at: number; text: string }[] = [];
  const dups: number[] = [];
  const pick = (i: number) => (entries.length ? entries[i % entries.length] : null);
  for (const e of edits) {
    switch (e.op) {
      case 'dup':
        if (entries.length) dups.push(e.i % entries.length);
        break;
      case 'dupField': {
        const t = pick(e.i);
        if (t?.fields) t.fields.push([...t.fields[e.field % t.fields.length]]);
        break;
      }
      case 'dropField': {
        const t = pick(e.i);
        if (t?.fields?.length) t.fields.splice(e.field % t.fields.length, 1);
        break;
      }
      case 'extraField': {
        const t = pick(e.i);
        t?.fields?.push([JSON.stringify(e.key), e.value]);
        break;
      }
      case 'setField': {
        const t = pick(e.i);
        const f = t?.fields?.find(([k]) => k === `"${FIELDS[e.field]}"`);
        if (f) f[1] = e.value;
        break;
      }
      case 'shift':
        if (offs.length) offs[e.i % offs.length][e.end ? 1 : 0] += e.by;
        break;
      case 'move':
        if (offs.length) {
          offs[e.i % offs.length][0] += e.by;
          offs[e.i % offs.length][1] += e.by;
        }
        break;
      case 'setEntry': {
        const t = pick(e.i);
        if (t) t.raw = e.value;
        break;
      }
      case 'rename': {
        const t = pick(e.i);
        if (t) t.name = JSON.stringify(e.name);
        break;
      }
      case 'metadata':
        metaText = e.value;
        break;
      case 'dupMetadata':
        dupMeta = true;
        break;
      case 'root':
        root = e.text;
        break;
      case 'ws':
        ws.push(e);
        break;
    }
  }
  entries.forEach((t, i) => {
    const f = t.fields?.find(([k, v]) => k === '"data_offsets"' && v === '');
    if (f) f[1] = `[${offs[i][0]},${offs[i][1]}]`;
  });
  if (deep !== null && entries.length) entries[0].raw = deep;
  const pairs: string[] = [];
  if (metaText !== null) pairs.push(`"__metadata__":${metaText}`);
  entries.forEach((t, i) => {
    const text = `${t.name}:${t.raw ?? entryText(t.fields ?? [])}`;
    pairs.push(text);
    for (const d of dups) if (d === i) pairs.push(text);
  });
  if (dupMeta && metaText !== null) pairs.push(`"__metadata__":${metaText}`);
  let text = root ?? `{${pairs.join(',')}}`;
  for (const w of ws) {
    // Between tokens: only after a structural character, where JSON whitespace is legal.
    const spots = [...text.matchAll(/[{}[\]:,]/g)].map((m) => (m.index ?? 0) + 1);
    const at = spots.length ? spots[w.at % spots.length] : 0;
    text = text.slice(0, at) + w.text + text.slice(at);
  }
  const end = Math.max(0, ...offs.map((o) => o[1]).filter((x) => Number.isSafeInteger(x) && x >= 0 && x < 1 << 20));
  return { text, dataLength: Math.max(dataLength, end) };
}

const jsonEdited: fc.Arbitrary<Case> = fc
  .record({
    layout: layoutArb,
    edits: fc.array(jsonEdit, { minLength: 1, maxLength: 3 }),
    deep: fc.oneof({ arbitrary: fc.constant(null), weight: 4000 }, { arbitrary: hugeNesting, weight: 1 }),
    // How the data area is sized: as the edited offsets say, as the original said, or off by a little.
    data: fc.oneof(fc.constant(0), fc.constant(-1), fc.integer({ min: -3, max: 3 })),
    pad: fc.nat(7),
  })
  .map(({ layout, edits, deep, data, pad }) => {
    const { text, dataLength } = editedHeader(layout, edits, deep);
    const header = concat(enc.encode(text), new Uint8Array(pad).fill(0x20));
    const original = encodeHeader(layout.tensors, layout.metadata).dataLength;
    const n = data === -1 ? original : Math.max(0, dataLength + data);
    return { kind: deep === null ? 'json-edited' : 'json-deep', bytes: concat(u64(BigInt(header.length)), header, filled(n, layout.fill)) };
  });

const randomBytes: fc.Arbitrary<Case> = fc.oneof(
  fc.uint8Array({ maxLength: 64 }).map((bytes) => ({ kind: 'random', bytes })),
  // A plausible length prefix, then random bytes.
  fc.tuple(fc.nat(80), fc.uint8Array({ maxLength: 80 })).map(([n, body]) => ({ kind: 'random', bytes: concat(u64(BigInt(n)), body) })),
  // A plausible prefix and a JSON value of any shape as the header.
  fc.jsonValue({ maxDepth: 4 }).map((v) => {
    const h = enc.encode(JSON.stringify(v) ?? 'null');
    return { kind: 'random-json', bytes: concat(u64(BigInt(h.length)), h) };
  }),
);

export function fuzzCases(seeds: Uint8Array[]): fc.Arbitrary<Case> {
  return fc
    .oneof(
      { arbitrary: validFile, weight: 2 },
      { arbitrary: mutated(seeds), weight: 4 },
      { arbitrary: jsonEdited, weight: 4 },
      { arbitrary: randomBytes, weight: 1 },
    )
    // Counterexamples can be megabytes: fast-check prints this instead.
    .map((c) => Object.assign(c, { [fc.toStringMethod]: () => `${c.kind} input of ${describeBytes(c.bytes)}` }));
}

// ---------------------------------------------------------------------------------------------------------------
// The properties

function describeBytes(b: Uint8Array): string {
  const head = Buffer.from(b.subarray(0, 160)).toString('latin1').replace(/[^\x20-\x7e]/g, '.');
  return `${b.length} bytes: ${JSON.stringify(head)}${b.length > 160 ? '…' : ''}`;
}

/** An accepted header must describe the file exactly. */
function checkAccepted(h: SafetensorsHeader, size: number): void {
  const fail = (why: string) => {
    throw new Error(`accepted header is inconsistent: ${why}`);
  };
  if (h.fileSize !== size) fail(`fileSize ${h.fileSize} for a ${size}-byte file`);
  if (h.dataStart !== 8 + h.headerLength) fail(`dataStart ${h.dataStart} with headerLength ${h.headerLength}`);
  let pos = 0;
  for (const t of h.tensors) {
    const elements = t.shape.reduce((a, d) => a * d, 1);
    if (t.begin !== pos) fail(`tensor ${JSON.stringify(t.name)} begins at ${t.begin}, expected ${pos}`);
    if (t.end - t.begin !== elements * DTYPE_SIZES[t.dtype]) fail(`tensor ${JSON.stringify(t.name)} spans ${t.end - t.begin} bytes`);
    if (h.byName.get(t.name) !== t) fail(`byName misses ${JSON.stringify(t.name)}`);
    pos = t.end;
  }
  if (h.byName.size !== h.tensors.length) fail('duplicate names');
  if (h.dataStart + pos !== size) fail(`tensors end at ${h.dataStart + pos} of ${size}`);
}

function checkRoundTrip(h: SafetensorsHeader, want: NonNullable<Case['expect']>): void {
  const got = h.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, offsets: [t.begin, t.end] }));
  const expected = want.tensors.map((t, i) => ({ name: t.name, dtype: t.dtype, shape: [...t.shape], offsets: want.offsets[i] }));
  if (JSON.stringify(got) !== JSON.stringify(expected)) throw new Error(`round trip: read ${JSON.stringify(got)}, wrote ${JSON.stringify(expected)}`);
  const meta = (m: Record<string, string> | null) => (m === null ? null : JSON.stringify(Object.entries(m)));
  if (meta(h.metadata) !== meta(want.metadata)) throw new Error(`round trip: metadata ${meta(h.metadata)}, wrote ${meta(want.metadata)}`);
}

interface Tally {
  accepted: number;
  rejected: Record<string, number>;
  kinds: Record<string, number>;
  slowestMs: number;
  reads: number;
  done: number;
}

async function checkOne(c: Case, maxMs: number, tally: Tally | null): Promise<void> {
  const src = new RecordingSource('fuzz.safetensors', c.bytes);
  const t0 = performance.now();
  let header: SafetensorsHeader | undefined;
  let error: unknown;
  try {
    header = await readHeader(src);
    for (const t of header.tensors) {
      const got = await readTensorBytes(src, header, t);
      if (got.length !== t.end - t.begin) throw new Error(`read ${got.length} bytes of tensor ${JSON.stringify(t.name)}`);
    }
  } catch (e) {
    error = e;
  }
  const ms = performance.now() - t0;
  const where = () => `${c.kind} input of ${describeBytes(c.bytes)}`;
  if (src.outside.length) throw new Error(`read outside the file: ${src.outside[0]}; ${where()}`);
  if (error !== undefined && !(error instanceof SafetensorsError)) {
    throw new Error(`threw ${(error as Error)?.name ?? typeof error} (${String((error as Error)?.message ?? error).slice(0, 200)}), not a SafetensorsError; ${where()}`);
  }
  if (error instanceof SafetensorsError && (error.file !== src.name || !error.rule)) throw new Error(`SafetensorsError without file or rule: ${error.message}`);
  if (ms > maxMs) throw new Error(`took ${ms.toFixed(0)} ms (limit ${maxMs}); ${where()}`);
  if (header) checkAccepted(header, c.bytes.length);
  if (c.expect) {
    if (!header) throw new Error(`encodeHeader's own file was rejected: ${(error as Error).message}`);
    checkRoundTrip(header, c.expect);
  }
  if (tally) {
    tally.kinds[c.kind] = (tally.kinds[c.kind] ?? 0) + 1;
    if (header) tally.accepted++;
    else {
      const rule = (error as SafetensorsError).rule;
      tally.rejected[rule] = (tally.rejected[rule] ?? 0) + 1;
    }
    tally.slowestMs = Math.max(tally.slowestMs, ms);
    tally.reads += src.reads.length;
  }
}

/**
 * Runs `runs` generated inputs through the reader; throws (fast-check's report, with the seed and the
 * shrunk counterexample) when a property fails.
 */
export async function fuzzSafetensors(opts: FuzzOptions): Promise<FuzzReport> {
  const seed = opts.seed ?? DEFAULT_FUZZ_SEED;
  const maxMs = opts.maxMs ?? 1000;
  const every = opts.progressEvery ?? 100_000;
  const tally: Tally = { accepted: 0, rejected: {}, kinds: {}, slowestMs: 0, reads: 0, done: 0 };
  let shrinking = false;
  const t0 = performance.now();
  await fc.assert(
    fc.asyncProperty(fuzzCases(loadSamples(opts.samplesDir)), async (c) => {
      try {
        await checkOne(c, maxMs, shrinking ? null : tally);
      } catch (e) {
        shrinking = true; // fast-check now shrinks: stop counting
        throw e;
      }
      if (!shrinking && ++tally.done % every === 0) opts.onProgress?.(tally.done);
    }),
    { numRuns: opts.runs, seed },
  );
  return {
    runs: opts.runs,
    seed,
    ms: performance.now() - t0,
    accepted: tally.accepted,
    rejected: tally.rejected,
    kinds: tally.kinds,
    slowestMs: tally.slowestMs,
    reads: tally.reads,
  };
}
