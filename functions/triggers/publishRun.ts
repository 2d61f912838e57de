import { type HttpRequest, type HttpResponseInit, type InvocationContext } from '@azure/functions';
import * as df from 'durable-functions';
import { z } from 'zod';
import { GATE_FILE, GATE_FORMAT, indexState, publishIndex, readGateRecord, type GateRecord } from '../../lib/eval/gate.js';
import { outputTags } from '../../lib/ops/outputs.js';
import { runClient } from '../client.js';
import { badInput, problem, readBody } from '../http.js';
import { pipeline } from '../pipeline.js';
import { DELTA_NAME } from './startDelta.js';
import * as register from '../app.js';

const Publish = z
  .object({
    /** Who asks, when the platform's authentication (x-ms-client-principal-name) does not say. */
    by: z.string().trim().min(1).max(256).optional(),
    /** Only these deltas' posted models; default: every model of the run the gate withheld. */
    deltas: z.array(z.string().regex(DELTA_NAME, 'is not a delta name')).min(1).optional(),
  })
  .strict();

/** The posted models a repostBase run wrote, from its output. */
function postedOf(output: unknown): { delta: string; output: string }[] {
  const posted = (output as { posted?: unknown } | null)?.posted;
  if (!Array.isArray(posted)) return [];
  return posted.filter((x): x is { delta: string; output: string } => typeof x?.delta === 'string' && typeof x?.output === 'string');
}

/**
 * POST /api/runs/{id}/publish: publishes the posted models of a re-post that the gate withheld (or
 * that nothing judged), writing each one's model.safetensors.index.json from the pending index, and
 * records who asked in its gate.json. Models already published are reported, not touched; so is a
 * model whose gate.json names another run (a later re-post wrote that folder again).
 */
export async function publishRun(req: HttpRequest, ctx: InvocationContext): Promise<HttpResponseInit> {
  const id = req.params.id ?? '';
  const parsed = await readBody(req, Publish, { emptyIs: {} });
  if (!parsed.ok) return parsed.response;
  const b = parsed.body;
  const by = req.headers.get('x-ms-client-principal-name')?.trim() || b.by;
  if (!by) return problem(400, 'by: say who publishes (the x-ms-client-principal-name header, or "by" in the body)', 'by');
  const s = id ? await runClient(ctx).getStatus(id) : undefined;
  if (!s) return problem(404, `no run with id "${id}"`, 'id');
  if (s.name !== 'repostBase') return problem(409, `run "${id}" is a ${s.name} run; only a re-post (repostBase) has gated models`, 'id');
  if (s.runtimeStatus !== 'Completed') return problem(409, `run "${id}" is ${s.runtimeStatus}; publish once it has completed`, 'id');
  const posted = postedOf(s.output);
  const chosen = b.deltas ?? posted.map((m) => m.delta);
  const unknown = chosen.find((d) => !posted.some((m) => m.delta === d));
  if (unknown !== undefined) return problem(400, `deltas: run "${id}" posted no model for delta "${unknown}"`, 'deltas');
  const p = pipeline();
  const tags = outputTags('model');
  const published: { delta: string; output: string }[] = [];
  const already: { delta: string; output: string }[] = [];
  const missing: { delta: string; output: string }[] = [];
  const superseded: { delta: string; output: string }[] = [];
  const at = new Date().toISOString();
  for (const m of posted.filter((x) => chosen.includes(x.delta))) {
    let ref: string;
    try {
      // The run wrote it, but the output is re-checked: publishing writes only into posted models.
      ref = p.ref('output', m.output, [p.settings.containers.postedModels]);
    } catch (e) {
      return badInput(e);
    }
    const out = p.env.resolve(ref);
    const state = await indexState(out);
    if (state === 'published') {
      already.push(m);
      continue;
    }
    if (state === 'none') {
      missing.push(m);
      continue;
    }
    // gate.json first, so a published model always says who published it.
    const prior = await readGateRecord(out);
    // A later re-post into the same folder judged (or is writing) another model: not this run's to publish.
    if (prior?.run !== undefined && prior.run !== id) {
      superseded.push(m);
      continue;
    }
    const record: GateRecord = {
      format: GATE_FORMAT,
      createdAt: prior?.createdAt ?? at,
      run: id,
      status: 'published',
      gate: prior?.gate ?? {},
      reasons: prior?.reasons ?? ['not judged: its evaluation did not finish'],
      ...(prior?.reference ? { reference: prior.reference } : {}),
      ...(prior?.lossRatio !== undefined ? { lossRatio: prior.lossRatio } : {}),
      ...(prior?.agreement !== undefined ? { agreement: prior.agreement } : {}),
      published: { by, at },
    };
    await out.writeFile(GATE_FILE, JSON.stringify(record, null, 2) + '\n', { metadata: tags });
    await publishIndex(out, tags);
    published.push(m);
  }
  ctx.log(`run ${id}: ${by} published ${published.map((m) => m.output).join(', ') || 'nothing'}`);
  return { status: 200, jsonBody: { id, by, published, alreadyPublished: already, missing, superseded } };
}

register.http('publishRun', {
  methods: ['POST'],
  route: 'runs/{id}/publish',
  authLevel: 'function',
  extraInputs: [df.input.durableClient()],
  handler: publishRun,
});
