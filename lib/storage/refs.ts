import { InputError } from '../errors.js';

/**
 * Model references in blob storage: `container/prefix` (API form) or `az://container/prefix` (CLI
 * form). A reference names a container and a prefix inside the one configured storage account and
 * nothing else: no account, host or URL can be expressed, so user input can never redirect reads
 * or writes to another account.
 */
export interface ModelRef {
  container: string;
  /** Folder inside the container, `/`-separated, without leading or trailing slash; may be empty. */
  prefix: string;
}

export const BLOB_SCHEME = 'az://';

/** Azure container names: 3-63 characters, lowercase letters, digits and single inner hyphens. */
const CONTAINER_NAME = /^(?=.{3,63}$)[a-z0-9]+(?:-[a-z0-9]+)*$/;
/** C0 and C1 control characters (incl. NUL, newline, DEL). */
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
/** Any URL scheme, so `https://…`, `file:…`, `abfss://…` are refused rather than read as a container. */
const SCHEME = /^[A-Za-z][A-Za-z0-9+.-]*:/;
/** Blob names are at most 1024 characters; leave room for the file name. */
const MAX_PREFIX = 900;

export function isBlobRef(s: string): boolean {
  return s.startsWith(BLOB_SCHEME);
}

export function isValidContainerName(name: string): boolean {
  return CONTAINER_NAME.test(name);
}

/** The canonical (CLI) form, `az://container/prefix`, as stores report their `ref`. */
export function formatRef(ref: ModelRef): string {
  return ref.prefix ? `${BLOB_SCHEME}${ref.container}/${ref.prefix}` : `${BLOB_SCHEME}${ref.container}`;
}

/** User input quoted safely for an error message (control characters escaped, length capped). */
function shown(s: string): string {
  return JSON.stringify(s.length > 200 ? `${s.slice(0, 200)}…` : s);
}

/**
 * Parses and checks a reference. Every failure is an InputError naming `field` (default "ref").
 * `allowedContainers` is the caller's allow-list; a container outside it is refused even if it exists.
 */
export function parseModelRef(ref: string, opts: { allowedContainers: readonly string[]; field?: string }): ModelRef {
  const field = opts.field ?? 'ref';
  const bad = (why: string) => new InputError(`${field}: ${shown(ref)} ${why}`);
  if (typeof ref !== 'string' || ref.length === 0) {
    throw new InputError(`${field}: a model reference (container/prefix or az://container/prefix) is required`);
  }
  if (CONTROL.test(ref)) throw bad('contains control characters');
  if (ref.includes('\\')) throw bad('contains a backslash; use / between folders');
  let body = ref;
  if (isBlobRef(ref)) body = ref.slice(BLOB_SCHEME.length);
  else if (SCHEME.test(ref)) {
    throw bad('is a URL; give container/prefix (or az://container/prefix) inside the configured storage account');
  }
  // URL syntax has no place in a blob path and would be misread by anything that builds a URL from it.
  if (/[?#%]/.test(body)) throw bad('contains ?, # or %, which blob references do not allow');
  if (body.endsWith('/')) body = body.slice(0, -1);
  if (body.length === 0) throw bad('names no container');
  const segments = body.split('/');
  for (const seg of segments) {
    if (seg === '') throw bad('has an empty path segment (// or a leading /)');
    if (seg === '.' || seg === '..') throw bad('has a "." or ".." segment; references cannot climb out of their folder');
  }
  const [container, ...rest] = segments;
  if (!isValidContainerName(container)) {
    throw bad(`names container ${shown(container)}, which is not a valid container name (3-63 lowercase letters, digits and single hyphens)`);
  }
  if (!opts.allowedContainers.includes(container)) {
    const allowed = opts.allowedContainers.length ? opts.allowedContainers.join(', ') : 'none configured';
    throw bad(`names container "${container}", which is not one this service may use (allowed: ${allowed})`);
  }
  const prefix = rest.join('/');
  if (prefix.length > MAX_PREFIX) throw bad(`has a prefix longer than ${MAX_PREFIX} characters`);
  return { container, prefix };
}
