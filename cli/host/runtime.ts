/**
 * A local, in-process Durable Functions host.
 *
 * Orchestrator generators run through durable-functions' own replay machinery
 * (`createOrchestrator` from its testing utilities), fed with a history this
 * module writes the way the Durable Task extension does. Activities, timers and
 * sub-orchestrations are executed here and their results appended to history,
 * so replay, determinism and JSON round-trips behave as they do in Azure.
 *
 * Like the Azure Storage backend, it can keep each instance's history in storage (an
 * `InstanceStore`): one record when the instance is created and one per episode, written before
 * the episode's sub-orchestrations start. `resume()` rebuilds every instance from its records and
 * restarts what had not finished: activities and sub-orchestrations with no completion in the
 * history run again (delivery is at least once), timers are armed again, and the next completion
 * replays the whole history through the same library code. It also refuses what the Durable Task
 * Scheduler refuses (functions/limits.ts): long or non-printable instance ids, and inputs,
 * outputs and custom statuses over their sizes.
 */
import { randomUUID } from 'node:crypto';
import azureFunctions, { type InvocationContext } from '@azure/functions';
import {
  ActionType, EventType, ExecutionStarted, OrchestratorCompleted, OrchestratorStarted, SubCompleted, SubCreated, SubFailed,
  TaskCompleted, TaskFailed, TaskScheduled, TimerCreated, TimerFired, flattenActions, replayEpisode, sequenceNumber,
  type Action, type HistoryEvent, type OrchestratorFn, type OrchestratorState,
} from './durable-lib.js';
import { customStatusProblem, instanceIdProblem, payloadProblem } from '../../functions/limits.js';

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
  /** Where instances' histories are kept; without one they live in memory only. */
  store?: InstanceStore;
}

/** One entry of the scheduled-action log that replays are checked against. */
interface LogEntry { type: number; name?: string; eventId: number }

/** What an instance's log in storage holds: its creation, then one record per episode (or a final status). */
export type InstanceRecord =
  | { kind: 'created'; name: string; input?: string; parent?: { id: string; eventId: number }; createdTime: string }
  | {
      kind: 'episode';
      /** The history events this episode added, as JSON (the form the extension hands the library). */
      events: unknown[];
      /** The host's bookkeeping after the episode: action log entries it added, retry and cancelled-timer state. */
      log: LogEntry[];
      retries: [number, RetryState][];
      canceledTimers: number[];
      nextEventId: number;
      clock: number;
      outstanding: number;
      status: RuntimeStatus;
      customStatus?: unknown;
      output?: unknown;
      error?: string;
      at: string;
    }
  | { kind: 'finished'; status: RuntimeStatus; output?: unknown; error?: string; at: string };

/** Durable storage of instance logs (cli/host/history.ts keeps them in append blobs). */
export interface InstanceStore {
  /** Starts an instance's log with its first record, replacing the log of an earlier instance of that id. */
  create(id: string, first: InstanceRecord): Promise<void>;
  append(id: string, record: InstanceRecord): Promise<void>;
  /** Every instance's records, in the order they were written. */
  load(): Promise<Map<string, InstanceRecord[]>>;
}

/** An InstanceStore in memory, records round-tripped through JSON as storage would; for tests. */
export class MemoryInstanceStore implements InstanceStore {
  readonly logs = new Map<string, string[]>();
  async create(id: string, first: InstanceRecord): Promise<void> {
    this.logs.set(id, [JSON.stringify(first)]);
  }
  async append(id: string, record: InstanceRecord): Promise<void> {
    const log = this.logs.get(id);
    if (!log) throw new Error(`no log for instance '${id}'`);
    log.push(JSON.stringify(record));
  }
  async load(): Promise<Map<string, InstanceRecord[]>> {
    return new Map([...this.logs].map(([id, lines]) => [id, lines.map((l) => JSON.parse(l) as InstanceRecord)]));
  }
}

/** The runtime refuses what the backend refuses (functions/limits.ts). */
export class BackendLimitError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BackendLimitError';
  }
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
  /** The parent as stored, linked to `parent` when instances are resumed. */
  parentRef?: { id: string; eventId: number };
  history: HistoryEvent[];
  inbox: HistoryEvent[];
  busy: boolean;
  clock: number; // ms; OrchestratorStarted timestamps never go backwards
  nextEventId: number;
  actionLog: LogEntry[];
  retries: Map<number, RetryState>; // scheduled event id, or retry timer id -> state
  timers: Map<number, NodeJS.Timeout>;
  canceledTimers: Set<number>;
  outstanding: number; // scheduled work whose completion event has not been replayed yet
  /** Work an episode asked for that starts only once the episode is saved (sub-orchestrations). */
  effects: (() => void)[];
  waiters: ((s: InstanceStatus) => void)[];
}

const toJson = (v: unknown): string => JSON.stringify(v) ?? 'null';
const fromJson = (s: string | undefined): unknown => (s === undefined ? undefined : JSON.parse(s));
const errText = (e: unknown): string => (e instanceof Error ? e.message : String(e));
const isActive = (i: Instance): boolean => i.status === 'Pending' || i.status === 'Running';
const COMPLETIONS = new Set<number>([EventType.TaskCompleted, EventType.TaskFailed, EventType.SubOrchestrationInstanceCompleted, EventType.SubOrchestrationInstanceFailed]);

/** History events from storage, with the Date fields this host reads turned back into Dates (the library takes either). */
function revive(e: unknown): HistoryEvent {
  const ev = e as HistoryEvent;
  if (typeof ev.Timestamp === 'string') ev.Timestamp = new Date(ev.Timestamp);
  if (typeof ev.FireAt === 'string') ev.FireAt = new Date(ev.FireAt);
  return ev;
}

function blankInstance(id: string, name: string, inputJson: string | undefined, createdTime: Date): Instance {
  return {
    id, name, inputJson, status: 'Pending', output: undefined, customStatus: undefined,
    createdTime, lastUpdatedTime: createdTime, history: [], inbox: [], busy: false, clock: 0,
    nextEventId: 0, actionLog: [], retries: new Map(), timers: new Map(), canceledTimers: new Set(), outstanding: 0, effects: [], waiters: [],
  };
}

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
  private readonly store?: InstanceStore;
  /** Per instance id, the tail of its chain of storage writes (they must land in order). */
  private readonly writes = new Map<string, Promise<void>>();

  constructor(opts: RuntimeOptions = {}) {
    this.concurrency = Math.max(1, opts.activityConcurrency ?? 2);
    this.timerScale = opts.timerScale ?? 1;
    this.logFn = opts.log;
    this.store = opts.store;
  }

  registerOrchestrator(name: string, fn: OrchestratorFn): void {
    this.orchestrators.set(name, fn);
  }

  registerActivity(name: string, handler: ActivityFn): void {
    this.activities.set(name, handler);
  }

  /** Starts an orchestration; with a store, it returns once the instance is saved. */
  async startNew(name: string, opts: { instanceId?: string; input?: unknown } = {}): Promise<string> {
    if (this.closed) throw new Error('LocalDurableRuntime is closed');
    const id = opts.instanceId ?? randomUUID().replace(/-/g, '');
    const inputJson = opts.input === undefined ? undefined : toJson(opts.input);
    const problem = instanceIdProblem(id) ?? payloadProblem(`the input of orchestration '${name}'`, inputJson);
    if (problem) throw new BackendLimitError(`cannot start ${name}: ${problem}`);
    const { saved } = this.createInstance(name, id, inputJson);
    await saved;
    return id;
  }

  /**
   * Rebuilds every instance from the store and restarts those that had not finished. Call it once,
   * after registering the functions and before starting any instance; returns how many resumed.
   */
  async resume(): Promise<number> {
    if (!this.store) return 0;
    if (this.instances.size > 0) throw new Error('resume() must come before any instance is started');
    const loaded: Instance[] = [];
    for (const [id, records] of await this.store.load()) {
      const inst = this.rebuild(id, records);
      if (!inst) {
        this.log(`[${id}] skipped: its stored log does not begin with its creation`);
        continue;
      }
      this.instances.set(id, inst);
      loaded.push(inst);
    }
    for (const inst of loaded) {
      const ref = inst.parentRef;
      const parent = ref && this.instances.get(ref.id);
      if (ref && parent) inst.parent = { inst: parent, eventId: ref.eventId };
    }
    const active = loaded.filter(isActive);
    for (const inst of active) this.restart(inst);
    return active.length;
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

  /** Stops scheduling; what is running finishes, and its storage writes land. Unfinished instances stay stored, to resume. */
  async close(): Promise<void> {
    this.closed = true;
    this.queue.length = 0;
    for (const inst of this.instances.values()) this.clearTimers(inst);
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
    await Promise.allSettled([...this.writes.values()]);
  }

  // ---- storage ----

  /** Queues a write of `id`'s log behind its earlier ones. */
  private save(id: string, record: InstanceRecord, create = false): Promise<void> {
    const store = this.store;
    if (!store) return Promise.resolve();
    const previous = this.writes.get(id) ?? Promise.resolve();
    const write = previous.then(() => (create ? store.create(id, record) : store.append(id, record)));
    const tail = write.catch(() => {});
    this.writes.set(id, tail);
    void tail.then(() => {
      if (this.writes.get(id) === tail) this.writes.delete(id);
    });
    return write;
  }

  private rebuild(id: string, records: InstanceRecord[]): Instance | undefined {
    const first = records[0];
    if (first?.kind !== 'created') return undefined;
    const inst = blankInstance(id, first.name, first.input, new Date(first.createdTime));
    inst.parentRef = first.parent;
    for (const r of records.slice(1)) {
      if (r.kind === 'episode') {
        inst.history.push(...r.events.map(revive));
        inst.actionLog.push(...r.log);
        inst.retries = new Map(r.retries);
        inst.canceledTimers = new Set(r.canceledTimers);
        inst.nextEventId = r.nextEventId;
        inst.clock = r.clock;
        inst.outstanding = r.outstanding;
        inst.customStatus = r.customStatus;
      }
      if (r.kind === 'episode' || r.kind === 'finished') {
        inst.status = r.status;
        inst.output = r.output;
        inst.error = r.error;
        inst.lastUpdatedTime = new Date(r.at);
      }
    }
    return inst;
  }

  /** Restarts a resumed instance's unfinished work: what its history scheduled and never saw complete. */
  private restart(inst: Instance): void {
    if (inst.history.length === 0) {
      inst.inbox.push(new ExecutionStarted({ eventId: -1, timestamp: inst.createdTime, isPlayed: false, name: inst.name, input: inst.inputJson }));
      this.log(`[${inst.id}] ${inst.name} resumed: not started yet`);
      this.pump(inst);
      return;
    }
    const settled = new Set<number>();
    const fired = new Set<number>();
    for (const e of inst.history) {
      if (COMPLETIONS.has(e.EventType)) settled.add(e.TaskScheduledId as number);
      if (e.EventType === EventType.TimerFired) fired.add(e.TimerId as number);
    }
    const again = new Map<string, number>();
    const note = (what: string) => again.set(what, (again.get(what) ?? 0) + 1);
    for (const e of inst.history) {
      if (e.EventType === EventType.TaskScheduled && !settled.has(e.EventId)) {
        note(`activity ${e.Name as string}`);
        this.enqueueActivity(inst, e.EventId, e.Name as string, e.Input as string | undefined);
      } else if (e.EventType === EventType.SubOrchestrationInstanceCreated && !settled.has(e.EventId)) {
        note(`sub-orchestration ${e.Name as string}`);
        this.reattachChild(inst, e);
      } else if (e.EventType === EventType.TimerCreated && !fired.has(e.EventId) && !inst.canceledTimers.has(e.EventId)) {
        note('timer');
        const fireAt = e.FireAt as Date;
        this.armTimer(inst, e.EventId, fireAt, Math.max(0, fireAt.getTime() - Date.now()) * this.timerScale);
      }
    }
    const pending = [...again].map(([what, n]) => `${what}${n > 1 ? ` ×${n}` : ''}`).join(', ');
    this.log(`[${inst.id}] ${inst.name} resumed: ${pending ? `running ${pending} again` : 'nothing pending'}`);
  }

  /** A resumed parent's sub-orchestration: still running (linked already), finished (deliver its result), or never saved (start it). */
  private reattachChild(parent: Instance, created: HistoryEvent): void {
    const child = this.instances.get(created.InstanceId as string);
    if (child && child.parentRef?.id === parent.id && child.parentRef.eventId === created.EventId) {
      if (!isActive(child)) this.deliver(parent, this.completionFor(child, created.EventId));
      return;
    }
    this.startChild(parent, created.EventId, created.Name as string, created.InstanceId as string, created.Input as string | undefined);
  }

  // ---- scheduling ----

  private createInstance(name: string, id: string, inputJson: string | undefined, parent?: Instance['parent']): { inst: Instance; saved: Promise<void> } {
    const existing = this.instances.get(id);
    if (existing && isActive(existing)) {
      throw new InstanceExistsError(`An instance with id '${id}' is already ${existing.status}`);
    }
    const now = new Date();
    const inst = blankInstance(id, name, inputJson, now);
    inst.parent = parent;
    if (parent) inst.parentRef = { id: parent.inst.id, eventId: parent.eventId };
    inst.inbox.push(new ExecutionStarted({ eventId: -1, timestamp: now, isPlayed: false, name, input: inputJson }));
    this.instances.set(id, inst);
    const saved = this.save(id, { kind: 'created', name, input: inputJson, parent: inst.parentRef, createdTime: now.toISOString() }, true);
    saved.catch((e: unknown) => {
      if (isActive(inst)) this.finish(inst, 'Failed', { error: `Local host error: the instance could not be saved: ${errText(e)}` }, false);
    });
    this.log(`[${id}] ${name} pending`);
    this.pump(inst);
    return { inst, saved };
  }

  /** Starts a sub-orchestration an episode scheduled (after that episode is saved); a refusal fails the call, as in Azure. */
  private startChild(parent: Instance, eventId: number, name: string, childId: string, inputJson: string | undefined): void {
    try {
      this.createInstance(name, childId, inputJson, { inst: parent, eventId });
    } catch (e) {
      this.deliver(parent, new SubFailed({
        eventId: -1, timestamp: new Date(), isPlayed: false, taskScheduledId: eventId,
        reason: `Sub orchestrator function '${name}' failed: ${errText(e)}`, details: '',
      }));
    }
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
    const historyBefore = inst.history.length;
    const logBefore = inst.actionLog.length;
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
    let customStatus: { json: string } | undefined;
    try {
      const r = await replayEpisode(fn, { instanceId: inst.id, history: inst.history, input: fromJson(inst.inputJson), parentInstanceId: inst.parent?.inst.id }, ctx);
      // The library omits falsy custom statuses from its state, as the extension would see it.
      if ('customStatus' in r) customStatus = { json: toJson(r.customStatus) };
      if (r.error !== undefined) failure = r.error;
      else state = r;
    } catch (e) {
      failure = errText(e);
    }
    if (!isActive(inst)) return; // terminated while the episode ran

    let outcome: { status: 'Completed' | 'Failed'; output?: unknown; error?: string } | undefined;
    const failed = (why: string) => ({ status: 'Failed' as const, error: `Orchestrator function '${inst.name}' failed: ${why}` });
    const statusProblem = customStatusProblem(customStatus?.json);
    if (customStatus && !statusProblem) inst.customStatus = fromJson(customStatus.json);
    if (failure !== undefined || !state) outcome = failed(failure ?? 'no state');
    else if (statusProblem) outcome = failed(statusProblem);
    else {
      try {
        if (state.isDone) {
          const output = toJson(state.output);
          const problem = payloadProblem('the orchestration output', output);
          outcome = problem ? failed(problem) : { status: 'Completed', output: fromJson(output) };
        } else {
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
    // The episode is saved before its outcome is told and its sub-orchestrations start, so a
    // restart finds everything they refer to in the history.
    await this.save(inst.id, {
      kind: 'episode',
      events: inst.history.slice(historyBefore).map((e) => JSON.parse(JSON.stringify(e)) as unknown),
      log: inst.actionLog.slice(logBefore),
      retries: [...inst.retries],
      canceledTimers: [...inst.canceledTimers],
      nextEventId: inst.nextEventId,
      clock: inst.clock,
      outstanding: inst.outstanding,
      status: outcome?.status ?? 'Running',
      customStatus: inst.customStatus,
      ...(outcome?.status === 'Completed' ? { output: outcome.output } : {}),
      ...(outcome?.error !== undefined ? { error: outcome.error } : {}),
      at: new Date().toISOString(),
    });
    const effects = inst.effects.splice(0);
    if (!isActive(inst)) return; // terminated while the episode was saved
    if (outcome) this.finish(inst, outcome.status, outcome, false);
    else for (const start of effects) start();
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
    const id = inst.nextEventId;
    if (isActivity) {
      // The library JSON-encodes string inputs itself; the extension decodes them again.
      const inputJson = a.input === undefined ? undefined : typeof a.input === 'string' ? a.input : toJson(a.input);
      const problem = payloadProblem(`the input of activity '${name}'`, inputJson);
      if (problem) throw new BackendLimitError(problem);
      this.scheduled(inst, id, retry);
      inst.history.push(new TaskScheduled({ eventId: id, timestamp: ts, isPlayed: false, name, input: inputJson }));
      this.enqueueActivity(inst, id, name, inputJson);
    } else {
      const childId = a.instanceId || `${inst.id}:${id.toString(16).toUpperCase().padStart(4, '0')}`;
      const inputJson = a.input === undefined ? undefined : toJson(a.input);
      const problem = instanceIdProblem(childId) ?? payloadProblem(`the input of sub-orchestration '${name}'`, inputJson);
      if (problem) throw new BackendLimitError(`sub-orchestration ${name}: ${problem}`);
      this.scheduled(inst, id, retry);
      inst.history.push(new SubCreated({ eventId: id, timestamp: ts, isPlayed: false, name, input: inputJson, instanceId: childId }));
      inst.effects.push(() => this.startChild(inst, id, name, childId, inputJson));
    }
    return id;
  }

  private scheduled(inst: Instance, id: number, retry?: RetryState): void {
    inst.nextEventId = id + 1;
    inst.outstanding++;
    if (retry) inst.retries.set(id, retry);
  }

  private createTimer(inst: Instance, fireAt: Date, ts: Date): number {
    const id = inst.nextEventId++;
    inst.outstanding++;
    inst.history.push(new TimerCreated({ eventId: id, timestamp: ts, isPlayed: false, fireAt }));
    this.armTimer(inst, id, fireAt, Math.max(0, fireAt.getTime() - ts.getTime()) * this.timerScale);
    return id;
  }

  private armTimer(inst: Instance, id: number, fireAt: Date, delay: number): void {
    inst.timers.set(id, setTimeout(() => {
      inst.timers.delete(id);
      this.deliver(inst, new TimerFired({ eventId: -1, timestamp: new Date(), isPlayed: false, timerId: id, fireAt }));
    }, delay));
  }

  private cancelTimer(inst: Instance, id: number): void {
    const t = inst.timers.get(id);
    if (!t) return;
    clearTimeout(t);
    inst.timers.delete(id);
    inst.canceledTimers.add(id);
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
        const result = toJson(await this.activities.get(name)!(fromJson(inputJson), ctx));
        const problem = payloadProblem(`the result of activity '${name}'`, result);
        if (problem) throw new BackendLimitError(problem);
        event = new TaskCompleted({ eventId: -1, timestamp: new Date(), isPlayed: false, taskScheduledId: eventId, result });
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

  /** Ends an instance and tells its parent and waiters; `save` is false when the episode record already holds the outcome. */
  private finish(inst: Instance, status: 'Completed' | 'Failed' | 'Terminated', r: { output?: unknown; error?: string }, save = true): void {
    inst.status = status;
    inst.output = r.output;
    inst.error = r.error;
    inst.lastUpdatedTime = new Date();
    inst.inbox.length = 0;
    inst.effects.length = 0;
    this.clearTimers(inst);
    this.log(`[${inst.id}] ${inst.name} ${status}${r.error ? `: ${r.error}` : ''}`);
    if (save) {
      const record: InstanceRecord = { kind: 'finished', status, at: inst.lastUpdatedTime.toISOString() };
      if (r.output !== undefined) record.output = r.output;
      if (r.error !== undefined) record.error = r.error;
      this.save(inst.id, record).catch((e: unknown) => this.log(`[${inst.id}] could not save its ${status} status: ${errText(e)}`));
    }
    if (inst.parent) this.deliver(inst.parent.inst, this.completionFor(inst, inst.parent.eventId));
    const snap = this.snapshot(inst);
    for (const w of inst.waiters.splice(0)) w(snap);
  }

  /** The event a parent receives when this (finished) sub-orchestration ends. */
  private completionFor(inst: Instance, taskScheduledId: number): HistoryEvent {
    const base = { eventId: -1, timestamp: new Date(), isPlayed: false, taskScheduledId };
    if (inst.status === 'Completed') return new SubCompleted({ ...base, result: toJson(inst.output) });
    const reason = inst.status === 'Failed' ? (inst.error ?? 'failed') : `Sub-orchestration '${inst.id}' was terminated: ${String(inst.output)}`;
    return new SubFailed({ ...base, reason, details: '' });
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
