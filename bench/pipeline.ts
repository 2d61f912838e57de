// npm run bench:pipeline [-- --size 1GiB --keep]
// Applies a delta to a BF16 model of --size through `paramdelta serve` on Azurite: the compact delta,
// and the plain delta of the same model before and after it (their mean is the baseline). It also
// compares the plain apply with the raw @azure/storage-blob throughput against the same Azurite in the
// same run: download the same input bytes and upload the same output bytes, in 8 MiB blocks. The
// serve process's peak RSS is read from /proc (VmHWM) before it stops.
import { spawn } from 'node:child_process';
import { Readable } from 'node:stream';
import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises';
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
const root = await mkdtemp(path.join(os.tmpdir(), 'paramdelta-bench-pipeline-'));
const say = (s: string) => console.log(s);
say(`machine: ${os.cpus()[0]?.model} x${os.cpus().length}, ${formatBytes(os.totalmem())} RAM, node ${process.version}`);

const fam = await writeSyntheticFamily(path.join(root, 'family'), { dtype: 'BF16', bytes: size, shards: 4, hidden: 2048 });
const delta = path.join(root, 'delta');
const plainDelta = path.join(root, 'delta-plain');
if ((await cli(['compute', '--base', fam.base, '--post', fam.post, '--out', delta])) !== 0) throw new Error('compute failed');
if ((await cli(['compute', '--base', fam.base, '--post', fam.post, '--out', plainDelta, '--delta-format', 'safetensors'])) !== 0) throw new Error('compute failed');
const azurite = await startAzurite({ location: path.join(root, 'azurite') });
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
const baseBytes = await upload('models', 'bench/newbase', fam.newbase);
const compactIn = baseBytes + (await upload('deltas', 'bench', delta));
const inBytes = baseBytes + (await upload('deltas', 'bench-plain', plainDelta));
say(`uploaded a ${formatBytes(fam.bytes)} BF16 new base and its deltas to Azurite: ${formatBytes(compactIn)} of shards to read with the compact delta, ${formatBytes(inBytes)} with the plain one`);

// Raw SDK baseline: the same bytes down and up with the SDK's own parallel transfer helpers
// (8 MiB blocks, 4 in flight), through a 64 MiB window so it stays in bounded memory too. It runs
// before and after the pipeline, and the ratio uses their mean: this machine's speed drifts.
const block = 8 << 20;
const window = Buffer.alloc(64 << 20);
async function rawBaseline(outBytes: number): Promise<number> {
  const r0 = performance.now();
  for (const [container, prefix] of [['models', 'bench/newbase/'], ['deltas', 'bench-plain/']]) {
    for await (const b of service.getContainerClient(container).listBlobsFlat({ prefix })) {
      if (!b.name.endsWith('.safetensors')) continue;
      const client = service.getContainerClient(container).getBlobClient(b.name);
      const len = b.properties.contentLength ?? 0;
      for (let off = 0; off < len; off += window.length) {
        await client.downloadToBuffer(window, off, Math.min(window.length, len - off), { blockSize: block, concurrency: 4 });
      }
    }
  }
  const raw = service.getContainerClient('posted-models').getBlockBlobClient('raw-baseline.bin');
  await raw.uploadStream(Readable.from((function* () {
    for (let left = outBytes; left > 0; left -= window.length) yield left >= window.length ? window : window.subarray(0, left);
  })()), block, 4);
  await raw.delete();
  return (performance.now() - r0) / 1000;
}
// The output is as big as the new base: every tensor keeps its dtype.
const rawBefore = await rawBaseline(baseBytes);

// The service, in its own process.
const entry = fileURLToPath(new URL('../cli/index.js', import.meta.url));
const port = 17000 + Math.floor(Math.random() * 2000);
const child = spawn(process.execPath, [entry, 'serve', '--port', String(port), '--storage', azurite.connectionString], {
  stdio: ['ignore', 'pipe', 'inherit'],
});
await new Promise<void>((resolve) => child.stdout.on('data', (d) => String(d).includes('watching') && resolve()));
/** Applies one registered delta through the service; returns the wall seconds. */
async function applyThroughServe(name: string, output: string): Promise<number> {
  const t0 = performance.now();
  const res = await fetch(`http://127.0.0.1:${port}/api/models`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ base: 'models/bench/newbase', deltas: [{ name }], output }),
  });
  const { statusUri } = (await res.json()) as { statusUri: string };
  let status: { status: string; error: string | null };
  do {
    await new Promise((r) => setTimeout(r, 200));
    status = (await (await fetch(statusUri)).json()) as typeof status;
  } while (status.status === 'Running' || status.status === 'Pending');
  if (status.status !== 'Completed') throw new Error(`apply ${status.status}: ${status.error}`);
  return (performance.now() - t0) / 1000;
}
const plainBefore = await applyThroughServe('bench-plain', 'posted-models/bench');
const compactSecs = await applyThroughServe('bench', 'posted-models/bench-compact');
const plainAfter = await applyThroughServe('bench-plain', 'posted-models/bench-2');
const secs = (plainBefore + plainAfter) / 2;
const hwm = Number(/VmHWM:\s+(\d+) kB/.exec(await readFile(`/proc/${child.pid}/status`, 'utf8'))?.[1] ?? NaN) * 1024;
child.kill('SIGTERM');
let outBytes = 0;
for await (const b of service.getContainerClient('posted-models').listBlobsFlat({ prefix: 'bench/' })) {
  if (b.name.endsWith('.safetensors')) outBytes += b.properties.contentLength ?? 0;
}

const rawAfter = await rawBaseline(outBytes);
const rawSecs = (rawBefore + rawAfter) / 2;
const moved = inBytes + outBytes;
say(`pipeline apply, plain delta  : ${secs.toFixed(2)} s (before ${plainBefore.toFixed(2)} s, after ${plainAfter.toFixed(2)} s) for ${formatBytes(moved)} read+written = ${formatBytes(moved / secs)}/s`);
say(`pipeline apply, compact delta: ${compactSecs.toFixed(2)} s for ${formatBytes(compactIn + outBytes)} read+written`);
say(`compact ÷ plain: ${(compactSecs / secs).toFixed(2)}  (target ≤ 0.70); serve peak RSS ${formatBytes(hwm)} (target ≤ 300 MiB)`);
say(`raw SDK       : ${rawSecs.toFixed(2)} s for the same bytes = ${formatBytes(moved / rawSecs)}/s (before ${rawBefore.toFixed(2)} s, after ${rawAfter.toFixed(2)} s)`);
say(`throughput ratio, plain delta (pipeline / raw): ${(rawSecs / secs).toFixed(2)}  (target ≥ 0.70)`);
await azurite.stop();
if (!keep) await rm(root, { recursive: true, force: true });
