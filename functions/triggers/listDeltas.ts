import { type HttpRequest, type HttpResponseInit, type InvocationContext } from '@azure/functions';
import { listDeltas as readRegistry } from '../../lib/ops/registry.js';
import { pipeline } from '../pipeline.js';
import * as register from '../app.js';

/** GET /api/deltas: the registered deltas, read from their manifests. */
export async function listDeltas(_req: HttpRequest, _ctx: InvocationContext): Promise<HttpResponseInit> {
  const p = pipeline();
  await p.ready();
  const { deltas, skipped } = await readRegistry(p.deltas(), p.env.resolve);
  return {
    status: 200,
    jsonBody: {
      deltas: deltas.map((d) => ({
        name: d.name,
        ref: d.ref,
        autoApply: d.autoApply,
        // The quality gate's probe set and bounds, when registered (else the built-in set and the default gate).
        probes: d.registration.probes ?? null,
        gate: d.registration.gate ?? null,
        createdAt: d.manifest.createdAt,
        tool: d.manifest.tool,
        dtypePolicy: d.manifest.dtypePolicy,
        base: { config: d.manifest.base.config, signature: d.manifest.base.signature },
        post: { config: d.manifest.post.config, signature: d.manifest.post.signature },
        tensors: Object.keys(d.manifest.tensors).length,
        bytes: d.manifest.shards.reduce((a, s) => a + s.bytes, 0),
        files: d.manifest.files.map((f) => f.file),
      })),
      incomplete: skipped,
    },
  };
}

register.http('listDeltas', { methods: ['GET'], route: 'deltas', authLevel: 'function', handler: listDeltas });
