/** Random-access bytes: a local file or a blob. Reads never modify the source. */
export interface ByteSource {
  /** Where the bytes come from, for error messages (a path or a blob reference). */
  readonly name: string;
  /** Total length in bytes. */
  readonly size: number;
  /**
   * Reads exactly `length` bytes at `offset` into `into` (or a fresh buffer), failing on a short read.
   * Returns the filled view.
   */
  read(offset: number, length: number, into?: Uint8Array): Promise<Uint8Array>;
  /**
   * Declares that bytes [offset, offset + length) will be read next, after what was declared before: a
   * source where each read is a request (blob storage) may then fetch them ahead in fewer, larger reads,
   * never fetching bytes nobody declared. Sources that gain nothing from it leave it out.
   */
  expect?(offset: number, length: number): void;
  close(): Promise<void>;
}

/**
 * One output file written front to back, except for a fixed-length prefix (the safetensors
 * header) that is written last. It becomes visible under its name only on commit.
 */
export interface ShardSink {
  readonly name: string;
  /** Appends to the body. The caller must not touch `data` until the promise settles. */
  write(data: Uint8Array): Promise<void>;
  /** Cuts the body back to `length` bytes, to write a tensor again. */
  truncate(length: number): Promise<void>;
  /** Writes the prefix, makes the file visible, and returns its size and, when asked for at creation, its sha256. */
  commit(prefix: Uint8Array): Promise<{ sha256: string | null; bytes: number }>;
  /** Drops everything written; the name stays as it was. */
  abort(): Promise<void>;
}

/** A folder: a local directory, or a container and prefix in blob storage. */
export interface Store {
  /** How users name it (a path or `az://container/prefix`), for messages. */
  readonly ref: string;
  /** Names of the files directly in this folder. */
  list(): Promise<string[]>;
  /** Names of the folders directly inside this one. */
  listFolders(): Promise<string[]>;
  exists(file: string): Promise<boolean>;
  openRead(file: string): Promise<ByteSource>;
  readText(file: string): Promise<string>;
  /**
   * Writes a small file whole; it becomes visible complete or not at all. `opts.metadata` is
   * recorded with it where the store can (blob metadata); LocalStore ignores it.
   */
  writeFile(file: string, data: Uint8Array | string, opts?: { metadata?: Record<string, string> }): Promise<void>;
  /**
   * Starts a shard whose prefix will be exactly `prefixLength` bytes. With `hashFrom` (the prefix as
   * planned) the sink computes the file's sha256, while streaming when the final prefix matches.
   * `opts.metadata` is recorded with the committed shard where the store can (blob metadata;
   * `paramdeltaplan` is what `shardTag` reads back); LocalStore ignores it. With `opts.md5` (and no
   * prefix) the store records the file's MD5 where it can (a blob's Content-MD5), for `stat` to read back.
   */
  createShard(file: string, prefixLength: number, hashFrom?: Uint8Array, opts?: ShardOptions): Promise<ShardSink>;
  /**
   * Size and MD5 (base64, as Azure's Content-MD5) of a file, or null when it is absent; `md5` is null
   * when unknown. A store that must read the file to know its MD5 does so only when `opts.md5` asks.
   */
  stat?(file: string, opts?: { md5?: boolean }): Promise<FileStat | null>;
  /** An identifier that changes whenever the file does (a blob's ETag), or null when it is absent. */
  fileVersion?(file: string): Promise<string | null>;
  /** Properties recorded with a committed shard (the plan hash that produced it), or null. */
  shardTag?(file: string): Promise<string | null>;
  /** The metadata recorded with each file directly in this folder (blob metadata), by file name. */
  listMetadata?(): Promise<Map<string, Record<string, string>>>;
  /** Deletes one file if it is there. */
  remove?(file: string): Promise<void>;
}

export interface ShardOptions {
  metadata?: Record<string, string>;
  md5?: boolean;
  /**
   * Gather writes into large blocks where each write is a request (blob storage): `write` copies its data
   * and settles once it is copied, and the body can no longer be cut back (`truncate`).
   */
  coalesce?: boolean;
}

export interface FileStat {
  size: number;
  md5: string | null;
}

/** Metadata key on a committed shard naming the plan hash that wrote it, so a repeated activity can skip it. */
export const PLAN_TAG = 'paramdeltaplan';

/**
 * Metadata key on every file paramdelta writes into an output ('delta' or 'model'), so the
 * leftovers of an interrupted run, written before any marker, are still recognisably its own.
 */
export const KIND_TAG = 'paramdeltakind';
