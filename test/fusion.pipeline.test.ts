// Sparse fusion through the pipeline (paramdelta serve on Azurite): the same bytes as the CLI, and the API's checks.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import path from 'node:path';
import { readFile } from 'node:fs/promises';
import { BlobServiceClient } from '@azure/storage-blob';
import { fixturesDir } from './helpers/fixtures.js';
import { loadTensors, withTempDir } from './helpers/models.js';
import { downloadFolder, uploadFolder } from './helpers/blob.js';
import { runCli } from './helpers/cli.js';
import { startAzurite, type Azurite } from '../cli/host/azurite.js';
import { startServe, type ServeHandle } from '../cli/host/serve.js';
import { serveApi } from './helpers/serve-api.js';

const BF16 = path.join(fixturesDir, 'tiny-llama-bf16');
let azurite: Azurite;
let serve: ServeHandle;
const { api, waitFor } = serveApi(() => serve.url);
let service: BlobServiceClient;
const shardSetting = process.env.PARAMDELTA_SHARD_SIZE;



beforeAll(async () => {
  // Small output shards: the pipeline fans the model out over several shard activities.
  process.env.PARAMDELTA_SHARD_SIZE = '60KB';
  azurite = await startAzurite();
  service = BlobServiceClient.fromConnectionString(azurite.connectionString);
  serve = await startServe({ port: 0, storage: azurite.connectionString, pollMs: 300, timerScale: 0.001, log: () => {} });
  const models = service.getContainerClient('models');
  for (const m of ['base', 'post', 'post2', 'newbase']) await uploadFolder(models, `tiny/${m}`, path.join(BF16, m));
}, 60_000);

afterAll(async () => {
  await serve?.close();
  await azurite?.stop();
  if (shardSetting === undefined) delete process.env.PARAMDELTA_SHARD_SIZE;
  else process.env.PARAMDELTA_SHARD_SIZE = shardSetting;
});

describe('fusion through the pipeline', () => {
  it('POST /api/models with dare-ties and with ties writes what the CLI writes', async () => {
    const a = await api('POST', 'deltas', { name: 'chat', base: 'models/tiny/base', post: 'models/tiny/post', autoApply: false });
    const b = await api('POST', 'deltas', { name: 'math', base: 'models/tiny/base', post: 'models/tiny/post2', autoApply: false, deltaFormat: 'safetensors' });
    expect((await waitFor(a.json.id, 90_000)).status).toBe('Completed');
    expect((await waitFor(b.json.id, 90_000)).status).toBe('Completed');
    const runs = [
      { output: 'posted-models/dare', options: { method: 'dare-ties', density: 0.4, seed: '12345678901234567890', lambda: 1.1 }, cli: ['--method', 'dare-ties', '--density', '0.4', '--seed', '12345678901234567890', '--lambda', '1.1'] },
      { output: 'posted-models/ties', options: { method: 'ties', density: 0.3, normalize: false }, cli: ['--method', 'ties', '--density', '0.3', '--no-normalize'] },
    ];
    await withTempDir(async (tmp) => {
      // The CLI on deltas computed locally from the same fixtures.
      for (const [name, post] of [['chat', 'post'], ['math', 'post2']]) {
        const r = await runCli(['compute', '--base', path.join(BF16, 'base'), '--post', path.join(BF16, post), '--out', path.join(tmp, name)]);
        expect(r.code, r.stderr).toBe(0);
      }
      for (const run of runs) {
        const m = await api('POST', 'models', { base: 'models/tiny/newbase', deltas: [{ name: 'chat', scale: 0.7 }, { name: 'math', scale: 0.5 }], output: run.output, ...run.options });
        expect(m.status, JSON.stringify(m.json)).toBe(202);
        const done = await waitFor(m.json.id, 90_000);
        expect(done.status, JSON.stringify(done)).toBe('Completed');
        const local = path.join(tmp, `cli-${path.basename(run.output)}`);
        const r = await runCli(['apply', '--base', path.join(BF16, 'newbase'), '--delta', path.join(tmp, 'chat'), '--scale', '0.7', '--delta', path.join(tmp, 'math'), '--scale', '0.5', ...run.cli, '--out', local]);
        expect(r.code, r.stderr).toBe(0);
        const remote = path.join(tmp, `api-${path.basename(run.output)}`);
        const [container, ...rest] = run.output.split('/');
        const files = await downloadFolder(service.getContainerClient(container), rest.join('/'), remote);
        expect(files.filter((f) => f.endsWith('.safetensors')).length).toBeGreaterThan(2);
        const got = await loadTensors(remote);
        const want = await loadTensors(local);
        expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
        for (const [n, w] of want) expect(got.get(n)!.bytes.equals(w.bytes), n).toBe(true);
        const manifest = JSON.parse(await readFile(path.join(remote, 'paramdelta.json'), 'utf8'));
        const cliManifest = JSON.parse(await readFile(path.join(local, 'paramdelta.json'), 'utf8'));
        expect(manifest.fusion).toEqual(cliManifest.fusion);
        expect(manifest.fusion).toMatchObject(run.options);
      }
    });
  }, 180_000);

  it('answers a bad density, a missing or mistyped seed and an unknown method with 400 naming the field', async () => {
    const req = { base: 'models/tiny/newbase', deltas: [{ name: 'chat' }], output: 'posted-models/bad' };
    const cases: [Record<string, unknown>, string][] = [
      [{ method: 'ties', density: 1.5 }, 'density'],
      [{ method: 'ties', density: 0 }, 'density'],
      [{ method: 'ties', density: 'half' }, 'density'],
      [{ method: 'breadcrumbs' }, 'density'],
      [{ method: 'dare-ties', density: 0.5 }, 'seed'],
      [{ method: 'dare-linear', density: 0.5, seed: 'abc' }, 'seed'],
      [{ method: 'dare-linear', density: 0.5, seed: -1 }, 'seed'],
      [{ method: 'dare-linear', density: 0.5, seed: 1.5 }, 'seed'],
      [{ method: 'dare-linear', density: 0.5, seed: '18446744073709551616' }, 'seed'],
      [{ method: 'task-magic', density: 0.5 }, 'method'],
      [{ method: 'ties', density: 0.5, gamma: 0.1 }, 'gamma'],
      [{ method: 'ties', density: 0.5, normalize: 'yes' }, 'normalize'],
      [{ method: 'breadcrumbs', density: 0.5, gamma: 2 }, 'gamma'],
      [{ method: 'ties', density: 0.5, lambda: 'big' }, 'lambda'],
    ];
    for (const [extra, field] of cases) {
      const r = await api('POST', 'models', { ...req, ...extra });
      expect(r.status, JSON.stringify(extra)).toBe(400);
      expect(r.json.field, JSON.stringify(extra)).toBe(field);
      expect(r.json.detail, JSON.stringify(extra)).toContain(field);
    }
  });
});
