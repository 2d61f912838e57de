import type { HttpRequest, HttpResponseInit } from '@azure/functions';
import { createHash } from 'node:crypto';
import type { z } from 'zod';
import { InputError } from '../lib/errors.js';

/** An RFC 9457 problem body; `field` names the request field at fault. */
export function problem(status: number, detail: string, field?: string): HttpResponseInit {
  const titles: Record<number, string> = { 400: 'Bad request', 404: 'Not found', 409: 'Conflict', 500: 'Internal error' };
  return {
    status,
    headers: { 'content-type': 'application/problem+json' },
    jsonBody: { type: 'about:blank', title: titles[status] ?? 'Error', status, detail, ...(field ? { field } : {}) },
  };
}

/** Parses a JSON body against a schema, or answers 400 naming the field. */
export async function readBody<T extends z.ZodType>(req: HttpRequest, schema: T): Promise<{ ok: true; body: z.infer<T> } | { ok: false; response: HttpResponseInit }> {
  let json: unknown;
  try {
    json = JSON.parse(await req.text());
  } catch {
    return { ok: false, response: problem(400, 'the body must be a JSON object', 'body') };
  }
  const r = schema.safeParse(json);
  if (r.success) return { ok: true, body: r.data };
  const issue = r.error.issues[0];
  const field = issue.path.length ? issue.path.join('.') : 'body';
  return { ok: false, response: problem(400, `${field}: ${issue.message}`, field) };
}

/** Turns a rejected model reference (or other bad input) into 400; rethrows anything else. */
export function badInput(e: unknown): HttpResponseInit {
  if (e instanceof InputError) {
    const field = /^([a-zA-Z.[\]0-9]+):/.exec(e.message)?.[1];
    return problem(400, e.message, field);
  }
  throw e;
}

export function accepted(req: HttpRequest, id: string): HttpResponseInit {
  const statusUri = new URL(`/api/runs/${encodeURIComponent(id)}`, req.url).href;
  return { status: 202, headers: { location: statusUri }, jsonBody: { id, statusUri } };
}

/** Instance ids come from the request's content, so a repeated request finds the run already going. */
export function runId(kind: string, label: string, parts: unknown): string {
  const hash = createHash('sha256').update(JSON.stringify(parts)).digest('hex').slice(0, 16);
  const slug = label.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 40);
  return `${kind}-${slug ? `${slug}-` : ''}${hash}`;
}
