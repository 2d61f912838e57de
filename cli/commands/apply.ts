import { Option, type Command } from 'commander';
import { InputError } from '../../lib/errors.js';
import { OUTPUT_KINDS } from '../../lib/ops/outputs.js';
import { runApply } from '../../lib/ops/run.js';
import { VOCAB_PAIRINGS, type VocabPairing } from '../../lib/ops/vocab.js';
import { checkFusion, describeFusion } from '../../lib/fusion/options.js';
import { parseSize } from '../../lib/ops/sizes.js';
import { cliOutput } from '../storage.js';
import { Progress } from '../progress.js';
import { commandEnv, fusionOptions, pick, print, writerOptions } from '../common.js';

export function registerApply(program: Command): void {
  const deltas: { ref: string; scale: number }[] = [];
  const addDelta = (v: string) => {
    deltas.push({ ref: v, scale: 1 });
    return v;
  };
  const applyCmd = program
    .command('apply')
    .alias('apply-delta')
    .description('write new base + Σ scale·Δ as a complete Hugging Face model folder')
    .option('--base <dir>', 'the new base checkpoint')
    .addOption(new Option('--base-model <dir>').hideHelp())
    .option('--delta <dir>', 'a delta folder; repeat to fuse several', addDelta)
    .addOption(new Option('--delta-path <dir>').hideHelp().argParser(addDelta))
    .option('--scale <s>', 'scale of the --delta just before it (default 1)', (v: string) => {
      const s = Number(v);
      if (!deltas.length) throw new InputError('--scale must follow the --delta it scales');
      if (v.trim() === '' || !Number.isFinite(s)) throw new InputError(`--scale ${v}: not a finite number`);
      deltas[deltas.length - 1].scale = s;
      return v;
    })
    .addOption(new Option('--vocab <pairing>', 'pair vocabulary rows with the new base by token content, or by index (rows)').choices([...VOCAB_PAIRINGS]).default('tokens'))
    .option('--out <dir>', 'the model folder to write')
    .addOption(new Option('--output <dir>').hideHelp());
  fusionOptions(applyCmd, 'how deltas combine (default linear: new base + Σ scale·Δ)');
  writerOptions(applyCmd, 'largest output shard').action(async (o) => {
    const base = pick('--base', o.base, o.baseModel);
    const dir = pick('--out', o.out, o.output);
    if (!deltas.length) throw new InputError('--delta is required');
    const fusion = checkFusion(
      { method: o.method, density: o.density, gamma: o.gamma, lambda: o.lambda, seed: o.seed, normalize: o.normalize },
      (f) => `--${f}`,
    );
    const progress = new Progress(process.stderr.isTTY && !o.json);
    const inputs = [{ label: '--base', ref: base }, ...deltas.map((d) => ({ label: '--delta', ref: d.ref }))];
    try {
      const e = commandEnv(o, progress, [base, ...deltas.map((d) => d.ref), dir]);
      const output = await cliOutput(e.resolve, dir, OUTPUT_KINDS.model, { force: o.force, inputs });
      const { plan } = await runApply(e, { base, deltas, shardSize: parseSize(o.shardSize, '--shard-size'), vocab: o.vocab as VocabPairing, fusion }, output);
      progress.stop();
      let text = `wrote ${dir}: ${plan.shards.length} shard(s), ${deltas.map((d) => `${d.scale}·${d.ref}`).join(' + ')} applied`;
      if (fusion) text += ` by ${describeFusion(fusion)}`;
      if (plan.copied.length) text += `\ncopied unchanged from the new base (no delta has them): ${plan.copied.join(', ')}`;
      const v = plan.vocab?.record;
      if (v) text += `\nvocabulary: ${v.rows} rows (new base ${v.newBaseRows}, delta's base ${v.deltaBaseRows}); ${v.carried.length} carried into the new base's rows, ${v.appended.length} appended`;
      if (plan.vocab) text += `\nlm_head: ${plan.vocab.tied ? 'tied to embed_tokens' : 'its own tensor'}`;
      text += `\nfiles: ${plan.files.map((f) => f.file).join(', ')}`;
      print(o, text, { ok: true, out: dir, shards: plan.shards.map((s) => s.file), copied: plan.copied, files: plan.files, ...(plan.vocab ? { vocab: plan.vocab.record ?? null, tied: plan.vocab.tied } : {}), ...(fusion ? { fusion } : {}) });
    } finally {
      progress.stop();
    }
  });
}
