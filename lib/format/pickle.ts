// An allow-list unpickler for PyTorch state dicts (the data.pkl inside a torch.save zip).
// Hand-written because a general unpickler resolves globals to code; this one is a pure data
// interpreter: it knows a handful of opcodes and globals, builds plain values from them, and
// refuses everything else by name. Nothing from the file is ever looked up, imported or run.
import type { DType } from './dtype.js';
import { InputError } from '../errors.js';

export class PickleError extends InputError {
  override name = 'PickleError';
  constructor(
    readonly file: string,
    detail: string,
    readonly at?: number,
  ) {
    super(`${file}: ${detail}${at === undefined ? '' : ` (pickle byte ${at})`}`);
  }
}

/** A storage named by a persistent id: its bytes are the zip record data/<key>. */
export interface StorageRef {
  kind: 'storage';
  key: string;
  /** The storage's element type (U8 for an untyped storage). */
  dtype: DType;
  /** Elements of `dtype` (bytes, for an untyped storage). */
  numel: number;
  location: string;
}

export interface PickledTensor {
  kind: 'tensor';
  storage: StorageRef;
  dtype: DType;
  /** In elements of `dtype`. */
  storageOffset: number;
  shape: number[];
  stride: number[];
}

export interface StateDictEntry {
  name: string;
  tensor: PickledTensor;
}

// Values the interpreter builds. Python tuples, lists and dicts stay distinct, as their uses differ.
class Tuple {
  constructor(readonly items: readonly Value[]) {}
}
class List {
  readonly items: Value[] = [];
}
class Dict {
  readonly map = new Map<Key, Value>();
  constructor(readonly type: 'dict' | 'OrderedDict') {}
}
class Float {
  constructor(readonly value: number) {}
}
class Global {
  constructor(
    readonly qualified: string,
    readonly def: GlobalDef,
  ) {}
}
type Key = string | number | bigint | boolean | null;
type Value = Key | Uint8Array | Tuple | List | Dict | Float | Global | StorageRef | PickledTensor;

type GlobalDef =
  | { kind: 'call'; call: (args: readonly Value[], fail: Fail) => Value }
  | { kind: 'storage-type'; dtype: DType }
  | { kind: 'dtype'; dtype: DType };

type Fail = (detail: string) => never;

/** The legacy typed storage classes torch.save names in persistent ids, and the element type of each. */
const STORAGE_TYPES: Record<string, DType> = {
  FloatStorage: 'F32',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  DoubleStorage: 'F64',
  IntStorage: 'I32',
  LongStorage: 'I64',
  ShortStorage: 'I16',
  CharStorage: 'I8',
  ByteStorage: 'U8',
  BoolStorage: 'BOOL',
};

/** torch dtypes as _rebuild_tensor_v3 names them (newer torch, for dtypes without a legacy storage class). */
const TORCH_DTYPES: Record<string, DType> = {
  float32: 'F32', float16: 'F16', bfloat16: 'BF16', float64: 'F64',
  int32: 'I32', int64: 'I64', int16: 'I16', int8: 'I8', uint8: 'U8', bool: 'BOOL',
  uint16: 'U16', uint32: 'U32', uint64: 'U64', float8_e5m2: 'F8_E5M2', float8_e4m3fn: 'F8_E4M3',
};

const isInt = (v: Value): v is number => typeof v === 'number' && Number.isSafeInteger(v);
const isCount = (v: Value): v is number => isInt(v) && v >= 0;

function describe(v: Value): string {
  if (v === null) return 'None';
  if (typeof v === 'string') return 'a string';
  if (typeof v === 'number' || typeof v === 'bigint') return 'an int';
  if (typeof v === 'boolean') return 'a bool';
  if (v instanceof Uint8Array) return 'bytes';
  if (v instanceof Tuple) return `a tuple of ${v.items.length}`;
  if (v instanceof List) return 'a list';
  if (v instanceof Dict) return v.type === 'dict' ? 'a dict' : 'an OrderedDict';
  if (v instanceof Float) return 'a float';
  if (v instanceof Global) return v.qualified;
  return v.kind === 'storage' ? 'a storage' : 'a tensor';
}

function intTuple(v: Value, what: string, fail: Fail): number[] {
  if (!(v instanceof Tuple) || !v.items.every(isInt)) fail(`${what} must be a tuple of ints, got ${describe(v)}`);
  return [...(v as Tuple).items] as number[];
}

function rebuildTensor(args: readonly Value[], withDtype: boolean, fail: Fail): PickledTensor {
  const fixed = withDtype ? 7 : 6;
  if (args.length !== fixed && args.length !== fixed + 1) fail(`tensor rebuild takes ${fixed} or ${fixed + 1} arguments, got ${args.length}`);
  const [storage, offset, size, stride, requiresGrad, hooks] = args;
  if (!(storage instanceof Object) || (storage as StorageRef).kind !== 'storage') fail(`tensor storage must come from a persistent id, got ${describe(storage)}`);
  if (!isCount(offset)) fail(`tensor storage offset must be a non-negative int, got ${describe(offset)}`);
  const shape = intTuple(size, 'tensor size', fail);
  const strides = intTuple(stride, 'tensor stride', fail);
  if (!shape.every((d) => d >= 0)) fail(`tensor size (${shape}) has a negative dimension`);
  if (strides.length !== shape.length) fail(`tensor stride (${strides}) and size (${shape}) differ in length`);
  if (typeof requiresGrad !== 'boolean') fail(`tensor requires_grad must be a bool, got ${describe(requiresGrad)}`);
  if (!(hooks instanceof Dict) || hooks.map.size !== 0) fail('tensor backward hooks must be an empty dict');
  const s = storage as StorageRef;
  let dtype = s.dtype;
  if (withDtype) {
    const d = args[6];
    if (!(d instanceof Global) || d.def.kind !== 'dtype') fail(`tensor dtype must be a torch dtype, got ${describe(d)}`);
    dtype = ((d as Global).def as { dtype: DType }).dtype;
  }
  const metadata = args[fixed];
  if (metadata !== undefined && metadata !== null && !(metadata instanceof Dict)) fail(`tensor metadata must be a dict, got ${describe(metadata)}`);
  return { kind: 'tensor', storage: s, dtype, storageOffset: offset as number, shape, stride: strides };
}

const isTensor = (v: Value): v is PickledTensor => v instanceof Object && (v as PickledTensor).kind === 'tensor';

/** Every global a state dict needs, by "module.name". Anything else is refused. */
const GLOBALS = new Map<string, GlobalDef>([
  ['torch._utils._rebuild_tensor_v2', { kind: 'call', call: (a, fail) => rebuildTensor(a, false, fail) }],
  ['torch._utils._rebuild_tensor_v3', { kind: 'call', call: (a, fail) => rebuildTensor(a, true, fail) }],
  [
    'torch._utils._rebuild_parameter',
    {
      kind: 'call',
      call: (a, fail) => {
        if (a.length !== 3 || !isTensor(a[0]) || typeof a[1] !== 'boolean' || !(a[2] instanceof Dict) || a[2].map.size !== 0) {
          fail('_rebuild_parameter takes (tensor, requires_grad, empty hooks)');
        }
        return a[0];
      },
    },
  ],
  [
    'collections.OrderedDict',
    {
      kind: 'call',
      call: (a, fail) => {
        if (a.length !== 0) fail(`OrderedDict is only built empty here, got ${a.length} arguments`);
        return new Dict('OrderedDict');
      },
    },
  ],
  [
    'torch.Size',
    {
      kind: 'call',
      call: (a, fail) => {
        if (a.length !== 1) fail(`torch.Size takes one tuple, got ${a.length} arguments`);
        return new Tuple(intTuple(a[0], 'torch.Size', fail));
      },
    },
  ],
  ...Object.entries(STORAGE_TYPES).map(([n, dtype]) => [`torch.${n}`, { kind: 'storage-type', dtype }] as [string, GlobalDef]),
  ['torch.UntypedStorage', { kind: 'storage-type', dtype: 'U8' }],
  ['torch.storage.UntypedStorage', { kind: 'storage-type', dtype: 'U8' }],
  ...Object.entries(TORCH_DTYPES).map(([n, dtype]) => [`torch.${n}`, { kind: 'dtype', dtype }] as [string, GlobalDef]),
]);

/** Every pickle opcode by name, so a refused one is named; only some are interpreted below. */
const OPCODES = {
  MARK: '(', STOP: '.', POP: '0', POP_MARK: '1', DUP: '2', FLOAT: 'F', INT: 'I', BININT: 'J', BININT1: 'K', LONG: 'L',
  BININT2: 'M', NONE: 'N', PERSID: 'P', BINPERSID: 'Q', REDUCE: 'R', STRING: 'S', BINSTRING: 'T', SHORT_BINSTRING: 'U',
  UNICODE: 'V', BINUNICODE: 'X', APPEND: 'a', BUILD: 'b', GLOBAL: 'c', DICT: 'd', EMPTY_DICT: '}', APPENDS: 'e', GET: 'g',
  BINGET: 'h', INST: 'i', LONG_BINGET: 'j', LIST: 'l', EMPTY_LIST: ']', OBJ: 'o', PUT: 'p', BINPUT: 'q', LONG_BINPUT: 'r',
  SETITEM: 's', TUPLE: 't', EMPTY_TUPLE: ')', SETITEMS: 'u', BINFLOAT: 'G', PROTO: '\x80', NEWOBJ: '\x81', EXT1: '\x82',
  EXT2: '\x83', EXT4: '\x84', TUPLE1: '\x85', TUPLE2: '\x86', TUPLE3: '\x87', NEWTRUE: '\x88', NEWFALSE: '\x89',
  LONG1: '\x8a', LONG4: '\x8b', BINBYTES: 'B', SHORT_BINBYTES: 'C', SHORT_BINUNICODE: '\x8c', BINUNICODE8: '\x8d',
  BINBYTES8: '\x8e', EMPTY_SET: '\x8f', ADDITEMS: '\x90', FROZENSET: '\x91', NEWOBJ_EX: '\x92', STACK_GLOBAL: '\x93',
  MEMOIZE: '\x94', FRAME: '\x95', BYTEARRAY8: '\x96', NEXT_BUFFER: '\x97', READONLY_BUFFER: '\x98',
} as const;
const O = Object.fromEntries(Object.entries(OPCODES).map(([n, c]) => [n, c.charCodeAt(0)])) as Record<keyof typeof OPCODES, number>;
const OPCODE_NAMES = new Map(Object.entries(O).map(([n, c]) => [c, n]));

/** Longest LONG1/LONG4 integer read, in bytes; a state dict's ints are sizes and offsets. */
const MAX_LONG_BYTES = 64;

/**
 * Runs the pickle and returns the state dict it describes: a dict (or OrderedDict) from names to
 * tensors, in the file's order. Storages come from persistent ids ('storage', type, key, location, numel).
 */
export function unpickleStateDict(data: Uint8Array, file: string): StateDictEntry[] {
  let pos = 0;
  let opAt = 0;
  const fail: Fail = (detail) => {
    throw new PickleError(file, detail, opAt);
  };
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const take = (n: number): number => {
    if (n < 0 || pos + n > data.length) fail(`pickle ends inside ${OPCODE_NAMES.get(data[opAt])}'s argument`);
    const at = pos;
    pos += n;
    return at;
  };
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  const text = (n: number): string => {
    const at = take(n);
    try {
      return utf8.decode(data.subarray(at, at + n));
    } catch {
      return fail('string is not valid UTF-8');
    }
  };
  const line = (): string => {
    const end = data.indexOf(0x0a, pos);
    if (end < 0) fail('GLOBAL name is not terminated by a newline');
    const s = text(end - pos);
    pos++;
    return s;
  };
  const u64 = (): number => {
    const at = take(8);
    const v = view.getBigUint64(at, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`length ${v} is too large`);
    return Number(v);
  };

  const stack: Value[] = [];
  const marks: number[] = [];
  const memo = new Map<number, Value>();
  const storages = new Map<string, StorageRef>();

  const pop = (): Value => {
    if (stack.length === (marks.length ? marks[marks.length - 1] : 0)) fail(`${OPCODE_NAMES.get(data[opAt])} needs a value, but the stack is empty`);
    return stack.pop() as Value;
  };
  const top = (): Value => {
    if (stack.length === (marks.length ? marks[marks.length - 1] : 0)) fail(`${OPCODE_NAMES.get(data[opAt])} needs a value, but the stack is empty`);
    return stack[stack.length - 1];
  };
  const popMark = (): Value[] => {
    const m = marks.pop();
    if (m === undefined) fail(`${OPCODE_NAMES.get(data[opAt])} without a MARK`);
    return stack.splice(m as number);
  };
  const global = (module: string, name: string): Global => {
    const qualified = `${module}.${name}`;
    const def = GLOBALS.get(qualified);
    if (!def) fail(`global ${qualified} is not allowed: a state dict is read only through an allow-list of torch rebuild functions, storage types, collections.OrderedDict and torch.Size`);
    return new Global(qualified, def as GlobalDef);
  };
  const asKey = (k: Value): Key => {
    if (k === null || ['string', 'number', 'bigint', 'boolean'].includes(typeof k)) return k as Key;
    return fail(`dict key must be a string or a number, got ${describe(k)}`);
  };
  const setItems = (target: Value, items: Value[]) => {
    if (!(target instanceof Dict)) fail(`SETITEM(S) on ${describe(target)}, not a dict`);
    if (items.length % 2) fail('SETITEMS with an odd number of values');
    for (let i = 0; i < items.length; i += 2) (target as Dict).map.set(asKey(items[i]), items[i + 1]);
  };
  const append = (target: Value, items: Value[]) => {
    if (!(target instanceof List)) fail(`APPEND(S) on ${describe(target)}, not a list`);
    for (const v of items) (target as List).items.push(v);
  };
  const persistentLoad = (pid: Value): StorageRef => {
    if (!(pid instanceof Tuple) || pid.items.length !== 5 || pid.items[0] !== 'storage') {
      fail(`persistent id must be ('storage', type, key, location, numel), got ${describe(pid)}`);
    }
    const [, type, key, location, numel] = (pid as Tuple).items;
    if (!(type instanceof Global) || type.def.kind !== 'storage-type') fail(`persistent id names ${describe(type)}, not a storage type`);
    if (typeof key !== 'string' || !/^[0-9A-Za-z_]{1,64}$/.test(key)) fail(`storage key ${describe(key)} is not a plain name`);
    if (typeof location !== 'string') fail(`storage location must be a string, got ${describe(location)}`);
    if (!isCount(numel)) fail(`storage size must be a non-negative int, got ${describe(numel)}`);
    const dtype = ((type as Global).def as { dtype: DType }).dtype;
    const seen = storages.get(key as string);
    if (seen) {
      if (seen.dtype !== dtype || seen.numel !== numel) fail(`storage "${key}" is named twice with different types or sizes`);
      return seen;
    }
    const s: StorageRef = { kind: 'storage', key: key as string, dtype, numel: numel as number, location: location as string };
    storages.set(s.key, s);
    return s;
  };
  const readLong = (n: number): number | bigint => {
    if (n > MAX_LONG_BYTES) fail(`integer of ${n} bytes is larger than a state dict needs`);
    const at = take(n);
    let v = 0n;
    for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(data[at + i]);
    if (n > 0 && data[at + n - 1] & 0x80) v -= 1n << BigInt(8 * n);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  };

  let result: Value | undefined;
  while (result === undefined) {
    opAt = pos;
    if (pos >= data.length) fail('pickle ends without STOP');
    const code = data[pos++];
    switch (code) {
      case O.PROTO: {
        const v = data[take(1)];
        if (v < 2 || v > 5) fail(`pickle protocol ${v} is not supported (torch.save writes 2)`);
        break;
      }
      case O.FRAME:
        if (u64() > data.length - pos) fail('frame runs past the end of the pickle');
        break;
      case O.STOP:
        result = pop();
        if (stack.length || marks.length) fail('STOP with values left on the stack');
        break;
      case O.MARK:
        marks.push(stack.length);
        break;
      case O.POP:
        pop();
        break;
      case O.POP_MARK:
        popMark();
        break;
      case O.NONE:
        stack.push(null);
        break;
      case O.NEWTRUE:
        stack.push(true);
        break;
      case O.NEWFALSE:
        stack.push(false);
        break;
      case O.BININT:
        stack.push(view.getInt32(take(4), true));
        break;
      case O.BININT1:
        stack.push(data[take(1)]);
        break;
      case O.BININT2:
        stack.push(view.getUint16(take(2), true));
        break;
      case O.LONG1:
        stack.push(readLong(data[take(1)]));
        break;
      case O.LONG4:
        stack.push(readLong(view.getInt32(take(4), true)));
        break;
      case O.BINFLOAT:
        stack.push(new Float(view.getFloat64(take(8), false)));
        break;
      case O.SHORT_BINUNICODE:
      case O.SHORT_BINSTRING:
        stack.push(text(data[take(1)]));
        break;
      case O.BINUNICODE:
      case O.BINSTRING:
        stack.push(text(view.getUint32(take(4), true)));
        break;
      case O.BINUNICODE8:
        stack.push(text(u64()));
        break;
      case O.SHORT_BINBYTES:
      case O.BINBYTES:
      case O.BINBYTES8: {
        const n = code === O.SHORT_BINBYTES ? data[take(1)] : code === O.BINBYTES ? view.getUint32(take(4), true) : u64();
        const at = take(n);
        stack.push(data.slice(at, at + n));
        break;
      }
      case O.EMPTY_TUPLE:
        stack.push(new Tuple([]));
        break;
      case O.TUPLE1:
      case O.TUPLE2:
      case O.TUPLE3: {
        const n = code - O.TUPLE1 + 1;
        const items: Value[] = [];
        for (let i = 0; i < n; i++) items.unshift(pop());
        stack.push(new Tuple(items));
        break;
      }
      case O.TUPLE:
        stack.push(new Tuple(popMark()));
        break;
      case O.EMPTY_LIST:
        stack.push(new List());
        break;
      case O.EMPTY_DICT:
        stack.push(new Dict('dict'));
        break;
      case O.APPEND: {
        const v = pop();
        append(top(), [v]);
        break;
      }
      case O.APPENDS: {
        const items = popMark();
        append(top(), items);
        break;
      }
      case O.SETITEM: {
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case O.SETITEMS: {
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case O.BINPUT:
        memo.set(data[take(1)], top());
        break;
      case O.LONG_BINPUT:
        memo.set(view.getUint32(take(4), true), top());
        break;
      case O.MEMOIZE:
        memo.set(memo.size, top());
        break;
      case O.BINGET:
      case O.LONG_BINGET: {
        const i = code === O.BINGET ? data[take(1)] : view.getUint32(take(4), true);
        if (!memo.has(i)) fail(`memo entry ${i} is read before it is written`);
        stack.push(memo.get(i) as Value);
        break;
      }
      case O.GLOBAL: {
        const module = line();
        stack.push(global(module, line()));
        break;
      }
      case O.STACK_GLOBAL: {
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail('STACK_GLOBAL needs a module and a name as strings');
        stack.push(global(module as string, name as string));
        break;
      }
      case O.REDUCE: {
        const args = pop();
        const fn = pop();
        if (!(fn instanceof Global) || fn.def.kind !== 'call') fail(`REDUCE calls ${describe(fn)}, which is not an allowed function`);
        if (!(args instanceof Tuple)) fail(`REDUCE arguments must be a tuple, got ${describe(args)}`);
        stack.push(((fn as Global).def as { call: (a: readonly Value[], f: Fail) => Value }).call((args as Tuple).items, fail));
        break;
      }
      case O.BUILD: {
        // Only an OrderedDict's attributes (a state dict's _metadata) are set this way; they are ignored.
        const state = pop();
        const target = top();
        if (!(target instanceof Dict) || target.type !== 'OrderedDict' || !(state instanceof Dict)) {
          fail(`BUILD of ${describe(target)} with ${describe(state)} is not allowed (only a state dict's metadata is)`);
        }
        break;
      }
      case O.BINPERSID:
        stack.push(persistentLoad(pop()));
        break;
      default:
        fail(
          OPCODE_NAMES.has(code)
            ? `opcode ${OPCODE_NAMES.get(code)} is not allowed in a state dict`
            : `unknown opcode 0x${code.toString(16).padStart(2, '0')}`,
        );
    }
  }
  if (pos !== data.length) {
    opAt = pos;
    fail(`${data.length - pos} bytes follow STOP`);
  }

  const root = result;
  if (!(root instanceof Dict)) {
    throw new PickleError(file, `holds ${describe(root)}, not a state dict (a dict of tensor names to tensors)`);
  }
  const out: StateDictEntry[] = [];
  for (const [name, v] of root.map) {
    if (typeof name !== 'string') throw new PickleError(file, `state dict key ${String(name)} is not a string`);
    if (!isTensor(v)) {
      throw new PickleError(file, `"${name}" is ${describe(v)}, not a tensor; only flat state dicts (name → tensor) are read`);
    }
    out.push({ name, tensor: v });
  }
  return out;
}
