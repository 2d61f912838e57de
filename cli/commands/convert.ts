import { Option, type Command } from 'commander';
import { DELTA_FORMATS, type DeltaFormat } from '../../lib/ops/manifest.js';
import { OUTPUT_KINDS } from '../../lib/ops/outputs.js';
import { runConvert } from '../../lib/ops/run.js';
import { formatBytes, parseSize } from '../../lib/ops/sizes.js';
import { cliOutput } from '../storage.js';
import { Progress } from '../progress.js';
import { commandEnv, print, writerOptions } from '../common.js';

export function registerConvert(program: Command): void {
  const convert = program
    .command('convert')
    .description('convert a delta between the compact and the plain safetensors layout, values unchanged')
    .argument('<delta>', 'the delta folder to convert')
    .addOption(new Option('--to <format>', 'the layout to write').choices(DELTA_FORMATS).makeOptionMandatory())
    .requiredOption('--out <dir>', 'the delta folder to write');
  writerOptions(convert, 'largest output shard').action(async (delta: string, o) => {
    const progress = new Progress(process.stderr.isTTY && !o.json);
    const dir: string = o.out;
    try {
      const e = commandEnv(o, progress, [delta, dir]);
      const { manifest } = await runConvert(
        e,
        { delta, to: o.to as DeltaFormat, shardSize: parseSize(o.shardSize, '--shard-size') },
        await cliOutput(e.resolve, dir, OUTPUT_KINDS.delta, { force: o.force, inputs: [{ label: 'DELTA', ref: delta }] }),
      );
      progress.stop();
      const bytes = manifest.shards.reduce((a, s) => a + s.bytes, 0);
      print(
        o,
        `wrote ${dir}: ${Object.keys(manifest.tensors).length} delta tensors in ${manifest.shards.length} ${manifest.layout} shard(s), ${formatBytes(bytes)}`,
        { ok: true, out: dir, layout: manifest.layout, shards: manifest.shards },
      );
    } finally {
      progress.stop();
    }
  });
}
