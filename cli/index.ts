#!/usr/bin/env node
import { Command, CommanderError } from 'commander';
import { InputError } from '../lib/errors.js';
import { SafetensorsError } from '../lib/format/safetensors.js';
import { TOOL_VERSION } from '../lib/version.js';
import { EXIT } from './common.js';

type Register = (program: Command, run: (argv: string[]) => Promise<number>) => void;

/**
 * Each command's module, by the names it answers to. Only the command being run is loaded (all of them
 * for help or an unknown name): together they pull in the Azure SDK's HTTP stack, the Hub client and
 * ONNX's protobuf schema, about a third of a second of every start on 2 cores.
 */
const COMMANDS: readonly { names: readonly string[]; load: () => Promise<Register> }[] = [
  { names: ['compute', 'compute-delta'], load: async () => (await import('./commands/compute.js')).registerCompute },
  { names: ['apply', 'apply-delta'], load: async () => (await import('./commands/apply.js')).registerApply },
  { names: ['verify'], load: async () => (await import('./commands/verify.js')).registerVerify },
  { names: ['inspect'], load: async () => (await import('./commands/inspect.js')).registerInspect },
  { names: ['upload', 'download'], load: async () => (await import('./commands/transfer.js')).registerTransfer },
  { names: ['convert'], load: async () => (await import('./commands/convert.js')).registerConvert },
  { names: ['serve'], load: async () => (await import('./commands/serve.js')).registerServe },
  { names: ['demo'], load: async () => (await import('./commands/demo.js')).registerDemo },
  { names: ['eval'], load: async () => (await import('./commands/eval.js')).registerEval },
  { names: ['analyze'], load: async () => (await import('./commands/analyze.js')).registerAnalyze },
];

/** The program with the command that `argv` names registered, or every command when it names none. */
export async function buildProgram(argv: readonly string[] = []): Promise<Command> {
  const program = new Command('paramdelta')
    .description('ParamΔ: carry post-training over to a new base model (Δ = post − base; new post = new base + Δ)')
    .version(TOOL_VERSION)
    .exitOverride()
    // A usage error is one line saying what to fix (and where help is), never the whole help.
    .configureOutput({
      outputError: (str, write) => write(`paramdelta: ${str.trim().replace(/^error: /, 'error: ')} (see paramdelta --help)\n`),
    });
  const named = COMMANDS.filter((c) => c.names.includes(argv[0]));
  for (const c of named.length ? named : COMMANDS) (await c.load())(program, main);
  return program;
}

/** Bad input the user can fix: our own typed errors, and missing or unreadable paths. */
function isInputError(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException)?.code;
  return e instanceof InputError || e instanceof SafetensorsError || code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR' || code === 'EACCES';
}

/** Storage that cannot be reached is the environment's fault, not a bug: say so, as bad input. */
function isUnreachable(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException)?.code;
  return code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'ETIMEDOUT' || code === 'ECONNRESET' || code === 'EAI_AGAIN';
}

export async function main(argv: string[]): Promise<number> {
  try {
    const program = await buildProgram(argv);
    await program.parseAsync(argv, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT.ok;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? EXIT.ok : EXIT.input;
    const msg = (e as Error)?.message ?? String(e);
    if (isInputError(e)) {
      process.stderr.write(`paramdelta: error: ${msg}\n`);
      return EXIT.input;
    }
    if (isUnreachable(e)) {
      const hint = (e as { hint?: unknown }).hint;
      process.stderr.write(`paramdelta: error: storage unreachable (${msg}); ${typeof hint === 'string' ? hint : 'check --storage or AzureWebJobsStorage'}\n`);
      return EXIT.input;
    }
    process.stderr.write(`paramdelta: internal error: ${msg}\n(a bug; please report it with the command you ran)\n`);
    if (process.env.PARAMDELTA_DEBUG) process.stderr.write(`${(e as Error)?.stack ?? ''}\n`);
    return EXIT.internal;
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
