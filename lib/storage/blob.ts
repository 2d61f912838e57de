import { createHash, randomBytes, type Hash } from 'node:crypto';
import type { BlobClient, BlobServiceClient, BlockBlobClient, ContainerClient } from '@azure/storage-blob';
import { PLAN_TAG, type ByteSource, type FileStat, type ShardOptions, type ShardSink, type Store } from './types.js';
import { StreamingDigest, sha256OfSource } from './digest.js';
import { ReadAhead } from './readahead.js';
import { corePipeline, rangeInto } from './rangeget.js';
import type { Pipeline as CorePipeline } from '@azure/core-rest-pipeline';
import { formatRef, isValidContainerName, parseModelRef } from './refs.js';
import { InputError } from '../errors.js';

export { PLAN_TAG };

/** Azure's limit on committed blocks per blob. */
const MAX_BLOCKS = 50_000;
const MiB = 1 << 20;

export interface BlobStoreOptions {
  /** Largest block staged by one request; a bigger `write` is split (default 64 MiB). */
  maxBlockBytes?: number;
  /** Reads longer than this are split into parallel ranged downloads of this size (default 8 MiB). */
  readBlockBytes?: number;
  /** Parallel ranged downloads per read (default 8). */
  readConcurrency?: number;
  /** Block size of shards written with `coalesce` (default 8 MiB); two such blocks are held at most. */
  writeBlockBytes?: number;
  /** Read-ahead window for declared reads (ByteSource.expect; default 8 MiB: one request, and over Azurite's 4 MiB hashing limit). */
  readAheadBytes?: number;
  /** Read-ahead windows held or in flight per opened blob (default 2). */
  readAheadWindows?: number;
  /**
   * Ranged reads over plain http (Azurite) go straight into the caller's buffer through the SDK's
   * pipeline (`rangeget.ts`) instead of its download helper (default true; https always uses the helper).
   */
  directReads?: boolean;
}

/** The SDK client's signing and retrying pipeline and its service version (not public API: checked at run time). */
function corePipelineOf(blob: BlobClient): { pipeline: CorePipeline; version: string } | null {
  const ctx = (blob as unknown as { storageClientContext?: { pipeline?: CorePipeline; version?: string } }).storageClientContext;
  if (typeof ctx?.pipeline?.sendRequest !== 'function' || typeof ctx.version !== 'string') return null;
  return { pipeline: ctx.pipeline, version: ctx.version };
}

function statusOf(e: unknown): number | undefined {
  return (e as { statusCode?: number } | null)?.statusCode;
}

function codeOf(e: unknown): string | undefined {
  const c = (e as { code?: unknown } | null)?.code;
  return typeof c === 'string' ? c : undefined;
}

/** A blob opened for ranged reads, pinned to the version seen at open (ETag), so a rewrite mid-read fails loudly. */
export class BlobByteSource implements ByteSource {
  private ahead: ReadAhead | null = null;
  private readonly direct: { pipeline: CorePipeline; version: string } | null;

  private constructor(
    readonly name: string,
    readonly size: number,
    private readonly blob: BlobClient,
    private readonly etag: string | undefined,
    private readonly opts: BlobStoreOptions,
  ) {
    this.direct = opts.directReads !== false && blob.url.startsWith('http:') ? corePipelineOf(blob) : null;
  }

  static async open(blob: BlobClient, name: string, opts: BlobStoreOptions = {}, etag?: string): Promise<BlobByteSource> {
    let props;
    try {
      props = await blob.getProperties(etag ? { conditions: { ifMatch: etag } } : {});
    } catch (e) {
      if (statusOf(e) === 404) throw new InputError(`${name}: no such file`);
      if (statusOf(e) === 412) throw new Error(`${name}: was replaced before it could be read`);
      throw e;
    }
    return new BlobByteSource(name, props.contentLength ?? 0, blob, props.etag, opts);
  }

  async read(offset: number, length: number, into?: Uint8Array): Promise<Uint8Array> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`${this.name}: read of ${length} bytes at ${offset} is past the end (${this.size} bytes)`);
    }
    if (into && into.length < length) {
      // Wrapping into.buffer below would otherwise write past the caller's view (into WASM memory).
      throw new RangeError(`${this.name}: buffer of ${into.length} bytes is too small for a read of ${length}`);
    }
    const out = into ? into.subarray(0, length) : new Uint8Array(length);
    // The SDK treats count 0 as "to the end of the blob".
    if (length === 0) return out;
    return this.ahead ? this.ahead.read(offset, length, out) : this.fetch(offset, length, out);
  }

  expect(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > this.size) return;
    this.ahead ??= new ReadAhead((o, l, into) => this.fetch(o, l, into), this.opts.readAheadBytes ?? 8 * MiB, this.opts.readAheadWindows ?? 2);
    this.ahead.expect(offset, length);
  }

  private async fetch(offset: number, length: number, out: Uint8Array): Promise<Uint8Array> {
    if (this.direct) return this.fetchDirect(offset, length, out);
    const target = Buffer.from(out.buffer, out.byteOffset, length);
    let filled = 0;
    try {
      // downloadToBuffer splits the range into readBlockBytes pieces fetched in parallel, each retried.
      await this.blob.downloadToBuffer(target, offset, length, {
        blockSize: this.opts.readBlockBytes ?? 8 * MiB,
        concurrency: this.opts.readConcurrency ?? 8,
        conditions: this.etag ? { ifMatch: this.etag } : {},
        onProgress: (p) => {
          filled = p.loadedBytes;
        },
      });
    } catch (e) {
      if (statusOf(e) === 412) throw new Error(`${this.name}: the blob changed while it was being read`);
      if (statusOf(e) === 404) throw new InputError(`${this.name}: was deleted while it was being read`);
      throw e;
    }
    if (filled !== length) throw new Error(`${this.name}: short read at ${offset}: got ${filled} of ${length} bytes`);
    return out;
  }

  /** One ranged GET, signed and retried by the SDK's pipeline, its body read into `out` (rangeget.ts). */
  private async fetchDirect(offset: number, length: number, out: Uint8Array): Promise<Uint8Array> {
    const { pipeline, version } = this.direct!;
    const { createHttpHeaders, createPipelineRequest } = await corePipeline();
    const headers = createHttpHeaders({ 'x-ms-version': version, 'x-ms-range': `bytes=${offset}-${offset + length - 1}` });
    if (this.etag) headers.set('If-Match', this.etag);
    const target = out.subarray(0, length);
    const res = await pipeline.sendRequest(rangeInto(target), createPipelineRequest({ url: this.blob.url, method: 'GET', headers }));
    if (res.status === 206 || (res.status === 200 && offset === 0 && length === this.size)) return target;
    if (res.status === 412) throw new Error(`${this.name}: the blob changed while it was being read`);
    if (res.status === 404) throw new InputError(`${this.name}: was deleted while it was being read`);
    const code = res.headers.get('x-ms-error-code');
    throw Object.assign(new Error(`${this.name}: read of ${length} bytes at ${offset} failed: HTTP ${res.status}${code ? ` ${code}` : ''}`), { statusCode: res.status, code });
  }

  async close(): Promise<void> {
    await this.ahead?.close();
  }
}

interface Block {
  id: string;
  /** Body length once this block is included. */
  end: number;
  staged: Promise<void>;
  /** A coalesced block's buffer, until it is staged. */
  buffer?: Uint8Array;
}

/**
 * A shard written as staged blocks and made visible by one commitBlockList, prefix first. Block ids
 * carry a random per-attempt token, so a second attempt at the same blob never commits this one's
 * blocks (and committing either discards the other's uncommitted blocks, failing its commit).
 */
class BlobShardSink implements ShardSink {
  private readonly token = randomBytes(6).toString('hex');
  private seq = 0;
  private readonly prefixId: string;
  private blocks: Block[] = [];
  private bodyLength = 0;
  private state: 'open' | 'committing' | 'committed' | 'aborted' = 'open';
  private readonly digest: StreamingDigest;
  private readonly hashing: boolean;
  /** MD5 of the body for Content-MD5, which Azure does not compute for blobs committed from blocks. */
  private md5: Hash | null;
  /** Coalescing (shardOpts.coalesce): the block being filled, spare blocks, and the writes queued in order. */
  private filling: Uint8Array | null = null;
  private filled = 0;
  private readonly spare: Uint8Array[] = [];
  private allocated = 0;
  private queue: Promise<void> = Promise.resolve();

  constructor(
    readonly name: string,
    private readonly blob: BlockBlobClient,
    private readonly prefixLength: number,
    provisional: Uint8Array | undefined,
    private readonly shardOpts: ShardOptions,
    private readonly opts: BlobStoreOptions,
  ) {
    this.digest = new StreamingDigest(provisional);
    this.hashing = provisional !== undefined;
    this.prefixId = this.nextId();
    if (shardOpts.md5 && prefixLength !== 0) throw new Error(`${name}: an MD5 is recorded only for files written without a prefix`);
    this.md5 = shardOpts.md5 ? createHash('md5') : null;
  }

  /** Azure wants every block id of a blob to have the same length: fixed-width token and counter. */
  private nextId(): string {
    return Buffer.from(`${this.token}-${String(this.seq++).padStart(8, '0')}`).toString('base64');
  }

  private checkOpen(): void {
    if (this.state !== 'open') throw new Error(`${this.name}: shard is already ${this.state}`);
  }

  write(data: Uint8Array): Promise<void> {
    // Everything up to the first await runs synchronously, so the engine's overlapping writes keep their order.
    try {
      this.checkOpen();
    } catch (e) {
      return Promise.reject(e);
    }
    if (data.length === 0) return Promise.resolve();
    if (this.shardOpts.coalesce) {
      this.digest.update(data);
      this.md5?.update(data);
      this.bodyLength += data.length;
      const done = this.queue.then(() => this.copyIn(data));
      this.queue = done.catch(() => undefined);
      return done;
    }
    const max = this.opts.maxBlockBytes ?? 64 * MiB;
    const count = Math.ceil(data.length / max);
    if (this.blocks.length + count + 1 > MAX_BLOCKS) {
      return Promise.reject(new Error(`${this.name}: more than ${MAX_BLOCKS} blocks; write larger chunks`));
    }
    this.digest.update(data);
    this.md5?.update(data);
    const staged: Promise<void>[] = [];
    for (let i = 0; i < count; i++) {
      const piece = data.subarray(i * max, Math.min(data.length, (i + 1) * max));
      const id = this.nextId();
      this.bodyLength += piece.length;
      // At most 4 requests per write in flight; the caller's data is the only copy held.
      const after = i >= 4 ? staged[i - 4] : Promise.resolve();
      const p = after.then(async () => {
        // A transactional MD5 lets the service check each block as it lands (Azurite otherwise computes a CRC64 in JavaScript).
        await this.blob.stageBlock(id, piece, piece.length, { transactionalContentMD5: createHash('md5').update(piece).digest() });
      });
      staged.push(p);
      this.blocks.push({ id, end: this.bodyLength, staged: p });
    }
    return Promise.all(staged).then(() => undefined);
  }

  /** Copies a write into the block being filled, staging each block as it fills; waits while both blocks are in flight. */
  private async copyIn(data: Uint8Array): Promise<void> {
    const size = this.opts.writeBlockBytes ?? 8 * MiB;
    for (let at = 0; at < data.length; ) {
      if (!this.filling) {
        while (!this.spare.length && this.allocated >= 2) {
          // The oldest block in flight gives its buffer back when staged (a failure fails this write).
          await this.blocks.find((b) => b.buffer)!.staged;
        }
        this.filling = this.spare.pop() ?? (this.allocated++, new Uint8Array(size));
        this.filled = 0;
      }
      const n = Math.min(data.length - at, this.filling.length - this.filled);
      this.filling.set(data.subarray(at, at + n), this.filled);
      this.filled += n;
      at += n;
      if (this.filled === this.filling.length) this.stageFilling();
    }
  }

  private stageFilling(): void {
    const buf = this.filling;
    if (!buf || this.filled === 0) return;
    const piece = buf.subarray(0, this.filled);
    const id = this.nextId();
    const end = (this.blocks[this.blocks.length - 1]?.end ?? 0) + piece.length;
    const block: Block = { id, end, staged: Promise.resolve(), buffer: buf };
    block.staged = this.blob.stageBlock(id, piece, piece.length, { transactionalContentMD5: createHash('md5').update(piece).digest() }).then(() => {
      block.buffer = undefined;
      this.spare.push(buf);
    });
    block.staged.catch(() => undefined); // awaited by commit, or by the next write that needs its buffer
    this.blocks.push(block);
    this.filling = null;
    this.filled = 0;
  }

  async truncate(length: number): Promise<void> {
    this.checkOpen();
    if (this.shardOpts.coalesce && length !== this.bodyLength) throw new Error(`${this.name}: cannot cut back a shard whose writes are gathered into blocks`);
    if (!Number.isSafeInteger(length) || length < 0 || length > this.bodyLength) {
      throw new RangeError(`${this.name}: cannot cut back to ${length} bytes; the body has ${this.bodyLength}`);
    }
    const keep = length === 0 ? 0 : this.blocks.findIndex((b) => b.end === length) + 1;
    if (keep === 0 && length !== 0) {
      throw new RangeError(`${this.name}: cannot cut back to ${length} bytes: not where a write ended`);
    }
    this.digest.invalidate();
    if (this.md5) throw new Error(`${this.name}: cannot cut back a file whose MD5 is being recorded`);
    const dropped = this.blocks.splice(keep);
    this.bodyLength = length;
    // Dropped blocks are never committed; wait for them only so no request outlives the call.
    await Promise.allSettled(dropped.map((b) => b.staged));
  }

  async commit(prefix: Uint8Array): Promise<{ sha256: string | null; bytes: number }> {
    this.checkOpen();
    if (prefix.length !== this.prefixLength) {
      throw new Error(`${this.name}: prefix is ${prefix.length} bytes, ${this.prefixLength} were reserved`);
    }
    this.state = 'committing';
    try {
      await this.queue;
      this.stageFilling();
      await Promise.all(this.blocks.map((b) => b.staged));
      const ids: string[] = [];
      // Azure refuses empty blocks; a zero-length prefix simply has none.
      if (prefix.length > 0) {
        await this.blob.stageBlock(this.prefixId, prefix, prefix.length, { transactionalContentMD5: createHash('md5').update(prefix).digest() });
        ids.push(this.prefixId);
      }
      for (const b of this.blocks) ids.push(b.id);
      const res = await this.blob.commitBlockList(ids, {
        metadata: this.shardOpts.metadata,
        blobHTTPHeaders: { blobContentType: 'application/octet-stream', blobContentMD5: this.md5?.digest() },
      });
      this.state = 'committed';
      let sha256 = this.hashing ? this.digest.finish(prefix) : null;
      if (this.hashing && sha256 === null) {
        // Pinned to the ETag just committed: if another attempt replaced the blob, fail rather than hash its bytes.
        const src = await BlobByteSource.open(this.blob, this.name, this.opts, res.etag);
        try {
          sha256 = await sha256OfSource(src);
        } finally {
          await src.close();
        }
      }
      return { sha256, bytes: this.prefixLength + this.bodyLength };
    } catch (e) {
      if (this.state === 'committing') this.state = 'aborted';
      if (statusOf(e) === 400 && codeOf(e) === 'InvalidBlockList') {
        throw new Error(`${this.name}: staged blocks are gone (another attempt committed this shard, or they expired); run the shard again`);
      }
      throw e;
    }
  }

  async abort(): Promise<void> {
    if (this.state === 'committed') return;
    this.state = 'aborted';
    // Nothing to delete: uncommitted blocks are discarded by the service after a week, or by the next commit.
    await this.queue;
    await Promise.allSettled(this.blocks.map((b) => b.staged));
  }
}

/** A folder in blob storage: one container and a prefix (which may be empty). */
export class BlobStore implements Store {
  readonly ref: string;
  readonly prefix: string;

  constructor(
    readonly container: ContainerClient,
    prefix: string,
    ref?: string,
    private readonly opts: BlobStoreOptions = {},
  ) {
    this.prefix = prefix.replace(/^\/+|\/+$/g, '');
    this.ref = ref ?? formatRef({ container: container.containerName, prefix: this.prefix });
  }

  private dir(): string {
    return this.prefix ? `${this.prefix}/` : '';
  }

  /** Full blob name of a file directly in this folder. */
  blobName(file: string): string {
    if (!file || file.includes('/') || file.includes('\\') || file === '.' || file === '..' || /[\u0000-\u001f\u007f]/.test(file)) {
      throw new Error(`${this.ref}: "${file}" is not a plain file name`);
    }
    return this.dir() + file;
  }

  private where(file: string): string {
    return `${this.ref}/${file}`;
  }

  private missingContainer(e: unknown): boolean {
    return statusOf(e) === 404 && codeOf(e) === 'ContainerNotFound';
  }

  private rethrow(e: unknown, file?: string): never {
    if (this.missingContainer(e)) {
      throw new InputError(`${this.ref}: container "${this.container.containerName}" does not exist`);
    }
    if (file !== undefined && statusOf(e) === 404) throw new InputError(`${this.where(file)}: no such file`);
    throw e;
  }

  async list(): Promise<string[]> {
    const dir = this.dir();
    const names: string[] = [];
    try {
      // A delimiter listing returns deeper paths as prefixes, which are skipped: only files directly here.
      for await (const item of this.container.listBlobsByHierarchy('/', { prefix: dir })) {
        if (item.kind === 'blob') names.push(item.name.slice(dir.length));
      }
    } catch (e) {
      this.rethrow(e);
    }
    return names.sort();
  }

  async listMetadata(): Promise<Map<string, Record<string, string>>> {
    const dir = this.dir();
    const out = new Map<string, Record<string, string>>();
    try {
      for await (const item of this.container.listBlobsByHierarchy('/', { prefix: dir, includeMetadata: true })) {
        if (item.kind === 'blob') out.set(item.name.slice(dir.length), item.metadata ?? {});
      }
    } catch (e) {
      this.rethrow(e);
    }
    return out;
  }

  /** Names of the sub-folders directly under this one (virtual directories of the blob namespace). */
  async listFolders(): Promise<string[]> {
    const dir = this.dir();
    const names: string[] = [];
    try {
      for await (const item of this.container.listBlobsByHierarchy('/', { prefix: dir })) {
        if (item.kind === 'prefix') names.push(item.name.slice(dir.length).replace(/\/$/, ''));
      }
    } catch (e) {
      this.rethrow(e);
    }
    return names.sort();
  }

  exists(file: string): Promise<boolean> {
    return this.container.getBlobClient(this.blobName(file)).exists();
  }

  openRead(file: string): Promise<ByteSource> {
    return BlobByteSource.open(this.container.getBlobClient(this.blobName(file)), this.where(file), this.opts).catch((e) => this.rethrow(e, file));
  }

  async readText(file: string): Promise<string> {
    try {
      const buf = await this.container.getBlobClient(this.blobName(file)).downloadToBuffer();
      return buf.toString('utf8');
    } catch (e) {
      this.rethrow(e, file);
    }
  }

  /** One Put Blob request: the blob appears complete or not at all. */
  async writeFile(file: string, data: Uint8Array | string, opts?: { metadata?: Record<string, string> }): Promise<void> {
    const body = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    const type = file.endsWith('.json') ? 'application/json' : 'application/octet-stream';
    try {
      await this.container
        .getBlockBlobClient(this.blobName(file))
        .upload(body, body.length, { blobHTTPHeaders: { blobContentType: type }, metadata: opts?.metadata });
    } catch (e) {
      this.rethrow(e);
    }
  }

  async createShard(file: string, prefixLength: number, hashFrom?: Uint8Array, opts: ShardOptions = {}): Promise<ShardSink> {
    if (!Number.isSafeInteger(prefixLength) || prefixLength < 0) throw new RangeError(`${this.where(file)}: bad prefix length ${prefixLength}`);
    return new BlobShardSink(this.where(file), this.container.getBlockBlobClient(this.blobName(file)), prefixLength, hashFrom, opts, this.opts);
  }

  async stat(file: string): Promise<FileStat | null> {
    try {
      const props = await this.container.getBlobClient(this.blobName(file)).getProperties();
      const md5 = props.contentMD5 ? Buffer.from(props.contentMD5).toString('base64') : null;
      return { size: props.contentLength ?? 0, md5 };
    } catch (e) {
      if (statusOf(e) === 404) return null;
      this.rethrow(e);
    }
  }

  async fileVersion(file: string): Promise<string | null> {
    try {
      return (await this.container.getBlobClient(this.blobName(file)).getProperties()).etag ?? null;
    } catch (e) {
      if (statusOf(e) === 404) return null;
      throw e;
    }
  }

  async shardTag(file: string): Promise<string | null> {
    try {
      const props = await this.container.getBlobClient(this.blobName(file)).getProperties();
      return props.metadata?.[PLAN_TAG] ?? null;
    } catch (e) {
      if (statusOf(e) === 404) return null;
      throw e;
    }
  }

  async remove(file: string): Promise<void> {
    try {
      await this.container.getBlobClient(this.blobName(file)).deleteIfExists({ deleteSnapshots: 'include' });
    } catch (e) {
      if (!this.missingContainer(e)) throw e;
    }
  }

  /**
   * Deletes every blob under the prefix, nested ones included. Refuses an empty prefix: that would
   * empty the whole container.
   */
  async removeAll(): Promise<void> {
    if (!this.prefix) throw new Error(`${this.ref}: refusing to delete everything in a container; give a prefix`);
    const names: string[] = [];
    try {
      for await (const b of this.container.listBlobsFlat({ prefix: this.dir() })) names.push(b.name);
    } catch (e) {
      if (this.missingContainer(e)) return;
      throw e;
    }
    let next = 0;
    const worker = async () => {
      while (next < names.length) {
        const name = names[next++];
        await this.container.getBlobClient(name).deleteIfExists({ deleteSnapshots: 'include' });
      }
    };
    await Promise.all(Array.from({ length: Math.min(16, names.length) }, worker));
  }
}

/**
 * Resolves user references (`container/prefix` or `az://container/prefix`) to stores in the one
 * configured account; containers outside `allowed` are refused with an InputError.
 */
export function blobResolver(service: BlobServiceClient, allowed: readonly string[], opts: BlobStoreOptions = {}): (ref: string) => Store {
  return (ref: string) => {
    const r = parseModelRef(ref, { allowedContainers: allowed });
    return new BlobStore(service.getContainerClient(r.container), r.prefix, formatRef(r), opts);
  };
}

/** Creates the containers that do not exist yet (idempotent). */
export async function ensureContainers(service: BlobServiceClient, names: readonly string[]): Promise<void> {
  for (const name of names) {
    if (!isValidContainerName(name)) throw new Error(`"${name}" is not a valid container name`);
    await service.getContainerClient(name).createIfNotExists();
  }
}
