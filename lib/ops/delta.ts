import { openCheckpoint } from '../format/checkpoint.js';
import { InputError } from '../errors.js';
import { DELTA_LAYOUT, DELTA_MANIFEST, parseDeltaManifest } from './manifest.js';
import type { OpenedDelta } from './plan.js';
import type { Resolver } from './stream.js';

/** Opens a delta folder; only a complete one (its delta.json written) whose manifest matches its shards. */
export async function openDelta(resolve: Resolver, ref: string, scale = 1): Promise<OpenedDelta> {
  const store = resolve(ref);
  let text: string;
  try {
    text = await store.readText(DELTA_MANIFEST);
  } catch {
    throw new InputError(`${ref}: no ${DELTA_MANIFEST}; not a delta folder, or its computation did not finish`);
  }
  const manifest = parseDeltaManifest(text, `${ref}/${DELTA_MANIFEST}`);
  const ckpt = await openCheckpoint(store, DELTA_LAYOUT);
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
