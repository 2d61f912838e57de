import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { LocalStore } from './local.js';
import type { Store } from './types.js';
import { InputError } from '../errors.js';

/** Where an operation writes: a store that is invisible until `publish`. */
export interface OutputTarget {
  store: Store;
  publish(): Promise<void>;
  discard(): Promise<void>;
}

async function isNonEmptyDir(dir: string): Promise<boolean> {
  try {
    const s = await stat(dir);
    if (!s.isDirectory()) return true;
    return (await readdir(dir)).length > 0;
  } catch {
    return false;
  }
}

function inside(child: string, parent: string): boolean {
  const rel = path.relative(parent, child);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/**
 * A local output folder, built as a hidden sibling and renamed into place when complete, so an
 * interrupted run never leaves a folder that looks finished. An existing folder needs `force`.
 */
export async function localOutput(dir: string, opts: { force?: boolean; inputs?: string[] } = {}): Promise<OutputTarget> {
  const target = path.resolve(dir);
  for (const input of opts.inputs ?? []) {
    const inp = path.resolve(input);
    if (inside(target, inp) || inside(inp, target)) {
      throw new InputError(`--out ${dir}: overlaps the input ${input}; inputs are never modified, choose another folder`);
    }
  }
  if (!opts.force && (await isNonEmptyDir(target))) {
    throw new InputError(`--out ${dir}: already exists; pass --force to replace it`);
  }
  const parent = path.dirname(target);
  await mkdir(parent, { recursive: true });
  const staging = path.join(parent, `.${path.basename(target)}.partial-${randomBytes(4).toString('hex')}`);
  await mkdir(staging);
  return {
    store: new LocalStore(staging),
    async publish() {
      if (await isNonEmptyDir(target)) {
        const old = path.join(parent, `.${path.basename(target)}.old-${randomBytes(4).toString('hex')}`);
        await rename(target, old);
        await rename(staging, target);
        await rm(old, { recursive: true, force: true });
      } else {
        await rm(target, { recursive: true, force: true });
        await rename(staging, target);
      }
    },
    async discard() {
      await rm(staging, { recursive: true, force: true });
    },
  };
}

/**
 * A blob folder as output. Blobs cannot be renamed as a folder, so completeness is the marker
 * (delta.json or model.safetensors.index.json) that the operation writes last; the marker goes
 * first, with any file the new plan will not write, so the folder never looks complete early.
 */
export async function blobOutput(store: Store, marker: string, keep: readonly string[], opts: { force?: boolean } = {}): Promise<OutputTarget> {
  if (!opts.force && (await store.exists(marker))) {
    throw new InputError(`--out ${store.ref}: already holds a complete ${marker}; pass --force to replace it`);
  }
  await clearForRun(store, marker, keep);
  return { store, publish: async () => undefined, discard: async () => undefined };
}

/**
 * Readies an output folder for a run: the completion marker goes first (so the folder never looks
 * complete with a mix of old and new files), then every file the new plan will not write.
 * Shards the plan will write stay: a shard committed earlier under the same plan is reused.
 */
export async function clearForRun(out: Store, marker: string, keep: readonly string[]): Promise<void> {
  if (!out.remove) throw new Error(`${out.ref}: this store cannot delete files`);
  await out.remove(marker);
  const keepSet = new Set(keep);
  for (const f of await out.list()) if (!keepSet.has(f)) await out.remove(f);
}
