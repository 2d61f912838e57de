// What the chaos parts share: a seeded random source, child processes, Azurite that can be paused or
// stopped, folders read from disk or blob storage, and the comparison with an uninterrupted run.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BlobServiceClient, ContainerClient } from '@azure/storage-blob';
import { AZURITE_ACCOUNT, AZURITE_KEY } from '../../cli/host/azurite.js';

export const CLI = fileURLToPath(new URL('../../cli/index.js', import.meta.url));
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** mulberry32: a small seeded generator, so every random moment can be replayed with --seed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function log(line: string): void {
  process.stdout.write(`${line}\n`);
}

// ---------------------------------------------------------------------------------------------------------------
// Child processes

export interface Run {
  child: ChildProcess;
  started: number;
  /** Resolves when the process has exited: its code, or the signal that ended it. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number; stderr: string; stdout: string }>;
}

export function runNode(args: string[], env: Record<string, string> = {}): Run {
  const started = performance.now();
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout = (stdout + d).slice(-20_000)));
  child.stderr!.on('data', (d) => (stderr = (stderr + d).slice(-20_000)));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number; stderr: string; stdout: string }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal, ms: performance.now() - started, stderr, stdout })),
  );
  return { child, started, exited };
}

export async function runCliOk(args: string[], env: Record<string, string> = {}): Promise<number> {
  const r = await runNode([CLI, ...args], env).exited;
  if (r.code !== 0) throw new Error(`paramdelta ${args.join(' ')} exited ${r.code ?? r.signal}: ${r.stderr.trim()}`);
  return r.ms;
}

import { accepts, freePorts } from '../../cli/host/azurite.js';

/** Free loopback ports, held together so they differ (the host's own helper). */
export { freePorts };


// ---------------------------------------------------------------------------------------------------------------
// Azurite that an outage can pause or stop. cli/host/azurite.ts picks new ports each start; an outage
// needs the same ports and the same data back, so this one keeps both.

const AZURITE_MAIN = createRequire(import.meta.url).resolve('azurite/dist/src/azurite.js');

export class ChaosAzurite {
  private child: ChildProcess | null = null;
  private constructor(
    readonly location: string,
    readonly ports: [number, number, number],
  ) {}

  static async start(location: string): Promise<ChaosAzurite> {
    await mkdir(location, { recursive: true });
    const a = new ChaosAzurite(location, (await freePorts(3)) as [number, number, number]);
    await a.start();
    return a;
  }

  get connectionString(): string {
    const [blob, queue, table] = this.ports;
    const base = 'http://127.0.0.1';
    return (
      [
        'DefaultEndpointsProtocol=http',
        `AccountName=${AZURITE_ACCOUNT}`,
        `AccountKey=${AZURITE_KEY}`,
        `BlobEndpoint=${base}:${blob}/${AZURITE_ACCOUNT}`,
        `QueueEndpoint=${base}:${queue}/${AZURITE_ACCOUNT}`,
        `TableEndpoint=${base}:${table}/${AZURITE_ACCOUNT}`,
      ].join(';') + ';'
    );
  }

  /** Starts (or starts again) on the same ports and data folder. Always with telemetry off, on loopback. */
  async start(): Promise<void> {
    if (this.child) throw new Error('Azurite is already running');
    const [blob, queue, table] = this.ports;
    const env = { ...process.env };
    delete env.AZURITE_ACCOUNTS;
    const child = spawn(
      process.execPath,
      [
        AZURITE_MAIN, '--silent', '--disableTelemetry', '--skipApiVersionCheck', '--location', this.location,
        '--blobHost', '127.0.0.1', '--blobPort', String(blob),
        '--queueHost', '127.0.0.1', '--queuePort', String(queue),
        '--tableHost', '127.0.0.1', '--tablePort', String(table),
      ],
      { env, cwd: this.location, stdio: 'ignore' },
    );
    this.child = child;
    const kill = () => child.kill('SIGKILL');
    process.once('exit', kill);
    child.once('exit', () => {
      process.off('exit', kill);
      if (this.child === child) this.child = null;
    });
    const deadline = Date.now() + 30_000;
    for (const port of this.ports) {
      while (!(await accepts(port))) {
        if (!this.child || Date.now() > deadline) throw new Error(`Azurite did not start on port ${port}`);
        await sleep(50);
      }
    }
  }

  /** A graceful stop (SIGTERM), waiting for the process to end. */
  async stop(): Promise<void> {
    const child = this.child;
    if (!child) return;
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000); // only if it hangs on the way out
    await gone;
    clearTimeout(timer);
  }

  pause(): void {
    this.child?.kill('SIGSTOP');
  }

  resume(): void {
    this.child?.kill('SIGCONT');
  }

  async close(): Promise<void> {
    this.resume();
    await this.stop();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Folders: a local directory or a blob prefix, read whole for comparison.

export interface Folder {
  ref: string;
  /** File names directly in the folder. */
  list(): Promise<string[]>;
  read(file: string): Promise<Buffer>;
  exists(file: string): Promise<boolean>;
}

export function localFolder(dir: string): Folder {
  return {
    ref: dir,
    list: async () => (existsSync(dir) ? (await readdir(dir, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name).sort() : []),
    read: (f) => readFile(path.join(dir, f)),
    exists: async (f) => existsSync(path.join(dir, f)),
  };
}

export function blobFolder(service: BlobServiceClient, ref: string): Folder {
  const [container, ...rest] = ref.replace(/^az:\/\//, '').split('/');
  const c: ContainerClient = service.getContainerClient(container);
  const prefix = `${rest.join('/')}/`;
  return {
    ref,
    async list() {
      const names: string[] = [];
      for await (const b of c.listBlobsByHierarchy('/', { prefix })) if (b.kind === 'blob') names.push(b.name.slice(prefix.length));
      return names.sort();
    },
    read: (f) => c.getBlobClient(prefix + f).downloadToBuffer(),
    exists: (f) => c.getBlobClient(prefix + f).exists(),
  };
}

/** Uploads a local folder's files (not sub-folders) under `container/prefix`. */
export async function uploadDir(service: BlobServiceClient, container: string, prefix: string, dir: string, last?: string): Promise<void> {
  const c = service.getContainerClient(container);
  await c.createIfNotExists();
  const files = (await readdir(dir, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name).sort();
  const order = last ? [...files.filter((f) => f !== last), ...files.filter((f) => f === last)] : files;
  for (const f of order) await c.getBlockBlobClient(`${prefix}/${f}`).uploadFile(path.join(dir, f), { blockSize: 8 << 20, concurrency: 4 });
}

/** The family under models/chaos/{base,post,newbase} and the reference delta under deltas/<name>, delta.json last. */
export async function seedStorage(service: BlobServiceClient, family: { base: string; post: string; newbase: string }, refDelta: string, deltaName: string): Promise<void> {
  for (const [prefix, dir] of [['chaos/base', family.base], ['chaos/post', family.post], ['chaos/newbase', family.newbase]] as const) {
    await uploadDir(service, 'models', prefix, dir);
  }
  await uploadDir(service, 'deltas', deltaName, refDelta, 'delta.json');
}

/** Deletes every blob under a prefix. */
export async function removePrefix(service: BlobServiceClient, container: string, prefix: string): Promise<void> {
  const c = service.getContainerClient(container);
  for await (const b of c.listBlobsFlat({ prefix: `${prefix}/` })) await c.getBlobClient(b.name).deleteIfExists();
}

/**
 * Files written by the pipeline but not by the CLI, which an uninterrupted CLI run cannot be compared
 * with: the registration, the delta's analysis, the posted model's evaluation and gate records.
 */
const PIPELINE_ONLY = new Set(['registration.json', 'analysis.json', 'paramdelta-eval.json', 'gate.json']);

/**
 * delta.json and paramdelta.json record their creation time, and the references of their inputs
 * (which differ from run to run here): "byte for byte" leaves those out.
 */
function comparable(file: string, bytes: Buffer): Buffer {
  if (file !== 'delta.json' && file !== 'paramdelta.json') return bytes;
  const j = JSON.parse(bytes.toString('utf8'));
  delete j.createdAt;
  // Where base and post were: the pipeline records it for the quality gate, the CLI does not.
  delete j.sources;
  if (file === 'paramdelta.json') {
    delete j.base;
    j.deltas = j.deltas.map((d: { scale: number }) => d.scale);
  }
  return Buffer.from(JSON.stringify(j));
}

/**
 * Null when `got` holds exactly the reference's files with the same bytes (delta.json without its
 * timestamp); otherwise what differs.
 */
export async function differsFrom(got: Folder, reference: string): Promise<string | null> {
  const want = (await readdir(reference)).sort();
  const have = (await got.list()).filter((f) => !PIPELINE_ONLY.has(f));
  if (JSON.stringify(have) !== JSON.stringify(want)) return `${got.ref} holds [${have.join(', ')}], the uninterrupted run wrote [${want.join(', ')}]`;
  for (const f of want) {
    const a = comparable(f, await got.read(f));
    const b = comparable(f, await readFile(path.join(reference, f)));
    if (!a.equals(b)) return `${got.ref}/${f} differs from the uninterrupted run's`;
  }
  return null;
}

/** sha256 of every file under a local folder, to show inputs were never touched. */
export async function fingerprint(dir: string): Promise<string> {
  const h = createHash('sha256');
  const walk = async (d: string) => {
    for (const e of (await readdir(d, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else h.update(`${path.relative(dir, p)}\0${(await stat(p)).size}\0`).update(await readFile(p));
    }
  };
  await walk(dir);
  return h.digest('hex');
}

/**
 * Watches a folder while something writes it: whenever its completion marker is there, the folder
 * must be exact. Each appearance of the marker is checked once (a replaced output is checked again).
 */
export class CompletionWatch {
  samples = 0;
  checks = 0;
  readonly violations: string[] = [];
  private running = true;
  private readonly loop: Promise<void>;

  constructor(folder: Folder, marker: string, reference: string, everyMs = 15) {
    this.loop = (async () => {
      let seen = false;
      while (this.running) {
        try {
          const complete = await folder.exists(marker);
          this.samples++;
          if (complete && !seen) {
            this.checks++;
            const diff = await differsFrom(folder, reference);
            // A marker that vanished while we compared was being replaced: not a finished output.
            if (diff && (await folder.exists(marker))) this.violations.push(`looked complete but was not exact: ${diff}`);
          }
          seen = complete;
        } catch {
          // Storage unreachable (an outage) or a file replaced mid-read: sample again.
        }
        await sleep(everyMs);
      }
    })();
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// `paramdelta serve` in its own process, so it can be killed.

export interface ServeProcess {
  url: string;
  run: Run;
  /** SIGKILL: no cleanup at all. */
  kill(): Promise<void>;
  /** SIGTERM: serve closes itself. */
  stop(): Promise<void>;
}

export async function startServeProcess(storage: string, env: Record<string, string> = {}): Promise<ServeProcess> {
  const [port] = await freePorts(1);
  const run = runNode([CLI, 'serve', '--port', String(port), '--storage', storage], env);
  await new Promise<void>((resolve, reject) => {
    const onData = (d: Buffer) => {
      if (String(d).includes('watching')) {
        run.child.stdout!.off('data', onData);
        resolve();
      }
    };
    run.child.stdout!.on('data', onData);
    void run.exited.then((r) => reject(new Error(`serve exited ${r.code ?? r.signal} while starting: ${r.stderr.slice(-2000)}`)));
  });
  return {
    url: `http://127.0.0.1:${port}`,
    run,
    async kill() {
      run.child.kill('SIGKILL');
      await run.exited;
    },
    async stop() {
      run.child.kill('SIGTERM');
      const timer = setTimeout(() => run.child.kill('SIGKILL'), 20_000);
      await run.exited;
      clearTimeout(timer);
    },
  };
}

export async function api(url: string, method: string, route: string, body?: unknown): Promise<{ status: number; json: any }> {
  const res = await fetch(`${url}/api/${route}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json: unknown = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = { text };
  }
  return { status: res.status, json };
}

/** Polls a run until it is no longer Pending or Running; null when it is unknown for `unknownMs` or past `timeoutMs`. */
export async function waitForRun(
  url: () => string,
  id: string,
  opts: { timeoutMs: number; unknownMs?: number },
): Promise<{ status: string; error: string | null; output: unknown } | { missing: string }> {
  const deadline = Date.now() + opts.timeoutMs;
  let unknownSince: number | null = null;
  for (;;) {
    try {
      const r = await api(url(), 'GET', `runs/${encodeURIComponent(id)}`);
      if (r.status === 200 && !['Pending', 'Running'].includes(r.json.status)) return r.json;
      if (r.status === 404) {
        unknownSince ??= Date.now();
        if (opts.unknownMs !== undefined && Date.now() - unknownSince > opts.unknownMs) return { missing: `the host answers 404 for run ${id}` };
      } else unknownSince = null;
    } catch {
      // The host is restarting, or storage is down: ask again.
    }
    if (Date.now() > deadline) return { missing: `run ${id} did not finish within ${opts.timeoutMs / 1000} s` };
    await sleep(100);
  }
}
