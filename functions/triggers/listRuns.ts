import { type HttpRequest, type HttpResponseInit, type InvocationContext } from '@azure/functions';
import * as df from 'durable-functions';
import { runClient, type RunStatus } from '../client.js';
import type { RunList, RunProgress, RunSummary } from '../dashboard-api.js';
import { problem } from '../http.js';
import * as register from '../app.js';

const DAY_MS = 24 * 3600 * 1000;

/** An integer query parameter within [min, max], `fallback` when absent; a message when it is not one. */
function intParam(req: HttpRequest, name: string, fallback: number, min: number, max: number): number | string {
  const raw = req.query.get(name);
  if (raw === null || raw === '') return fallback;
  const n = Number(raw);
  return Number.isInteger(n) && n >= min && n <= max ? n : `${name} must be an integer from ${min} to ${max}`;
}

function progressOf(s: unknown): RunProgress | null {
  if (!s || typeof s !== 'object') return null;
  const p = s as Record<string, unknown>;
  const nums = ['shardsDone', 'shardsTotal', 'bytesDone', 'bytesTotal'] as const;
  if (typeof p.phase !== 'string' || nums.some((k) => typeof p[k] !== 'number')) return null;
  return { phase: p.phase, shardsDone: p.shardsDone as number, shardsTotal: p.shardsTotal as number, bytesDone: p.bytesDone as number, bytesTotal: p.bytesTotal as number };
}

/** A sub-orchestration's id is `<parent>:<label>` (functions/limits.ts childInstanceId; the local host's own too). */
function parentOf(id: string): string | null {
  const at = id.lastIndexOf(':');
  return at > 0 ? id.slice(0, at) : null;
}

function summary(s: RunStatus): RunSummary {
  const failed = s.runtimeStatus === 'Failed';
  return {
    id: s.instanceId,
    name: s.name,
    status: s.runtimeStatus,
    parentId: parentOf(s.instanceId),
    createdTime: s.createdTime?.toISOString() ?? null,
    lastUpdatedTime: s.lastUpdatedTime?.toISOString() ?? null,
    progress: progressOf(s.customStatus),
    // Durable puts the failure text (message, then a stack) in the output.
    error: failed ? String(s.output ?? 'failed').split('\n')[0] : null,
  };
}

/**
 * GET /api/runs[?days=7&limit=100]: the runs created in the last `days` days with their progress,
 * newest first, each followed by its sub-orchestrations.
 */
export async function listRuns(req: HttpRequest, ctx: InvocationContext): Promise<HttpResponseInit> {
  const days = intParam(req, 'days', 7, 1, 90);
  if (typeof days === 'string') return problem(400, days, 'days');
  const limit = intParam(req, 'limit', 100, 1, 500);
  if (typeof limit === 'string') return problem(400, limit, 'limit');
  const found = (await runClient(ctx).list({ createdFrom: new Date(Date.now() - days * DAY_MS) })).map(summary);
  const newest = (a: RunSummary, b: RunSummary) => (b.createdTime ?? '').localeCompare(a.createdTime ?? '') || a.id.localeCompare(b.id);
  const ids = new Set(found.map((r) => r.id));
  const children = new Map<string, RunSummary[]>();
  for (const r of found) if (r.parentId && ids.has(r.parentId)) children.set(r.parentId, [...(children.get(r.parentId) ?? []), r]);
  const ordered: RunSummary[] = [];
  const add = (r: RunSummary) => {
    ordered.push(r);
    for (const c of (children.get(r.id) ?? []).sort((a, b) => -newest(a, b))) add(c);
  };
  for (const r of found.filter((x) => !x.parentId || !ids.has(x.parentId)).sort(newest)) add(r);
  const body: RunList = { runs: ordered.slice(0, limit), truncated: ordered.length > limit };
  return { status: 200, headers: { 'cache-control': 'no-store' }, jsonBody: body };
}

register.http('listRuns', {
  methods: ['GET'],
  route: 'runs',
  authLevel: 'function',
  extraInputs: [df.input.durableClient()],
  handler: listRuns,
});
