import { type HttpRequest, type HttpResponseInit, type InvocationContext } from '@azure/functions';
import { listDeltas as readRegistry, type RegisteredDelta } from '../../lib/ops/registry.js';
import { DTYPE_SIZES } from '../../lib/format/dtype.js';
import type { DeltaList, DeltaSummary } from '../dashboard-api.js';
import { pipeline } from '../pipeline.js';
import * as register from '../app.js';

function summary(d: RegisteredDelta): DeltaSummary {
  const m = d.manifest;
  const dtypes: Record<string, number> = {};
  let parameters = 0;
  let rawBytes = 0;
  for (const t of Object.values(m.tensors)) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    parameters += n;
    rawBytes += n * DTYPE_SIZES[t.dtype];
    dtypes[t.dtype] = (dtypes[t.dtype] ?? 0) + n;
  }
  const storedBytes = m.shards.reduce((a, s) => a + s.bytes, 0);
  return {
    name: d.name,
    ref: d.ref,
    autoApply: d.autoApply,
    // The quality gate's probe set and bounds, when registered (else the built-in set and the default gate).
    probes: d.registration.probes ?? null,
    gate: d.registration.gate ?? null,
    createdAt: m.createdAt,
    tool: m.tool,
    dtypePolicy: m.dtypePolicy,
    layout: m.layout,
    base: { config: m.base.config, signature: m.base.signature },
    post: { config: m.post.config, signature: m.post.signature },
    tensors: Object.keys(m.tensors).length,
    parameters,
    rawBytes,
    bytes: storedBytes,
    storedBytes,
    dtypes,
    files: m.files.map((f) => f.file),
  };
}

/** GET /api/deltas: the registered deltas, read from their manifests. */
export async function listDeltas(_req: HttpRequest, _ctx: InvocationContext): Promise<HttpResponseInit> {
  const p = pipeline();
  await p.ready();
  const { deltas, skipped } = await readRegistry(p.deltas(), p.env.resolve);
  const body: DeltaList = { deltas: deltas.map(summary), incomplete: skipped };
  return { status: 200, jsonBody: body };
}

register.http('listDeltas', { methods: ['GET'], route: 'deltas', authLevel: 'function', handler: listDeltas });
