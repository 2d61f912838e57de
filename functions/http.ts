import type { HttpRequest, HttpResponseInit } from '@azure/functions';
import { createHash } from 'node:crypto';
import type { z } from 'zod';
import { InputError } from '../lib/errors.js';
import { BACKEND_LIMITS } from './limits.js';

/** An RFC 9457 problem body; `field` names the request field at fault. */
export function problem(status: number, detail: string, field?: string): HttpResponseInit {
  const titles: Record<number, string> = { 400: 'Bad request', 404: 'Not found', 409: 'Conflict', 413: 'Content too large', 500: 'Internal error' };
  return {
    status,
    headers: { 'content-type': 'application/problem+json' },
    jsonBody: { type: 'about:blank', title: titles[status] ?? 'Error', status, detail, ...(field ? { field } : {}) },
  };
}

/**
 * The largest request body the API reads: 1 MiB, the Durable Task Scheduler's payload limit
 * (functions/limits.ts), since a request becomes an orchestration input. Its requests are small JSON.
 */
export const MAX_REQUEST_BYTES = BACKEND_LIMITS.payloadBytes;

function tooLarge(bytes: number | undefined): HttpResponseInit {
  const size = bytes === undefined ? 'larger than' : `${bytes} bytes; the limit is`;
  return problem(413, `the request body is ${size} ${MAX_REQUEST_BYTES} bytes (1 MiB)`, 'body');
}

/**
 * Parses a JSON body against a schema, or answers 400 naming the field (413 for a body over
 * MAX_REQUEST_BYTES). With `emptyIs`, an empty body stands for that value (a body that is optional).
 */
export async function readBody<T extends z.ZodType>(req: HttpRequest, schema: T, opts: { emptyIs?: unknown } = {}): Promise<{ ok: true; body: z.infer<T> } | { ok: false; response: HttpResponseInit }> {
  // A declared length is refused before a byte is read; an undeclared one is counted as it streams.
  const declared = Number(req.headers.get('content-length') ?? NaN);
  if (declared > MAX_REQUEST_BYTES) return { ok: false, response: tooLarge(declared) };
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (req.body) {
    const reader = req.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > MAX_REQUEST_BYTES) {
        await reader.cancel();
        return { ok: false, response: tooLarge(undefined) };
      }
      chunks.push(value);
    }
  }
  let json: unknown;
  try {
    const text = Buffer.concat(chunks).toString('utf8');
    json = opts.emptyIs !== undefined && text.trim() === '' ? opts.emptyIs : JSON.parse(text);
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
