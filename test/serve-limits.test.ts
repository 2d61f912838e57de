// `paramdelta serve` refuses what the Durable Task Scheduler refuses (functions/limits.ts), answers
// 413 for an oversized body from the shared HTTP layer, serves only the app.http registrations, and
// the pipeline's own instance ids fit: a 63-character delta re-posted onto a 60-character base.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import path from 'node:path';
import { createHash } from 'node:crypto';
import * as df from 'durable-functions';
import { BlobServiceClient } from '@azure/storage-blob';
import { fixturesDir } from './helpers/fixtures.js';
import { loadTensors, withTempDir } from './helpers/models.js';
import { downloadFolder, uploadFolder } from './helpers/blob.js';
import { startAzurite, type Azurite } from '../cli/host/azurite.js';
import { startServe, type ServeHandle } from '../cli/host/serve.js';
import { BackendLimitError, LocalDurableRuntime } from '../cli/host/runtime.js';
import { childInstanceId } from '../functions/limits.js';
import { httpRoutes } from '../functions/catalog.js';
import { registrations } from '../functions/app.js';

type Ctx = df.OrchestrationContext;
const MiB = 1 << 20;

describe('the local durable runtime enforces the backend limits', () => {
  let rt: LocalDurableRuntime;
  afterEach(async () => {
    await rt?.close();
  });
  const make = () => {
    rt = new LocalDurableRuntime({ timerScale: 0.001 });
    rt.registerActivity('echo', (x: unknown) => x);
    rt.registerActivity('big', (n: number) => 'x'.repeat(n));
    return rt;
  };

  it('refuses instance ids over 100 characters, not printable ASCII, or reserved for entities', async () => {
    const r = make();
    r.registerOrchestrator('o', function* () {
      return 1;
    });
    for (const id of ['a'.repeat(101), 'tab\there', 'caf\u00e9', '', '@entity']) {
      await expect(r.startNew('o', { instanceId: id }), JSON.stringify(id)).rejects.toBeInstanceOf(BackendLimitError);
    }
    const ok = 'a'.repeat(100);
    await r.startNew('o', { instanceId: ok });
    expect((await r.waitForCompletion(ok, 5000)).runtimeStatus).toBe('Completed');
    await r.startNew('o', { instanceId: ' ~!:/' }); // printable ASCII, space and symbols included
    expect((await r.waitForCompletion(' ~!:/', 5000)).runtimeStatus).toBe('Completed');
  });

  it('fails an orchestration that names a sub-orchestration id the backend refuses', async () => {
    const r = make();
    r.registerOrchestrator('kid', function* () {
      return 'kid';
    });
    r.registerOrchestrator('parent', function* (context: Ctx) {
      return yield context.df.callSubOrchestrator('kid', null, `${context.df.instanceId}:${'d'.repeat(63)}`);
    });
    const id = `repost-${'n'.repeat(40)}-0123456789abcdef`; // the longest id runId makes: 64 characters
    await r.startNew('parent', { instanceId: id });
    const s = await r.waitForCompletion(id, 5000);
    expect(s.runtimeStatus).toBe('Failed');
    expect(s.error).toContain(`is ${64 + 1 + 63} characters; the Durable Task Scheduler allows at most 100`);
    expect((await r.listInstances()).map((i) => i.instanceId)).toEqual([id]);
  });

  it('refuses inputs and outputs over 1 MiB and a custom status over 16 KB of UTF-16', async () => {
    const r = make();
    await expect(r.startNew('any', { input: 'x'.repeat(MiB) })).rejects.toThrow(/input of orchestration 'any' is 1048578 bytes of JSON; the Durable Task Scheduler allows at most 1048576/);

    r.registerOrchestrator('bigInput', function* (context: Ctx) {
      return yield context.df.callActivity('echo', 'x'.repeat(MiB));
    });
    r.registerOrchestrator('bigResult', function* (context: Ctx) {
      try {
        yield context.df.callActivity('big', MiB);
        return 'no';
      } catch (e) {
        return (e as Error).message;
      }
    });
    r.registerOrchestrator('bigOutput', function* (context: Ctx) {
      yield context.df.callActivity('echo', 1);
      return 'é'.repeat(MiB / 2); // 1 MiB of UTF-8 plus its quotes
    });
    r.registerOrchestrator('bigStatus', function* (context: Ctx) {
      context.df.setCustomStatus('s'.repeat(8191)); // 8,193 UTF-16 code units with the quotes: 16,386 bytes
      return yield context.df.callActivity('echo', 1);
    });
    r.registerOrchestrator('fullStatus', function* (context: Ctx) {
      context.df.setCustomStatus('s'.repeat(8190)); // exactly 16 KB
      return yield context.df.callActivity('echo', 2);
    });
    const run = async (name: string) => r.waitForCompletion(await r.startNew(name), 5000);

    expect(await run('bigInput')).toMatchObject({ runtimeStatus: 'Failed', error: expect.stringContaining("the input of activity 'echo' is 1048578 bytes") });
    expect(await run('bigResult')).toMatchObject({ runtimeStatus: 'Completed', output: expect.stringContaining("the result of activity 'big' is 1048578 bytes") });
    expect(await run('bigOutput')).toMatchObject({ runtimeStatus: 'Failed', error: expect.stringContaining('the orchestration output is 1048578 bytes') });
    expect(await run('bigStatus')).toMatchObject({ runtimeStatus: 'Failed', error: expect.stringContaining('the custom status is 16386 bytes of UTF-16 JSON') });
    expect(await run('fullStatus')).toMatchObject({ runtimeStatus: 'Completed', output: 2 });
  });

  it('derives child ids that fit whatever the names, the same on every replay', () => {
    const parent = `repost-${'b'.repeat(40)}-0123456789abcdef`;
    const a = childInstanceId(parent, 'x'.repeat(63));
    const b = childInstanceId(parent, `${'x'.repeat(62)}y`);
    expect(a.length).toBeLessThanOrEqual(100);
    expect(a).toBe(childInstanceId(parent, 'x'.repeat(63)));
    expect(a).not.toBe(b); // names that share a long prefix stay apart
    expect(a.endsWith(`-${createHash('sha256').update('x'.repeat(63)).digest('hex').slice(0, 12)}`)).toBe(true);
    expect(childInstanceId('short', 'chat')).toBe(`short:chat-${createHash('sha256').update('chat').digest('hex').slice(0, 12)}`);
    expect(childInstanceId('p'.repeat(100), 'chat').length).toBeLessThanOrEqual(100);
  });
});

describe('paramdelta serve, end to end on Azurite', () => {
  const BF16 = path.join(fixturesDir, 'tiny-llama-bf16');
  let azurite: Azurite;
  let serve: ServeHandle;
  let service: BlobServiceClient;

  beforeAll(async () => {
    azurite = await startAzurite();
    service = BlobServiceClient.fromConnectionString(azurite.connectionString);
    serve = await startServe({ port: 0, storage: azurite.connectionString, pollMs: 200, timerScale: 0.001, log: () => {} });
    for (const m of ['base', 'post']) await uploadFolder(service.getContainerClient('models'), `tiny/${m}`, path.join(BF16, m));
  });
  afterAll(async () => {
    await serve?.close();
    await azurite?.stop();
  });

  const post = (route: string, body: RequestInit['body'], headers: Record<string, string> = {}) =>
    fetch(`${serve.url}/api/${route}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body, duplex: 'half' } as RequestInit);

  it('answers 413 with a problem body for a request body over 1 MiB, declared or streamed', async () => {
    const big = await post('deltas', Buffer.alloc(20 * 1000 * 1000, 0x20));
    expect(big.status).toBe(413);
    expect(big.headers.get('content-type')).toContain('application/problem+json');
    expect(await big.json()).toMatchObject({ status: 413, title: 'Content too large', field: 'body', detail: expect.stringContaining('20000000 bytes') });

    // No content-length: the body is counted as it streams.
    const chunk = Buffer.alloc(64 * 1024, 0x20);
    let sent = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(c) {
        if (sent >= 2 * MiB) c.close();
        else {
          sent += chunk.length;
          c.enqueue(chunk);
        }
      },
    });
    const streamed = await post('deltas', stream);
    expect(streamed.status).toBe(413);
    expect(await streamed.json()).toMatchObject({ status: 413, field: 'body' });

    // Just under the limit the body is read and judged on its content.
    const padded = JSON.stringify({ name: 'Not A Name', base: 'models/tiny/base', post: 'models/tiny/post' }).padEnd(MiB, ' ');
    const under = await post('deltas', padded);
    expect(under.status).toBe(400);
    expect(((await under.json()) as { field?: string }).field).toBe('name');
  });

  it('serves exactly the app.http registrations, with their methods, under the api prefix', async () => {
    expect(httpRoutes.map((r) => [r.name, r.route, r.methods.join(','), r.authLevel])).toEqual(
      [...registrations.http].map(([name, o]) => [name, o.route, o.methods!.join(','), o.authLevel]),
    );
    for (const [method, url] of [['GET', '/api/deltas'], ['GET', '/api/runs/none']] as const) {
      const res = await fetch(`${serve.url}${url}`, { method });
      expect(res.status, `${method} ${url}`).not.toBe(405);
      expect(((await res.json()) as { detail?: string }).detail ?? '', `${method} ${url}`).not.toMatch(/^no route/);
    }
    for (const [method, url] of [['PUT', '/api/models'], ['DELETE', '/api/deltas'], ['POST', '/api/runs/x'], ['GET', '/deltas'], ['GET', '/api/nope'], ['GET', '/api/runs/a/b']] as const) {
      const res = await fetch(`${serve.url}${url}`, { method });
      expect(res.status, `${method} ${url}`).toBe(404);
      expect(((await res.json()) as { detail?: string }).detail, `${method} ${url}`).toMatch(/^no route/);
    }
  });

  it('re-posts a 63-character delta onto a 60-character base: child ids fit, and the output is exact', async () => {
    const name = `chat-${'x'.repeat(57)}9`;
    const baseName = `base-${'y'.repeat(54)}z`;
    expect([name.length, baseName.length]).toEqual([63, 60]);
    const res = await post('deltas', JSON.stringify({ name, base: 'models/tiny/base', post: 'models/tiny/post' }));
    expect(res.status).toBe(202);
    const { id } = (await res.json()) as { id: string };
    expect((await serve.runtime.waitForCompletion(id, 60_000)).runtimeStatus).toBe('Completed');

    await uploadFolder(service.getContainerClient('base-models'), baseName, path.join(BF16, 'newbase'));
    const deadline = Date.now() + 60_000;
    let repost;
    while (!(repost = (await serve.runtime.listInstances()).find((i) => i.name === 'repostBase' && i.runtimeStatus === 'Completed'))) {
      if (Date.now() > deadline) throw new Error('repostBase did not complete');
      await new Promise((r) => setTimeout(r, 100));
    }
    const children = (await serve.runtime.listInstances()).filter((i) => i.parentInstanceId === repost.instanceId);
    expect(children).toHaveLength(1);
    expect(children[0]!.runtimeStatus).toBe('Completed');
    for (const i of [repost, children[0]!]) expect(i.instanceId.length).toBeLessThanOrEqual(100);
    expect(children[0]!.instanceId.startsWith(`${repost.instanceId}:chat-`)).toBe(true);
    expect(repost.output).toMatchObject({ posted: [{ delta: name, output: `posted-models/${baseName}/${name}` }], failed: [] });
    const status = await fetch(`${serve.url}/api/runs/${encodeURIComponent(children[0]!.instanceId)}`);
    expect(await status.json()).toMatchObject({ status: 'Completed' });

    await withTempDir(async (tmp) => {
      await downloadFolder(service.getContainerClient('posted-models'), `${baseName}/${name}`, tmp);
      const got = await loadTensors(tmp);
      const want = await loadTensors(path.join(BF16, 'expected/apply-post-1.0'));
      expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
      for (const [n, t] of want) expect(got.get(n)!.bytes.equals(t.bytes), n).toBe(true);
    });
  });
});
