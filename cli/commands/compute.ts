import { Option, type Command } from 'commander';
import { OUTPUT_KINDS } from '../../lib/ops/outputs.js';
import { DEFAULT_DELTA_FORMAT, DELTA_FORMATS, type DeltaFormat } from '../../lib/ops/manifest.js';
import { runCompute } from '../../lib/ops/run.js';
import { DELTA_DTYPE_POLICIES, type DeltaDtypePolicy } from '../../lib/ops/plan.js';
import { formatBytes, parseSize } from '../../lib/ops/sizes.js';
import { tensorBytes } from '../../lib/format/checkpoint.js';
import { cliOutput } from '../storage.js';
import { Progress } from '../progress.js';
import { commandEnv, pick, print, withAlias, writerOptions } from '../common.js';

export function registerCompute(program: Command): void {
  const compute = program.command('compute').alias('compute-delta').description('compute Δ = post − base into a delta folder');
  withAlias(compute, '--base', '--base-model', 'the base checkpoint');
  withAlias(compute, '--post', '--post-model', 'the post-trained checkpoint');
  withAlias(compute, '--out', '--output', 'the delta folder to write')
    .addOption(new Option('--delta-dtype <dtype>', 'dtype of stored deltas; auto keeps them exact').choices(DELTA_DTYPE_POLICIES).default('auto'))
    .addOption(
      new Option('--delta-format <format>', 'compact: chunked and compressed, lossless; safetensors: plain tensors')
        .choices(DELTA_FORMATS)
        .default(DEFAULT_DELTA_FORMAT),
    );
  writerOptions(compute, 'largest delta shard, e.g. 5GB or 2GiB').action(async (o) => {
    const base = pick('--base', o.base, o.baseModel);
    const post = pick('--post', o.post, o.postModel);
    const dir = pick('--out', o.out, o.output);
    const progress = new Progress(process.stderr.isTTY && !o.json);
    const inputs = [{ label: '--base', ref: base }, { label: '--post', ref: post }];
    try {
      const e = commandEnv(o, progress, [base, post, dir]);
      const output = await cliOutput(e.resolve, dir, OUTPUT_KINDS.delta, { force: o.force, inputs });
      const { plan, manifest } = await runCompute(
        e,
        { base, post, policy: o.deltaDtype as DeltaDtypePolicy, format: o.deltaFormat as DeltaFormat, shardSize: parseSize(o.shardSize, '--shard-size') },
        output,
      );
      progress.stop();
      const entries = Object.entries(manifest.tensors);
      const lossy = entries.filter(([, t]) => t.rounded > 0);
      const dtypes: Record<string, number> = {};
      for (const [, t] of entries) dtypes[t.dtype] = (dtypes[t.dtype] ?? 0) + 1;
      const bytes = manifest.shards.reduce((a, s) => a + s.bytes, 0);
      const modelBytes = manifest.post.tensors.reduce((a, [, d, shape]) => a + tensorBytes(shape, d), 0);
      let text =
        `wrote ${dir}: ${entries.length} delta tensors (${Object.entries(dtypes).map(([d, n]) => `${n} ${d}`).join(', ')}) ` +
        `in ${manifest.shards.length} ${manifest.layout} shard(s), ${formatBytes(bytes)} (${(bytes / modelBytes).toFixed(2)}× the post model)`;
      if (plan.unchangedNonFloat.length) text += `\nnon-float tensors checked equal and left out: ${plan.unchangedNonFloat.join(', ')}`;
      if (lossy.length) {
        const rounded = lossy.reduce((a, [, t]) => a + t.rounded, 0);
        const maxErr = Math.max(...lossy.map(([, t]) => t.maxError));
        text += `\nlossy: ${rounded} elements in ${lossy.length} tensors were rounded to ${o.deltaDtype}; largest error ${maxErr}`;
      }
      print(o, text, { ok: true, out: dir, shards: manifest.shards, tensors: manifest.tensors, unchangedNonFloat: plan.unchangedNonFloat });
    } finally {
      progress.stop();
    }
  });
}
