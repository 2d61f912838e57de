// `paramdelta serve`: the Functions app on one machine. The same triggers, orchestrators and
// activities as functions/, run by an in-process durable runtime, with Azurite for storage and a
// poller standing in for Event Grid.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import azureFunctions, { type EventGridEvent, type HttpResponseInit, type InvocationContext } from '@azure/functions';
import { LocalDurableRuntime, type ActivityFn } from './runtime.js';

// @azure/functions is CommonJS whose classes Node's ESM loader cannot see as named exports.
const { HttpRequest, InvocationContext: Invocation } = azureFunctions;
import { startAzurite, type Azurite } from './azurite.js';

export interface ServeOptions {
  /** Port on 127.0.0.1 (0 picks a free one). */
  port?: number;
  /** A storage connection string; without it (and without AzureWebJobsStorage) Azurite is started. */
  storage?: string;
  /** Where a started Azurite keeps its data. */
  dataDir?: string;
  /** How often base-models is polled for uploads, in ms (Event Grid's stand-in). */
  pollMs?: number;
  activityConcurrency?: number;
  /** Retry timers are scaled by this (tests use a small value). */
  timerScale?: number;
  log?: (line: string) => void;
  /** Lets tests inject failures into activities. */
  wrapActivity?: (name: string, fn: ActivityFn) => ActivityFn;
}

export interface ServeHandle {
  url: string;
  /** The storage connection string in use; it is Azurite's public development key when serve started Azurite. */
  connectionString: string;
  startedAzurite: boolean;
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

async function readAll(req: IncomingMessage, limit = 1 << 20): Promise<string> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > limit) throw new Error('request body too large');
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function send(res: ServerResponse, r: HttpResponseInit): Promise<void> {
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries((r.headers ?? {}) as Record<string, string>)) headers[k.toLowerCase()] = String(v);
  let body = '';
  if (r.jsonBody !== undefined) {
    body = JSON.stringify(r.jsonBody);
    headers['content-type'] ??= 'application/json';
  } else if (typeof r.body === 'string') body = r.body;
  res.writeHead(r.status ?? 200, headers);
  res.end(body);
}

export async function startServe(opts: ServeOptions = {}): Promise<ServeHandle> {
  const log = opts.log ?? ((line: string) => process.stderr.write(line + '\n'));
  let azurite: Azurite | null = null;
  let connectionString = opts.storage ?? process.env.AzureWebJobsStorage ?? '';
  if (!connectionString) {
    const location = path.resolve(opts.dataDir ?? '.azurite');
    azurite = await startAzurite({ location });
    connectionString = azurite.connectionString;
    log(`started Azurite (blob ${azurite.blobPort}, queue ${azurite.queuePort}, table ${azurite.tablePort}), data in ${location}`);
  }
  process.env.AzureWebJobsStorage = connectionString;

  const { pipeline, resetPipeline } = await import('../../functions/pipeline.js');
  const client = await import('../../functions/client.js');
  const catalog = await importQuietly(() => import('../../functions/catalog.js'));
  resetPipeline();
  const p = pipeline();
  await p.ready();

  const runtime = new LocalDurableRuntime({ activityConcurrency: opts.activityConcurrency ?? 2, timerScale: opts.timerScale, log });
  for (const [name, fn] of Object.entries(catalog.orchestrators)) runtime.registerOrchestrator(name, fn as never);
  for (const [name, fn] of Object.entries(catalog.activities)) {
    const handler = fn as ActivityFn;
    runtime.registerActivity(name, opts.wrapActivity ? opts.wrapActivity(name, handler) : handler);
  }
  client.setRunClientProvider(() => ({
    startNew: (name, o) => runtime.startNew(name, o),
    async getStatus(id) {
      const s = await runtime.getStatus(id);
      if (!s) return undefined;
      return {
        instanceId: s.instanceId,
        name: s.name,
        runtimeStatus: s.runtimeStatus,
        customStatus: s.customStatus,
        // As in Azure, a failed orchestration's output is its error text.
        output: s.runtimeStatus === 'Failed' ? (s.error ?? s.output) : s.output,
        input: s.input,
      };
    },
  }));

  const server: Server = createServer((req, res) => {
    void (async () => {
      try {
        const url = new URL(req.url ?? '/', `http://${req.headers.host ?? '127.0.0.1'}`);
        const rest = url.pathname.startsWith('/api/') ? url.pathname.slice(5) : null;
        for (const r of catalog.httpRoutes) {
          const params = rest !== null ? matchRoute(r.route, rest) : null;
          if (!params || r.method !== req.method) continue;
          const body = await readAll(req);
          const request = new HttpRequest({
            method: req.method,
            url: url.href,
            headers: Object.fromEntries(Object.entries(req.headers).map(([k, v]) => [k, String(v)])),
            params,
            body: body ? { string: body } : undefined,
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
  // and raises a BlobCreated event for each new or changed one, as Event Grid would.
  const container = p.service.getContainerClient(p.settings.containers.baseModels);
  let seen: Map<string, string> | null = null;
  let polling = false;
  const poll = async () => {
    if (polling) return;
    polling = true;
    try {
      const now = new Map<string, string>();
      for await (const b of container.listBlobsFlat()) now.set(b.name, b.properties.etag ?? '');
      const changed = seen ? [...now].filter(([n, e]) => seen!.get(n) !== e).map(([n]) => n) : [];
      seen = now;
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
        await catalog.eventGridTriggers.baseModelUploaded(event, invocation('baseModelUploaded', log));
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
    connectionString,
    startedAzurite: azurite !== null,
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
