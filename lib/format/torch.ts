// PyTorch checkpoints (.bin, .pt): the zip archive torch.save writes since PyTorch 1.6. Its data.pkl
// names each tensor's storage (a record data/<key>), offset, shape and strides; the tensor bytes are
// read in place from the records, never loaded here.
import { dtypeSize, type DType } from './dtype.js';
import { elementCount } from './safetensors.js';
import { unpickleStateDict, PickleError } from './pickle.js';
import { readZipDirectory, readEntry, storedDataOffset, looksLikeZip, ZipError, type ZipDirectory } from './zip.js';
import type { ByteSource } from '../storage/types.js';

/** File names read as PyTorch checkpoints. */
export const TORCH_EXTENSIONS = ['.bin', '.pt', '.pth'] as const;
export const isTorchFile = (name: string): boolean => TORCH_EXTENSIONS.some((e) => name.endsWith(e));

export interface TorchTensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** Absolute byte offset of the tensor's data in the file. */
  offset: number;
  byteLength: number;
}

export interface TorchFileHeader {
  file: string;
  fileSize: number;
  /** The folder inside the archive that holds data.pkl ("archive", or the file's stem in older torch). */
  archive: string;
  /** In the state dict's order. Tensors sharing a storage (tied weights) may overlap. */
  tensors: TorchTensorInfo[];
  byName: Map<string, TorchTensorInfo>;
}

/** data.pkl may not exceed this: a state dict's pickle takes ~150 bytes a tensor. */
export const MAX_PICKLE_BYTES = 64 << 20;

/** Local headers read at once while locating storages. */
const CONCURRENT_READS = 8;

/** Row-major contiguity as torch judges it: strides of size-1 dimensions do not matter, nor any stride of an empty tensor. */
function isContiguous(shape: readonly number[], stride: readonly number[]): boolean {
  if (shape.some((d) => d === 0)) return true;
  let expected = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] !== 1 && stride[i] !== expected) return false;
    expected *= shape[i];
  }
  return true;
}

/**
 * Reads a torch.save zip archive's state dict: names, dtypes, shapes and where each tensor's bytes
 * are. Reads the central directory, data.pkl and one local header per storage; never tensor data.
 */
export async function readTorchHeader(src: ByteSource): Promise<TorchFileHeader> {
  const file = src.name;
  if (!(await looksLikeZip(src))) {
    const head = await src.read(0, Math.min(src.size, 2));
    const legacy = head.length === 2 && head[0] === 0x80 && head[1] <= 5;
    throw new ZipError(
      file,
      legacy
        ? 'is a raw pickle (the legacy torch.save format before PyTorch 1.6), which is not read; re-save it with a current torch or convert it to safetensors'
        : 'is not a zip archive as torch.save writes (PyTorch 1.6 and later)',
    );
  }
  const dir = await readZipDirectory(src);
  if (dir.entries.length === 0) throw new ZipError(file, 'archive has no entries');
  // Like torch's reader: the first entry's folder is the archive's, and every record is inside it.
  const first = dir.entries[0].name;
  const slash = first.indexOf('/');
  if (slash <= 0) throw new ZipError(file, `first entry "${first}" is not inside a folder, as torch.save writes`);
  const archive = first.slice(0, slash);
  for (const e of dir.entries) {
    if (!e.name.startsWith(`${archive}/`)) throw new ZipError(file, `entry "${e.name}" is outside the archive folder "${archive}/"`);
  }
  const record = (name: string) => dir.byName.get(`${archive}/${name}`);
  if (record('constants.pkl')) throw new ZipError(file, 'is a TorchScript archive (torch.jit.save), not a state dict saved with torch.save');
  const byteorder = record('byteorder');
  if (byteorder) {
    const order = new TextDecoder().decode(await readEntry(src, dir, byteorder, 16));
    if (order !== 'little') throw new ZipError(file, `stores tensors in "${order}" byte order; only little-endian is read`, byteorder.name);
  }
  const pkl = record('data.pkl');
  if (!pkl) throw new ZipError(file, `has no ${archive}/data.pkl; is this a torch.save checkpoint?`);

  const entries = unpickleStateDict(await readEntry(src, dir, pkl, MAX_PICKLE_BYTES), `${file} (${pkl.name})`);
  const storageOffsets = await locateStorages(src, dir, archive, entries.map((e) => e.tensor.storage));

  const tensors: TorchTensorInfo[] = [];
  const byName = new Map<string, TorchTensorInfo>();
  for (const { name, tensor: t } of entries) {
    const fail = (detail: string): never => {
      throw new PickleError(file, `tensor "${name}": ${detail}`);
    };
    if (name === '' || name.includes('\0')) fail('name is empty or contains NUL');
    if (byName.has(name)) fail('name appears more than once');
    let elements = 0;
    try {
      elements = elementCount(t.shape);
    } catch (e) {
      fail((e as Error).message);
    }
    if (!isContiguous(t.shape, t.stride)) {
      fail(`strides (${t.stride}) are not contiguous row-major for shape [${t.shape}]; save it with .contiguous() or convert to safetensors`);
    }
    const size = dtypeSize(t.dtype);
    const storageBytes = t.storage.numel * dtypeSize(t.storage.dtype);
    const begin = t.storageOffset * size;
    const byteLength = elements * size;
    if (!Number.isSafeInteger(begin + byteLength) || begin + byteLength > storageBytes) {
      fail(`needs bytes [${begin}, ${begin + byteLength}) of storage "${t.storage.key}", which has ${storageBytes}`);
    }
    const info: TorchTensorInfo = { name, dtype: t.dtype, shape: t.shape, offset: storageOffsets.get(t.storage.key)! + begin, byteLength };
    tensors.push(info);
    byName.set(name, info);
  }
  return { file, fileSize: src.size, archive, tensors, byName };
}

/** Absolute data offset of each storage record, checked to be stored and exactly the storage's size. */
async function locateStorages(
  src: ByteSource,
  dir: ZipDirectory,
  archive: string,
  storages: { key: string; dtype: DType; numel: number }[],
): Promise<Map<string, number>> {
  const unique = [...new Map(storages.map((s) => [s.key, s])).values()];
  const offsets = new Map<string, number>();
  for (let i = 0; i < unique.length; i += CONCURRENT_READS) {
    await Promise.all(
      unique.slice(i, i + CONCURRENT_READS).map(async (s) => {
        const name = `${archive}/data/${s.key}`;
        const e = dir.byName.get(name);
        if (!e) throw new ZipError(src.name, `data.pkl names storage "${s.key}", but there is no ${name} record`);
        const bytes = s.numel * dtypeSize(s.dtype);
        if (e.size !== bytes) throw new ZipError(src.name, `holds ${e.size} bytes, but its storage is ${s.numel} × ${s.dtype} = ${bytes}`, name);
        offsets.set(s.key, await storedDataOffset(src, dir, e));
      }),
    );
  }
  return offsets;
}
