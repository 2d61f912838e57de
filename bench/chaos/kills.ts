// Part 1: SIGKILL `compute` and `apply` at random moments, on local folders and on az:// (Azurite);
// every rerun with the same arguments must complete with the bytes of an uninterrupted run, and the
// output, sampled throughout, must never look complete unless it is exact.
import { readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { BlobServiceClient } from '@azure/storage-blob';
import { startAzurite } from '../../cli/host/azurite.js';
import { CLI, CompletionWatch, blobFolder, differsFrom, localFolder, log, removePrefix, rng, runNode, sleep, uploadDir, type Folder } from './common.js';

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
    for (const [prefix, dir] of [['chaos/base', o.family.base], ['chaos/post', o.family.post], ['chaos/newbase', o.family.newbase]] as const) {
      await uploadDir(service, 'models', prefix, dir);
    }
    await uploadDir(service, 'deltas', 'chaos-ref', o.refDelta, 'delta.json');
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
        const cleanup = async (out: string) => {
          if (backend === 'local') await rm(out, { recursive: true, force: true });
          else await removePrefix(service, 'posted-models', out.replace('az://posted-models/', ''));
        };
        // An uninterrupted run on this backend first: its time scales the kill moments, its bytes must match too.
        const refOut = plan.out(op, 0);
        const first = await runNode([CLI, ...plan[op](refOut)]).exited;
        if (first.code !== 0) throw new Error(`uninterrupted ${backend} ${op} failed: ${first.stderr}`);
        const diff = await differsFrom(plan.folder(refOut), reference);
        if (diff) report.violations.push(`uninterrupted ${backend} ${op}: ${diff}`);
        report.uninterruptedMs[`${backend} ${op}`] = first.ms;
        await cleanup(refOut);

        for (let i = 1; i <= o.kills; i++) {
          const out = plan.out(op, i);
          const folder = plan.folder(out);
          const watch = new CompletionWatch(folder, MARKER[op], reference);
          // Moments spread over the whole run, start-up included.
          const atMs = Math.round((0.05 + 0.9 * random()) * first.ms);
          const victim = runNode([CLI, ...plan[op](out)]);
          await Promise.race([sleep(atMs), victim.exited]);
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
        log(`  ${backend} ${op}: uninterrupted ${(first.ms / 1000).toFixed(2)} s; ${mine.length} kills (${count(mine, 'nothing')} before output, ${count(mine, 'partial')} mid-write, ${count(mine, 'complete')} after publishing, ${count(mine, 'exited')} after exit); ${mine.filter((p) => p.exact).length}/${mine.length} reruns exact`);
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
