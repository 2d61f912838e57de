// `paramdelta demo`: the event-driven pipeline as its users see it, on one machine. It starts serve
// with an Azurite of its own, registers a delta over HTTP, uploads a new base into base-models,
// follows the automatic re-post, downloads the posted model and checks it byte for byte against
// a local `apply`; then it stops everything it started (or keeps it running with --keep).
import { createWriteStream } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { writeSyntheticFamily } from '../../lib/synth/family.js';
import { formatBytes } from '../../lib/ops/sizes.js';
import { MODEL_MANIFEST } from '../../lib/ops/manifest.js';
import { LocalStore } from '../../lib/storage/local.js';
import { DOWNLOAD_TAG, planTransfer, prepareDestination, transfer } from '../../lib/storage/transfer.js';
import type { Store } from '../../lib/storage/types.js';
import { EVAL_REPORT } from '../../lib/eval/report.js';
import { GATE_FILE } from '../../lib/eval/gate.js';
import type { EvaluationSummary } from '../../functions/contracts.js';
import { readSettings, SETTING_NAMES } from '../../functions/settings.js';
import { runId } from '../../functions/http.js';
import { childInstanceId } from '../../functions/limits.js';
import { cliResolver } from '../storage.js';
import { isPortFree, portsNote, startAzurite, type Azurite, type AzuritePorts } from './azurite.js';
import { startServe, type ServeHandle } from './serve.js';

export interface PipelineDemoOptions {
  /** The demo's own folder (already checked to be the demo's). */
  dir: string;
  /** Size of each generated model. */
  bytes: number;
  /** serve's port; 'auto' takes 7071 when free, else a free one. */
  port: number | 'auto';
  azuritePorts: AzuritePorts;
  /** Leave serve and Azurite running after the check, until Ctrl-C. */
  keep: boolean;
  /** The CLI itself, for the local `apply` (passed in so this module does not import cli/index). */
  run: (argv: string[]) => Promise<number>;
  say: (line: string) => void;
}

export interface PipelineDemoResult {
  /** True when the posted model equals the local apply byte for byte (timestamps aside). */
  same: boolean;
  differences: string[];
  interrupted: boolean;
}

const DELTA = 'demo-chat';
const NEW_BASE = 'demo-next';
const FINAL = ['Completed', 'Failed', 'Terminated'];

interface RunStatus {
  id: string;
  status: string;
  progress: { phase: string; shardsDone: number; shardsTotal: number; bytesDone: number; bytesTotal: number } | null;
  output: unknown;
  error: string | null;
}

class Interrupted extends Error {}

/** Synthetic models small enough for a quick demo keep a narrow hidden size, so they still have several layers. */
const hiddenFor = (bytes: number) => (bytes < 16 * 2 ** 20 ? 128 : undefined);

export async function runPipelineDemo(o: PipelineDemoOptions): Promise<PipelineDemoResult> {
  const { dir, say } = o;
  const rel = (p: string) => path.relative(process.cwd(), p) || '.';
  const abort = new AbortController();
  const onSignal = () => abort.abort();
  // Held until the end, so a second Ctrl-C does not cut the clean-up short.
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const sleep = (ms: number) =>
    new Promise<void>((resolve, reject) => {
      if (abort.signal.aborted) return reject(new Interrupted());
      const t = setTimeout(() => {
        abort.signal.removeEventListener('abort', stop);
        resolve();
      }, ms);
      const stop = () => {
        clearTimeout(t);
        reject(new Interrupted());
      };
      abort.signal.addEventListener('abort', stop, { once: true });
    });
  const check = () => {
    if (abort.signal.aborted) throw new Interrupted();
  };

  const logFile = path.join(dir, 'serve.log');
  const log = createWriteStream(logFile, { flags: 'w' });
  let azurite: (Azurite & { cwd: string }) | null = null;
  let serve: ServeHandle | null = null;
  // Each output shard is one activity: a quarter of the model makes the re-post several shards long.
  const shardSize = String(Math.max(64 << 10, Math.ceil(o.bytes / 4)));
  const savedShardSize = process.env[SETTING_NAMES.shardSize];
  const t0 = performance.now();
  const step = (n: number, text: string) => say(`\n${n}. ${text}  [${secs(t0)}]`);
  const secs = (since: number) => `${((performance.now() - since) / 1000).toFixed(1)} s`;
  try {
    // 1. serve, with an Azurite of its own (in memory: nothing outlives the demo).
    step(1, 'start paramdelta serve with its own Azurite');
    azurite = await startAzurite({ ports: o.azuritePorts });
    say(`   Azurite (pid ${azurite.pid}, ${portsNote(azurite, o.azuritePorts)}): ${azurite.connectionString}`);
    check();
    process.env[SETTING_NAMES.shardSize] = shardSize;
    const port = o.port === 'auto' ? ((await isPortFree(7071)) ? 7071 : 0) : o.port;
    serve = await startServe({ port, storage: azurite.connectionString, pollMs: 250, log: (line) => log.write(line + '\n') });
    say(`   serve: ${serve.url}/api (its log: ${rel(logFile)})`);
    say(`   dashboard: ${serve.url}/`);
    const settings = readSettings();
    const c = settings.containers;
    const resolve = cliResolver({ storage: azurite.connectionString });
    const api = async (method: string, route: string, body?: unknown): Promise<{ status: number; json: any }> => {
      const res = await fetch(`${serve!.url}/api/${route}`, {
        method,
        headers: body === undefined ? {} : { 'content-type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      return { status: res.status, json: await res.json().catch(() => null) };
    };
    const send = async (from: Store, to: Store): Promise<{ bytes: number; marker: string }> => {
      const plan = await planTransfer(from, to);
      await prepareDestination(plan, to);
      const started = performance.now();
      const r = await transfer(plan, from, to);
      const shown = (st: Store) => (st instanceof LocalStore ? rel(st.dir) : st.ref);
      say(`   ${shown(from)} -> ${shown(to)}: ${r.sent.length} file(s), ${formatBytes(r.bytes)} in ${secs(started)}, ${plan.marker} last`);
      return { bytes: r.bytes, marker: plan.marker };
    };

    // 2. A generated family: base and post go into `models`, the new base waits locally.
    step(2, `write a generated model family into ${c.models}`);
    const familyDir = path.join(dir, 'family');
    // The demo's folder is its own (checked and tagged): an earlier run's family and downloads go,
    // so files of another size cannot linger beside this run's (a download never deletes).
    for (const d of ['family', 'posted', 'delta']) await rm(path.join(dir, d), { recursive: true, force: true });
    const fam = await writeSyntheticFamily(familyDir, { dtype: 'BF16', bytes: o.bytes, shards: 2, hidden: hiddenFor(o.bytes) });
    say(`   base, post and newbase, ${formatBytes(fam.bytes)} each, under ${rel(familyDir)}`);
    await send(new LocalStore(fam.base), resolve(`az://${c.models}/demo/base`));
    await send(new LocalStore(fam.post), resolve(`az://${c.models}/demo/post`));
    check();

    // 3. Register the delta over HTTP, as a user of the API would.
    step(3, `register the delta: POST /api/deltas {"name": "${DELTA}", "base": "${c.models}/demo/base", "post": "${c.models}/demo/post"}`);
    const reg = await api('POST', 'deltas', { name: DELTA, base: `${c.models}/demo/base`, post: `${c.models}/demo/post` });
    if (reg.status !== 202) throw new Error(`POST /api/deltas answered ${reg.status}: ${JSON.stringify(reg.json)}`);
    say(`   202 Accepted, run ${reg.json.id}`);
    await follow(reg.json.id, 'computeDelta');
    say(`   ${c.deltas}/${DELTA} registered, auto-apply on`);

    // 4. A new base arrives in base-models: shards first, the index last, so the trigger fires once.
    step(4, `upload a new base into ${c.baseModels}/${NEW_BASE} (shards first, index last)`);
    const baseStore = resolve(`az://${c.baseModels}/${NEW_BASE}`);
    const up = await send(new LocalStore(fam.newbase), baseStore);
    check();

    // 5. The upload triggers repostBase; follow it (GET /api/runs/{id}) to completion.
    step(5, 'the upload starts the automatic re-post; its progress from GET /api/runs/{id}');
    const etag = (await baseStore.fileVersion?.(up.marker)) ?? '';
    const repostId = runId('repost', NEW_BASE, [NEW_BASE, etag]);
    const repost = await follow(repostId, 'repostBase', childInstanceId(repostId, DELTA));
    const out = repost.output as {
      posted?: { delta: string; output: string }[];
      failed?: { delta: string; error: string }[];
      evaluations?: (Omit<EvaluationSummary, 'output'> & { delta: string })[];
    } | null;
    const posted = out?.posted?.find((p) => p.delta === DELTA)?.output;
    if (!posted) throw new Error(`the re-post did not post ${DELTA}: ${JSON.stringify(out)}`);
    say(`   posted ${posted}`);
    const ev = out?.evaluations?.find((e) => e.delta === DELTA);
    if (ev?.model && ev.reference) {
      say(
        `   quality: loss ${ev.model.meanLoss.toFixed(4)} against the ${ev.reference.role}'s ${ev.reference.meanLoss.toFixed(4)} ` +
          `(ratio ${ev.lossRatio?.toFixed(4)}), top-1 agreement ${((ev.agreement ?? 0) * 100).toFixed(1)} %, KL ${ev.kl?.toExponential(2)} ` +
          `on ${ev.probes?.tokens} probe tokens; gate ${ev.gate.passed ? 'passed' : `failed: ${ev.gate.reasons.join('; ')}`} (${EVAL_REPORT} beside the model)`,
      );
    } else if (ev?.error) say(`   quality: not evaluated (${ev.error})`);

    // 6. Download the posted model and the delta; apply the delta locally; compare.
    step(6, 'download the posted model and check it byte for byte against a local apply');
    const postedDir = path.join(dir, 'posted');
    const deltaDir = path.join(dir, 'delta');
    const expectedDir = path.join(dir, 'expected');
    await send(resolve(`az://${posted}`), new LocalStore(postedDir));
    await send(resolve(`az://${c.deltas}/${DELTA}`), new LocalStore(deltaDir));
    check();
    for (const args of [
      ['verify', '--base', fam.base, '--post', fam.post, '--delta', deltaDir],
      ['apply', '--base', fam.newbase, '--delta', deltaDir, '--out', expectedDir, '--shard-size', shardSize, '--force'],
    ]) {
      say(`   $ paramdelta ${args.map((a) => (path.isAbsolute(a) ? rel(a) : a)).join(' ')}`);
      const code = await o.run(args);
      process.exitCode = undefined;
      if (code !== 0) throw new Error(`paramdelta ${args[0]} failed with exit code ${code}`);
    }
    const differences = await compareModels(postedDir, expectedDir);
    if (differences.length === 0) {
      say(`   the posted model equals the local apply byte for byte (${rel(postedDir)} = ${rel(expectedDir)}; ${MODEL_MANIFEST} aside from createdAt and where its inputs lay, ${EVAL_REPORT} the pipeline's own)`);
    } else {
      say(`   MISMATCH between ${rel(postedDir)} and ${rel(expectedDir)}:`);
      for (const d of differences) say(`     ${d}`);
    }
    say(`\ndone in ${secs(t0)}; dashboard: ${serve.url}/`);

    // 7. Stop everything it started, unless asked to keep it.
    if (o.keep) {
      say(`\n--keep: serve (${serve.url}/api, dashboard ${serve.url}/) and Azurite keep running; Ctrl-C stops them`);
      await new Promise<void>((r) => (abort.signal.aborted ? r() : abort.signal.addEventListener('abort', () => r(), { once: true })));
    }
    return { same: differences.length === 0, differences, interrupted: false };
  } catch (e) {
    // A terminal's Ctrl-C reaches Azurite too, so what fails after it is the interruption.
    if (e instanceof Interrupted || abort.signal.aborted) {
      say('\ninterrupted');
      return { same: false, differences: [], interrupted: true };
    }
    say(`\nthe demo failed; serve's log is ${rel(logFile)}`);
    throw e;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    say(`\n7. stop what the demo started: serve${azurite ? `, Azurite (pid ${azurite.pid})` : ''}`);
    await serve?.close();
    await azurite?.stop();
    await new Promise<void>((r) => log.end(() => r()));
    if (savedShardSize === undefined) delete process.env[SETTING_NAMES.shardSize];
    else process.env[SETTING_NAMES.shardSize] = savedShardSize;
  }

  /** Polls a run (and, for a re-post, its child for the delta) until it ends; prints each change of progress. */
  async function follow(id: string, label: string, childId?: string): Promise<RunStatus> {
    const deadline = Date.now() + 10 * 60_000;
    let last = '';
    let lastChild = '';
    const unit = childId ? 'deltas' : 'shards';
    let firstSeen = 0;
    let childSeen = 0;
    const get = async (runIdOf: string): Promise<RunStatus | null> => {
      const res = await fetch(`${serve!.url}/api/runs/${encodeURIComponent(runIdOf)}`);
      if (res.status === 404) {
        await res.arrayBuffer();
        return null;
      }
      if (!res.ok) throw new Error(`GET /api/runs/${runIdOf} answered ${res.status}: ${await res.text()}`);
      return (await res.json()) as RunStatus;
    };
    const line = (name: string, s: RunStatus, unit: string, since: number) => {
      const p = s.progress;
      if (!p) return `${name}: ${s.status}`;
      const rate = p.bytesDone > 0 ? `, ${formatBytes(p.bytesDone / Math.max(1e-3, (Date.now() - since) / 1000))}/s` : '';
      const bytes = p.bytesTotal > 0 ? `, ${formatBytes(p.bytesDone)} of ${formatBytes(p.bytesTotal)}${rate}` : '';
      return `${name}: ${s.status}, ${p.phase}, ${unit} ${p.shardsDone}/${p.shardsTotal}${bytes}`;
    };
    for (;;) {
      const s = await get(id);
      if (s) {
        if (!firstSeen) firstSeen = Date.now();
        // A line each time a run's status or progress moves (the rate alone does not count); the child's first.
        const child = childId ? await get(childId) : null;
        const childKey = child ? JSON.stringify([child.status, child.progress]) : '';
        if (child && !childSeen) childSeen = Date.now();
        if (child && childKey !== lastChild) {
          lastChild = childKey;
          say(`     ${line(`applyDeltas (${DELTA})`, child, 'shards', childSeen)}`);
        }
        const key = JSON.stringify([s.status, s.progress]);
        if (key !== last) {
          last = key;
          say(`   ${line(label, s, unit, firstSeen)}`);
        }
        if (FINAL.includes(s.status)) {
          if (s.status !== 'Completed') throw new Error(`${label} run ${id} ${s.status}: ${s.error ?? ''}`);
          return s;
        }
      }
      if (Date.now() > deadline) throw new Error(`${label} run ${id} did not finish in 10 minutes`);
      await sleep(100);
    }
  }
}

/** Differences between two model folders: names, then bytes; the manifests compared without createdAt and input locations. */
export async function compareModels(got: string, want: string): Promise<string[]> {
  // The pipeline's evaluation and gate records have no counterpart in a local apply.
  const pipelineOnly = new Set<string>([DOWNLOAD_TAG, EVAL_REPORT, GATE_FILE]);
  const files = async (d: string) => (await readdir(d)).filter((f) => !pipelineOnly.has(f) && !f.startsWith('.')).sort();
  const [a, b] = [await files(got), await files(want)];
  const diff: string[] = [];
  for (const f of a.filter((x) => !b.includes(x))) diff.push(`${f}: only in ${got}`);
  for (const f of b.filter((x) => !a.includes(x))) diff.push(`${f}: only in ${want}`);
  for (const f of a.filter((x) => b.includes(x))) {
    const [x, y] = [await readFile(path.join(got, f)), await readFile(path.join(want, f))];
    if (f === MODEL_MANIFEST) {
      // createdAt is a timestamp, and base/deltas say where the inputs lay (blob vs local): the rest must agree.
      const strip = (t: Buffer) => {
        const m = JSON.parse(t.toString('utf8')) as Record<string, unknown> & { deltas?: { scale: number }[] };
        return JSON.stringify({ ...m, createdAt: null, base: null, deltas: (m.deltas ?? []).map((d) => ({ scale: d.scale })) });
      };
      if (strip(x) !== strip(y)) diff.push(`${f}: differs beyond createdAt and input locations`);
    } else if (!x.equals(y)) diff.push(`${f}: ${x.length} vs ${y.length} bytes, contents differ`);
  }
  return diff;
}
