import { type HttpRequest, type HttpResponseInit, type InvocationContext } from '@azure/functions';
import * as df from 'durable-functions';
import { z } from 'zod';
import type { ApplyDeltasInput } from '../contracts.js';
import { runClient, startOnce } from '../client.js';
import { accepted, badInput, problem, readBody, runId } from '../http.js';
import { pipeline } from '../pipeline.js';
import { assertBlobOutputApart } from '../../lib/storage/overlap.js';
import { DELTA_NAME } from './startDelta.js';
import { checkFusion, FUSION_METHODS } from '../../lib/fusion/options.js';
import * as register from '../app.js';

const StartModel = z
  .object({
    base: z.string().min(1),
    deltas: z
      .array(z.object({ name: z.string().regex(DELTA_NAME, 'is not a delta name'), scale: z.number().finite().default(1) }).strict())
      .min(1, 'name at least one delta'),
    output: z.string().min(1),
    method: z.enum(FUSION_METHODS).optional(),
    density: z.number().optional(),
    gamma: z.number().optional(),
    lambda: z.number().optional(),
    /** A u64: a JSON integer, or its decimal string for values past 2^53. */
    seed: z.union([z.number().int().nonnegative(), z.string().regex(/^[0-9]{1,20}$/, 'is not a u64 decimal string')]).optional(),
    normalize: z.boolean().optional(),
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
    // DARE's seed must be stated: the request alone then says which numbers the run draws.
    if (b.method?.startsWith('dare') && b.seed === undefined) return problem(400, `seed: required for method ${b.method}`, 'seed');
    const fusion = checkFusion({ method: b.method, density: b.density, gamma: b.gamma, lambda: b.lambda, seed: b.seed, normalize: b.normalize });
    input = {
      base: p.ref('base', b.base),
      deltas: b.deltas.map((d) => ({ ref: `${c.deltas}/${d.name}`, scale: d.scale })),
      output: p.ref('output', b.output, [c.models, c.postedModels]),
      ...(fusion ?? {}),
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
