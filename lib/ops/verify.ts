import { dtypeSize } from '../format/dtype.js';
import { openCheckpoint, MODEL_LAYOUT } from '../format/checkpoint.js';
import { sha256OfSource } from '../storage/digest.js';
import { planApply } from './plan.js';
import { openDelta, readDeltaManifest } from './delta.js';
import { InputError } from '../errors.js';
import { ApplyChunks, applySlots } from './apply.js';
import { SourceCache, streamTensors } from './stream.js';
import type { ExecEnv } from './env.js';

export interface VerifyMismatch {
  tensor: string;
  /** Elements whose bytes differ; -1 when the tensor is missing or shaped differently. */
  elements: number;
  detail: string;
}

export interface VerifyResult {
  ok: boolean;
  tensors: number;
  mismatches: VerifyMismatch[];
  /** Delta shards whose sha256 differs from delta.json. */
  corruptShards: string[];
  /** Why the comparison stopped early: a damaged shard could not be read. */
  damage?: string;
}

/** Applies the delta to the original base in memory and compares with post, byte for byte. Writes nothing. */
export async function verify(env: ExecEnv, baseRef: string, postRef: string, deltaRef: string): Promise<VerifyResult> {
  const base = await openCheckpoint(env.resolve(baseRef), MODEL_LAYOUT);
  const post = await openCheckpoint(env.resolve(postRef), MODEL_LAYOUT);
  const store = env.resolve(deltaRef);
  const manifest = await readDeltaManifest(store, deltaRef);
  const corruptShards: string[] = [];
  for (const s of manifest.shards) {
    const src = await store.openRead(s.file);
    try {
      if ((await sha256OfSource(src)) !== s.sha256) corruptShards.push(s.file);
    } finally {
      await src.close();
    }
  }
  // A shard that fails its sha256 may not even open or decode: report it rather than fail.
  const damaged = (e: unknown): VerifyResult => {
    if (!corruptShards.length || !(e instanceof InputError)) throw e;
    return { ok: false, tensors: 0, mismatches: [], corruptShards, damage: e.message };
  };
  let delta;
  try {
    delta = await openDelta(env.resolve, deltaRef, 1);
  } catch (e) {
    return damaged(e);
  }

  const plan = planApply(base, [delta], { shardSize: Number.MAX_SAFE_INTEGER, baseFiles: [] });
  const mismatches: VerifyMismatch[] = [];
  for (const p of post.tensors) {
    if (!base.byName.has(p.name)) mismatches.push({ tensor: p.name, elements: -1, detail: 'in post but not in the base' });
  }
  const tensors = plan.shards.flatMap((s) => s.tensors).filter((t) => {
    const p = post.byName.get(t.name);
    const problem = !p
      ? 'in the base but not in post'
      : p.dtype !== t.dtype || JSON.stringify(p.shape) !== JSON.stringify(t.shape)
        ? `post has ${p.dtype} [${p.shape}], the result would be ${t.dtype} [${t.shape}]`
        : null;
    if (problem) mismatches.push({ tensor: t.name, elements: -1, detail: problem });
    return !problem;
  });

  // Pieces (rows from several sources) stream one after another, each at its offset in the post tensor.
  const items = tensors.flatMap((t) => {
    let offset = 0;
    return (t.pieces ?? [t]).map((piece) => ({ name: t.name, piece, offset: (offset += piece.elements) - piece.elements }));
  });
  const { kernels, slots, chunk } = await applySlots(env, plan.deltas, items.map((i) => i.piece), 1).create();
  const sources = new SourceCache(env.resolve);
  const chunks = new ApplyChunks(plan, sources, kernels);
  const postSlot = ApplyChunks.inputsPerSlot(plan);
  const differing = new Map<string, number>();
  try {
    await streamTensors(
      {
        count: items.length,
        elements: (t) => items[t].piece.elements,
        read: async (t, start, n, s) => {
          const { piece: tp, name, offset } = items[t];
          const p = post.byName.get(name)!;
          const size = dtypeSize(p.dtype);
          const src = await sources.get(postRef, p.file);
          await Promise.all([chunks.read(tp, start, n, s), src.read(p.offset + (offset + start) * size, n * size, s.inputs[postSlot])]);
        },
        compute: (t, _start, n, s) => {
          const tp = items[t].piece;
          const size = dtypeSize(tp.dtype);
          const got = chunks.compute(tp, n, s);
          const want = s.inputs[postSlot].subarray(0, n * size);
          env.onProgress?.(n * size * (2 + tp.deltas.length));
          if (!Buffer.from(got.buffer, got.byteOffset, got.length).equals(Buffer.from(want.buffer, want.byteOffset, want.length))) {
            let bad = 0;
            for (let i = 0; i < n; i++) {
              for (let b = 0; b < size; b++) {
                if (got[i * size + b] !== want[i * size + b]) {
                  bad++;
                  break;
                }
              }
            }
            differing.set(tp.name, (differing.get(tp.name) ?? 0) + bad);
          }
          return null;
        },
      },
      slots,
      chunk,
    );
  } catch (e) {
    return damaged(e);
  } finally {
    await sources.closeAll();
  }
  for (const [tensor, elements] of differing) {
    mismatches.push({ tensor, elements, detail: `${elements} elements differ from post` });
  }
  return { ok: mismatches.length === 0 && corruptShards.length === 0, tensors: tensors.length, mismatches, corruptShards };
}
