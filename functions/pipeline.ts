// Wiring shared by the functions: the blob account, the engine's environment, and run state.
import type { BlobServiceClient } from '@azure/storage-blob';
import { blobServiceFromSettings } from '../lib/storage/azure.js';
import { BlobStore, blobResolver, ensureContainers } from '../lib/storage/blob.js';
import { parseModelRef } from '../lib/storage/refs.js';
import { formatHubRef, hubResolver, isHubRef, parseHubRef } from '../lib/storage/hub.js';
import { InputError } from '../lib/errors.js';
import type { Store } from '../lib/storage/types.js';
import { BLOB_SLOTS, type ExecEnv } from '../lib/ops/env.js';
import { RunState } from '../lib/ops/runstate.js';
import { readSettings, userContainers, type PipelineSettings } from './settings.js';

export interface Pipeline {
  settings: PipelineSettings;
  service: BlobServiceClient;
  /** The engine's environment: references resolve only inside the user containers, or to allowed Hub owners. */
  env: ExecEnv;
  /**
   * Checks a user-supplied reference against the allow-list; throws an InputError naming `field`.
   * An input (no `containers` given) may also be hf://owner/name[@revision] when the owner is in
   * PARAMDELTA_HUB_OWNERS; a field with its own container list (an output) stays in the account.
   */
  ref(field: string, ref: string, containers?: readonly string[]): string;
  run<P extends { hash: string }, R>(runId: string): RunState<P, R>;
  /** The folder of the deltas container. */
  deltas(): Store;
  /** Creates missing containers once per process. */
  ready(): Promise<void>;
}

let current: Pipeline | null = null;
let readyOnce: Promise<void> | null = null;

export function pipeline(): Pipeline {
  if (current) return current;
  const settings = readSettings();
  const service = blobServiceFromSettings(process.env, settings.connection);
  const allowed = userContainers(settings);
  const blob = blobResolver(service, allowed);
  // A long-lived process: only commit-pinned Hub stores are kept, so a branch is resolved per request.
  const hub = hubResolver({ allowedOwners: settings.hubOwners, memo: 'pinned' });
  const resolve = (ref: string): Store => (isHubRef(ref) ? hub(ref) : blob(ref));
  current = {
    settings,
    service,
    env: { resolve, bufferBytes: settings.bufferBytes, slots: BLOB_SLOTS },
    ref(field, ref, containers) {
      if (isHubRef(ref)) {
        if (containers) throw new InputError(`${field}: Hub references are inputs only; name a folder in the storage account`);
        if (!settings.hubOwners.length) {
          throw new InputError(`${field}: Hub references (hf://) are not enabled here; the operator lists allowed owners in PARAMDELTA_HUB_OWNERS`);
        }
        return formatHubRef(parseHubRef(ref, { field, allowedOwners: settings.hubOwners }));
      }
      const r = parseModelRef(ref, { allowedContainers: containers ?? allowed, field });
      return `${r.container}/${r.prefix}`.replace(/\/$/, '');
    },
    run(runId) {
      return new RunState(new BlobStore(service.getContainerClient(settings.containers.runs), runId));
    },
    deltas: () => blob(settings.containers.deltas),
    ready() {
      readyOnce ??= ensureContainers(service, [...allowed, settings.containers.runs]);
      return readyOnce;
    },
  };
  return current;
}

/** Forget the cached wiring (the local host and tests change settings between runs). */
export function resetPipeline(): void {
  current = null;
  readyOnce = null;
}
