import type { Command } from 'commander';
import { InputError } from '../../lib/errors.js';
import { isBlobRef } from '../../lib/storage/refs.js';
import { planTransfer, prepareDestination, transfer } from '../../lib/storage/transfer.js';
import { assertCliOutputApart } from '../../lib/storage/overlap.js';
import { formatBytes } from '../../lib/ops/sizes.js';
import { cliResolver } from '../storage.js';
import { Progress } from '../progress.js';
import { print, storageOption, type Common } from '../common.js';

async function run(fromRef: string, toRef: string, o: Common & { force?: boolean }, verb: 'uploaded' | 'downloaded'): Promise<void> {
  const [fromLabel, toLabel] = verb === 'uploaded' ? ['<dir>', '<ref>'] : ['<ref>', '<dir>'];
  // The same rule as every output: not onto, into or around the source, and never a container root.
  await assertCliOutputApart({ label: toLabel, ref: toRef }, [{ label: fromLabel, ref: fromRef }]);
  const resolve = cliResolver(o);
  const from = resolve(fromRef);
  const to = resolve(toRef);
  const plan = await planTransfer(from, to);
  await prepareDestination(plan, to, { force: o.force, label: `${toLabel} ${toRef}` });
  const progress = new Progress(process.stderr.isTTY && !o.json);
  progress.start(verb === 'uploaded' ? 'upload' : 'download', plan.bytes);
  try {
    const r = await transfer(plan, from, to, { force: o.force, onProgress: (b) => progress.add(b) });
    progress.stop();
    const text = `${verb} ${fromRef} -> ${toRef}: ${r.sent.length} file(s), ${formatBytes(r.bytes)} sent` +
      (r.skipped.length ? `; ${r.skipped.length} already there with the same size and MD5: ${r.skipped.join(', ')}` : '') +
      `; ${plan.marker} last`;
    print(o, text, { ok: true, from: fromRef, to: toRef, ...r, marker: plan.marker });
  } finally {
    progress.stop();
  }
}

export function registerTransfer(program: Command): void {
  program
    .command('upload')
    .description('send a checkpoint or delta folder to blob storage, completion marker last (skips files already there)')
    .argument('<dir>', 'a local checkpoint or delta folder')
    .argument('<ref>', 'az://container/prefix')
    .option('--force', 'send every file, even those already there with the same size and MD5, and into a prefix holding other files')
    .option('--json', 'print a machine-readable result')
    .addOption(storageOption())
    .action(async (dir: string, ref: string, o) => {
      if (isBlobRef(dir)) throw new InputError(`upload: ${dir} is a blob reference; give a local folder first`);
      if (!isBlobRef(ref)) throw new InputError(`upload: ${ref} is not an az://container/prefix reference`);
      await run(dir, ref, o, 'uploaded');
    });
  program
    .command('download')
    .description('fetch a checkpoint or delta folder from blob storage, completion marker last (skips files already here)')
    .argument('<ref>', 'az://container/prefix')
    .argument('<dir>', 'a local folder')
    .option('--force', 'fetch every file, even those already here with the same size and MD5, and into a folder that is not an earlier download of it')
    .option('--json', 'print a machine-readable result')
    .addOption(storageOption())
    .action(async (ref: string, dir: string, o) => {
      if (!isBlobRef(ref)) throw new InputError(`download: ${ref} is not an az://container/prefix reference`);
      if (isBlobRef(dir)) throw new InputError(`download: ${dir} is a blob reference; give a local folder last`);
      await run(ref, dir, o, 'downloaded');
    });
}
