import { dtypeSize, isFloatDType, type FloatDType } from '../format/dtype.js';
import { encodeHeader } from '../format/safetensors.js';
import { openCheckpoint, indexJson, MODEL_INDEX, MODEL_LAYOUT } from '../format/checkpoint.js';
import type { Store } from '../storage/types.js';
import { TOOL_VERSION } from '../version.js';
import { MODEL_FORMAT, MODEL_MANIFEST, type ModelManifest } from './manifest.js';
import { outputTags } from './outputs.js';
import { planApply, SHARD_METADATA, type ApplyPlan, type ApplyTensorPlan } from './plan.js';
import { openDelta } from './delta.js';
import { SourceCache, streamTensors, chunkElementsFor, type Slot } from './stream.js';
import { DEFAULT_BUFFER_BYTES, kernelsFor, slotsFor, type ExecEnv } from './env.js';
import type { Kernels } from '../kernels/index.js';

export interface ApplyShardResult {
  file: string;
  bytes: number;
}

/** Plans an application: every delta tensor must exist in the new base with the same shape; raised before writing. */
export async function prepareApply(
  env: ExecEnv,
  baseRef: string,
  deltas: { ref: string; scale?: number }[],
  opts: { shardSize: number },
): Promise<ApplyPlan> {
  const base = await openCheckpoint(env.resolve(baseRef), MODEL_LAYOUT);
  const opened = [];
  for (const d of deltas) opened.push(await openDelta(env.resolve, d.ref, d.scale ?? 1));
  return planApply(base, opened, { shardSize: opts.shardSize, baseFiles: await base.store.list() });
}

/** Reads one tensor chunk of the new base and of each delta, and combines them into `out`. */
export class ApplyChunks {
  constructor(
    private readonly plan: Pick<ApplyPlan, 'base' | 'deltas'>,
    private readonly sources: SourceCache,
    private readonly kernels: Kernels,
  ) {}

  static inputsPerSlot(plan: Pick<ApplyPlan, 'deltas'>): number {
    return 1 + plan.deltas.length;
  }

  async read(t: ApplyTensorPlan, start: number, n: number, s: Slot): Promise<void> {
    const size = dtypeSize(t.dtype);
    const reads = [this.sources.get(this.plan.base, t.base.file).then((src) => src.read(t.base.offset + start * size, n * size, s.inputs[0]))];
    t.deltas.forEach((d, i) => {
      const ds = dtypeSize(d.ref.dtype);
      const ref = this.plan.deltas[d.delta].ref;
      reads.push(this.sources.get(ref, d.ref.file).then((src) => src.read(d.ref.offset + start * ds, n * ds, s.inputs[1 + i])));
    });
    await Promise.all(reads);
  }

  /** The new tensor's bytes for this chunk, in the new base's dtype. */
  compute(t: ApplyTensorPlan, n: number, s: Slot): Uint8Array {
    const bytes = n * dtypeSize(t.dtype);
    const out = s.out.subarray(0, bytes);
    if (t.deltas.length === 0 || !isFloatDType(t.dtype)) {
      out.set(s.inputs[0].subarray(0, bytes));
      return out;
    }
    const dtype: FloatDType = t.dtype;
    const deltas = t.deltas.map((d, i) => ({
      dtype: d.ref.dtype as FloatDType,
      data: s.inputs[1 + i],
      scale: this.plan.deltas[d.delta].scale,
    }));
    this.kernels.apply(dtype, s.inputs[0], deltas, n, dtype, out);
    return out;
  }
}

/** Sizes chunk buffers for tensors with up to `inputs` operands of at most 8 bytes each. */
export async function applySlots(env: ExecEnv, inputs: number, extraInputs = 0): Promise<{ kernels: Kernels; slots: Slot[]; chunk: number }> {
  const perElement = 8 * (inputs + extraInputs + 1);
  const count = slotsFor(env);
  const chunk = chunkElementsFor(perElement, env.bufferBytes ?? DEFAULT_BUFFER_BYTES, count);
  const kernels = await kernelsFor(env, count * chunk * perElement);
  const slot = (): Slot => ({
    inputs: Array.from({ length: inputs + extraInputs }, () => kernels.alloc(chunk * 8)),
    out: kernels.alloc(chunk * 8),
  });
  return { kernels, slots: Array.from({ length: count }, slot), chunk };
}

/** Writes one output shard. Safe to run again: same plan, same bytes. */
export async function executeApplyShard(plan: ApplyPlan, index: number, env: ExecEnv, out: Store): Promise<ApplyShardResult> {
  const shard = plan.shards[index];
  const { kernels, slots, chunk } = await applySlots(env, ApplyChunks.inputsPerSlot(plan));
  const prefix = encodeHeader(shard.tensors, SHARD_METADATA).bytes;
  const sink = await out.createShard(shard.file, prefix.length, undefined, { metadata: outputTags('model', plan.hash) });
  const sources = new SourceCache(env.resolve);
  const chunks = new ApplyChunks(plan, sources, kernels);
  try {
    await streamTensors(
      {
        count: shard.tensors.length,
        elements: (t) => shard.tensors[t].elements,
        read: (t, start, n, s) => chunks.read(shard.tensors[t], start, n, s),
        compute: (t, _start, n, s) => {
          const tp = shard.tensors[t];
          env.onProgress?.(n * (dtypeSize(tp.dtype) + tp.deltas.reduce((a, d) => a + dtypeSize(d.ref.dtype), 0)));
          return chunks.compute(tp, n, s);
        },
        write: (bytes) => sink.write(bytes),
      },
      slots,
      chunk,
    );
    const r = await sink.commit(prefix);
    return { file: shard.file, bytes: r.bytes };
  } catch (e) {
    await sink.abort().catch(() => undefined);
    throw e;
  } finally {
    await sources.closeAll();
  }
}

/**
 * Copies config and chat files, then writes paramdelta.json (what made this model: the mark of a
 * paramdelta output), then model.safetensors.index.json last: the mark of a complete model.
 */
export async function finalizeApply(plan: ApplyPlan, env: ExecEnv, out: Store): Promise<void> {
  const tags = outputTags('model');
  for (const f of plan.files) {
    const src = await env.resolve(f.from).openRead(f.file);
    try {
      await out.writeFile(f.file, await src.read(0, src.size), { metadata: tags });
    } finally {
      await src.close();
    }
  }
  const manifest: ModelManifest = {
    format: MODEL_FORMAT,
    formatVersion: 1,
    tool: { name: 'paramdelta', version: TOOL_VERSION },
    createdAt: new Date().toISOString(),
    base: plan.base,
    deltas: plan.deltas.map((d) => ({ ref: env.resolve(d.ref).ref, scale: d.scale })),
    shards: plan.shards.map((s) => s.file),
  };
  await out.writeFile(MODEL_MANIFEST, JSON.stringify(manifest, null, 2) + '\n', { metadata: tags });
  const entries = plan.shards.flatMap((s) => s.tensors.map((t) => ({ name: t.name, file: s.file })));
  const total = plan.shards.reduce((a, s) => a + s.tensors.reduce((b, t) => b + t.elements * dtypeSize(t.dtype), 0), 0);
  await out.writeFile(MODEL_INDEX, indexJson(entries, total), { metadata: tags });
}
