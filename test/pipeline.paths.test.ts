import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import path from 'node:path';
import { readFile } from 'node:fs/promises';
import { BlobServiceClient } from '@azure/storage-blob';
import { InvocationContext, type EventGridEvent } from '@azure/functions';
import { fixturesDir } from './helpers/fixtures.js';
import { loadDelta, loadTensors, withTempDir, writeCheckpoint, type LoadedTensor } from './helpers/models.js';
import { downloadFolder, listNames, uploadFolder } from './helpers/blob.js';
import { decodeFloats, encodeFloats, roundTo } from './helpers/floats.js';
import { startAzurite, type Azurite } from '../cli/host/azurite.js';
import { startServe, type ServeHandle } from '../cli/host/serve.js';
import type { ActivityFn, InstanceStatus } from '../cli/host/runtime.js';
import { baseModelUploaded } from '../functions/triggers/baseModelUploaded.js';
import type { ShardDone, ShardTask } from '../functions/contracts.js';
import { serveApi } from './helpers/serve-api.js';

const BF16 = path.join(fixturesDir, 'tiny-llama-bf16');
const F32 = path.join(fixturesDir, 'tiny-llama-f32');
let azurite: Azurite;
let serve: ServeHandle;
const { api } = serveApi(() => serve.url);
let service: BlobServiceClient;

// What the tests switch on in the activities, and what the activities saw.
const calls: { name: string; input: any }[] = [];
const callsOf = (name: string, match: (input: any) => boolean = () => true) => calls.filter((c) => c.name === name && match(c.input));
let deliverTwice = false;
const redeliveries: { task: ShardTask; first: ShardDone; second: ShardDone; etagBefore: string; etagAfter: string }[] = [];
let failOutput: string | null = null;

async function etagOf(output: string, file: string): Promise<string> {
  const [container, ...prefix] = output.split('/');
  return (await service.getContainerClient(container).getBlobClient(`${prefix.join('/')}/${file}`).getProperties()).etag!;
}

function activities(name: string, fn: ActivityFn): ActivityFn {
  return async (input, ctx) => {
    calls.push({ name, input });
    if (name !== 'computeDeltaShard' && name !== 'applyDeltaShard') return fn(input, ctx);
    const task = input as ShardTask;
    if (failOutput !== null && task.output === failOutput) throw new Error(`injected: storage refused ${task.output}`);
    const first = (await fn(input, ctx)) as ShardDone;
    if (!deliverTwice) return first;
    // At-least-once delivery: the same task again, after the first attempt finished.
    const etagBefore = await etagOf(task.output, first.file);
    const second = (await fn(JSON.parse(JSON.stringify(input)), ctx)) as ShardDone;
    redeliveries.push({ task, first, second, etagBefore, etagAfter: await etagOf(task.output, first.file) });
    return second;
  };
}


async function finished(id: string): Promise<InstanceStatus> {
  return serve.runtime.waitForCompletion(id, 60_000);
}

/** Waits for the re-posts of base-models/<name>, `count` of them, and returns the newest. */
async function reposted(name: string, count = 1): Promise<InstanceStatus> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const runs = (await serve.runtime.listInstances()).filter((i) => i.name === 'repostBase' && (i.input as { name: string }).name === name);
    const done = runs.filter((i) => i.runtimeStatus !== 'Pending' && i.runtimeStatus !== 'Running');
    if (done.length >= count) return done.sort((a, b) => a.createdTime.getTime() - b.createdTime.getTime())[done.length - 1];
    if (Date.now() > deadline) throw new Error(`no finished re-post of ${name} (${runs.map((r) => r.runtimeStatus).join(', ')})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function download(ref: string, dir: string): Promise<string[]> {
  const [container, ...rest] = ref.split('/');
  return downloadFolder(service.getContainerClient(container), rest.join('/'), dir);
}

async function expectTensors(got: Map<string, LoadedTensor>, want: Map<string, { dtype: string; bytes: Uint8Array }>): Promise<void> {
  expect([...got.keys()]).toEqual([...want.keys()]);
  for (const [n, w] of want) {
    expect(got.get(n)!.dtype, n).toBe(w.dtype);
    expect(got.get(n)!.bytes.equals(Buffer.from(w.bytes)), n).toBe(true);
  }
}

async function expectModel(ref: string, want: Map<string, { dtype: string; bytes: Uint8Array }>): Promise<void> {
  await withTempDir(async (tmp) => {
    const files = await download(ref, tmp);
    expect(files).toEqual(expect.arrayContaining(['config.json', 'model.safetensors.index.json']));
    await expectTensors(await loadTensors(tmp), want);
  });
}

/** newbase + 1·(post − base), computed here: float64 sums, rounded once to each tensor's dtype. */
async function appliedHere(newbase: string, base: string, post: string): Promise<Map<string, { dtype: string; bytes: Uint8Array }>> {
  const [nb, b, p] = await Promise.all([loadTensors(newbase), loadTensors(base), loadTensors(post)]);
  const out = new Map<string, { dtype: string; bytes: Uint8Array }>();
  for (const [name, t] of nb) {
    const dtype = t.dtype as 'BF16';
    const x = decodeFloats(dtype, t.bytes);
    const y = decodeFloats(dtype, b.get(name)!.bytes);
    const z = decodeFloats(dtype, p.get(name)!.bytes);
    out.set(name, { dtype, bytes: encodeFloats(dtype, x.map((v, i) => roundTo('F64', v + (z[i] - y[i])))) });
  }
  return out;
}

const event = (subject: string, eventType = 'Microsoft.Storage.BlobCreated') =>
  ({ id: 'e', topic: 'local', subject, eventType, eventTime: new Date().toISOString(), dataVersion: '1', data: {} }) as unknown as EventGridEvent;
const invocation = () => new InvocationContext({ functionName: 'baseModelUploaded', invocationId: 'test', logHandler: () => {} });

beforeAll(async () => {
  azurite = await startAzurite();
  service = BlobServiceClient.fromConnectionString(azurite.connectionString);
  serve = await startServe({ port: 0, storage: azurite.connectionString, pollMs: 200, timerScale: 0.001, log: () => {}, wrapActivity: activities });
  const models = service.getContainerClient('models');
  for (const m of ['base', 'post', 'post2', 'newbase']) await uploadFolder(models, `tiny/${m}`, path.join(BF16, m));
  for (const m of ['base', 'post']) await uploadFolder(models, `f32/${m}`, path.join(F32, m));
});

afterAll(async () => {
  await serve?.close();
  await azurite?.stop();
});

describe('pipeline paths (paramdelta serve on Azurite)', () => {
  it('a shard activity delivered twice: the second finds the shard committed under its plan and skips it', async () => {
    deliverTwice = true;
    try {
      const d = await api('POST', 'deltas', { name: 'chat', base: 'models/tiny/base', post: 'models/tiny/post' });
      expect((await finished(d.json.id)).runtimeStatus).toBe('Completed');
      const m = await api('POST', 'models', { base: 'models/tiny/newbase', deltas: [{ name: 'chat' }], output: 'posted-models/twice' });
      expect((await finished(m.json.id)).runtimeStatus).toBe('Completed');
    } finally {
      deliverTwice = false;
    }
    expect(redeliveries.map((r) => r.task.output)).toEqual(['deltas/chat', 'posted-models/twice']);
    for (const r of redeliveries) {
      expect(r.first.skipped, r.task.output).toBe(false);
      expect(r.second, r.task.output).toEqual({ ...r.first, skipped: true });
      expect(r.etagAfter, `${r.task.output}: the shard was not written again`).toBe(r.etagBefore);
    }
    await withTempDir(async (tmp) => {
      await download('deltas/chat', tmp);
      const want = await loadTensors(path.join(BF16, 'expected/delta-post'));
      await expectTensors(await loadDelta(tmp), new Map([...want].map(([n, t]) => [n, t])));
    });
    await expectModel('posted-models/twice', await loadTensors(path.join(BF16, 'expected/apply-post-1.0')));
  });

  it('409 for a delta that exists, starting nothing; "replace": true recomputes it', async () => {
    const before = callsOf('planDelta').length;
    const again = await api('POST', 'deltas', { name: 'chat', base: 'models/tiny/base', post: 'models/tiny/post2' });
    expect(again.status).toBe(409);
    expect(again.json).toMatchObject({ status: 409, field: 'name', detail: expect.stringContaining('"chat" already exists') });
    expect(callsOf('planDelta').length).toBe(before);
    const manifest = JSON.parse((await service.getContainerClient('deltas').getBlobClient('chat/delta.json').downloadToBuffer()).toString());

    const replaced = await api('POST', 'deltas', { name: 'chat', base: 'models/tiny/base', post: 'models/tiny/post', replace: true });
    expect(replaced.status).toBe(202);
    expect((await finished(replaced.json.id)).runtimeStatus).toBe('Completed');
    expect(callsOf('planDelta').length).toBe(before + 1);
    const now = JSON.parse((await service.getContainerClient('deltas').getBlobClient('chat/delta.json').downloadToBuffer()).toString());
    expect(now.createdAt).not.toBe(manifest.createdAt);
    expect({ ...now, createdAt: null }).toEqual({ ...manifest, createdAt: null });
  });

  it('repostBase: a delta that fails after its retries is reported, and the other deltas are still posted', async () => {
    for (const [name, base, post] of [['chat2', 'models/tiny/base', 'models/tiny/post2'], ['f32chat', 'models/f32/base', 'models/f32/post']]) {
      const r = await api('POST', 'deltas', { name, base, post });
      expect((await finished(r.json.id)).runtimeStatus).toBe('Completed');
    }
    failOutput = 'posted-models/next/chat2';
    await uploadFolder(service.getContainerClient('base-models'), 'next', path.join(BF16, 'newbase'));
    const run = await reposted('next');
    expect(run.runtimeStatus).toBe('Completed');
    const out = run.output as { posted: unknown[]; failed: { delta: string; error: string }[]; skipped: { name: string; reason: string }[] };
    // The F32 delta applies to a BF16 base as `apply` would (rounded once to BF16): the re-post offers every pair apply accepts.
    expect(out.posted).toEqual([{ delta: 'chat', output: 'posted-models/next/chat' }, { delta: 'f32chat', output: 'posted-models/next/f32chat' }]);
    expect(out.failed).toEqual([{ delta: 'chat2', error: expect.stringContaining('injected: storage refused posted-models/next/chat2') }]);
    expect(out.skipped).toEqual([]);
    // Retried: every attempt of the failing child tried its shard.
    expect(callsOf('applyDeltaShard', (i) => i.output === failOutput).length).toBeGreaterThan(1);
    await expectModel('posted-models/next/chat', await loadTensors(path.join(BF16, 'expected/apply-post-1.0')));
    expect(await listNames(service.getContainerClient('posted-models'), 'next/chat2')).not.toContain('model.safetensors.index.json');
  });

  it('a re-uploaded base (a new ETag) starts a new re-post; the repeated event for the old one does not', async () => {
    failOutput = null;
    const first = await reposted('next');
    const found = callsOf('findCompatibleDeltas', (i) => i.name === 'next').length;
    expect(found).toBe(1);
    // Event Grid repeating the old event starts nothing.
    await baseModelUploaded(event('/blobServices/default/containers/base-models/blobs/next/model.safetensors.index.json'), invocation());
    expect(await serve.runtime.getStatus(first.instanceId)).toMatchObject({ runtimeStatus: 'Completed', createdTime: first.createdTime });
    expect(callsOf('findCompatibleDeltas', (i) => i.name === 'next').length).toBe(found);

    // The same bytes uploaded again: a new ETag, a new run, which now posts chat2 too.
    const index = service.getContainerClient('base-models').getBlockBlobClient('next/model.safetensors.index.json');
    const etag = (await index.getProperties()).etag;
    await index.uploadFile(path.join(BF16, 'newbase/model.safetensors.index.json'));
    expect((await index.getProperties()).etag).not.toBe(etag);
    const second = await reposted('next', 2);
    expect(second.instanceId).not.toBe(first.instanceId);
    expect((second.input as { etag: string }).etag).not.toBe((first.input as { etag: string }).etag);
    expect(second.output).toMatchObject({ posted: [{ delta: 'chat' }, { delta: 'chat2' }, { delta: 'f32chat' }], failed: [] });
    expect(callsOf('findCompatibleDeltas', (i) => i.name === 'next').length).toBe(found + 1);
    await expectModel('posted-models/next/chat', await loadTensors(path.join(BF16, 'expected/apply-post-1.0')));
    await expectModel('posted-models/next/chat2', await appliedHere(path.join(BF16, 'newbase'), path.join(BF16, 'base'), path.join(BF16, 'post2')));
  });

  it('a single-file base (model.safetensors) is re-posted', () =>
    withTempDir(async (tmp) => {
      const newbase = await loadTensors(path.join(BF16, 'newbase'));
      await writeCheckpoint(tmp, [...newbase].map(([name, t]) => ({ name, ...t })), {
        'config.json': await readFile(path.join(BF16, 'newbase/config.json'), 'utf8'),
      });
      await uploadFolder(service.getContainerClient('base-models'), 'single', tmp, ['config.json']);
      const run = await reposted('single');
      expect(run.output).toMatchObject({ posted: [{ delta: 'chat', output: 'posted-models/single/chat' }, { delta: 'chat2' }, { delta: 'f32chat' }], failed: [] });
      await expectModel('posted-models/single/chat', await loadTensors(path.join(BF16, 'expected/apply-post-1.0')));
      await expectModel('posted-models/single/chat2', await appliedHere(path.join(BF16, 'newbase'), path.join(BF16, 'base'), path.join(BF16, 'post2')));
    }));

  it('ignores events outside base-models, other event types, and blobs at its top level', async () => {
    const runs = async () => (await serve.runtime.listInstances()).filter((i) => i.name === 'repostBase').map((i) => i.instanceId).sort();
    const before = await runs();
    const found = callsOf('findCompatibleDeltas').length;
    // A complete model in another container, announced as Event Grid would.
    await baseModelUploaded(event('/blobServices/default/containers/models/blobs/tiny/newbase/model.safetensors.index.json'), invocation());
    // Deletion events, and a blob that belongs to no model folder.
    await uploadFolder(service.getContainerClient('base-models'), 'unseen', path.join(BF16, 'newbase'));
    await baseModelUploaded(event('/blobServices/default/containers/base-models/blobs/unseen/model.safetensors.index.json', 'Microsoft.Storage.BlobDeleted'), invocation());
    await service.getContainerClient('base-models').getBlockBlobClient('loose.safetensors').uploadFile(path.join(BF16, 'post2/model.safetensors'));
    await baseModelUploaded(event('/blobServices/default/containers/base-models/blobs/loose.safetensors'), invocation());
    await baseModelUploaded(event('not a subject'), invocation());
    // The poller saw base-models/unseen arrive, so that one is re-posted: wait for it, then look.
    await reposted('unseen');
    const after = await runs();
    expect(after.filter((id) => !before.includes(id))).toHaveLength(1);
    expect(callsOf('findCompatibleDeltas').map((c) => c.input.base).slice(found)).toEqual(['base-models/unseen']);
  });
});
