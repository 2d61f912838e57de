// Part 2: SIGKILL `paramdelta serve` at random moments of a re-post of two deltas, start it again, and
// expect the run to finish (its id still answering) with the bytes an uninterrupted run writes.
import path from 'node:path';
import { BlobServiceClient } from '@azure/storage-blob';
import { startAzurite } from '../../cli/host/azurite.js';
import { runId } from '../../functions/http.js';
import {
  CompletionWatch, blobFolder, differsFrom, log, removePrefix, rng, runCliOk, sleep, startServeProcess, uploadDir, waitForRun,
  type ServeProcess,
} from './common.js';

export interface HostOptions {
  root: string;
  family: { base: string; post: string; newbase: string };
  refDelta: string;
  shardSize: string;
  kills: number;
  seed: number;
}

export interface HostPoint {
  atMs: number;
  /** The run's status when serve was killed. */
  statusAtKill: string;
  resumed: boolean;
  exact: boolean;
  problem?: string;
}

export interface HostReport {
  points: HostPoint[];
  uninterruptedMs: number;
  violations: string[];
  ms: number;
}

const MARKER = 'model.safetensors.index.json';

export async function killedHost(o: HostOptions): Promise<HostReport> {
  const t0 = performance.now();
  const random = rng(o.seed);
  const report: HostReport = { points: [], uninterruptedMs: 0, violations: [], ms: 0 };
  // Two deltas: the post-training, and the new base's own drift from the old base.
  const rebase = path.join(o.root, 'ref', 'delta-rebase');
  await runCliOk(['compute', '--base', o.family.base, '--post', o.family.newbase, '--out', rebase, '--shard-size', o.shardSize]);
  const refs: Record<string, string> = { chat: path.join(o.root, 'ref', 'host-chat'), rebase: path.join(o.root, 'ref', 'host-rebase') };
  await runCliOk(['apply', '--base', o.family.newbase, '--delta', o.refDelta, '--out', refs.chat, '--shard-size', o.shardSize]);
  await runCliOk(['apply', '--base', o.family.newbase, '--delta', rebase, '--out', refs.rebase, '--shard-size', o.shardSize]);

  const azurite = await startAzurite();
  const service = BlobServiceClient.fromConnectionString(azurite.connectionString);
  const env = { PARAMDELTA_SHARD_SIZE: o.shardSize };
  let serve: ServeProcess | null = null;
  try {
    await uploadDir(service, 'deltas', 'chat', o.refDelta, 'delta.json');
    await uploadDir(service, 'deltas', 'rebase', rebase, 'delta.json');
    serve = await startServeProcess(azurite.connectionString, env);

    /** Uploads the new base as base-models/<name> and returns the re-post's id once the host has started it. */
    const repost = async (name: string): Promise<string> => {
      await uploadDir(service, 'base-models', name, o.family.newbase, MARKER);
      const etag = (await service.getContainerClient('base-models').getBlobClient(`${name}/${MARKER}`).getProperties()).etag ?? '';
      const id = runId('repost', name, [name, etag]);
      const deadline = Date.now() + 30_000;
      while ((await fetch(`${serve!.url}/api/runs/${encodeURIComponent(id)}`)).status !== 200) {
        if (Date.now() > deadline) throw new Error(`the host did not start a re-post of ${name} (${id})`);
        await sleep(50);
      }
      return id;
    };
    const check = async (name: string): Promise<string | null> => {
      for (const d of ['chat', 'rebase']) {
        const diff = await differsFrom(blobFolder(service, `posted-models/${name}/${d}`), refs[d]);
        if (diff) return diff;
      }
      return null;
    };

    // Uninterrupted first: its time scales the kill moments.
    const id0 = await repost('host-0');
    const s0 = performance.now();
    const r0 = await waitForRun(() => serve!.url, id0, { timeoutMs: 300_000 });
    report.uninterruptedMs = performance.now() - s0;
    if (!('status' in r0) || r0.status !== 'Completed') throw new Error(`uninterrupted re-post did not complete: ${JSON.stringify(r0)}`);
    const d0 = await check('host-0');
    if (d0) report.violations.push(`uninterrupted re-post: ${d0}`);
    log(`  uninterrupted re-post of 2 deltas: ${(report.uninterruptedMs / 1000).toFixed(2)} s`);
    await removePrefix(service, 'posted-models', 'host-0');

    for (let i = 1; i <= o.kills; i++) {
      const name = `host-${i}`;
      const watches = ['chat', 'rebase'].map((d) => new CompletionWatch(blobFolder(service, `posted-models/${name}/${d}`), MARKER, refs[d], 40));
      const id = await repost(name);
      const atMs = Math.round(0.95 * random() * report.uninterruptedMs);
      await sleep(atMs);
      const before = await fetch(`${serve.url}/api/runs/${encodeURIComponent(id)}`).then((r) => r.json() as Promise<{ status: string }>);
      await serve.kill();
      serve = null;
      serve = await startServeProcess(azurite.connectionString, env);
      const r = await waitForRun(() => serve!.url, id, { timeoutMs: 300_000, unknownMs: 15_000 });
      for (const w of watches) await w.stop();
      const point: HostPoint = { atMs, statusAtKill: before.status, resumed: false, exact: false };
      if ('missing' in r) point.problem = `after the restart ${r.missing}`;
      else if (r.status !== 'Completed') point.problem = `the run ended ${r.status}: ${r.error}`;
      else {
        point.resumed = true;
        const diff = await check(name);
        if (diff) point.problem = diff;
        else point.exact = true;
      }
      for (const w of watches) for (const v of w.violations) report.violations.push(`kill #${i}: ${v}`);
      if (point.problem) report.violations.push(`kill #${i} at ${atMs} ms (run ${before.status}): ${point.problem}`);
      report.points.push(point);
      log(`  kill #${i} at ${atMs} ms (run ${before.status}): ${point.exact ? 'resumed, exact' : point.problem}`);
      await removePrefix(service, 'posted-models', name);
      await removePrefix(service, 'base-models', name);
    }
  } finally {
    await serve?.stop();
    await azurite.stop();
  }
  report.ms = performance.now() - t0;
  return report;
}
