// The one rule for where an output may go: never onto, into or around an input, and never a
// container root. Judged on path segments (models/a and models/ab are apart), after resolving
// symlinks for local paths, so the CLI, the HTTP API and the planning activities agree.
import { readlink, realpath } from 'node:fs/promises';
import path from 'node:path';
import { InputError } from '../errors.js';
import { BLOB_SCHEME, isBlobRef } from './refs.js';

/** Where a reference leads, as path segments under one namespace. */
export type Location =
  | { kind: 'local'; segments: string[]; real: string }
  | { kind: 'blob'; container: string; segments: string[] }
  /** A reference paramdelta only reads from elsewhere (e.g. a hub://); it never overlaps a local or blob folder. */
  | { kind: 'remote'; ref: string };

/** A reference with the name the user gave it (`--base`, `output`, `deltas.0`), for messages. */
export interface Located {
  label: string;
  ref: string;
  where: Location;
}

/** Any `scheme://` other than az:// (local paths never need one). */
const REMOTE = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//;

/**
 * A blob reference in either form (`container/prefix` or `az://container/prefix`), already checked
 * by parseModelRef; empty segments (a trailing slash) carry no meaning here.
 */
export function blobLocation(ref: string): Location {
  const body = isBlobRef(ref) ? ref.slice(BLOB_SCHEME.length) : ref;
  const [container, ...segments] = body.split('/').filter((s) => s !== '');
  return { kind: 'blob', container: container ?? '', segments };
}

/**
 * A local path with symlinks resolved. A path that does not exist yet (an output) resolves its
 * nearest existing ancestor and keeps the rest, so a link anywhere above it is seen through; a
 * dangling link is followed to where it points, since that is where writing through it would land.
 */
export async function realLocalPath(p: string, hops = 0): Promise<string> {
  const abs = path.resolve(p);
  const rest: string[] = [];
  for (let at = abs; ; at = path.dirname(at)) {
    try {
      return path.join(await realpath(at), ...rest.reverse());
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw e;
      const link = await readlink(at).catch(() => null);
      if (link !== null) {
        if (hops >= 40) throw new InputError(`${p}: too many levels of symbolic links`);
        return realLocalPath(path.join(path.resolve(path.dirname(at), link), ...rest.reverse()), hops + 1);
      }
      if (path.dirname(at) === at) throw e;
      rest.push(path.basename(at));
    }
  }
}

export async function localLocation(p: string): Promise<Location> {
  const real = await realLocalPath(p);
  return { kind: 'local', segments: real.split(path.sep).filter((s) => s !== ''), real };
}

/** How the CLI reads a reference: az:// is blob storage, another scheme is remote, the rest is a local path. */
export async function cliLocation(ref: string): Promise<Location> {
  if (isBlobRef(ref)) return blobLocation(ref);
  if (REMOTE.test(ref)) return { kind: 'remote', ref };
  return localLocation(ref);
}

function startsWith(long: string[], short: string[]): boolean {
  return short.length <= long.length && short.every((s, i) => long[i] === s);
}

/** How `out` stands to `input`: the same folder, inside it, around it, or apart (null). */
export function relation(out: Location, input: Location): 'same' | 'inside' | 'contains' | null {
  if (out.kind === 'remote' || input.kind === 'remote' || out.kind !== input.kind) return null;
  if (out.kind === 'blob' && input.kind === 'blob' && out.container !== input.container) return null;
  const a = out.segments;
  const b = input.segments;
  if (a.length === b.length && startsWith(a, b)) return 'same';
  if (startsWith(a, b)) return 'inside';
  if (startsWith(b, a)) return 'contains';
  return null;
}

const WHY = { same: 'it is that folder', inside: 'it lies inside it', contains: 'it contains it' } as const;

function shown(l: Located): string {
  const via = l.where.kind === 'local' && path.resolve(l.ref) !== l.where.real ? ` (${l.where.real} through symlinks)` : '';
  return `${l.ref}${via}`;
}

/**
 * Refuses an output that is a container root, or that equals, lies inside or contains any input.
 * The message starts with the output's label (the CLI flag or the API field) and names the input.
 */
export function assertOutputApart(out: Located, inputs: readonly Located[]): void {
  if (out.where.kind === 'blob' && out.where.segments.length === 0) {
    throw new InputError(
      `${out.label}: ${out.ref} is a whole container, which holds every model in it; an output is a folder inside one (e.g. ${out.where.container}/NAME)`,
    );
  }
  for (const input of inputs) {
    const r = relation(out.where, input.where);
    if (r) {
      throw new InputError(
        `${out.label}: ${shown(out)} overlaps the input ${input.label} ${shown(input)} (${WHY[r]}); inputs are never written or deleted, so choose another output folder`,
      );
    }
  }
}

/** The CLI's check: every reference located the way the CLI resolves it. */
export async function assertCliOutputApart(out: { label: string; ref: string }, inputs: readonly { label: string; ref: string }[]): Promise<void> {
  const locate = async (r: { label: string; ref: string }): Promise<Located> => ({ ...r, where: await cliLocation(r.ref) });
  assertOutputApart(await locate(out), await Promise.all(inputs.map(locate)));
}

/** The pipeline's check: references are blob references (`container/prefix`) in the one account. */
export function assertBlobOutputApart(out: { label: string; ref: string }, inputs: readonly { label: string; ref: string }[]): void {
  const locate = (r: { label: string; ref: string }): Located => ({ ...r, where: blobLocation(r.ref) });
  assertOutputApart(locate(out), inputs.map(locate));
}
