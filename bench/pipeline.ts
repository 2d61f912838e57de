// npm run bench:pipeline [-- --size 1GiB --keep --count --profile DIR]
// Applies a delta to a BF16 model of --size through `paramdelta serve` on Azurite, after a warm-up on a
// small family: the plain delta, the compact delta twice, the plain delta again (each layout's mean). It also
// compares each apply with the raw @azure/storage-blob throughput against the same Azurite in the
// same run: download the same input bytes and upload the same output bytes, in 8 MiB blocks. The
// serve process's peak RSS is read from /proc (VmHWM) before it stops.
import { spawn } from 'node:child_process';
import http from 'node:http';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BlobServiceClient } from '@azure/storage-blob';
import { startAzurite } from '../cli/host/azurite.js';
import { writeSyntheticFamily } from '../lib/synth/family.js';
import { formatBytes, parseSize } from '../lib/ops/sizes.js';
import { main as cli } from '../cli/index.js';

const args = process.argv.slice(2);
const size = parseSize(args.includes('--size') ? args[args.indexOf('--size') + 1] : '1GiB');
const keep = args.includes('--keep');
// --count: route serve's storage traffic through a counting proxy (costs CPU; for diagnosis, not timing).
const counting = args.includes('--count');
// --profile DIR: serve runs with --cpu-prof (every thread) into DIR.
const profileDir = args.includes('--profile') ? path.resolve(args[args.indexOf('--profile') + 1]) : null;
const root = await mkdtemp(path.join(os.tmpdir(), 'paramdelta-bench-pipeline-'));
const say = (s: string) => console.log(s);
say(`machine: ${os.cpus()[0]?.model} x${os.cpus().length}, ${formatBytes(os.totalmem())} RAM, node ${process.version}`);

const fam = await writeSyntheticFamily(path.join(root, 'family'), { dtype: 'BF16', bytes: size, shards: 4, hidden: 2048 });
const delta = path.join(root, 'delta');
const plainDelta = path.join(root, 'delta-plain');
if ((await cli(['compute', '--base', fam.base, '--post', fam.post, '--out', delta])) !== 0) throw new Error('compute failed');
if ((await cli(['compute', '--base', fam.base, '--post', fam.post, '--out', plainDelta, '--delta-format', 'safetensors'])) !== 0) throw new Error('compute failed');
// A small family applied once in each layout before anything is timed: module loading, kernel
// compilation and the codec workers' start are paid there, by neither measured layout.
const warm = await writeSyntheticFamily(path.join(root, 'warm'), { dtype: 'BF16', bytes: 16 << 20, shards: 2, hidden: 512, seed: 11 });
for (const [dir, format] of [['warm-delta', 'compact'], ['warm-delta-plain', 'safetensors']]) {
  if ((await cli(['compute', '--base', warm.base, '--post', warm.post, '--out', path.join(root, dir), '--delta-format', format])) !== 0) throw new Error('compute failed');
}
const azurite = await startAzurite({
  location: path.join(root, 'azurite'),
  nodeArgs: profileDir ? ['--cpu-prof', '--cpu-prof-dir', path.join(profileDir, 'azurite')] : [],
});
const service = BlobServiceClient.fromConnectionString(azurite.connectionString);
for (const c of ['models', 'deltas', 'posted-models', 'base-models']) await service.getContainerClient(c).createIfNotExists();

async function upload(container: string, prefix: string, dir: string): Promise<number> {
  let bytes = 0;
  for (const f of await readdir(dir)) {
    await service.getContainerClient(container).getBlockBlobClient(`${prefix}/${f}`).uploadFile(path.join(dir, f), { blockSize: 8 << 20, concurrency: 4 });
    bytes += /\.(safetensors|pdelta)$/.test(f) ? (await stat(path.join(dir, f))).size : 0;
  }
  return bytes;
}
await upload('models', 'warm/newbase', warm.newbase);
await upload('deltas', 'warm', path.join(root, 'warm-delta'));
await upload('deltas', 'warm-plain', path.join(root, 'warm-delta-plain'));
const baseBytes = await upload('models', 'bench/newbase', fam.newbase);
const compactIn = baseBytes + (await upload('deltas', 'bench', delta));
const inBytes = baseBytes + (await upload('deltas', 'bench-plain', plainDelta));
say(`uploaded a ${formatBytes(fam.bytes)} BF16 new base and its deltas to Azurite: ${formatBytes(compactIn)} of shards to read with the compact delta, ${formatBytes(inBytes)} with the plain one`);

// Raw SDK baseline: the same bytes down with the SDK's own parallel download helper and up as staged
// blocks (8 MiB, 4 in flight), through a 64 MiB window so it stays in bounded memory too. It runs
// before and after the pipeline, and the ratio uses their mean: this machine's speed drifts. Run with
// the compact apply's bytes as well, it gives the best compact ÷ plain ratio this emulator allows
// when nothing but the storage traffic costs anything.
const block = 8 << 20;
const window = Buffer.alloc(64 << 20);
async function rawBaseline(outBytes: number, layout: 'plain' | 'compact'): Promise<number> {
  const cpu0 = await cpuSeconds(azurite.pid);
  const r0 = performance.now();
  const deltaPrefix = layout === 'plain' ? 'bench-plain/' : 'bench/';
  for (const [container, prefix] of [['models', 'bench/newbase/'], ['deltas', deltaPrefix]]) {
    for await (const b of service.getContainerClient(container).listBlobsFlat({ prefix })) {
      if (!/\.(safetensors|pdelta)$/.test(b.name)) continue;
      const client = service.getContainerClient(container).getBlobClient(b.name);
      const len = b.properties.contentLength ?? 0;
      for (let off = 0; off < len; off += window.length) {
        await client.downloadToBuffer(window, off, Math.min(window.length, len - off), { blockSize: block, concurrency: 4 });
      }
    }
  }
  // The upload stages 8 MiB blocks, 4 in flight, each with its transactional MD5 as the tool sends
  // (the same durability work; without one Azurite computes a CRC64 of each block in JavaScript).
  const raw = service.getContainerClient('posted-models').getBlockBlobClient('raw-baseline.bin');
  const ids: string[] = [];
  let next = 0;
  await Promise.all(Array.from({ length: 4 }, async () => {
    for (let i = next++; i * block < outBytes; i = next++) {
      const piece = window.subarray(0, Math.min(block, outBytes - i * block));
      ids[i] = Buffer.from(String(i).padStart(8, '0')).toString('base64');
      await raw.stageBlock(ids[i], piece, piece.length, { transactionalContentMD5: createHash('md5').update(piece).digest() });
    }
  }));
  await raw.commitBlockList(ids);
  await raw.delete();
  const secs = (performance.now() - r0) / 1000;
  say(`  raw SDK, the ${layout} apply's bytes: ${secs.toFixed(2)} s; CPU: Azurite ${((await cpuSeconds(azurite.pid)) - cpu0).toFixed(2)} s`);
  return secs;
}
// The output is as big as the new base: every tensor keeps its dtype.
const rawBefore = await rawBaseline(baseBytes, 'plain');
const rawCompactBefore = await rawBaseline(baseBytes, 'compact');

/** CPU seconds (user + system) a process has used so far, from /proc. */
async function cpuSeconds(pid: number): Promise<number> {
  const f = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

/** CPU seconds (user, system) per thread name of a process, from /proc. */
async function threadCpu(pid: number): Promise<Map<string, [number, number]>> {
  const out = new Map<string, [number, number]>();
  for (const tid of await readdir(`/proc/${pid}/task`).catch(() => [])) {
    try {
      const name = (await readFile(`/proc/${pid}/task/${tid}/comm`, 'utf8')).trim();
      const f = (await readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8')).split(') ')[1].split(' ');
      const [u, sy] = out.get(name) ?? [0, 0];
      out.set(name, [u + Number(f[11]) / 100, sy + Number(f[12]) / 100]);
    } catch {
      // the thread ended
    }
  }
  return out;
}
function threadDiff(a: Map<string, [number, number]>, b: Map<string, [number, number]>): string {
  return [...b]
    .map(([k, [u, s]]) => [k, u - (a.get(k)?.[0] ?? 0), s - (a.get(k)?.[1] ?? 0)] as const)
    .filter(([, u, s]) => u + s >= 0.05)
    .map(([k, u, s]) => `${k} ${u.toFixed(2)}+${s.toFixed(2)}`)
    .join(', ');
}

type Counts = Map<string, { n: number; bytes: number; sizes: number[] }>;
let counts: Counts = new Map();
/** A pass-through proxy in front of Azurite's blob port that counts requests and body bytes by kind. */
async function countingProxy(target: number): Promise<number> {
  const server = http.createServer({ highWaterMark: 1 << 20 }, (req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const container = url.pathname.split('/')[2] ?? '';
    const comp = url.searchParams.get('comp') ?? '';
    const range = req.headers['x-ms-range'] ?? req.headers.range;
    const kind = `${container} ${req.method}${comp ? ' ' + comp : ''}${range ? ' ranged' : ''}`;
    const c = counts.get(kind) ?? { n: 0, bytes: 0, sizes: [] };
    counts.set(kind, c);
    c.n++;
    let size = 0;
    req.on('data', (d: Buffer) => (size += d.length));
    const up = http.request({ host: '127.0.0.1', port: target, method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 500, r.headers);
      r.on('data', (d: Buffer) => (size += d.length));
      r.on('end', () => {
        c.bytes += size;
        c.sizes.push(size);
      });
      r.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  server.unref();
  return (server.address() as { port: number }).port;
}
function printCounts(label: string): void {
  say(`  requests, ${label}:`);
  for (const [kind, c] of [...counts].sort((a, b) => b[1].bytes - a[1].bytes)) {
    const sorted = [...c.sizes].sort((a, b) => a - b);
    const med = sorted[Math.floor(sorted.length / 2)] ?? 0;
    say(`    ${kind.padEnd(40)} ${String(c.n).padStart(6)} requests, ${formatBytes(c.bytes).padStart(10)}, median ${formatBytes(med)}`);
  }
  counts = new Map();
}

// The service, in its own process.
const entry = fileURLToPath(new URL('../cli/index.js', import.meta.url));
const port = 17000 + Math.floor(Math.random() * 2000);
const serveStorage = counting ? azurite.connectionString.replace(`:${azurite.blobPort}/`, `:${await countingProxy(azurite.blobPort)}/`) : azurite.connectionString;
const nodeArgs = [...(profileDir ? ['--cpu-prof', '--cpu-prof-dir', profileDir] : []), ...(process.env.BENCH_SERVE_NODE_ARGS?.split(' ').filter(Boolean) ?? [])];
const child = spawn(process.execPath, [...nodeArgs, entry, 'serve', '--port', String(port), '--storage', serveStorage], {
  stdio: ['ignore', 'pipe', process.env.BENCH_SERVE_STDERR ? 'pipe' : 'inherit'],
});
if (process.env.BENCH_SERVE_STDERR) {
  const log = (await import('node:fs')).createWriteStream(process.env.BENCH_SERVE_STDERR);
  child.stderr!.pipe(log);
  child.stdout!.on('data', (d) => log.write(d));
}
await new Promise<void>((resolve) => child.stdout!.on('data', (d) => String(d).includes('watching') && resolve()));
/** The peak resident memory of a process since it started or since clear_refs was last written. */
async function peakRss(pid: number): Promise<number> {
  return Number(/VmHWM:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN) * 1024;
}
const peaks: number[] = [];
/** Applies one registered delta through the service; returns the wall seconds. */
async function applyThroughServe(name: string, output: string, base = 'models/bench/newbase'): Promise<number> {
  const cpu0 = [await cpuSeconds(child.pid!), await cpuSeconds(azurite.pid)];
  const threads0 = await threadCpu(child.pid!);
  // Writing 5 to clear_refs resets the peak (VmHWM), so each apply's own peak is read after it.
  await writeFile(`/proc/${child.pid}/clear_refs`, '5').catch(() => undefined);
  const t0 = performance.now();
  const res = await fetch(`http://127.0.0.1:${port}/api/models`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ base, deltas: [{ name }], output }),
  });
  const { statusUri } = (await res.json()) as { statusUri: string };
  let status: { status: string; error: string | null };
  do {
    await new Promise((r) => setTimeout(r, 200));
    status = (await (await fetch(statusUri)).json()) as typeof status;
  } while (status.status === 'Running' || status.status === 'Pending');
  if (status.status !== 'Completed') throw new Error(`apply ${status.status}: ${status.error}`);
  const secs = (performance.now() - t0) / 1000;
  const cpu1 = [await cpuSeconds(child.pid!), await cpuSeconds(azurite.pid)];
  const peak = await peakRss(child.pid!);
  peaks.push(peak);
  say(`  ${name} -> ${output}: ${secs.toFixed(2)} s; CPU: serve ${(cpu1[0] - cpu0[0]).toFixed(2)} s, Azurite ${(cpu1[1] - cpu0[1]).toFixed(2)} s; serve peak RSS ${formatBytes(peak)}`);
  say(`    serve threads (user+system s): ${threadDiff(threads0, await threadCpu(child.pid!))}`);
  if (counting) printCounts(name);
  return secs;
}
say('warm-up (16 MiB family, not timed):');
await applyThroughServe('warm-plain', 'posted-models/warm-plain', 'models/warm/newbase');
await applyThroughServe('warm', 'posted-models/warm', 'models/warm/newbase');
peaks.length = 0;
// plain, compact, compact, plain: a drift of the machine's speed during the run weighs on both alike.
const plainBefore = await applyThroughServe('bench-plain', 'posted-models/bench');
const compactFirst = await applyThroughServe('bench', 'posted-models/bench-compact');
const compactSecond = await applyThroughServe('bench', 'posted-models/bench-compact-2');
const plainAfter = await applyThroughServe('bench-plain', 'posted-models/bench-2');
const secs = (plainBefore + plainAfter) / 2;
const compactSecs = (compactFirst + compactSecond) / 2;
const hwm = Math.max(...peaks);
const exited = new Promise((r) => child.once('exit', r));
child.kill('SIGTERM');
await exited;
let outBytes = 0;
for await (const b of service.getContainerClient('posted-models').listBlobsFlat({ prefix: 'bench/' })) {
  if (b.name.endsWith('.safetensors')) outBytes += b.properties.contentLength ?? 0;
}

const rawCompactAfter = await rawBaseline(outBytes, 'compact');
const rawAfter = await rawBaseline(outBytes, 'plain');
const rawSecs = (rawBefore + rawAfter) / 2;
const rawCompactSecs = (rawCompactBefore + rawCompactAfter) / 2;
const moved = inBytes + outBytes;
say(`pipeline apply, plain delta  : ${secs.toFixed(2)} s (before ${plainBefore.toFixed(2)} s, after ${plainAfter.toFixed(2)} s) for ${formatBytes(moved)} read+written = ${formatBytes(moved / secs)}/s`);
say(`pipeline apply, compact delta: ${compactSecs.toFixed(2)} s (first ${compactFirst.toFixed(2)} s, second ${compactSecond.toFixed(2)} s) for ${formatBytes(compactIn + outBytes)} read+written`);
say(`compact ÷ plain: ${(compactSecs / secs).toFixed(2)}  (target ≤ 0.70); serve peak RSS ${formatBytes(hwm)} (target ≤ 300 MiB)`);
say(`raw SDK       : ${rawSecs.toFixed(2)} s for the same bytes = ${formatBytes(moved / rawSecs)}/s (before ${rawBefore.toFixed(2)} s, after ${rawAfter.toFixed(2)} s)`);
say(`throughput ratio, plain delta (pipeline / raw): ${(rawSecs / secs).toFixed(2)}  (target ≥ 0.70)`);
say(`raw SDK, compact apply's bytes: ${rawCompactSecs.toFixed(2)} s (before ${rawCompactBefore.toFixed(2)} s, after ${rawCompactAfter.toFixed(2)} s)`);
say(`compact ÷ plain with the raw SDK alone: ${(rawCompactSecs / rawSecs).toFixed(2)}  (what the storage traffic alone allows; target for the pipeline ≤ 0.70)`);
await azurite.stop();
if (!keep) await rm(root, { recursive: true, force: true });
