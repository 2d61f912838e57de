// How the CLI resolves references: local paths, az://container/prefix in the configured account, or hf://owner/name[@revision].
import type { BlobServiceClient } from '@azure/storage-blob';
import { LocalStore } from '../lib/storage/local.js';
import { blobResolver } from '../lib/storage/blob.js';
import { createRequire } from 'node:module';
import type * as Azure from '../lib/storage/azure.js';
import { isBlobRef } from '../lib/storage/refs.js';
import { hubResolver, isHubRef } from '../lib/storage/hub.js';
import { InputError } from '../lib/errors.js';
import { blobOutput, localOutput, type OutputKind, type OutputTarget } from '../lib/storage/output.js';
import { assertCliOutputApart } from '../lib/storage/overlap.js';
import type { Store } from '../lib/storage/types.js';
import { readSettings, userContainers } from '../functions/settings.js';

export interface StorageOptions {
  /** A connection string given with --storage; otherwise the Functions settings in the environment. */
  storage?: string;
}

let azureModule: typeof Azure | null = null;

/**
 * The Azure SDK takes about half a second to load, so only a blob reference loads it: synchronously,
 * by require of the ES module (Node ≥ 22.12); the built JavaScript, or under the test runner the source.
 */
function azure(): typeof Azure {
  const here = import.meta.url;
  return (azureModule ??= createRequire(here)(here.endsWith('.ts') ? '../lib/storage/azure.ts' : '../lib/storage/azure.js') as typeof Azure);
}

export function cliResolver(opts: StorageOptions): (ref: string) => Store {
  let blob: ((ref: string) => Store) | null = null;
  let hub: ((ref: string) => Store) | null = null;
  return (ref) => {
    if (isHubRef(ref)) return (hub ??= hubResolver())(ref);
    if (!isBlobRef(ref)) return new LocalStore(ref);
    if (!blob) {
      const settings = readSettings();
      let service: BlobServiceClient;
      try {
        service = opts.storage
          ? azure().blobServiceFromConnectionString(opts.storage, '--storage')
          : azure().blobServiceFromSettings(process.env, settings.connection);
      } catch (e) {
        // Its messages name the setting and never its value; a bad setting is the user's input (exit 2).
        if (e instanceof Error && !(e instanceof TypeError) && !(e instanceof ReferenceError)) throw new InputError(e.message);
        throw e;
      }
      blob = blobResolver(service, userContainers(settings));
    }
    return blob(ref);
  };
}

/**
 * The output target for --out: a hidden staging folder locally, or a marker-last blob folder. The
 * output is checked against every input first (before planning, before anything is written).
 */
export async function cliOutput(
  resolve: (ref: string) => Store,
  out: string,
  kind: OutputKind,
  opts: { force?: boolean; inputs: { label: string; ref: string }[] },
): Promise<(plan: { shards: { file: string }[] }) => Promise<OutputTarget>> {
  if (isHubRef(out)) throw new InputError(`--out ${out}: Hub references are inputs only; write to a local folder or az://container/prefix`);
  await assertCliOutputApart({ label: '--out', ref: out }, opts.inputs);
  return async (plan) =>
    isBlobRef(out)
      ? blobOutput(resolve(out), kind, plan.shards.map((s) => s.file), { force: opts.force })
      : localOutput(out, kind, { force: opts.force });
}
