/** Random-access bytes: a local file now, a blob later. Reads never modify the source. */
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
  close(): Promise<void>;
}
