// hf://owner/name[@revision] inputs, read through a loopback server in the Hub's URL layout.
import { describe, it, expect, vi, afterEach, beforeAll, afterAll } from 'vitest';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, stat, symlink, writeFile } from 'node:fs/promises';
import { fixturesDir } from './helpers/fixtures.js';
import { withTempDir } from './helpers/models.js';
import { runCli } from './helpers/cli.js';
import { startFakeHub, type FakeHub, type HubRequest } from './helpers/hub.js';
import { HubStore, hubEndpoint, hubResolver, parseHubRef } from '../lib/storage/hub.js';
import { InputError } from '../lib/errors.js';
import { readHeader } from '../lib/format/safetensors.js';
import { pipeline, resetPipeline } from '../functions/pipeline.js';
import { readSettings } from '../functions/settings.js';
import { badInput } from '../functions/http.js';

const BF16 = path.join(fixturesDir, 'tiny-llama-bf16');
const commitOf = (s: string) => createHash('sha1').update(s).digest('hex');
const C = { base: commitOf('base'), post: commitOf('post'), newbase: commitOf('newbase'), gated: commitOf('gated') };
const TOKEN = 'hf_loopbackTestToken123';

let hub: FakeHub;

beforeAll(async () => {
  hub = await startFakeHub({
    repos: {
      'test/base': { dir: `${BF16}/base`, commit: C.base },
      'test/post': { dir: `${BF16}/post`, commit: C.post, branches: { main: C.post, v1: C.post } },
      'test/newbase': { dir: `${BF16}/newbase`, commit: C.newbase },
      'gate/post': { dir: `${BF16}/post`, commit: C.gated, gated: true },
    },
    token: TOKEN,
  });
});
afterAll(() => hub.close());

/** The CLI's environment: the loopback hub, no token, and a Hub cache folder that does not exist. */
function hubEnv(tmp: string, extra: Record<string, string> = {}): void {
  vi.stubEnv('HF_ENDPOINT', hub.endpoint);
  vi.stubEnv('HF_TOKEN', '');
  vi.stubEnv('HF_HUB_OFFLINE', '');
  vi.stubEnv('HF_HUB_CACHE', path.join(tmp, 'no-cache'));
  for (const [k, v] of Object.entries(extra)) vi.stubEnv(k, v);
}

afterEach(() => {
  vi.unstubAllEnvs();
  vi.restoreAllMocks();
  hub.requests.length = 0;
});

async function sizeOf(dir: string): Promise<number> {
  let n = 0;
  for (const f of await readdir(dir)) n += (await stat(path.join(dir, f))).size;
  return n;
}

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** Both folders hold the same files with the same bytes; delta.json may differ only in createdAt. */
async function expectSameFolder(got: string, want: string): Promise<void> {
  const names = (await readdir(want)).sort();
  expect((await readdir(got)).sort()).toEqual(names);
  for (const f of names) {
    let [a, b] = [await readFile(path.join(got, f), 'utf8'), await readFile(path.join(want, f), 'utf8')];
    if (f === 'delta.json') [a, b] = [a, b].map((s) => s.replace(/"createdAt": "[^"]*"/, '"createdAt": ""'));
    if (f === 'paramdelta.json') {
      // The model manifest names its inputs (hf:// against local folders): compare the rest.
      [a, b] = [a, b].map((s) => {
        const m = JSON.parse(s);
        return JSON.stringify({ ...m, createdAt: null, base: null, deltas: m.deltas.map((d: { scale: number }) => d.scale) });
      });
    }
    if (f.endsWith('.safetensors')) expect((await readFile(path.join(got, f))).equals(await readFile(path.join(want, f))), f).toBe(true);
    else expect(a, f).toBe(b);
  }
}

describe('hf:// references', () => {
  it('are parsed strictly: owner/name as the Hub allows, a revision, nothing that could reshape a URL', () => {
    expect(parseHubRef('hf://meta-llama/Llama-3.2-1B')).toEqual({ owner: 'meta-llama', name: 'Llama-3.2-1B', revision: null });
    expect(parseHubRef('hf://TinyLlama/TinyLlama_v1.1@refs/pr/3')).toEqual({ owner: 'TinyLlama', name: 'TinyLlama_v1.1', revision: 'refs/pr/3' });
    expect(parseHubRef(`hf://a/b@${C.base}/`).revision).toBe(C.base);
    const refused = [
      'hf://', 'hf://name-only', 'hf://a/b/c', 'hf://a//b', 'hf:///a/b', 'hf://../b', 'hf://a/..', 'hf://a/b..c', 'hf://a/b--c',
      'hf://-a/b', 'hf://a/b.', 'hf://a/b.git', 'hf://a/b?x=1', 'hf://a/b#f', 'hf://a%2Fb/c', 'hf://user:pw@host/x', 'hf://a/b c',
      'hf://a/b\n', 'hf://a\\b/c', 'hf://é/b', 'hf://a/b@', 'hf://a/b@../main', 'hf://a/b@main?x', 'hf://a/b@x:y', 'hf://a/b@-x',
      'hf://a/b@a//b', 'hf://a/b@x.lock', `hf://a/${'b'.repeat(100)}`, 'https://huggingface.co/a/b', 'hf:/a/b',
    ];
    for (const r of refused) expect(() => parseHubRef(r), r).toThrow(InputError);
    expect(() => parseHubRef('hf://a/b?x=1')).toThrow(/"hf:\/\/a\/b\?x=1"/);
    expect(() => parseHubRef('hf://evil/m', { field: 'base', allowedOwners: ['good'] })).toThrow(/^base: .*owner "evil".*allowed: good/);
  });

  it('take HF_ENDPOINT as a bare https URL (http only on loopback)', () => {
    expect(hubEndpoint({})).toBe('https://huggingface.co');
    expect(hubEndpoint({ HF_ENDPOINT: 'https://hf-mirror.example/' })).toBe('https://hf-mirror.example');
    expect(hubEndpoint({ HF_ENDPOINT: 'http://127.0.0.1:8080' })).toBe('http://127.0.0.1:8080');
    for (const bad of ['http://hf-mirror.example', 'https://u:p@hf.example', 'https://hf.example/?token=x', 'file:///tmp', 'not a url']) {
      expect(() => hubEndpoint({ HF_ENDPOINT: bad }), bad).toThrow(/HF_ENDPOINT/);
    }
  });

  it('compute the same delta as local folders, reading headers by small ranges and each byte about once', () =>
    withTempDir(async (tmp) => {
      hubEnv(tmp);
      const local = await runCli(['compute', '--base', `${BF16}/base`, '--post', `${BF16}/post`, '--out', path.join(tmp, 'local')]);
      expect(local.code).toBe(0);
      const r = await runCli(['compute', '--base', 'hf://test/base', '--post', 'hf://test/post@v1', '--out', path.join(tmp, 'hub')]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      await expectSameFolder(path.join(tmp, 'hub'), path.join(tmp, 'local'));

      // Each revision is resolved once, and every file read is of that commit.
      const api = hub.requests.filter((q) => q.path.includes('/revision/'));
      expect(api.map((q) => q.path).sort()).toEqual(['/api/models/test/base/revision/main', '/api/models/test/post/revision/v1']);
      const resolves = hub.requests.filter((q) => q.path.includes('/resolve/'));
      expect(resolves.length).toBeGreaterThan(0);
      for (const q of resolves) expect(q.path).toMatch(new RegExp(`^/test/(base/resolve/${C.base}|post/resolve/${C.post})/`));
      // The token-less run sent no Authorization anywhere.
      expect(hub.requests.every((q) => q.authorization === null)).toBe(true);

      // Bytes: the two models once, plus listings and small JSON answers; never a whole shard in one request.
      const models = (await sizeOf(`${BF16}/base`)) + (await sizeOf(`${BF16}/post`));
      const served = hub.bytesServed();
      expect(served).toBeGreaterThanOrEqual(models);
      expect(served).toBeLessThanOrEqual(models + 8192);
      for (const dir of ['base', 'post']) {
        for (const f of (await readdir(`${BF16}/${dir}`)).filter((n) => n.endsWith('.safetensors'))) {
          const bytes = await readFile(`${BF16}/${dir}/${f}`);
          const reqs = hub.requests.filter((q) => q.server === 'cdn' && q.path === `/blobs/${sha256(bytes)}`);
          const headerLength = Number(bytes.readBigUInt64LE(0));
          expect(reqs.every((q) => q.range !== null), `${dir}/${f}: every read is a range`).toBe(true);
          expect(reqs[0].range).toBe('bytes=0-7');
          expect(reqs[1].range).toBe(`bytes=8-${8 + headerLength - 1}`);
          expect(headerLength).toBeLessThan(4096);
          const fetched = reqs.reduce((a, q) => a + q.bytes, 0);
          // Header and tensors tile the file: each byte comes once.
          expect(fetched, `${dir}/${f}`).toBe(bytes.length);
        }
      }
    }));

  it('serve as the base of apply, and as inputs of verify and inspect', () =>
    withTempDir(async (tmp) => {
      hubEnv(tmp);
      const d = path.join(tmp, 'delta');
      expect((await runCli(['compute', '--base', `${BF16}/base`, '--post', `${BF16}/post`, '--out', d])).code).toBe(0);
      expect((await runCli(['apply', '--base', `${BF16}/newbase`, '--delta', d, '--out', path.join(tmp, 'local')])).code).toBe(0);
      const a = await runCli(['apply', '--base', 'hf://test/newbase', '--delta', d, '--out', path.join(tmp, 'hub')]);
      expect(a.stderr).toBe('');
      expect(a.code).toBe(0);
      await expectSameFolder(path.join(tmp, 'hub'), path.join(tmp, 'local'));
      // A delta published on the Hub applies like a local one.
      const deltaHub = await startFakeHub({ repos: { 'test/delta': { dir: d, commit: commitOf('delta') } } });
      try {
        vi.stubEnv('HF_ENDPOINT', deltaHub.endpoint);
        const ad = await runCli(['apply', '--base', `${BF16}/newbase`, '--delta', 'hf://test/delta', '--out', path.join(tmp, 'hub-delta')]);
        expect(ad.stderr).toBe('');
        expect(ad.code).toBe(0);
        await expectSameFolder(path.join(tmp, 'hub-delta'), path.join(tmp, 'local'));
        expect(deltaHub.requests.filter((q) => q.path.includes('/revision/'))).toHaveLength(1);
      } finally {
        vi.stubEnv('HF_ENDPOINT', hub.endpoint);
        await deltaHub.close();
      }
      const v = await runCli(['verify', '--base', 'hf://test/base', '--post', 'hf://test/post', '--delta', d]);
      expect(v.code).toBe(0);
      expect(v.stdout).toMatch(/verified: 21 tensors/);
      const i = JSON.parse((await runCli(['inspect', 'hf://test/post', '--json'])).stdout);
      const want = JSON.parse((await runCli(['inspect', `${BF16}/post`, '--json'])).stdout);
      expect({ ...i, path: '' }).toEqual({ ...want, path: '' });
    }));

  it('are never outputs', () =>
    withTempDir(async (tmp) => {
      hubEnv(tmp);
      const r = await runCli(['compute', '--base', `${BF16}/base`, '--post', `${BF16}/post`, '--out', 'hf://test/out']);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/--out hf:\/\/test\/out: Hub references are inputs only/);
      expect(hub.requests).toEqual([]);
    }));

  it('name the repository, revision or file that is missing, and exit 2', () =>
    withTempDir(async (tmp) => {
      hubEnv(tmp);
      const repo = await runCli(['inspect', 'hf://test/nope']);
      expect(repo.code).toBe(2);
      expect(repo.stderr).toMatch(/hf:\/\/test\/nope: no such repository on http:\/\/127\.0\.0\.1:\d+ \(if it is private, set HF_TOKEN\)/);
      const rev = await runCli(['compute', '--base', 'hf://test/base@v9', '--post', `${BF16}/post`, '--out', path.join(tmp, 'x')]);
      expect(rev.code).toBe(2);
      expect(rev.stderr).toMatch(/hf:\/\/test\/base@v9: test\/base has no revision "v9"/);
      await expect(stat(path.join(tmp, 'x'))).rejects.toThrow();
      const store = hubResolver({ env: { HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: path.join(tmp, 'none') } })('hf://test/base');
      await expect(store.openRead('absent.safetensors')).rejects.toThrow(new InputError(`hf://test/base@${C.base}/absent.safetensors: no such file`));
      expect(await store.exists('config.json')).toBe(true);
      expect(await store.list()).toEqual((await readdir(`${BF16}/base`)).sort());
      await expect(store.writeFile()).rejects.toThrow(/read-only/);
    }));

  it('ask for HF_TOKEN on a gated repository, and send it only to the endpoint', () =>
    withTempDir(async (tmp) => {
      hubEnv(tmp);
      const out = path.join(tmp, 'gated');
      const denied = await runCli(['compute', '--base', `${BF16}/base`, '--post', 'hf://gate/post', '--out', out]);
      expect(denied.code).toBe(2);
      expect(denied.stderr).toMatch(/hf:\/\/gate\/post@[0-9a-f]{40}: gated repository; request access on the Hub, then set HF_TOKEN/);
      await expect(stat(out)).rejects.toThrow();

      hub.requests.length = 0;
      vi.stubEnv('HF_TOKEN', TOKEN);
      const r = await runCli(['compute', '--base', `${BF16}/base`, '--post', 'hf://gate/post', '--out', out]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      await expectSameFolder(out, await (async () => {
        const l = path.join(tmp, 'local');
        await runCli(['compute', '--base', `${BF16}/base`, '--post', `${BF16}/post`, '--out', l]);
        return l;
      })());
      const toHub = hub.requests.filter((q: HubRequest) => q.server === 'hub');
      const toCdn = hub.requests.filter((q: HubRequest) => q.server === 'cdn');
      expect(toHub.length).toBeGreaterThan(0);
      expect(toCdn.length).toBeGreaterThan(0);
      expect(toHub.every((q) => q.authorization === `Bearer ${TOKEN}`)).toBe(true);
      expect(toCdn.every((q) => q.authorization === null)).toBe(true);
      expect(r.stdout + r.stderr + denied.stdout + denied.stderr).not.toContain(TOKEN);

      vi.stubEnv('HF_TOKEN', 'hf_wrongToken');
      const wrong = await runCli(['inspect', 'hf://gate/post']);
      expect(wrong.code).toBe(2);
      expect(wrong.stderr).toMatch(/gated repository, and HF_TOKEN does not grant access/);
      expect(wrong.stderr).not.toContain('hf_wrongToken');
    }));

  it('read files from the Hub cache when it holds them (HF_HOME/hub), and fetch only the rest', () =>
    withTempDir(async (tmp) => {
      // The cache layout: models--owner--name/{refs/<branch>, snapshots/<commit>/<file> -> ../../blobs/<etag>}.
      const repo = path.join(tmp, 'hf-home', 'hub', 'models--test--base');
      const snap = path.join(repo, 'snapshots', C.base);
      await mkdir(snap, { recursive: true });
      await mkdir(path.join(repo, 'blobs'));
      await mkdir(path.join(repo, 'refs'));
      await writeFile(path.join(repo, 'refs', 'main'), C.base);
      const cached = new Set<string>();
      for (const f of await readdir(`${BF16}/base`)) {
        let data = await readFile(`${BF16}/base/${f}`);
        // A cached file whose size differs from the Hub's listing is not used.
        if (f === 'config.json') data = Buffer.concat([data, Buffer.from(' ')]);
        else cached.add(f);
        await writeFile(path.join(repo, 'blobs', sha256(data)), data);
        await symlink(`../../blobs/${sha256(data)}`, path.join(snap, f));
      }
      hubEnv(tmp, { HF_HOME: path.join(tmp, 'hf-home') });
      vi.stubEnv('HF_HUB_CACHE', '');
      const local = await runCli(['compute', '--base', `${BF16}/base`, '--post', `${BF16}/post`, '--out', path.join(tmp, 'local')]);
      expect(local.code).toBe(0);
      const r = await runCli(['compute', '--base', 'hf://test/base', '--post', 'hf://test/post', '--out', path.join(tmp, 'hub')]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      await expectSameFolder(path.join(tmp, 'hub'), path.join(tmp, 'local'));
      const baseReads = hub.requests.filter((q) => q.path.startsWith('/test/base/resolve/'));
      expect(baseReads.map((q) => path.basename(q.path))).toEqual(['config.json']);
      const baseHashes = new Set<string>();
      for (const f of cached) baseHashes.add(sha256(await readFile(`${BF16}/base/${f}`)));
      expect(hub.requests.filter((q) => q.server === 'cdn' && baseHashes.has(path.basename(q.path)))).toEqual([]);
      expect(hub.requests.some((q) => q.path.startsWith('/test/post/resolve/'))).toBe(true);
      // Reading never writes: the cache holds what it held.
      expect((await readdir(path.join(tmp, 'hf-home', 'hub'))).sort()).toEqual(['models--test--base']);

      // Offline, a cached repository is read from the cache alone, and an uncached one is refused.
      hub.requests.length = 0;
      vi.stubEnv('HF_HUB_OFFLINE', '1');
      vi.stubEnv('HF_ENDPOINT', 'http://127.0.0.1:9');
      const off = await runCli(['inspect', 'hf://test/base', '--json']);
      expect(off.stderr).toBe('');
      expect(JSON.parse(off.stdout)).toMatchObject({ kind: 'checkpoint', parameters: 137664 });
      const miss = await runCli(['inspect', 'hf://test/post']);
      expect(miss.code).toBe(2);
      expect(miss.stderr).toMatch(/hf:\/\/test\/post: HF_HUB_OFFLINE is set and the Hub cache has no revision "main" of test\/post/);
      expect(hub.requests).toEqual([]);
    }));

  it('pin the revision to one commit, so plans name the commit', async () => {
    const resolve = hubResolver({ env: { HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: '/nonexistent-hf-cache' } });
    const store = resolve('hf://test/post');
    expect(store.ref).toBe('hf://test/post');
    expect(await store.commit()).toBe(C.post);
    expect(store.ref).toBe(`hf://test/post@${C.post}`);
    // The resolver hands back the same store for the pinned name, with no second lookup.
    expect(resolve(`hf://test/post@${C.post}`)).toBe(store);
    expect(resolve('hf://test/post')).toBe(store);
    const src = await store.openRead('model-00001-of-00003.safetensors');
    const local = await readFile(`${BF16}/post/model-00001-of-00003.safetensors`);
    expect((await readHeader(src)).fileSize).toBe(local.length);
    expect(Buffer.from(await src.read(100, 1000)).equals(local.subarray(100, 1100))).toBe(true);
    expect(hub.requests.filter((q) => q.path.includes('/revision/'))).toHaveLength(1);
    // A long-lived service keeps only pinned stores: each request resolves the branch again.
    const service = hubResolver({ env: { HF_ENDPOINT: hub.endpoint }, memo: 'pinned' });
    expect(service('hf://test/post')).not.toBe(service('hf://test/post'));
    expect(store).toBeInstanceOf(HubStore);
  });

  it('keep a fetched range to answer the same read once more, within a budget', async () => {
    const env = { HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: '/nonexistent-hf-cache' };
    const file = 'model-00002-of-00002.safetensors';
    const local = await readFile(`${BF16}/base/${file}`);
    const cdnReads = () => hub.requests.filter((q) => q.server === 'cdn').length;
    const src = await hubResolver({ env, rereadBytes: 4096 })(`hf://test/base@${C.base}`).openRead(file);
    for (const [offset, length, fetches] of [[100, 4000, 1], [100, 4000, 1], [100, 4000, 2], [0, 5000, 3], [0, 5000, 4]]) {
      expect(Buffer.from(await src.read(offset, length)).equals(local.subarray(offset, offset + length))).toBe(true);
      expect(cdnReads(), `read ${offset}+${length}`).toBe(fetches);
    }
    await src.close();
  });

  it('retry a busy Hub, and report an unreachable one as such', async () => {
    const plain = await import('node:http');
    let calls = 0;
    const server = plain.createServer((req, res) => {
      calls++;
      if (calls === 1) return void res.writeHead(503, { 'retry-after': '0' }).end();
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify([{ type: 'file', path: 'config.json', size: 2, oid: 'x' }]));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const endpoint = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    try {
      expect(await hubResolver({ env: { HF_ENDPOINT: endpoint } })(`hf://x/y@${C.base}`).list()).toEqual(['config.json']);
      expect(calls).toBe(2);
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
    const gone = hubResolver({ env: { HF_ENDPOINT: endpoint }, retries: 1 })('hf://x/y');
    await expect(gone.list()).rejects.toMatchObject({ code: 'ECONNREFUSED', message: `hf://x/y: cannot reach ${endpoint} (ECONNREFUSED)` });
  });

  it('say when HF_ENDPOINT is not a Hub, and never print the token even if the server echoes it', async () => {
    const plain = await import('node:http');
    const server = plain.createServer((req, res) => {
      if (req.url?.includes('/x/html/')) return void res.writeHead(200, { 'content-type': 'text/html' }).end('<html>sign in</html>');
      res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ error: `bad header ${req.headers.authorization}` }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const endpoint = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    try {
      const resolve = hubResolver({ env: { HF_ENDPOINT: endpoint, HF_TOKEN: TOKEN } });
      await expect(resolve('hf://x/html').list()).rejects.toThrow(new RegExp(`^hf://x/html: ${endpoint} does not answer like a Hugging Face Hub .*check HF_ENDPOINT`));
      const echoed = await resolve('hf://x/echo').list().catch((e: Error) => e);
      expect(String((echoed as Error).message)).toMatch(/HTTP 400: bad header Bearer \[HF_TOKEN\]/);
      expect(String((echoed as Error).message)).not.toContain(TOKEN);
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  it('refuse a server that ignores Range rather than download whole files', async () => {
    const plain = await import('node:http');
    const data = Buffer.alloc(100_000, 7);
    const server = plain.createServer((req, res) => {
      if (req.url?.includes('/tree/')) {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify([{ type: 'file', path: 'w.bin', size: data.length, oid: 'x' }]));
      } else res.writeHead(200, { 'content-length': String(data.length) }).end(data);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const endpoint = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
      const store = hubResolver({ env: { HF_ENDPOINT: endpoint } })(`hf://x/y@${C.base}`);
      const src = await store.openRead('w.bin');
      await expect(src.read(10, 20)).rejects.toThrow(/did not answer the byte range 10-29 .*refusing to read the whole file/);
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });
});

describe('the pipeline and hf:// inputs', () => {
  afterEach(() => resetPipeline());
  const request = (owners: string) => {
    vi.stubEnv('AzureWebJobsStorage', 'UseDevelopmentStorage=true');
    vi.stubEnv('PARAMDELTA_HUB_OWNERS', owners);
    resetPipeline();
    return pipeline();
  };

  it('refuses Hub inputs unless the owner is in PARAMDELTA_HUB_OWNERS, with 400 naming the field', () => {
    const off = request('');
    expect(() => off.ref('base', 'hf://meta-llama/Llama-3.2-1B')).toThrow(/^base: Hub references \(hf:\/\/\) are not enabled here.*PARAMDELTA_HUB_OWNERS/);
    const p = request('meta-llama, mistralai');
    expect(p.settings.hubOwners).toEqual(['meta-llama', 'mistralai']);
    expect(p.ref('base', 'hf://meta-llama/Llama-3.2-1B@main/')).toBe('hf://meta-llama/Llama-3.2-1B@main');
    let err: unknown;
    try {
      p.ref('post', 'hf://someone/model');
    } catch (e) {
      err = e;
    }
    expect(badInput(err)).toMatchObject({ status: 400, jsonBody: { field: 'post', detail: expect.stringMatching(/owner "someone".*allowed: meta-llama, mistralai/) } });
    // Outputs stay in the account; a container-list field never takes a Hub reference.
    expect(() => p.ref('output', 'hf://meta-llama/out', [p.settings.containers.models])).toThrow(/^output: Hub references are inputs only/);
    // The engine's resolver holds the same line for references that come back from stored plans.
    expect(() => p.env.resolve('hf://someone/model@main')).toThrow(InputError);
    expect(p.env.resolve('hf://mistralai/Mistral-7B-v0.3').ref).toBe('hf://mistralai/Mistral-7B-v0.3');
    expect(p.ref('base', 'models/llama')).toBe('models/llama');
  });

  it('checks each listed owner', () => {
    expect(() => readSettings({ PARAMDELTA_HUB_OWNERS: 'meta-llama,bad owner' })).toThrow(/PARAMDELTA_HUB_OWNERS: "bad owner" is not a Hub owner name/);
    expect(readSettings({}).hubOwners).toEqual([]);
  });
});
