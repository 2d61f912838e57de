import type { Store } from '../storage/types.js';
import { DELTA_MANIFEST, parseDeltaManifest, type DeltaManifest } from './manifest.js';

/** Written next to a delta by the pipeline; a delta without one is auto-applied (it was put there to be). */
export const REGISTRATION_FILE = 'registration.json';

export interface Registration {
  autoApply: boolean;
}

export interface RegisteredDelta {
  name: string;
  ref: string;
  autoApply: boolean;
  manifest: DeltaManifest;
}

/** Every complete delta (one with its delta.json) in a deltas folder, and why any other folder was passed over. */
export async function listDeltas(
  deltas: Store,
  resolve: (ref: string) => Store,
): Promise<{ deltas: RegisteredDelta[]; skipped: { name: string; reason: string }[] }> {
  const out: RegisteredDelta[] = [];
  const skipped: { name: string; reason: string }[] = [];
  for (const name of await deltas.listFolders()) {
    const ref = `${deltas.ref.replace(/\/+$/, '')}/${name}`;
    const store = resolve(ref);
    if (!(await store.exists(DELTA_MANIFEST))) {
      skipped.push({ name, reason: 'incomplete: no delta.json yet' });
      continue;
    }
    try {
      const manifest = parseDeltaManifest(await store.readText(DELTA_MANIFEST), `${ref}/${DELTA_MANIFEST}`);
      const reg = (await store.exists(REGISTRATION_FILE))
        ? (JSON.parse(await store.readText(REGISTRATION_FILE)) as Partial<Registration>)
        : {};
      out.push({ name, ref, autoApply: reg.autoApply ?? true, manifest });
    } catch (e) {
      skipped.push({ name, reason: (e as Error).message });
    }
  }
  return { deltas: out, skipped };
}
