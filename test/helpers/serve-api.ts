// The HTTP API of a running `paramdelta serve`, as the pipeline tests call it; for tests only.
export interface ApiAnswer {
  status: number;
  /** The parsed body when it is JSON, else its text; null when empty. */
  json: any;
  headers: Headers;
}

/** `api` and `waitFor` against the serve whose base URL `url()` gives (read at each call: serve starts in beforeAll). */
export function serveApi(url: () => string) {
  async function api(method: string, route: string, body?: unknown, headers: Record<string, string> = {}): Promise<ApiAnswer> {
    const res = await fetch(`${url()}/api/${route}`, {
      method,
      redirect: 'manual',
      headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await res.text();
    const json = !text ? null : /json/.test(res.headers.get('content-type') ?? '') ? JSON.parse(text) : text;
    return { status: res.status, json, headers: res.headers };
  }

  /** Polls GET /api/runs/{id} until the run ends; its last answer. */
  async function waitFor(id: string, timeoutMs = 60_000): Promise<any> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = await api('GET', `runs/${encodeURIComponent(id)}`);
      if (r.status !== 200) throw new Error(`GET runs/${id}: ${r.status} ${JSON.stringify(r.json)}`);
      if (['Completed', 'Failed', 'Terminated'].includes(r.json.status)) return r.json;
      if (Date.now() > deadline) throw new Error(`run ${id} still ${r.json.status}`);
      await new Promise((res) => setTimeout(res, 100));
    }
  }

  return { api, waitFor };
}
