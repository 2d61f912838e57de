#!/usr/bin/env node
import { Command, CommanderError } from 'commander';
import { InputError } from '../lib/errors.js';
import { SafetensorsError } from '../lib/format/safetensors.js';
import { TOOL_VERSION } from '../lib/version.js';
import { EXIT } from './common.js';
import { registerCompute } from './commands/compute.js';
import { registerApply } from './commands/apply.js';
import { registerVerify } from './commands/verify.js';
import { registerInspect } from './commands/inspect.js';
import { registerConvert } from './commands/convert.js';
import { registerServe } from './commands/serve.js';
import { registerDemo } from './commands/demo.js';
import { registerTransfer } from './commands/transfer.js';
import { registerEval } from './commands/eval.js';
import { registerAnalyze } from './commands/analyze.js';

export function buildProgram(): Command {
  const program = new Command('paramdelta')
    .description('ParamΔ: carry post-training over to a new base model (Δ = post − base; new post = new base + Δ)')
    .version(TOOL_VERSION)
    .exitOverride()
    // A usage error is one line saying what to fix (and where help is), never the whole help.
    .configureOutput({
      outputError: (str, write) => write(`paramdelta: ${str.trim().replace(/^error: /, 'error: ')} (see paramdelta --help)\n`),
    });
  registerCompute(program);
  registerApply(program);
  registerVerify(program);
  registerInspect(program);
  registerTransfer(program);
  registerConvert(program);
  registerServe(program);
  registerDemo(program, main);
  registerEval(program);
  registerAnalyze(program);
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
  const program = buildProgram();
  try {
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
