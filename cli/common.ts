// What the commands share: their environment, flag helpers and output.
import { Command, Option } from 'commander';
import { InputError } from '../lib/errors.js';
import { isBlobRef } from '../lib/storage/refs.js';
import { FUSION_METHODS } from '../lib/fusion/options.js';
import { BLOB_SLOTS, LOCAL_SLOTS, type ExecEnv } from '../lib/ops/env.js';
import { cliResolver } from './storage.js';
import type { Progress } from './progress.js';

/** Exit codes: 0 success, 1 verification mismatch, 2 bad input or usage, 3 a bug (an unexpected exception). */
export const EXIT = { ok: 0, mismatch: 1, input: 2, internal: 3 } as const;

export interface Common {
  json?: boolean;
  kernels?: 'wasm' | 'reference';
  storage?: string;
}

export function commandEnv(opts: Common, progress: Progress, refs: readonly string[]): ExecEnv & { onPlan: (p: unknown, bytes: number) => void } {
  return {
    resolve: cliResolver(opts),
    kernels: opts.kernels,
    slots: refs.some(isBlobRef) ? BLOB_SLOTS : LOCAL_SLOTS,
    onProgress: (b) => progress.add(b),
    onPlan: (_p, bytes) => progress.start('paramdelta', bytes),
  };
}

/** A required flag that has a reference-implementation alias: either may be given, not both differently. */
export function pick<T>(flag: string, a: T | undefined, b: T | undefined): T {
  if (a !== undefined && b !== undefined && a !== b) throw new InputError(`${flag} was given twice with different values`);
  const v = a ?? b;
  if (v === undefined) throw new InputError(`${flag} is required`);
  return v;
}

export function print(opts: Common, text: string, json: unknown): void {
  process.stdout.write(opts.json ? JSON.stringify(json, null, 2) + '\n' : text + '\n');
}

/** A `<dir>` flag, with the reference implementation's name for it as a hidden alias. */
export function withAlias(cmd: Command, flag: string, alias: string, description: string): Command {
  return cmd.option(`${flag} <dir>`, description).addOption(new Option(`${alias} <dir>`).hideHelp());
}

export const kernelsOption = (): Option =>
  new Option('--kernels <impl>', 'kernel implementation').choices(['wasm', 'reference']).default('wasm').hideHelp();
export const storageOption = (): Option =>
  new Option('--storage <connection-string>', 'storage account for az://container/prefix references (default: the AzureWebJobsStorage setting)');

/** Options of the commands that write a folder of shards: compute and apply. */
export function writerOptions(cmd: Command, shardHelp: string): Command {
  return cmd
    .option('--shard-size <size>', shardHelp, '5GB')
    .option('--force', 'replace an earlier paramdelta output in the output folder')
    .option('--json', 'print a machine-readable result')
    .addOption(storageOption())
    .addOption(kernelsOption());
}

/** A commander parser for a finite number, naming the flag when it is not one (exit 2). */
export function finite(flag: string): (v: string) => number {
  return (v) => {
    const x = Number(v);
    if (v.trim() === '' || !Number.isFinite(x)) throw new InputError(`${flag} ${v}: not a finite number`);
    return x;
  };
}

/**
 * The sparse fusion options, as apply takes them; `counting` (analyze) says that λ and normalize are
 * accepted there but change nothing it counts.
 */
export function fusionOptions(cmd: Command, methodHelp: string, counting = false): Command {
  const counted = 'accepted as apply takes it (it does not change what is kept)';
  return cmd
    .addOption(new Option('--method <method>', methodHelp).choices(FUSION_METHODS))
    .option('--density <d>', `${counting ? 'with --method' : 'sparse methods'}: the fraction of each delta kept, in (0, 1]`, finite('--density'))
    .option('--gamma <g>', 'breadcrumbs: the fraction of largest magnitudes dropped (default 0.01)', finite('--gamma'))
    .option('--lambda <l>', counting ? counted : 'sparse methods: x = new base + λ·m (default 1)', finite('--lambda'))
    .option('--seed <u64>', "DARE: the random numbers' seed (default 0)")
    .option('--normalize', counting ? counted : "sign-electing methods: divide by the agreeing weights' sum (their default)")
    .option('--no-normalize', counting ? 'accepted as apply takes it' : 'sign-electing methods: do not normalize');
}
