// The quality gate through `paramdelta serve` on Azurite: a re-post evaluates every posted model
// (evaluateModel), records the figures in the run's output and in paramdelta-eval.json, withholds
// the index of a model that fails its gate (gate.json says why, the run says `gate failed`), and
// POST /api/runs/{id}/publish then publishes it, recording who asked.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import path from 'node:path';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { BlobServiceClient } from '@azure/storage-blob';
import { fixturesDir } from './helpers/fixtures.js';
import { localEnv, withTempDir } from './helpers/models.js';
import { downloadFolder, listNames, uploadFolder } from './helpers/blob.js';
import { startAzurite, type Azurite } from '../cli/host/azurite.js';
import { startServe, type ServeHandle } from '../cli/host/serve.js';
import type { InstanceStatus } from '../cli/host/runtime.js';
import { evaluateWithProbes, EVAL_REPORT, GATE_FILE, PENDING_INDEX, type ProbeInput } from '../lib/eval/index.js';
import { runApply } from '../lib/ops/run.js';
import { DEFAULT_SHARD_SIZE } from '../lib/ops/plan.js';
import { OUTPUT_KINDS } from '../lib/ops/outputs.js';
import { localOutput } from '../lib/storage/output.js';
import { readSettings } from '../functions/settings.js';
import { serveApi } from './helpers/serve-api.js';

const S = path.join(fixturesDir, 'stories260K-tuned-bf16');
/** The default gate for this serve: impossibly strict, so a delta without a gate of its own is withheld. */
const DEFAULT_GATE = '{"maxLossRatio": 0.000001}';
let azurite: Azurite;
let serve: ServeHandle;
const { api } = serveApi(() => serve.url);
let service: BlobServiceClient;
let savedGate: string | undefined;


const finished = (id: string): Promise<InstanceStatus> => serve.runtime.waitForCompletion(id, 60_000);

async function download(ref: string, dir: string): Promise<string[]> {
  const [container, ...rest] = ref.split('/');
  return downloadFolder(service.getContainerClient(container), rest.join('/'), dir);
}

async function blobJson(ref: string): Promise<any> {
  const [container, ...rest] = ref.split('/');
  return JSON.parse((await service.getContainerClient(container).getBlobClient(rest.join('/')).downloadToBuffer()).toString('utf8'));
}

/** Equal to within float rounding: the pipeline and the test run the same engine on the same bytes. */
function expectClose(got: number | undefined, want: number | undefined, what: string) {
  expect(got, what).toEqual(expect.any(Number));
  expect(Math.abs(got! - want!) / Math.max(1e-12, Math.abs(want!)), `${what}: ${got} vs ${want}`).toBeLessThan(1e-9);
}

/** The probe set registered with "chat": three stories sequences of the fixture, cut to 48 tokens. */
async function probeFile(): Promise<string> {
  const seqs = JSON.parse(await readFile(path.join(fixturesDir, 'eval/tokens-512.json'), 'utf8')) as number[][];
  return JSON.stringify(seqs.map((s) => s.slice(0, 48)));
}

beforeAll(async () => {
  savedGate = process.env.PARAMDELTA_GATE;
  process.env.PARAMDELTA_GATE = DEFAULT_GATE;
  azurite = await startAzurite();
  service = BlobServiceClient.fromConnectionString(azurite.connectionString);
  serve = await startServe({ port: 0, storage: azurite.connectionString, pollMs: 300, timerScale: 0.001, log: () => {} });
  const models = service.getContainerClient('models');
  for (const m of ['base', 'post']) await uploadFolder(models, `stories/${m}`, path.join(S, m));
  // A copy of post that is deleted before the re-post: that delta is judged against the new base.
  await uploadFolder(models, 'stories/post-gone', path.join(S, 'post'));
  await models.getBlockBlobClient('stories/probes.json').upload(await probeFile(), Buffer.byteLength(await probeFile()));
}, 60_000);

afterAll(async () => {
  await serve?.close();
  await azurite?.stop();
  if (savedGate === undefined) delete process.env.PARAMDELTA_GATE;
  else process.env.PARAMDELTA_GATE = savedGate;
});

describe('settings of the gate', () => {
  it('reads the default gate as JSON and the evaluation provider, refusing bad values by name', () => {
    expect(readSettings({}).gate).toEqual({});
    expect(readSettings({}).evalProvider).toBe('cpu');
    expect(readSettings({ PARAMDELTA_GATE: '{"maxLossRatio": 1.2, "minAgreement": 0.8}' }).gate).toEqual({ maxLossRatio: 1.2, minAgreement: 0.8 });
    expect(readSettings({ PARAMDELTA_EVAL_PROVIDER: 'CUDA' }).evalProvider).toBe('cuda');
    expect(() => readSettings({ PARAMDELTA_GATE: 'strict' })).toThrow(/PARAMDELTA_GATE/);
    expect(() => readSettings({ PARAMDELTA_GATE: '{"minAgreement": 2}' })).toThrow(/PARAMDELTA_GATE.*minAgreement/);
    expect(() => readSettings({ PARAMDELTA_EVAL_PROVIDER: 'tpu' })).toThrow(/PARAMDELTA_EVAL_PROVIDER/);
  });
});

describe('the quality gate through paramdelta serve', () => {
  it('refuses bad probes and gates with 400 naming the field', async () => {
    const ok = { name: 'x', base: 'models/stories/base', post: 'models/stories/post' };
    const cases: [unknown, string][] = [
      [{ ...ok, probes: 'other/probes.json' }, 'probes'],
      [{ ...ok, probes: 'models/stories/nope.json' }, 'probes'],
      [{ ...ok, probes: 'models/stories' }, 'probes'],
      [{ ...ok, probes: 'https://evil.example/p.json' }, 'probes'],
      [{ ...ok, gate: { maxLossRatio: -1 } }, 'gate.maxLossRatio'],
      [{ ...ok, gate: { minAgreement: 1.5 } }, 'gate.minAgreement'],
      [{ ...ok, gate: { maxLoss: 2 } }, 'gate'],
      [{ ...ok, gate: 'strict' }, 'gate'],
    ];
    for (const [body, field] of cases) {
      const r = await api('POST', 'deltas', body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.json.field, JSON.stringify(body)).toBe(field);
    }
  });

  it('evaluates each re-posted model, withholds the one that fails its gate, and publish writes its index', async () => {
    // chat: own probes and a gate it passes; strict: the default gate (impossible); orphan: no gate, its post deleted.
    const registered = [
      await api('POST', 'deltas', { name: 'chat', base: 'models/stories/base', post: 'models/stories/post', probes: 'models/stories/probes.json', gate: { maxLossRatio: 100, minAgreement: 0 } }),
      await api('POST', 'deltas', { name: 'strict', base: 'models/stories/base', post: 'models/stories/post' }),
      await api('POST', 'deltas', { name: 'orphan', base: 'models/stories/base', post: 'models/stories/post-gone', gate: {} }),
    ];
    for (const r of registered) {
      expect(r.status).toBe(202);
      expect((await finished(r.json.id)).runtimeStatus).toBe('Completed');
    }
    // The registration keeps probes and gate; delta.json keeps where base and post were.
    expect(await blobJson('deltas/chat/registration.json')).toEqual({ autoApply: true, probes: 'models/stories/probes.json', gate: { maxLossRatio: 100, minAgreement: 0 } });
    expect(await blobJson('deltas/strict/registration.json')).toEqual({ autoApply: true });
    expect((await blobJson('deltas/orphan/delta.json')).sources).toEqual({ base: 'models/stories/base', post: 'models/stories/post-gone' });
    const models = service.getContainerClient('models');
    for (const f of await listNames(models, 'stories/post-gone')) await models.deleteBlob(`stories/post-gone/${f}`);

    await uploadFolder(service.getContainerClient('base-models'), 'next', path.join(S, 'newbase'));
    const deadline = Date.now() + 90_000;
    let run: InstanceStatus | undefined;
    while (!(run = (await serve.runtime.listInstances()).find((i) => i.name === 'repostBase' && i.runtimeStatus === 'Completed'))) {
      if (Date.now() > deadline) throw new Error('repostBase did not complete');
      await new Promise((r) => setTimeout(r, 200));
    }
    const out = run.output as any;
    expect(out.posted.map((p: any) => p.delta).sort()).toEqual(['chat', 'orphan', 'strict']);
    expect(out.failed).toEqual([]);
    expect(out.gate).toBe('gate failed');
    expect(out.withheld).toEqual([{ delta: 'strict', output: 'posted-models/next/strict', reasons: [expect.stringMatching(/^loss ratio \d\.\d{4} is above maxLossRatio 0\.000001$/)] }]);
    const status = await api('GET', `runs/${encodeURIComponent(run.instanceId)}`);
    expect(status.json).toMatchObject({ status: 'Completed', output: { gate: 'gate failed' } });
    const byDelta = Object.fromEntries(out.evaluations.map((e: any) => [e.delta, e]));

    // chat and orphan passed: each is complete, with its figures beside it and no gate.json.
    for (const d of ['chat', 'orphan']) {
      const names = await listNames(service.getContainerClient('posted-models'), `next/${d}`);
      expect(names, d).toContain('model.safetensors.index.json');
      expect(names, d).toContain(EVAL_REPORT);
      expect(names, d).not.toContain(PENDING_INDEX);
      expect(names, d).not.toContain(GATE_FILE);
      expect(byDelta[d].gate.passed, d).toBe(true);
      expect(byDelta[d].published, d).toBe(true);
    }
    expect(byDelta.chat.reference).toMatchObject({ role: 'old post', ref: 'models/stories/post' });
    expect(byDelta.chat.probes).toMatchObject({ source: 'tokens', sequences: 3, tokens: 47 + 39 + 8 });
    expect(byDelta.orphan.reference).toMatchObject({ role: 'new base', ref: 'base-models/next' });
    expect(byDelta.orphan.probes).toMatchObject({ source: 'builtin-tokens' });
    expect(byDelta.strict.gate).toMatchObject({ bounds: { maxLossRatio: 0.000001 }, passed: false });

    // strict: shards and files, but no index; the index waits under its pending name; gate.json says why.
    const strictNames = await listNames(service.getContainerClient('posted-models'), 'next/strict');
    expect(strictNames).not.toContain('model.safetensors.index.json');
    expect(strictNames).toEqual(expect.arrayContaining([PENDING_INDEX, GATE_FILE, EVAL_REPORT, 'model-00001-of-00001.safetensors', 'config.json']));
    const withheld = await blobJson('posted-models/next/strict/gate.json');
    expect(withheld).toMatchObject({ status: 'withheld', run: run.instanceId, gate: { maxLossRatio: 0.000001 }, reasons: out.withheld[0].reasons, reference: { role: 'old post' } });
    expect(withheld.published).toBeUndefined();

    // Publishing needs to know who asks; names only deltas the run posted; only re-posts have gates.
    expect((await api('POST', `runs/${encodeURIComponent(run.instanceId)}/publish`, {})).json).toMatchObject({ status: 400, field: 'by' });
    expect((await api('POST', `runs/${encodeURIComponent(run.instanceId)}/publish`, { by: 'ops', deltas: ['nope'] })).json).toMatchObject({ status: 400, field: 'deltas' });
    expect((await api('POST', `runs/${encodeURIComponent(registered[0].json.id)}/publish`, { by: 'ops' })).status).toBe(409);
    expect((await api('POST', 'runs/no-such-run/publish', { by: 'ops' })).status).toBe(404);
    const pub = await api('POST', `runs/${encodeURIComponent(run.instanceId)}/publish`, undefined, { 'x-ms-client-principal-name': 'alice@example.com' });
    expect(pub.status).toBe(200);
    expect(pub.json.published).toEqual([{ delta: 'strict', output: 'posted-models/next/strict' }]);
    expect(pub.json.alreadyPublished.map((m: any) => m.delta).sort()).toEqual(['chat', 'orphan']);
    expect(pub.json).toMatchObject({ by: 'alice@example.com', missing: [], superseded: [] });
    const again = await api('POST', `runs/${encodeURIComponent(run.instanceId)}/publish`, { by: 'bob' });
    expect(again.json.published).toEqual([]);
    const record = await blobJson('posted-models/next/strict/gate.json');
    expect(record).toMatchObject({ status: 'published', run: run.instanceId, published: { by: 'alice@example.com' }, reasons: withheld.reasons, gate: withheld.gate });
    // GET /api/deltas shows each delta's probes and gate.
    const listed = (await api('GET', 'deltas')).json.deltas.map((d: any) => [d.name, d.probes, d.gate]);
    expect(listed).toEqual([
      ['chat', 'models/stories/probes.json', { maxLossRatio: 100, minAgreement: 0 }],
      ['orphan', null, {}],
      ['strict', null, null],
    ]);

    await withTempDir(async (tmp) => {
      const dir = (n: string) => path.join(tmp, n);
      for (const d of ['chat', 'strict', 'orphan']) await download(`posted-models/next/${d}`, dir(d));
      expect(await readdir(dir('strict'))).not.toContain(PENDING_INDEX);
      await writeFile(dir('probes.json'), await probeFile());

      // The figures equal those of `evaluate` run here on the same models and probes.
      const direct = async (model: string, against: string, probes: ProbeInput) => (await evaluateWithProbes(localEnv, { model, against, probes })).report;
      const cases: [string, string, ProbeInput][] = [
        ['chat', path.join(S, 'post'), { file: dir('probes.json') }],
        ['strict', path.join(S, 'post'), { builtin: true }],
        ['orphan', path.join(S, 'newbase'), { builtin: true }],
      ];
      for (const [d, against, probes] of cases) {
        const want = await direct(dir(d), against, probes);
        const got = byDelta[d];
        const written = JSON.parse(await readFile(path.join(dir(d), EVAL_REPORT), 'utf8'));
        expectClose(got.model.meanLoss, want.model.meanLoss, `${d} loss`);
        expectClose(got.model.perplexity, want.model.perplexity, `${d} perplexity`);
        expectClose(got.reference.meanLoss, want.reference!.meanLoss, `${d} reference loss`);
        expectClose(got.agreement, want.agreement, `${d} agreement`);
        expectClose(got.kl, want.kl, `${d} kl`);
        expectClose(got.lossRatio, want.model.meanLoss / want.reference!.meanLoss, `${d} loss ratio`);
        expect(got.probes.sha256, d).toBe(want.probes.sha256);
        // paramdelta-eval.json holds the same figures, sequence by sequence, and the probe set's hash.
        expect(written.probes).toEqual(want.probes);
        expect(written.reference.role).toBe(got.reference.role);
        written.model.sequences.forEach((s: any, i: number) => expectClose(s.meanLoss, want.model.sequences[i].meanLoss, `${d} sequence ${i}`));
      }

      // The published model equals a local apply of the same delta onto the same new base, byte for byte.
      await download('deltas/strict', dir('delta'));
      await runApply(localEnv, { base: path.join(S, 'newbase'), deltas: [{ ref: dir('delta') }], shardSize: DEFAULT_SHARD_SIZE }, () =>
        localOutput(dir('local'), OUTPUT_KINDS.model),
      );
      const local = (await readdir(dir('local'))).filter((f) => f !== 'paramdelta.json').sort();
      expect(local).toContain('model.safetensors.index.json');
      for (const f of local) expect((await readFile(path.join(dir('strict'), f))).equals(await readFile(path.join(dir('local'), f))), f).toBe(true);
    });
  }, 180_000);
});
