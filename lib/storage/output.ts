import { lstat, mkdir, readdir, readFile, rename, rm, rmdir } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { LocalStore, syncDir } from './local.js';
import { realLocalPath } from './overlap.js';
import { KIND_TAG, type Store } from './types.js';
import { InputError } from '../errors.js';

/** Where an operation writes: a store that is invisible until `publish`. */
export interface OutputTarget {
  store: Store;
  publish(): Promise<void>;
  discard(): Promise<void>;
}

/**
 * One kind of output folder paramdelta writes (a delta, a model): lib/ops/outputs.ts defines them.
 * Clearing and replacing touch only folders of the same kind, and only the names it owns.
 */
export interface OutputKind {
  /** 'delta' or 'model'; recorded on every blob written as KIND_TAG. */
  name: string;
  /** Written last: its presence means the output is complete. */
  marker: string;
  /** paramdelta's own manifest in this kind of folder, and the value of its `format` field: the tag of ownership. */
  manifest: { file: string; format: string };
  /** Exact file names paramdelta writes into this kind of folder. */
  names: readonly string[];
  /** Name patterns of the files it writes (shards). */
  patterns: readonly RegExp[];
  owns(file: string): boolean;
}

/** For callers that name no kind: it owns nothing, so only an absent or empty folder is written. */
const UNKNOWN_KIND: OutputKind = {
  name: 'output',
  marker: '',
  manifest: { file: '', format: '' },
  names: [],
  patterns: [],
  owns: () => false,
};

/** What an output folder holds now: nothing, or an earlier (perhaps interrupted) output of the same kind. */
export type OutputState = { state: 'absent' } | { state: 'empty' } | { state: 'ours'; complete: boolean; files: string[] };

function listed(names: string[]): string {
  const shown = names.slice(0, 5).join(', ');
  return names.length > 5 ? `${shown} and ${names.length - 5} more` : shown;
}

/** The `format` field of a manifest, or null when it is not JSON or has none. */
function formatOf(text: string): string | null {
  try {
    const f = (JSON.parse(text) as { format?: unknown } | null)?.format;
    return typeof f === 'string' ? f : null;
  } catch {
    return null;
  }
}

/**
 * Decides whether a non-empty folder is an earlier output of `kind`: every entry is a plain file
 * whose name that kind owns, and the folder carries paramdelta's tag (its manifest, or the kind
 * tag on every blob). Anything else is refused, whatever `--force` says.
 */
async function judge(
  label: string,
  kind: OutputKind,
  files: string[],
  others: string[],
  manifestText: () => Promise<string | null>,
  tags: Map<string, Record<string, string>> | null,
): Promise<OutputState> {
  if (files.length === 0 && others.length === 0) return { state: 'empty' };
  const notOurs = [...others, ...files.filter((f) => !kind.owns(f))];
  const kinds = tags ? [...new Set(files.map((f) => tags.get(f)?.[KIND_TAG]).filter((k): k is string => !!k && k !== kind.name))] : [];
  const hint = kinds.length ? ` (it holds a paramdelta ${kinds.join(' and ')} output)` : '';
  const a = /^[aeiou]/.test(kind.name) ? 'an' : 'a';
  const refuse = (why: string) =>
    new InputError(`${label}: ${why}${hint}; paramdelta replaces only ${a} ${kind.name} folder it wrote itself, even with --force: choose another folder, or empty this one yourself`);
  if (notOurs.length) throw refuse(`holds ${listed(notOurs)}, which paramdelta does not write into ${a} ${kind.name} folder`);
  const text = files.includes(kind.manifest.file) ? await manifestText() : null;
  const tagged = tags !== null && files.every((f) => tags.get(f)?.[KIND_TAG] === kind.name);
  if ((text === null || formatOf(text) !== kind.manifest.format) && !tagged) {
    throw refuse(`holds ${listed(files)} but no paramdelta ${kind.manifest.file}${tags ? ' nor paramdelta tags on its blobs' : ''}, so it is not ${a} ${kind.name} paramdelta wrote`);
  }
  return { state: 'ours', complete: files.includes(kind.marker), files };
}

/** What a local output folder holds (`target` with symlinks already resolved). */
async function inspectLocal(target: string, kind: OutputKind, label: string): Promise<OutputState> {
  try {
    if (!(await lstat(target)).isDirectory()) throw new InputError(`${label}: is a file, not a folder`);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { state: 'absent' };
    throw e;
  }
  const entries = await readdir(target, { withFileTypes: true });
  const files = entries.filter((e) => e.isFile()).map((e) => e.name).sort();
  const others = entries.filter((e) => !e.isFile()).map((e) => (e.isDirectory() ? `${e.name}/` : e.name)).sort();
  const manifest = () => readFile(path.join(target, kind.manifest.file), 'utf8').catch(() => null);
  return judge(label, kind, files, others, manifest, null);
}

/** What an output folder in a store holds (blob storage: metadata tags count as ownership). */
export async function inspectOutput(store: Store, kind: OutputKind, label = store.ref): Promise<OutputState> {
  const tags = store.listMetadata ? await store.listMetadata() : null;
  const files = tags ? [...tags.keys()].sort() : await store.list();
  const folders = (await store.listFolders()).map((f) => `${f}/`);
  const manifest = () => store.readText(kind.manifest.file).catch(() => null);
  return judge(label, kind, files, folders, manifest, tags);
}

/** Deletes the files of a replaced folder that `kind` owns, then the folder if that emptied it. */
async function removeOwned(dir: string, kind: OutputKind): Promise<void> {
  for (const e of await readdir(dir, { withFileTypes: true })) {
    if (e.isFile() && kind.owns(e.name)) await rm(path.join(dir, e.name));
  }
  // Anything else that appeared meanwhile is not ours to delete: the hidden folder keeps it.
  await rmdir(dir).catch(() => undefined);
}

/**
 * A local output folder, built as a hidden sibling and renamed into place when complete, so an
 * interrupted run never leaves a folder that looks finished. Symlinks are resolved first. An
 * existing folder is replaced only with `force`, and only when it is an earlier output of the same
 * kind holding only names that kind owns; publishing checks that again.
 */
export async function localOutput(dir: string, kind: OutputKind = UNKNOWN_KIND, opts: { force?: boolean; label?: string } = {}): Promise<OutputTarget> {
  const label = opts.label ?? `--out ${dir}`;
  const target = await realLocalPath(dir);
  const check = async () => {
    const s = await inspectLocal(target, kind, label);
    if (s.state === 'ours' && !opts.force) throw new InputError(`${label}: already exists; pass --force to replace it (it holds an earlier paramdelta ${kind.name})`);
    return s;
  };
  await check();
  const parent = path.dirname(target);
  await mkdir(parent, { recursive: true });
  const staging = path.join(parent, `.${path.basename(target)}.partial-${randomBytes(4).toString('hex')}`);
  await mkdir(staging);
  return {
    store: new LocalStore(staging),
    async publish() {
      // Every file in staging is already fsynced, and staging itself after each rename into it.
      const now = await check();
      if (now.state === 'ours') {
        const old = path.join(parent, `.${path.basename(target)}.old-${randomBytes(4).toString('hex')}`);
        await rename(target, old);
        await rename(staging, target);
        await syncDir(parent);
        await removeOwned(old, kind);
        return;
      }
      if (now.state === 'empty') await rmdir(target);
      await rename(staging, target);
      await syncDir(parent);
    },
    async discard() {
      await rm(staging, { recursive: true, force: true });
    },
  };
}

/**
 * A blob folder as output. Blobs cannot be renamed as a folder, so completeness is the marker that
 * the operation writes last; the marker goes first, with any file the new plan will not write, so
 * the folder never looks complete early. A complete earlier output needs `force`; an interrupted
 * one (tagged blobs, no marker) is cleared and resumed without it.
 */
export async function blobOutput(store: Store, kind: OutputKind, keep: readonly string[], opts: { force?: boolean; label?: string } = {}): Promise<OutputTarget> {
  const label = opts.label ?? `--out ${store.ref}`;
  const state = await inspectOutput(store, kind, label);
  if (state.state === 'ours' && state.complete && !opts.force) {
    throw new InputError(`${label}: already holds a complete ${kind.marker}; pass --force to replace it`);
  }
  await clearInspected(store, kind, keep, state);
  return { store, publish: async () => undefined, discard: async () => undefined };
}

/**
 * Readies an output folder for a run: refused (InputError) unless it is empty or an earlier output
 * of the same kind; then the completion marker goes first (so the folder never looks complete with
 * a mix of old and new files), then every file of that kind the new plan will not write. Shards the
 * plan will write stay: a shard committed earlier under the same plan is reused.
 */
export async function clearForRun(out: Store, kind: OutputKind, keep: readonly string[], label = out.ref): Promise<void> {
  await clearInspected(out, kind, keep, await inspectOutput(out, kind, label));
}

async function clearInspected(out: Store, kind: OutputKind, keep: readonly string[], state: OutputState): Promise<void> {
  if (state.state !== 'ours') return;
  if (!out.remove) throw new Error(`${out.ref}: this store cannot delete files`);
  const keepSet = new Set(keep);
  if (state.files.includes(kind.marker)) await out.remove(kind.marker);
  for (const f of state.files) if (f !== kind.marker && !keepSet.has(f) && kind.owns(f)) await out.remove(f);
}
