// Part 1: SIGKILL `compute` and `apply` at random moments, on local folders and on az:// (Azurite);
// every rerun with the same arguments must complete with the bytes of an uninterrupted run, and the
// output, sampled throughout, must never look complete unless it is exact.
import { readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { BlobServiceClient } from '@azure/storage-blob';
import { startAzurite } from '../../cli/host/azurite.js';
import { CLI, CompletionWatch, blobFolder, differsFrom, localFolder, log, removePrefix, rng, runNode, sleep, seedStorage, type Folder } from './common.js';

export interface KillsOptions {
  root: string;
  family: { base: string; post: string; newbase: string };
  /** Uninterrupted outputs made by the caller with the same shard size. */
  refDelta: string;
  refModel: string;
  shardSize: string;
  kills: number;
  seed: number;
}

export interface KillPoint {
  backend: 'local' | 'az';
  op: 'compute' | 'apply';
  atMs: number;
  /** What the kill found: the process already gone, no output yet, part of it written, or the whole output. */
  found: 'exited' | 'nothing' | 'partial' | 'complete';
  rerunMs: number;
  exact: boolean;
  problem?: string;
}

export interface KillsReport {
  points: KillPoint[];
  uninterruptedMs: Record<string, number>;
  samples: number;
  /** Times the sampler found an output complete and compared it with the uninterrupted run. */
  checks: number;
  violations: string[];
  /** Hidden staging folders a killed local run left behind (the README says they can be deleted). */
  leftoverStaging: number;
  ms: number;
}

const MARKER = { compute: 'delta.json', apply: 'model.safetensors.index.json' } as const;

export async function killedCliRuns(o: KillsOptions): Promise<KillsReport> {
  const t0 = performance.now();
  const random = rng(o.seed);
  const azurite = await startAzurite();
  const service = BlobServiceClient.fromConnectionString(azurite.connectionString);
  const report: KillsReport = { points: [], uninterruptedMs: {}, samples: 0, checks: 0, violations: [], leftoverStaging: 0, ms: 0 };
  try {
    await seedStorage(service, o.family, o.refDelta, 'chaos-ref');
    await service.getContainerClient('posted-models').createIfNotExists();
    const storage = ['--storage', azurite.connectionString];
    const runsDir = path.join(o.root, 'kills');

    const plans = {
      local: {
        compute: (out: string) => ['compute', '--base', o.family.base, '--post', o.family.post, '--out', out, '--shard-size', o.shardSize, '--force'],
        apply: (out: string) => ['apply', '--base', o.family.newbase, '--delta', o.refDelta, '--out', out, '--shard-size', o.shardSize, '--force'],
        out: (op: string, i: number) => path.join(runsDir, `${op}-${i}`),
        folder: (out: string): Folder => localFolder(out),
      },
      az: {
        compute: (out: string) => ['compute', '--base', 'az://models/chaos/base', '--post', 'az://models/chaos/post', '--out', out, '--shard-size', o.shardSize, '--force', ...storage],
        apply: (out: string) => ['apply', '--base', 'az://models/chaos/newbase', '--delta', 'az://deltas/chaos-ref', '--out', out, '--shard-size', o.shardSize, '--force', ...storage],
        out: (op: string, i: number) => `az://posted-models/chaos/${op}-${i}`,
        folder: (out: string): Folder => blobFolder(service, out),
      },
    };

    for (const backend of ['local', 'az'] as const) {
      for (const op of ['compute', 'apply'] as const) {
        const plan = plans[backend];
        const reference = op === 'compute' ? o.refDelta : o.refModel;
        /** Whether anything of this run's output is visible yet: a staging folder, or a committed blob. */
        const anyOutput = async (out: string, n: number): Promise<boolean> =>
          backend === 'local'
            ? (await readdir(runsDir).catch((): string[] => [])).some((f) => f === `${op}-${n}` || f.startsWith(`.${op}-${n}.`))
            : (await plan.folder(out).list().catch((): string[] => [])).length > 0;
        const cleanup = async (out: string) => {
          if (backend === 'local') await rm(out, { recursive: true, force: true });
          else await removePrefix(service, 'posted-models', out.replace('az://posted-models/', ''));
        };
        // Two uninterrupted runs on this backend first: their bytes must match too, and their mean time
        // (and when their output first became visible) places the kill moments.
        const firsts: { ms: number; visibleMs: number }[] = [];
        for (const n of [0, -1]) {
          const refOut = plan.out(op, n);
          const run = runNode([CLI, ...plan[op](refOut)]);
          let visibleMs = Infinity;
          const visible = (async () => {
            while (run.child.exitCode === null && visibleMs === Infinity) {
              if (await anyOutput(refOut, n)) visibleMs = performance.now() - run.started;
              await sleep(10);
            }
          })();
          const r = await run.exited;
          await visible;
          if (r.code !== 0) throw new Error(`uninterrupted ${backend} ${op} failed: ${r.stderr}`);
          const diff = await differsFrom(plan.folder(refOut), reference);
          if (diff) report.violations.push(`uninterrupted ${backend} ${op}: ${diff}`);
          firsts.push({ ms: r.ms, visibleMs: Math.min(visibleMs, r.ms) });
          await cleanup(refOut);
        }
        const first = { ms: (firsts[0].ms + firsts[1].ms) / 2, visibleMs: (firsts[0].visibleMs + firsts[1].visibleMs) / 2 };
        report.uninterruptedMs[`${backend} ${op}`] = first.ms;
        // This machine's speed drifts (it is shared): every rerun is an uninterrupted run too, so the
        // time a run takes is re-estimated as the median of the latest ones.
        const recent = firsts.map((f) => f.ms);
        const typicalMs = () => [...recent.slice(-5)].sort((a, b) => a - b)[Math.floor(Math.min(5, recent.length) / 2)];

        for (let i = 1; i <= o.kills; i++) {
          const out = plan.out(op, i);
          const folder = plan.folder(out);
          const watch = new CompletionWatch(folder, MARKER[op], reference, backend === 'local' ? 10 : 40);
          // One kill in five at a moment before any output shows (start-up, planning); the others at a
          // moment after the output first shows, up to the run's usual end: most of those land mid-write.
          const early = random() < 0.2;
          const u = random();
          const victim = runNode([CLI, ...plan[op](out)]);
          if (early) await Promise.race([sleep(u * typicalMs() * (first.visibleMs / first.ms)), victim.exited]);
          else {
            while (victim.child.exitCode === null && !(await anyOutput(out, i))) await sleep(backend === 'local' ? 5 : 20);
            const left = Math.max(0, typicalMs() * (1 - first.visibleMs / first.ms));
            await Promise.race([sleep(u * left), victim.exited]);
          }
          const atMs = Math.round(performance.now() - victim.started);
          const exitedFirst = victim.child.exitCode !== null;
          victim.child.kill('SIGKILL');
          const gone = await victim.exited;
          let found: KillPoint['found'] = 'exited';
          if (!exitedFirst) {
            const names = await folder.list().catch((): string[] => []);
            const staging = backend === 'local' ? (await readdir(runsDir)).filter((f) => f.startsWith(`.${op}-${i}.partial-`)) : [];
            found = names.includes(MARKER[op]) ? 'complete' : names.length || staging.length ? 'partial' : 'nothing';
          } else if (gone.code !== 0) {
            report.violations.push(`${backend} ${op} #${i} exited ${gone.code} before the kill: ${gone.stderr.trim()}`);
          }
          // The same command again.
          const again = await runNode([CLI, ...plan[op](out)]).exited;
          await watch.stop();
          report.samples += watch.samples;
          report.checks += watch.checks;
          if (again.code === 0) recent.push(again.ms);
          const point: KillPoint = { backend, op, atMs, found, rerunMs: again.ms, exact: false };
          if (again.code !== 0) point.problem = `rerun exited ${again.code}: ${again.stderr.trim()}`;
          else {
            const d = await differsFrom(folder, reference);
            if (d) point.problem = d;
            else point.exact = true;
          }
          for (const v of watch.violations) report.violations.push(`${backend} ${op} #${i}: ${v}`);
          if (point.problem) report.violations.push(`${backend} ${op} #${i} (killed at ${atMs} ms): ${point.problem}`);
          report.points.push(point);
          if (backend === 'local') report.leftoverStaging += (await readdir(runsDir)).filter((f) => f.startsWith(`.${op}-${i}.`)).length;
          await cleanup(out);
        }
        const mine = report.points.filter((p) => p.backend === backend && p.op === op);
        log(`  ${backend} ${op}: uninterrupted ${(first.ms / 1000).toFixed(2)} s (output visible after ${(first.visibleMs / 1000).toFixed(2)} s); ${mine.length} kills (${count(mine, 'nothing')} before output, ${count(mine, 'partial')} mid-write, ${count(mine, 'complete')} after publishing, ${count(mine, 'exited')} after exit); ${mine.filter((p) => p.exact).length}/${mine.length} reruns exact`);
      }
    }
    if (report.leftoverStaging) await rm(runsDir, { recursive: true, force: true });
  } finally {
    await azurite.stop();
  }
  report.ms = performance.now() - t0;
  return report;
}

function count(points: KillPoint[], found: KillPoint['found']): number {
  return points.filter((p) => p.found === found).length;
}
