/**
 * Hand-built Durable Functions histories, replayed through durable-functions' own machinery
 * (`createOrchestrator` + `DurableOrchestrationInput` from its testing utilities), the way the
 * Azure extension drives an out-of-process orchestrator with replay schema V1.
 *
 * A `History` is written episode by episode: `episode(...)` marks everything so far as played and
 * appends OrchestratorStarted plus the new events (ExecutionStarted, completions, failures, timer
 * firings); after replaying it, the test records what the extension would write for the actions it
 * scheduled (`scheduled`, `timerCreated`, `subCreated`, each taking the next event id) and closes
 * the episode with `close()`. Event ids must agree with the library's task sequence numbers, which
 * `replay` reports so tests can check them.
 *
 * Independent of cli/host/runtime.ts, which writes its own histories: these are the reference it is judged by.
 * Both share only cli/host/durable-lib.ts, the typed handles on the library's internals.
 */
import { InvocationContext } from '@azure/functions';
import {
  ActionType, EventType, ExecutionStarted, HistoryEventOptions, OrchestratorCompleted, OrchestratorStarted, SubCompleted, SubCreated,
  TaskCompleted, TaskFailed, TaskScheduled, TimerCreated, TimerFired, flattenActions, replayEpisode, sequenceNumber,
  type Action, type HistoryEvent, type OrchestratorFn,
} from '../../cli/host/durable-lib.js';

export { ActionType, EventType, type Action, type HistoryEvent, type OrchestratorFn };

/** Options every event constructor takes: the library's own HistoryEventOptions, plus event fields. */
function opts(eventId: number, timestamp: Date, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { ...new HistoryEventOptions(eventId, timestamp, false), ...extra };
}

export class History {
  readonly events: HistoryEvent[] = [];
  /** The next event id the extension would give a scheduled task, timer or sub-orchestration. */
  nextEventId = 0;
  private clock: number;
  private open = false;

  constructor(
    readonly orchestrator: string,
    readonly input: unknown,
    readonly instanceId = 'instance-1',
    start = Date.UTC(2024, 0, 1, 12, 0, 0),
  ) {
    this.clock = start;
  }

  /** The current episode's time (OrchestratorStarted's timestamp). */
  get now(): Date {
    return new Date(this.clock);
  }

  /** Starts the orchestration: the first episode, with ExecutionStarted carrying the JSON input. */
  start(): this {
    return this.episode(new ExecutionStarted(opts(-1, this.now, { name: this.orchestrator, input: JSON.stringify(this.input) })));
  }

  /** Opens an episode: earlier events become played; OrchestratorStarted, then the new events. */
  episode(...news: HistoryEvent[]): this {
    if (this.open) throw new Error('close() the previous episode first');
    this.clock += 1000;
    for (const e of this.events) e.IsPlayed = true;
    this.events.push(new OrchestratorStarted(opts(-1, this.now)));
    for (const e of news) {
      e.Timestamp = this.now;
      this.events.push(e);
    }
    this.open = true;
    return this;
  }

  /** Ends the episode (OrchestratorCompleted), after recording what it scheduled. */
  close(): this {
    this.events.push(new OrchestratorCompleted(opts(-1, this.now)));
    this.open = false;
    return this;
  }

  /** TaskScheduled for an activity the episode asked for; returns its event id. Inputs are JSON, as the extension stores them. */
  scheduled(name: string, input: unknown): number {
    const id = this.nextEventId++;
    this.events.push(new TaskScheduled(opts(id, this.now, { name, input: JSON.stringify(input) })));
    return id;
  }

  /** TimerCreated (the extension's retry delay after a failed attempt); returns the timer id. */
  timerCreated(delayMs: number): { id: number; fireAt: Date } {
    const id = this.nextEventId++;
    const fireAt = new Date(this.clock + delayMs);
    this.events.push(new TimerCreated(opts(id, this.now, { fireAt })));
    return { id, fireAt };
  }

  subCreated(name: string, instanceId: string, input: unknown): number {
    const id = this.nextEventId++;
    this.events.push(new SubCreated(opts(id, this.now, { name, instanceId, input: JSON.stringify(input) })));
    return id;
  }

  // ---- events that open an episode ----

  completed(taskScheduledId: number, result: unknown): HistoryEvent {
    return new TaskCompleted(opts(-1, this.now, { taskScheduledId, result: JSON.stringify(result) }));
  }

  failed(taskScheduledId: number, reason: string, details = 'Error: stack trace here'): HistoryEvent {
    return new TaskFailed(opts(-1, this.now, { taskScheduledId, reason, details }));
  }

  fired(timer: { id: number; fireAt: Date }): HistoryEvent {
    return new TimerFired(opts(-1, this.now, { timerId: timer.id, fireAt: timer.fireAt }));
  }

  subCompleted(taskScheduledId: number, result: unknown): HistoryEvent {
    return new SubCompleted(opts(-1, this.now, { taskScheduledId, result: JSON.stringify(result) }));
  }
}

export interface Replay {
  isDone: boolean;
  /** Set when the orchestrator failed (the library throws OrchestrationFailureError carrying its state). */
  error?: string;
  output?: unknown;
  /** As the extension receives it: JSON round-tripped, absent when falsy. */
  customStatus?: unknown;
  /** Every action since the start, flattened from V1's list of lists (the library returns them all each episode). */
  actions: Action[];
  /** Task ids the library has handed out: the next event id it expects the extension to use. */
  sequenceNumber: number | undefined;
}

/** Replays `history` through the library, as the extension would invoke the orchestrator for the open episode. */
export async function replay(fn: OrchestratorFn, history: History): Promise<Replay> {
  const ctx = new InvocationContext({ functionName: history.orchestrator, invocationId: 'replay', logHandler: () => {} });
  const state = await replayEpisode(fn, { instanceId: history.instanceId, history: history.events, input: history.input }, ctx);
  // What the extension sees is JSON: round-trip so tests never compare against live, later-mutated objects.
  const wire = JSON.parse(JSON.stringify(state)) as typeof state;
  const r: Replay = {
    isDone: wire.isDone,
    output: wire.output,
    actions: flattenActions(wire.actions),
    sequenceNumber: sequenceNumber(ctx),
  };
  if (wire.error !== undefined) r.error = wire.error;
  if ('customStatus' in wire) r.customStatus = wire.customStatus;
  return r;
}

/** "name(input JSON)" for each action, to spot one scheduled twice. */
export function actionKeys(actions: Action[]): string[] {
  return actions.map((a) => `${ActionType[a.actionType]}:${a.functionName}:${a.instanceId ?? ''}:${JSON.stringify(a.input)}`);
}
