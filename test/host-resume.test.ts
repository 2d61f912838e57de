// The local host keeps each instance's history in a store and resumes unfinished instances from it:
// runtimes are "killed" (closed while work is in flight, so the in-flight results are lost, as in a
// crash) and a new runtime on the same store finishes the work.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import * as df from 'durable-functions';
import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import {
  LocalDurableRuntime, MemoryInstanceStore, historyEventNames, type InstanceRecord, type InstanceStore,
} from '../cli/host/runtime.js';
import { BlobInstanceStore } from '../cli/host/history.js';
import { startAzurite, type Azurite } from '../cli/host/azurite.js';

type Ctx = df.OrchestrationContext;
type Orchestration = Generator<df.Task, unknown, any>;

function deferred<T = void>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

const until = async (cond: () => boolean | Promise<boolean>, ms = 5000) => {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 2));
  }
};

const runtimes: LocalDurableRuntime[] = [];
function runtime(store: InstanceStore, timerScale = 0.001): LocalDurableRuntime {
  const rt = new LocalDurableRuntime({ activityConcurrency: 4, timerScale, store });
  runtimes.push(rt);
  return rt;
}
afterEach(async () => {
  for (const rt of runtimes.splice(0)) await rt.close();
});

/** Kills a runtime: nothing new is scheduled, and what was in flight finishes into the void. */
async function kill(rt: LocalDurableRuntime, release: () => void): Promise<void> {
  const closing = rt.close();
  release();
  await closing;
}

/** An orchestrator that fans out three activities, then calls a fourth with their sum. */
function fanOut(calls: string[], gate: { promise: Promise<void> } | null) {
  return {
    work: async (x: number) => {
      calls.push(`work ${x}`);
      if (x > 1 && gate) await gate.promise;
      return x * 10;
    },
    sum: (xs: number[]) => {
      calls.push('sum');
      return xs.reduce((a, b) => a + b, 0);
    },
    orchestrator: function* (context: Ctx): Orchestration {
      context.df.setCustomStatus({ phase: 'fan-out' });
      const parts: number[] = yield context.df.Task.all([1, 2, 3].map((x) => context.df.callActivity('work', x)));
      context.df.setCustomStatus({ phase: 'sum' });
      return yield context.df.callActivity('sum', parts);
    },
  };
}

describe('resuming from the instance store', () => {
  it('re-runs only the activities whose results were lost, and finishes with the same output', async () => {
    const store = new MemoryInstanceStore();
    const calls: string[] = [];
    const gate = deferred();
    const a = runtime(store);
    const f = fanOut(calls, gate);
    a.registerActivity('work', f.work);
    a.registerActivity('sum', f.sum);
    a.registerOrchestrator('fan', f.orchestrator);
    await a.startNew('fan', { instanceId: 'fan-1', input: null });
    // Activity 1 completes and its episode is saved; 2 and 3 are held, then lost with the process.
    await until(() => historyEventNames(a.getHistory('fan-1')).includes('TaskCompleted') && store.logs.get('fan-1')!.length >= 3);
    expect((await a.getStatus('fan-1'))?.customStatus).toEqual({ phase: 'fan-out' });
    await kill(a, gate.resolve);
    expect(calls.sort()).toEqual(['work 1', 'work 2', 'work 3']);

    calls.length = 0;
    const b = runtime(store);
    const g = fanOut(calls, null);
    b.registerActivity('work', g.work);
    b.registerActivity('sum', g.sum);
    b.registerOrchestrator('fan', g.orchestrator);
    // Before resuming, the stored status answers.
    expect(await b.resume()).toBe(1);
    expect((await b.getStatus('fan-1'))?.runtimeStatus).toBe('Running');
    const done = await b.waitForCompletion('fan-1', 5000);
    expect(done).toMatchObject({ runtimeStatus: 'Completed', output: 60, customStatus: { phase: 'sum' } });
    expect(calls.sort()).toEqual(['sum', 'work 2', 'work 3']);
    const names = historyEventNames(b.getHistory('fan-1'));
    expect(names.filter((n) => n === 'TaskScheduled')).toHaveLength(4);
    expect(names.filter((n) => n === 'TaskCompleted')).toHaveLength(4);

    // A third runtime finds it finished and resumes nothing.
    const c = runtime(store);
    c.registerOrchestrator('fan', g.orchestrator);
    expect(await c.resume()).toBe(0);
    expect(await c.getStatus('fan-1')).toMatchObject({ runtimeStatus: 'Completed', output: 60, customStatus: { phase: 'sum' } });
  });

  it('starts an instance that was saved but had not run its first episode', async () => {
    const store = new MemoryInstanceStore();
    const first: InstanceRecord = { kind: 'created', name: 'echo', input: JSON.stringify({ v: 7 }), createdTime: new Date().toISOString() };
    await store.create('never-ran', first);
    const rt = runtime(store);
    rt.registerActivity('id', (x: unknown) => x);
    rt.registerOrchestrator('echo', function* (context: Ctx) {
      return yield context.df.callActivity('id', context.df.getInput());
    });
    expect(await rt.resume()).toBe(1);
    expect(await rt.waitForCompletion('never-ran', 5000)).toMatchObject({ runtimeStatus: 'Completed', output: { v: 7 } });
  });

  it('arms a pending retry timer again, with its retry state', async () => {
    const store = new MemoryInstanceStore();
    let attempts = 0;
    const flaky = () => {
      if (++attempts === 1) throw new Error('transient');
      return 'ok';
    };
    const orchestrator = function* (context: Ctx): Orchestration {
      return yield context.df.callActivityWithRetry('flaky', new df.RetryOptions(60_000, 3), null);
    };
    const a = runtime(store, 1); // real time: the 60 s retry timer is still pending when the process dies
    a.registerActivity('flaky', flaky);
    a.registerOrchestrator('retry', orchestrator);
    await a.startNew('retry', { instanceId: 'retry-1' });
    await until(() => historyEventNames(a.getHistory('retry-1')).includes('TimerCreated') && store.logs.get('retry-1')!.length >= 3);
    await kill(a, () => {});

    const b = runtime(store, 0.0001); // fires ~6 ms after the restart
    b.registerActivity('flaky', flaky);
    b.registerOrchestrator('retry', orchestrator);
    expect(await b.resume()).toBe(1);
    expect(await b.waitForCompletion('retry-1', 5000)).toMatchObject({ runtimeStatus: 'Completed', output: 'ok' });
    expect(attempts).toBe(2);
    expect(historyEventNames(b.getHistory('retry-1')).filter((n) => !n.startsWith('Orchestrator'))).toEqual([
      'ExecutionStarted', 'TaskScheduled', 'TaskFailed', 'TimerCreated', 'TimerFired', 'TaskScheduled', 'TaskCompleted',
    ]);
  });

  it('resumes a sub-orchestration in flight, and delivers one that finished after its parent last saved', async () => {
    // The store stops taking the parent's writes once armed: the child's end is saved, the parent's reaction is not.
    class Freezing extends MemoryInstanceStore {
      frozen = new Set<string>();
      override async append(id: string, record: InstanceRecord): Promise<void> {
        if (this.frozen.has(id)) throw new Error('storage unreachable');
        return super.append(id, record);
      }
    }
    const store = new Freezing();
    const gate = deferred();
    let kidRuns = 0;
    const kidWork = async (n: number) => {
      if (++kidRuns === 1) await gate.promise;
      return n + 1;
    };
    const kid = function* (context: Ctx): Orchestration {
      return yield context.df.callActivity('kidWork', context.df.getInput<number>());
    };
    const parent = function* (context: Ctx): Orchestration {
      const r: number = yield context.df.callSubOrchestrator('kid', 41, 'parent-1:kid');
      return { r, kid: 'parent-1:kid' };
    };
    const register = (rt: LocalDurableRuntime) => {
      rt.registerActivity('kidWork', kidWork);
      rt.registerOrchestrator('kid', kid);
      rt.registerOrchestrator('parent', parent);
    };

    // 1. Killed while the child's activity runs: both resume, the activity runs again.
    const a = runtime(store);
    register(a);
    await a.startNew('parent', { instanceId: 'parent-1' });
    await until(() => kidRuns === 1 && (store.logs.get('parent-1:kid')?.length ?? 0) >= 2);
    expect((await a.getStatus('parent-1:kid'))?.parentInstanceId).toBe('parent-1');
    await kill(a, gate.resolve);

    // 2. The child finishes; the parent cannot save its reaction, and the process dies.
    const b = runtime(store);
    register(b);
    store.frozen.add('parent-1');
    expect(await b.resume()).toBe(2);
    expect((await b.waitForCompletion('parent-1:kid', 5000)).output).toBe(42);
    await until(async () => (await b.getStatus('parent-1'))?.runtimeStatus !== 'Running');
    expect(kidRuns).toBe(2);

    // 3. Storage is back: the parent resumes, finds its child finished, and completes.
    store.frozen.clear();
    const c = runtime(store);
    register(c);
    expect(await c.resume()).toBe(1);
    expect(await c.waitForCompletion('parent-1', 5000)).toMatchObject({ runtimeStatus: 'Completed', output: { r: 42, kid: 'parent-1:kid' } });
    expect(kidRuns).toBe(2);
  });
});

describe('the instance store in blob storage (Azurite)', () => {
  let azurite: Azurite;
  let container: ContainerClient;
  beforeAll(async () => {
    azurite = await startAzurite();
    container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient('paramdelta-host');
  });
  afterAll(async () => {
    await azurite?.stop();
  });

  const rec = (n: number): InstanceRecord => ({ kind: 'finished', status: 'Running', output: { n, text: 'x'.repeat(n) }, at: new Date(0).toISOString() });
  const created = (name: string): InstanceRecord => ({ kind: 'created', name, createdTime: new Date(0).toISOString() });

  it('keeps whole records per instance, any id, and recognises an append that had already landed', async () => {
    const store = new BlobInstanceStore(container);
    const odd = 'repost-x:with/slash and space~';
    await store.create(odd, created('o'));
    await store.append(odd, rec(1));
    await store.create('other', created('p'));

    // The first attempt of an append reached storage but its answer was lost; the retry must not write it twice.
    const line = Buffer.from(JSON.stringify(rec(2)) + '\n');
    const blobs = [];
    for await (const b of container.listBlobsFlat()) blobs.push(b);
    const blob = blobs.find((b) => Buffer.from(b.name.slice('instances/'.length, -'.jsonl'.length), 'base64url').toString() === odd)!;
    await container.getAppendBlobClient(blob.name).appendBlock(line, line.length);
    await store.append(odd, rec(2));

    const loaded = await new BlobInstanceStore(container).load();
    expect([...loaded.keys()].sort()).toEqual(['other', odd].sort());
    expect(loaded.get(odd)).toEqual([created('o'), rec(1), rec(2)]);
    expect(loaded.get('other')).toEqual([created('p')]);
  });

  it('refuses to append behind another writer', async () => {
    const a = new BlobInstanceStore(container);
    await a.create('contended', created('c'));
    const b = new BlobInstanceStore(container);
    await b.load();
    await b.append('contended', rec(3));
    await expect(a.append('contended', rec(4))).rejects.toMatchObject({ statusCode: 412 });
    // Creating an instance again replaces its log, as startNew replaces a finished instance.
    await a.create('contended', created('again'));
    expect((await new BlobInstanceStore(container).load()).get('contended')).toEqual([created('again')]);
  });
});
