import type { Command } from 'commander';
import { verify } from '../../lib/ops/verify.js';
import { Progress } from '../progress.js';
import { EXIT, commandEnv, kernelsOption, pick, print, storageOption, withAlias } from '../common.js';

export function registerVerify(program: Command): void {
  const verifyCmd = program
    .command('verify')
    .description('apply the delta to the original base and compare with post, byte for byte (exit 1 on mismatch)');
  withAlias(verifyCmd, '--base', '--base-model', 'the original base');
  withAlias(verifyCmd, '--post', '--post-model', 'the post-trained model');
  withAlias(verifyCmd, '--delta', '--delta-path', 'the delta folder')
    .option('--json', 'print a machine-readable result')
    .addOption(storageOption())
    .addOption(kernelsOption())
    .action(async (o) => {
      const progress = new Progress(process.stderr.isTTY && !o.json);
      const refs = [pick('--base', o.base, o.baseModel), pick('--post', o.post, o.postModel), pick('--delta', o.delta, o.deltaPath)] as const;
      const r = await verify(commandEnv(o, progress, refs), ...refs);
      progress.stop();
      const lines = r.ok
        ? [`verified: ${r.tensors} tensors reproduce post byte for byte`]
        : [
            `MISMATCH: ${r.mismatches.length} tensors differ, ${r.corruptShards.length} delta shards fail their sha256`,
            ...r.mismatches.map((m) => `  ${m.tensor}: ${m.detail}`),
            ...r.corruptShards.map((f) => `  ${f}: sha256 differs from delta.json`),
            ...(r.damage ? [`  ${r.damage}`] : []),
          ];
      print(o, lines.join('\n'), r);
      if (!r.ok) process.exitCode = EXIT.mismatch;
    });
}
