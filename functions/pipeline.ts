// Wiring shared by the functions: the blob account, the engine's environment, and run state.
import type { BlobServiceClient } from '@azure/storage-blob';
import { blobServiceFromSettings } from '../lib/storage/azure.js';
import { BlobStore, blobResolver, ensureContainers } from '../lib/storage/blob.js';
import { parseModelRef } from '../lib/storage/refs.js';
import type { Store } from '../lib/storage/types.js';
import { BLOB_SLOTS, type ExecEnv } from '../lib/ops/env.js';
import { RunState } from '../lib/ops/runstate.js';
import { readSettings, userContainers, type PipelineSettings } from './settings.js';

export interface Pipeline {
  settings: PipelineSettings;
  service: BlobServiceClient;
  /** The engine's environment: references resolve only inside the user containers. */
  env: ExecEnv;
  /** Checks a user-supplied reference against the allow-list; throws an InputError naming `field`. */
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
  const resolve = blobResolver(service, allowed);
  current = {
    settings,
    service,
    env: { resolve, bufferBytes: settings.bufferBytes, slots: BLOB_SLOTS },
    ref(field, ref, containers = allowed) {
      const r = parseModelRef(ref, { allowedContainers: containers, field });
      return `${r.container}/${r.prefix}`.replace(/\/$/, '');
    },
    run(runId) {
      return new RunState(new BlobStore(service.getContainerClient(settings.containers.runs), runId));
    },
    deltas: () => resolve(settings.containers.deltas),
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
