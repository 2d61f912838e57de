// Part 4: many runs at once through `paramdelta serve`, computes and applies on different outputs;
// every output must be exact, and never look complete before it is.
import { BlobServiceClient } from '@azure/storage-blob';
import { startAzurite } from '../../cli/host/azurite.js';
import { CompletionWatch, api, blobFolder, differsFrom, log, startServeProcess, seedStorage, waitForRun, type ServeProcess } from './common.js';

export interface ConcurrentOptions {
  root: string;
  family: { base: string; post: string; newbase: string };
  refDelta: string;
  refModel: string;
  /** newbase + 0.5·Δ */
  refHalf: string;
  shardSize: string;
  runs: number;
}

export interface ConcurrentReport {
  runs: number;
  computes: number;
  applies: number;
  exact: number;
  ms: number;
  violations: string[];
}

export async function concurrentRuns(o: ConcurrentOptions): Promise<ConcurrentReport> {
  const azurite = await startAzurite();
  const service = BlobServiceClient.fromConnectionString(azurite.connectionString);
  const report: ConcurrentReport = { runs: o.runs, computes: 0, applies: 0, exact: 0, ms: 0, violations: [] };
  let serve: ServeProcess | null = null;
  try {
    await seedStorage(service, o.family, o.refDelta, 'chat');
    serve = await startServeProcess(azurite.connectionString, { PARAMDELTA_SHARD_SIZE: o.shardSize });
    const url = serve.url;
    const jobs = Array.from({ length: o.runs }, (_, i) => {
      if (i % 2 === 0) {
        report.computes++;
        const name = `conc-${i}`;
        return { label: `compute ${name}`, route: 'deltas', body: { name, base: 'models/chaos/base', post: 'models/chaos/post', autoApply: false }, output: `deltas/${name}`, marker: 'delta.json', reference: o.refDelta };
      }
      report.applies++;
      const scale = i % 4 === 1 ? 1 : 0.5;
      return {
        label: `apply ${scale} to posted-models/conc-${i}`, route: 'models',
        body: { base: 'models/chaos/newbase', deltas: [{ name: 'chat', scale }], output: `posted-models/conc-${i}` },
        output: `posted-models/conc-${i}`, marker: 'model.safetensors.index.json', reference: scale === 1 ? o.refModel : o.refHalf,
      };
    });
    const watches = jobs.map((j) => new CompletionWatch(blobFolder(service, j.output), j.marker, j.reference, 100));
    const t0 = performance.now();
    const started = await Promise.all(jobs.map((j) => api(url, 'POST', j.route, j.body)));
    const done = await Promise.all(
      started.map((s, i) => (s.status === 202 ? waitForRun(() => url, s.json.id, { timeoutMs: 900_000 }) : Promise.resolve({ missing: `POST answered ${s.status}: ${JSON.stringify(s.json)}` }))),
    );
    report.ms = performance.now() - t0;
    for (const w of watches) await w.stop();
    for (const [i, j] of jobs.entries()) {
      const d = done[i];
      let problem: string | null = null;
      if ('missing' in d) problem = d.missing;
      else if (d.status !== 'Completed') problem = `ended ${d.status}: ${d.error}`;
      else problem = await differsFrom(blobFolder(service, j.output), j.reference);
      if (problem) report.violations.push(`${j.label}: ${problem}`);
      else report.exact++;
      for (const v of watches[i].violations) report.violations.push(`${j.label}: ${v}`);
    }
    log(`  ${o.runs} runs (${report.computes} computes, ${report.applies} applies) in ${(report.ms / 1000).toFixed(1)} s: ${report.exact} exact`);
  } finally {
    await serve?.stop();
    await azurite.stop();
  }
  return report;
}
