/**
 * The parts of durable-functions' replay machinery that the local host drives (and the orchestrator
 * tests replay with). The library ships no typings for `lib/src`, so this module declares what is
 * used; package.json pins the version these internals were read from.
 */
import { createRequire } from 'node:module';
import type { InvocationContext } from '@azure/functions';

export interface HistoryEvent {
  EventType: number;
  EventId: number;
  IsPlayed: boolean;
  Timestamp: Date;
  [key: string]: unknown;
}
type EventCtor = new (opts: Record<string, unknown>) => HistoryEvent;

/** One action as the library returns it (schema V1: CallActivityWithRetry, CallSubOrchestratorWithRetry, ...). */
export interface Action {
  actionType: number;
  functionName?: string;
  input?: unknown;
  instanceId?: string;
  fireAt?: Date;
  isCanceled?: boolean;
  retryOptions?: { firstRetryIntervalInMilliseconds: number; maxNumberOfAttempts: number; backoffCoefficient?: number; maxRetryIntervalInMilliseconds?: number };
  compoundActions?: Action[];
}

export interface OrchestratorState {
  isDone: boolean;
  actions: unknown[];
  output?: unknown;
  error?: string;
  customStatus?: unknown;
}

export type OrchestratorFn = (ctx: any) => Generator<any, any, any>;
type Listener = (trigger: unknown, ctx: InvocationContext) => Promise<OrchestratorState>;

const requireCjs = createRequire(import.meta.url);
const LIB = 'durable-functions/lib/src/';
const { createOrchestrator, DurableOrchestrationInput } = requireCjs(`${LIB}util/testingUtils`) as {
  createOrchestrator: (fn: OrchestratorFn) => Listener;
  DurableOrchestrationInput: new (...args: unknown[]) => object;
};
export const { HistoryEventOptions } = requireCjs(`${LIB}history/HistoryEventOptions`) as {
  HistoryEventOptions: new (eventId: number, timestamp: Date, isPlayed?: boolean) => { eventId: number; timestamp: Date; isPlayed: boolean };
};
const ReplaySchemaV1 = (requireCjs(`${LIB}orchestrations/ReplaySchema`) as { ReplaySchema: { V1: number } }).ReplaySchema.V1;
export const ActionType = (requireCjs(`${LIB}actions/ActionType`) as { ActionType: Record<string, number> & Record<number, string> }).ActionType;
export const EventType = (requireCjs(`${LIB}history/HistoryEventType`) as { HistoryEventType: Record<string, number> & Record<number, string> })
  .HistoryEventType;

const ev = (name: string): EventCtor => (requireCjs(`${LIB}history/${name}`) as Record<string, EventCtor>)[name]!;
export const OrchestratorStarted = ev('OrchestratorStartedEvent');
export const OrchestratorCompleted = ev('OrchestratorCompletedEvent');
export const ExecutionStarted = ev('ExecutionStartedEvent');
export const TaskScheduled = ev('TaskScheduledEvent');
export const TaskCompleted = ev('TaskCompletedEvent');
export const TaskFailed = ev('TaskFailedEvent');
export const TimerCreated = ev('TimerCreatedEvent');
export const TimerFired = ev('TimerFiredEvent');
export const SubCreated = ev('SubOrchestrationInstanceCreatedEvent');
export const SubCompleted = ev('SubOrchestrationInstanceCompletedEvent');
export const SubFailed = ev('SubOrchestrationInstanceFailedEvent');

/** Every action in the library's answer: V1 returns a list of lists; WhenAll/WhenAny (V2+) nest. */
export function flattenActions(actions: unknown, out: Action[] = []): Action[] {
  if (Array.isArray(actions)) for (const a of actions) flattenActions(a, out);
  else if (actions && typeof actions === 'object') {
    const a = actions as Action;
    if (a.compoundActions) flattenActions(a.compoundActions, out);
    else out.push(a);
  }
  return out;
}

const FAILURE_LABEL = '$OutOfProcData$:';

export interface Episode {
  instanceId: string;
  history: HistoryEvent[];
  input: unknown;
  parentInstanceId?: string;
}

/**
 * Replays `episode.history` through the library, as the extension invokes an orchestrator (replay
 * schema V1). A failed orchestrator comes back as its state with `error` set (and only then): the
 * library throws an OrchestrationFailureError carrying that state as JSON after a label.
 */
export async function replayEpisode(fn: OrchestratorFn, episode: Episode, ctx: InvocationContext): Promise<OrchestratorState> {
  const trigger = new DurableOrchestrationInput(
    episode.instanceId, episode.history, episode.input, undefined, undefined, undefined,
    ReplaySchemaV1, false, episode.parentInstanceId ?? '',
  );
  try {
    return await createOrchestrator(fn)(trigger, ctx);
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    const at = msg.indexOf(FAILURE_LABEL);
    if (at < 0) throw e;
    const state = JSON.parse(msg.slice(at + FAILURE_LABEL.length)) as OrchestratorState;
    return { ...state, error: state.error ?? 'orchestrator threw a non-Error value' };
  }
}

/** The next task id the library expects the extension to use, read from the invocation's executor. */
export function sequenceNumber(ctx: InvocationContext): number | undefined {
  const seq = (ctx as unknown as { df?: { taskOrchestratorExecutor?: { sequenceNumber?: unknown } } }).df?.taskOrchestratorExecutor?.sequenceNumber;
  return typeof seq === 'number' ? seq : undefined;
}
