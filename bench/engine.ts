// npm run bench [-- --size 1GiB --dir /tmp/x --keep --plain --fusion-only --no-fusion]
// First the compact delta's size against the model's on the real fine-tune pairs of the shared fixtures.
// Then generates a BF16 model family and times compute and apply (compact deltas; with --plain the plain
// layout too) against the I/O floor measured in the same run: reading the same input files and writing
// files of the same sizes with plain Node I/O, fsynced as the tool fsyncs them, on a cold page cache
// (dropped before each step, where allowed) and on a warm one (inputs read just before, as after a
// download). Each operation runs in a child process so its peak RSS and its fsync waits are its own.
// Last, a TIES apply of two deltas against the linear apply of the same two, in the same run (--fusion-only:
// that part alone; --no-fusion: all but that part).
import { execSync, spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, rm, stat } from 'node:fs/promises';
import { once } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeSyntheticFamily } from '../lib/synth/family.js';
import { formatBytes, parseSize } from '../lib/ops/sizes.js';
import { EarlyWriteback } from '../lib/storage/local.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const size = parseSize(opt('--size', '1GiB'));
const keep = args.includes('--keep');
const withPlain = args.includes('--plain');
const fusionOnly = args.includes('--fusion-only');
const noFusion = args.includes('--no-fusion');
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
 * operation wrote. With `fsync` it does the tool's durability work too: the shard sink's early
 * writeback (EarlyWriteback), each file fsynced, then its folder (the tool also renames; renames cost next to nothing).
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
    const writeback = fsync ? new EarlyWriteback(fh) : null;
    for (let left = size; left > 0; left -= block.length) {
      const piece = left >= block.length ? block : block.subarray(0, left);
      await fh.write(piece);
      writeback?.wrote(piece.length);
    }
    await writeback?.settle();
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
async function timed(cliArgs: string[], fsync = true): Promise<Timed> {
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

/** Bytes of a checkpoint's tensors (shard files less their headers). */
async function tensorBytesOf(dir: string): Promise<number> {
  const { openCheckpoint } = await import('../lib/format/checkpoint.js');
  const { LocalStore } = await import('../lib/storage/local.js');
  return (await openCheckpoint(new LocalStore(dir))).tensors.reduce((a, t) => a + t.byteLength, 0);
}

// The real fine-tune pairs: delta bytes as stored ÷ the post model's tensor bytes, each layout.
const fixtures = fileURLToPath(new URL('../../../shared/fixtures/', import.meta.url));
for (const [pair, target] of fusionOnly ? [] : ([['stories260K-tuned-bf16', 0.6], ['stories260K-tuned-f32', 0.85]] as const)) {
  const dir = path.join(fixtures, pair);
  if (!existsSync(dir)) {
    console.log(`${pair}: not found under ${fixtures}; skipped`);
    continue;
  }
  const model = await tensorBytesOf(path.join(dir, 'post'));
  const sizes: string[] = [];
  for (const format of ['safetensors', 'compact']) {
    const out = path.join(root, `${pair}-${format}`);
    await timed(['compute', '--base', path.join(dir, 'base'), '--post', path.join(dir, 'post'), '--out', out, '--force', '--delta-format', format]);
    const bytes = await bytesOf((await filesIn(out)).filter((f) => /\.(safetensors|pdelta)$/.test(f)));
    sizes.push(`${format} ${formatBytes(bytes)} = ${(bytes / model).toFixed(3)}×`);
  }
  console.log(`${pair}: model ${formatBytes(model)}; delta ${sizes.join(', ')} the model (compact target ≤ ${target})`);
}
const t0 = performance.now();
const fam = await writeSyntheticFamily(path.join(root, 'family'), { dtype: 'BF16', bytes: size, shards: 4, hidden: 2048 });
console.log(`generated a BF16 family of ${formatBytes(fam.bytes)} per model in ${((performance.now() - t0) / 1000).toFixed(1)} s under ${root}`);

/**
 * Flushes dirty pages and, where allowed (root on Linux), drops the page cache, so the operation
 * and its floor both start cold instead of one paying for the other's writeback.
 */
function dropCaches(): boolean {
  execSync('sync');
  try {
    writeFileSync('/proc/sys/vm/drop_caches', '1');
    return true;
  } catch {
    return false;
  }
}
const canDrop = dropCaches();

/** Warm: flushes earlier writes, then reads every input once so the step finds them in the page cache. */
async function warmUp(inputs: string[]): Promise<void> {
  execSync('sync');
  for (const f of inputs) {
    for await (const _chunk of createReadStream(f, { highWaterMark: 8 << 20 })) void _chunk;
  }
}

const ROUNDS = 2;
type Cache = 'cold' | 'warm';
async function measure(label: string, cliArgs: string[], inputs: () => Promise<string[]>, outDir: string, cache: Cache) {
  let op = Infinity;
  let floor = Infinity;
  let syncSecs = 0;
  let syncs = 0;
  let rss = 0;
  const prepare = async () => (cache === 'cold' ? void dropCaches() : warmUp(await inputs()));
  for (let round = 0; round < ROUNDS; round++) {
    await prepare();
    const r = await timed(cliArgs);
    if (r.secs < op) ({ secs: op, syncSecs, syncs } = r);
    rss = Math.max(rss, r.rss);
    const outSizes = await Promise.all((await filesIn(outDir)).map(async (f) => (await stat(f)).size));
    await prepare();
    floor = Math.min(floor, await ioFloor(await inputs(), outSizes, path.join(root, 'floor.tmp'), true));
  }
  const inBytes = await bytesOf(await inputs());
  const outBytes = await bytesOf(await filesIn(outDir));
  console.log(
    `${label.padEnd(16)} in ${formatBytes(inBytes).padStart(9)}  out ${formatBytes(outBytes).padStart(9)}  ` +
      `wall ${op.toFixed(2).padStart(6)} s (${syncs} fsyncs waited ${syncSecs.toFixed(2)} s)  floor ${floor.toFixed(2).padStart(6)} s  ` +
      `ratio ${(op / floor).toFixed(2)} (target ≤ 1.3)  peak RSS ${formatBytes(rss)} (target ≤ 256 MiB)  ${cache} cache, best of ${ROUNDS}`,
  );
}

const shards = (d: string) => async () => (await filesIn(d)).filter((f) => /\.(safetensors|pdelta)$/.test(f));
const both = (a: string, b: string) => async () => [...(await shards(a)()), ...(await shards(b)())];
const caches: Cache[] = canDrop ? ['cold', 'warm'] : ['warm'];
if (!canDrop) console.log('(cannot drop the page cache here: warm cache only)');
for (const format of fusionOnly ? [] : withPlain ? ['compact', 'safetensors'] : ['compact']) {
  const delta = path.join(root, `delta-${format}`);
  const out = path.join(root, `reposted-${format}`);
  const tag = format === 'compact' ? '' : ' (plain)';
  for (const cache of caches) {
    await measure(`compute${tag}`, ['compute', '--base', fam.base, '--post', fam.post, '--out', delta, '--force', '--delta-format', format], both(fam.base, fam.post), delta, cache);
    await measure(`apply${tag}`, ['apply', '--base', fam.newbase, '--delta', delta, '--out', out, '--force'], both(fam.newbase, delta), out, cache);
  }
  const deltaBytes = await bytesOf(await shards(delta)());
  console.log(`${format} delta of the bench family: ${formatBytes(deltaBytes)} = ${(deltaBytes / fam.bytes).toFixed(3)}× the model (synthetic noise compresses only to its entropy)`);
}

// Sparse fusion: TIES (density 0.2) over two compact deltas ÷ the linear apply of the same two, warm cache,
// best of ROUNDS each, alternated so both see the same machine. The family has one post: the second delta
// is newbase − base.
if (!noFusion) {
  const d1 = path.join(root, 'delta-compact');
  const d2 = path.join(root, 'delta2-compact');
  if (!existsSync(path.join(d1, 'delta.json'))) await timed(['compute', '--base', fam.base, '--post', fam.post, '--out', d1, '--force']);
  await timed(['compute', '--base', fam.base, '--post', fam.newbase, '--out', d2, '--force']);
  const out = path.join(root, 'fused');
  const common = ['apply', '--base', fam.newbase, '--delta', d1, '--scale', '0.7', '--delta', d2, '--scale', '0.5', '--out', out, '--force'];
  const inputs = async () => [...(await shards(fam.newbase)()), ...(await shards(d1)()), ...(await shards(d2)())];
  const best = { linear: { secs: Infinity, rss: 0 }, ties: { secs: Infinity, rss: 0 } };
  for (let round = 0; round < ROUNDS; round++) {
    for (const [method, extra] of [['linear', []], ['ties', ['--method', 'ties', '--density', '0.2']]] as const) {
      await warmUp(await inputs());
      const r = await timed([...common, ...extra]);
      best[method].secs = Math.min(best[method].secs, r.secs);
      best[method].rss = Math.max(best[method].rss, r.rss);
    }
  }
  console.log(
    `apply, two deltas: linear ${best.linear.secs.toFixed(2)} s (peak RSS ${formatBytes(best.linear.rss)}), ` +
      `ties ${best.ties.secs.toFixed(2)} s (peak RSS ${formatBytes(best.ties.rss)}, target ≤ 256 MiB); ` +
      `ties ÷ linear ${(best.ties.secs / best.linear.secs).toFixed(2)} (target ≤ 2.5)  warm cache, best of ${ROUNDS}`,
  );
}

if (!keep) await rm(root, { recursive: true, force: true });
