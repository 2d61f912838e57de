// Ranged blob downloads straight into the caller's buffer. Node's http client allocates a fresh buffer
// for every socket read and copies each body piece again (and the SDK's stream reader concatenates
// them): for a pipeline moving gigabytes that is gigabytes of short-lived ArrayBuffers, which drive V8
// into a full mark-compact every 64 MB of them. Here each keep-alive socket reads into one buffer of
// its own (net's `onread`) and the body is copied once, into place. Hand-written because no HTTP
// client reads a response body into a caller's buffer; the SDK's pipeline still signs and retries.
import net from 'node:net';
import type { HttpClient, PipelineRequest, PipelineResponse } from '@azure/core-rest-pipeline';

let core: Promise<typeof import('@azure/core-rest-pipeline')> | undefined;
/**
 * The SDK's HTTP pipeline module, loaded on first use: it comes with the Azure SDK, which only blob
 * references load, and would otherwise cost every CLI start about a tenth of a second.
 */
export function corePipeline(): Promise<typeof import('@azure/core-rest-pipeline')> {
  return (core ??= import('@azure/core-rest-pipeline'));
}

const READ_BUFFER_BYTES = 64 << 10;
/** Longest status line and headers accepted. */
const MAX_HEAD_BYTES = 16 << 10;
/** Idle keep-alive sockets kept per host, and how long. */
const MAX_IDLE = 8;
const IDLE_MS = 4_000;

/** One socket, its own read buffer, and the response it is reading now. */
interface Conn {
  key: string;
  socket: net.Socket;
  /** Called with each piece read; null while idle. */
  onData: ((piece: Uint8Array) => void) | null;
  onEnd: ((err: Error) => void) | null;
  idleTimer: NodeJS.Timeout | null;
  used: number;
  /** Where the status line and headers of each response are gathered. */
  head: Buffer;
}

const idle = new Map<string, Conn[]>();

function connect(host: string, port: number, key: string): Promise<Conn> {
  return new Promise((resolve, reject) => {
    const conn: Conn = { key, socket: null as unknown as net.Socket, onData: null, onEnd: null, idleTimer: null, used: 0, head: Buffer.allocUnsafe(MAX_HEAD_BYTES) };
    const socket = net.connect({
      host,
      port,
      noDelay: true,
      onread: {
        buffer: Buffer.allocUnsafe(READ_BUFFER_BYTES),
        callback: (n: number, buf: Uint8Array) => {
          // The buffer is read again after this returns: each piece is consumed (copied) here.
          if (conn.onData) conn.onData(buf.subarray(0, n));
          else socket.destroy(); // bytes on an idle socket: it cannot be reused
          return true;
        },
      },
    });
    conn.socket = socket;
    const lost = (err: Error) => {
      dropIdle(conn);
      const end = conn.onEnd;
      conn.onData = conn.onEnd = null;
      end?.(err);
    };
    socket.once('connect', () => {
      socket.off('error', reject);
      socket.on('error', lost);
      socket.on('close', () => lost(new Error('connection closed')));
      socket.on('end', () => socket.destroy());
      resolve(conn);
    });
    socket.once('error', reject);
  });
}

function dropIdle(conn: Conn): void {
  if (conn.idleTimer) clearTimeout(conn.idleTimer);
  conn.idleTimer = null;
  const list = idle.get(conn.key);
  const i = list?.indexOf(conn) ?? -1;
  if (i >= 0) list!.splice(i, 1);
}

function release(conn: Conn): void {
  conn.onData = conn.onEnd = null;
  const list = idle.get(conn.key) ?? [];
  if (conn.socket.destroyed || list.length >= MAX_IDLE) {
    conn.socket.destroy();
    return;
  }
  idle.set(conn.key, list);
  list.push(conn);
  conn.socket.unref();
  conn.idleTimer = setTimeout(() => {
    dropIdle(conn);
    conn.socket.destroy();
  }, IDLE_MS);
  conn.idleTimer.unref();
}

async function acquire(host: string, port: number): Promise<Conn> {
  const key = `${host}:${port}`;
  const list = idle.get(key);
  while (list?.length) {
    const conn = list.pop()!;
    if (conn.idleTimer) clearTimeout(conn.idleTimer);
    conn.idleTimer = null;
    if (conn.socket.destroyed || !conn.socket.writable) continue;
    conn.socket.ref();
    return conn;
  }
  return connect(host, port, key);
}

interface Head {
  status: number;
  headers: Record<string, string>;
  /** Body length, or -1 when the response does not say (then the socket cannot be reused). */
  length: number;
  close: boolean;
}

function parseHead(text: string): Head {
  const lines = text.split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]);
  if (!m) throw new Error(`not an HTTP/1.1 response: ${JSON.stringify(lines[0].slice(0, 80))}`);
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const c = line.indexOf(':');
    if (c <= 0) continue;
    const name = line.slice(0, c).trim().toLowerCase();
    const value = line.slice(c + 1).trim();
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  const chunked = /chunked/i.test(headers['transfer-encoding'] ?? '');
  const cl = headers['content-length'];
  const length = !chunked && cl !== undefined && /^\d+$/.test(cl) ? Number(cl) : -1;
  return { status: Number(m[1]), headers, length, close: /close/i.test(headers['connection'] ?? '') };
}

/** Sends one GET on `conn` and reads a 2xx body into `into` (exactly its length), any other body nowhere. */
function exchange(conn: Conn, head: string, into: Uint8Array, signal: PipelineRequest['abortSignal']): Promise<{ head: Head; reusable: boolean; got: number }> {
  return new Promise((resolve, reject) => {
    const headBytes = conn.head;
    let headLen = 0;
    let res: Head | null = null;
    let body = 0;
    let got = 0;
    let done = false;
    const finish = (err: Error | null, reusable = false) => {
      if (done) return;
      done = true;
      signal?.removeEventListener('abort', onAbort);
      conn.onData = conn.onEnd = null;
      if (err) {
        conn.socket.destroy();
        (err as Error & { received?: number }).received = got + headLen;
        reject(err);
      } else resolve({ head: res!, reusable, got });
    };
    const onAbort = () => finish(Object.assign(new Error('The operation was aborted.'), { name: 'AbortError' }));
    const onBody = (piece: Uint8Array) => {
      const r = res!;
      const ok = r.status >= 200 && r.status < 300;
      const take = r.length >= 0 ? Math.min(piece.length, r.length - body) : piece.length;
      if (ok) into.set(piece.subarray(0, take), got);
      if (ok) got += take;
      body += take;
      if (take < piece.length) return finish(new Error(`${piece.length - take} bytes past the end of the response`));
      if (r.length >= 0 && body === r.length) finish(null, !r.close);
    };
    conn.onData = (piece) => {
      if (done) return;
      try {
        if (res) return onBody(piece);
        const n = Math.min(piece.length, MAX_HEAD_BYTES - headLen);
        headBytes.set(piece.subarray(0, n), headLen);
        const from = Math.max(0, headLen - 3);
        headLen += n;
        const end = headBytes.subarray(0, headLen).indexOf('\r\n\r\n', from, 'latin1');
        if (end < 0) {
          if (headLen >= MAX_HEAD_BYTES) finish(new Error(`response headers longer than ${MAX_HEAD_BYTES} bytes`));
          return;
        }
        res = parseHead(headBytes.toString('latin1', 0, end));
        if (res.status < 200) return finish(new Error(`unexpected informational response ${res.status}`));
        const ok = res.status >= 200 && res.status < 300;
        if (ok && res.length !== into.length) {
          return finish(new Error(`response of ${res.length < 0 ? 'unknown length' : `${res.length} bytes`} to a request for ${into.length}`));
        }
        // An error response without a length: its headers say what went wrong; the socket is dropped.
        if (!ok && res.length < 0) return finish(null, false);
        const rest = piece.subarray(n - (headLen - end - 4));
        if (res.length === 0) {
          if (rest.length) return finish(new Error(`${rest.length} bytes past the end of the response`));
          return finish(null, !res.close);
        }
        if (rest.length) onBody(rest);
      } catch (e) {
        finish(e as Error);
      }
    };
    conn.onEnd = (err) => finish(err);
    if (signal?.aborted) return onAbort();
    signal?.addEventListener('abort', onAbort);
    conn.socket.write(head);
  });
}

/**
 * An HttpClient for the SDK's pipeline (which signs and retries the request) that performs a ranged
 * GET over plain http, reading the body into `into`. The response carries headers, no body.
 */
export function rangeInto(into: Uint8Array): HttpClient {
  return {
    async sendRequest(request: PipelineRequest): Promise<PipelineResponse> {
      const url = new URL(request.url);
      if (url.protocol !== 'http:' || request.method !== 'GET' || request.body) throw new Error(`rangeInto: only plain-http GETs (${request.method} ${url.protocol})`);
      const host = url.hostname.replace(/^\[|\]$/g, '');
      const port = Number(url.port || 80);
      let head = `GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\n`;
      for (const [name, value] of request.headers) {
        if (/[\r\n]/.test(name) || /[\r\n]/.test(value)) throw new Error(`header ${name}: line breaks are not allowed`);
        head += `${name}: ${value}\r\n`;
      }
      head += '\r\n';
      for (let attempt = 0; ; attempt++) {
        const conn = await acquire(host, port);
        const reused = conn.used++ > 0;
        try {
          const { head: res, reusable } = await exchange(conn, head, into, request.abortSignal);
          if (reusable) release(conn);
          else conn.socket.destroy();
          return { request, status: res.status, headers: (await corePipeline()).createHttpHeaders(res.headers) };
        } catch (e) {
          // A kept-alive socket the server closed just before this request: once more on a fresh one.
          const received = (e as { received?: number }).received ?? 0;
          if (reused && received === 0 && attempt === 0 && (e as Error).name !== 'AbortError') continue;
          throw Object.assign(e as Error, { code: (e as { code?: string }).code ?? 'ECONNRESET' });
        }
      }
    },
  };
}
