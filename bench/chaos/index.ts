// npm run chaos [-- --parts 1,2,3,4,5 --seed 7 --size 4MiB --shard-size 1MB --kills 20 --host-kills 10 --outage-s 10 --concurrent 20 --fuzz 1000000 --keep]
//
// The chaos suite: (1) SIGKILL the CLI mid-run, (2) SIGKILL `serve` mid-re-post, (3) a storage outage
// mid-run, (4) concurrent runs through `serve`, (5) parser fuzzing. Every random moment comes from
// --seed, so a run can be replayed. It prints a summary (and writes chaos-summary.json under its
// working folder) and exits 1 if anything was lost or wrong.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeSyntheticFamily } from '../../lib/synth/family.js';
import { formatBytes, parseSize } from '../../lib/ops/sizes.js';
import { fingerprint, log, runCliOk } from './common.js';
import { fuzzSafetensors, DEFAULT_FUZZ_SEED } from './fuzz.js';
import { killedCliRuns, type KillsReport } from './kills.js';
import { killedHost, type HostReport } from './host.js';
import { storageOutages, type OutageReport } from './outage.js';
import { concurrentRuns, type ConcurrentReport } from './concurrent.js';

const args = process.argv.slice(2);
const opt = (name: string, d: string) => (args.includes(`--${name}`) ? args[args.indexOf(`--${name}`) + 1] : d);
const parts = new Set(opt('parts', '1,2,3,4,5').split(',').map(Number));
const seed = Number(opt('seed', '7'));
const size = parseSize(opt('size', '4MiB'), '--size');
const shardSize = opt('shard-size', '1MB');
const kills = Number(opt('kills', '20'));
const hostKills = Number(opt('host-kills', '10'));
const outageMs = Number(opt('outage-s', '10')) * 1000;
const concurrent = Number(opt('concurrent', '20'));
const fuzzRuns = Number(opt('fuzz', '1000000'));
const keep = args.includes('--keep');

const root = await mkdtemp(path.join(os.tmpdir(), 'paramdelta-chaos-'));
const t0 = performance.now();
let t5 = 0;
log(`paramdelta chaos: seed ${seed}, parts ${[...parts].join(',')}, working in ${root}`);
log(`machine: ${os.cpus()[0]?.model} x${os.cpus().length}, ${formatBytes(os.totalmem())} RAM, node ${process.version}`);

const summary: {
  seed: number;
  model: string;
  kills?: KillsReport;
  host?: HostReport;
  outages?: OutageReport;
  concurrent?: ConcurrentReport;
  fuzz?: Awaited<ReturnType<typeof fuzzSafetensors>> | { error: string };
  inputsUntouched?: boolean;
  lost: string[];
  seconds?: number;
} = { seed, model: '', lost: [] };

try {
  let family: { base: string; post: string; newbase: string } | null = null;
  let refDelta = '';
  let refModel = '';
  let refHalf = '';
  let inputsBefore = '';
  if ([1, 2, 3, 4].some((p) => parts.has(p))) {
    const fam = await writeSyntheticFamily(path.join(root, 'family'), { dtype: 'BF16', bytes: size, shards: 2, hidden: 256 });
    family = fam;
    summary.model = `BF16 family of ${formatBytes(fam.bytes)} per model, shard size ${shardSize}`;
    inputsBefore = await fingerprint(path.join(root, 'family'));
    // The uninterrupted runs every other run is compared with.
    refDelta = path.join(root, 'ref', 'delta');
    refModel = path.join(root, 'ref', 'model');
    refHalf = path.join(root, 'ref', 'model-half');
    const tc = await runCliOk(['compute', '--base', fam.base, '--post', fam.post, '--out', refDelta, '--shard-size', shardSize]);
    const ta = await runCliOk(['apply', '--base', fam.newbase, '--delta', refDelta, '--out', refModel, '--shard-size', shardSize]);
    await runCliOk(['apply', '--base', fam.newbase, '--delta', refDelta, '--scale', '0.5', '--out', refHalf, '--shard-size', shardSize]);
    await runCliOk(['verify', '--base', fam.base, '--post', fam.post, '--delta', refDelta]);
    log(`${summary.model}; uninterrupted local compute ${(tc / 1000).toFixed(2)} s, apply ${(ta / 1000).toFixed(2)} s (processes included)`);
  }

  if (parts.has(1) && family) {
    log('\n1. killed CLI runs');
    summary.kills = await killedCliRuns({ root, family, refDelta, refModel, shardSize, kills, seed });
    summary.lost.push(...summary.kills.violations);
  }
  if (parts.has(2) && family) {
    log('\n2. killed host');
    summary.host = await killedHost({ root, family, refDelta, shardSize, kills: hostKills, seed: seed + 1 });
    summary.lost.push(...summary.host.violations);
  }
  if (parts.has(3) && family) {
    log('\n3. storage outages');
    summary.outages = await storageOutages({ root, family, refDelta, refModel, shardSize, outageMs, seed: seed + 2 });
    summary.lost.push(...summary.outages.violations);
  }
  if (parts.has(4) && family) {
    log('\n4. concurrent runs');
    summary.concurrent = await concurrentRuns({ root, family, refDelta, refModel, refHalf, shardSize, runs: concurrent });
    summary.lost.push(...summary.concurrent.violations);
  }
  if (family) {
    summary.inputsUntouched = (await fingerprint(path.join(root, 'family'))) === inputsBefore;
    if (!summary.inputsUntouched) summary.lost.push('an input model changed');
  }
  if (parts.has(5)) {
    log('\n5. parser fuzzing');
    t5 = performance.now();
    const samplesDir = fileURLToPath(new URL('../../../../shared/fixtures/safetensors-samples', import.meta.url));
    try {
      summary.fuzz = await fuzzSafetensors({
        runs: fuzzRuns,
        seed: DEFAULT_FUZZ_SEED + seed,
        samplesDir,
        onProgress: (n) => log(`  ${n.toLocaleString('en')} inputs, ${((performance.now() - t5) / 1000).toFixed(0)} s`),
      });
    } catch (e) {
      summary.fuzz = { error: (e as Error).message };
      summary.lost.push(`fuzzing: ${(e as Error).message.split('\n').slice(0, 4).join(' ')}`);
    }
  }
} finally {
  summary.seconds = (performance.now() - t0) / 1000;
}

printSummary();
await writeFile(path.join(root, 'chaos-summary.json'), JSON.stringify(summary, null, 2));
if (!keep) await rm(root, { recursive: true, force: true });
else log(`kept ${root}`);
process.exit(summary.lost.length ? 1 : 0);

function printSummary(): void {
  log('\n== chaos summary ==');
  log(`seed ${seed}; ${summary.model || 'no model family'}; ${summary.seconds!.toFixed(0)} s in all`);
  const k = summary.kills;
  if (k) {
    const by = (f: string) => k.points.filter((p) => p.found === f).length;
    log(`1. killed CLI runs: ${k.points.length} kill points (compute and apply, local and az://), ${by('partial')} mid-write, ${by('nothing')} before any output was visible, ${by('complete')} after publishing, ${by('exited')} after exiting; ${k.points.filter((p) => p.exact).length}/${k.points.length} reruns exact; ${k.samples} samples of the outputs (${k.checks} found one complete and compared it), ${k.violations.length} problems; ${k.leftoverStaging} hidden staging folders left by killed local runs (${(k.ms / 1000).toFixed(0)} s)`);
  }
  const h = summary.host;
  if (h) log(`2. killed host: ${h.points.length} kills of serve during a re-post of two deltas; ${h.points.filter((p) => p.resumed && p.exact).length}/${h.points.length} runs resumed and exact after the restart; ${h.violations.length} problems (${(h.ms / 1000).toFixed(0)} s)`);
  const o = summary.outages;
  if (o) log(`3. storage outages: ${o.outages.length} outages of ${outageMs / 1000} s (${o.outages.map((x) => `${x.kind} during ${x.run}: ${x.outcome}`).join('; ')}); ${o.outages.filter((x) => x.outcome === 'completed exact').length} survived; ${o.violations.length} problems (${(o.ms / 1000).toFixed(0)} s)`);
  const c = summary.concurrent;
  if (c) log(`4. concurrent runs: ${c.runs} at once through serve (${c.computes} computes, ${c.applies} applies), ${c.exact}/${c.runs} exact in ${(c.ms / 1000).toFixed(1)} s; ${c.violations.length} problems`);
  const f = summary.fuzz;
  if (f && 'runs' in f) log(`5. parser fuzzing: ${f.runs.toLocaleString('en')} inputs in ${(f.ms / 1000).toFixed(1)} s (${Math.round(f.runs / (f.ms / 1000)).toLocaleString('en')}/s, seed ${f.seed}): ${f.accepted.toLocaleString('en')} accepted, the rest refused with SafetensorsError under ${Object.keys(f.rejected).length} rules; slowest input ${f.slowestMs.toFixed(1)} ms; no read outside the file`);
  else if (f) log(`5. parser fuzzing FAILED: ${f.error.split('\n')[0]}`);
  if (summary.inputsUntouched !== undefined) log(`inputs: ${summary.inputsUntouched ? 'every input byte unchanged' : 'CHANGED'}`);
  log(`lost: ${summary.lost.length ? `\n  - ${summary.lost.join('\n  - ')}` : 'nothing'}`);
}
