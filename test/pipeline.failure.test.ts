import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import path from 'node:path';
import { readFile } from 'node:fs/promises';
import { BlobServiceClient } from '@azure/storage-blob';
import { fixturesDir } from './helpers/fixtures.js';
import { loadTensors, withTempDir } from './helpers/models.js';
import { downloadFolder, listNames, uploadFolder } from './helpers/blob.js';
import { startAzurite, type Azurite } from '../cli/host/azurite.js';
import { startServe, type ServeHandle } from '../cli/host/serve.js';
import { historyEventNames, type ActivityFn } from '../cli/host/runtime.js';
import { pipeline } from '../functions/pipeline.js';
import type { ShardTask } from '../functions/contracts.js';
import type { Store } from '../lib/storage/types.js';

const F32 = path.join(fixturesDir, 'tiny-llama-f32');
const OUT = 'posted-models/mid-failure';
let azurite: Azurite;
let serve: ServeHandle;
let service: BlobServiceClient;
const saved = { ...process.env };
let injected = 0;
const violations: string[] = [];

/** Makes the second write of shard 2's first attempt throw: an activity dying in the middle of a shard. */
function failMidShard(name: string, fn: ActivityFn): ActivityFn {
  if (name === 'finalizeModel') {
    return async (input, ctx) => {
      const names = await listNames(service.getContainerClient('posted-models'), 'mid-failure');
      if (names.includes('model.safetensors.index.json')) violations.push('index existed before finalizeModel ran');
      const total = Number(/-of-(\d+)\.safetensors$/.exec(names.find((n) => n.endsWith('.safetensors')) ?? '')?.[1] ?? NaN);
      if (names.filter((n) => n.endsWith('.safetensors')).length !== total) violations.push(`finalizeModel ran with only ${names.join(', ')}`);
      return fn(input, ctx);
    };
  }
  if (name !== 'applyDeltaShard') return fn;
  return async (input, ctx) => {
    const task = input as ShardTask;
    if (task.index !== 1 || injected > 0) return fn(input, ctx);
    injected++;
    const p = pipeline();
    const resolve = p.env.resolve;
    p.env.resolve = (ref: string): Store => {
      const store = resolve(ref);
      const create = store.createShard.bind(store);
      store.createShard = async (file, ...rest) => {
        const sink = await create(file, ...rest);
        if (!file.startsWith('model-00002-')) return sink;
        let writes = 0;
        const write = sink.write.bind(sink);
        sink.write = async (data) => {
          if (++writes === 2) throw new Error('injected: worker died mid-shard');
          return write(data);
        };
        return sink;
      };
      return store;
    };
    try {
      return await fn(input, ctx);
    } finally {
      p.env.resolve = resolve;
    }
  };
}

beforeAll(async () => {
  azurite = await startAzurite();
  service = BlobServiceClient.fromConnectionString(azurite.connectionString);
  process.env.PARAMDELTA_SHARD_SIZE = '100000';
  process.env.PARAMDELTA_BUFFER_BYTES = '65536';
  serve = await startServe({ port: 0, storage: azurite.connectionString, pollMs: 500, timerScale: 0.001, log: () => {}, wrapActivity: failMidShard });
  const models = service.getContainerClient('models');
  for (const m of ['base', 'post', 'newbase']) await uploadFolder(models, `f32/${m}`, path.join(F32, m));
});

afterAll(async () => {
  await serve?.close();
  await azurite?.stop();
  process.env = saved;
});

async function run(route: string, body: unknown): Promise<any> {
  const res = await fetch(`${serve.url}/api/${route}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  expect(res.status).toBe(202);
  const { id } = (await res.json()) as { id: string };
  return serve.runtime.waitForCompletion(id, 60_000);
}

describe('a shard activity that dies mid-shard', () => {
  it('is retried, the run completes with the right bytes, and the index never appears before every shard', async () => {
    expect((await run('deltas', { name: 'chat', base: 'models/f32/base', post: 'models/f32/post' })).runtimeStatus).toBe('Completed');

    // Watch the output while the apply runs: whenever the index is there, every shard must be too.
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        const names = await listNames(service.getContainerClient('posted-models'), 'mid-failure');
        if (names.includes('model.safetensors.index.json')) {
          const index = JSON.parse((await service.getContainerClient('posted-models').getBlobClient(`mid-failure/model.safetensors.index.json`).downloadToBuffer()).toString());
          const missing = [...new Set(Object.values(index.weight_map) as string[])].filter((f) => !names.includes(f));
          if (missing.length) violations.push(`index visible while ${missing.join(', ')} missing`);
        }
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
    const status = await run('models', { base: 'models/f32/newbase', deltas: [{ name: 'chat' }], output: OUT });
    watching = false;
    await watcher;

    expect(status.runtimeStatus).toBe('Completed');
    expect(injected).toBe(1);
    expect(violations).toEqual([]);
    const events = historyEventNames(serve.runtime.getHistory(status.instanceId));
    const failed = events.indexOf('TaskFailed');
    expect(failed).toBeGreaterThan(0);
    expect(events.slice(failed)).toEqual(expect.arrayContaining(['TimerCreated', 'TimerFired', 'TaskScheduled']));

    await withTempDir(async (tmp) => {
      const files = await downloadFolder(service.getContainerClient('posted-models'), 'mid-failure', tmp);
      const index = JSON.parse(await readFile(path.join(tmp, 'model.safetensors.index.json'), 'utf8'));
      const shards = [...new Set(Object.values(index.weight_map) as string[])].sort();
      expect(shards.length).toBeGreaterThan(2);
      expect(files.filter((f) => f.endsWith('.safetensors'))).toEqual(shards);
      const got = await loadTensors(tmp);
      const want = await loadTensors(path.join(F32, 'expected/apply-post-1.0'));
      expect([...got.keys()]).toEqual([...want.keys()]);
      for (const [n, t] of want) expect(got.get(n)!.bytes.equals(t.bytes), n).toBe(true);
    });
  });
});
