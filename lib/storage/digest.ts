import { createHash, type Hash } from 'node:crypto';
import type { ByteSource } from './types.js';

/**
 * sha256 of a shard computed while it streams out. The prefix (header) is written last, so the
 * streamed digest starts from a provisional prefix; it holds only if the final prefix is the same
 * and no tensor was written again. Otherwise the caller hashes the committed file once more.
 */
export class StreamingDigest {
  private hash: Hash | null;
  constructor(private readonly provisional: Uint8Array | undefined) {
    this.hash = provisional ? createHash('sha256').update(provisional) : null;
  }
  update(data: Uint8Array): void {
    this.hash?.update(data);
  }
  invalidate(): void {
    this.hash = null;
  }
  /** The digest, or null when the caller must hash the committed bytes itself. */
  finish(finalPrefix: Uint8Array): string | null {
    const p = this.provisional;
    if (!this.hash || !p || !Buffer.from(p).equals(Buffer.from(finalPrefix))) return null;
    return this.hash.digest('hex');
  }
}

export async function digestOfSource(src: ByteSource, algorithm: 'sha256' | 'md5', encoding: 'hex' | 'base64', chunkBytes = 8 << 20): Promise<string> {
  const h = createHash(algorithm);
  const buf = new Uint8Array(Math.min(chunkBytes, Math.max(1, src.size)));
  for (let off = 0; off < src.size; off += buf.length) {
    const n = Math.min(buf.length, src.size - off);
    h.update(await src.read(off, n, buf.subarray(0, n)));
  }
  return h.digest(encoding);
}

export function sha256OfSource(src: ByteSource, chunkBytes = 8 << 20): Promise<string> {
  return digestOfSource(src, 'sha256', 'hex', chunkBytes);
}
