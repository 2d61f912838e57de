import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, connect, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

/** Azurite's well-known development account (public, documented; not a secret). */
export const AZURITE_ACCOUNT = 'devstoreaccount1';
export const AZURITE_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';

const AZURITE_MAIN = createRequire(import.meta.url).resolve('azurite/dist/src/azurite.js');

export interface Azurite {
  connectionString: string;
  blobPort: number;
  queuePort: number;
  tablePort: number;
  stop(): Promise<void>;
}

/** Free ports, found by binding port 0; all held open together so the three differ. */
async function freePorts(n: number): Promise<number[]> {
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

function accepts(port: number): Promise<boolean> {
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
}

/**
 * Starts Azurite (blob, queue, table) on free loopback ports. Always with --disableTelemetry (it
 * otherwise calls out to the internet) and --skipApiVersionCheck (the SDK speaks a newer API
 * version than Azurite knows).
 */
export async function startAzurite(opts: AzuriteOptions = {}): Promise<Azurite> {
  const timeoutMs = opts.timeoutMs ?? 20_000;
  const [blobPort, queuePort, tablePort] = await freePorts(3);
  // In-memory persistence refuses --location; run in a temp cwd so nothing Azurite writes lands in the repo.
  const cwd = await mkdtemp(path.join(tmpdir(), 'paramdelta-azurite-'));
  const storage = opts.location ? ['--location', opts.location] : ['--inMemoryPersistence'];
  const env = { ...process.env };
  delete env.AZURITE_ACCOUNTS; // custom accounts would invalidate the well-known key
  const child = spawn(
    process.execPath,
    [
      AZURITE_MAIN,
      '--silent',
      '--disableTelemetry',
      '--skipApiVersionCheck',
      ...storage,
      '--blobHost', '127.0.0.1', '--blobPort', String(blobPort),
      '--queueHost', '127.0.0.1', '--queuePort', String(queuePort),
      '--tableHost', '127.0.0.1', '--tablePort', String(tablePort),
    ],
    { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  const keep = (d: Buffer) => {
    output = (output + d.toString()).slice(-4000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
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
        throw new Error(`Azurite did not start on port ${port}${gone ? ' (it exited)' : ''}:\n${output}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  const base = 'http://127.0.0.1';
  const connectionString = [
    'DefaultEndpointsProtocol=http',
    `AccountName=${AZURITE_ACCOUNT}`,
    `AccountKey=${AZURITE_KEY}`,
    `BlobEndpoint=${base}:${blobPort}/${AZURITE_ACCOUNT}`,
    `QueueEndpoint=${base}:${queuePort}/${AZURITE_ACCOUNT}`,
    `TableEndpoint=${base}:${tablePort}/${AZURITE_ACCOUNT}`,
  ].join(';') + ';';
  return { connectionString, blobPort, queuePort, tablePort, stop };
}
