// `paramdelta serve`: the Functions app on one machine. The same triggers, orchestrators and
// activities as functions/, run by an in-process durable runtime, with Azurite for storage and a
// poller standing in for Event Grid.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import azureFunctions, { type EventGridEvent, type HttpResponseInit, type InvocationContext } from '@azure/functions';
import { LocalDurableRuntime, type ActivityFn, type InstanceStatus } from './runtime.js';
import type { RunStatus } from '../../functions/client.js';
import { azuriteForFolder, portsNote, type Azurite, type AzuritePorts } from './azurite.js';
import { BlobInstanceStore, HOST_CONTAINER } from './history.js';

// @azure/functions is CommonJS whose classes Node's ESM loader cannot see as named exports.
const { HttpRequest, InvocationContext: Invocation } = azureFunctions;

export interface ServeOptions {
  /** Port on 127.0.0.1 (0 picks a free one). */
  port?: number;
  /** A storage connection string; without it (and without AzureWebJobsStorage) Azurite is started. */
  storage?: string;
  /** Where a started Azurite keeps its data. */
  dataDir?: string;
  /** Ports for a started Azurite (default 'standard': 10000-10002 when free, else free ones). */
  azuritePorts?: AzuritePorts;
  /** How often base-models is polled for uploads, in ms (Event Grid's stand-in). */
  pollMs?: number;
  activityConcurrency?: number;
  /** Retry timers are scaled by this (tests use a small value). */
  timerScale?: number;
  log?: (line: string) => void;
  /** Keep orchestration histories in storage and resume unfinished runs on start (default true). */
  persist?: boolean;
  /** Lets tests inject failures into activities. */
  wrapActivity?: (name: string, fn: ActivityFn) => ActivityFn;
}

export interface ServeHandle {
  url: string;
  /** The dashboard's address (`url` redirects there too). */
  dashboardUrl: string;
  /** The storage connection string in use; it is Azurite's public development key when serve started Azurite. */
  connectionString: string;
  startedAzurite: boolean;
  /** The Azurite this serve runs, when it runs one (started, or reused from a killed serve). */
  azurite: Azurite | null;
  /** Unfinished runs found in storage and resumed on start. */
  resumed: number;
  runtime: LocalDurableRuntime;
  close(): Promise<void>;
}

/** @azure/functions announces "test mode" when no host is present; that is expected here. */
async function importQuietly<T>(load: () => Promise<T>): Promise<T> {
  const warn = console.warn;
  console.warn = (...args: unknown[]) => {
    if (!/test mode|Skipping call to register function/.test(String(args[0]))) warn(...args);
  };
  try {
    return await load();
  } finally {
    console.warn = warn;
  }
}

function invocation(functionName: string, log: (line: string) => void): InvocationContext {
  return new Invocation({ functionName, invocationId: randomUUID(), logHandler: (_level, ...args) => log(`[${functionName}] ${args.join(' ')}`) });
}

function matchRoute(route: string, pathname: string): Record<string, string> | null {
  const want = route.split('/');
  const got = pathname.split('/');
  if (want.length !== got.length) return null;
  const params: Record<string, string> = {};
  for (let i = 0; i < want.length; i++) {
    const m = /^\{(\w+)\}$/.exec(want[i]);
    if (m) params[m[1]] = decodeURIComponent(got[i]);
    else if (want[i] !== got[i]) return null;
  }
  return params;
}

/**
 * The Functions host's own bound on a request body: 100 MB (Azure Functions HTTP trigger limits,
 * "request length"). Below it the body reaches the function, whose readBody (functions/http.ts)
 * answers 413 past the API's own 1 MiB, as in Azure.
 */
const HOST_MAX_REQUEST_BYTES = 100 * 1024 * 1024;

async function readAll(req: IncomingMessage): Promise<Buffer | null> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > HOST_MAX_REQUEST_BYTES) return null;
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

/** host.json as the Functions host reads it (from the app root), for the settings serve mirrors. */
function hostJson(): { routePrefix: string; maxConcurrentActivityFunctions?: number } {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++, dir = path.dirname(dir)) {
    try {
      const j = JSON.parse(readFileSync(path.join(dir, 'host.json'), 'utf8'));
      return { routePrefix: j.extensions?.http?.routePrefix ?? 'api', maxConcurrentActivityFunctions: j.extensions?.durableTask?.maxConcurrentActivityFunctions };
    } catch {
      // not in this folder
    }
  }
  return { routePrefix: 'api' };
}

function tooLarge(): HttpResponseInit {
  return {
    status: 413,
    headers: { 'content-type': 'application/problem+json' },
    jsonBody: { type: 'about:blank', title: 'Content too large', status: 413, detail: `the request body is over the host's limit of ${HOST_MAX_REQUEST_BYTES} bytes`, field: 'body' },
  };
}

/** Writes a response; `close` ends the connection (a body left unread is not drained). */
async function send(res: ServerResponse, r: HttpResponseInit, close = false): Promise<void> {
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries((r.headers ?? {}) as Record<string, string>)) headers[k.toLowerCase()] = String(v);
  let body = '';
  if (r.jsonBody !== undefined) {
    body = JSON.stringify(r.jsonBody);
    headers['content-type'] ??= 'application/json';
  } else if (typeof r.body === 'string') body = r.body;
  if (close) headers.connection = 'close';
  res.writeHead(r.status ?? 200, headers);
  res.end(body);
}

export async function startServe(opts: ServeOptions = {}): Promise<ServeHandle> {
  const log = opts.log ?? ((line: string) => process.stderr.write(line + '\n'));
  let azurite: Azurite | null = null;
  let connectionString = opts.storage ?? process.env.AzureWebJobsStorage ?? '';
  if (!connectionString) {
    const location = path.resolve(opts.dataDir ?? '.azurite');
    azurite = await azuriteForFolder(location, log, opts.azuritePorts ?? 'standard');
    connectionString = azurite.connectionString;
    if (!azurite.reused) log(`started Azurite (${portsNote(azurite, opts.azuritePorts ?? 'standard')}), data in ${location}`);
  }
  process.env.AzureWebJobsStorage = connectionString;

  const { pipeline, resetPipeline } = await import('../../functions/pipeline.js');
  const client = await import('../../functions/client.js');
  const catalog = await importQuietly(() => import('../../functions/catalog.js'));
  resetPipeline();
  const p = pipeline();
  await p.ready();
  const host = hostJson();

  const hostContainer = p.service.getContainerClient(HOST_CONTAINER);
  const runtime = new LocalDurableRuntime({
    activityConcurrency: opts.activityConcurrency ?? host.maxConcurrentActivityFunctions ?? 2,
    timerScale: opts.timerScale,
    log,
    store: opts.persist === false ? undefined : new BlobInstanceStore(hostContainer),
  });
  for (const [name, fn] of Object.entries(catalog.orchestrators)) runtime.registerOrchestrator(name, fn as never);
  for (const [name, fn] of Object.entries(catalog.activities)) {
    const handler = fn as ActivityFn;
    runtime.registerActivity(name, opts.wrapActivity ? opts.wrapActivity(name, handler) : handler);
  }
  const resumed = await runtime.resume();
  if (resumed > 0) log(`resumed ${resumed} unfinished orchestration instance(s) from storage`);
  const runStatus = (s: InstanceStatus): RunStatus => ({
    instanceId: s.instanceId,
    name: s.name,
    runtimeStatus: s.runtimeStatus,
    customStatus: s.customStatus,
    // As in Azure, a failed orchestration's output is its error text.
    output: s.runtimeStatus === 'Failed' ? (s.error ?? s.output) : s.output,
    input: s.input,
    createdTime: s.createdTime,
    lastUpdatedTime: s.lastUpdatedTime,
  });
  client.setRunClientProvider(() => ({
    startNew: (name, o) => runtime.startNew(name, o),
    async getStatus(id) {
      const s = await runtime.getStatus(id);
      return s ? runStatus(s) : undefined;
    },
    list: async ({ createdFrom }) => (await runtime.listInstances()).filter((s) => s.createdTime >= createdFrom).map(runStatus),
  }));

  // The routing table is the app's app.http registrations (functions/app.ts), under host.json's
  // route prefix. Like `func start`, serve does not check function keys; a route registered with
  // any other authLevel than these would not be served by the host either.
  const prefix = `/${host.routePrefix}/`.replace(/\/+/g, '/');
  for (const r of catalog.httpRoutes) {
    if (!['anonymous', 'function', 'admin'].includes(r.authLevel)) throw new Error(`route ${r.name}: unknown authLevel "${r.authLevel}"`);
  }
  // `/` leads to the dashboard, an app.http route like the others (functions/triggers/dashboard.ts).
  const dashboard = catalog.httpRoutes.find((r) => r.name === 'dashboard');
  const server: Server = createServer((req, res) => {
    void (async () => {
      try {
        const url = new URL(req.url ?? '/', `http://${req.headers.host ?? '127.0.0.1'}`);
        if (dashboard && url.pathname === '/' && (req.method === 'GET' || req.method === 'HEAD')) {
          await send(res, { status: 302, headers: { location: `${prefix}${dashboard.route}${url.search}` } });
          return;
        }
        const rest = url.pathname.startsWith(prefix) ? url.pathname.slice(prefix.length) : null;
        for (const r of catalog.httpRoutes) {
          const params = rest !== null ? matchRoute(r.route, rest) : null;
          if (!params || !r.methods.includes(req.method ?? '')) continue;
          if (Number(req.headers['content-length'] ?? 0) > HOST_MAX_REQUEST_BYTES) {
            await send(res, tooLarge(), true);
            return;
          }
          const body = await readAll(req);
          if (body === null) {
            await send(res, tooLarge(), true);
            return;
          }
          const request = new HttpRequest({
            method: req.method,
            url: url.href,
            headers: Object.fromEntries(Object.entries(req.headers).map(([k, v]) => [k, String(v)])),
            params,
            body: body.length ? { bytes: body } : undefined,
          });
          await send(res, await r.handler(request, invocation(r.name, log)));
          return;
        }
        await send(res, { status: 404, jsonBody: { title: 'Not found', status: 404, detail: `no route for ${req.method} ${url.pathname}` } });
      } catch (e) {
        log(`error: ${(e as Error).stack ?? e}`);
        await send(res, { status: 500, jsonBody: { title: 'Internal error', status: 500, detail: (e as Error).message } });
      }
    })();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 7071, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as { port: number }).port;

  // Event Grid's stand-in: each poll compares every base-models blob's ETag with the last poll
  // and raises a BlobCreated event for each new or changed one, as Event Grid would. The ETags
  // seen are kept beside the histories, so an upload made while serve was down is still noticed
  // after a restart (the trigger starts each upload's run once).
  const onUpload = catalog.eventGridTriggers['baseModelUploaded'];
  if (!onUpload) throw new Error('the app registers no baseModelUploaded Event Grid trigger');
  const container = p.service.getContainerClient(p.settings.containers.baseModels);
  const seenBlob = hostContainer.getBlockBlobClient(`poller/${container.containerName}.json`);
  let seen: Map<string, string> | null = null;
  if (opts.persist !== false) {
    const saved = await seenBlob.downloadToBuffer().catch((e: { statusCode?: number }) => {
      if (e.statusCode === 404) return null;
      throw e;
    });
    if (saved) seen = new Map(Object.entries(JSON.parse(saved.toString('utf8')) as Record<string, string>));
  }
  let polling = false;
  const poll = async () => {
    if (polling) return;
    polling = true;
    try {
      const now = new Map<string, string>();
      for await (const b of container.listBlobsFlat()) now.set(b.name, b.properties.etag ?? '');
      const changed = seen ? [...now].filter(([n, e]) => seen!.get(n) !== e).map(([n]) => n) : [];
      const moved = !seen || changed.length > 0 || seen.size !== now.size;
      for (const name of changed) {
        const event = {
          id: randomUUID(),
          topic: 'local',
          subject: `/blobServices/default/containers/${container.containerName}/blobs/${name}`,
          eventType: 'Microsoft.Storage.BlobCreated',
          eventTime: new Date().toISOString(),
          dataVersion: '1',
          data: { url: container.getBlobClient(name).url, api: 'PutBlob' },
        } as unknown as EventGridEvent;
        await onUpload(event, invocation('baseModelUploaded', log));
      }
      seen = now;
      if (moved && opts.persist !== false) {
        const text = JSON.stringify(Object.fromEntries(now));
        await seenBlob.upload(text, Buffer.byteLength(text));
      }
    } catch (e) {
      log(`base-models poll failed: ${(e as Error).message}`);
    } finally {
      polling = false;
    }
  };
  await poll();
  const timer = setInterval(() => void poll(), Math.min(2000, opts.pollMs ?? 1000));

  return {
    url: `http://127.0.0.1:${port}`,
    dashboardUrl: `http://127.0.0.1:${port}${prefix}${dashboard?.route ?? ''}`,
    connectionString,
    startedAzurite: azurite !== null,
    azurite,
    resumed,
    runtime,
    async close() {
      clearInterval(timer);
      while (polling) await new Promise((r) => setTimeout(r, 20));
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await runtime.close();
      client.setRunClientProvider(null);
      resetPipeline();
      await azurite?.stop();
    },
  };
}
