import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import path from 'node:path';
import { readFile } from 'node:fs/promises';
import { BlobServiceClient } from '@azure/storage-blob';
import { fixturesDir } from './helpers/fixtures.js';
import { loadDelta, loadTensors, withTempDir } from './helpers/models.js';
import { downloadFolder, uploadFolder } from './helpers/blob.js';
import { startAzurite, type Azurite } from '../cli/host/azurite.js';
import { startServe, type ServeHandle } from '../cli/host/serve.js';
import { historyEventNames, type ActivityFn } from '../cli/host/runtime.js';
import { InvocationContext, type EventGridEvent } from '@azure/functions';
import { baseModelUploaded } from '../functions/triggers/baseModelUploaded.js';
import { DELTA_LAYOUT, DELTA_MANIFEST } from '../lib/ops/manifest.js';
import { ANALYSIS_FILE, analysisSchema, type DeltaAnalysis } from '../lib/analyze/report.js';
import { KIND_TAG } from '../lib/storage/types.js';
import { decodeFloats } from './helpers/floats.js';
import { serveApi } from './helpers/serve-api.js';

const BF16 = path.join(fixturesDir, 'tiny-llama-bf16');
let azurite: Azurite;
let serve: ServeHandle;
const { api, waitFor } = serveApi(() => serve.url);
let service: BlobServiceClient;
/** Every activity call, in order: a second run of the same id would show as a second plan. */
const calls: { name: string; input: any }[] = [];
const callsOf = (name: string, match: (input: any) => boolean) => calls.filter((c) => c.name === name && match(c.input));
const recordCalls = (name: string, fn: ActivityFn): ActivityFn => (input, ctx) => {
  calls.push({ name, input });
  return fn(input, ctx);
};



async function expectDelta(ref: string, expected: string, layout: 'compact' | 'safetensors') {
  await withTempDir(async (tmp) => {
    const [container, ...rest] = ref.split('/');
    await downloadFolder(service.getContainerClient(container), rest.join('/'), tmp);
    expect(JSON.parse(await readFile(path.join(tmp, DELTA_MANIFEST), 'utf8')).layout).toBe(layout);
    const got = await loadDelta(tmp);
    const want = await loadTensors(expected);
    expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
    for (const [n, w] of want) {
      expect(got.get(n)!.dtype, n).toBe(w.dtype);
      expect(got.get(n)!.bytes.equals(w.bytes), n).toBe(true);
    }
  });
}

/** Values of a fixture checkpoint's tensors, widened to float64 by the test's own decoder. */
async function values(dir: string): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>();
  for (const [name, t] of await loadTensors(dir)) out.set(name, decodeFloats(t.dtype, t.bytes));
  return out;
}

/**
 * Each delta has its analysis.json, tagged as part of the delta, with ‖Δ‖ and ‖W‖ computed here from the
 * fixtures; the later of the two to finish lists the other, with their cosine and sign counts.
 */
async function expectAnalyses() {
  const deltas = service.getContainerClient('deltas');
  const read = async (name: string): Promise<DeltaAnalysis> => {
    const blob = deltas.getBlobClient(`${name}/${ANALYSIS_FILE}`);
    expect((await blob.getProperties()).metadata?.[KIND_TAG]).toBe('delta');
    return analysisSchema.parse(JSON.parse((await blob.downloadToBuffer()).toString('utf8')));
  };
  const [chat, chat2] = [await read('chat'), await read('chat2')];
  const [base, d1, d2] = await Promise.all(['base', 'expected/delta-post', 'expected/delta-post2'].map((d) => values(path.join(BF16, d))));
  const sq = (m: Map<string, number[]>) => [...m.values()].flat().reduce((a, x) => a + x * x, 0);
  const near = (got: number, want: number) => expect(Math.abs(got - want)).toBeLessThanOrEqual(1e-12 * want);
  near(chat.totals.deltaNorm, Math.sqrt(sq(d1)));
  near(chat2.totals.deltaNorm, Math.sqrt(sq(d2)));
  near(chat.totals.weightNorm, Math.sqrt(sq(base)));
  let dot = 0;
  for (const [name, a] of d1) a.forEach((x, i) => (dot += x * d2.get(name)![i]));
  // Signs element by element: both nonzero alike or opposite, one zero, both zero (symmetric, so either way round).
  const signs = { elements: 0, agree: 0, disagree: 0, oneZero: 0, bothZero: 0 };
  for (const [name, a] of d1) {
    a.forEach((x, i) => {
      const y = d2.get(name)![i];
      signs.elements++;
      if (x === 0 && y === 0) signs.bothZero++;
      else if (x === 0 || y === 0) signs.oneZero++;
      else if (Math.sign(x) === Math.sign(y)) signs.agree++;
      else signs.disagree++;
    });
  }
  const pair = [...chat.similarity.filter((s) => s.against === 'chat2'), ...chat2.similarity.filter((s) => s.against === 'chat')];
  expect(pair.length).toBeGreaterThanOrEqual(1);
  for (const s of pair) {
    expect(s.sharedTensors).toBe(d1.size);
    expect(Math.abs(s.cosine - dot / Math.sqrt(sq(d1) * sq(d2)))).toBeLessThan(1e-12);
    expect(s.signs).toEqual(signs);
  }
}

async function expectModel(ref: string, expectedDir: string) {
  await withTempDir(async (tmp) => {
    const [container, ...rest] = ref.split('/');
    const files = await downloadFolder(service.getContainerClient(container), rest.join('/'), tmp);
    expect(files).toContain('model.safetensors.index.json');
    expect(files).toContain('config.json');
    expect(files).toContain('tokenizer_config.json');
    const shards = files.filter((f) => f.endsWith('.safetensors'));
    expect(shards).toEqual(['model-00001-of-00001.safetensors']);
    const got = await readFile(path.join(tmp, shards[0]));
    expect(got.equals(await readFile(path.join(expectedDir, 'model.safetensors')))).toBe(true);
  });
}

beforeAll(async () => {
  azurite = await startAzurite();
  service = BlobServiceClient.fromConnectionString(azurite.connectionString);
  serve = await startServe({ port: 0, storage: azurite.connectionString, pollMs: 300, timerScale: 0.001, log: () => {}, wrapActivity: recordCalls });
  const models = service.getContainerClient('models');
  for (const m of ['base', 'post', 'post2', 'newbase']) await uploadFolder(models, `tiny/${m}`, path.join(BF16, m));
});

afterAll(async () => {
  await serve?.close();
  await azurite?.stop();
});

describe('pipeline through the local host (paramdelta serve) on Azurite', () => {
  it('computes deltas, fuses two, and re-posts automatically when a new base is uploaded index first', async () => {
    const a = await api('POST', 'deltas', { name: 'chat', base: 'models/tiny/base', post: 'models/tiny/post' });
    expect(a.status).toBe(202);
    expect(a.json.statusUri).toBe(`${serve.url}/api/runs/${encodeURIComponent(a.json.id)}`);
    // A duplicate request while it runs joins the same run.
    const dup = await api('POST', 'deltas', { name: 'chat', base: 'models/tiny/base', post: 'models/tiny/post' });
    expect(dup.json.id).toBe(a.json.id);
    // One delta in each layout: the fused apply below reads both.
    const b = await api('POST', 'deltas', { name: 'chat2', base: 'models/tiny/base', post: 'models/tiny/post2', autoApply: false, deltaFormat: 'safetensors' });
    const ra = await waitFor(a.json.id);
    expect(ra).toMatchObject({ status: 'Completed', error: null, progress: { phase: 'completed', shardsDone: 1, shardsTotal: 1 } });
    expect((await waitFor(b.json.id)).status).toBe('Completed');
    // The duplicate started no second run: one plan and one shard for that id, and one delta written.
    expect(callsOf('planDelta', (i) => i.runId === a.json.id)).toHaveLength(1);
    expect(callsOf('computeDeltaShard', (i) => i.runId === a.json.id)).toHaveLength(1);
    expect(callsOf('finalizeDelta', (i) => i.output === 'deltas/chat')).toHaveLength(1);
    await expectDelta('deltas/chat', path.join(BF16, 'expected/delta-post'), 'compact');
    await expectDelta('deltas/chat2', path.join(BF16, 'expected/delta-post2'), 'safetensors');
    await expectAnalyses();

    const list = await api('GET', 'deltas');
    expect(list.json.deltas.map((d: any) => [d.name, d.autoApply])).toEqual([['chat', true], ['chat2', false]]);

    const m = await api('POST', 'models', { base: 'models/tiny/newbase', deltas: [{ name: 'chat', scale: 0.7 }, { name: 'chat2', scale: 0.3 }], output: 'posted-models/fused' });
    expect(m.status).toBe(202);
    expect((await waitFor(m.json.id)).status).toBe('Completed');
    await expectModel('posted-models/fused', path.join(BF16, 'expected/apply-post-0.7-post2-0.3'));

    // Upload the new base with its index first: the poller (Event Grid's stand-in) starts repostBase once it is whole.
    await uploadFolder(service.getContainerClient('base-models'), 'llama-next', path.join(BF16, 'newbase'), ['model.safetensors.index.json']);
    const deadline = Date.now() + 60_000;
    let repost;
    while (!(repost = (await serve.runtime.listInstances()).find((i) => i.name === 'repostBase' && i.runtimeStatus === 'Completed'))) {
      if (Date.now() > deadline) throw new Error('repostBase did not complete');
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(repost.output).toMatchObject({
      posted: [{ delta: 'chat', output: 'posted-models/llama-next/chat' }],
      skipped: [{ name: 'chat2', reason: 'autoApply is off for this delta' }],
    });
    // One re-post for this upload, however many blob events the poller raised on the way; and Event Grid
    // delivering the completing event again (it delivers at least once) starts nothing.
    const once = () => {
      expect(callsOf('findCompatibleDeltas', (i) => i.name === 'llama-next')).toHaveLength(1);
      expect(callsOf('planModel', (i) => i.output === 'posted-models/llama-next/chat')).toHaveLength(1);
    };
    once();
    const again = {
      id: 'redelivered', topic: 'local', eventType: 'Microsoft.Storage.BlobCreated', eventTime: new Date().toISOString(), dataVersion: '1', data: {},
      subject: '/blobServices/default/containers/base-models/blobs/llama-next/model.safetensors.index.json',
    } as unknown as EventGridEvent;
    await baseModelUploaded(again, new InvocationContext({ functionName: 'baseModelUploaded', invocationId: 'again', logHandler: () => {} }));
    expect((await serve.runtime.getStatus(repost.instanceId))).toMatchObject({ runtimeStatus: 'Completed', createdTime: repost.createdTime });
    once();
    await expectModel('posted-models/llama-next/chat', path.join(BF16, 'expected/apply-post-1.0'));
    const status = await api('GET', `runs/${encodeURIComponent(repost.instanceId)}`);
    expect(status.json.status).toBe('Completed');
  });

  it('answers bad requests with 400 naming the field, unknown runs with 404', async () => {
    const cases: [string, string, unknown, string][] = [
      ['POST', 'deltas', { base: 'models/tiny/base', post: 'models/tiny/post' }, 'name'],
      ['POST', 'deltas', { name: 'x', base: 'https://evil.example/models/a', post: 'models/tiny/post' }, 'base'],
      ['POST', 'deltas', { name: 'x', base: 'models/tiny/base', post: 'other/tiny/post' }, 'post'],
      ['POST', 'deltas', { name: 'x', base: 'models/../secrets', post: 'models/tiny/post' }, 'base'],
      ['POST', 'deltas', { name: 'x', base: 'models/tiny/base', post: 'models/tiny/post', deltaDtype: 'int8' }, 'deltaDtype'],
      ['POST', 'deltas', { name: 'x', base: 'models/tiny/base', post: 'models/tiny/post', deltaFormat: 'zip' }, 'deltaFormat'],
      ['POST', 'deltas', { name: 'x', base: 'models/tiny/base', post: 'models/tiny/post', extra: 1 }, 'body'],
      ['POST', 'deltas', '{not json', 'body'],
      ['POST', 'models', { base: 'models/tiny/newbase', deltas: [], output: 'posted-models/x' }, 'deltas'],
      ['POST', 'models', { base: 'models/tiny/newbase', deltas: [{ name: 'chat', scale: 'big' }], output: 'posted-models/x' }, 'deltas.0.scale'],
      ['POST', 'models', { base: 'models/tiny/newbase', deltas: [{ name: 'chat' }], output: 'deltas/x' }, 'output'],
    ];
    for (const [method, route, body, field] of cases) {
      const r = await api(method, route, body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.json.field, JSON.stringify(body)).toBe(field);
      expect(r.json.detail).toEqual(expect.any(String));
    }
    expect((await api('GET', 'runs/no-such-run')).status).toBe(404);
  });

  it('fails a run on a model that is not there at once, naming it, with no retries', async () => {
    const r = await api('POST', 'deltas', { name: 'ghost', base: 'models/tiny/base', post: 'models/nope' });
    expect(r.status).toBe(202);
    const done = await waitFor(r.json.id, 10_000);
    expect(done.status).toBe('Failed');
    expect(done.error).toMatch(/models\/nope/);
    expect(historyEventNames(serve.runtime.getHistory(r.json.id))).not.toContain('TimerCreated');
  });
});
