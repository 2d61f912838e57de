#!/usr/bin/env node
import { Command, CommanderError, Option } from 'commander';
import { InputError } from '../lib/errors.js';
import { SafetensorsError } from '../lib/format/safetensors.js';
import { MODEL_INDEX } from '../lib/format/checkpoint.js';
import { DELTA_MANIFEST } from '../lib/ops/manifest.js';
import { cliOutput, cliResolver } from './storage.js';
import { isBlobRef } from '../lib/storage/refs.js';
import { runCompute, runApply } from '../lib/ops/run.js';
import { verify } from '../lib/ops/verify.js';
import { inspect } from '../lib/ops/inspect.js';
import { DELTA_DTYPE_POLICIES, DEFAULT_SHARD_SIZE, type DeltaDtypePolicy } from '../lib/ops/plan.js';
import { formatBytes, parseSize } from '../lib/ops/sizes.js';
import { BLOB_SLOTS, LOCAL_SLOTS, type ExecEnv } from '../lib/ops/env.js';
import { TOOL_VERSION } from '../lib/version.js';
import path from 'node:path';
import { rm } from 'node:fs/promises';
import { writeSyntheticFamily } from '../lib/synth/family.js';
import { Progress } from './progress.js';
import { printInspect } from './print.js';

/** Exit codes: 0 success, 1 verification mismatch, 2 bad input or usage. */
const EXIT_MISMATCH = 1;
const EXIT_INPUT = 2;

interface Common {
  json?: boolean;
  kernels?: 'wasm' | 'reference';
  storage?: string;
}

function env(opts: Common, progress: Progress, refs: readonly string[]): ExecEnv & { onPlan: (p: unknown, bytes: number) => void } {
  return {
    resolve: cliResolver(opts),
    kernels: opts.kernels,
    slots: refs.some(isBlobRef) ? BLOB_SLOTS : LOCAL_SLOTS,
    onProgress: (b) => progress.add(b),
    onPlan: (_p, bytes) => progress.start('paramdelta', bytes),
  };
}

function pick<T>(flag: string, a: T | undefined, b: T | undefined): T {
  if (a !== undefined && b !== undefined && a !== b) throw new InputError(`${flag} was given twice with different values`);
  const v = a ?? b;
  if (v === undefined) throw new InputError(`${flag} is required`);
  return v;
}

function out(opts: Common, text: string, json: unknown): void {
  process.stdout.write(opts.json ? JSON.stringify(json, null, 2) + '\n' : text + '\n');
}

/** A `<dir>` flag, with the reference implementation's name for it as a hidden alias. */
function withAlias(cmd: Command, flag: string, alias: string, description: string): Command {
  return cmd.option(`${flag} <dir>`, description).addOption(new Option(`${alias} <dir>`).hideHelp());
}

const kernelsOption = new Option('--kernels <impl>', 'kernel implementation').choices(['wasm', 'reference']).default('wasm').hideHelp();
const storageOption = new Option('--storage <connection-string>', 'storage account for az://container/prefix references (default: the AzureWebJobsStorage setting)');

/** Options of the commands that write a folder of shards: compute and apply. */
function writerOptions(cmd: Command, shardHelp: string): Command {
  return cmd
    .option('--shard-size <size>', shardHelp, '5GB')
    .option('--force', 'replace an existing output folder')
    .option('--json', 'print a machine-readable result')
    .addOption(storageOption)
    .addOption(kernelsOption);
}

export function buildProgram(): Command {
  const program = new Command('paramdelta')
    .description('ParamΔ: carry post-training over to a new base model (Δ = post − base; new post = new base + Δ)')
    .version(TOOL_VERSION)
    .showHelpAfterError()
    .exitOverride();

  const compute = program.command('compute').alias('compute-delta').description('compute Δ = post − base into a delta folder');
  withAlias(compute, '--base', '--base-model', 'the base checkpoint');
  withAlias(compute, '--post', '--post-model', 'the post-trained checkpoint');
  withAlias(compute, '--out', '--output', 'the delta folder to write')
    .addOption(new Option('--delta-dtype <dtype>', 'dtype of stored deltas; auto keeps them exact').choices(DELTA_DTYPE_POLICIES).default('auto'));
  writerOptions(compute, 'largest delta shard, e.g. 5GB or 2GiB').action(async (o) => {
    const base = pick('--base', o.base, o.baseModel);
    const post = pick('--post', o.post, o.postModel);
    const dir = pick('--out', o.out, o.output);
    const progress = new Progress(process.stderr.isTTY && !o.json);
    const inputs = [base, post];
    try {
      const e = env(o, progress, [...inputs, dir]);
      const { plan, manifest } = await runCompute(
        e,
        { base, post, policy: o.deltaDtype as DeltaDtypePolicy, shardSize: parseSize(o.shardSize, '--shard-size') },
        cliOutput(e.resolve, dir, DELTA_MANIFEST, { force: o.force, inputs }),
      );
      progress.stop();
      const entries = Object.entries(manifest.tensors);
      const lossy = entries.filter(([, t]) => t.rounded > 0);
      const dtypes: Record<string, number> = {};
      for (const [, t] of entries) dtypes[t.dtype] = (dtypes[t.dtype] ?? 0) + 1;
      const bytes = manifest.shards.reduce((a, s) => a + s.bytes, 0);
      let text = `wrote ${dir}: ${entries.length} delta tensors (${Object.entries(dtypes).map(([d, n]) => `${n} ${d}`).join(', ')}) in ${manifest.shards.length} shard(s), ${formatBytes(bytes)}`;
      if (plan.unchangedNonFloat.length) text += `\nnon-float tensors checked equal and left out: ${plan.unchangedNonFloat.join(', ')}`;
      if (lossy.length) {
        const rounded = lossy.reduce((a, [, t]) => a + t.rounded, 0);
        const maxErr = Math.max(...lossy.map(([, t]) => t.maxError));
        text += `\nlossy: ${rounded} elements in ${lossy.length} tensors were rounded to ${o.deltaDtype}; largest error ${maxErr}`;
      }
      out(o, text, { ok: true, out: dir, shards: manifest.shards, tensors: manifest.tensors, unchangedNonFloat: plan.unchangedNonFloat });
    } finally {
      progress.stop();
    }
  });

  const deltas: { ref: string; scale: number }[] = [];
  const applyCmd = program
    .command('apply')
    .alias('apply-delta')
    .description('write new base + Σ scale·Δ as a complete Hugging Face model folder')
    .option('--base <dir>', 'the new base checkpoint')
    .addOption(new Option('--base-model <dir>').hideHelp())
    .option('--delta <dir>', 'a delta folder; repeat to fuse several', (v: string) => {
      deltas.push({ ref: v, scale: 1 });
      return v;
    })
    .addOption(
      new Option('--delta-path <dir>').hideHelp().argParser((v: string) => {
        deltas.push({ ref: v, scale: 1 });
        return v;
      }),
    )
    .option('--scale <s>', 'scale of the --delta just before it (default 1)', (v: string) => {
      const s = Number(v);
      if (!deltas.length) throw new InputError('--scale must follow the --delta it scales');
      if (v.trim() === '' || !Number.isFinite(s)) throw new InputError(`--scale ${v}: not a finite number`);
      deltas[deltas.length - 1].scale = s;
      return v;
    })
    .option('--out <dir>', 'the model folder to write')
    .addOption(new Option('--output <dir>').hideHelp());
  writerOptions(applyCmd, 'largest output shard').action(async (o) => {
    const base = pick('--base', o.base, o.baseModel);
    const dir = pick('--out', o.out, o.output);
    if (!deltas.length) throw new InputError('--delta is required');
    const progress = new Progress(process.stderr.isTTY && !o.json);
    const inputs = [base, ...deltas.map((d) => d.ref)];
    try {
      const e = env(o, progress, [...inputs, dir]);
      const { plan } = await runApply(
        e,
        { base, deltas, shardSize: parseSize(o.shardSize, '--shard-size') },
        cliOutput(e.resolve, dir, MODEL_INDEX, { force: o.force, inputs }),
      );
      progress.stop();
      let text = `wrote ${dir}: ${plan.shards.length} shard(s), ${deltas.map((d) => `${d.scale}·${d.ref}`).join(' + ')} applied`;
      if (plan.copied.length) text += `\ncopied unchanged from the new base (no delta has them): ${plan.copied.join(', ')}`;
      text += `\nfiles: ${plan.files.map((f) => f.file).join(', ')}`;
      out(o, text, { ok: true, out: dir, shards: plan.shards.map((s) => s.file), copied: plan.copied, files: plan.files });
    } finally {
      progress.stop();
    }
  });

  const verifyCmd = program
    .command('verify')
    .description('apply the delta to the original base and compare with post, byte for byte (exit 1 on mismatch)');
  withAlias(verifyCmd, '--base', '--base-model', 'the original base');
  withAlias(verifyCmd, '--post', '--post-model', 'the post-trained model');
  withAlias(verifyCmd, '--delta', '--delta-path', 'the delta folder')
    .option('--json', 'print a machine-readable result')
    .addOption(storageOption)
    .addOption(kernelsOption)
    .action(async (o) => {
      const progress = new Progress(process.stderr.isTTY && !o.json);
      const refs = [pick('--base', o.base, o.baseModel), pick('--post', o.post, o.postModel), pick('--delta', o.delta, o.deltaPath)] as const;
      const r = await verify(env(o, progress, refs), ...refs);
      progress.stop();
      const lines = r.ok
        ? [`verified: ${r.tensors} tensors reproduce post byte for byte`]
        : [
            `MISMATCH: ${r.mismatches.length} tensors differ, ${r.corruptShards.length} delta shards fail their sha256`,
            ...r.mismatches.map((m) => `  ${m.tensor}: ${m.detail}`),
            ...r.corruptShards.map((f) => `  ${f}: sha256 differs from delta.json`),
          ];
      out(o, lines.join('\n'), r);
      if (!r.ok) process.exitCode = EXIT_MISMATCH;
    });

  program
    .command('inspect')
    .description('show tensors, dtypes, parameter count and sizes of a checkpoint, shard or delta')
    .argument('<path>', 'a checkpoint folder, a .safetensors file, or a delta folder')
    .option('--json', 'print a machine-readable result')
    .addOption(storageOption)
    .action(async (p: string, o) => {
      const r = await inspect(p, cliResolver(o));
      if (o.json) out(o, '', r);
      else printInspect(r);
    });

  program
    .command('serve')
    .description('run the pipeline locally: the HTTP API and the base-models watcher over Azurite (started unless --storage is given)')
    .option('--port <port>', 'port on 127.0.0.1', '7071')
    .addOption(new Option('--storage <connection-string>', 'use this storage account instead of starting Azurite'))
    .option('--data-dir <dir>', 'where the started Azurite keeps its data', '.azurite')
    .action(async (o) => {
      const { startServe } = await import('./host/serve.js');
      const handle = await startServe({ port: Number(o.port), storage: o.storage, dataDir: o.dataDir });
      const say = (s: string) => process.stdout.write(s + '\n');
      say(`paramdelta serve: ${handle.url}/api (POST deltas, POST models, GET deltas, GET runs/{id})`);
      // Only Azurite's public development key is ever printed; a connection string given by the user is not.
      if (handle.startedAzurite) say(`storage (Azurite): ${handle.connectionString}`);
      say('watching base-models for uploads; Ctrl-C stops');
      await new Promise<void>((resolve) => {
        const stop = () => void handle.close().then(resolve);
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
    });

  program
    .command('demo')
    .description('generate a small BF16 model family, then compute, verify and apply its delta (the main job on local defaults)')
    .option('--dir <dir>', 'working folder', 'demo-out')
    .option('--size <size>', 'size of each generated model', '64MiB')
    .action(async (o) => {
      const dir = path.resolve(o.dir);
      await rm(dir, { recursive: true, force: true });
      const fam = await writeSyntheticFamily(path.join(dir, 'family'), { dtype: 'BF16', bytes: parseSize(o.size, '--size'), shards: 2 });
      const say = (s: string) => process.stdout.write(s + '\n');
      say(`generated base, post and newbase (${formatBytes(fam.bytes)} each) under ${path.join(dir, 'family')}`);
      const steps: string[][] = [
        ['compute', '--base', fam.base, '--post', fam.post, '--out', path.join(dir, 'delta')],
        ['verify', '--base', fam.base, '--post', fam.post, '--delta', path.join(dir, 'delta')],
        ['apply', '--base', fam.newbase, '--delta', path.join(dir, 'delta'), '--out', path.join(dir, 'reposted')],
      ];
      for (const args of steps) {
        say(`\n$ paramdelta ${args.map((a) => (a.startsWith(dir) ? path.relative(process.cwd(), a) : a)).join(' ')}`);
        const t0 = performance.now();
        const code = await main(args);
        if (code !== 0) throw new Error(`demo step "${args[0]}" failed with exit code ${code}`);
        say(`(${((performance.now() - t0) / 1000).toFixed(2)} s)`);
      }
    });

  return program;
}

function isInputError(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException)?.code;
  return e instanceof InputError || e instanceof SafetensorsError || code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR';
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      return e.exitCode === 0 ? 0 : EXIT_INPUT;
    }
    const msg = (e as Error).message ?? String(e);
    process.stderr.write(`paramdelta: error: ${msg}\n`);
    if (!isInputError(e)) process.stderr.write(`(unexpected; please report with the command you ran)\n`);
    return EXIT_INPUT;
  }
}

const isEntry = process.argv[1] && import.meta.url === (await import('node:url')).pathToFileURL(process.argv[1]).href;
if (isEntry) {
  // `paramdelta inspect … | head` closes the pipe early; that is not an error.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
    throw e;
  });
  process.exitCode = await main(process.argv.slice(2));
}
