// npm run bench [-- --size 1GiB --dir /tmp/x --keep]
// Generates a BF16 model family, then times compute and apply against the I/O floor measured in
// the same run: reading the same input files and writing files of the same sizes with plain Node
// I/O, fsynced as the tool fsyncs them. Each operation runs in a child process so its peak RSS is
// its own; each is also timed with fsync off, to show what durability costs.
import { execSync, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, rm, stat } from 'node:fs/promises';
import { once } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeSyntheticFamily } from '../lib/synth/family.js';
import { formatBytes, parseSize } from '../lib/ops/sizes.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const size = parseSize(opt('--size', '1GiB'));
const keep = args.includes('--keep');
const cli = fileURLToPath(new URL('../cli/index.js', import.meta.url));

async function filesIn(dir: string): Promise<string[]> {
  return (await readdir(dir)).map((f) => path.join(dir, f));
}

async function bytesOf(files: string[]): Promise<number> {
  let n = 0;
  for (const f of files) n += (await stat(f)).size;
  return n;
}

/**
 * The floor: stream every input file through, then write as many files of the same sizes as the
 * operation wrote. With `fsync` it does the tool's durability work too: each file fsynced, then
 * its folder (the tool also renames; renames cost next to nothing).
 */
async function ioFloor(inputs: string[], outSizes: number[], outDir: string, fsync: boolean): Promise<number> {
  await mkdir(outDir, { recursive: true });
  const t0 = performance.now();
  for (const f of inputs) {
    const s = createReadStream(f, { highWaterMark: 8 << 20 });
    for await (const _chunk of s) void _chunk;
  }
  const block = Buffer.alloc(8 << 20, 0x3c);
  for (const [i, size] of outSizes.entries()) {
    const fh = await open(path.join(outDir, `out-${i}`), 'w');
    for (let left = size; left > 0; left -= block.length) await fh.write(left >= block.length ? block : block.subarray(0, left));
    if (fsync) await fh.sync();
    await fh.close();
    if (fsync) {
      const dir = await open(outDir, 'r');
      await dir.sync();
      await dir.close();
    }
  }
  const secs = (performance.now() - t0) / 1000;
  await rm(outDir, { recursive: true, force: true });
  return secs;
}

interface Timed {
  secs: number;
  rss: number;
  /** fsync calls the operation made, and seconds spent waiting in them. */
  syncs: number;
  syncSecs: number;
}

/** Runs the CLI in a child process; returns wall seconds, the child's peak RSS and its fsync time. */
async function timed(cliArgs: string[], fsync: boolean): Promise<Timed> {
  const sync = fileURLToPath(new URL('../lib/storage/local.js', import.meta.url));
  const code =
    `const s = await import(${JSON.stringify(sync)}); s.localSync.enabled = ${fsync};` +
    `const m = await import(${JSON.stringify(cli)}); const c = await m.main(${JSON.stringify(cliArgs)});` +
    `process.stderr.write('\\nRSS ' + process.resourceUsage().maxRSS * 1024 + ' SYNC ' + s.localSync.calls + ' ' + s.localSync.ms + '\\n'); process.exit(c);`;
  const t0 = performance.now();
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const [exit] = await once(child, 'exit');
  const secs = (performance.now() - t0) / 1000;
  if (exit !== 0) throw new Error(`paramdelta ${cliArgs[0]} failed (${exit}): ${err}`);
  const m = /RSS (\d+) SYNC (\d+) ([\d.]+)/.exec(err);
  return { secs, rss: Number(m?.[1] ?? NaN), syncs: Number(m?.[2] ?? NaN), syncSecs: Number(m?.[3] ?? NaN) / 1000 };
}

const root = opt('--dir', '') || (await mkdtemp(path.join(os.tmpdir(), 'paramdelta-bench-')));
console.log(`machine: ${os.cpus()[0]?.model} x${os.cpus().length}, ${formatBytes(os.totalmem())} RAM, node ${process.version}`);
const t0 = performance.now();
const fam = await writeSyntheticFamily(path.join(root, 'family'), { dtype: 'BF16', bytes: size, shards: 4, hidden: 2048 });
console.log(`generated a BF16 family of ${formatBytes(fam.bytes)} per model in ${((performance.now() - t0) / 1000).toFixed(1)} s under ${root}`);

/**
 * Flushes dirty pages and, where allowed (root on Linux), drops the page cache, so the operation
 * and its floor both start cold instead of one paying for the other's writeback.
 */
function settle(): 'cold' | 'warm' {
  execSync('sync');
  try {
    writeFileSync('/proc/sys/vm/drop_caches', '1');
    return 'cold';
  } catch {
    return 'warm';
  }
}

const rows: string[] = [];
const ROUNDS = 2;
/**
 * Times the operation with fsync (as shipped) and without, against the floor with and without,
 * each the best of ROUNDS, every step from a settled (cold, where allowed) cache.
 */
async function measure(label: string, cliArgs: string[], inputs: string[], outDir: string) {
  const inBytes = await bytesOf(inputs);
  const best = { op: Infinity, opNoSync: Infinity, floor: Infinity, floorNoSync: Infinity, syncSecs: Infinity, syncs: 0 };
  let rss = 0;
  let cache = 'warm';
  let outSizes: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    cache = settle();
    const r = await timed(cliArgs, true);
    if (r.secs < best.op) Object.assign(best, { op: r.secs, syncSecs: r.syncSecs, syncs: r.syncs });
    rss = Math.max(rss, r.rss);
    settle();
    best.opNoSync = Math.min(best.opNoSync, (await timed(cliArgs, false)).secs);
    outSizes = await Promise.all((await filesIn(outDir)).map(async (f) => (await stat(f)).size));
    settle();
    best.floor = Math.min(best.floor, await ioFloor(inputs, outSizes, path.join(root, 'floor.tmp'), true));
    settle();
    best.floorNoSync = Math.min(best.floorNoSync, await ioFloor(inputs, outSizes, path.join(root, 'floor.tmp'), false));
  }
  const outBytes = outSizes.reduce((a, b) => a + b, 0);
  const row =
    `${label.padEnd(8)} in ${formatBytes(inBytes).padStart(9)}  out ${formatBytes(outBytes).padStart(9)} in ${outSizes.length} files  ` +
    `wall ${best.op.toFixed(2)} s (no fsync ${best.opNoSync.toFixed(2)} s; ${best.syncs} fsyncs waited ${best.syncSecs.toFixed(2)} s)  ` +
    `floor ${best.floor.toFixed(2)} s (no fsync ${best.floorNoSync.toFixed(2)} s)  ratio ${(best.op / best.floor).toFixed(2)} ` +
    `(no fsync ${(best.opNoSync / best.floorNoSync).toFixed(2)})  peak RSS ${formatBytes(rss)}  (${cache} cache, best of ${ROUNDS})`;
  console.log(row);
  rows.push(row);
}

const delta = path.join(root, 'delta');
const out = path.join(root, 'reposted');
const modelFiles = async (d: string) => (await filesIn(d)).filter((f) => f.endsWith('.safetensors'));
await measure('compute', ['compute', '--base', fam.base, '--post', fam.post, '--out', delta, '--force'], [...(await modelFiles(fam.base)), ...(await modelFiles(fam.post))], delta);
await measure('apply', ['apply', '--base', fam.newbase, '--delta', delta, '--out', out, '--force'], [...(await modelFiles(fam.newbase)), ...(await modelFiles(delta))], out);

if (!keep) await rm(root, { recursive: true, force: true });
