// Read-ahead for sources where every read is one request (blob storage): many small ranged reads cost
// far more than a few large ones (each is an HTTP round trip; Azurite also hashes every range of 4 MiB
// or less, and reads it twice). A reader that knows what it will read declares it, in order; reads
// inside those ranges are then served from large windows fetched ahead of them.

/** Fills `into` with `length` bytes at `offset` of the underlying source. */
export type Fetch = (offset: number, length: number, into: Uint8Array) => Promise<Uint8Array>;

interface Window {
  start: number;
  end: number;
  buf: Uint8Array;
  ready: Promise<void>;
  /** Bytes copied out so far: the window is released once every byte has been, and no read waits on it. */
  used: number;
  readers: number;
  failed: boolean;
  /** The buffer went back to the pool (exactly once: on failure, on release, or at close). */
  given: boolean;
}

function giveBack(w: Window, reusable: boolean): void {
  if (w.given) return;
  w.given = true;
  giveBuffer(w.buf, reusable);
}

/**
 * Window buffers not in use, kept for the next window of any source. The pool never holds more than were
 * ever in use at once (so it adds nothing to the peak, and a window dropped at a shard's end is not left
 * for the collector while the next shard allocates a new one), and is emptied once idle for a while.
 */
const spare: Uint8Array[] = [];
let inUse = 0;
let peakInUse = 0;
const IDLE_RELEASE_MS = 30_000;
let idleTimer: NodeJS.Timeout | null = null;

function takeBuffer(bytes: number): Uint8Array {
  if (idleTimer) clearTimeout(idleTimer);
  idleTimer = null;
  inUse++;
  peakInUse = Math.max(peakInUse, inUse);
  const i = spare.findIndex((b) => b.length === bytes);
  return i >= 0 ? spare.splice(i, 1)[0] : new Uint8Array(bytes);
}

/** Gives a window's buffer back; `reusable` false when a request in flight may still write into it. */
function giveBuffer(b: Uint8Array, reusable = true): void {
  inUse--;
  if (reusable && spare.length + inUse < peakInUse) spare.push(b);
  if (inUse === 0 && !idleTimer) {
    idleTimer = setTimeout(() => {
      idleTimer = null;
      spare.length = 0;
      peakInUse = 0;
    }, IDLE_RELEASE_MS);
    idleTimer.unref();
  }
}

/**
 * Serves reads from windows of up to `windowBytes`, at most `windows` held or in flight, fetched front to
 * back along the declared ranges (contiguous declarations merge, so a window spans tensors that follow one
 * another in the file). A window never reaches past what was declared, so nothing undeclared is fetched.
 * A read outside the plan, behind it, or when every window is taken goes straight to the source.
 */
export class ReadAhead {
  /** Declared ranges in the order they will be read. */
  private readonly plan: { start: number; end: number }[] = [];
  /** Where the next window opens: plan[seg], from offset `next`. */
  private seg = 0;
  private next = 0;
  private readonly open: Window[] = [];
  private closed = false;

  constructor(
    private readonly fetch: Fetch,
    private readonly windowBytes: number,
    private readonly windows: number,
  ) {}

  /** Declares that bytes [offset, offset + length) will be read, after everything declared before. */
  expect(offset: number, length: number): void {
    if (length <= 0) return;
    const last = this.plan[this.plan.length - 1];
    if (last && last.end === offset) last.end += length;
    else {
      this.plan.push({ start: offset, end: offset + length });
      if (this.plan.length === 1) this.next = offset;
    }
  }

  async read(offset: number, length: number, into: Uint8Array): Promise<Uint8Array> {
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const w = this.open.find((x) => x.start <= pos && pos < x.end) ?? this.openAt(pos);
      if (!w) {
        await this.fetch(pos, end - pos, into.subarray(pos - offset, length));
        break;
      }
      w.readers++;
      try {
        await w.ready;
        const n = Math.min(end, w.end) - pos;
        into.set(w.buf.subarray(pos - w.start, pos - w.start + n), pos - offset);
        pos += n;
        w.used += n;
      } finally {
        w.readers--;
      }
      if (w.used >= w.end - w.start && w.readers === 0) this.release(w);
    }
    return into.subarray(0, length);
  }

  /** A window starting at `pos` when the plan goes there next (skipping what was declared but not read), else null. */
  private openAt(pos: number): Window | null {
    if (this.open.length >= this.windows) return null;
    for (let i = this.seg; i < this.plan.length; i++) {
      const s = this.plan[i];
      if (pos < s.start || pos >= s.end || (i === this.seg && pos < this.next)) continue;
      this.seg = i;
      this.next = pos;
      this.fill();
      return this.open.find((x) => x.start === pos) ?? null;
    }
    return null;
  }

  /** Opens windows along the plan while fewer than `windows` are held. */
  private fill(): void {
    while (!this.closed && this.open.length < this.windows && this.seg < this.plan.length) {
      const s = this.plan[this.seg];
      const start = this.next;
      const end = Math.min(s.end, start + this.windowBytes);
      const buf = takeBuffer(this.windowBytes);
      const w: Window = { start, end, buf, used: 0, readers: 0, failed: false, given: false, ready: Promise.resolve() };
      w.ready = this.fetch(start, end - start, buf.subarray(0, end - start)).then(
        () => undefined,
        (e: unknown) => {
          // Its bytes are read again straight from the source; the buffer may still be written by pieces in flight.
          w.failed = true;
          this.forget(w);
          giveBack(w, false);
          throw e;
        },
      );
      w.ready.catch(() => undefined); // a window read ahead and never awaited must not go unobserved
      this.open.push(w);
      if (end >= s.end) {
        this.seg++;
        this.next = this.plan[this.seg]?.start ?? 0;
      } else this.next = end;
    }
  }

  private forget(w: Window): void {
    const i = this.open.indexOf(w);
    if (i >= 0) this.open.splice(i, 1);
  }

  private release(w: Window): void {
    this.forget(w);
    giveBack(w, !w.failed);
    this.fill();
  }

  /** Drops the windows; ones still in flight are left to finish and be collected. */
  async close(): Promise<void> {
    this.closed = true;
    const all = this.open.splice(0);
    await Promise.allSettled(all.map((w) => w.ready));
    // One with a reader still copying out is dropped rather than reused.
    for (const w of all) giveBack(w, !w.failed && w.readers === 0);
  }
}
