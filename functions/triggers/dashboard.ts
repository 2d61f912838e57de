import { type HttpRequest, type HttpResponseInit, type InvocationContext } from '@azure/functions';
import { readWebPage } from '../../lib/assets.js';
import { problem } from '../http.js';
import * as register from '../app.js';

/**
 * The page may run inline script and style only, and talk to this origin only; it is never framed,
 * and the key in its URL (?code=) is never sent on as a referrer.
 */
const HEADERS = {
  'content-type': 'text/html; charset=utf-8',
  'cache-control': 'no-store',
  'content-security-policy': "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'referrer-policy': 'no-referrer',
  'x-content-type-options': 'nosniff',
};

/** GET /api/dashboard: the dashboard, one self-contained page (web/, built into dist/web) that reads the API beside it. */
export async function dashboard(_req: HttpRequest, _ctx: InvocationContext): Promise<HttpResponseInit> {
  let html: string;
  try {
    html = await readWebPage('dashboard');
  } catch (e) {
    return problem(500, (e as Error).message);
  }
  return { status: 200, headers: HEADERS, body: html };
}

register.http('dashboard', { methods: ['GET'], route: 'dashboard', authLevel: 'function', handler: dashboard });
