import { Option, type Command } from 'commander';
import { evaluateWithProbes, EVAL_PROVIDERS, type EvalProvider, type Evaluation, type ProbeInput } from '../../lib/eval/index.js';
import { InputError } from '../../lib/errors.js';
import { Progress } from '../progress.js';
import { commandEnv, print, storageOption } from '../common.js';

function positiveInt(flag: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n <= 0) throw new InputError(`${flag} must be a positive integer, not ${JSON.stringify(v)}`);
    return n;
  };
}

/** The --json object: the issue's fields first, then the reference's own figures and the probe set. */
export function evalJson(e: Evaluation): Record<string, unknown> {
  const r = e.result;
  const out: Record<string, unknown> = {
    meanLoss: r.model.meanLoss,
    perplexity: r.model.perplexity,
    tokens: r.model.tokens,
    sequences: r.model.sequences.map((s) => ({
      meanLoss: s.meanLoss,
      tokens: s.tokens,
      ...(s.agreement !== undefined ? { agreement: s.agreement, kl: s.kl } : {}),
    })),
  };
  if (r.against) {
    out.agreement = r.agreement;
    out.kl = r.kl;
    out.against = { ref: r.against.ref, meanLoss: r.against.meanLoss, perplexity: r.against.perplexity, sharedVocab: r.sharedVocab };
  }
  out.probes = e.report.probes;
  return out;
}

function evalText(e: Evaluation): string {
  const r = e.result;
  const f = (x: number) => x.toFixed(4);
  const lines = [
    `model ${r.model.ref}: mean loss ${f(r.model.meanLoss)} nats, perplexity ${r.model.perplexity.toFixed(3)} over ${r.model.tokens} tokens in ${r.model.sequences.length} sequences`,
  ];
  if (r.against) {
    lines.push(`against ${r.against.ref}: mean loss ${f(r.against.meanLoss)} nats, perplexity ${r.against.perplexity.toFixed(3)}`);
    lines.push(`top-1 agreement ${f(r.agreement!)}, KL(against ‖ model) ${f(r.kl!)} nats per token${r.model.vocab !== r.against.vocab ? ` (over the ${r.sharedVocab} vocabulary rows both share)` : ''}`);
  }
  lines.push(`probes: ${e.probes.source}, sha256 ${e.probes.sha256}`);
  r.model.sequences.forEach((s, i) => {
    const extra = s.agreement !== undefined ? `, agreement ${f(s.agreement)}, KL ${f(s.kl!)}` : '';
    lines.push(`  sequence ${i}: loss ${f(s.meanLoss)} (${s.tokens} tokens)${extra}`);
  });
  lines.push(`(${r.engine.provider}, ${r.engine.threads} threads, ${r.engine.seconds.toFixed(1)} s)`);
  return lines.join('\n');
}

export function registerEval(program: Command): void {
  program
    .command('eval')
    .description('mean next-token loss and perplexity of a model on token sequences or text; with --against, top-1 agreement and KL')
    .requiredOption('--model <ref>', 'the model to evaluate (a folder, or az://container/prefix)')
    .option('--tokens <file>', 'token ids: a JSON array of arrays')
    .option('--text <file>', 'UTF-8 text (documents separated by blank lines), or JSON Lines of {"text"} or {"messages"} (chat, rendered with the chat template)')
    .option('--against <ref>', 'a reference model: adds top-1 agreement and KL(against ‖ model) on the same positions')
    .option('--json', 'print a machine-readable result')
    .addOption(new Option('--provider <name>', 'onnxruntime execution provider (default: PARAMDELTA_EVAL_PROVIDER, else cpu)').choices(EVAL_PROVIDERS))
    .addOption(new Option('--threads <n>', 'intra-op threads (default: every core)').argParser(positiveInt('--threads')))
    .addOption(new Option('--batch-tokens <n>', 'padded tokens per layer call (default 256 on CPU, 8192 on CUDA)').argParser(positiveInt('--batch-tokens')))
    .addOption(storageOption())
    .action(async (o) => {
      if (o.tokens !== undefined && o.text !== undefined) throw new InputError('give --tokens or --text, not both');
      const probes: ProbeInput = o.tokens !== undefined ? { tokens: o.tokens } : o.text !== undefined ? { text: o.text } : { builtin: true };
      const progress = new Progress(process.stderr.isTTY && !o.json);
      try {
        const env = commandEnv(o, progress, [o.model, ...(o.against ? [o.against] : [])]);
        const e = await evaluateWithProbes(env, { model: o.model, against: o.against, probes }, {
          provider: o.provider as EvalProvider | undefined,
          threads: o.threads,
          batchTokens: o.batchTokens,
          onPlan: (bytes) => progress.start('paramdelta eval', bytes),
        });
        progress.stop();
        print(o, evalText(e), evalJson(e));
      } finally {
        progress.stop();
      }
    });
}
