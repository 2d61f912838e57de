import { open, readdir, readFile, rename, rm, stat, mkdir } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { ByteSource, FileStat, ShardSink, Store } from './types.js';
import { StreamingDigest, digestOfSource, sha256OfSource } from './digest.js';

export class LocalFileSource implements ByteSource {
  private constructor(readonly name: string, readonly size: number, private readonly fh: FileHandle) {}

  static async open(file: string): Promise<LocalFileSource> {
    const fh = await open(file, 'r');
    const { size } = await fh.stat();
    return new LocalFileSource(file, size, fh);
  }

  async read(offset: number, length: number, into?: Uint8Array): Promise<Uint8Array> {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`${this.name}: read of ${length} bytes at ${offset} is past the end (${this.size} bytes)`);
    }
    const buf = into ? into.subarray(0, length) : new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.fh.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) throw new Error(`${this.name}: file ended early at byte ${offset + done}`);
      done += bytesRead;
    }
    return buf;
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

/**
 * fsync accounting. `enabled` is always true for users; the benchmark turns it off in a child
 * process to measure what durability costs, and reads `calls` and `ms` (time spent waiting in fsync).
 */
export const localSync = { enabled: true, calls: 0, ms: 0 };

async function timedSync(fh: FileHandle): Promise<void> {
  if (!localSync.enabled) return;
  const t0 = performance.now();
  await fh.sync();
  localSync.calls++;
  localSync.ms += performance.now() - t0;
}

/** Makes a folder's entries (renames, new files) durable: fsync of the directory itself. */
export async function syncDir(dir: string): Promise<void> {
  if (!localSync.enabled) return;
  const fh = await open(dir, 'r');
  try {
    await timedSync(fh);
  } finally {
    await fh.close();
  }
}

function tempName(file: string): string {
  return `${file}.partial-${randomBytes(4).toString('hex')}`;
}

/**
 * Bytes a shard is written between writebacks started early: a datasync in the background every so often, so
 * the disk writes while the run still reads and computes, and the fsync at commit waits for the last stretch
 * only (the kernel would otherwise hold a whole shard's dirty pages until that fsync).
 */
export const WRITEBACK_BYTES = 32 << 20;

/** Starts a file's writeback every WRITEBACK_BYTES written, one at a time; settle() waits for the last one and gives its failure. */
export class EarlyWriteback {
  private unsynced = 0;
  private inFlight: Promise<unknown> | null = null;
  constructor(private readonly fh: FileHandle) {}

  wrote(bytes: number): void {
    this.unsynced += bytes;
    if (this.unsynced < WRITEBACK_BYTES || this.inFlight) return;
    this.unsynced = 0;
    const w = this.fh.datasync().then(() => (this.inFlight = null));
    w.catch(() => undefined); // settle() reports it
    this.inFlight = w;
  }

  async settle(): Promise<void> {
    await this.inFlight;
  }
}

class LocalShardSink implements ShardSink {
  private bodyLength = 0;
  /** Its failure is the commit's. */
  private readonly writeback: EarlyWriteback | null;
  private readonly digest: StreamingDigest;
  constructor(
    readonly name: string,
    private readonly temp: string,
    private readonly fh: FileHandle,
    private readonly prefixLength: number,
    provisional: Uint8Array | undefined,
  ) {
    this.digest = new StreamingDigest(provisional);
    this.hashing = provisional !== undefined;
    this.writeback = localSync.enabled ? new EarlyWriteback(fh) : null;
  }
  private readonly hashing: boolean;

  async write(data: Uint8Array): Promise<void> {
    const at = this.prefixLength + this.bodyLength;
    this.bodyLength += data.length;
    this.digest.update(data);
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.fh.write(data, done, data.length - done, at + done);
      done += bytesWritten;
    }
    this.writeback?.wrote(data.length);
  }

  async truncate(length: number): Promise<void> {
    this.digest.invalidate();
    this.bodyLength = length;
    await this.fh.truncate(this.prefixLength + length);
  }

  async commit(prefix: Uint8Array): Promise<{ sha256: string | null; bytes: number }> {
    if (prefix.length !== this.prefixLength) {
      throw new Error(`${this.name}: prefix is ${prefix.length} bytes, ${this.prefixLength} were reserved`);
    }
    await this.writeback?.settle();
    await this.fh.write(prefix, 0, prefix.length, 0);
    await this.fh.truncate(this.prefixLength + this.bodyLength);
    // Durable before it gets its name: after a power loss a named shard is never empty or short.
    await timedSync(this.fh);
    await this.fh.close();
    let sha256 = this.hashing ? this.digest.finish(prefix) : null;
    if (this.hashing && sha256 === null) {
      const src = await LocalFileSource.open(this.temp);
      try {
        sha256 = await sha256OfSource(src);
      } finally {
        await src.close();
      }
    }
    await rename(this.temp, this.name);
    await syncDir(path.dirname(this.name));
    return { sha256, bytes: this.prefixLength + this.bodyLength };
  }

  async abort(): Promise<void> {
    await this.writeback?.settle().catch(() => undefined);
    await this.fh.close().catch(() => undefined);
    await rm(this.temp, { force: true });
  }
}

/** A local directory. Writes go to temporary names and are renamed into place when complete. */
export class LocalStore implements Store {
  constructor(readonly dir: string) {}

  get ref(): string {
    return this.dir;
  }

  private path(file: string): string {
    if (file.includes('/') || file.includes('\\') || file === '..' || file === '.') {
      throw new Error(`${this.dir}: "${file}" is not a plain file name`);
    }
    return path.join(this.dir, file);
  }

  async list(): Promise<string[]> {
    const entries = await readdir(this.dir, { withFileTypes: true });
    return entries.filter((e) => e.isFile()).map((e) => e.name).sort();
  }

  async listFolders(): Promise<string[]> {
    const entries = await readdir(this.dir, { withFileTypes: true }).catch(() => []);
    return entries.filter((e) => e.isDirectory() && !e.name.startsWith('.')).map((e) => e.name).sort();
  }

  async exists(file: string): Promise<boolean> {
    try {
      return (await stat(this.path(file))).isFile();
    } catch {
      return false;
    }
  }

  openRead(file: string): Promise<ByteSource> {
    return LocalFileSource.open(this.path(file));
  }

  /** A local file's MD5 is computed by reading it, so only when asked. */
  async stat(file: string, opts: { md5?: boolean } = {}): Promise<FileStat | null> {
    if (!(await this.exists(file))) return null;
    const src = await this.openRead(file);
    try {
      return { size: src.size, md5: opts.md5 ? await digestOfSource(src, 'md5', 'base64') : null };
    } finally {
      await src.close();
    }
  }

  readText(file: string): Promise<string> {
    return readFile(this.path(file), 'utf8');
  }

  /** Written under a temporary name and fsynced, then renamed into place and the folder fsynced. */
  async writeFile(file: string, data: Uint8Array | string): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const target = this.path(file);
    const temp = tempName(target);
    const fh = await open(temp, 'w');
    try {
      await fh.writeFile(data);
      await timedSync(fh);
    } catch (e) {
      await fh.close().catch(() => undefined);
      await rm(temp, { force: true });
      throw e;
    }
    await fh.close();
    await rename(temp, target);
    await syncDir(this.dir);
  }

  async createShard(file: string, prefixLength: number, hashFrom?: Uint8Array): Promise<ShardSink> {
    await mkdir(this.dir, { recursive: true });
    const target = this.path(file);
    const temp = tempName(target);
    const fh = await open(temp, 'w');
    return new LocalShardSink(target, temp, fh, prefixLength, hashFrom);
  }
}
