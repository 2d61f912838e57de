/**
 * The orchestrators, replayed over hand-built histories through durable-functions' own replay
 * machinery (schema V1), as the Azure extension would drive them: each episode's state (actions,
 * customStatus, output, error) is checked, and the history is extended the way the extension would.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createHash } from 'node:crypto';
import { HttpRequest, InvocationContext } from '@azure/functions';
import { computeDeltaOrchestrator } from '../functions/orchestrators/computeDelta.js';
import { applyDeltasOrchestrator } from '../functions/orchestrators/applyDeltas.js';
import { repostBaseOrchestrator } from '../functions/orchestrators/repostBase.js';
import type { ApplyDeltasInput, ComputeDeltaInput, EvaluationSummary, PlanSummary, Progress, RepostBaseInput, ShardDone } from '../functions/contracts.js';
import type { Compatibility } from '../functions/activities/findCompatibleDeltas.js';
import { setRunClientProvider, type RunClient, type RunStatus } from '../functions/client.js';
import { resetPipeline } from '../functions/pipeline.js';
import { ActionType, EventType, History, actionKeys, replay, type Action, type OrchestratorFn, type Replay } from './helpers/histories.js';

const STORAGE = vi.hoisted(() => {
  const before = process.env.AzureWebJobsStorage;
  process.env.AzureWebJobsStorage = 'UseDevelopmentStorage=true';
  return { before };
});

const DELTA_INPUT: ComputeDeltaInput = { name: 'chat', base: 'models/a', post: 'models/b', deltaDtype: 'auto', deltaFormat: 'compact', autoApply: true, output: 'deltas/chat' };
const DELTA_ID = 'delta-chat-0123456789abcdef';
const RETRY = { firstRetryIntervalInMilliseconds: 2000, maxNumberOfAttempts: 4, backoffCoefficient: 2 };

function plan3(runId: string): PlanSummary {
  return {
    runId,
    planHash: 'h',
    shards: [1, 2, 3].map((n) => ({ file: `delta-0000${n}-of-00003.safetensors`, inputBytes: 100 })),
  };
}

const shardDone = (i: number): ShardDone => ({ file: `delta-0000${i + 1}-of-00003.safetensors`, bytes: 100, skipped: false });

/** Runs one episode and checks what must hold after every one: ids agree, no action twice, the log only grows. */
async function step(fn: OrchestratorFn, h: History, before: Action[] = []): Promise<Replay> {
  const r = await replay(fn, h);
  const keys = actionKeys(r.actions);
  expect(new Set(keys).size, `an action was emitted twice: ${keys.join(' | ')}`).toBe(keys.length);
  // The library returns every action since the start; earlier ones must come back unchanged, in order.
  expect(keys.slice(0, before.length)).toEqual(actionKeys(before));
  return r;
}

/** The actions this episode added, given the previous episode's. */
const added = (r: Replay, prev: Replay): Action[] => r.actions.slice(prev.actions.length);

function expectActivity(a: Action | undefined, name: string, input: unknown): void {
  expect(a).toBeDefined();
  expect(ActionType[a!.actionType]).toBe('CallActivityWithRetry');
  expect(a!.functionName).toBe(name);
  expect(a!.input).toEqual(input);
  expect(a!.retryOptions).toMatchObject(RETRY);
}

/** Drives computeDelta to the point where its 3 shards are scheduled (ids 1, 2, 3). */
async function toShards(h: History): Promise<{ r: Replay; shardIds: number[] }> {
  const r1 = await step(computeDeltaOrchestrator, h.start());
  const planId = h.scheduled('planDelta', r1.actions[0]!.input);
  h.close();
  const r2 = await step(computeDeltaOrchestrator, h.episode(h.completed(planId, plan3(h.instanceId))), r1.actions);
  const shardIds = added(r2, r1).map((a) => h.scheduled(a.functionName!, a.input));
  h.close();
  expect(r2.sequenceNumber).toBe(h.nextEventId);
  return { r: r2, shardIds };
}

describe('computeDelta: fan-out over replayed histories', () => {
  it('plans, schedules every shard at once, tracks progress out of order, never re-emits, then finalizes', async () => {
    const h = new History('computeDelta', DELTA_INPUT, DELTA_ID);

    // Episode 1: a fresh history asks for the plan and nothing else.
    const r1 = await step(computeDeltaOrchestrator, h.start());
    expect(r1.isDone).toBe(false);
    expect(r1.error).toBeUndefined();
    expect(r1.actions).toHaveLength(1);
    expectActivity(r1.actions[0], 'planDelta', { runId: DELTA_ID, ...DELTA_INPUT });
    expect(r1.customStatus).toMatchObject({ phase: 'planning' });
    const planId = h.scheduled('planDelta', r1.actions[0]!.input);
    h.close();
    expect(planId).toBe(0);
    expect(r1.sequenceNumber).toBe(h.nextEventId);

    // Episode 2: the plan arrives; all 3 shard activities are scheduled in this one episode.
    const r2 = await step(computeDeltaOrchestrator, h.episode(h.completed(planId, plan3(DELTA_ID))), r1.actions);
    expect(r2.isDone).toBe(false);
    const shards = added(r2, r1);
    expect(shards).toHaveLength(3);
    shards.forEach((a, i) => expectActivity(a, 'computeDeltaShard', { runId: DELTA_ID, planHash: 'h', index: i, output: 'deltas/chat' }));
    expect(r2.customStatus).toEqual({ phase: 'shards', shardsDone: 0, shardsTotal: 3, bytesDone: 0, bytesTotal: 300 });
    const shardIds = shards.map((a) => h.scheduled(a.functionName!, a.input));
    h.close();
    expect(shardIds).toEqual([1, 2, 3]);
    expect(r2.sequenceNumber).toBe(h.nextEventId);

    // Shards complete out of order: 2, 0, 1 — one episode each.
    const statuses: Progress[] = [r2.customStatus as Progress];
    let prev = r2;
    for (const i of [2, 0]) {
      const r = await step(computeDeltaOrchestrator, h.episode(h.completed(shardIds[i]!, shardDone(i))), prev.actions);
      h.close();
      expect(r.isDone).toBe(false);
      expect(r.error).toBeUndefined();
      expect(r.actions).toHaveLength(1 + 3); // nothing new until every shard is in
      expect(r.sequenceNumber).toBe(h.nextEventId);
      statuses.push(r.customStatus as Progress);
      prev = r;
    }
    const rLast = await step(computeDeltaOrchestrator, h.episode(h.completed(shardIds[1]!, shardDone(1))), prev.actions);
    expect(rLast.isDone).toBe(false);
    expect(rLast.actions).toHaveLength(1 + 3 + 1);
    const finalize = added(rLast, prev);
    expect(finalize).toHaveLength(1);
    expectActivity(finalize[0], 'finalizeDelta', { ...DELTA_INPUT, runId: DELTA_ID, planHash: 'h' });
    expect(rLast.customStatus).toEqual({ phase: 'finalizing', shardsDone: 3, shardsTotal: 3, bytesDone: 300, bytesTotal: 300 });
    statuses.push(rLast.customStatus as Progress);
    const finalizeId = h.scheduled('finalizeDelta', finalize[0]!.input);
    h.close();
    expect(finalizeId).toBe(4);
    expect(rLast.sequenceNumber).toBe(h.nextEventId);

    // Progress is sane: never goes backwards, never overshoots, ends complete.
    for (let i = 1; i < statuses.length; i++) {
      expect(statuses[i]!.shardsDone).toBeGreaterThanOrEqual(statuses[i - 1]!.shardsDone);
      expect(statuses[i]!.bytesDone).toBeGreaterThanOrEqual(statuses[i - 1]!.bytesDone);
    }
    for (const s of statuses) {
      expect(s.bytesDone).toBeLessThanOrEqual(s.bytesTotal);
      expect(s.shardsDone).toBeLessThanOrEqual(s.shardsTotal);
      expect(s.shardsTotal).toBe(3);
    }
    expect(statuses.map((s) => s.shardsDone)).toEqual([0, 0, 1, 3]);
    expect(statuses.map((s) => s.bytesDone)).toEqual([0, 0, 100, 300]);

    // finalizeDelta completes: done, with its result as output.
    const result = { name: 'chat', manifest: 'deltas/chat/delta.json', shards: 3 };
    const rDone = await step(computeDeltaOrchestrator, h.episode(h.completed(finalizeId, result)), rLast.actions);
    h.close();
    expect(rDone.error).toBeUndefined();
    expect(rDone.isDone).toBe(true);
    expect(rDone.output).toEqual(result);
    expect(rDone.actions).toHaveLength(1 + 3 + 1);
    expect(rDone.actions.filter((a) => a.functionName === 'finalizeDelta')).toHaveLength(1);
    expect(rDone.customStatus).toEqual({ phase: 'completed', shardsDone: 3, shardsTotal: 3, bytesDone: 300, bytesTotal: 300 });
  });

  it('all completions delivered in one episode give the same end state as one per episode', async () => {
    const h = new History('computeDelta', DELTA_INPUT, DELTA_ID);
    const { r, shardIds } = await toShards(h);
    const rAll = await step(computeDeltaOrchestrator, h.episode(...[2, 0, 1].map((i) => h.completed(shardIds[i]!, shardDone(i)))), r.actions);
    expect(rAll.actions).toHaveLength(5);
    expect(rAll.actions[4]!.functionName).toBe('finalizeDelta');
    expect(rAll.customStatus).toEqual({ phase: 'finalizing', shardsDone: 3, shardsTotal: 3, bytesDone: 300, bytesTotal: 300 });
  });
});

describe('computeDelta: a failed shard is retried through the extension', () => {
  const reason = (msg: string) => `Activity function 'computeDeltaShard' failed: ${msg}`;

  it('TaskFailed, TimerCreated, TimerFired, a new TaskScheduled, then the run completes', async () => {
    const h = new History('computeDelta', DELTA_INPUT, DELTA_ID);
    const { r, shardIds } = await toShards(h);

    // Shard 1 fails once: the orchestrator keeps going and schedules nothing itself (the retry is the host's).
    const rFail = await step(computeDeltaOrchestrator, h.episode(h.failed(shardIds[1]!, reason('transient blob timeout'))), r.actions);
    expect(rFail.error).toBeUndefined();
    expect(rFail.isDone).toBe(false);
    expect(rFail.actions).toHaveLength(4);
    const timer = h.timerCreated(RETRY.firstRetryIntervalInMilliseconds);
    h.close();
    expect(timer.id).toBe(4);
    expect(rFail.sequenceNumber).toBe(h.nextEventId); // the library allotted the timer's id

    // The retry timer fires; the extension schedules the shard again under the next id.
    const rFired = await step(computeDeltaOrchestrator, h.episode(h.fired(timer)), rFail.actions);
    expect(rFired.error).toBeUndefined();
    expect(rFired.actions).toHaveLength(4);
    const retryId = h.scheduled('computeDeltaShard', r.actions[2]!.input);
    h.close();
    expect(retryId).toBe(5);
    expect(rFired.sequenceNumber).toBe(h.nextEventId);

    // Shards 0 and 2 succeed; nothing happens until the retried shard 1 does.
    let prev = rFired;
    for (const [id, i] of [[shardIds[0]!, 0], [shardIds[2]!, 2]] as const) {
      prev = await step(computeDeltaOrchestrator, h.episode(h.completed(id, shardDone(i))), prev.actions);
      h.close();
      expect(prev.error).toBeUndefined();
      expect(prev.actions).toHaveLength(4);
    }
    expect(prev.customStatus).toMatchObject({ phase: 'shards', shardsDone: 1, bytesDone: 100 });
    const rRetried = await step(computeDeltaOrchestrator, h.episode(h.completed(retryId, shardDone(1))), prev.actions);
    expect(rRetried.actions).toHaveLength(5);
    expectActivity(rRetried.actions[4], 'finalizeDelta', { ...DELTA_INPUT, runId: DELTA_ID, planHash: 'h' });
    const finalizeId = h.scheduled('finalizeDelta', rRetried.actions[4]!.input);
    h.close();
    expect(finalizeId).toBe(6);
    expect(rRetried.sequenceNumber).toBe(h.nextEventId);

    const rDone = await step(computeDeltaOrchestrator, h.episode(h.completed(finalizeId, { ok: true })), rRetried.actions);
    expect(rDone.error).toBeUndefined();
    expect(rDone.isDone).toBe(true);
    expect(rDone.output).toEqual({ ok: true });
    expect(rDone.customStatus).toMatchObject({ phase: 'completed', shardsDone: 3 });
  });

  it('a shard failing on all 4 attempts fails the orchestration with the activity\'s message', async () => {
    const h = new History('computeDelta', DELTA_INPUT, DELTA_ID);
    const { r, shardIds } = await toShards(h);
    let prev = await step(computeDeltaOrchestrator, h.episode(h.completed(shardIds[0]!, shardDone(0))), r.actions);
    h.close();

    let attemptId = shardIds[1]!;
    let delay = RETRY.firstRetryIntervalInMilliseconds;
    for (let attempt = 1; attempt <= RETRY.maxNumberOfAttempts; attempt++) {
      const rFail = await step(computeDeltaOrchestrator, h.episode(h.failed(attemptId, reason(`disk full (attempt ${attempt})`))), prev.actions);
      expect(rFail.error, `failed too early, at attempt ${attempt}`).toBeUndefined();
      expect(rFail.isDone).toBe(false);
      const timer = h.timerCreated(delay);
      h.close();
      expect(rFail.sequenceNumber).toBe(h.nextEventId);
      delay *= RETRY.backoffCoefficient;

      const rFired = await step(computeDeltaOrchestrator, h.episode(h.fired(timer)), rFail.actions);
      if (attempt < RETRY.maxNumberOfAttempts) {
        expect(rFired.error, `failed too early, after attempt ${attempt}`).toBeUndefined();
        attemptId = h.scheduled('computeDeltaShard', r.actions[2]!.input);
        h.close();
        expect(rFired.sequenceNumber).toBe(h.nextEventId);
        prev = rFired;
      } else {
        // Attempts exhausted: the orchestration fails here, shard 2 still pending.
        expect(rFired.isDone).toBe(false);
        expect(rFired.error).toMatch(/Activity function 'computeDeltaShard' failed: disk full \(attempt 4\)/);
        expect(rFired.actions.filter((a) => a.functionName === 'finalizeDelta')).toHaveLength(0);
        expect(rFired.customStatus).toMatchObject({ phase: 'shards', shardsDone: 1 });
      }
    }
    expect(h.events.filter((e) => e.EventType === EventType.TaskFailed)).toHaveLength(4);
  });
});

describe('applyDeltas', () => {
  const INPUT: ApplyDeltasInput = { base: 'base-models/next', deltas: [{ ref: 'deltas/chat', scale: 1 }], output: 'posted-models/next/chat' };
  const ID = 'repost-next-1:chat';

  it('plans, fans out applyDeltaShard per shard, then finalizeModel', async () => {
    const h = new History('applyDeltas', INPUT, ID);
    const r1 = await step(applyDeltasOrchestrator, h.start());
    expect(r1.actions).toHaveLength(1);
    expectActivity(r1.actions[0], 'planModel', { runId: ID, ...INPUT });
    const planId = h.scheduled('planModel', r1.actions[0]!.input);
    h.close();

    const plan: PlanSummary = {
      runId: ID,
      planHash: 'p',
      shards: [
        { file: 'model-00001-of-00002.safetensors', inputBytes: 700 },
        { file: 'model-00002-of-00002.safetensors', inputBytes: 300 },
      ],
    };
    const r2 = await step(applyDeltasOrchestrator, h.episode(h.completed(planId, plan)), r1.actions);
    const shards = added(r2, r1);
    expect(shards).toHaveLength(2);
    shards.forEach((a, i) => expectActivity(a, 'applyDeltaShard', { runId: ID, planHash: 'p', index: i, output: INPUT.output }));
    expect(r2.customStatus).toEqual({ phase: 'shards', shardsDone: 0, shardsTotal: 2, bytesDone: 0, bytesTotal: 1000 });
    const ids = shards.map((a) => h.scheduled(a.functionName!, a.input));
    h.close();
    expect(r2.sequenceNumber).toBe(h.nextEventId);

    const done = (i: number): ShardDone => ({ file: plan.shards[i]!.file, bytes: 1, skipped: false });
    const r3 = await step(applyDeltasOrchestrator, h.episode(h.completed(ids[1]!, done(1))), r2.actions);
    h.close();
    expect(r3.actions).toHaveLength(3);
    expect(r3.customStatus).toMatchObject({ shardsDone: 0, bytesDone: 0 });

    const r4 = await step(applyDeltasOrchestrator, h.episode(h.completed(ids[0]!, done(0))), r3.actions);
    expect(r4.actions).toHaveLength(1 + 2 + 1);
    expectActivity(r4.actions[3], 'finalizeModel', { runId: ID, planHash: 'p', output: INPUT.output });
    expect(r4.customStatus).toEqual({ phase: 'finalizing', shardsDone: 2, shardsTotal: 2, bytesDone: 1000, bytesTotal: 1000 });
    const finalizeId = h.scheduled('finalizeModel', r4.actions[3]!.input);
    h.close();
    expect(r4.sequenceNumber).toBe(h.nextEventId);

    const result = { output: INPUT.output, files: 3 };
    const r5 = await step(applyDeltasOrchestrator, h.episode(h.completed(finalizeId, result)), r4.actions);
    expect(r5.isDone).toBe(true);
    expect(r5.output).toEqual(result);
    expect(r5.actions).toHaveLength(4);
    expect(r5.customStatus).toMatchObject({ phase: 'completed', shardsDone: 2 });
  });
});

describe('repostBase', () => {
  const INPUT: RepostBaseInput = { name: 'next', base: 'base-models/next', etag: '"0x8DC0FFEE"' };
  const ID = 'repost-next-0011223344556677';
  const found: Compatibility = {
    compatible: [
      { name: 'chat', ref: 'deltas/chat', output: 'posted-models/next/chat' },
      { name: 'code', ref: 'deltas/code', output: 'posted-models/next/code' },
    ],
    skipped: [{ name: 'vision', reason: 'tensor vision.proj.weight: shape [64, 32] differs from [64, 16]' }],
  };

  it('starts one held applyDeltas sub-orchestration per compatible delta, at once, then evaluates each posted model', async () => {
    const h = new History('repostBase', INPUT, ID);
    const r1 = await step(repostBaseOrchestrator, h.start());
    expect(r1.actions).toHaveLength(1);
    expectActivity(r1.actions[0], 'findCompatibleDeltas', INPUT);
    const findId = h.scheduled('findCompatibleDeltas', r1.actions[0]!.input);
    h.close();

    const r2 = await step(repostBaseOrchestrator, h.episode(h.completed(findId, found)), r1.actions);
    const subs = added(r2, r1);
    expect(subs).toHaveLength(2);
    subs.forEach((a, i) => {
      const d = found.compatible[i]!;
      expect(ActionType[a.actionType]).toBe('CallSubOrchestratorWithRetry');
      expect(a.functionName).toBe('applyDeltas');
      // <parent>:<name>-<12 hex of sha256(name)>, which fits the scheduler's 100 characters.
      expect(a.instanceId).toBe(`${ID}:${d.name}-${createHash('sha256').update(d.name).digest('hex').slice(0, 12)}`);
      // Held: the index is written under its pending name until the gate passes.
      expect(a.input).toEqual({ base: INPUT.base, deltas: [{ ref: d.ref, scale: 1 }], output: d.output, held: true });
      expect(a.retryOptions).toMatchObject(RETRY);
    });
    expect(r2.customStatus).toEqual({ phase: 'reposting', shardsDone: 0, shardsTotal: 2, bytesDone: 0, bytesTotal: 0 });
    const subIds = subs.map((a) => h.subCreated(a.functionName!, a.instanceId!, a.input));
    h.close();
    expect(r2.sequenceNumber).toBe(h.nextEventId);

    // The second child finishes first: no progress is claimed for it until the first one is in.
    const r3 = await step(repostBaseOrchestrator, h.episode(h.subCompleted(subIds[1]!, { files: 2 })), r2.actions);
    h.close();
    expect(r3.isDone).toBe(false);
    expect(r3.actions).toHaveLength(3);
    expect(r3.customStatus).toMatchObject({ phase: 'reposting', shardsDone: 0 });

    // Both in: one evaluateModel per posted model, scheduled at once.
    const r4 = await step(repostBaseOrchestrator, h.episode(h.subCompleted(subIds[0]!, { files: 2 })), r3.actions);
    expect(r4.error).toBeUndefined();
    expect(r4.isDone).toBe(false);
    const evals = added(r4, r3);
    expect(evals).toHaveLength(2);
    evals.forEach((a, i) => {
      const d = found.compatible[i]!;
      expectActivity(a, 'evaluateModel', { runId: ID, delta: d.ref, base: INPUT.base, output: d.output });
      expect(a.retryOptions).toMatchObject(RETRY);
    });
    expect(r4.customStatus).toEqual({ phase: 'evaluating', shardsDone: 0, shardsTotal: 2, bytesDone: 0, bytesTotal: 0 });
    const evalIds = evals.map((a) => h.scheduled(a.functionName!, a.input));
    h.close();

    const summary = (output: string, passed: boolean): EvaluationSummary => ({
      output,
      model: { ref: output, meanLoss: 2.5, perplexity: Math.exp(2.5) },
      reference: { role: 'old post', ref: 'models/post', meanLoss: 2, perplexity: Math.exp(2) },
      lossRatio: 1.25,
      agreement: 0.9,
      kl: 0.1,
      gate: { bounds: { maxLossRatio: 1.1 }, passed, reasons: passed ? [] : ['loss ratio 1.2500 is above maxLossRatio 1.1'] },
      published: passed,
    });
    const r5 = await step(
      repostBaseOrchestrator,
      h.episode(h.completed(evalIds[0]!, summary('posted-models/next/chat', true)), h.completed(evalIds[1]!, summary('posted-models/next/code', false))),
      r4.actions,
    );
    h.close();
    expect(r5.error).toBeUndefined();
    expect(r5.isDone).toBe(true);
    expect(r5.actions).toHaveLength(5);
    const { output: _c, ...chat } = summary('posted-models/next/chat', true);
    const { output: _d, ...code } = summary('posted-models/next/code', false);
    expect(r5.output).toEqual({
      base: INPUT.base,
      posted: [
        { delta: 'chat', output: 'posted-models/next/chat' },
        { delta: 'code', output: 'posted-models/next/code' },
      ],
      skipped: found.skipped,
      failed: [],
      evaluations: [
        { delta: 'chat', ...chat },
        { delta: 'code', ...code },
      ],
      withheld: [{ delta: 'code', output: 'posted-models/next/code', reasons: ['loss ratio 1.2500 is above maxLossRatio 1.1'] }],
      gate: 'gate failed',
    });
    expect(r5.customStatus).toEqual({ phase: 'completed', shardsDone: 2, shardsTotal: 2, bytesDone: 0, bytesTotal: 0 });
  });

  it('an evaluation failing on all 4 attempts withholds that model and the run says gate failed', async () => {
    const one: Compatibility = { compatible: [found.compatible[0]!], skipped: [] };
    const h = new History('repostBase', INPUT, ID);
    const r1 = await step(repostBaseOrchestrator, h.start());
    const findId = h.scheduled('findCompatibleDeltas', r1.actions[0]!.input);
    h.close();
    const r2 = await step(repostBaseOrchestrator, h.episode(h.completed(findId, one)), r1.actions);
    const sub = added(r2, r1)[0]!;
    const subId = h.subCreated(sub.functionName!, sub.instanceId!, sub.input);
    h.close();
    let prev = await step(repostBaseOrchestrator, h.episode(h.subCompleted(subId, { files: 2 })), r2.actions);
    const evalAction = added(prev, r2)[0]!;
    expectActivity(evalAction, 'evaluateModel', { runId: ID, delta: 'deltas/chat', base: INPUT.base, output: 'posted-models/next/chat' });
    let attemptId = h.scheduled('evaluateModel', evalAction.input);
    h.close();
    let delay = RETRY.firstRetryIntervalInMilliseconds;
    for (let attempt = 1; attempt <= RETRY.maxNumberOfAttempts; attempt++) {
      const rFail = await step(repostBaseOrchestrator, h.episode(h.failed(attemptId, `storage timeout (attempt ${attempt})`)), prev.actions);
      expect(rFail.isDone).toBe(false);
      const timer = h.timerCreated(delay);
      h.close();
      delay *= RETRY.backoffCoefficient;
      const rFired = await step(repostBaseOrchestrator, h.episode(h.fired(timer)), rFail.actions);
      if (attempt < RETRY.maxNumberOfAttempts) {
        attemptId = h.scheduled('evaluateModel', evalAction.input);
        h.close();
        prev = rFired;
        continue;
      }
      // Attempts exhausted: the run completes, the model stays without its index.
      expect(rFired.error).toBeUndefined();
      expect(rFired.isDone).toBe(true);
      const error = 'storage timeout (attempt 4)';
      expect(rFired.output).toEqual({
        base: INPUT.base,
        posted: [{ delta: 'chat', output: 'posted-models/next/chat' }],
        skipped: [],
        failed: [],
        evaluations: [{ delta: 'chat', error, gate: { bounds: {}, passed: false, reasons: [`evaluation failed: ${error}`] }, published: false }],
        withheld: [{ delta: 'chat', output: 'posted-models/next/chat', reasons: [`evaluation failed: ${error}`] }],
        gate: 'gate failed',
      });
    }
  });

  it('with no compatible delta it completes without sub-orchestrations', async () => {
    const h = new History('repostBase', INPUT, ID);
    const r1 = await step(repostBaseOrchestrator, h.start());
    const findId = h.scheduled('findCompatibleDeltas', r1.actions[0]!.input);
    h.close();
    const none: Compatibility = { compatible: [], skipped: found.skipped };
    const r2 = await step(repostBaseOrchestrator, h.episode(h.completed(findId, none)), r1.actions);
    expect(r2.error).toBeUndefined();
    expect(r2.isDone).toBe(true);
    expect(r2.actions).toHaveLength(1);
    expect(r2.actions.some((a) => ActionType[a.actionType]!.startsWith('CallSubOrchestrator'))).toBe(false);
    expect(r2.output).toEqual({ base: INPUT.base, posted: [], skipped: found.skipped, failed: [], evaluations: [], withheld: [], gate: 'passed' });
    expect(r2.customStatus).toMatchObject({ phase: 'completed', shardsDone: 0, shardsTotal: 0 });
  });
});

describe('determinism', () => {
  /** Replays the open episode twice: the same history must give the same state, and stay untouched. */
  async function twice(h: History, before: Action[] = []): Promise<Replay> {
    const snapshot = JSON.stringify(h.events);
    const a = await step(computeDeltaOrchestrator, h, before);
    const b = await replay(computeDeltaOrchestrator, h);
    expect(JSON.stringify(h.events)).toBe(snapshot);
    expect(b).toEqual(a);
    expect(JSON.stringify(b.customStatus)).toBe(JSON.stringify(a.customStatus));
    return a;
  }

  it('replaying the same history twice yields identical actions and customStatus, episode after episode', async () => {
    const h = new History('computeDelta', DELTA_INPUT, DELTA_ID);
    const r1 = await twice(h.start());
    const planId = h.scheduled('planDelta', r1.actions[0]!.input);
    h.close();
    const r2 = await twice(h.episode(h.completed(planId, plan3(DELTA_ID))), r1.actions);
    const ids = added(r2, r1).map((a) => h.scheduled(a.functionName!, a.input));
    h.close();
    const r3 = await twice(h.episode(h.failed(ids[0]!, "Activity function 'computeDeltaShard' failed: boom")), r2.actions);
    const timer = h.timerCreated(2000);
    h.close();
    const r4 = await twice(h.episode(h.fired(timer), h.completed(ids[2]!, shardDone(2))), r3.actions);
    expect(r4.actions).toHaveLength(4);
    expect(r4.customStatus).toMatchObject({ phase: 'shards', shardsDone: 0 });
    const retryId = h.scheduled('computeDeltaShard', r2.actions[1]!.input);
    h.close();
    const r5 = await twice(h.episode(h.completed(retryId, shardDone(0)), h.completed(ids[1]!, shardDone(1))), r4.actions);
    const finalizeId = h.scheduled('finalizeDelta', r5.actions[4]!.input);
    h.close();
    const r6 = await twice(h.episode(h.completed(finalizeId, 'done')), r5.actions);
    expect(r6.isDone).toBe(true);
    expect(r6.output).toBe('done');
  });
});

describe('startDelta: duplicate start', () => {
  type StartDelta = (req: HttpRequest, ctx: InvocationContext) => Promise<{ status?: number; jsonBody?: any }>;
  let startDelta: StartDelta;

  beforeAll(async () => {
    resetPipeline();
    ({ startDelta } = (await import('../functions/triggers/startDelta.js')) as unknown as { startDelta: StartDelta });
  });
  afterEach(() => {
    setRunClientProvider(null);
    resetPipeline();
  });
  afterAll(() => {
    if (STORAGE.before === undefined) delete process.env.AzureWebJobsStorage;
    else process.env.AzureWebJobsStorage = STORAGE.before;
  });

  const post = (body: Record<string, unknown>) =>
    startDelta(
      new HttpRequest({ method: 'POST', url: 'http://localhost/api/deltas', body: { string: JSON.stringify(body) } }),
      new InvocationContext({ functionName: 'startDelta', invocationId: 'x', logHandler: () => {} }),
    );
  const status = (instanceId: string, runtimeStatus: RunStatus['runtimeStatus']): RunStatus => ({
    instanceId, name: 'computeDelta', runtimeStatus, customStatus: null, output: null, input: null,
  });

  it('answers 202 with the same id and starts nothing while that run is Running', async () => {
    const started: string[] = [];
    const client: RunClient = {
      getStatus: async (id) => status(id, 'Running'),
      startNew: async (_name, o) => { started.push(o.instanceId); return o.instanceId; },
      list: async () => [],
    };
    setRunClientProvider(() => client);
    const body = { name: 'chat', base: 'models/a', post: 'models/b' };
    const a = await post(body);
    const b = await post(body);
    expect(a.status).toBe(202);
    expect(b.status).toBe(202);
    expect(a.jsonBody.id).toBeTruthy();
    expect(b.jsonBody.id).toBe(a.jsonBody.id);
    expect(started).toEqual([]);
  });

  it('starts once when the run is not found, with the id it answers; ids follow the request content', async () => {
    const runs = new Map<string, { name: string; input: unknown }>();
    const calls: { name: string; instanceId: string; input: unknown }[] = [];
    const client: RunClient = {
      getStatus: async (id) => (runs.has(id) ? status(id, 'Running') : undefined),
      startNew: async (name, o) => {
        calls.push({ name, ...o });
        runs.set(o.instanceId, { name, input: o.input });
        return o.instanceId;
      },
      list: async () => [],
    };
    setRunClientProvider(() => client);
    const body = { name: 'chat', base: 'models/a', post: 'models/b', replace: true };
    const first = await post(body);
    expect(first.status).toBe(202);
    expect(calls).toHaveLength(1);
    expect(calls[0]).toEqual({ name: 'computeDelta', instanceId: first.jsonBody.id, input: DELTA_INPUT });

    const again = await post(body);
    expect(again.status).toBe(202);
    expect(again.jsonBody.id).toBe(first.jsonBody.id);
    expect(calls).toHaveLength(1);

    const other = await post({ ...body, post: 'models/c' });
    expect(other.status).toBe(202);
    expect(other.jsonBody.id).not.toBe(first.jsonBody.id);
    expect(calls).toHaveLength(2);
    expect(calls[1]!.instanceId).toBe(other.jsonBody.id);

    // The layout is part of the request: a plain delta is another run.
    const plain = await post({ ...body, deltaFormat: 'safetensors' });
    expect(plain.jsonBody.id).not.toBe(first.jsonBody.id);
    expect(calls[2]).toEqual({ name: 'computeDelta', instanceId: plain.jsonBody.id, input: { ...DELTA_INPUT, deltaFormat: 'safetensors' } });
  });
});
