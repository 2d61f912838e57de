import { openCheckpoint, type Checkpoint, type CheckpointTensor } from '../format/checkpoint.js';
import { InputError } from '../errors.js';
import { CompactShard } from '../codec/reader.js';
import type { Store } from '../storage/types.js';
import { DELTA_LAYOUT, DELTA_MANIFEST, parseDeltaManifest, type DeltaManifest } from './manifest.js';
import type { OpenedDelta } from './plan.js';
import type { Resolver } from './stream.js';

/** Opens a delta folder, either layout; only a complete one (its delta.json written) whose manifest matches its shards. */
export async function openDelta(resolve: Resolver, ref: string, scale = 1): Promise<OpenedDelta> {
  const store = resolve(ref);
  const manifest = await readDeltaManifest(store, ref);
  const ckpt = manifest.layout === 'compact' ? await openCompactShards(store, manifest) : await openCheckpoint(store, DELTA_LAYOUT);
  const listed = Object.keys(manifest.tensors);
  for (const t of ckpt.tensors) {
    const m = manifest.tensors[t.name];
    if (!m || m.dtype !== t.dtype || JSON.stringify(m.shape) !== JSON.stringify(t.shape)) {
      throw new InputError(`${ref}: tensor "${t.name}" in ${t.file} does not match ${DELTA_MANIFEST}`);
    }
  }
  const missing = listed.filter((n) => !ckpt.byName.has(n));
  if (missing.length) throw new InputError(`${ref}: ${DELTA_MANIFEST} lists tensors the shards lack: ${missing.join(', ')}`);
  return { ref, scale, manifest, ckpt };
}

/** A delta folder's delta.json, checked; an InputError when it is missing or malformed. */
export async function readDeltaManifest(store: Store, ref: string): Promise<DeltaManifest> {
  let text: string;
  try {
    text = await store.readText(DELTA_MANIFEST);
  } catch {
    throw new InputError(`${ref}: no ${DELTA_MANIFEST}; not a delta folder, or its computation did not finish`);
  }
  return parseDeltaManifest(text, `${ref}/${DELTA_MANIFEST}`);
}

/**
 * The compact shards' tensors, as a checkpoint whose tensors carry their widest chunk dtype and their
 * decoded size (offsets mean nothing here: chunk tables locate the data). Reads each shard's trailer and header.
 */
async function openCompactShards(store: Store, manifest: DeltaManifest): Promise<Checkpoint> {
  const tensors: CheckpointTensor[] = [];
  const byName = new Map<string, CheckpointTensor>();
  const present = new Set(await store.list());
  for (const s of manifest.shards) {
    if (!present.has(s.file)) throw new InputError(`${store.ref}: ${DELTA_MANIFEST} names shard ${s.file}, which is missing`);
    const src = await store.openRead(s.file);
    let shard: CompactShard;
    try {
      shard = await CompactShard.open(src);
    } finally {
      await src.close();
    }
    if (shard.chunkElements !== manifest.compact!.chunkElements) {
      throw new InputError(`${src.name}: chunks of ${shard.chunkElements} elements, but ${DELTA_MANIFEST} says ${manifest.compact!.chunkElements}`);
    }
    for (const t of shard.tensors.values()) {
      const prior = byName.get(t.name);
      if (prior) throw new InputError(`${store.ref}: tensor "${t.name}" is in both ${prior.file} and ${s.file}`);
      const ct: CheckpointTensor = { name: t.name, dtype: t.dtype, shape: t.shape, file: s.file, offset: 0, byteLength: t.rawBytes, elements: t.elements };
      tensors.push(ct);
      byName.set(t.name, ct);
    }
  }
  return { store, files: manifest.shards.map((s) => s.file), tensors, byName, config: null, headers: new Map() };
}
