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
import { readTokenTable, withAddedTokens, TOKENIZER_FILE, type TokenTable } from '../format/tokenizer.js';
import { mergeTokenizerConfig, renumberGenerationConfig, type VocabPairing } from './vocab.js';
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
  opts: { shardSize: number; vocab?: VocabPairing; fusion?: FusionSpec | null },
): Promise<ApplyPlan> {
  const base = await openCheckpoint(env.resolve(baseRef), MODEL_LAYOUT);
  const opened = [];
  for (const d of deltas) opened.push(await openDelta(env.resolve, d.ref, d.scale ?? 1));
  const tokens = { pairing: opts.vocab ?? 'tokens', newBase: await readTokenTable(base.store), deltas: [] as (TokenTable | null)[] };
  for (const d of opened) tokens.deltas.push(d.manifest.files.some((f) => f.file === TOKENIZER_FILE) ? await readTokenTable(d.ckpt.store) : null);
  const plan = planApply(base, opened, { shardSize: opts.shardSize, baseFiles: await base.store.list(), vocab: tokens, fusion: opts.fusion });
  // Files finalize will edit must parse now, before any shard is written.
  const edit = plan.vocab?.tokenizer;
  if (edit) {
    for (const f of plan.files.filter((x) => x.file === 'tokenizer_config.json' && x.from === plan.base)) parseJsonObject(await env.resolve(f.from).readText(f.file), `${f.from}/${f.file}`);
    if (edit.chatFrom) parseJsonObject(await env.resolve(edit.chatFrom).readText('tokenizer_config.json'), `${edit.chatFrom}/tokenizer_config.json`);
    for (const f of plan.files.filter((x) => x.file === 'generation_config.json' && x.from !== plan.base)) parseJsonObject(await env.resolve(f.from).readText(f.file), `${f.from}/${f.file}`);
  }
  return plan;
}

function parseJsonObject(text: string, where: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new InputError(`${where}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new InputError(`${where}: must be a JSON object`);
  return v as Record<string, unknown>;
}

/** What a shard streams: each tensor, or its pieces in order (rows from several sources, lib/ops/vocab.ts). */
export const streamedTensors = (tensors: readonly ApplyTensorPlan[]): ApplyTensorPlan[] => tensors.flatMap((t) => t.pieces ?? [t]);

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

  /**
   * Declares to each source the bytes that streaming `items` whole, in order, will read (see read), so
   * blob sources can fetch them ahead in large ranged reads: only those bytes, nothing between.
   */
  async expect(items: readonly ApplyTensorPlan[]): Promise<void> {
    for (const t of items) {
      const size = dtypeSize(t.dtype);
      if (t.base) (await this.sources.get(this.plan.base, t.base.file)).expect?.(t.base.offset, t.elements * size);
      for (const d of t.deltas) {
        const source = this.plan.deltas[d.delta];
        const at = d.start ?? 0;
        if (source.layout !== 'compact') {
          const ds = dtypeSize(d.ref.dtype);
          (await this.sources.get(source.ref, d.ref.file)).expect?.(d.ref.offset + at * ds, t.elements * ds);
          continue;
        }
        const shard = await this.compact.get(source.ref, d.ref.file);
        const ct = shard.tensor(d.tensor ?? t.name);
        const ch = shard.chunkElements;
        for (let c = Math.floor(at / ch); c * ch < Math.min(ct.elements, at + t.elements); c++) {
          const [, offset, lengths] = ct.chunks[c];
          shard.source.expect?.(offset, lengths.reduce((a, b) => a + b, 0));
        }
      }
    }
  }

  /** Reads a chunk of the new base (unless `base` is false: fusion's ranking passes read the deltas only) and of each delta. */
  async read(t: ApplyTensorPlan, start: number, n: number, s: Slot, base = true): Promise<void> {
    const size = dtypeSize(t.dtype);
    const layout: (Piece[] | null)[] = this.plan.deltas.map(() => null);
    this.layouts.set(s, layout);
    const from = base ? t.base : null;
    // Rows carried from post that the new base lacks: 0 + carried (fusion's ranking passes skip the base).
    if (base && !from) s.inputs[0].fill(0, 0, n * size);
    const reads: Promise<unknown>[] = from ? [this.sources.get(this.plan.base, from.file).then((src) => src.read(from.offset + start * size, n * size, s.inputs[0]))] : [];
    t.deltas.forEach((d, i) => {
      const source = this.plan.deltas[d.delta];
      const name = d.tensor ?? t.name;
      const at = (d.start ?? 0) + start;
      if (source.layout === 'compact') {
        reads.push(
          this.compact.get(source.ref, d.ref.file).then(async (shard) => {
            const ct = shard.tensor(name);
            if (ct.dtype !== d.ref.dtype) throw new InputError(`${shard.source.name}: tensor "${name}" is ${ct.dtype} now, ${d.ref.dtype} when the run was planned; the delta changed, plan again`);
            // Pieces of a vocabulary tensor may start or end inside a chunk: decode whole chunks, keep the range.
            const ch = shard.chunkElements;
            const from = at - (at % ch);
            const to = Math.min(ct.elements, Math.ceil((at + n) / ch) * ch);
            const pieces = await shard.read(ct, from, to - from, s.aux![2 * i], s.aux![2 * i + 1], this.pool);
            layout[i] = at === from && to === at + n ? pieces : trimPieces(pieces, at - from, n);
          }),
        );
        return;
      }
      const ds = dtypeSize(d.ref.dtype);
      reads.push(this.sources.get(source.ref, d.ref.file).then((src) => src.read(d.ref.offset + at * ds, n * ds, s.inputs[1 + i])));
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
    for (const { a, b, deltas } of this.stretches(t, n, s, !fusion)) {
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

  /**
   * A filled slot's deltas as stretches [a, b) of the chunk in which no delta's dtype changes, one operand per delta of t.
   * `copy` false: compact deltas are read where the codec workers decoded them (fusion does not run the kernels in place).
   */
  stretches(t: ApplyTensorPlan, n: number, s: Slot, copy = true): { a: number; b: number; deltas: DeltaInput[] }[] {
    const layout = this.layouts.get(s) ?? [];
    // Codec workers decoded into shared memory: one copy into the kernels' own memory lets them run in place.
    if (copy) layout.forEach((pieces, i) => {
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
        const scale = d.scale ?? this.plan.deltas[d.delta].scale;
        if (!pieces) {
          const ds = dtypeSize(d.ref.dtype);
          return { dtype: d.ref.dtype as FloatDType, data: s.inputs[1 + i].subarray(a * ds, b * ds), scale };
        }
        const p = pieces.findLast((q) => q.start <= a)!;
        const ds = dtypeSize(p.dtype);
        const at = p.byteOffset + (a - p.start) * ds;
        return { dtype: p.dtype, data: (copy ? s.inputs[1 + i] : s.aux![2 * i + 1]).subarray(at, at + (b - a) * ds), scale };
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
  // A piece read from a compact delta off the chunk grid decodes up to one more chunk at each end.
  const slack = tensors.some((t) => t.deltas.some((d) => d.start !== undefined)) ? 2 * unit : 0;
  const key = JSON.stringify(['apply', env.kernels ?? 'wasm', count, chunk, slack, baseSize, extraInputs, deltas.map((d, i) => [d.layout, d.chunkElements, deltaSize[i]])]);
  const create = async () => {
    const kernels = await kernelsFor(env, count * ((chunk + slack) * inArena + 64 * (deltas.length + extraInputs + 2)));
    const slot = (): Slot => ({
      inputs: [
        kernels.alloc(chunk * baseSize),
        ...deltaSize.map((size, i) => kernels.alloc((chunk + (compact(i) ? slack : 0)) * size)),
        ...Array.from({ length: extraInputs }, () => kernels.alloc(chunk * baseSize)),
      ],
      out: kernels.alloc(chunk * baseSize),
      aux: deltas.flatMap((d, i) =>
        compact(i)
          ? [sharedBytes(((chunk + slack) / d.chunkElements!) * deltaSize[i] * frameBound(d.chunkElements!)), sharedBytes((chunk + slack) * deltaSize[i])]
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
  const items = streamedTensors(shard.tensors);
  const buffers = applySlots(env, plan.deltas, items);
  return withBuffers(buffers.key, buffers.create, async ({ kernels, slots, chunk }) => {
    const prefix = encodeHeader(shard.tensors, SHARD_METADATA).bytes;
    const sink = await out.createShard(shard.file, prefix.length, undefined, { metadata: outputTags('model', plan.hash), coalesce: true });
    const sources = new SourceCache(env.resolve);
    const chunks = new ApplyChunks(plan, sources, kernels);
    try {
      await chunks.expect(items);
      await streamTensors(
        {
          count: items.length,
          elements: (t) => items[t].elements,
          read: (t, start, n, s) => chunks.read(items[t], start, n, s),
          compute: (t, start, n, s) => {
            const tp = items[t];
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
 * `index` names the index otherwise (a re-posted model's waits under a pending name for its gate).
 */
export async function finalizeApply(plan: ApplyPlan, env: ExecEnv, out: Store, opts: { index?: string } = {}): Promise<void> {
  const tags = outputTags('model');
  for (const f of plan.files) {
    const src = await env.resolve(f.from).openRead(f.file);
    let data: Uint8Array;
    try {
      data = await src.read(0, src.size);
    } finally {
      await src.close();
    }
    await out.writeFile(f.file, plan.vocab ? await editedFile(plan, f, data, env) : data, { metadata: tags });
  }
  const manifest: ModelManifest = {
    format: MODEL_FORMAT,
    formatVersion: 1,
    tool: { name: 'paramdelta', version: TOOL_VERSION },
    createdAt: new Date().toISOString(),
    base: plan.base,
    deltas: plan.deltas.map((d) => ({ ref: env.resolve(d.ref).ref, scale: d.scale })),
    shards: plan.shards.map((s) => s.file),
    ...(plan.vocab?.record ? { vocab: plan.vocab.record } : {}),
    ...(plan.vocab ? { tied: plan.vocab.tied } : {}),
  };
  if (plan.fusion) {
    const { cutoffs: _, ...spec } = plan.fusion;
    manifest.fusion = spec;
  }
  await out.writeFile(MODEL_MANIFEST, JSON.stringify(manifest, null, 2) + '\n', { metadata: tags });
  const entries = plan.shards.flatMap((s) => s.tensors.map((t) => ({ name: t.name, file: s.file })));
  const total = plan.shards.reduce((a, s) => a + s.tensors.reduce((b, t) => b + t.elements * dtypeSize(t.dtype), 0), 0);
  await out.writeFile(opts.index ?? MODEL_INDEX, indexJson(entries, total), { metadata: tags });
}

/** Part of decoded pieces: elements [skip, skip + n) of the range, relative to `skip`. */
function trimPieces(pieces: Piece[], skip: number, n: number): Piece[] {
  const out: Piece[] = [];
  for (const p of pieces) {
    const a = Math.max(p.start, skip);
    const b = Math.min(p.start + p.n, skip + n);
    if (b <= a) continue;
    out.push({ start: a - skip, n: b - a, dtype: p.dtype, byteOffset: p.byteOffset + (a - p.start) * dtypeSize(p.dtype) });
  }
  return out;
}

/** A copied file as the output needs it: config.json with the real vocabulary size, tie and dtype; tokenizer files with the output's tokens. */
async function editedFile(plan: ApplyPlan, f: { from: string; file: string }, data: Uint8Array, env: ExecEnv): Promise<Uint8Array | string> {
  const v = plan.vocab!;
  const text = () => Buffer.from(data).toString('utf8');
  const json = parseJsonObject;
  if (f.file === 'config.json' && Object.keys(v.config).length) return JSON.stringify({ ...json(text(), `${f.from}/config.json`), ...v.config }, null, 2) + '\n';
  if (v.tokenizer && f.file === 'generation_config.json' && f.from !== plan.base && v.tokenizer.moved.length) {
    return JSON.stringify(renumberGenerationConfig(json(text(), `${f.from}/${f.file}`), v.tokenizer.moved), null, 2);
  }
  if (!v.tokenizer || f.from !== plan.base) return data;
  if (f.file === TOKENIZER_FILE && v.tokenizer.append.length) return withAddedTokens(text(), v.tokenizer.append);
  if (f.file === 'tokenizer_config.json') {
    const post = v.tokenizer.chatFrom ? json(await env.resolve(v.tokenizer.chatFrom).readText('tokenizer_config.json'), `${v.tokenizer.chatFrom}/tokenizer_config.json`) : null;
    return JSON.stringify(mergeTokenizerConfig(json(text(), `${f.from}/tokenizer_config.json`), post, v.tokenizer.append), null, 2);
  }
  return data;
}
