// `npm run demo` end to end at a small size: the built CLI (`npm test` builds dist/ first) runs the
// pipeline demo as a child process on explicit ports, ends with the byte-for-byte check, and leaves
// no Azurite or serve behind; Ctrl-C stops it too; and it never writes into a folder it did not make.
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { connect, createServer, type Server } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { withTempDir } from './helpers/models.js';
import { runCli } from './helpers/cli.js';
import { isAlive, portsNote, startAzurite, STANDARD_PORTS } from '../cli/host/azurite.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const CLI = path.join(root, 'dist/cli/index.js');

/** n different free ports (all held open together, then released). */
async function freePorts(n: number): Promise<number[]> {
  const servers: Server[] = [];
  for (let i = 0; i < n; i++) {
    const s = createServer();
    servers.push(s);
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  }
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
  return ports;
}

const accepts = (port: number) =>
  new Promise<boolean>((resolve) => {
    const sock = connect({ host: '127.0.0.1', port });
    sock.once('connect', () => (sock.destroy(), resolve(true)));
    sock.once('error', () => resolve(false));
  });

/** Runs the demo from dist/ in `cwd`; `interruptOn` sends SIGINT once stdout matches it. */
function demo(cwd: string, args: string[], interruptOn?: RegExp): Promise<{ code: number | null; out: string }> {
  const child = spawn(process.execPath, [CLI, 'demo', ...args], { cwd, env: { ...process.env, AzureWebJobsStorage: '' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let sent = false;
  const take = (d: Buffer) => {
    out += d;
    if (interruptOn && !sent && interruptOn.test(out)) {
      sent = true;
      child.kill('SIGINT');
    }
  };
  child.stdout.on('data', take);
  child.stderr.on('data', take);
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code, out })));
}

describe('npm run demo: the pipeline demo', () => {
  it('runs the event-driven flow, ends with the byte-for-byte check, and stops what it started', () =>
    withTempDir(async (tmp) => {
      const [servePort, blob, queue, table] = await freePorts(4);
      // An earlier run of another size left a longer posted model: none of it may linger into this run's check.
      await mkdir(path.join(tmp, 'out', 'posted'), { recursive: true });
      await writeFile(path.join(tmp, 'out', '.paramdelta-demo.json'), JSON.stringify({ format: 'paramdelta.demo' }));
      const stale = 'model-00009-of-00009.safetensors';
      await writeFile(path.join(tmp, 'out', 'posted', '.paramdelta-download.json'), JSON.stringify({ format: 'paramdelta.download', source: 'az://posted-models/demo-next/demo-chat', files: [stale] }));
      await writeFile(path.join(tmp, 'out', 'posted', stale), 'old');
      const r = await demo(tmp, ['--size', '1MiB', '--dir', 'out', '--port', String(servePort), '--azurite-ports', `${blob},${queue},${table}`]);
      expect(r.code, r.out).toBe(0);
      const out = r.out;
      const pid = Number(/Azurite \(pid (\d+), blob (\d+), queue (\d+), table (\d+)\)/.exec(out)?.[1]);
      expect(out).toContain(`Azurite (pid ${pid}, blob ${blob}, queue ${queue}, table ${table}): `);
      expect(out).toContain(`BlobEndpoint=http://127.0.0.1:${blob}/devstoreaccount1`);
      expect(out).toContain(`dashboard: http://127.0.0.1:${servePort}/`);
      // The steps, in order: register over HTTP, upload the new base index last, follow the re-post, check.
      const order = [
        /POST \/api\/deltas/, /computeDelta: Completed/, /-> az:\/\/base-models\/demo-next: .*model\.safetensors\.index\.json last/,
        /applyDeltas \(demo-chat\): Running, shards, shards \d+\/(\d+)/, /applyDeltas \(demo-chat\): Completed, completed, shards (\d+)\/\1/,
        /repostBase: Completed/, /az:\/\/posted-models\/demo-next\/demo-chat -> out\/posted/,
        /the posted model equals the local apply byte for byte/, /stop what the demo started: serve, Azurite \(pid \d+\)/,
      ];
      let at = 0;
      for (const re of order) {
        const m = re.exec(out.slice(at));
        expect(m, `${re} after offset ${at}:\n${out}`).not.toBeNull();
        at += m!.index + m![0].length;
      }
      // Progress moved: bytes of the re-post were reported before it completed, as a rate.
      expect(out).toMatch(/applyDeltas \(demo-chat\): Running, (shards|finalizing), shards \d+\/\d+, [\d.]+ \w+ of [\d.]+ \w+, [\d.]+ \w+\/s/);

      // The posted model and the local apply, compared here too: every file but the manifest byte for byte.
      const posted = path.join(tmp, 'out', 'posted');
      const expected = path.join(tmp, 'out', 'expected');
      const names = (await readdir(expected)).filter((f) => f !== 'paramdelta.json').sort();
      expect(names.filter((f) => f.endsWith('.safetensors')).length).toBeGreaterThan(1);
      for (const f of names) expect((await readFile(path.join(posted, f))).equals(await readFile(path.join(expected, f))), f).toBe(true);
      // Beside the model, the pipeline's evaluation of it (a local apply has none).
      expect((await readdir(posted)).filter((f) => !f.startsWith('.')).sort()).toEqual([...names, 'paramdelta.json', 'paramdelta-eval.json'].sort());
      const evaluation = JSON.parse(await readFile(path.join(posted, 'paramdelta-eval.json'), 'utf8'));
      expect(evaluation.model.meanLoss).toBeGreaterThan(0);
      expect(out).toContain(`quality: loss ${evaluation.model.meanLoss.toFixed(4)}`);
      const strip = async (d: string) => {
        const { createdAt, base, deltas, ...rest } = JSON.parse(await readFile(path.join(d, 'paramdelta.json'), 'utf8'));
        return { ...rest, scales: deltas.map((x: { scale: number }) => x.scale), stamped: typeof createdAt === 'string' && typeof base === 'string' };
      };
      expect(await strip(posted)).toEqual(await strip(expected));

      // Nothing left running: Azurite's process, its ports and serve's port are gone.
      expect(isAlive(pid)).toBe(false);
      for (const p of [blob, queue, table, servePort]) expect(await accepts(p), `port ${p}`).toBe(false);
      // And nothing written outside its folder.
      expect(await readdir(tmp)).toEqual(['out']);
    }), 90_000);

  it('Ctrl-C stops it, with Azurite and serve', () =>
    withTempDir(async (tmp) => {
      const [servePort, blob, queue, table] = await freePorts(4);
      const r = await demo(tmp, ['--size', '1MiB', '--port', String(servePort), '--azurite-ports', `${blob},${queue},${table}`], /dashboard: /);
      expect(r.code, r.out).toBe(130);
      expect(r.out).toMatch(/interrupted/);
      const pid = Number(/Azurite \(pid (\d+)/.exec(r.out)?.[1]);
      expect(pid).toBeGreaterThan(0);
      expect(isAlive(pid)).toBe(false);
      for (const p of [blob, queue, table, servePort]) expect(await accepts(p), `port ${p}`).toBe(false);
    }), 60_000);

  it('refuses a folder it did not make, before starting anything, and leaves it as it was', () =>
    withTempDir(async (tmp) => {
      const dir = path.join(tmp, 'mine');
      await mkdir(path.join(dir, 'family'), { recursive: true });
      await writeFile(path.join(dir, 'notes.txt'), 'mine');
      const r = await runCli(['demo', '--dir', dir]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/--dir .*mine: holds notes\.txt, which the demo did not write/);
      expect((await readdir(dir)).sort()).toEqual(['family', 'notes.txt']);
      expect(await readdir(path.join(dir, 'family'))).toEqual([]);
      const ports = await runCli(['demo', '--dir', path.join(tmp, 'other'), '--azurite-ports', '1,2']);
      expect(ports.code).toBe(2);
      expect(ports.stderr).toMatch(/--azurite-ports: "1,2" is not "standard", "free" or three different ports/);
    }));
});

describe("serve's Azurite ports", () => {
  it('takes free ports when a standard one is taken, and says so', async () => {
    // Hold 10000 (when nobody else does) so the standard ports are not all free, whoever runs this.
    const holder = createServer();
    await new Promise<void>((r) => {
      holder.once('error', () => r());
      holder.listen(STANDARD_PORTS[0], '127.0.0.1', () => r());
    });
    try {
      const a = await startAzurite({ ports: 'standard' });
      try {
        expect(a.standardPorts).toBe(false);
        expect([a.blobPort, a.queuePort, a.tablePort].some((p) => (STANDARD_PORTS as readonly number[]).includes(p))).toBe(false);
        expect(a.connectionString).toContain(`BlobEndpoint=http://127.0.0.1:${a.blobPort}/devstoreaccount1`);
        expect(portsNote(a, 'standard')).toBe(`blob ${a.blobPort}, queue ${a.queuePort}, table ${a.tablePort}: the standard ports 10000, 10001, 10002 were taken`);
      } finally {
        await a.stop();
      }
    } finally {
      await new Promise<void>((r) => (holder.listening ? holder.close(() => r()) : r()));
    }
  });
});
