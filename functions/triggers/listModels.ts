import { type HttpRequest, type HttpResponseInit, type InvocationContext } from '@azure/functions';
import { MODEL_INDEX } from '../../lib/format/checkpoint.js';
import { MODEL_FORMAT, MODEL_MANIFEST, type ModelManifest } from '../../lib/ops/manifest.js';
import { EVAL_REPORT, type EvalReport } from '../../lib/eval/report.js';
import type { EvalFigures, ModelList, PostedModel } from '../dashboard-api.js';
import { pipeline } from '../pipeline.js';
import * as register from '../app.js';

/** The most models one answer lists (each costs a read or two). */
const MAX_MODELS = 200;
const READS_AT_ONCE = 8;

const num = (x: unknown): number | null => (typeof x === 'number' && Number.isFinite(x) ? x : null);

function figures(r: Partial<EvalReport>): EvalFigures | null {
  const meanLoss = num(r.model?.meanLoss);
  const perplexity = num(r.model?.perplexity);
  if (meanLoss === null || perplexity === null) return null;
  const ref = r.reference;
  return {
    meanLoss,
    perplexity,
    agreement: num(r.agreement),
    kl: num(r.kl),
    lossRatio: num(r.lossRatio),
    reference: ref && typeof ref.ref === 'string' && num(ref.meanLoss) !== null ? { ref: ref.ref, role: ref.role ?? null, meanLoss: ref.meanLoss } : null,
    createdAt: typeof r.createdAt === 'string' ? r.createdAt : null,
  };
}

/**
 * GET /api/models: the models paramdelta wrote into the posted-models container (folders holding
 * its paramdelta.json), newest first, with the figures of paramdelta-eval.json where one is beside them.
 */
export async function listModels(_req: HttpRequest, _ctx: InvocationContext): Promise<HttpResponseInit> {
  const p = pipeline();
  await p.ready();
  const containerName = p.settings.containers.postedModels;
  // One flat listing finds every model folder, however deep (re-posts write <base>/<delta>).
  const folders = new Map<string, Set<string>>();
  const wanted = new Set([MODEL_MANIFEST, MODEL_INDEX, EVAL_REPORT]);
  for await (const b of p.service.getContainerClient(containerName).listBlobsFlat()) {
    const at = b.name.lastIndexOf('/');
    const file = b.name.slice(at + 1);
    if (!wanted.has(file)) continue;
    const folder = at < 0 ? '' : b.name.slice(0, at);
    folders.set(folder, (folders.get(folder) ?? new Set()).add(file));
  }
  const read = async (folder: string, files: Set<string>): Promise<PostedModel | null> => {
    const ref = folder ? `${containerName}/${folder}` : containerName;
    const store = p.env.resolve(ref);
    let manifest: Partial<ModelManifest>;
    try {
      manifest = JSON.parse(await store.readText(MODEL_MANIFEST)) as Partial<ModelManifest>;
    } catch {
      return null; // not readable as paramdelta's: not listed
    }
    if (manifest.format !== MODEL_FORMAT) return null;
    let evaluation: EvalFigures | null = null;
    if (files.has(EVAL_REPORT)) {
      try {
        evaluation = figures(JSON.parse(await store.readText(EVAL_REPORT)) as Partial<EvalReport>);
      } catch {
        evaluation = null; // an unreadable report shows as none
      }
    }
    return {
      ref,
      createdAt: typeof manifest.createdAt === 'string' ? manifest.createdAt : null,
      base: typeof manifest.base === 'string' ? manifest.base : null,
      deltas: Array.isArray(manifest.deltas) ? manifest.deltas.filter((d) => typeof d?.ref === 'string').map((d) => ({ ref: d.ref, scale: Number(d.scale) })) : [],
      complete: files.has(MODEL_INDEX),
      eval: evaluation,
    };
  };
  // A few reads at a time: each model costs a request or two.
  const candidates = [...folders].filter(([, files]) => files.has(MODEL_MANIFEST));
  const models: PostedModel[] = [];
  for (let i = 0; i < candidates.length; i += READS_AT_ONCE) {
    const batch = await Promise.all(candidates.slice(i, i + READS_AT_ONCE).map(([folder, files]) => read(folder, files)));
    for (const m of batch) if (m) models.push(m);
  }
  models.sort((a, b) => (b.createdAt ?? '').localeCompare(a.createdAt ?? '') || a.ref.localeCompare(b.ref));
  const body: ModelList = { models: models.slice(0, MAX_MODELS), truncated: models.length > MAX_MODELS };
  return { status: 200, headers: { 'cache-control': 'no-store' }, jsonBody: body };
}

register.http('listModels', { methods: ['GET'], route: 'models', authLevel: 'function', handler: listModels });
