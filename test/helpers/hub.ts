// A loopback server in the Hugging Face Hub's URL layout, serving local folders as model repositories.
import http from 'node:http';
import { createHash } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { AddressInfo } from 'node:net';

export interface FakeRepo {
  /** The folder whose files are the repository's (top level only). */
  dir: string;
  /** The commit the folder is; `main` points at it unless `branches` says otherwise. */
  commit: string;
  branches?: Record<string, string>;
  /** Files are served only with the server's token (X-Error-Code: GatedRepo otherwise). */
  gated?: boolean;
}

export interface HubRequest {
  server: 'hub' | 'cdn';
  method: string;
  path: string;
  range: string | null;
  authorization: string | null;
  status: number;
  /** Body bytes sent. */
  bytes: number;
}

export interface FakeHub {
  endpoint: string;
  cdn: string;
  requests: HubRequest[];
  /** Body bytes sent by both servers, optionally only for paths matching `filter`. */
  bytesServed(filter?: (r: HubRequest) => boolean): number;
  close(): Promise<void>;
}

interface FileInfo {
  name: string;
  full: string;
  size: number;
  sha256: string;
  sha1: string;
}

const LFS = /\.(safetensors|bin)$/;

async function filesOf(dir: string): Promise<FileInfo[]> {
  const out: FileInfo[] = [];
  for (const name of (await readdir(dir)).sort()) {
    const full = path.join(dir, name);
    const s = await stat(full);
    if (!s.isFile()) continue;
    const data = await readFile(full);
    out.push({
      name, full, size: s.size,
      sha256: createHash('sha256').update(data).digest('hex'),
      sha1: createHash('sha1').update(`blob ${s.size}\0`).update(data).digest('hex'),
    });
  }
  return out;
}

function listen(server: http.Server): Promise<string> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`)));
}

/** Sends a file or a byte range of it (one `bytes=a-b` range, as the Hub's resolve endpoint and its CDN do). */
async function sendFile(req: http.IncomingMessage, res: http.ServerResponse, f: FileInfo, headers: Record<string, string>, record: (status: number, bytes: number) => void) {
  const range = req.headers.range;
  let start = 0;
  let end = f.size - 1;
  let status = 200;
  if (range) {
    const m = /^bytes=(\d+)-(\d*)$/.exec(range);
    if (!m || Number(m[1]) >= f.size) {
      res.writeHead(416, { 'content-range': `bytes */${f.size}` }).end();
      return record(416, 0);
    }
    start = Number(m[1]);
    end = m[2] ? Math.min(Number(m[2]), f.size - 1) : f.size - 1;
    status = 206;
  }
  const data = req.method === 'HEAD' ? Buffer.alloc(0) : (await readFile(f.full)).subarray(start, end + 1);
  res.writeHead(status, {
    ...headers,
    'accept-ranges': 'bytes',
    'content-length': String(end - start + 1),
    'content-type': 'application/octet-stream',
    ...(status === 206 ? { 'content-range': `bytes ${start}-${end}/${f.size}` } : {}),
  });
  res.end(data);
  record(status, data.length);
}

/**
 * Starts the hub and a "CDN" on another loopback port. Like the Hub, the resolve endpoint answers
 * large (LFS) files with a redirect to the CDN, carrying X-Repo-Commit, X-Linked-Size and
 * X-Linked-Etag; small files come straight from the hub. Unknown repositories get 401 RepoNotFound,
 * as the Hub answers a caller that might lack access to a private one.
 */
export async function startFakeHub(opts: { repos: Record<string, FakeRepo>; token?: string; pageSize?: number }): Promise<FakeHub> {
  const requests: HubRequest[] = [];
  const repos = new Map<string, { repo: FakeRepo; files: FileInfo[] }>();
  for (const [id, repo] of Object.entries(opts.repos)) repos.set(id, { repo, files: await filesOf(repo.dir) });
  const byHash = new Map<string, FileInfo>();
  for (const { files } of repos.values()) for (const f of files) byHash.set(f.sha256, f);
  const pageSize = opts.pageSize ?? 2;

  const cdnServer = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const rec: HubRequest = { server: 'cdn', method: req.method ?? '', path: url.pathname, range: req.headers.range ?? null, authorization: req.headers.authorization ?? null, status: 0, bytes: 0 };
    requests.push(rec);
    const record = (status: number, bytes: number) => Object.assign(rec, { status, bytes });
    const f = byHash.get(url.pathname.replace(/^\/blobs\//, ''));
    if (!f || url.searchParams.get('sig') !== 'signed') {
      res.writeHead(403).end();
      return record(403, 0);
    }
    void sendFile(req, res, f, { etag: `"${f.sha256}"` }, record);
  });
  const cdn = await listen(cdnServer);

  const hubServer = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const rec: HubRequest = { server: 'hub', method: req.method ?? '', path: url.pathname, range: req.headers.range ?? null, authorization: req.headers.authorization ?? null, status: 0, bytes: 0 };
    requests.push(rec);
    const record = (status: number, bytes: number) => Object.assign(rec, { status, bytes });
    const json = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      const data = Buffer.from(JSON.stringify(body));
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': String(data.length), ...headers }).end(data);
      record(status, data.length);
    };
    const fail = (status: number, code: string, message: string) => json(status, { error: message }, { 'x-error-code': code });
    const authorized = () => !!opts.token && req.headers.authorization === `Bearer ${opts.token}`;
    const lookup = (id: string, rev: string) => {
      const r = repos.get(id);
      if (!r) return fail(401, 'RepoNotFound', 'Repository Not Found'), null;
      const commit = /^[0-9a-f]{40}$/.test(rev) ? rev : (r.repo.branches ?? { main: r.repo.commit })[rev];
      if (commit !== r.repo.commit) return fail(404, 'RevisionNotFound', 'Invalid rev id'), null;
      return { ...r, commit };
    };

    let m = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
    if (m && req.method === 'GET') {
      const r = lookup(m[1], decodeURIComponent(m[2]));
      if (!r) return;
      return json(200, {
        _id: 'x', id: m[1], sha: r.commit, private: false, gated: r.repo.gated ? 'auto' : false,
        downloads: 0, likes: 0, lastModified: '2025-01-01T00:00:00.000Z', pipeline_tag: 'text-generation',
      });
    }
    m = /^\/api\/models\/([^/]+\/[^/]+)\/tree\/([^/]+)$/.exec(url.pathname);
    if (m && req.method === 'GET') {
      const r = lookup(m[1], decodeURIComponent(m[2]));
      if (!r) return;
      const from = Number(url.searchParams.get('cursor') ?? 0);
      const page = r.files.slice(from, from + pageSize).map((f) => ({
        type: 'file', path: f.name, size: f.size, oid: f.sha1,
        ...(LFS.test(f.name) ? { lfs: { oid: f.sha256, size: f.size, pointerSize: 134 } } : {}),
      }));
      const next: Record<string, string> = from + pageSize < r.files.length
        ? { link: `<${hub}${url.pathname}?recursive=false&expand=false&cursor=${from + pageSize}>; rel="next"` }
        : {};
      return json(200, page, next);
    }
    m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/([^/]+)$/.exec(url.pathname);
    if (m && (req.method === 'GET' || req.method === 'HEAD')) {
      const r = lookup(m[1], decodeURIComponent(m[2]));
      if (!r) return;
      if (r.repo.gated && !authorized()) return fail(401, 'GatedRepo', `Access to model ${m[1]} is restricted. You must have access to it and be authenticated to access it.`);
      const f = r.files.find((x) => x.name === decodeURIComponent(m![3]));
      if (!f) return fail(404, 'EntryNotFound', 'Entry not found');
      const common = { 'x-repo-commit': r.commit };
      if (LFS.test(f.name)) {
        res.writeHead(302, {
          ...common, location: `${cdn}/blobs/${f.sha256}?sig=signed`,
          'x-linked-size': String(f.size), 'x-linked-etag': `"${f.sha256}"`, etag: `"${f.sha1}"`, 'content-length': '0',
        }).end();
        return record(302, 0);
      }
      return void sendFile(req, res, f, { ...common, etag: `"${f.sha1}"` }, record);
    }
    fail(404, 'NotFound', `no route ${req.method} ${url.pathname}`);
  });
  const hub = await listen(hubServer);

  return {
    endpoint: hub,
    cdn,
    requests,
    bytesServed: (filter) => requests.filter((r) => !filter || filter(r)).reduce((a, r) => a + r.bytes, 0),
    async close() {
      for (const s of [hubServer, cdnServer]) {
        s.closeAllConnections();
        await new Promise<void>((r) => s.close(() => r()));
      }
    },
  };
}
