import { type HttpRequest, type HttpResponseInit, type InvocationContext } from '@azure/functions';
import * as df from 'durable-functions';
import { runClient } from '../client.js';
import { problem } from '../http.js';
import * as register from '../app.js';

/** GET /api/runs/{id}: a run's status, progress, output and error. */
export async function getRun(req: HttpRequest, ctx: InvocationContext): Promise<HttpResponseInit> {
  const id = req.params.id ?? '';
  const s = id ? await runClient(ctx).getStatus(id) : undefined;
  if (!s) return problem(404, `no run with id "${id}"`, 'id');
  const failed = s.runtimeStatus === 'Failed';
  return {
    status: 200,
    jsonBody: {
      id,
      status: s.runtimeStatus,
      progress: s.customStatus ?? null,
      output: failed ? null : (s.output ?? null),
      // Durable puts the failure text (message, then a stack) in the output.
      error: failed ? String(s.output ?? 'failed').split('\n')[0] : null,
    },
  };
}

register.http('getRun', {
  methods: ['GET'],
  route: 'runs/{id}',
  authLevel: 'function',
  extraInputs: [df.input.durableClient()],
  handler: getRun,
});
