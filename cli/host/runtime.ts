/**
 * A local, in-process Durable Functions host.
 *
 * Orchestrator generators run through durable-functions' own replay machinery
 * (`createOrchestrator` from its testing utilities), fed with a history this
 * module writes the way the Durable Task extension does. Activities, timers and
 * sub-orchestrations are executed here and their results appended to history,
 * so replay, determinism and JSON round-trips behave as they do in Azure.
 */
import { randomUUID } from 'node:crypto';
import azureFunctions, { type InvocationContext } from '@azure/functions';
import {
  ActionType, EventType, ExecutionStarted, OrchestratorCompleted, OrchestratorStarted, SubCompleted, SubCreated, SubFailed,
  TaskCompleted, TaskFailed, TaskScheduled, TimerCreated, TimerFired, flattenActions, replayEpisode, sequenceNumber,
  type Action, type HistoryEvent, type OrchestratorFn, type OrchestratorState,
} from './durable-lib.js';

// @azure/functions is CommonJS whose classes Node's ESM loader cannot see as named exports.
const { InvocationContext: Invocation } = azureFunctions;

export type RuntimeStatus = 'Pending' | 'Running' | 'Completed' | 'Failed' | 'Terminated';

export interface InstanceStatus {
  instanceId: string;
  name: string;
  runtimeStatus: RuntimeStatus;
  input: unknown;
  output: unknown;
  customStatus: unknown;
  createdTime: Date;
  lastUpdatedTime: Date;
  /** failure message when Failed */
  error?: string;
  parentInstanceId?: string;
}

export class InstanceExistsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InstanceExistsError';
  }
}

export interface RuntimeOptions {
  /** Activities running at once (bounded concurrency); default 2. */
  activityConcurrency?: number;
  log?: (line: string) => void;
  /** Scales durable timer delays (tests use e.g. 0.001 so a 5 s retry interval takes 5 ms); default 1. */
  timerScale?: number;
}

export type ActivityFn = (input: any, ctx: InvocationContext) => unknown | Promise<unknown>;
export type { OrchestratorFn };

/** Names of history event types, e.g. for asserting on `getHistory()` in tests. */
export function historyEventNames(history: readonly unknown[]): string[] {
  return history.map((e) => EventType[(e as HistoryEvent).EventType] ?? String((e as HistoryEvent).EventType));
}

// ---- per-instance state ----

/** A retryable call: the JS library expects the host to retry through timers (TaskFailed, TimerCreated, TimerFired, new TaskScheduled). */
interface RetryState { action: Action; attempt: number }

interface Instance {
  id: string;
  name: string;
  inputJson: string | undefined;
  status: RuntimeStatus;
  output: unknown;
  customStatus: unknown;
  error?: string;
  createdTime: Date;
  lastUpdatedTime: Date;
  parent?: { inst: Instance; eventId: number };
  history: HistoryEvent[];
  inbox: HistoryEvent[];
  busy: boolean;
  clock: number; // ms; OrchestratorStarted timestamps never go backwards
  nextEventId: number;
  actionLog: { type: number; name?: string; eventId: number }[];
  retries: Map<number, RetryState>; // scheduled event id, or retry timer id -> state
  timers: Map<number, NodeJS.Timeout>;
  outstanding: number; // scheduled work whose completion event has not been replayed yet
  waiters: ((s: InstanceStatus) => void)[];
}

const toJson = (v: unknown): string => JSON.stringify(v) ?? 'null';
const fromJson = (s: string | undefined): unknown => (s === undefined ? undefined : JSON.parse(s));
const errText = (e: unknown): string => (e instanceof Error ? e.message : String(e));
const isActive = (i: Instance): boolean => i.status === 'Pending' || i.status === 'Running';

export class LocalDurableRuntime {
  private readonly orchestrators = new Map<string, OrchestratorFn>();
  private readonly activities = new Map<string, ActivityFn>();
  private readonly instances = new Map<string, Instance>();
  private readonly queue: (() => Promise<void>)[] = [];
  private readonly inFlight = new Set<Promise<void>>();
  private activeActivities = 0;
  private closed = false;
  private readonly concurrency: number;
  private readonly timerScale: number;
  private readonly logFn?: (line: string) => void;

  constructor(opts: RuntimeOptions = {}) {
    this.concurrency = Math.max(1, opts.activityConcurrency ?? 2);
    this.timerScale = opts.timerScale ?? 1;
    this.logFn = opts.log;
  }

  registerOrchestrator(name: string, fn: OrchestratorFn): void {
    this.orchestrators.set(name, fn);
  }

  registerActivity(name: string, handler: ActivityFn): void {
    this.activities.set(name, handler);
  }

  async startNew(name: string, opts: { instanceId?: string; input?: unknown } = {}): Promise<string> {
    if (this.closed) throw new Error('LocalDurableRuntime is closed');
    const id = opts.instanceId ?? randomUUID().replace(/-/g, '');
    this.createInstance(name, id, opts.input === undefined ? undefined : toJson(opts.input));
    return id;
  }

  async getStatus(instanceId: string): Promise<InstanceStatus | undefined> {
    const inst = this.instances.get(instanceId);
    return inst && this.snapshot(inst);
  }

  async listInstances(): Promise<InstanceStatus[]> {
    return [...this.instances.values()].map((i) => this.snapshot(i));
  }

  async terminate(instanceId: string, reason: string): Promise<void> {
    const inst = this.instances.get(instanceId);
    if (!inst) throw new Error(`No instance with id '${instanceId}'`);
    if (isActive(inst)) this.finish(inst, 'Terminated', { output: reason });
  }

  waitForCompletion(instanceId: string, timeoutMs?: number): Promise<InstanceStatus> {
    const inst = this.instances.get(instanceId);
    if (!inst) return Promise.reject(new Error(`No instance with id '${instanceId}'`));
    if (!isActive(inst)) return Promise.resolve(this.snapshot(inst));
    return new Promise((resolve, reject) => {
      const timer = timeoutMs === undefined ? undefined : setTimeout(() => {
        inst.waiters = inst.waiters.filter((w) => w !== waiter);
        reject(new Error(`Timed out after ${timeoutMs} ms waiting for instance '${instanceId}' (${inst.status})`));
      }, timeoutMs);
      const waiter = (s: InstanceStatus) => { clearTimeout(timer); resolve(s); };
      inst.waiters.push(waiter);
    });
  }

  getHistory(instanceId: string): readonly unknown[] {
    return this.instances.get(instanceId)?.history ?? [];
  }

  async close(): Promise<void> {
    this.closed = true;
    this.queue.length = 0;
    for (const inst of this.instances.values()) this.clearTimers(inst);
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  // ---- scheduling ----

  private createInstance(name: string, id: string, inputJson: string | undefined, parent?: Instance['parent']): Instance {
    const existing = this.instances.get(id);
    if (existing && isActive(existing)) {
      throw new InstanceExistsError(`An instance with id '${id}' is already ${existing.status}`);
    }
    const now = new Date();
    const inst: Instance = {
      id, name, inputJson, status: 'Pending', output: undefined, customStatus: undefined,
      createdTime: now, lastUpdatedTime: now, parent, history: [], busy: false, clock: 0,
      inbox: [new ExecutionStarted({ eventId: -1, timestamp: now, isPlayed: false, name, input: inputJson })],
      nextEventId: 0, actionLog: [], retries: new Map(), timers: new Map(), outstanding: 0, waiters: [],
    };
    this.instances.set(id, inst);
    this.log(`[${id}] ${name} pending`);
    this.pump(inst);
    return inst;
  }

  private log(line: string): void {
    this.logFn?.(line);
  }

  private track(p: Promise<void>): void {
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p));
  }

  /** Appends a completion event and makes sure an episode will replay it. */
  private deliver(inst: Instance, event: HistoryEvent): void {
    if (!isActive(inst)) return; // late result for a finished/terminated/replaced instance
    inst.inbox.push(event);
    this.pump(inst);
  }

  /** Runs episodes one at a time per instance; distinct instances interleave. */
  private pump(inst: Instance): void {
    if (inst.busy || this.closed || inst.inbox.length === 0) return;
    inst.busy = true;
    this.track((async () => {
      await null; // start on a later tick: callers (startNew, a parent's episode) finish first
      try {
        // One new event per episode: the library allocates retry ids while replaying an event,
        // before the code it resumes schedules anything, and this keeps our ids in that order.
        while (!this.closed && isActive(inst) && inst.inbox.length > 0) {
          await this.episode(inst, inst.inbox.shift()!);
        }
      } catch (e) {
        if (isActive(inst)) this.finish(inst, 'Failed', { error: `Local host error: ${errText(e)}` });
      } finally {
        inst.busy = false;
      }
    })());
  }

  private async episode(inst: Instance, event: HistoryEvent): Promise<void> {
    const fn = this.orchestrators.get(inst.name);
    if (!fn) {
      this.finish(inst, 'Failed', { error: `Orchestrator function '${inst.name}' is not registered (known: ${[...this.orchestrators.keys()].join(', ') || 'none'})` });
      return;
    }
    const fired = event.EventType === EventType.TimerFired ? (event.FireAt as Date).getTime() : 0;
    inst.clock = Math.max(Date.now(), inst.clock, fired);
    const ts = new Date(inst.clock);
    for (const e of inst.history) e.IsPlayed = true;
    inst.history.push(new OrchestratorStarted({ eventId: -1, timestamp: ts, isPlayed: false }), event);
    if (event.EventType !== EventType.ExecutionStarted) inst.outstanding--;
    inst.status = 'Running';
    inst.lastUpdatedTime = new Date();

    const ctx = new Invocation({
      functionName: inst.name,
      invocationId: randomUUID(),
      logHandler: (_level, ...args) => this.log(`[${inst.id}] ${args.map(String).join(' ')}`),
    });
    let state: OrchestratorState | undefined;
    let failure: string | undefined;
    try {
      const r = await replayEpisode(fn, { instanceId: inst.id, history: inst.history, input: fromJson(inst.inputJson), parentInstanceId: inst.parent?.inst.id }, ctx);
      if (r.error !== undefined) {
        if ('customStatus' in r) inst.customStatus = r.customStatus;
        failure = r.error;
      } else state = r;
    } catch (e) {
      failure = errText(e);
    }
    if (!isActive(inst)) return; // terminated while the episode ran

    let outcome: { status: 'Completed' | 'Failed'; output?: unknown; error?: string } | undefined;
    const failed = (why: string) => ({ status: 'Failed' as const, error: `Orchestrator function '${inst.name}' failed: ${why}` });
    if (failure !== undefined || !state) outcome = failed(failure ?? 'no state');
    else {
      // The library omits falsy custom statuses from its state, as the extension would see it.
      if ('customStatus' in state) inst.customStatus = fromJson(toJson(state.customStatus));
      try {
        if (state.isDone) outcome = { status: 'Completed', output: fromJson(toJson(state.output)) };
        else {
          this.continueRetry(inst, event, ts);
          this.scheduleActions(inst, flattenActions(state.actions), ts);
          this.checkSequence(inst, ctx);
          if (inst.outstanding <= 0 && inst.inbox.length === 0) {
            outcome = failed('it is waiting but nothing is scheduled (an API this local host does not support?)');
          }
        }
      } catch (e) {
        outcome = failed(errText(e));
      }
    }
    inst.history.push(new OrchestratorCompleted({ eventId: -1, timestamp: ts, isPlayed: false }));
    if (outcome) this.finish(inst, outcome.status, outcome);
  }

  /** After a failed attempt: a retry timer (also after the last attempt; the library waits for it). After that timer: the next attempt. */
  private continueRetry(inst: Instance, event: HistoryEvent, ts: Date): void {
    const failedId = event.EventType === EventType.TaskFailed || event.EventType === EventType.SubOrchestrationInstanceFailed
      ? (event.TaskScheduledId as number) : undefined;
    if (failedId !== undefined) {
      const r = inst.retries.get(failedId);
      if (!r) return;
      inst.retries.delete(failedId);
      const o = r.action.retryOptions!;
      let delay = o.firstRetryIntervalInMilliseconds * Math.pow(o.backoffCoefficient ?? 1, r.attempt - 1);
      if (o.maxRetryIntervalInMilliseconds) delay = Math.min(delay, o.maxRetryIntervalInMilliseconds);
      const timerId = this.createTimer(inst, new Date(ts.getTime() + delay), ts);
      inst.retries.set(timerId, r);
    } else if (event.EventType === EventType.TimerFired) {
      const r = inst.retries.get(event.TimerId as number);
      if (!r) return;
      inst.retries.delete(event.TimerId as number);
      if (r.attempt >= r.action.retryOptions!.maxNumberOfAttempts) return; // the library now fails the task
      this.scheduleCall(inst, r.action, ts, { action: r.action, attempt: r.attempt + 1 });
    }
  }

  private scheduleActions(inst: Instance, actions: Action[], ts: Date): void {
    const log = inst.actionLog;
    // Replayed actions must match what was scheduled before, as DTFx enforces.
    for (let i = 0; i < Math.min(log.length, actions.length); i++) {
      const a = actions[i]!;
      if (a.actionType !== log[i]!.type || a.functionName !== log[i]!.name) {
        throw new Error(`Non-deterministic workflow detected: action #${i} was ${ActionType[log[i]!.type]}(${log[i]!.name ?? ''}) and is now ${ActionType[a.actionType]}(${a.functionName ?? ''})`);
      }
      if (a.actionType === ActionType.CreateTimer && a.isCanceled) this.cancelTimer(inst, log[i]!.eventId);
    }
    for (const a of actions.slice(log.length)) {
      switch (a.actionType) {
        case ActionType.CallActivity:
        case ActionType.CallSubOrchestrator:
          log.push({ type: a.actionType, name: a.functionName, eventId: this.scheduleCall(inst, a, ts) });
          break;
        case ActionType.CallActivityWithRetry:
        case ActionType.CallSubOrchestratorWithRetry:
          log.push({ type: a.actionType, name: a.functionName, eventId: this.scheduleCall(inst, a, ts, { action: a, attempt: 1 }) });
          break;
        case ActionType.CreateTimer: {
          const id = this.createTimer(inst, new Date(a.fireAt!), ts);
          log.push({ type: a.actionType, eventId: id });
          if (a.isCanceled) this.cancelTimer(inst, id);
          break;
        }
        default:
          throw new Error(`${ActionType[a.actionType] ?? a.actionType} is not supported by the local durable host`);
      }
    }
  }

  /** Schedules an activity or sub-orchestration under the next event id. */
  private scheduleCall(inst: Instance, a: Action, ts: Date, retry?: RetryState): number {
    const name = a.functionName!;
    const isActivity = a.actionType === ActionType.CallActivity || a.actionType === ActionType.CallActivityWithRetry;
    const known = isActivity ? this.activities : this.orchestrators;
    if (!known.has(name)) {
      throw new Error(`${isActivity ? 'Activity' : 'Orchestrator'} function '${name}' is not registered (known: ${[...known.keys()].join(', ') || 'none'})`);
    }
    const id = inst.nextEventId++;
    inst.outstanding++;
    if (retry) inst.retries.set(id, retry);
    if (isActivity) {
      // The library JSON-encodes string inputs itself; the extension decodes them again.
      const inputJson = a.input === undefined ? undefined : typeof a.input === 'string' ? a.input : toJson(a.input);
      inst.history.push(new TaskScheduled({ eventId: id, timestamp: ts, isPlayed: false, name, input: inputJson }));
      this.enqueueActivity(inst, id, name, inputJson);
    } else {
      const childId = a.instanceId || `${inst.id}:${id.toString(16).toUpperCase().padStart(4, '0')}`;
      const inputJson = a.input === undefined ? undefined : toJson(a.input);
      inst.history.push(new SubCreated({ eventId: id, timestamp: ts, isPlayed: false, name, input: inputJson, instanceId: childId }));
      try {
        this.createInstance(name, childId, inputJson, { inst, eventId: id });
      } catch (e) {
        this.deliver(inst, new SubFailed({
          eventId: -1, timestamp: new Date(), isPlayed: false, taskScheduledId: id,
          reason: `Sub orchestrator function '${name}' failed: ${errText(e)}`, details: '',
        }));
      }
    }
    return id;
  }

  private createTimer(inst: Instance, fireAt: Date, ts: Date): number {
    const id = inst.nextEventId++;
    inst.outstanding++;
    inst.history.push(new TimerCreated({ eventId: id, timestamp: ts, isPlayed: false, fireAt }));
    const delay = Math.max(0, fireAt.getTime() - ts.getTime()) * this.timerScale;
    inst.timers.set(id, setTimeout(() => {
      inst.timers.delete(id);
      this.deliver(inst, new TimerFired({ eventId: -1, timestamp: new Date(), isPlayed: false, timerId: id, fireAt }));
    }, delay));
    return id;
  }

  private cancelTimer(inst: Instance, id: number): void {
    const t = inst.timers.get(id);
    if (!t) return;
    clearTimeout(t);
    inst.timers.delete(id);
    inst.outstanding--;
  }

  private clearTimers(inst: Instance): void {
    for (const t of inst.timers.values()) clearTimeout(t);
    inst.timers.clear();
  }

  /** Our event ids must match the library's task sequence numbers, or completions land on the wrong tasks. */
  private checkSequence(inst: Instance, ctx: InvocationContext): void {
    const seq = sequenceNumber(ctx);
    if (seq !== undefined && seq !== inst.nextEventId) {
      throw new Error(`replay mismatch: the orchestrator allocated ${seq} task ids, the host scheduled ${inst.nextEventId} (was an already-yielded task yielded again inside Task.all/Task.any?)`);
    }
  }

  private enqueueActivity(inst: Instance, eventId: number, name: string, inputJson: string | undefined): void {
    this.queue.push(async () => {
      await null; // run handler code after the scheduling episode, not inside it
      if (!isActive(inst)) return;
      const ctx = new Invocation({
        functionName: name,
        invocationId: randomUUID(),
        logHandler: (_level, ...args) => this.log(`[${inst.id}] ${name}: ${args.map(String).join(' ')}`),
      });
      let event: HistoryEvent;
      try {
        const result = await this.activities.get(name)!(fromJson(inputJson), ctx);
        event = new TaskCompleted({ eventId: -1, timestamp: new Date(), isPlayed: false, taskScheduledId: eventId, result: toJson(result) });
      } catch (e) {
        event = new TaskFailed({
          eventId: -1, timestamp: new Date(), isPlayed: false, taskScheduledId: eventId,
          reason: `Activity function '${name}' failed: ${errText(e)}`,
          details: (e instanceof Error && e.stack) || String(e),
        });
      }
      this.deliver(inst, event);
    });
    this.drain();
  }

  private drain(): void {
    while (!this.closed && this.activeActivities < this.concurrency && this.queue.length > 0) {
      const job = this.queue.shift()!;
      this.activeActivities++;
      this.track(job().finally(() => {
        this.activeActivities--;
        this.drain();
      }));
    }
  }

  private finish(inst: Instance, status: 'Completed' | 'Failed' | 'Terminated', r: { output?: unknown; error?: string }): void {
    inst.status = status;
    inst.output = r.output;
    inst.error = r.error;
    inst.lastUpdatedTime = new Date();
    inst.inbox.length = 0;
    this.clearTimers(inst);
    this.log(`[${inst.id}] ${inst.name} ${status}${r.error ? `: ${r.error}` : ''}`);
    const parent = inst.parent;
    if (parent) {
      const base = { eventId: -1, timestamp: new Date(), isPlayed: false, taskScheduledId: parent.eventId };
      this.deliver(parent.inst, status === 'Completed'
        ? new SubCompleted({ ...base, result: toJson(inst.output) })
        : new SubFailed({ ...base, reason: status === 'Failed' ? r.error! : `Sub-orchestration '${inst.id}' was terminated: ${String(r.output)}`, details: '' }));
    }
    const snap = this.snapshot(inst);
    for (const w of inst.waiters.splice(0)) w(snap);
  }

  private snapshot(inst: Instance): InstanceStatus {
    const s: InstanceStatus = {
      instanceId: inst.id, name: inst.name, runtimeStatus: inst.status, input: fromJson(inst.inputJson),
      output: inst.output, customStatus: inst.customStatus,
      createdTime: inst.createdTime, lastUpdatedTime: inst.lastUpdatedTime,
    };
    if (inst.error !== undefined) s.error = inst.error;
    if (inst.parent) s.parentInstanceId = inst.parent.inst.id;
    return s;
  }
}
