// The dashboard's runs list over a stand-in durable client: what the real host's getStatusBy and
// serve's runtime both feed it (functions/client.ts RunClient.list).
import { describe, it, expect, afterEach } from 'vitest';
import { HttpRequest, InvocationContext } from '@azure/functions';
import { setRunClientProvider, type RunClient, type RunStatus } from '../functions/client.js';
import { listRuns } from '../functions/triggers/listRuns.js';

const ctx = () => new InvocationContext({ functionName: 'listRuns', invocationId: 'x', logHandler: () => {} });
const get = (query = '') => listRuns(new HttpRequest({ method: 'GET', url: `http://localhost/api/runs${query}` }), ctx());

function run(id: string, name: string, minutesAgo: number, extra: Partial<RunStatus> = {}): RunStatus {
  const t = new Date(Date.UTC(2026, 0, 1) - minutesAgo * 60_000);
  return { instanceId: id, name, runtimeStatus: 'Completed', customStatus: null, output: null, input: null, createdTime: t, lastUpdatedTime: t, ...extra };
}

afterEach(() => setRunClientProvider(null));

describe('GET /api/runs', () => {
  it('lists newest first, each run followed by its sub-orchestrations, with progress and the first line of an error', async () => {
    const progress = { phase: 'shards', shardsDone: 1, shardsTotal: 3, bytesDone: 10, bytesTotal: 30 };
    const all = [
      run('delta-a-1', 'computeDelta', 30),
      run('repost-b-2', 'repostBase', 10, { runtimeStatus: 'Running', customStatus: { phase: 'reposting', shardsDone: 0, shardsTotal: 2, bytesDone: 0, bytesTotal: 0 } }),
      run('repost-b-2:chat-abc', 'applyDeltas', 9, { runtimeStatus: 'Running', customStatus: progress }),
      run('repost-b-2:code-def', 'applyDeltas', 8, { runtimeStatus: 'Failed', output: 'shard 2 failed\n    at stack', customStatus: 'not progress' }),
      run('model-c-3', 'applyDeltas', 5),
    ];
    let asked: Date | undefined;
    const client: RunClient = {
      getStatus: async () => undefined,
      startNew: async () => '',
      list: async ({ createdFrom }) => { asked = createdFrom; return all; },
    };
    setRunClientProvider(() => client);
    const before = Date.now();
    const r = await get('?days=2');
    expect(r.status).toBe(200);
    // Two days back from now.
    expect(Math.abs(before - 2 * 86_400_000 - asked!.getTime())).toBeLessThan(5_000);
    const body = r.jsonBody as { runs: any[]; truncated: boolean };
    expect(body.runs.map((x) => [x.id, x.parentId])).toEqual([
      ['model-c-3', null],
      ['repost-b-2', null],
      ['repost-b-2:chat-abc', 'repost-b-2'],
      ['repost-b-2:code-def', 'repost-b-2'],
      ['delta-a-1', null],
    ]);
    expect(body.runs[2]).toMatchObject({ status: 'Running', progress, error: null, createdTime: all[2].createdTime!.toISOString() });
    expect(body.runs[3]).toMatchObject({ status: 'Failed', progress: null, error: 'shard 2 failed' });
    expect(body.truncated).toBe(false);

    const cut = (await get('?limit=2')).jsonBody as { runs: any[]; truncated: boolean };
    expect(cut.runs.map((x) => x.id)).toEqual(['model-c-3', 'repost-b-2']);
    expect(cut.truncated).toBe(true);
  });

  it('answers 400 naming the parameter for days or limit out of range', async () => {
    setRunClientProvider(() => ({ getStatus: async () => undefined, startNew: async () => '', list: async () => [] }));
    for (const [q, field] of [['?days=0', 'days'], ['?days=x', 'days'], ['?limit=501', 'limit'], ['?limit=1.5', 'limit']]) {
      const r = await get(q);
      expect(r.status, q).toBe(400);
      expect((r.jsonBody as { field: string }).field, q).toBe(field);
    }
  });
});
