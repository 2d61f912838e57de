// Hugging Face Hub repositories as read-only stores: hf://owner/name[@revision].
import { readFile, readdir, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { ListFileEntry } from '@huggingface/hub';
import { InputError } from '../errors.js';
import { LocalFileSource } from './local.js';
import type { ByteSource, ShardSink, Store } from './types.js';

export const HUB_SCHEME = 'hf://';
export const DEFAULT_HUB_ENDPOINT = 'https://huggingface.co';

/** A model repository on the Hub, and the revision asked for (null: the default branch, main). */
export interface HubRef {
  owner: string;
  name: string;
  revision: string | null;
}

/** One part of a repo id, as the Hub's own validator allows it (ASCII only): word characters, "-" and ".", a word character at each end. */
const NAME_PART = /^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$/;
/** Branch, tag or commit: git ref characters without "@", "~", "^", ":", spaces or URL syntax. */
const REVISION = /^[A-Za-z0-9_][A-Za-z0-9_./-]*$/;
const COMMIT = /^[0-9a-f]{40}$/;
const MAX_REPO_ID = 96;
/** Text files (configs, tokenizers) are read whole; anything bigger is not one. */
const MAX_TEXT_BYTES = 256 << 20;

/** Whether `s` is a valid Hub owner (user or organization) or repository name. */
export function isValidHubName(s: string): boolean {
  return NAME_PART.test(s) && !s.includes('--') && !s.includes('..') && s.length <= MAX_REPO_ID;
}

export function isHubRef(s: string): boolean {
  return typeof s === 'string' && s.startsWith(HUB_SCHEME);
}

export function formatHubRef(r: HubRef): string {
  return `${HUB_SCHEME}${r.owner}/${r.name}${r.revision ? `@${r.revision}` : ''}`;
}

/** User input quoted safely for an error message (control characters escaped, length capped). */
function shown(s: string): string {
  return JSON.stringify(s.length > 200 ? `${s.slice(0, 200)}…` : s);
}

/**
 * Parses and checks `hf://owner/name[@revision]`. Only the characters the Hub allows in names get
 * through, so no reference can add a path, query, host or credentials to the URLs built from it.
 * With `allowedOwners`, an owner outside the list is refused. Errors are InputErrors that start
 * with `field:` when one is given.
 */
export function parseHubRef(ref: string, opts: { field?: string; allowedOwners?: readonly string[] } = {}): HubRef {
  const bad = (why: string) => new InputError(`${opts.field ? `${opts.field}: ` : ''}${shown(String(ref))} ${why}`);
  if (typeof ref !== 'string' || !ref.startsWith(HUB_SCHEME)) throw bad('is not a Hub reference (hf://owner/name[@revision])');
  let body = ref.slice(HUB_SCHEME.length);
  if (body.endsWith('/')) body = body.slice(0, -1);
  const at = body.indexOf('@');
  const repo = at < 0 ? body : body.slice(0, at);
  const revision = at < 0 ? null : body.slice(at + 1);
  const parts = repo.split('/');
  if (parts.length !== 2 || !parts[0] || !parts[1]) {
    throw bad('must name one model repository as hf://owner/name[@revision] (no subfolders)');
  }
  const [owner, name] = parts;
  for (const [what, part] of [['owner', owner], ['name', name]] as const) {
    if (!NAME_PART.test(part)) {
      throw bad(`has ${what} ${shown(part)}, which the Hub does not allow: letters, digits, "-", "_" and ".", starting and ending with a letter, digit or "_"`);
    }
  }
  if (repo.includes('--') || repo.includes('..')) throw bad('contains "--" or "..", which Hub repository names do not allow');
  if (repo.length > MAX_REPO_ID) throw bad(`has a repository id longer than ${MAX_REPO_ID} characters`);
  if (repo.endsWith('.git')) throw bad('ends in ".git"; give the repository name without it');
  if (revision !== null) {
    const ok =
      revision.length > 0 && revision.length <= 255 && REVISION.test(revision) && !revision.includes('..') &&
      !revision.includes('//') && !revision.endsWith('/') && !revision.endsWith('.') && !revision.endsWith('.lock');
    if (!ok) throw bad('has an invalid revision after "@": give a branch, tag or commit (letters, digits, "_", "-", "." and "/")');
  }
  if (opts.allowedOwners && !opts.allowedOwners.includes(owner)) {
    const allowed = opts.allowedOwners.length ? opts.allowedOwners.join(', ') : 'none configured';
    throw bad(`names owner "${owner}", which is not one this service may read from (allowed: ${allowed})`);
  }
  return { owner, name, revision };
}

/** An HTTP answer from the Hub that is not a success; `code` is its X-Error-Code (RepoNotFound, GatedRepo, ...). */
export class HubHttpError extends Error {
  override name = 'HubHttpError';
  constructor(readonly status: number, readonly code: string | null, readonly detail: string, readonly where: string) {
    super(`${where}: HTTP ${status}${code ? ` ${code}` : ''}${detail ? `: ${detail}` : ''}`);
  }
}

export interface HubOptions {
  /** Where HF_ENDPOINT, HF_TOKEN, HF_HUB_CACHE / HF_HOME / XDG_CACHE_HOME and HF_HUB_OFFLINE are read (default process.env). */
  env?: Record<string, string | undefined>;
  /** When given, only these owners may be named (the pipeline's allow-list). */
  allowedOwners?: readonly string[];
  /**
   * Which stores the resolver keeps: 'run' (a CLI run) keeps every reference, so a branch is resolved
   * once per run; 'pinned' (a long-lived service) keeps only commit-pinned ones, so a branch is
   * resolved afresh by each request that names it.
   */
  memo?: 'run' | 'pinned';
  /** Attempts after the first for a request that failed in transit or got 429/5xx (default 3). */
  retries?: number;
  /** Bytes of fetched ranges kept to answer the same read once more (default 32 MiB; see RereadCache). */
  rereadBytes?: number;
}

interface HubContext {
  /** Normalized base URL without a trailing slash. */
  endpoint: string;
  hasToken: boolean;
  /** The Hub cache folder when it exists; null means no cache. */
  cache: string | null;
  offline: boolean;
  fetch: typeof fetch;
  reread: RereadCache;
  /** The Hub client, loaded with the context: with its hashing WebAssembly it costs every CLI start a tenth of a second otherwise. */
  api: typeof import('@huggingface/hub');
}

function envValue(env: Record<string, string | undefined>, key: string): string | undefined {
  const v = env[key]?.trim();
  return v ? v : undefined;
}

/** HF_ENDPOINT checked: an https URL (plain http only on loopback), with no credentials, query or fragment. */
export function hubEndpoint(env: Record<string, string | undefined> = process.env): string {
  const value = envValue(env, 'HF_ENDPOINT') ?? DEFAULT_HUB_ENDPOINT;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InputError('HF_ENDPOINT is not a valid URL; expected e.g. https://huggingface.co');
  }
  const loopback = url.hostname === '127.0.0.1' || url.hostname === 'localhost' || url.hostname === '[::1]';
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && loopback)) {
    throw new InputError('HF_ENDPOINT must be an https:// URL (plain http only on this machine)');
  }
  if (url.username || url.password || url.search || url.hash) {
    throw new InputError('HF_ENDPOINT must be a bare URL without credentials, query or fragment; put the token in HF_TOKEN');
  }
  return url.href.replace(/\/+$/, '');
}

/**
 * The Hub cache folder, in the order the Hub's clients use (HF_HUB_CACHE, then HF_HOME/hub, then
 * XDG_CACHE_HOME/huggingface/hub or ~/.cache/huggingface/hub). Written out because the library's
 * getHFHubCachePath reads process.env only, and the resolver takes its environment as an argument.
 */
export function hubCachePath(env: Record<string, string | undefined> = process.env): string {
  const explicit = envValue(env, 'HF_HUB_CACHE') ?? envValue(env, 'HUGGINGFACE_HUB_CACHE');
  if (explicit) return explicit;
  const home = envValue(env, 'HF_HOME') ?? path.join(envValue(env, 'XDG_CACHE_HOME') ?? path.join(os.homedir(), '.cache'), 'huggingface');
  return path.join(home, 'hub');
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const TRANSIENT = new Set([429, 500, 502, 503, 504]);
const MAX_REDIRECTS = 5;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function networkCode(e: unknown): string | undefined {
  const c = (e as { cause?: { code?: unknown } } | null)?.cause?.code ?? (e as { code?: unknown } | null)?.code;
  return typeof c === 'string' ? c : undefined;
}

async function errorFrom(res: Response, where: string, token: string | undefined): Promise<HubHttpError> {
  let detail = '';
  try {
    const text = (await res.text()).slice(0, 2000);
    try {
      const j = JSON.parse(text) as { error?: unknown; message?: unknown };
      detail = String(j.error ?? j.message ?? '');
    } catch {
      detail = text.trim();
    }
  } catch {
    // The body is only for the message.
  }
  // A server that echoes the request must not get the token printed.
  if (token) detail = detail.split(token).join('[HF_TOKEN]');
  return new HubHttpError(res.status, res.headers.get('x-error-code'), detail.replace(/\s+/g, ' ').slice(0, 300), where);
}

/** A server that ignores Range would send the whole file for every chunk: refuse that answer. */
async function checkRange(range: string | null, res: Response, where: string): Promise<void> {
  const m = range ? /^bytes=(\d+)-(\d+)$/.exec(range) : null;
  if (!m) return;
  const [start, end] = [Number(m[1]), Number(m[2])];
  if (res.status === 206) {
    const got = /^bytes (\d+)-(\d+)\//.exec(res.headers.get('content-range') ?? '');
    if (got && Number(got[1]) === start && Number(got[2]) === end) return;
  } else if (start === 0 && Number(res.headers.get('content-length')) === end + 1) {
    return;
  }
  await res.body?.cancel().catch(() => undefined);
  throw new Error(`${where}: the server did not answer the byte range ${start}-${end} as asked (HTTP ${res.status}); refusing to read the whole file`);
}

/**
 * The fetch the library is given. The library never sees the token: it is added here, and only to
 * requests for the endpoint's own origin, redirects included (the Hub sends file bytes from a CDN on
 * another origin, which must not get it). Also retries requests that failed in transit or got
 * 429/5xx, and turns every other failure into a HubHttpError carrying the Hub's X-Error-Code.
 */
function hubFetch(endpointOrigin: string, token: string | undefined, retries: number): typeof fetch {
  const send = async (input: URL, init: RequestInit): Promise<Response> => {
    for (let attempt = 0; ; attempt++) {
      let res: Response | null = null;
      try {
        res = await fetch(input, init);
      } catch (e) {
        if (attempt >= retries) {
          const code = networkCode(e);
          const why = code ?? (e as { cause?: Error }).cause?.message ?? (e as Error).message;
          throw Object.assign(new Error(`cannot reach ${input.origin} (${why})`), { code: code ?? 'ECONNRESET' });
        }
      }
      if (res && !(TRANSIENT.has(res.status) && attempt < retries)) return res;
      const wait = Math.min(10_000, Number(res?.headers.get('retry-after')) * 1000 || 250 * 2 ** attempt);
      await res?.body?.cancel().catch(() => undefined);
      await sleep(wait);
    }
  };
  return (async (input: string | URL | Request, init: RequestInit = {}) => {
    let url = new URL(input instanceof Request ? input.url : input.toString());
    let method = (init.method ?? 'GET').toUpperCase();
    let body = init.body;
    for (let hop = 0; ; hop++) {
      const headers = new Headers(init.headers);
      headers.delete('authorization');
      if (token && url.origin === endpointOrigin) headers.set('authorization', `Bearer ${token}`);
      const res = await send(url, { ...init, method, body, headers, redirect: 'manual' });
      // Signed CDN URLs carry credentials in their query: messages show origin and path only.
      const where = `${url.origin}${url.pathname}`;
      const location = res.headers.get('location');
      if (REDIRECTS.has(res.status) && location) {
        await res.body?.cancel().catch(() => undefined);
        const next = new URL(location, url);
        if (hop >= MAX_REDIRECTS) throw new Error(`${where}: more than ${MAX_REDIRECTS} redirects`);
        if (next.protocol !== 'https:' && !(next.protocol === 'http:' && url.protocol === 'http:')) {
          throw new Error(`${where}: refusing a redirect to ${next.protocol} ${next.host}`);
        }
        if (res.status === 303) {
          method = 'GET';
          body = undefined;
        }
        url = next;
        continue;
      }
      if (!res.ok) throw await errorFrom(res, where, token);
      await checkRange(headers.get('range'), res, where);
      return res;
    }
  }) as typeof fetch;
}

function contextFrom(opts: HubOptions): () => Promise<HubContext> {
  let ctx: Promise<HubContext> | null = null;
  return () =>
    (ctx ??= (async () => {
      const env = opts.env ?? process.env;
      const endpoint = hubEndpoint(env);
      const token = envValue(env, 'HF_TOKEN');
      const root = hubCachePath(env);
      const cache = (await stat(root).then((s) => s.isDirectory(), () => false)) ? root : null;
      const offline = /^(1|on|yes|true)$/i.test(envValue(env, 'HF_HUB_OFFLINE') ?? '');
      return {
        endpoint, hasToken: !!token, cache, offline,
        fetch: hubFetch(new URL(endpoint).origin, token, opts.retries ?? 3),
        reread: new RereadCache(opts.rereadBytes ?? 32 << 20),
        api: await import('@huggingface/hub'),
      };
    })());
}

function checkFileName(ref: string, file: string): void {
  if (!file || file.includes('/') || file.includes('\\') || file === '.' || file === '..' || /[\u0000-\u001f\u007f]/.test(file)) {
    throw new Error(`${ref}: "${file}" is not a plain file name`);
  }
}

function entrySize(e: ListFileEntry): number {
  return e.lfs?.size ?? e.size;
}

/**
 * Ranges fetched lately, kept to answer the same read once more. compute reads each tensor that fits
 * in one chunk twice (to settle its delta dtype before the shard header, then to write it): free
 * from a disk, a second download from the Hub. Bounded: a range is kept only while the budget has
 * room, and dropped when it is read again or its file is closed.
 */
class RereadCache {
  private used = 0;
  private readonly kept = new Map<string, Map<string, Uint8Array>>();
  constructor(private readonly budget: number) {}

  take(source: string, offset: number, length: number): Uint8Array | undefined {
    const ranges = this.kept.get(source);
    const key = `${offset}:${length}`;
    const hit = ranges?.get(key);
    if (hit) {
      ranges!.delete(key);
      this.used -= hit.length;
    }
    return hit;
  }

  keep(source: string, offset: number, data: Uint8Array): void {
    if (data.length > this.budget - this.used) return;
    let ranges = this.kept.get(source);
    if (!ranges) this.kept.set(source, (ranges = new Map()));
    const key = `${offset}:${data.length}`;
    if (ranges.has(key)) return;
    ranges.set(key, data);
    this.used += data.length;
  }

  drop(source: string): void {
    for (const d of this.kept.get(source)?.values() ?? []) this.used -= d.length;
    this.kept.delete(source);
  }
}

let sourceIds = 0;

/** A Hub file read by HTTP ranges through the library's WebBlob; nothing is downloaded ahead. */
class HubByteSource implements ByteSource {
  private readonly id = String(++sourceIds);
  constructor(
    readonly name: string,
    readonly size: number,
    private readonly blob: Blob,
    private readonly reread: RereadCache,
    private readonly explain: (e: unknown) => unknown,
  ) {}

  async read(offset: number, length: number, into?: Uint8Array): Promise<Uint8Array> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`${this.name}: read of ${length} bytes at ${offset} is past the end (${this.size} bytes)`);
    }
    const out = into ? into.subarray(0, length) : new Uint8Array(length);
    if (length === 0) return out;
    const again = this.reread.take(this.id, offset, length);
    if (again) {
      out.set(again);
      return out;
    }
    let got: ArrayBuffer;
    try {
      got = await this.blob.slice(offset, offset + length).arrayBuffer();
    } catch (e) {
      throw this.explain(e);
    }
    if (got.byteLength !== length) throw new Error(`${this.name}: short read at ${offset}: got ${got.byteLength} of ${length} bytes`);
    const bytes = new Uint8Array(got);
    out.set(bytes);
    this.reread.keep(this.id, offset, bytes);
    return out;
  }

  async close(): Promise<void> {
    this.reread.drop(this.id);
  }
}

/**
 * A model repository on the Hub (or in the local Hub cache), read only. The revision is resolved to
 * a commit on first use, and every later read is of that commit; from then on `ref` names the
 * commit, so plans made from this store read the same files wherever they run.
 */
export class HubStore implements Store {
  private commitId: string | null = null;
  private pinning: Promise<string> | null = null;
  private listing: Promise<Map<string, ListFileEntry>> | null = null;

  constructor(
    private readonly context: () => Promise<HubContext>,
    readonly repo: HubRef,
    private readonly onPinned?: (ref: string, store: HubStore) => void,
  ) {
    if (repo.revision && COMMIT.test(repo.revision)) this.commitId = repo.revision;
  }

  get ref(): string {
    return formatHubRef({ ...this.repo, revision: this.commitId ?? this.repo.revision });
  }

  get repoId(): string {
    return `${this.repo.owner}/${this.repo.name}`;
  }

  /** The commit every read is of. */
  commit(): Promise<string> {
    // A failure is not remembered: a long-lived store tries again on the next call.
    this.pinning ??= this.resolveCommit().then(
      (c) => {
        const before = this.ref;
        this.commitId = c;
        if (this.ref !== before) this.onPinned?.(this.ref, this);
        return c;
      },
      (e) => {
        this.pinning = null;
        throw e;
      },
    );
    return this.pinning;
  }

  private async resolveCommit(): Promise<string> {
    const rev = this.repo.revision ?? 'main';
    if (COMMIT.test(rev)) return rev;
    const hub = await this.context();
    if (hub.offline) {
      const refFile = this.cacheDir(hub) && path.join(this.cacheDir(hub)!, 'refs', ...rev.split('/'));
      const sha = refFile ? (await readFile(refFile, 'utf8').catch(() => '')).trim() : '';
      if (!COMMIT.test(sha)) throw new InputError(`${this.ref}: HF_HUB_OFFLINE is set and the Hub cache has no revision "${rev}" of ${this.repoId}`);
      return sha;
    }
    try {
      const info = await hub.api.modelInfo({ name: this.repoId, revision: rev, additionalFields: ['sha'], hubUrl: hub.endpoint, fetch: hub.fetch });
      if (typeof info.sha !== 'string' || !COMMIT.test(info.sha)) throw new Error(`${this.ref}: the Hub gave no commit for revision "${rev}"`);
      return info.sha;
    } catch (e) {
      throw this.explain(e, hub);
    }
  }

  private cacheDir(hub: HubContext): string | null {
    return hub.cache && path.join(hub.cache, hub.api.getRepoFolderName({ type: 'model', name: this.repoId }));
  }

  private entries(): Promise<Map<string, ListFileEntry>> {
    this.listing ??= this.readListing().catch((e) => {
      this.listing = null;
      throw e;
    });
    return this.listing;
  }

  private async readListing(): Promise<Map<string, ListFileEntry>> {
    const hub = await this.context();
    const commit = await this.commit();
    const out = new Map<string, ListFileEntry>();
    if (hub.offline) {
      const dir = this.cacheDir(hub) && path.join(this.cacheDir(hub)!, 'snapshots', commit);
      const names = dir ? await readdir(dir).catch(() => null) : null;
      if (!dir || !names) throw new InputError(`${this.ref}: HF_HUB_OFFLINE is set and the Hub cache has no snapshot of this commit`);
      for (const name of names) {
        const s = await stat(path.join(dir, name)).catch(() => null);
        if (s) out.set(name, { path: name, type: s.isDirectory() ? 'directory' : 'file', size: s.size });
      }
      return out;
    }
    try {
      for await (const e of hub.api.listFiles({ repo: this.repoId, revision: commit, hubUrl: hub.endpoint, fetch: hub.fetch })) {
        if (!e.path.includes('/')) out.set(e.path, e);
      }
    } catch (e) {
      throw this.explain(e, hub);
    }
    return out;
  }

  /** The file in the local Hub cache, when it is there with the size the Hub lists for it. */
  private async cached(hub: HubContext, commit: string, file: string, size: number): Promise<string | null> {
    const dir = this.cacheDir(hub);
    if (!dir) return null;
    const p = path.join(dir, 'snapshots', commit, file);
    const s = await stat(p).catch(() => null);
    return s?.isFile() && s.size === size ? p : null;
  }

  /** Turns a library or HTTP failure into an error that names this reference and says what to do. */
  private explain(e: unknown, hub: HubContext, file?: string): unknown {
    if (!(e instanceof HubHttpError)) {
      const code = networkCode(e);
      if (code && e instanceof Error && !(e instanceof InputError)) {
        // `code` makes the CLI report it as unreachable storage (exit 2), with this hint.
        return Object.assign(new Error(`${this.ref}: ${e.message}`), { code, hint: 'check HF_ENDPOINT and the network' });
      }
      // JSON that does not parse, or answers without the fields the Hub sends: not a Hub at all.
      if (e instanceof SyntaxError || e instanceof hub.api.InvalidApiResponseFormatError) {
        return new InputError(`${this.ref}: ${hub.endpoint} does not answer like a Hugging Face Hub (${e.message}); check HF_ENDPOINT`);
      }
      return e;
    }
    const where = file ? `${this.ref}/${file}` : this.ref;
    const rev = this.repo.revision ?? 'main';
    const token = hub.hasToken;
    switch (e.code) {
      case 'GatedRepo':
        return new InputError(
          token
            ? `${this.ref}: gated repository, and HF_TOKEN does not grant access; request access on the Hub with the token's account`
            : `${this.ref}: gated repository; request access on the Hub, then set HF_TOKEN to a token of that account`,
        );
      case 'RepoNotFound':
        return new InputError(`${this.ref}: no such repository on ${hub.endpoint}${token ? '' : ' (if it is private, set HF_TOKEN)'}`);
      case 'RevisionNotFound':
        return new InputError(`${this.ref}: ${this.repoId} has no revision "${rev}"`);
      case 'EntryNotFound':
        return new InputError(`${where}: no such file`);
      case 'DisabledRepo':
        return new InputError(`${this.ref}: the repository is disabled on the Hub`);
    }
    if (e.status === 401 || e.status === 403) {
      return new InputError(
        `${where}: the Hub refused access (HTTP ${e.status})${token ? '; HF_TOKEN does not grant it' : '; if the repository is gated or private, set HF_TOKEN'}`,
      );
    }
    if (e.status === 404) return new InputError(`${where}: not found on ${hub.endpoint} (HTTP 404)`);
    return new Error(`${where}: ${e.message}`);
  }

  async list(): Promise<string[]> {
    return [...(await this.entries()).values()].filter((e) => e.type === 'file').map((e) => e.path).sort();
  }

  async listFolders(): Promise<string[]> {
    return [...(await this.entries()).values()].filter((e) => e.type === 'directory').map((e) => e.path).sort();
  }

  async exists(file: string): Promise<boolean> {
    checkFileName(this.ref, file);
    return (await this.entries()).get(file)?.type === 'file';
  }

  async openRead(file: string): Promise<ByteSource> {
    checkFileName(this.ref, file);
    const hub = await this.context();
    const commit = await this.commit();
    const entry = (await this.entries()).get(file);
    if (entry?.type !== 'file') throw new InputError(`${this.ref}/${file}: no such file`);
    const size = entrySize(entry);
    const local = await this.cached(hub, commit, file, size);
    if (local) return LocalFileSource.open(local);
    // Reads go to the resolve URL of the pinned commit each time (the Hub redirects to its CDN);
    // a signed CDN URL kept for a whole run could expire in the middle of it.
    const url = `${hub.endpoint}/${this.repoId}/resolve/${commit}/${encodeURIComponent(file)}`;
    const etag = entry.lfs?.oid ?? entry.xetHash ?? entry.oid ?? commit;
    const blob = await hub.api.downloadFile({
      repo: this.repoId, path: file, revision: commit, hubUrl: hub.endpoint, fetch: hub.fetch,
      xet: false, downloadInfo: { size, etag, url },
    });
    if (!blob) throw new InputError(`${this.ref}/${file}: no such file`);
    return new HubByteSource(`${this.ref}/${file}`, size, blob, hub.reread, (e) => this.explain(e, hub, file));
  }

  async readText(file: string): Promise<string> {
    const src = await this.openRead(file);
    try {
      if (src.size > MAX_TEXT_BYTES) throw new InputError(`${this.ref}/${file}: ${src.size} bytes is too large for a text file`);
      return new TextDecoder().decode(await src.read(0, src.size));
    } finally {
      await src.close();
    }
  }

  async fileVersion(file: string): Promise<string | null> {
    const e = (await this.entries()).get(file);
    return e?.type === 'file' ? (e.lfs?.oid ?? e.xetHash ?? e.oid ?? null) : null;
  }

  private readOnly(): never {
    throw new InputError(`${this.ref}: Hub references are read-only; write outputs to a local folder or az://container/prefix`);
  }

  async writeFile(): Promise<void> {
    this.readOnly();
  }

  async createShard(): Promise<ShardSink> {
    this.readOnly();
  }
}

/**
 * Resolves `hf://owner/name[@revision]` to stores. HF_ENDPOINT and HF_TOKEN are read on first use,
 * so a bad HF_ENDPOINT only matters to runs that name the Hub.
 */
export function hubResolver(opts: HubOptions = {}): (ref: string) => HubStore {
  const context = contextFrom(opts);
  const memo = new Map<string, HubStore>();
  const remember = (key: string, store: HubStore) => {
    memo.delete(key);
    memo.set(key, store);
    // Stores hold only a file listing; keep the most recent few dozen.
    if (memo.size > 64) memo.delete(memo.keys().next().value!);
  };
  return (ref) => {
    const r = parseHubRef(ref, { allowedOwners: opts.allowedOwners });
    const key = formatHubRef(r);
    const known = memo.get(key);
    if (known) return known;
    const store = new HubStore(context, r, (pinned, s) => remember(pinned, s));
    if (opts.memo !== 'pinned' || (r.revision && COMMIT.test(r.revision))) remember(key, store);
    return store;
  };
}
