import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import { createPipelineRequest } from '@azure/core-rest-pipeline';
import { InputError } from '../lib/errors.js';
import { BlobStore } from '../lib/storage/blob.js';
import { rangeInto } from '../lib/storage/rangeget.js';

// Counts the direct reads, to check that plain-http blob reads take that path (and not the SDK helper).
vi.mock('../lib/storage/rangeget.js', async (original) => {
  const mod = await original<typeof import('../lib/storage/rangeget.js')>();
  return { ...mod, rangeInto: vi.fn(mod.rangeInto) };
});
import { startAzurite, type Azurite } from '../cli/host/azurite.js';

// Not a multiple of the 64 KiB socket read buffer, so pieces straddle reads.
const SIZE = 3 * (1 << 20) + 12_345;
const content = Uint8Array.from({ length: SIZE }, (_, i) => (i * 131 + (i >>> 9) * 7 + 1) & 0xff);
const slice = (o: number, l: number) => Buffer.from(content.subarray(o, o + l));

describe('ranged blob reads straight into the caller buffer (Azurite)', () => {
  let azurite: Azurite;
  let container: ContainerClient;
  beforeAll(async () => {
    azurite = await startAzurite();
    container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient('rangeget');
    await container.createIfNotExists();
    await container.getBlockBlobClient('m/blob.bin').uploadData(Buffer.from(content));
  }, 60_000);
  afterAll(async () => {
    await azurite?.stop();
  });

  it('returns the blob bytes for ranges at the boundaries, the same as the SDK helper', async () => {
    const ranges: [number, number][] = [
      [0, 1],
      [SIZE - 1, 1],
      [0, SIZE],
      [65_535, 2],
      [65_536, 65_536],
      [1_000_000, 2_500_000 - 1_000_000],
      [SIZE - 70_000, 70_000],
    ];
    for (const directReads of [true, false]) {
      vi.mocked(rangeInto).mockClear();
      const src = await new BlobStore(container, 'm', undefined, { directReads, readBlockBytes: 1 << 20 }).openRead('blob.bin');
      // Several at once: each request on its own keep-alive socket, each socket its own read buffer.
      const got = await Promise.all(ranges.map(([o, l]) => src.read(o, l, new Uint8Array(l + 5))));
      ranges.forEach(([o, l], k) => expect(Buffer.from(got[k]).equals(slice(o, l)), `${directReads} ${o}+${l}`).toBe(true));
      expect(vi.mocked(rangeInto).mock.calls.length).toBe(directReads ? ranges.length : 0);
      await src.close();
    }
  });

  it('serves declared reads through read-ahead windows with the same bytes', async () => {
    const src = await new BlobStore(container, 'm', undefined, { readAheadBytes: 300_000 }).openRead('blob.bin');
    src.expect!(10, 1_200_000);
    src.expect!(2_000_000, SIZE - 2_000_000);
    for (const [o, l] of [[10, 600_000], [600_010, 600_000], [2_000_000, SIZE - 2_000_000]] as const) {
      expect(Buffer.from(await src.read(o, l)).equals(slice(o, l))).toBe(true);
    }
    await src.close();
  });

  it.each([true, false])('names the blob when it changes or goes away mid-read (direct %s)', async (directReads) => {
    await container.getBlockBlobClient('m/moving.bin').uploadData(Buffer.from(content.subarray(0, 1000)));
    const store = new BlobStore(container, 'm', undefined, { directReads });
    const src = await store.openRead('moving.bin');
    expect(Buffer.from(await src.read(0, 1000)).equals(slice(0, 1000))).toBe(true);
    await container.getBlockBlobClient('m/moving.bin').uploadData(Buffer.from(content.subarray(1, 1001)));
    await expect(src.read(0, 10)).rejects.toThrow(/moving\.bin: the blob changed while it was being read/);
    const gone = await store.openRead('moving.bin');
    await container.getBlobClient('m/moving.bin').delete();
    // Azurite answers a read pinned to a deleted blob's ETag with 412, as for a changed one.
    await expect(gone.read(0, 10)).rejects.toThrow(/moving\.bin: (was deleted|the blob changed) while it was being read/);
  });

  it('a failed request names the blob, the range and the status', async () => {
    // A container deleted under the reader: 404 on the range read, reported as the blob gone.
    const other = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient('rangeget-gone');
    await other.createIfNotExists();
    await other.getBlockBlobClient('m/x.bin').uploadData(Buffer.from(content.subarray(0, 100)));
    const x = await new BlobStore(other, 'm').openRead('x.bin');
    await other.delete();
    const err = await x.read(0, 10).catch((e: unknown) => e);
    expect(String(err)).toMatch(/rangeget-gone\/m\/x\.bin: (was deleted while it was being read|read of 10 bytes at 0 failed: HTTP \d+)/);
  });
});

describe('rangeInto (HTTP edge cases against a local server)', () => {
  let server: http.Server;
  let url: string;
  let connections = 0;
  const sockets = new Set<Socket>();
  let handler: (req: http.IncomingMessage, res: http.ServerResponse) => void = () => undefined;
  beforeAll(async () => {
    server = http.createServer((req, res) => handler(req, res));
    server.on('connection', (s) => {
      connections++;
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/c/b`;
  });
  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(r));
  });
  const get = (into: Uint8Array, headers: Record<string, string> = {}) => {
    const req = createPipelineRequest({ url, method: 'GET' });
    for (const [k, v] of Object.entries(headers)) req.headers.set(k, v);
    return rangeInto(into).sendRequest(req);
  };

  it('sends the pipeline headers, reads the body into place, and reuses the socket', async () => {
    const seen: (string | undefined)[] = [];
    handler = (req, res) => {
      seen.push(req.headers['x-ms-range'] as string);
      const [a, b] = /bytes=(\d+)-(\d+)/.exec(String(req.headers['x-ms-range']))!.slice(1).map(Number);
      res.writeHead(206, { 'content-length': b - a + 1, 'x-ms-request-id': 'r1' });
      // The body in uneven pieces.
      res.write(slice(a, 7));
      setTimeout(() => res.end(slice(a + 7, b - a + 1 - 7)), 2);
    };
    const before = connections;
    for (const [o, l] of [[0, 200_000], [5, 100]]) {
      const into = new Uint8Array(l);
      const res = await get(into, { 'x-ms-range': `bytes=${o}-${o + l - 1}` });
      expect(res.status).toBe(206);
      expect(res.headers.get('x-ms-request-id')).toBe('r1');
      expect(Buffer.from(into).equals(slice(o, l))).toBe(true);
    }
    expect(seen).toEqual(['bytes=0-199999', 'bytes=5-104']);
    expect(connections - before).toBe(1);
  });

  it('a body longer or shorter than asked for is an error, never a silent partial read', async () => {
    handler = (_req, res) => {
      res.writeHead(206, { 'content-length': 10 });
      res.end(slice(0, 10));
    };
    await expect(get(new Uint8Array(11))).rejects.toThrow(/response of 10 bytes to a request for 11/);
    handler = (req, res) => {
      res.writeHead(206, { 'content-length': 1000 });
      res.write(slice(0, 400));
      setTimeout(() => req.socket.destroy(), 5);
    };
    const err = (await get(new Uint8Array(1000)).catch((e: unknown) => e)) as Error & { code?: string };
    expect(err.message).toMatch(/connection closed/);
    expect(err.code).toBe('ECONNRESET'); // the SDK's retry policy retries it
  });

  it('returns an error status with its headers, with or without a body length', async () => {
    handler = (_req, res) => {
      res.writeHead(412, { 'x-ms-error-code': 'ConditionNotMet', 'content-length': 5 });
      res.end('nope!');
    };
    const a = await get(new Uint8Array(10));
    expect([a.status, a.headers.get('x-ms-error-code')]).toEqual([412, 'ConditionNotMet']);
    handler = (_req, res) => {
      res.writeHead(500, { 'x-ms-error-code': 'InternalError' }); // chunked
      res.end('<Error/>');
    };
    const b = await get(new Uint8Array(10));
    expect([b.status, b.headers.get('x-ms-error-code')]).toEqual([500, 'InternalError']);
  });

  it('retries once on a fresh socket when the server closed the kept-alive one', async () => {
    handler = (_req, res) => {
      res.writeHead(206, { 'content-length': 3 });
      res.end(slice(0, 3));
    };
    await get(new Uint8Array(3));
    for (const s of sockets) s.destroy();
    await new Promise((r) => setTimeout(r, 20));
    const into = new Uint8Array(3);
    expect((await get(into)).status).toBe(206);
    expect(Buffer.from(into).equals(slice(0, 3))).toBe(true);
  });

  it('refuses what it does not do', async () => {
    await expect(rangeInto(new Uint8Array(1)).sendRequest(createPipelineRequest({ url: 'https://127.0.0.1:1/x', method: 'GET' }))).rejects.toThrow(/only plain-http GETs/);
  });
});
