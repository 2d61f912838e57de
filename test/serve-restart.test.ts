// A killed `paramdelta serve` resumes its runs: the built CLI (`npm test` builds dist/ first) runs
// as a child process, is SIGKILLed in the middle of a re-post of two deltas, and is started again on
// the same data folder. It reuses the Azurite the killed one left running (never a second one on
// that folder), finishes the run, and writes what an uninterrupted run writes, byte for byte.
import { afterAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BlobServiceClient } from '@azure/storage-blob';
import { fixturesDir } from './helpers/fixtures.js';
import { loadTensors, withTempDir } from './helpers/models.js';
import { downloadFolder, listNames, uploadFolder } from './helpers/blob.js';
import { AZURITE_RECORD, isAlive, isAzuriteOn, type AzuriteRecord } from '../cli/host/azurite.js';
import { runId } from '../functions/http.js';
import { childInstanceId } from '../functions/limits.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const CLI = path.join(root, 'dist/cli/index.js');
const BF16 = path.join(fixturesDir, 'tiny-llama-bf16');
const DELTAS = { chat: 'post', chat2: 'post2' } as const;

interface Serve {
  child: ChildProcess;
  url: string;
  connectionString: string;
  output: () => string;
  exited: Promise<number | null>;
}

const spawned: ChildProcess[] = [];
const folders: string[] = [];

/** Starts `paramdelta serve` from dist/ and waits for it to print its address and storage. */
async function startServe(dataDir: string): Promise<Serve> {
  const child = spawn(process.execPath, [CLI, 'serve', '--port', '0', '--data-dir', dataDir, '--azurite-ports', 'free'], {
    // Small shards make a re-post many activities long, so a kill lands in the middle of it.
    env: { ...process.env, AzureWebJobsStorage: '', PARAMDELTA_SHARD_SIZE: '30000', PARAMDELTA_BUFFER_BYTES: '65536' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  spawned.push(child);
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const deadline = Date.now() + 30_000;
  for (;;) {
    const url = /paramdelta serve: (http:\/\/127\.0\.0\.1:\d+)\/api/.exec(out)?.[1];
    const cs = /^storage \(Azurite[^)]*\): (.+)$/m.exec(out)?.[1];
    if (url && cs && out.includes('watching base-models')) return { child, url, connectionString: cs.trim(), output: () => out, exited };
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`serve did not start (exit ${child.exitCode}):\n${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function api(s: Serve, method: string, route: string, body?: unknown): Promise<{ status: number; json: any }> {
  const res = await fetch(`${s.url}/api/${route}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, json: await res.json() };
}

async function waitFor(s: Serve, id: string, timeoutMs = 60_000): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await api(s, 'GET', `runs/${encodeURIComponent(id)}`);
    if (r.status === 200 && ['Completed', 'Failed', 'Terminated'].includes(r.json.status)) return r.json;
    if (Date.now() > deadline) throw new Error(`run ${id} not finished: ${JSON.stringify(r)}`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

/** The re-post run of base-models/<name>: its id comes from the name and the index's ETag, as baseModelUploaded makes it. */
async function repostIds(service: BlobServiceClient, name: string): Promise<{ parent: string; children: Record<string, string> }> {
  const etag = (await service.getContainerClient('base-models').getBlobClient(`${name}/model.safetensors.index.json`).getProperties()).etag ?? '';
  const parent = runId('repost', name, [name, etag]);
  return { parent, children: Object.fromEntries(Object.keys(DELTAS).map((d) => [d, childInstanceId(parent, d)])) };
}

/** Azurite processes (by /proc) whose data folder is `dir`. */
async function azuritesOn(dir: string): Promise<number[]> {
  const pids = (await readdir('/proc')).filter((p) => /^\d+$/.test(p)).map(Number);
  const found: number[] = [];
  for (const pid of pids) if (await isAzuriteOn(pid, dir)) found.push(pid);
  return found;
}

const readRecord = async (dir: string) => JSON.parse(await readFile(path.join(dir, AZURITE_RECORD), 'utf8')) as AzuriteRecord;

/** A posted model's files; JSON files without timestamps (`createdAt`), which "byte for byte" leaves out. */
async function postedFiles(service: BlobServiceClient, prefix: string): Promise<Map<string, Buffer>> {
  return withTempDir(async (tmp) => {
    const names = await downloadFolder(service.getContainerClient('posted-models'), prefix, tmp);
    const files = new Map<string, Buffer>();
    for (const n of names) {
      let bytes = await readFile(path.join(tmp, n));
      if (n.endsWith('.json')) bytes = Buffer.from(JSON.stringify(JSON.parse(bytes.toString('utf8'), (k, v) => (k === 'createdAt' ? undefined : v))));
      files.set(n, bytes);
    }
    return files;
  });
}

afterAll(async () => {
  for (const c of spawned) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const dir of folders) {
    // An Azurite left behind by a failed test is stopped, and only if it is that folder's Azurite.
    const r = await readRecord(dir).catch(() => undefined);
    if (r && (await isAzuriteOn(r.pid, dir))) process.kill(r.pid, 'SIGTERM');
    await rm(dir, { recursive: true, force: true });
  }
});

describe('paramdelta serve killed with SIGKILL in the middle of a re-post', () => {
  it('resumes the run on restart, reusing its Azurite, and writes what an uninterrupted run writes', async () => {
    const dataDir = await mkdtemp(path.join(tmpdir(), 'paramdelta-serve-'));
    folders.push(dataDir);
    let serve = await startServe(dataDir);
    const service = BlobServiceClient.fromConnectionString(serve.connectionString);
    const models = service.getContainerClient('models');
    for (const m of ['base', 'post', 'post2']) await uploadFolder(models, `tiny/${m}`, path.join(BF16, m));
    const computes = await Promise.all(Object.entries(DELTAS).map(([name, post]) => api(serve, 'POST', 'deltas', { name, base: 'models/tiny/base', post: `models/tiny/${post}` })));
    for (const r of computes) {
      expect(r.status).toBe(202);
      expect((await waitFor(serve, r.json.id)).status).toBe('Completed');
    }

    // Upload a new base and kill serve once a child has written a shard but the re-post is not
    // done. A kill that comes too late (the run already finished) is retried on another base.
    let killed: { name: string; ids: Awaited<ReturnType<typeof repostIds>> } | undefined;
    for (let attempt = 1; attempt <= 3 && !killed; attempt++) {
      const name = `next-${attempt}`;
      await uploadFolder(service.getContainerClient('base-models'), name, path.join(BF16, 'newbase'));
      const ids = await repostIds(service, name);
      const deadline = Date.now() + 30_000;
      for (;;) {
        const kids = await Promise.all(Object.values(ids.children).map((id) => api(serve, 'GET', `runs/${encodeURIComponent(id)}`)));
        const midway = kids.some((k) => k.status === 200 && k.json.status === 'Running' && k.json.progress?.phase === 'shards' && k.json.progress.shardsDone >= 1);
        if (midway || kids.every((k) => k.json.status === 'Completed') || Date.now() > deadline) break;
        await new Promise((r) => setTimeout(r, 2));
      }
      serve.child.kill('SIGKILL');
      await serve.exited;
      // Was the re-post unfinished when the process died? Some child output has no index yet.
      const indexes = await Promise.all(Object.keys(DELTAS).map(async (d) => (await listNames(service.getContainerClient('posted-models'), `${name}/${d}`)).includes('model.safetensors.index.json')));
      const shards = (await Promise.all(Object.keys(DELTAS).map((d) => listNames(service.getContainerClient('posted-models'), `${name}/${d}`)))).flat();
      if (indexes.includes(false) && shards.some((f) => f.endsWith('.safetensors'))) killed = { name, ids };

      // The killed serve's Azurite is still running, recorded in the data folder.
      const record = await readRecord(dataDir);
      expect(isAlive(record.pid)).toBe(true);
      expect(await azuritesOn(dataDir)).toEqual([record.pid]);

      const previous = serve.connectionString;
      serve = await startServe(dataDir);
      expect(serve.output()).toMatch(new RegExp(`storage \\(Azurite, pid ${record.pid}, reused`));
      expect(serve.connectionString).toBe(previous);
      expect(await azuritesOn(dataDir)).toEqual([record.pid]); // reused, never a second one
      if (killed) expect(serve.output()).toMatch(/resumed [1-9]\d* unfinished orchestration instance/);
    }
    expect(killed, 'no kill landed in the middle of a re-post in 3 attempts').toBeDefined();
    const { name, ids } = killed!;
    // The reference: the same base re-posted without interruption, alongside the resumed run.
    await uploadFolder(service.getContainerClient('base-models'), 'uninterrupted', path.join(BF16, 'newbase'));
    const clean = await repostIds(service, 'uninterrupted');

    // The restarted serve finishes the run; the run and its children answer with their status.
    const done = await waitFor(serve, ids.parent);
    expect(done).toMatchObject({ status: 'Completed', error: null, progress: { phase: 'completed', shardsDone: 2, shardsTotal: 2 } });
    expect(done.output.posted.map((p: { delta: string }) => p.delta).sort()).toEqual(['chat', 'chat2']);
    expect(done.output.failed).toEqual([]);
    for (const id of Object.values(ids.children)) expect((await waitFor(serve, id)).status).toBe('Completed');

    // The output is exact: the fixture's expected model for chat, and for both deltas the very
    // files an uninterrupted re-post of the same base writes.
    const chat = await withTempDir(async (tmp) => {
      await downloadFolder(service.getContainerClient('posted-models'), `${name}/chat`, tmp);
      return loadTensors(tmp);
    });
    const want = await loadTensors(path.join(BF16, 'expected/apply-post-1.0'));
    expect([...chat.keys()].sort()).toEqual([...want.keys()].sort());
    for (const [n, t] of want) expect(chat.get(n)!.bytes.equals(t.bytes), n).toBe(true);

    expect((await waitFor(serve, clean.parent)).status).toBe('Completed');
    for (const d of Object.keys(DELTAS)) {
      const got = await postedFiles(service, `${name}/${d}`);
      const ref = await postedFiles(service, `uninterrupted/${d}`);
      expect([...got.keys()].sort(), d).toEqual([...ref.keys()].sort());
      expect([...got.keys()].filter((f) => f.endsWith('.safetensors')).length, d).toBeGreaterThan(2);
      // paramdelta.json records when it was written and the base's own name: the rest byte for byte.
      const untimed = (f: string, b: Buffer) =>
        f === 'paramdelta.json' ? Buffer.from(JSON.stringify({ ...JSON.parse(b.toString()), createdAt: null, base: null })) : b;
      for (const [f, bytes] of ref) expect(untimed(f, got.get(f)!).equals(untimed(f, bytes)), `${d}/${f}`).toBe(true);
    }

    // A second serve on a folder in use is refused, without starting anything.
    const record = await readRecord(dataDir);
    const second = spawn(process.execPath, [CLI, 'serve', '--port', '0', '--data-dir', dataDir, '--azurite-ports', 'free'], { env: { ...process.env, AzureWebJobsStorage: '' }, stdio: ['ignore', 'pipe', 'pipe'] });
    spawned.push(second);
    let err = '';
    second.stderr!.on('data', (d) => (err += d));
    const code = await new Promise<number | null>((resolve) => second.once('exit', (c) => resolve(c)));
    expect(code).toBe(2); // a usage problem, not a bug
    expect(err).toContain(`in use by another paramdelta serve (pid ${serve.child.pid})`);
    expect(await azuritesOn(dataDir)).toEqual([record.pid]);

    // A graceful stop stops Azurite too and clears the record.
    serve.child.kill('SIGTERM');
    expect(await serve.exited).toBe(0);
    expect(isAlive(record.pid)).toBe(false);
    await expect(readFile(path.join(dataDir, AZURITE_RECORD))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('replaces a recorded Azurite that is gone, and leaves a process that is not Azurite alone', async () => {
    const dataDir = await mkdtemp(path.join(tmpdir(), 'paramdelta-serve-'));
    folders.push(dataDir);
    const bystander = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'], { stdio: 'ignore' });
    spawned.push(bystander);
    const stale: AzuriteRecord = {
      pid: bystander.pid!, blobPort: 1, queuePort: 2, tablePort: 3, cwd: path.join(dataDir, 'nothing'),
      location: dataDir, owner: 999_999_999, startedAt: new Date(0).toISOString(),
    };
    await writeFile(path.join(dataDir, AZURITE_RECORD), JSON.stringify(stale));
    const serve = await startServe(dataDir);
    const record = await readRecord(dataDir);
    expect(record.pid).not.toBe(bystander.pid);
    expect(record.owner).toBe(serve.child.pid);
    expect(await azuritesOn(dataDir)).toEqual([record.pid]);
    expect(isAlive(bystander.pid!)).toBe(true);
    serve.child.kill('SIGTERM');
    expect(await serve.exited).toBe(0);
    expect(isAlive(record.pid)).toBe(false);
    bystander.kill('SIGKILL');
  });
});
