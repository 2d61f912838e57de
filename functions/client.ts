import * as df from 'durable-functions';
import type { InvocationContext } from '@azure/functions';

export type RunStatusName = 'Pending' | 'Running' | 'Completed' | 'Failed' | 'Terminated';

export interface RunStatus {
  instanceId: string;
  name: string;
  runtimeStatus: RunStatusName;
  customStatus: unknown;
  output: unknown;
  input: unknown;
  createdTime?: Date;
  lastUpdatedTime?: Date;
}

/** The two durable-client calls the triggers make; the local host supplies its own. */
export interface RunClient {
  startNew(orchestrator: string, opts: { instanceId: string; input: unknown }): Promise<string>;
  getStatus(instanceId: string): Promise<RunStatus | undefined>;
  /** Every instance created at or after `createdFrom`, sub-orchestrations included (the dashboard's runs list). */
  list(filter: { createdFrom: Date }): Promise<RunStatus[]>;
}

let provider: ((ctx: InvocationContext) => RunClient) | null = null;

/** Used by `paramdelta serve` to route triggers to its in-process runtime. */
export function setRunClientProvider(p: ((ctx: InvocationContext) => RunClient) | null): void {
  provider = p;
}

const STATUS_NAMES: Record<string, RunStatusName> = {
  Pending: 'Pending',
  Running: 'Running',
  ContinuedAsNew: 'Running',
  Completed: 'Completed',
  Failed: 'Failed',
  Canceled: 'Terminated',
  Terminated: 'Terminated',
  Suspended: 'Running',
};

export function runClient(ctx: InvocationContext): RunClient {
  if (provider) return provider(ctx);
  const client = df.getClient(ctx);
  const status = (s: df.DurableOrchestrationStatus): RunStatus => ({
    instanceId: s.instanceId,
    name: s.name,
    runtimeStatus: STATUS_NAMES[String(s.runtimeStatus)] ?? 'Running',
    customStatus: s.customStatus,
    output: s.output,
    input: s.input,
    createdTime: s.createdTime ? new Date(s.createdTime) : undefined,
    lastUpdatedTime: s.lastUpdatedTime ? new Date(s.lastUpdatedTime) : undefined,
  });
  return {
    startNew: (name, opts) => client.startNew(name, opts),
    async getStatus(id) {
      try {
        const s = await client.getStatus(id);
        return s ? status(s) : undefined;
      } catch (e) {
        if (/HTTP 404/.test((e as Error).message)) return undefined;
        throw e;
      }
    },
    // The extension's instance query (it follows continuation tokens itself).
    list: async ({ createdFrom }) => (await client.getStatusBy({ createdTimeFrom: createdFrom })).map(status),
  };
}

/**
 * Starts a run unless one with this id is already Pending or Running (or, with `once`, has
 * completed: a repeated event for the same upload); returns whether it started.
 */
export async function startOnce(client: RunClient, orchestrator: string, instanceId: string, input: unknown, opts: { once?: boolean } = {}): Promise<boolean> {
  const existing = await client.getStatus(instanceId);
  if (existing && (existing.runtimeStatus === 'Pending' || existing.runtimeStatus === 'Running')) return false;
  if (existing && opts.once && existing.runtimeStatus === 'Completed') return false;
  try {
    await client.startNew(orchestrator, { instanceId, input });
    return true;
  } catch (e) {
    // Two triggers raced to the same id: the other one started it.
    const now = await client.getStatus(instanceId);
    if (now && (now.runtimeStatus === 'Pending' || now.runtimeStatus === 'Running')) return false;
    throw e;
  }
}
