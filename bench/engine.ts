// npm run bench [-- --size 1GiB --dir /tmp/x --keep]
// Generates a BF16 model family, then times compute and apply against the I/O floor measured in
// the same run: reading the same input files and writing the same number of output bytes with
// plain streams. Each operation runs in a child process so its peak RSS is its own.
import { execSync, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
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

/** The floor: stream every input file through, then stream out as many bytes as the operation wrote. */
async function ioFloor(inputs: string[], outBytes: number, outFile: string): Promise<number> {
  const t0 = performance.now();
  for (const f of inputs) {
    const s = createReadStream(f, { highWaterMark: 8 << 20 });
    for await (const _chunk of s) void _chunk;
  }
  const w = createWriteStream(outFile, { highWaterMark: 8 << 20 });
  const block = Buffer.alloc(8 << 20, 0x3c);
  for (let left = outBytes; left > 0; left -= block.length) {
    if (!w.write(left >= block.length ? block : block.subarray(0, left))) await once(w, 'drain');
  }
  w.end();
  await once(w, 'finish');
  const secs = (performance.now() - t0) / 1000;
  await rm(outFile, { force: true });
  return secs;
}

/** Runs the CLI in a child process; returns wall seconds and the child's peak RSS. */
async function timed(cliArgs: string[]): Promise<{ secs: number; rss: number }> {
  const code = `import(${JSON.stringify(cli)}).then(async (m) => { const c = await m.main(${JSON.stringify(cliArgs)}); process.stderr.write('\\nRSS ' + process.resourceUsage().maxRSS * 1024 + '\\n'); process.exit(c); })`;
  const t0 = performance.now();
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const [exit] = await once(child, 'exit');
  const secs = (performance.now() - t0) / 1000;
  if (exit !== 0) throw new Error(`paramdelta ${cliArgs[0]} failed (${exit}): ${err}`);
  return { secs, rss: Number(/RSS (\d+)/.exec(err)?.[1] ?? NaN) };
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
async function measure(label: string, cliArgs: string[], inputs: string[], outDir: string) {
  const inBytes = await bytesOf(inputs);
  let op = Infinity;
  let floor = Infinity;
  let rss = 0;
  let cache = 'warm';
  for (let round = 0; round < ROUNDS; round++) {
    cache = settle();
    const r = await timed(cliArgs);
    op = Math.min(op, r.secs);
    rss = Math.max(rss, r.rss);
    const outBytes = await bytesOf(await filesIn(outDir));
    settle();
    floor = Math.min(floor, await ioFloor(inputs, outBytes, path.join(root, 'floor.tmp')));
  }
  const outBytes = await bytesOf(await filesIn(outDir));
  const r = { secs: op, rss };
  const row =
    `${label.padEnd(8)} in ${formatBytes(inBytes).padStart(9)}  out ${formatBytes(outBytes).padStart(9)}  ` +
    `wall ${r.secs.toFixed(2).padStart(6)} s  ${formatBytes((inBytes + outBytes) / r.secs).padStart(10)}/s  ` +
    `floor ${floor.toFixed(2).padStart(6)} s  ratio ${(r.secs / floor).toFixed(2)}  peak RSS ${formatBytes(r.rss)}  (${cache} cache, best of ${ROUNDS})`;
  console.log(row);
  rows.push(row);
}

const delta = path.join(root, 'delta');
const out = path.join(root, 'reposted');
const modelFiles = async (d: string) => (await filesIn(d)).filter((f) => f.endsWith('.safetensors'));
await measure('compute', ['compute', '--base', fam.base, '--post', fam.post, '--out', delta, '--force'], [...(await modelFiles(fam.base)), ...(await modelFiles(fam.post))], delta);
await measure('apply', ['apply', '--base', fam.newbase, '--delta', delta, '--out', out, '--force'], [...(await modelFiles(fam.newbase)), ...(await modelFiles(delta))], out);

if (!keep) await rm(root, { recursive: true, force: true });
