import { type HttpRequest, type HttpResponseInit, type InvocationContext } from '@azure/functions';
import * as df from 'durable-functions';
import { z } from 'zod';
import { DELTA_DTYPE_POLICIES } from '../../lib/ops/plan.js';
import { DEFAULT_DELTA_FORMAT, DELTA_FORMATS, DELTA_MANIFEST } from '../../lib/ops/manifest.js';
import type { ComputeDeltaInput } from '../contracts.js';
import { runClient, startOnce } from '../client.js';
import { accepted, badInput, problem, readBody, runId } from '../http.js';
import { pipeline } from '../pipeline.js';
import { assertBlobOutputApart } from '../../lib/storage/overlap.js';
import * as register from '../app.js';

export const DELTA_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;

const StartDelta = z
  .object({
    name: z.string().regex(DELTA_NAME, 'must be 1-63 lowercase letters, digits, ".", "_" or "-", starting with a letter or digit'),
    base: z.string().min(1),
    post: z.string().min(1),
    deltaDtype: z.enum(DELTA_DTYPE_POLICIES as ['auto', 'f32', 'f64', 'bf16', 'f16']).default('auto'),
    /** compact (chunked, compressed, lossless) or safetensors (plain tensors). */
    deltaFormat: z.enum(DELTA_FORMATS).default(DEFAULT_DELTA_FORMAT),
    autoApply: z.boolean().default(true),
    /** Allow replacing a complete delta of the same name. */
    replace: z.boolean().default(false),
  })
  .strict();

/** POST /api/deltas: compute Δ = post − base into deltas/<name>/ and register it. */
export async function startDelta(req: HttpRequest, ctx: InvocationContext): Promise<HttpResponseInit> {
  const parsed = await readBody(req, StartDelta);
  if (!parsed.ok) return parsed.response;
  const b = parsed.body;
  const p = pipeline();
  let input: ComputeDeltaInput;
  try {
    input = {
      name: b.name,
      base: p.ref('base', b.base),
      post: p.ref('post', b.post),
      deltaDtype: b.deltaDtype,
      deltaFormat: b.deltaFormat,
      autoApply: b.autoApply,
      output: `${p.settings.containers.deltas}/${b.name}`,
    };
    // The delta's folder comes from its name: it must not be, hold or lie in an input either.
    assertBlobOutputApart({ label: 'name', ref: input.output }, [
      { label: 'base', ref: input.base },
      { label: 'post', ref: input.post },
    ]);
  } catch (e) {
    return badInput(e);
  }
  const id = runId('delta', b.name, [input.base, input.post, input.deltaDtype, input.deltaFormat, input.autoApply]);
  const client = runClient(ctx);
  const running = await client.getStatus(id);
  const busy = running && (running.runtimeStatus === 'Pending' || running.runtimeStatus === 'Running');
  if (!busy && !b.replace) {
    await p.ready();
    if (await p.env.resolve(input.output).exists(DELTA_MANIFEST)) {
      return problem(409, `a delta named "${b.name}" already exists; send "replace": true to recompute it`, 'name');
    }
  }
  await startOnce(client, 'computeDelta', id, input);
  return accepted(req, id);
}

register.http('startDelta', {
  methods: ['POST'],
  route: 'deltas',
  authLevel: 'function',
  extraInputs: [df.input.durableClient()],
  handler: startDelta,
});
