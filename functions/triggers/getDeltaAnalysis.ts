import { type HttpRequest, type HttpResponseInit, type InvocationContext } from '@azure/functions';
import { ANALYSIS_FILE, analysisSchema } from '../../lib/analyze/report.js';
import { problem } from '../http.js';
import { pipeline } from '../pipeline.js';
import { DELTA_NAME } from './startDelta.js';
import * as register from '../app.js';

/** GET /api/deltas/{name}/analysis: the delta's analysis.json (lib/analyze/report.ts), 404 while it has none. */
export async function getDeltaAnalysis(req: HttpRequest, _ctx: InvocationContext): Promise<HttpResponseInit> {
  const name = req.params.name ?? '';
  if (!DELTA_NAME.test(name)) return problem(400, `"${name}" is not a delta name`, 'name');
  const p = pipeline();
  await p.ready();
  const ref = `${p.settings.containers.deltas}/${name}`;
  const store = p.env.resolve(ref);
  if (!(await store.exists(ANALYSIS_FILE))) return problem(404, `delta "${name}" has no ${ANALYSIS_FILE} (${ref})`, 'name');
  let json: unknown;
  try {
    json = JSON.parse(await store.readText(ANALYSIS_FILE));
  } catch (e) {
    return problem(500, `${ref}/${ANALYSIS_FILE} is not valid JSON: ${(e as Error).message}`);
  }
  const r = analysisSchema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0];
    return problem(500, `${ref}/${ANALYSIS_FILE}: field "${issue.path.join('.')}": ${issue.message}`);
  }
  return { status: 200, headers: { 'cache-control': 'no-store' }, jsonBody: r.data };
}

register.http('getDeltaAnalysis', { methods: ['GET'], route: 'deltas/{name}/analysis', authLevel: 'function', handler: getDeltaAnalysis });
