import { spawn } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { createServer, connect, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { InputError } from '../../lib/errors.js';

/** Azurite's well-known development account (public, documented; not a secret). */
export const AZURITE_ACCOUNT = 'devstoreaccount1';
export const AZURITE_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';

const AZURITE_MAIN = createRequire(import.meta.url).resolve('azurite/dist/src/azurite.js');

export interface Azurite {
  connectionString: string;
  blobPort: number;
  queuePort: number;
  tablePort: number;
  /** Its process id. */
  pid: number;
  /** True when this is an Azurite an earlier (killed) serve left running on the same data folder. */
  reused: boolean;
  /** True when it listens on the standard ports 10000-10002. */
  standardPorts: boolean;
  stop(): Promise<void>;
}

/** Free ports, found by binding port 0; all held open together so the three differ. */
export async function freePorts(n: number): Promise<number[]> {
  const servers: Server[] = [];
  try {
    const ports: number[] = [];
    for (let i = 0; i < n; i++) {
      const s = createServer();
      servers.push(s);
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.listen(0, '127.0.0.1', () => resolve());
      });
      ports.push((s.address() as { port: number }).port);
    }
    return ports;
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }
}

/** Azurite's standard ports (blob, queue, table): the defaults of Azure Storage Explorer and the Azure CLI. */
export const STANDARD_PORTS = [10000, 10001, 10002] as const;

/** Whether nothing listens on `port` on the loopback address (binding it succeeds). */
export function isPortFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/**
 * Which ports Azurite listens on: 'standard' takes 10000-10002 when all three are free and free
 * ports otherwise; 'free' always takes free ports; three numbers are taken as given.
 */
export type AzuritePorts = 'standard' | 'free' | readonly [number, number, number];

/** Parses --azurite-ports: "standard", "free", or "BLOB,QUEUE,TABLE". */
export function parseAzuritePorts(text: string, flag = '--azurite-ports'): AzuritePorts {
  if (text === 'standard' || text === 'free') return text;
  const ports = text.split(',').map((p) => Number(p.trim()));
  if (ports.length !== 3 || ports.some((p) => !Number.isInteger(p) || p < 1 || p > 65535) || new Set(ports).size !== 3) {
    throw new InputError(`${flag}: "${text}" is not "standard", "free" or three different ports BLOB,QUEUE,TABLE`);
  }
  return ports as unknown as readonly [number, number, number];
}

async function choosePorts(want: AzuritePorts): Promise<{ ports: number[]; standard: boolean }> {
  if (Array.isArray(want)) return { ports: [...want], standard: STANDARD_PORTS.every((p, i) => want[i] === p) };
  if (want === 'standard') {
    const free = await Promise.all(STANDARD_PORTS.map(isPortFree));
    if (free.every(Boolean)) return { ports: [...STANDARD_PORTS], standard: true };
  }
  return { ports: await freePorts(3), standard: false };
}

/** A note for the printed connection string: which ports Azurite took, and why. */
export function portsNote(a: Pick<Azurite, 'blobPort' | 'queuePort' | 'tablePort' | 'standardPorts'>, asked: AzuritePorts = 'standard'): string {
  if (a.standardPorts) return `standard ports ${STANDARD_PORTS.join(', ')}`;
  const which = `blob ${a.blobPort}, queue ${a.queuePort}, table ${a.tablePort}`;
  return asked === 'standard' ? `${which}: the standard ports ${STANDARD_PORTS.join(', ')} were taken` : which;
}

/** True when something listens on the loopback port. */
export function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect({ host: '127.0.0.1', port });
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });
}

export interface AzuriteOptions {
  /** Keep data in this folder (created if needed); without it, data lives in memory and goes with the process. */
  location?: string;
  timeoutMs?: number;
  /** Send Azurite's output to this file instead of a pipe, so it can outlive this process. */
  logFile?: string;
  /** Default 'free', so tests never take the standard ports by accident; serve asks for 'standard'. */
  ports?: AzuritePorts;
  /** Options for Azurite's Node process (a benchmark's --cpu-prof). */
  nodeArgs?: string[];
}

/**
 * Starts Azurite (blob, queue, table) on loopback ports (free ones unless told otherwise). Always with --disableTelemetry (it
 * otherwise calls out to the internet) and --skipApiVersionCheck (the SDK speaks a newer API
 * version than Azurite knows).
 */
export async function startAzurite(opts: AzuriteOptions = {}): Promise<Azurite & { cwd: string }> {
  const chosen = await choosePorts(opts.ports ?? 'free');
  try {
    return await launch(opts, chosen);
  } catch (e) {
    // Another process took a standard port between the check and Azurite's start: use free ones.
    if (opts.ports !== 'standard' || !chosen.standard) throw e;
    return launch(opts, { ports: await freePorts(3), standard: false });
  }
}

async function launch(opts: AzuriteOptions, chosen: { ports: number[]; standard: boolean }): Promise<Azurite & { cwd: string }> {
  const timeoutMs = opts.timeoutMs ?? 20_000;
  const [blobPort, queuePort, tablePort] = chosen.ports;
  // In-memory persistence refuses --location; run in a temp cwd so nothing Azurite writes lands in the repo.
  const cwd = await mkdtemp(path.join(tmpdir(), 'paramdelta-azurite-'));
  const storage = opts.location ? ['--location', opts.location] : ['--inMemoryPersistence'];
  const env = { ...process.env };
  delete env.AZURITE_ACCOUNTS; // custom accounts would invalidate the well-known key
  const logFd = opts.logFile ? openSync(opts.logFile, 'a') : undefined;
  const child = spawn(
    process.execPath,
    [
      ...(opts.nodeArgs ?? []),
      AZURITE_MAIN,
      '--silent',
      '--disableTelemetry',
      '--skipApiVersionCheck',
      ...storage,
      '--blobHost', '127.0.0.1', '--blobPort', String(blobPort),
      '--queueHost', '127.0.0.1', '--queuePort', String(queuePort),
      '--tableHost', '127.0.0.1', '--tablePort', String(tablePort),
    ],
    { env, cwd, stdio: ['ignore', logFd ?? 'pipe', logFd ?? 'pipe'] },
  );
  if (logFd !== undefined) closeSync(logFd);
  let output = '';
  const keep = (d: Buffer) => {
    output = (output + d.toString()).slice(-4000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let gone = false;
  void exited.then(() => (gone = true));

  // If the test process exits without calling stop (a crash, a bail-out), do not leave Azurite running.
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);

  const stop = async () => {
    process.off('exit', killOnExit);
    if (!gone) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
    }
    await rm(cwd, { recursive: true, force: true });
  };

  const deadline = Date.now() + timeoutMs;
  for (const port of [blobPort, queuePort, tablePort]) {
    while (!(await accepts(port))) {
      if (gone || Date.now() > deadline) {
        await stop();
        if (opts.logFile) output = (await readFile(opts.logFile, 'utf8').catch(() => '')).slice(-4000);
        throw new Error(`Azurite did not start on port ${port}${gone ? ' (it exited)' : ''}:\n${output}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  return {
    connectionString: connectionStringFor(blobPort, queuePort, tablePort), blobPort, queuePort, tablePort,
    pid: child.pid!, reused: false, standardPorts: chosen.standard, stop, cwd,
  };
}

function connectionStringFor(blobPort: number, queuePort: number, tablePort: number): string {
  const base = 'http://127.0.0.1';
  return [
    'DefaultEndpointsProtocol=http',
    `AccountName=${AZURITE_ACCOUNT}`,
    `AccountKey=${AZURITE_KEY}`,
    `BlobEndpoint=${base}:${blobPort}/${AZURITE_ACCOUNT}`,
    `QueueEndpoint=${base}:${queuePort}/${AZURITE_ACCOUNT}`,
    `TableEndpoint=${base}:${tablePort}/${AZURITE_ACCOUNT}`,
  ].join(';') + ';';
}

// ---- One Azurite per data folder ----

/** What `paramdelta serve` records in its data folder about the Azurite it runs there. */
export interface AzuriteRecord {
  pid: number;
  blobPort: number;
  queuePort: number;
  tablePort: number;
  /** Azurite's working folder (a temporary one), removed when it is stopped. */
  cwd: string;
  /** The data folder, as given to Azurite's --location. */
  location: string;
  /** The serve process that uses it. */
  owner: number;
  startedAt: string;
}

export const AZURITE_RECORD = '.paramdelta-azurite.json';
const AZURITE_LOG = '.paramdelta-azurite.log';

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A process's arguments where /proc shows them (Linux), else undefined. */
async function commandLine(pid: number): Promise<string[] | undefined> {
  try {
    return (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0').filter(Boolean);
  } catch {
    return undefined;
  }
}

/** Whether `pid` is an Azurite started on `location` (by its arguments where they can be read). */
export async function isAzuriteOn(pid: number, location: string): Promise<boolean> {
  if (!isAlive(pid)) return false;
  const args = await commandLine(pid);
  if (!args) return process.platform !== 'linux'; // no /proc: the ports' answers decide alone
  const at = args.indexOf('--location');
  return args.some((a) => a === AZURITE_MAIN) && at >= 0 && path.resolve(args[at + 1] ?? '') === location;
}

/** Whether the port is answered by Azurite's `service` (its Server header, e.g. "Azurite-Blob/3.37.0"). */
async function answersAs(port: number, service: 'Blob' | 'Queue' | 'Table'): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/${AZURITE_ACCOUNT}`, { signal: AbortSignal.timeout(2000) });
    await res.arrayBuffer();
    return (res.headers.get('server') ?? '').startsWith(`Azurite-${service}/`);
  } catch {
    return false;
  }
}

async function stopPid(pid: number, graceMs = 5000): Promise<void> {
  const gone = async (ms: number) => {
    for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 50))) if (!isAlive(pid)) return true;
    return !isAlive(pid);
  };
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  if (await gone(graceMs)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  await gone(graceMs);
}

async function readRecord(file: string): Promise<AzuriteRecord | undefined> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as AzuriteRecord;
  } catch {
    return undefined;
  }
}

async function writeRecord(file: string, record: AzuriteRecord): Promise<void> {
  await writeFile(`${file}.tmp`, JSON.stringify(record, null, 2) + '\n');
  await rename(`${file}.tmp`, file);
}

/**
 * The Azurite of a data folder, for `paramdelta serve`. A serve that was killed leaves its Azurite
 * running; its pid and ports are recorded in the folder (`.paramdelta-azurite.json`), so the next
 * serve reuses it when it is alive, really Azurite on that folder and answering on those ports, and
 * stops it when it is Azurite on that folder but does not answer. Only then does it start one: never
 * two on one folder. A process that is not that Azurite is left alone. A serve that is still alive
 * on the folder makes this fail.
 */
export async function azuriteForFolder(location: string, log: (line: string) => void = () => {}, ports: AzuritePorts = 'free'): Promise<Azurite> {
  const folder = path.resolve(location);
  await mkdir(folder, { recursive: true });
  const file = path.join(folder, AZURITE_RECORD);
  const found = await readRecord(file);
  if (found) {
    if (found.owner !== process.pid && isAlive(found.owner) && ((await commandLine(found.owner))?.includes('serve') ?? true)) {
      throw new InputError(`data folder ${folder} is in use by another paramdelta serve (pid ${found.owner}); stop it first or pass another --data-dir`);
    }
    if (await isAzuriteOn(found.pid, folder)) {
      const answers = (await answersAs(found.blobPort, 'Blob')) && (await answersAs(found.queuePort, 'Queue')) && (await answersAs(found.tablePort, 'Table'));
      if (answers) {
        await writeRecord(file, { ...found, owner: process.pid });
        log(`reusing Azurite (pid ${found.pid}) left running on ${folder}`);
        return adopted(found, file);
      }
      log(`stopping Azurite (pid ${found.pid}) on ${folder}: it does not answer on its ports`);
      await stopPid(found.pid);
      await rm(found.cwd, { recursive: true, force: true });
    }
    await rm(file, { force: true });
  }
  const started = await startAzurite({ location: folder, logFile: path.join(folder, AZURITE_LOG), ports });
  const record: AzuriteRecord = {
    pid: started.pid, blobPort: started.blobPort, queuePort: started.queuePort, tablePort: started.tablePort,
    cwd: started.cwd, location: folder, owner: process.pid, startedAt: new Date().toISOString(),
  };
  await writeRecord(file, record);
  return {
    ...started,
    async stop() {
      await started.stop();
      await rm(file, { force: true });
    },
  };
}

/** A handle on a recorded Azurite this process did not start. */
function adopted(r: AzuriteRecord, file: string): Azurite {
  return {
    connectionString: connectionStringFor(r.blobPort, r.queuePort, r.tablePort),
    blobPort: r.blobPort, queuePort: r.queuePort, tablePort: r.tablePort, pid: r.pid, reused: true,
    standardPorts: STANDARD_PORTS.every((p, i) => [r.blobPort, r.queuePort, r.tablePort][i] === p),
    async stop() {
      await stopPid(r.pid);
      await rm(r.cwd, { recursive: true, force: true });
      await rm(file, { force: true });
    },
  };
}
