import { type HttpRequest, type HttpResponseInit, type InvocationContext } from '@azure/functions';
import * as df from 'durable-functions';
import { z } from 'zod';
import type { ApplyDeltasInput } from '../contracts.js';
import { runClient, startOnce } from '../client.js';
import { accepted, badInput, readBody, runId } from '../http.js';
import { pipeline } from '../pipeline.js';
import { assertBlobOutputApart } from '../../lib/storage/overlap.js';
import { DELTA_NAME } from './startDelta.js';
import * as register from '../app.js';

const StartModel = z
  .object({
    base: z.string().min(1),
    deltas: z
      .array(z.object({ name: z.string().regex(DELTA_NAME, 'is not a delta name'), scale: z.number().finite().default(1) }).strict())
      .min(1, 'name at least one delta'),
    output: z.string().min(1),
  })
  .strict();

/** POST /api/models: write base + Σ scale·Δ as a complete model folder at `output`. */
export async function startModel(req: HttpRequest, ctx: InvocationContext): Promise<HttpResponseInit> {
  const parsed = await readBody(req, StartModel);
  if (!parsed.ok) return parsed.response;
  const b = parsed.body;
  const p = pipeline();
  const c = p.settings.containers;
  let input: ApplyDeltasInput;
  try {
    input = {
      base: p.ref('base', b.base),
      deltas: b.deltas.map((d) => ({ ref: `${c.deltas}/${d.name}`, scale: d.scale })),
      output: p.ref('output', b.output, [c.models, c.postedModels]),
    };
    // Before a run exists: an output on, in or around an input, or a whole container, is refused.
    assertBlobOutputApart({ label: 'output', ref: input.output }, [
      { label: 'base', ref: input.base },
      ...input.deltas.map((d, i) => ({ label: `deltas.${i}`, ref: d.ref })),
    ]);
  } catch (e) {
    return badInput(e);
  }
  const id = runId('model', input.output.split('/').pop() ?? '', input);
  await startOnce(runClient(ctx), 'applyDeltas', id, input);
  return accepted(req, id);
}

register.http('startModel', {
  methods: ['POST'],
  route: 'models',
  authLevel: 'function',
  extraInputs: [df.input.durableClient()],
  handler: startModel,
});
