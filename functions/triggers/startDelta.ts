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
import { gateSchema } from '../../lib/eval/gate.js';
import { InputError } from '../../lib/errors.js';
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
    /** A probe set to evaluate re-posted models on: a token file (JSON array of arrays) or a text file, in the containers. */
    probes: z.string().min(1).optional(),
    /** This delta's quality gate; without one, the default gate (PARAMDELTA_GATE) applies. */
    gate: gateSchema.optional(),
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
      ...(b.probes !== undefined ? { probes: p.ref('probes', b.probes) } : {}),
      ...(b.gate !== undefined ? { gate: b.gate } : {}),
      output: `${p.settings.containers.deltas}/${b.name}`,
    };
    // The delta's folder comes from its name: it must not be, hold or lie in an input either.
    assertBlobOutputApart({ label: 'name', ref: input.output }, [
      { label: 'base', ref: input.base },
      { label: 'post', ref: input.post },
    ]);
    if (input.probes !== undefined) await probesFileExists(input.probes);
  } catch (e) {
    return badInput(e);
  }
  const extra = input.probes !== undefined || input.gate !== undefined ? [input.probes ?? null, input.gate ?? null] : [];
  const id = runId('delta', b.name, [input.base, input.post, input.deltaDtype, input.deltaFormat, input.autoApply, ...extra]);
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

/** The probe set must name a file that is there now (a folder, or nothing, is refused naming the field). */
async function probesFileExists(ref: string): Promise<void> {
  if (ref.startsWith('hf://')) throw new InputError('probes: name a file in the storage account, not a Hub repository');
  const cut = ref.lastIndexOf('/');
  const p = pipeline();
  await p.ready();
  if (cut <= 0 || !(await p.env.resolve(ref.slice(0, cut)).exists(ref.slice(cut + 1)))) {
    throw new InputError(`probes: ${ref} is not a file (a token JSON or text file in the storage account)`);
  }
}

register.http('startDelta', {
  methods: ['POST'],
  route: 'deltas',
  authLevel: 'function',
  extraInputs: [df.input.durableClient()],
  handler: startDelta,
});
