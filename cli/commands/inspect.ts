import type { Command } from 'commander';
import { inspect } from '../../lib/ops/inspect.js';
import { cliResolver } from '../storage.js';
import { printInspect } from '../print.js';
import { print, storageOption } from '../common.js';

export function registerInspect(program: Command): void {
  program
    .command('inspect')
    .description('show tensors, dtypes, parameter count and sizes of a checkpoint, shard or delta')
    .argument('<path>', 'a checkpoint folder, a .safetensors, .pdelta or PyTorch (.bin, .pt, .pth) file, or a delta folder')
    .option('--json', 'print a machine-readable result')
    .addOption(storageOption())
    .action(async (p: string, o) => {
      const r = await inspect(p, cliResolver(o));
      if (o.json) print(o, '', r);
      else printInspect(r);
    });
}
