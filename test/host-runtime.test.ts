import { describe, it, expect, afterEach } from 'vitest';
import * as df from 'durable-functions';
import type { InvocationContext } from '@azure/functions';
import { LocalDurableRuntime, InstanceExistsError, historyEventNames } from '../cli/host/runtime.js';

type Ctx = df.OrchestrationContext;

let rt: LocalDurableRuntime;
function runtime(concurrency = 2): LocalDurableRuntime {
  rt = new LocalDurableRuntime({ activityConcurrency: concurrency, timerScale: 0.001 });
  return rt;
}
afterEach(async () => {
  await rt?.close();
});

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

describe('LocalDurableRuntime', () => {
  it('fans out and in with Task.all, within the activity concurrency bound', async () => {
    const r = runtime(3);
    let running = 0;
    let maxRunning = 0;
    let seenCtx: InvocationContext | undefined;
    r.registerActivity('square', async (n: number, ctx) => {
      seenCtx = ctx;
      running++;
      maxRunning = Math.max(maxRunning, running);
      await new Promise((res) => setTimeout(res, 5));
      running--;
      return n * n;
    });
    r.registerOrchestrator('fan', function* (context: Ctx) {
      const n = context.df.getInput<number>();
      const tasks = [];
      for (let i = 1; i <= n; i++) tasks.push(context.df.callActivity('square', i));
      const results: number[] = yield context.df.Task.all(tasks);
      return results.reduce((a, b) => a + b, 0);
    });
    const id = await r.startNew('fan', { input: 10 });
    const s = await r.waitForCompletion(id, 5000);
    expect(s.runtimeStatus).toBe('Completed');
    expect(s.output).toBe(385);
    expect(s.input).toBe(10);
    expect(maxRunning).toBe(3);
    expect(seenCtx?.functionName).toBe('square');
    const names = historyEventNames(r.getHistory(id));
    expect(names.filter((n) => n === 'TaskScheduled')).toHaveLength(10);
    expect(names.filter((n) => n === 'TaskCompleted')).toHaveLength(10);
  });

  it('retries a failing activity through durable timers', async () => {
    const r = runtime();
    let calls = 0;
    r.registerActivity('flaky', (x: string) => {
      calls++;
      if (calls === 1) throw new Error('transient');
      return `ok:${x}`;
    });
    r.registerOrchestrator('retry', function* (context: Ctx) {
      return yield context.df.callActivityWithRetry('flaky', new df.RetryOptions(5000, 3), 'a');
    });
    const id = await r.startNew('retry');
    const s = await r.waitForCompletion(id, 5000);
    expect(s.runtimeStatus).toBe('Completed');
    expect(s.output).toBe('ok:a');
    expect(calls).toBe(2);
    const names = historyEventNames(r.getHistory(id)).filter((n) => !n.startsWith('Orchestrator'));
    expect(names).toEqual([
      'ExecutionStarted', 'TaskScheduled', 'TaskFailed', 'TimerCreated', 'TimerFired', 'TaskScheduled', 'TaskCompleted',
    ]);
    // the retry timer is 5 s after the failure in orchestration time
    const h = r.getHistory(id) as { EventType: number; Timestamp: Date; FireAt?: Date }[];
    const created = h.find((e) => e.FireAt && historyEventNames([e])[0] === 'TimerCreated')!;
    expect(created.FireAt!.getTime() - created.Timestamp.getTime()).toBe(5000);
  });

  it('keeps task ids aligned with retries inside a fan-out and a retried sub-orchestration', async () => {
    const r = runtime(4);
    const calls = new Map<string, number>();
    r.registerActivity('flaky', async (x: string) => {
      const n = (calls.get(x) ?? 0) + 1;
      calls.set(x, n);
      await new Promise((res) => setTimeout(res, x === 'slow' ? 20 : 1));
      if (x.startsWith('f') && n < 3) throw new Error(`fail ${x} #${n}`);
      return `${x}${n}`;
    });
    let kidCalls = 0;
    r.registerActivity('kidWork', (iid: string) => {
      if (++kidCalls === 1) throw new Error(`kid failed in ${iid}`);
      return `kid ok in ${iid}`;
    });
    r.registerOrchestrator('kid', function* (context: Ctx) {
      return yield context.df.callActivity('kidWork', context.df.instanceId);
    });
    r.registerOrchestrator('mix', function* (context: Ctx) {
      const all = yield context.df.Task.all(
        ['a', 'f1', 'slow', 'f2'].map((x) => context.df.callActivityWithRetry('flaky', new df.RetryOptions(100, 4), x)),
      );
      const timer = context.df.createTimer(new Date(context.df.currentUtcDateTime.getTime() + 60_000));
      const act = context.df.callActivity('flaky', 'b');
      const winner: df.Task = yield context.df.Task.any([timer, act]);
      if (winner === act) timer.cancel();
      const child = yield context.df.callSubOrchestratorWithRetry('kid', new df.RetryOptions(10, 2), null);
      return { all, any: winner.result, child };
    });
    const s = await r.waitForCompletion(await r.startNew('mix', { instanceId: 'mix' }), 5000);
    expect(s.error).toBeUndefined();
    expect(s.output).toEqual({ all: ['a1', 'f13', 'slow1', 'f23'], any: 'b1', child: 'kid ok in mix:0010' });
    const kids = (await r.listInstances()).filter((i) => i.parentInstanceId === 'mix');
    expect(kids.map((k) => [k.instanceId, k.runtimeStatus])).toEqual([['mix:000E', 'Failed'], ['mix:0010', 'Completed']]);
  });

  it('fails the instance when every attempt fails', async () => {
    const r = runtime();
    let calls = 0;
    r.registerActivity('broken', () => {
      calls++;
      throw new Error('disk on fire');
    });
    r.registerOrchestrator('doomed', function* (context: Ctx) {
      yield context.df.callActivityWithRetry('broken', new df.RetryOptions(1000, 2), null);
      return 'unreachable';
    });
    const id = await r.startNew('doomed');
    const s = await r.waitForCompletion(id, 5000);
    expect(s.runtimeStatus).toBe('Failed');
    expect(s.error).toContain('disk on fire');
    expect(calls).toBe(2);
  });

  it('lets an orchestrator catch an activity failure', async () => {
    const r = runtime();
    r.registerActivity('boom', () => {
      throw new Error('kaboom');
    });
    r.registerOrchestrator('catcher', function* (context: Ctx) {
      try {
        yield context.df.callActivity('boom');
        return 'no';
      } catch (e) {
        return (e as Error).message.includes('kaboom') ? 'caught' : 'wrong';
      }
    });
    const s = await r.waitForCompletion(await r.startNew('catcher'), 5000);
    expect(s.output).toBe('caught');
  });

  it('returns sub-orchestration results and surfaces sub-orchestration failures', async () => {
    const r = runtime();
    r.registerActivity('double', (n: number) => n * 2);
    r.registerOrchestrator('child', function* (context: Ctx) {
      const n = context.df.getInput<number>();
      if (n < 0) throw new Error(`negative input ${n}`);
      const d: number = yield context.df.callActivity('double', n);
      return { doubled: d, parent: context.df.parentInstanceId };
    });
    r.registerOrchestrator('parent', function* (context: Ctx) {
      const n = context.df.getInput<number>();
      return yield context.df.callSubOrchestrator('child', n);
    });

    const ok = await r.startNew('parent', { instanceId: 'p-ok', input: 21 });
    const s = await r.waitForCompletion(ok, 5000);
    expect(s.runtimeStatus).toBe('Completed');
    expect(s.output).toEqual({ doubled: 42, parent: 'p-ok' });
    const children = (await r.listInstances()).filter((i) => i.parentInstanceId === 'p-ok');
    expect(children).toHaveLength(1);
    expect(children[0]!.runtimeStatus).toBe('Completed');

    const bad = await r.startNew('parent', { input: -1 });
    const f = await r.waitForCompletion(bad, 5000);
    expect(f.runtimeStatus).toBe('Failed');
    expect(f.error).toContain('negative input -1');
  });

  it('exposes custom status while running and after', async () => {
    const r = runtime();
    const gate = deferred<string>();
    r.registerActivity('wait', () => gate.promise);
    r.registerOrchestrator('status', function* (context: Ctx) {
      context.df.setCustomStatus({ phase: 'waiting' });
      const v: string = yield context.df.callActivity('wait');
      context.df.setCustomStatus({ phase: 'done', v });
      return v;
    });
    const id = await r.startNew('status');
    // As in Azure, the status is visible once the first episode has ended.
    await until(async () => (await r.getStatus(id))?.customStatus !== undefined);
    expect(await r.getStatus(id)).toMatchObject({ runtimeStatus: 'Running', customStatus: { phase: 'waiting' } });
    gate.resolve('go');
    const s = await r.waitForCompletion(id, 5000);
    expect(s.customStatus).toEqual({ phase: 'done', v: 'go' });
  });

  it('rejects a duplicate id while running and allows it after completion', async () => {
    const r = runtime();
    const gate = deferred();
    r.registerActivity('wait', () => gate.promise);
    r.registerOrchestrator('o', function* (context: Ctx) {
      yield context.df.callActivity('wait');
      return context.df.getInput();
    });
    await r.startNew('o', { instanceId: 'dup', input: 1 });
    await expect(r.startNew('o', { instanceId: 'dup', input: 2 })).rejects.toBeInstanceOf(InstanceExistsError);
    gate.resolve();
    expect((await r.waitForCompletion('dup', 5000)).output).toBe(1);
    await r.startNew('o', { instanceId: 'dup', input: 3 });
    expect((await r.waitForCompletion('dup', 5000)).output).toBe(3);
  });

  it('replays the generator and reports isReplaying and a history-based clock', async () => {
    const r = runtime();
    r.registerActivity('echo', (x: unknown) => x);
    let bodyRuns = 0;
    const replayFlags: boolean[] = [];
    const clocks: number[][] = [];
    r.registerOrchestrator('replayed', function* (context: Ctx) {
      bodyRuns++;
      replayFlags.push(context.df.isReplaying);
      const seen = [context.df.currentUtcDateTime.getTime()];
      clocks.push(seen);
      yield context.df.callActivity('echo', 1);
      seen.push(context.df.currentUtcDateTime.getTime());
      yield context.df.callActivity('echo', 2);
      seen.push(context.df.currentUtcDateTime.getTime());
      return 'done';
    });
    const id = await r.startNew('replayed');
    expect((await r.waitForCompletion(id, 5000)).output).toBe('done');
    expect(bodyRuns).toBe(3);
    expect(replayFlags).toEqual([false, true, true]);
    // each replay sees the same timestamps as the run that first reached that point
    expect(clocks[1]![0]).toBe(clocks[0]![0]);
    expect(clocks[2]!.slice(0, 2)).toEqual(clocks[1]);
  });

  it('passes activity results through JSON', async () => {
    const r = runtime();
    const when = new Date('2024-05-06T07:08:09.000Z');
    r.registerActivity('now', () => ({ when, skip: undefined, big: [1, undefined] }));
    r.registerOrchestrator('json', function* (context: Ctx) {
      const v: { when: unknown; big: unknown[] } = yield context.df.callActivity('now');
      return { type: typeof v.when, value: v.when, hasSkip: 'skip' in v, big: v.big };
    });
    const s = await r.waitForCompletion(await r.startNew('json'), 5000);
    expect(s.output).toEqual({ type: 'string', value: when.toISOString(), hasSkip: false, big: [1, null] });
  });

  it('fails clearly on unknown orchestrator and activity names', async () => {
    const r = runtime();
    r.registerOrchestrator('callsMissing', function* (context: Ctx) {
      return yield context.df.callActivity('nope');
    });
    const a = await r.waitForCompletion(await r.startNew('callsMissing'), 5000);
    expect(a.runtimeStatus).toBe('Failed');
    expect(a.error).toContain("Activity function 'nope' is not registered");
    const b = await r.waitForCompletion(await r.startNew('missing'), 5000);
    expect(b.runtimeStatus).toBe('Failed');
    expect(b.error).toContain("Orchestrator function 'missing' is not registered");
  });

  it('fires durable timers and can terminate a running instance', async () => {
    const r = runtime();
    const gate = deferred();
    r.registerActivity('wait', () => gate.promise);
    r.registerOrchestrator('sleeper', function* (context: Ctx) {
      const start = context.df.currentUtcDateTime.getTime();
      yield context.df.createTimer(new Date(start + 2000));
      return context.df.currentUtcDateTime.getTime() - start >= 2000;
    });
    r.registerOrchestrator('stuck', function* (context: Ctx) {
      yield context.df.callActivity('wait');
    });
    expect((await r.waitForCompletion(await r.startNew('sleeper'), 5000)).output).toBe(true);
    const id = await r.startNew('stuck');
    await until(async () => (await r.getStatus(id))?.runtimeStatus === 'Running');
    await r.terminate(id, 'enough');
    const s = await r.waitForCompletion(id, 1000);
    expect(s.runtimeStatus).toBe('Terminated');
    gate.resolve();
  });
});
