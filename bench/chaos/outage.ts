// Part 3: storage goes away for a while in the middle of a pipeline run (Azurite paused with
// SIGSTOP/SIGCONT, or stopped gracefully with SIGTERM and started again on the same ports and data),
// then comes back. The run must complete exact after its retries, or fail saying storage was
// unreachable; an output never looks complete unless it is exact.
import path from 'node:path';
import { BlobServiceClient } from '@azure/storage-blob';
import {
  ChaosAzurite, CompletionWatch, api, blobFolder, differsFrom, log, rng, sleep, startServeProcess, seedStorage, waitForRun,
  type ServeProcess,
} from './common.js';

export interface OutageOptions {
  root: string;
  family: { base: string; post: string; newbase: string };
  refDelta: string;
  refModel: string;
  shardSize: string;
  outageMs: number;
  seed: number;
}

export interface Outage {
  kind: 'pause' | 'stop';
  run: 'compute' | 'apply';
  atMs: number;
  outcome: 'completed exact' | 'failed: storage unreachable' | 'wrong';
  detail?: string;
  runMs: number;
}

export interface OutageReport {
  outages: Outage[];
  uninterruptedMs: Record<string, number>;
  violations: string[];
  ms: number;
}

/** Errors that say storage could not be reached. */
const UNREACHABLE = /unreachable|ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|socket hang up|timed? ?out|network|connect/i;

export async function storageOutages(o: OutageOptions): Promise<OutageReport> {
  const t0 = performance.now();
  const random = rng(o.seed);
  const report: OutageReport = { outages: [], uninterruptedMs: {}, violations: [], ms: 0 };
  const azurite = await ChaosAzurite.start(path.join(o.root, 'azurite-outage'));
  const service = BlobServiceClient.fromConnectionString(azurite.connectionString);
  let serve: ServeProcess | null = null;
  try {
    await seedStorage(service, o.family, o.refDelta, 'chat');
    serve = await startServeProcess(azurite.connectionString, { PARAMDELTA_SHARD_SIZE: o.shardSize });
    const url = serve.url;

    const start = async (run: 'compute' | 'apply', label: string) => {
      const r =
        run === 'compute'
          ? await api(url, 'POST', 'deltas', { name: label, base: 'models/chaos/base', post: 'models/chaos/post', autoApply: false })
          : await api(url, 'POST', 'models', { base: 'models/chaos/newbase', deltas: [{ name: 'chat' }], output: `posted-models/${label}` });
      if (r.status !== 202) throw new Error(`POST for ${label} answered ${r.status}: ${JSON.stringify(r.json)}`);
      const output = run === 'compute' ? `deltas/${label}` : `posted-models/${label}`;
      const marker = run === 'compute' ? 'delta.json' : 'model.safetensors.index.json';
      const reference = run === 'compute' ? o.refDelta : o.refModel;
      return { id: r.json.id as string, folder: blobFolder(service, output), marker, reference };
    };

    // Uninterrupted runs first: their times place the outages.
    for (const run of ['compute', 'apply'] as const) {
      const s = performance.now();
      const r = await start(run, `uninterrupted-${run}`);
      const done = await waitForRun(() => url, r.id, { timeoutMs: 300_000 });
      report.uninterruptedMs[run] = performance.now() - s;
      if (!('status' in done) || done.status !== 'Completed') throw new Error(`uninterrupted ${run} did not complete: ${JSON.stringify(done)}`);
      const diff = await differsFrom(r.folder, r.reference);
      if (diff) report.violations.push(`uninterrupted ${run}: ${diff}`);
      log(`  uninterrupted ${run} through serve: ${(report.uninterruptedMs[run] / 1000).toFixed(2)} s`);
    }

    const scenarios: { kind: Outage['kind']; run: Outage['run'] }[] = [
      { kind: 'pause', run: 'apply' },
      { kind: 'pause', run: 'compute' },
      { kind: 'stop', run: 'apply' },
      { kind: 'stop', run: 'compute' },
    ];
    for (const [i, sc] of scenarios.entries()) {
      const s = performance.now();
      const r = await start(sc.run, `outage-${i}`);
      const watch = new CompletionWatch(r.folder, r.marker, r.reference, 50);
      // Somewhere in the first two thirds of the run, so it is under way and not done.
      const atMs = Math.round((0.15 + 0.5 * random()) * report.uninterruptedMs[sc.run]);
      await sleep(atMs);
      const state = await api(url, 'GET', `runs/${encodeURIComponent(r.id)}`).catch(() => null);
      if (sc.kind === 'pause') {
        azurite.pause();
        await sleep(o.outageMs);
        azurite.resume();
      } else {
        await azurite.stop();
        await sleep(o.outageMs);
        await azurite.start();
      }
      const done = await waitForRun(() => url, r.id, { timeoutMs: 600_000 });
      await watch.stop();
      const outage: Outage = { ...sc, atMs, outcome: 'wrong', runMs: performance.now() - s };
      if ('missing' in done) outage.detail = done.missing;
      else if (done.status === 'Completed') {
        const diff = await differsFrom(r.folder, r.reference);
        if (diff) outage.detail = diff;
        else outage.outcome = 'completed exact';
      } else if (UNREACHABLE.test(done.error ?? '')) {
        outage.outcome = 'failed: storage unreachable';
        outage.detail = done.error ?? '';
      } else outage.detail = `failed without saying storage was unreachable: ${done.error}`;
      for (const v of watch.violations) report.violations.push(`${sc.kind} during ${sc.run}: ${v}`);
      if (outage.outcome === 'wrong') report.violations.push(`${sc.kind} during ${sc.run} at ${atMs} ms: ${outage.detail}`);
      report.outages.push(outage);
      log(`  ${sc.kind} of ${o.outageMs / 1000} s during ${sc.run} at ${atMs} ms (${state?.json?.progress?.phase ?? 'phase unknown'}): ${outage.outcome}${outage.detail ? ` (${outage.detail.slice(0, 200)})` : ''}, run took ${(outage.runMs / 1000).toFixed(1)} s`);
    }
  } finally {
    await serve?.stop();
    await azurite.close();
  }
  report.ms = performance.now() - t0;
  return report;
}
