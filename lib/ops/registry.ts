import type { Store } from '../storage/types.js';
import { DELTA_MANIFEST, parseDeltaManifest, type DeltaManifest } from './manifest.js';

/** Written next to a delta by the pipeline; a delta without one is auto-applied (it was put there to be). */
export const REGISTRATION_FILE = 'registration.json';

export interface Registration {
  autoApply: boolean;
  /** A probe set to evaluate every re-posted model on: a token file or text file, by reference (else the built-in set). */
  probes?: string;
  /** This delta's quality gate; replaces the pipeline's default gate whole (`{}` gates nothing). */
  gate?: { maxLossRatio?: number; minAgreement?: number };
}

export interface RegisteredDelta {
  name: string;
  ref: string;
  autoApply: boolean;
  registration: Partial<Registration>;
  manifest: DeltaManifest;
}

/** Every complete delta (one with its delta.json) in a deltas folder, and why any other folder was passed over. */
/** A delta's registration.json, or {} when it has none. */
export async function readRegistration(store: Store): Promise<Partial<Registration>> {
  if (!(await store.exists(REGISTRATION_FILE))) return {};
  const v = JSON.parse(await store.readText(REGISTRATION_FILE)) as unknown;
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Partial<Registration>) : {};
}

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
      const reg = await readRegistration(store);
      out.push({ name, ref, autoApply: reg.autoApply ?? true, registration: reg, manifest });
    } catch (e) {
      skipped.push({ name, reason: (e as Error).message });
    }
  }
  return { deltas: out, skipped };
}
