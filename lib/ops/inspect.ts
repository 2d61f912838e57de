import { stat } from 'node:fs/promises';
import path from 'node:path';
import { readHeader } from '../format/safetensors.js';
import { elementCount } from '../format/safetensors.js';
import { openCheckpoint, tensorBytes, MODEL_LAYOUT } from '../format/checkpoint.js';
import { readTorchHeader, isTorchFile } from '../format/torch.js';
import { LocalStore } from '../storage/local.js';
import type { Store } from '../storage/types.js';
import { DELTA_MANIFEST, MODEL_MANIFEST, type ModelManifest } from './manifest.js';
import { CompactShard } from '../codec/reader.js';
import { COMPACT_EXTENSION } from '../codec/format.js';
import { openDelta } from './delta.js';

export interface InspectTensor {
  name: string;
  dtype: string;
  shape: number[];
  parameters: number;
  bytes: number;
  file: string;
  /** Deltas only: ‖Δ‖/‖W‖ with W the base tensor. */
  relNorm?: number;
  zero?: boolean;
  rounded?: number;
  /** Compact deltas: bytes of the tensor's frames. */
  compressedBytes?: number;
}

export interface InspectResult {
  kind: 'checkpoint' | 'shard' | 'delta';
  path: string;
  files: string[];
  tensors: InspectTensor[];
  parameters: number;
  bytes: number;
  dtypes: Record<string, number>;
  config: Record<string, unknown> | null;
  /** Deltas: the dtype policy, tool version and the post model's files carried along. */
  delta?: {
    policy: string; tool: string; createdAt: string; files: string[]; baseSignature: string; postSignature: string;
    layout: 'compact' | 'safetensors';
    /** Compact: the codec, its level and parameters, and the chunk size. */
    codec?: string;
    chunkElements?: number;
    /** Bytes of the delta's shards as stored. */
    storedBytes: number;
    /** Bytes of the raw delta: every tensor in its plain-layout dtype (what `convert --to safetensors` writes). */
    rawBytes: number;
    /** Bytes of the post model's tensors. */
    modelBytes: number;
  };
  /** A model paramdelta wrote (its paramdelta.json): the new base, the deltas with their scales, and the fusion method. */
  model?: Pick<ModelManifest, 'base' | 'deltas' | 'fusion' | 'createdAt'> & { tool: string };
}

function summarize(kind: InspectResult['kind'], where: string, files: string[], tensors: InspectTensor[], config: InspectResult['config']): InspectResult {
  const dtypes: Record<string, number> = {};
  for (const t of tensors) dtypes[t.dtype] = (dtypes[t.dtype] ?? 0) + t.parameters;
  return {
    kind, path: where, files, tensors, config, dtypes,
    parameters: tensors.reduce((a, t) => a + t.parameters, 0),
    bytes: tensors.reduce((a, t) => a + t.bytes, 0),
  };
}

/** Describes a checkpoint folder, a delta folder or a single .safetensors or PyTorch file; reads headers and manifests only. */
export async function inspect(target: string, resolve: (ref: string) => Store = (r) => new LocalStore(r)): Promise<InspectResult> {
  const isFile = !target.includes('://') && (await stat(target)).isFile();
  if (isFile) {
    const store = new LocalStore(path.dirname(target));
    const src = await store.openRead(path.basename(target));
    if (target.endsWith(COMPACT_EXTENSION)) {
      try {
        const shard = await CompactShard.open(src);
        const tensors = [...shard.tensors.values()].map((t) => ({
          name: t.name, dtype: t.dtype, shape: t.shape, parameters: t.elements, bytes: tensorBytes(t.shape, t.dtype),
          file: path.basename(target), compressedBytes: t.compressedBytes,
        }));
        return summarize('shard', target, [path.basename(target)], tensors, null);
      } finally {
        await src.close();
      }
    }
    try {
      const located = isTorchFile(target)
        ? (await readTorchHeader(src)).tensors
        : (await readHeader(src)).tensors.map((t) => ({ ...t, byteLength: t.end - t.begin }));
      const tensors = located.map((t) => ({
        name: t.name, dtype: t.dtype, shape: t.shape, parameters: elementCount(t.shape), bytes: t.byteLength, file: path.basename(target),
      }));
      return summarize('shard', target, [path.basename(target)], tensors, null);
    } finally {
      await src.close();
    }
  }
  const store = resolve(target);
  if (await store.exists(DELTA_MANIFEST)) {
    const d = await openDelta(resolve, target);
    const m = d.manifest;
    const tensors = d.ckpt.tensors.map((t) => ({
      name: t.name, dtype: t.dtype, shape: t.shape, parameters: t.elements, bytes: tensorBytes(t.shape, t.dtype), file: t.file,
      relNorm: m.tensors[t.name].relNorm, zero: m.tensors[t.name].zero, rounded: m.tensors[t.name].rounded,
      ...(m.tensors[t.name].compressedBytes !== undefined ? { compressedBytes: m.tensors[t.name].compressedBytes } : {}),
    }));
    const codec = m.compact?.codec;
    return {
      ...summarize('delta', target, d.ckpt.files, tensors, m.post.config),
      delta: {
        policy: m.dtypePolicy, tool: `${m.tool.name} ${m.tool.version}`, createdAt: m.createdAt,
        files: m.files.map((f) => f.file), baseSignature: m.base.signature, postSignature: m.post.signature,
        layout: m.layout,
        ...(codec
          ? {
              codec: `${codec.name} level ${codec.level}${Object.entries(codec.parameters ?? {}).map(([k, v]) => `, ${k} ${v}`).join('')}, ${m.compact!.transform}`,
              chunkElements: m.compact!.chunkElements,
            }
          : {}),
        storedBytes: m.shards.reduce((a, s) => a + s.bytes, 0),
        rawBytes: tensors.reduce((a, t) => a + t.bytes, 0),
        modelBytes: m.post.tensors.reduce((a, [, dtype, shape]) => a + tensorBytes(shape, dtype), 0),
      },
    };
  }
  const c = await openCheckpoint(store, MODEL_LAYOUT);
  const tensors = c.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, parameters: t.elements, bytes: t.byteLength, file: t.file }));
  const result = summarize('checkpoint', target, c.files, tensors, c.config);
  if (await store.exists(MODEL_MANIFEST)) {
    const m = JSON.parse(await store.readText(MODEL_MANIFEST)) as ModelManifest;
    result.model = { base: m.base, deltas: m.deltas, createdAt: m.createdAt, tool: `${m.tool?.name} ${m.tool?.version}`, ...(m.fusion ? { fusion: m.fusion } : {}) };
  }
  return result;
}
