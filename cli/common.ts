// What the commands share: their environment, flag helpers and output.
import { Command, Option } from 'commander';
import { InputError } from '../lib/errors.js';
import { isBlobRef } from '../lib/storage/refs.js';
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
