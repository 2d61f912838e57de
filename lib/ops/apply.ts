import { dtypeSize, isFloatDType, type FloatDType } from '../format/dtype.js';
import { encodeHeader } from '../format/safetensors.js';
import { openCheckpoint, indexJson, MODEL_INDEX, MODEL_LAYOUT } from '../format/checkpoint.js';
import type { Store } from '../storage/types.js';
import { TOOL_VERSION } from '../version.js';
import { MODEL_FORMAT, MODEL_MANIFEST, type ModelManifest } from './manifest.js';
import { outputTags } from './outputs.js';
import { planApply, SHARD_METADATA, type ApplyDeltaSource, type ApplyPlan, type ApplyTensorPlan } from './plan.js';
import { CompactShards, type Piece } from '../codec/reader.js';
import { codecPool, sharedBytes, type CodecPool } from '../codec/pool.js';
import { frameBound } from '../codec/chunk.js';
import { InputError } from '../errors.js';
import { withBuffers } from './buffers.js';
import { openDelta } from './delta.js';
import { SourceCache, streamTensors, alignedChunkElements, type Slot } from './stream.js';
import { DEFAULT_BUFFER_BYTES, kernelsFor, slotsFor, type ExecEnv } from './env.js';
import type { Kernels, DeltaInput } from '../kernels/index.js';
import { FusionKernel } from '../fusion/combine.js';
import type { FusionSpec } from '../fusion/options.js';

export interface ApplyShardResult {
  file: string;
  bytes: number;
}

/** Plans an application: every delta tensor must exist in the new base with the same shape; raised before writing. */
export async function prepareApply(
  env: ExecEnv,
  baseRef: string,
  deltas: { ref: string; scale?: number }[],
  opts: { shardSize: number; fusion?: FusionSpec | null },
): Promise<ApplyPlan> {
  const base = await openCheckpoint(env.resolve(baseRef), MODEL_LAYOUT);
  const opened = [];
  for (const d of deltas) opened.push(await openDelta(env.resolve, d.ref, d.scale ?? 1));
  return planApply(base, opened, { shardSize: opts.shardSize, baseFiles: await base.store.list(), fusion: opts.fusion });
}

/** Reads one tensor chunk of the new base and of each delta (plain or compact), and combines them into `out`. */
export class ApplyChunks {
  private readonly compact: CompactShards;
  /** Per slot and delta: how the chunk read last into that slot is laid out (compact deltas only). */
  private readonly layouts = new WeakMap<Slot, (Piece[] | null)[]>();
  private fusion: FusionKernel | null = null;

  constructor(
    private readonly plan: Pick<ApplyPlan, 'base' | 'deltas' | 'fusion'>,
    private readonly sources: SourceCache,
    private readonly kernels: Kernels,
    private readonly pool: CodecPool = codecPool(),
  ) {
    this.compact = new CompactShards((ref, file) => sources.get(ref, file));
  }

  static inputsPerSlot(plan: Pick<ApplyPlan, 'deltas'>): number {
    return 1 + plan.deltas.length;
  }

  /** Reads a chunk of the new base (unless `base` is false: fusion's ranking passes read the deltas only) and of each delta. */
  async read(t: ApplyTensorPlan, start: number, n: number, s: Slot, base = true): Promise<void> {
    const size = dtypeSize(t.dtype);
    const layout: (Piece[] | null)[] = this.plan.deltas.map(() => null);
    this.layouts.set(s, layout);
    const reads: Promise<unknown>[] = base ? [this.sources.get(this.plan.base, t.base.file).then((src) => src.read(t.base.offset + start * size, n * size, s.inputs[0]))] : [];
    t.deltas.forEach((d, i) => {
      const source = this.plan.deltas[d.delta];
      if (source.layout === 'compact') {
        reads.push(
          this.compact.get(source.ref, d.ref.file).then(async (shard) => {
            const ct = shard.tensor(t.name);
            if (ct.dtype !== d.ref.dtype) throw new InputError(`${shard.source.name}: tensor "${t.name}" is ${ct.dtype} now, ${d.ref.dtype} when the run was planned; the delta changed, plan again`);
            layout[i] = await shard.read(ct, start, n, s.aux![2 * i], s.aux![2 * i + 1], this.pool);
          }),
        );
        return;
      }
      const ds = dtypeSize(d.ref.dtype);
      reads.push(this.sources.get(source.ref, d.ref.file).then((src) => src.read(d.ref.offset + start * ds, n * ds, s.inputs[1 + i])));
    });
    await Promise.all(reads);
  }

  /** The new tensor's bytes for this chunk (elements start … start+n−1), in the new base's dtype. */
  compute(t: ApplyTensorPlan, n: number, s: Slot, start = 0): Uint8Array {
    const bytes = n * dtypeSize(t.dtype);
    const out = s.out.subarray(0, bytes);
    if (t.deltas.length === 0 || !isFloatDType(t.dtype)) {
      out.set(s.inputs[0].subarray(0, bytes));
      return out;
    }
    const dtype: FloatDType = t.dtype;
    const size = dtypeSize(dtype);
    const fusion = this.plan.fusion;
    for (const { a, b, deltas } of this.stretches(t, n, s)) {
      if (!fusion) {
        this.kernels.apply(dtype, s.inputs[0].subarray(a * size, b * size), deltas, b - a, dtype, out.subarray(a * size, b * size));
        continue;
      }
      this.fusion ??= new FusionKernel(fusion);
      const cut = fusion.cutoffs[t.name];
      const operands = deltas.map((d, i) => ({ ...d, delta: t.deltas[i].delta, weight: d.scale, keep: cut?.[i] }));
      this.fusion.combine(t.name, dtype, s.inputs[0].subarray(a * size, b * size), operands, start + a, b - a, out.subarray(a * size, b * size));
    }
    return out;
  }

  /** A filled slot's deltas as stretches [a, b) of the chunk in which no delta's dtype changes, one operand per delta of t. */
  stretches(t: ApplyTensorPlan, n: number, s: Slot): { a: number; b: number; deltas: DeltaInput[] }[] {
    const layout = this.layouts.get(s) ?? [];
    // Codec workers decoded into shared memory: one copy into the kernels' own memory lets them run in place.
    layout.forEach((pieces, i) => {
      const last = pieces?.[pieces.length - 1];
      if (last) s.inputs[1 + i].set(s.aux![2 * i + 1].subarray(0, last.byteOffset + last.n * dtypeSize(last.dtype)));
    });
    // Compact deltas store each chunk in its own dtype: run the kernel once per stretch where no delta's dtype changes.
    const cuts = new Set<number>([0]);
    for (const pieces of layout) pieces?.forEach((p, j) => j > 0 && p.dtype !== pieces[j - 1].dtype && cuts.add(p.start));
    const starts = [...cuts].sort((a, b) => a - b);
    return starts.map((a, k) => {
      const b = k + 1 < starts.length ? starts[k + 1] : n;
      const deltas = t.deltas.map((d, i) => {
        const pieces = layout[i];
        const scale = this.plan.deltas[d.delta].scale;
        if (!pieces) {
          const ds = dtypeSize(d.ref.dtype);
          return { dtype: d.ref.dtype as FloatDType, data: s.inputs[1 + i].subarray(a * ds, b * ds), scale };
        }
        const p = pieces.findLast((q) => q.start <= a)!;
        const ds = dtypeSize(p.dtype);
        const at = p.byteOffset + (a - p.start) * ds;
        return { dtype: p.dtype, data: s.inputs[1 + i].subarray(at, at + (b - a) * ds), scale };
      });
      return { a, b, deltas };
    });
  }
}

/**
 * Sizes chunk buffers for the given tensors, each input as wide as its widest dtype there, in the kernels'
 * memory (`extraInputs` more, as wide as the base). A compact delta also gets, in memory shared with the
 * codec workers, room for its frames and for its decoded chunks; a stream chunk then spans whole compact
 * chunks of every delta.
 */
export function applySlots(
  env: ExecEnv,
  deltas: Pick<ApplyDeltaSource, 'layout' | 'chunkElements'>[],
  tensors: readonly ApplyTensorPlan[],
  extraInputs = 0,
): { key: string; create: () => Promise<{ kernels: Kernels; slots: Slot[]; chunk: number }> } {
  const baseSize = Math.max(1, ...tensors.map((t) => dtypeSize(t.dtype)));
  const deltaSize = deltas.map((_, i) => Math.max(1, ...tensors.flatMap((t) => t.deltas.filter((d) => d.delta === i).map((d) => dtypeSize(d.ref.dtype)))));
  const compact = (i: number) => deltas[i].layout === 'compact';
  // Per element: base, each delta, the extra inputs and the output; a compact delta's frames and decoded chunk too.
  const inArena = baseSize * (2 + extraInputs) + deltaSize.reduce((a, b) => a + b, 0);
  const perElement = inArena + deltaSize.reduce((a, b, i) => a + (compact(i) ? 2 * b + 1 : 0), 0);
  const count = slotsFor(env);
  const unit = Math.max(1, ...deltas.filter((d) => d.layout === 'compact').map((d) => d.chunkElements!));
  const chunk = alignedChunkElements(perElement, env.bufferBytes ?? DEFAULT_BUFFER_BYTES, count, unit);
  const key = JSON.stringify(['apply', env.kernels ?? 'wasm', count, chunk, baseSize, extraInputs, deltas.map((d, i) => [d.layout, d.chunkElements, deltaSize[i]])]);
  const create = async () => {
    const kernels = await kernelsFor(env, count * (chunk * inArena + 64 * (deltas.length + extraInputs + 2)));
    const slot = (): Slot => ({
      inputs: [
        kernels.alloc(chunk * baseSize),
        ...deltaSize.map((size) => kernels.alloc(chunk * size)),
        ...Array.from({ length: extraInputs }, () => kernels.alloc(chunk * baseSize)),
      ],
      out: kernels.alloc(chunk * baseSize),
      aux: deltas.flatMap((d, i) =>
        compact(i)
          ? [sharedBytes((chunk / d.chunkElements!) * deltaSize[i] * frameBound(d.chunkElements!)), sharedBytes(chunk * deltaSize[i])]
          : [new Uint8Array(0), new Uint8Array(0)],
      ),
    });
    return { kernels, slots: Array.from({ length: count }, slot), chunk };
  };
  return { key, create };
}

/** Writes one output shard. Safe to run again: same plan, same bytes. */
export async function executeApplyShard(plan: ApplyPlan, index: number, env: ExecEnv, out: Store): Promise<ApplyShardResult> {
  const shard = plan.shards[index];
  const buffers = applySlots(env, plan.deltas, shard.tensors);
  return withBuffers(buffers.key, buffers.create, async ({ kernels, slots, chunk }) => {
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
          compute: (t, start, n, s) => {
            const tp = shard.tensors[t];
            env.onProgress?.(n * (dtypeSize(tp.dtype) + tp.deltas.reduce((a, d) => a + dtypeSize(d.ref.dtype), 0)));
            return chunks.compute(tp, n, s, start);
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
  });
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
  if (plan.fusion) {
    const { cutoffs: _, ...spec } = plan.fusion;
    manifest.fusion = spec;
  }
  await out.writeFile(MODEL_MANIFEST, JSON.stringify(manifest, null, 2) + '\n', { metadata: tags });
  const entries = plan.shards.flatMap((s) => s.tensors.map((t) => ({ name: t.name, file: s.file })));
  const total = plan.shards.reduce((a, s) => a + s.tensors.reduce((b, t) => b + t.elements * dtypeSize(t.dtype), 0), 0);
  await out.writeFile(MODEL_INDEX, indexJson(entries, total), { metadata: tags });
}
