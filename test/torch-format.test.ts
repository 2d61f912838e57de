import { describe, it, expect } from 'vitest';
import path from 'node:path';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { readFile } from 'node:fs/promises';
import fc from 'fast-check';
import { fixturesDir } from './helpers/fixtures.js';
import { loadTensors, type LoadedTensor } from './helpers/models.js';
import { PickleWriter, torchPickle, torchSave, zipArchive, type TorchTensorSpec } from './helpers/torch.js';
import { readTorchHeader, type TorchFileHeader } from '../lib/format/torch.js';
import { unpickleStateDict, PickleError } from '../lib/format/pickle.js';
import { readZipDirectory, ZipError } from '../lib/format/zip.js';
import { InputError } from '../lib/errors.js';
import { LocalFileSource } from '../lib/storage/local.js';
import type { ByteSource } from '../lib/storage/types.js';

const dataDir = fileURLToPath(new URL('./data/torch/', import.meta.url));

/** An in-memory ByteSource that records any read outside the file (which must never happen). */
class MemorySource implements ByteSource {
  readonly outside: string[] = [];
  constructor(
    readonly bytes: Uint8Array,
    readonly name = 'mem.bin',
  ) {}
  get size(): number {
    return this.bytes.length;
  }
  async read(offset: number, length: number, into?: Uint8Array): Promise<Uint8Array> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      this.outside.push(`${length}@${offset}`);
      throw new RangeError(`read of ${length} bytes at ${offset} is outside the ${this.size}-byte file`);
    }
    const out = into ? into.subarray(0, length) : new Uint8Array(length);
    out.set(this.bytes.subarray(offset, offset + length));
    return out;
  }
  async close(): Promise<void> {}
}

async function header(bytes: Uint8Array): Promise<TorchFileHeader> {
  return readTorchHeader(new MemorySource(bytes));
}

async function tensorBytes(src: ByteSource, h: TorchFileHeader): Promise<Map<string, LoadedTensor>> {
  const out = new Map<string, LoadedTensor>();
  for (const t of h.tensors) out.set(t.name, { dtype: t.dtype, shape: t.shape, bytes: Buffer.from(await src.read(t.offset, t.byteLength)) });
  return out;
}

async function readRealFile(...p: string[]): Promise<{ h: TorchFileHeader; tensors: Map<string, LoadedTensor> }> {
  const src = await LocalFileSource.open(path.join(dataDir, ...p));
  try {
    const h = await readTorchHeader(src);
    return { h, tensors: await tensorBytes(src, h) };
  } finally {
    await src.close();
  }
}

function expectSameTensors(got: Map<string, LoadedTensor>, want: Map<string, LoadedTensor>) {
  expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
  for (const [name, w] of want) {
    const g = got.get(name)!;
    expect({ name, dtype: g.dtype, shape: g.shape }).toEqual({ name, dtype: w.dtype, shape: w.shape });
    expect(g.bytes.equals(w.bytes), `${name} bytes`).toBe(true);
  }
}

const bytesOf = (...values: number[]) => new Uint8Array(new Float32Array(values).buffer);
const f32 = (name: string, shape: number[], ...values: number[]): TorchTensorSpec => ({ name, dtype: 'F32', shape, bytes: bytesOf(...values) });

describe('files written by real torch.save (test/data/torch, torch 1.13)', () => {
  it('the sharded base, the state_dict post and the all-views newbase hold the safetensors fixtures’ tensors', async () => {
    const fam = path.join(fixturesDir, 'tiny-llama-bf16');
    for (const [sub, files] of [
      ['base', ['pytorch_model-00001-of-00002.bin', 'pytorch_model-00002-of-00002.bin']],
      ['post', ['pytorch_model.bin']],
      ['newbase', ['model.pt']],
    ] as const) {
      const got = new Map<string, LoadedTensor>();
      for (const f of files) {
        const { h, tensors } = await readRealFile('tiny-llama-bf16', sub, f);
        expect(h.archive).toBe(f.replace(/\.(bin|pt)$/, '')); // torch 1.13 names the folder after the file
        for (const [n, t] of tensors) got.set(n, t);
      }
      expectSameTensors(got, await loadTensors(path.join(fam, sub)));
    }
  });

  it('newbase: every tensor views one storage, each at its own offset, in state-dict order', async () => {
    const { h } = await readRealFile('tiny-llama-bf16', 'newbase', 'model.pt');
    for (let i = 1; i < h.tensors.length; i++) expect(h.tensors[i].offset).toBe(h.tensors[i - 1].offset + h.tensors[i - 1].byteLength);
  });

  it('tied stories260K: lm_head.weight is a second tensor on embed_tokens’ storage', async () => {
    const { h, tensors } = await readRealFile('stories260K-f32', 'pytorch_model.bin');
    const emb = h.byName.get('model.embed_tokens.weight')!;
    const head = h.byName.get('lm_head.weight')!;
    expect(head.offset).toBe(emb.offset);
    expect(head.byteLength).toBe(emb.byteLength);
    const want = await loadTensors(path.join(fixturesDir, 'stories260K-f32'));
    want.set('lm_head.weight', want.get('model.embed_tokens.weight')!);
    expectSameTensors(tensors, want);
  });

  it('reads the header by range: a few small reads, none of them inside tensor data', async () => {
    const bytes = await readFile(path.join(dataDir, 'stories260K-f32', 'pytorch_model.bin'));
    const reads: [number, number][] = [];
    const src = new MemorySource(bytes);
    const read = src.read.bind(src);
    src.read = (offset, length, into) => (reads.push([offset, length]), read(offset, length, into));
    const h = await readTorchHeader(src);
    const total = reads.reduce((a, [, n]) => a + n, 0);
    expect(total).toBeLessThan(bytes.length / 50); // the directory, data.pkl and local headers: ~11 KB of 1 MB
    expect(reads.length).toBeLessThanOrEqual(6 + h.tensors.length);
    for (const [o, n] of reads) for (const t of h.tensors) expect(o + n <= t.offset || o >= t.offset + t.byteLength, `read ${n}@${o} inside ${t.name}`).toBe(true);
  });

  it('refuses a pickle that reduces os.system, naming the global, before any tensor is read', async () => {
    await expect(readRealFile('malicious', 'os-system.bin')).rejects.toThrow(/global posix\.system is not allowed/);
    await expect(readRealFile('malicious', 'os-system.bin')).rejects.toBeInstanceOf(PickleError);
  });

  it('refuses a pickle that builds a custom class', async () => {
    await expect(readRealFile('malicious', 'custom-class.bin')).rejects.toThrow(/global train\.Config is not allowed/);
  });
});

describe('the torch.save layout, written by the test', () => {
  const tensors: TorchTensorSpec[] = [
    f32('a', [2, 3], 1, 2, 3, 4, 5, 6),
    { name: 'a.T', dtype: 'F32', shape: [3], share: 'a', storageOffset: 3 },
    { name: 'h', dtype: 'F16', shape: [2], bytes: Uint8Array.from([0, 0x3c, 0, 0x40]) },
    { name: 'b', dtype: 'BOOL', shape: [3], bytes: Uint8Array.from([1, 0, 1]) },
    { name: 'i', dtype: 'I64', shape: [1, 1], bytes: new Uint8Array(new BigInt64Array([-7n]).buffer) },
    { name: 'u', dtype: 'U16', shape: [2], bytes: Uint8Array.from([1, 2, 3, 4]) },
    { name: 'f8', dtype: 'F8_E4M3', shape: [2, 1], bytes: Uint8Array.from([0x38, 0xb8]) },
    { name: 'empty', dtype: 'F32', shape: [0, 4], bytes: new Uint8Array(0) },
    { name: 'scalar', dtype: 'F64', shape: [], bytes: new Uint8Array(new Float64Array([2.5]).buffer) },
  ];
  const want = new Map<string, LoadedTensor>(
    tensors.map((t) => [
      t.name,
      { dtype: t.dtype, shape: t.shape, bytes: Buffer.from(t.share ? bytesOf(4, 5, 6) : t.bytes!) },
    ]),
  );

  for (const [label, opts] of [
    ['current torch records, archive/', {}],
    ['older torch (folder named after the file, no byteorder)', { archive: 'pytorch_model', current: false }],
    ['zip64 records', { zip64: true }],
    ['a plain dict rather than an OrderedDict', { ordered: false }],
  ] as const) {
    it(`reads every dtype, views, shared storages and empty tensors: ${label}`, async () => {
      const src = new MemorySource(torchSave(tensors, opts));
      const h = await readTorchHeader(src);
      expect(h.tensors.map((t) => t.name)).toEqual(tensors.map((t) => t.name));
      expectSameTensors(await tensorBytes(src, h), want);
      expect(src.outside).toEqual([]);
    });
  }

  it('keeps state-dict order although torch writes storages in string order ("10" before "2")', async () => {
    const many = Array.from({ length: 12 }, (_, i) => f32(`t${i}`, [1], i));
    const src = new MemorySource(torchSave(many));
    const h = await readTorchHeader(src);
    expect(h.tensors.map((t) => t.name)).toEqual(many.map((t) => t.name));
    const values = await Promise.all(h.tensors.map(async (t) => new Float32Array((await src.read(t.offset, 4)).slice().buffer)[0]));
    expect(values).toEqual(many.map((_, i) => i));
    // The records really are out of order in the file.
    expect(h.byName.get('t10')!.offset).toBeLessThan(h.byName.get('t2')!.offset);
  });

  it('finds the end record behind an archive comment (which torch never writes, but zip tools may)', async () => {
    const plain = torchSave([f32('w', [2], 1, 2)]);
    const comment = new TextEncoder().encode('PK\x05\x06 looks like a signature; re-zipped by hand');
    const b = new Uint8Array(plain.length + comment.length);
    b.set(plain);
    b.set(comment, plain.length);
    new DataView(b.buffer).setUint16(plain.length - 2, comment.length, true);
    const src = new MemorySource(b);
    expect(await tensorBytes(src, await readTorchHeader(src))).toEqual(new Map([['w', { dtype: 'F32', shape: [2], bytes: Buffer.from(bytesOf(1, 2)) }]]));
  });

  it('refuses strides that are not contiguous row-major, naming the tensor', async () => {
    const t = [f32('w', [2, 2], 1, 2, 3, 4), { name: 'w.t', dtype: 'F32', shape: [2, 2], share: 'w', stride: [1, 2] }];
    await expect(header(torchSave(t))).rejects.toThrow(/tensor "w\.t": strides \(1,2\) are not contiguous/);
  });

  it('accepts any stride on size-1 dimensions, as torch does', async () => {
    const h = await header(torchSave([{ ...f32('w', [1, 3], 1, 2, 3), stride: [99, 1] }]));
    expect(h.tensors[0].shape).toEqual([1, 3]);
  });

  it('refuses a tensor that runs past its storage', async () => {
    const t = [f32('w', [2], 1, 2), { name: 'x', dtype: 'F32', shape: [2], share: 'w', storageOffset: 1 }];
    await expect(header(torchSave(t))).rejects.toThrow(/tensor "x": needs bytes \[4, 12\) of storage "0", which has 8/);
  });

  it('refuses compressed storage records, saying why', async () => {
    await expect(header(torchSave([f32('w', [2], 1, 2)], { deflateStorages: true }))).rejects.toThrow(
      /zip entry "archive\/data\/0": is compressed \(method 8\)/,
    );
  });

  it('reads a deflated data.pkl (an archive re-zipped by another tool) as long as storages are stored', async () => {
    const { pickle, storages } = torchPickle([f32('w', [2], 1, 2)]);
    const zip = zipArchive([
      { name: 'archive/data.pkl', data: pickle, method: 8 },
      { name: 'archive/data/0', data: storages.get('0')! },
    ]);
    expect((await header(zip)).tensors.map((t) => t.name)).toEqual(['w']);
  });

  it('refuses a big-endian file, a TorchScript archive, a legacy raw pickle and a non-zip', async () => {
    await expect(header(torchSave([f32('w', [1], 1)], { byteorder: 'big' }))).rejects.toThrow(/"big" byte order/);
    const { pickle } = torchPickle([]);
    const ts = zipArchive([{ name: 'm/data.pkl', data: pickle }, { name: 'm/constants.pkl', data: pickle }]);
    await expect(header(ts)).rejects.toThrow(/TorchScript archive/);
    await expect(header(Uint8Array.from([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc]))).rejects.toThrow(/legacy torch\.save format/);
    await expect(header(new TextEncoder().encode('{"not": "a zip"}'))).rejects.toThrow(/not a zip archive/);
  });

  it('refuses a storage record whose size disagrees with the pickle, and a missing one', async () => {
    const { pickle, storages } = torchPickle([f32('w', [2], 1, 2)]);
    const short = zipArchive([{ name: 'a/data.pkl', data: pickle }, { name: 'a/data/0', data: storages.get('0')!.subarray(0, 4) }]);
    await expect(header(short)).rejects.toThrow(/holds 4 bytes, but its storage is 2 × F32 = 8/);
    const missing = zipArchive([{ name: 'a/data.pkl', data: pickle }]);
    await expect(header(missing)).rejects.toThrow(/names storage "0", but there is no a\/data\/0 record/);
  });

  it('reads protocol-4 opcodes (FRAME, MEMOIZE, STACK_GLOBAL), torch.Size and _rebuild_parameter', () => {
    const p = new PickleWriter().proto(4).raw(0x95, 0, 0, 0, 0, 0, 0, 0, 0).op('}').raw(0x94).mark();
    const short = (s: string) => p.raw(0x8c, s.length).text(s);
    short('w');
    short('torch._utils').raw(0x94);
    short('_rebuild_parameter').raw(0x93);
    short('torch._utils');
    short('_rebuild_tensor_v2').raw(0x93).raw(0x94).mark();
    p.mark();
    short('storage');
    short('torch');
    short('HalfStorage').raw(0x93);
    short('7');
    short('cuda:0').int(6).op('t').op('Q').int(2);
    short('torch');
    short('Size').raw(0x93).intTuple([2, 2]).raw(0x85).op('R').intTuple([2, 1]).op('\x88').op('}').op('t').op('R');
    p.op('\x88').op('}').raw(0x87).op('R').op('u');
    const entries = unpickleStateDict(p.stop().bytes(), 'p4.pkl');
    expect(entries).toEqual([
      {
        name: 'w',
        tensor: {
          kind: 'tensor', dtype: 'F16', storageOffset: 2, shape: [2, 2], stride: [2, 1],
          storage: { kind: 'storage', key: '7', dtype: 'F16', numel: 6, location: 'cuda:0' },
        },
      },
    ]);
  });

  it('refuses a state dict with a non-tensor value, naming it', async () => {
    const p = new PickleWriter().proto(2).op('}').unicode('epoch').int(3).op('s').stop().bytes();
    expect(() => unpickleStateDict(p, 'f')).toThrow(/"epoch" is an int, not a tensor/);
  });
});

describe('zip entries pointing outside the file', () => {
  const good = torchSave([f32('w', [2], 1, 2)], { current: false });
  const dv = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);
  const eocdAt = good.length - 22;
  const cdOffset = dv(good).getUint32(eocdAt + 16, true);
  /** Offset of the central entry for `name`. */
  const central = (b: Uint8Array, name: string) => {
    let p = cdOffset;
    for (;;) {
      const n = dv(b).getUint16(p + 28, true);
      if (new TextDecoder().decode(b.subarray(p + 46, p + 46 + n)) === name) return p;
      p += 46 + n + dv(b).getUint16(p + 30, true) + dv(b).getUint16(p + 32, true);
    }
  };
  const patched = (fn: (b: Uint8Array, v: DataView) => void) => {
    const b = good.slice();
    fn(b, dv(b));
    return b;
  };
  const cases: [string, Uint8Array, RegExp][] = [
    ['a local header offset past the end', patched((b, v) => v.setUint32(central(b, 'archive/data/0') + 42, 0x7fffff00, true)), /runs past the central directory/],
    ['a size past the end', patched((b, v) => {
      v.setUint32(central(b, 'archive/data/0') + 20, 0x10000000, true);
      v.setUint32(central(b, 'archive/data/0') + 24, 0x10000000, true);
    }), /runs past the central directory/],
    ['a central directory past the end', patched((_, v) => v.setUint32(eocdAt + 16, 0xfffffff0 - 64, true)), /central directory .* is outside the file/],
    ['two entries overlapping', patched((b, v) => v.setUint32(central(b, 'archive/data/0') + 42, 0, true)), /overlaps entry|local header names another entry/],
    ['an entry named ../evil', patched((b) => b.set(new TextEncoder().encode('../'), central(b, 'archive/version') + 46)), /is not a plain relative path/],
    ['an encrypted entry', patched((b, v) => v.setUint16(central(b, 'archive/data/0') + 8, 0x0809, true)), /encrypted/],
    ['a data.pkl whose CRC does not match', patched((b, v) => v.setUint32(central(b, 'archive/data.pkl') + 16, 0x12345678, true)), /CRC-32/],
    ['a truncated file', good.subarray(0, good.length - 30), /no end-of-central-directory record/],
    ['an entry count that does not fit', patched((_, v) => {
      v.setUint16(eocdAt + 8, 60000, true);
      v.setUint16(eocdAt + 10, 60000, true);
    }), /cannot fit/],
  ];
  for (const [label, bytes, message] of cases) {
    it(`refuses ${label}, without reading outside the file`, async () => {
      const src = new MemorySource(bytes);
      const err = await readTorchHeader(src).catch((e) => e);
      expect(err).toBeInstanceOf(ZipError);
      expect(err.message).toMatch(message);
      expect(src.outside).toEqual([]);
    });
  }

  it('reads the untouched file (the cases above each break one thing)', async () => {
    expect((await header(good)).tensors.map((t) => t.name)).toEqual(['w']);
    expect((await readZipDirectory(new MemorySource(good))).entries.map((e) => e.name)).toEqual(['archive/data.pkl', 'archive/data/0', 'archive/version']);
  });
});

describe('the allow-list unpickler refuses everything a state dict does not need', () => {
  const marker = path.join(tmpdir(), `paramdelta-pwned-${process.pid}`);
  const pickle = (build: (p: PickleWriter) => void, proto = 2) => {
    const p = new PickleWriter().proto(proto);
    build(p);
    return p.stop().bytes();
  };
  const cases: [string, Uint8Array, RegExp][] = [
    ['GLOBAL os.system reduced with a shell command', pickle((p) => p.global('os', 'system').unicode(`touch ${marker}`).raw(0x85).op('R')), /global os\.system is not allowed/],
    ['GLOBAL builtins.eval', pickle((p) => p.global('builtins', 'eval').unicode('1+1').raw(0x85).op('R')), /global builtins\.eval is not allowed/],
    ['STACK_GLOBAL builtins.exec (protocol 4)', pickle((p) => p.unicode('builtins').unicode('exec').raw(0x93), 4), /global builtins\.exec is not allowed/],
    ['GLOBAL of a torch function outside the list', pickle((p) => p.global('torch', 'load')), /global torch\.load is not allowed/],
    ['INST', pickle((p) => p.mark().op('i').text('os\nsystem\n')), /opcode INST is not allowed/],
    ['OBJ', pickle((p) => p.mark().global('collections', 'OrderedDict').op('o')), /opcode OBJ is not allowed/],
    ['NEWOBJ of a custom class', pickle((p) => p.global('train', 'Config')), /global train\.Config is not allowed/],
    ['NEWOBJ of an allowed global', pickle((p) => p.global('collections', 'OrderedDict').op(')').raw(0x81)), /opcode NEWOBJ is not allowed/],
    ['a __reduce__ chain: calling what a REDUCE returned', pickle((p) => p.global('collections', 'OrderedDict').op(')').op('R').op(')').op('R')), /REDUCE calls an OrderedDict, which is not an allowed function/],
    ['calling a storage type', pickle((p) => p.global('torch', 'FloatStorage').op(')').op('R')), /REDUCE calls torch\.FloatStorage/],
    ['BUILD on a tensor', (() => {
      const { pickle: ok } = torchPickle([f32('w', [1], 1)], false);
      // Replace the final SETITEMS+STOP: BUILD the tensor (left on the stack by a DUP-free path) instead.
      const body = ok.subarray(0, ok.length - 2);
      return Uint8Array.from([...body, 0x7d, 0x62, 0x75, 0x2e]); // } b u .
    })(), /BUILD of a tensor/],
    ['a persistent id that is not a storage', pickle((p) => p.unicode('module').raw(0x85).op('Q')), /persistent id must be \('storage'/],
    ['a persistent id naming a non-storage global', pickle((p) => p.mark().unicode('storage').global('collections', 'OrderedDict').unicode('0').unicode('cpu').int(1).op('t').op('Q')), /names collections\.OrderedDict, not a storage type/],
    ['EXT1 (the extension registry)', pickle((p) => p.raw(0x82, 1)), /opcode EXT1 is not allowed/],
    ['PERSID (text persistent ids)', pickle((p) => p.op('P').text('0\n')), /opcode PERSID is not allowed/],
    ['an unknown opcode', pickle((p) => p.raw(0xff)), /unknown opcode 0xff/],
    ['a top-level tensor instead of a state dict', pickle((p) => {
      p.global('torch._utils', '_rebuild_tensor_v2').mark();
      p.mark().unicode('storage').global('torch', 'FloatStorage').unicode('0').unicode('cpu').int(1).op('t').op('Q');
      p.int(0).intTuple([1]).intTuple([1]).op('\x89').global('collections', 'OrderedDict').op(')').op('R').op('t').op('R');
    }), /holds a tensor, not a state dict/],
  ];
  for (const [label, bytes, message] of cases) {
    it(`refuses ${label}`, () => {
      let err: unknown;
      try {
        unpickleStateDict(bytes, 'evil.bin');
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(PickleError);
      expect((err as Error).message).toMatch(message);
    });
  }

  it('never ran the shell command', () => {
    expect(existsSync(marker)).toBe(false);
  });
});

describe('fuzzing: only typed errors, and no read outside the file', () => {
  const isTyped = (e: unknown) => e instanceof InputError;

  it('the unpickler, on random bytes and on mutated state-dict pickles', () => {
    const { pickle } = torchPickle([f32('a', [2], 1, 2), { name: 'b', dtype: 'F32', shape: [1], share: 'a', storageOffset: 1 }, { name: 'u', dtype: 'U16', shape: [1], bytes: Uint8Array.from([1, 2]) }]);
    const mutated = fc
      .array(fc.tuple(fc.nat(pickle.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 })
      .chain((edits) => fc.nat(pickle.length).map((cut) => ({ edits, cut })))
      .map(({ edits, cut }) => {
        const b = pickle.slice();
        for (const [i, v] of edits) b[i] = v;
        return cut % 3 === 0 ? b.subarray(0, cut) : b;
      });
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 300 }), mutated), (bytes) => {
        try {
          const entries = unpickleStateDict(bytes, 'fuzz.pkl');
          for (const e of entries) expect(e.tensor.kind).toBe('tensor');
        } catch (e) {
          if (!isTyped(e)) throw e;
        }
      }),
      { numRuns: 3000 },
    );
  });

  it('the zip reader and torch header, on mutated torch.save files (zip64 and not)', async () => {
    const files = [
      torchSave([f32('a', [2, 2], 1, 2, 3, 4), { name: 'b', dtype: 'F32', shape: [2], share: 'a', storageOffset: 2 }]),
      torchSave([f32('a', [2], 1, 2)], { zip64: true, current: false }),
    ];
    // Mutations aimed at the structure: the central directory and end records, and local headers.
    const mutation = fc.tuple(fc.nat(files.length - 1), fc.array(fc.tuple(fc.double({ min: 0, max: 1, noNaN: true }), fc.boolean(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }));
    await fc.assert(
      fc.asyncProperty(mutation, async ([which, edits]) => {
        const b = files[which].slice();
        const tailStart = Math.max(0, b.length - 220);
        for (const [r, tail, v] of edits) b[tail ? tailStart + Math.floor(r * (b.length - tailStart)) : Math.floor(r * b.length)] = v;
        const src = new MemorySource(b);
        try {
          const h = await readTorchHeader(src);
          for (const t of h.tensors) expect(t.offset + t.byteLength).toBeLessThanOrEqual(b.length);
        } catch (e) {
          if (!isTyped(e)) throw e;
        }
        expect(src.outside).toEqual([]);
      }),
      { numRuns: 1500 },
    );
  });
});
