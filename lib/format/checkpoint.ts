import type { DType } from './dtype.js';
import { dtypeSize } from './dtype.js';
import { readHeader, elementCount, type SafetensorsHeader } from './safetensors.js';
import { readTorchHeader, isTorchFile } from './torch.js';
import type { Store } from '../storage/types.js';
import { InputError } from '../errors.js';

export const SINGLE_FILE = 'model.safetensors';
export const MODEL_INDEX = 'model.safetensors.index.json';
export const TORCH_SINGLE_FILE = 'pytorch_model.bin';
export const TORCH_INDEX = 'pytorch_model.bin.index.json';

/** One tensor of a checkpoint, located in its shard. */
export interface CheckpointTensor {
  name: string;
  dtype: DType;
  shape: number[];
  /** Shard file name inside the checkpoint folder. */
  file: string;
  /** Absolute byte offset of the tensor's data in the shard. */
  offset: number;
  byteLength: number;
  elements: number;
}

export interface Checkpoint {
  store: Store;
  /** Shard files in order. */
  files: string[];
  /** Tensors in checkpoint order: shard by shard, each by data offset (safetensors) or in state-dict order (PyTorch). */
  tensors: CheckpointTensor[];
  byName: Map<string, CheckpointTensor>;
  /** Parsed config.json, or null when there is none. */
  config: Record<string, unknown> | null;
  /** Safetensors shards' headers (none for PyTorch files). */
  headers: Map<string, SafetensorsHeader>;
}

export interface CheckpointLayout {
  /** The single-file name, tried first (as transformers does). */
  single: string;
  /** The index name, used when the single file is absent. */
  index: string;
  /**
   * PyTorch (torch.save zip) names, tried when neither safetensors name is there, as transformers does;
   * then a folder's only .bin/.pt/.pth file. Absent where only safetensors is read (deltas).
   */
  torch?: { single: string; index: string };
}

export const MODEL_LAYOUT: CheckpointLayout = { single: SINGLE_FILE, index: MODEL_INDEX, torch: { single: TORCH_SINGLE_FILE, index: TORCH_INDEX } };

/** Files a transformers Trainer checkpoint holds beside the weights, never weights themselves. */
const NOT_WEIGHTS = /^(training_args\.bin|optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth)$/;

/** Zero-padded HF shard names: model-00001-of-00004.safetensors. */
export function shardFileName(stem: string, i: number, n: number, extension = '.safetensors'): string {
  const w = Math.max(5, String(n).length);
  return `${stem}-${String(i + 1).padStart(w, '0')}-of-${String(n).padStart(w, '0')}${extension}`;
}

async function readJson(store: Store, file: string): Promise<unknown> {
  const text = await store.readText(file);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new InputError(`${store.ref}/${file}: not valid JSON (${(e as Error).message})`);
  }
}

/** config.json, which must be an object (its fields identify the architecture). */
async function readConfig(store: Store): Promise<Record<string, unknown>> {
  const config = await readJson(store, 'config.json');
  if (typeof config !== 'object' || config === null || Array.isArray(config)) {
    throw new InputError(`${store.ref}/config.json: must be a JSON object (the model's configuration)`);
  }
  return config as Record<string, unknown>;
}

const isSafetensors = (f: string) => f.endsWith('.safetensors');

/** Reads the shard list from an index, checking its shape and that it names shards of the right kind. */
async function readIndex(store: Store, indexFile: string, isShard: (f: string) => boolean = isSafetensors): Promise<Map<string, string>> {
  const where = `${store.ref}/${indexFile}`;
  const index = await readJson(store, indexFile);
  if (typeof index !== 'object' || index === null || Array.isArray(index)) {
    throw new InputError(`${where}: must be a JSON object with "weight_map"`);
  }
  const map = (index as Record<string, unknown>).weight_map;
  if (typeof map !== 'object' || map === null || Array.isArray(map)) {
    throw new InputError(`${where}: field "weight_map" must be an object mapping tensor names to shard files`);
  }
  const out = new Map<string, string>();
  for (const [name, file] of Object.entries(map as Record<string, unknown>)) {
    if (typeof file !== 'string' || !isShard(file) || file.includes('/') || file.includes('\\')) {
      const kind = isShard === isSafetensors ? '.safetensors' : 'PyTorch (.bin, .pt, .pth)';
      throw new InputError(`${where}: weight_map["${name}"] must name a ${kind} file in the same folder`);
    }
    out.set(name, file);
  }
  return out;
}

/** Which files hold a folder's weights, by the layout's precedence. */
async function locateShards(
  store: Store,
  present: Set<string>,
  layout: CheckpointLayout,
): Promise<{ files: string[]; weightMap: Map<string, string> | null; index: string; torch: boolean }> {
  const indexed = async (index: string, torch: boolean) => {
    const weightMap = await readIndex(store, index, torch ? isTorchFile : isSafetensors);
    const files = [...new Set(weightMap.values())].sort();
    const missing = files.filter((f) => !present.has(f));
    if (missing.length) throw new InputError(`${store.ref}/${index}: names shard files that are missing: ${missing.join(', ')}`);
    return { files, weightMap, index, torch };
  };
  if (present.has(layout.single)) return { files: [layout.single], weightMap: null, index: layout.index, torch: false };
  if (present.has(layout.index)) return indexed(layout.index, false);
  const t = layout.torch;
  if (t) {
    if (present.has(t.single)) return { files: [t.single], weightMap: null, index: t.index, torch: true };
    if (present.has(t.index)) return indexed(t.index, true);
    const candidates = [...present].filter((f) => isTorchFile(f) && !NOT_WEIGHTS.test(f)).sort();
    if (candidates.length === 1) return { files: candidates, weightMap: null, index: t.index, torch: true };
    if (candidates.length > 1) {
      throw new InputError(
        `${store.ref}: several PyTorch files (${candidates.join(', ')}) and no ${t.index} saying how they form one checkpoint`,
      );
    }
    throw new InputError(
      `${store.ref}: no ${layout.single}, ${layout.index}, ${t.single} or ${t.index} (nor a single .bin/.pt/.pth file); is this a checkpoint folder?`,
    );
  }
  throw new InputError(`${store.ref}: no ${layout.single} and no ${layout.index}; is this a checkpoint folder?`);
}

/**
 * Opens a checkpoint folder: reads every shard header (never tensor data) and checks that
 * the index and the headers agree. Safetensors shards come first; PyTorch files are read where a
 * folder has no safetensors, through an allow-list unpickler that never runs anything.
 */
export async function openCheckpoint(store: Store, layout: CheckpointLayout = MODEL_LAYOUT): Promise<Checkpoint> {
  const present = new Set(await listOrFail(store));
  const { files, weightMap, index, torch } = await locateShards(store, present, layout);

  const headers = new Map<string, SafetensorsHeader>();
  const tensors: CheckpointTensor[] = [];
  const byName = new Map<string, CheckpointTensor>();
  for (const file of files) {
    const src = await store.openRead(file);
    let located: { name: string; dtype: DType; shape: number[]; offset: number; byteLength: number }[];
    try {
      if (torch) {
        located = (await readTorchHeader(src)).tensors;
      } else {
        const header = await readHeader(src);
        headers.set(file, header);
        located = header.tensors.map((t) => ({ ...t, offset: header.dataStart + t.begin, byteLength: t.end - t.begin }));
      }
    } finally {
      await src.close();
    }
    for (const t of located) {
      const prior = byName.get(t.name);
      if (prior) {
        throw new InputError(`${store.ref}: tensor "${t.name}" is in both ${prior.file} and ${file}`);
      }
      if (weightMap && weightMap.get(t.name) !== file) {
        const listed = weightMap.get(t.name);
        throw new InputError(
          `${store.ref}/${index}: tensor "${t.name}" is in ${file} but the index ${listed ? `maps it to ${listed}` : 'does not list it'}`,
        );
      }
      const ct: CheckpointTensor = {
        name: t.name,
        dtype: t.dtype,
        shape: t.shape,
        file,
        offset: t.offset,
        byteLength: t.byteLength,
        elements: elementCount(t.shape),
      };
      tensors.push(ct);
      byName.set(t.name, ct);
    }
  }
  if (weightMap) {
    for (const [name, file] of weightMap) {
      if (!byName.has(name)) {
        throw new InputError(`${store.ref}/${index}: maps tensor "${name}" to ${file}, whose header does not have it`);
      }
    }
  }
  const config = present.has('config.json') ? await readConfig(store) : null;
  return { store, files, tensors, byName, config, headers };
}

async function listOrFail(store: Store): Promise<string[]> {
  try {
    return await store.list();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw new InputError(`${store.ref}: no such folder`);
    throw e;
  }
}

/** Byte size of a tensor stored in `dtype`. */
export function tensorBytes(shape: readonly number[], dtype: DType): number {
  return elementCount(shape) * dtypeSize(dtype);
}

/** The weight_map index transformers reads; written last, it marks a checkpoint complete. */
export function indexJson(entries: { name: string; file: string }[], totalSize: number, extra?: Record<string, unknown>): string {
  const weight_map: Record<string, string> = {};
  for (const e of entries) weight_map[e.name] = e.file;
  return JSON.stringify({ metadata: { total_size: totalSize, ...extra }, weight_map }, null, 2) + '\n';
}

/**
 * Whether a folder being uploaded holds a whole checkpoint yet: a single model.safetensors, or an
 * index whose every shard is present; failing those, the same for pytorch_model.bin. Uploads arrive
 * in any order, the index often first.
 */
export async function checkpointCompleteness(store: Store): Promise<{ complete: boolean; marker: string | null; missing: string[] }> {
  const present = new Set(await store.list());
  const byIndex = async (index: string, isShard: (f: string) => boolean) => {
    let shards: string[];
    try {
      shards = [...new Set((await readIndex(store, index, isShard)).values())];
    } catch {
      return { complete: false, marker: index, missing: [] };
    }
    const missing = shards.filter((f) => !present.has(f));
    return { complete: missing.length === 0, marker: index, missing };
  };
  if (present.has(SINGLE_FILE)) return { complete: true, marker: SINGLE_FILE, missing: [] };
  if (present.has(MODEL_INDEX)) return byIndex(MODEL_INDEX, isSafetensors);
  if (present.has(TORCH_SINGLE_FILE)) return { complete: true, marker: TORCH_SINGLE_FILE, missing: [] };
  if (present.has(TORCH_INDEX)) return byIndex(TORCH_INDEX, isTorchFile);
  return { complete: false, marker: null, missing: [MODEL_INDEX] };
}
