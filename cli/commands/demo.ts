import type { Command } from 'commander';
import path from 'node:path';
import { rm } from 'node:fs/promises';
import { writeSyntheticFamily } from '../../lib/synth/family.js';
import { formatBytes, parseSize } from '../../lib/ops/sizes.js';

/** `run` is the CLI's own entry point, passed in so this command does not import it back. */
export function registerDemo(program: Command, run: (argv: string[]) => Promise<number>): void {
  program
    .command('demo')
    .description('generate a small BF16 model family, then compute, verify and apply its delta (the main job on local defaults)')
    .option('--dir <dir>', 'working folder', 'demo-out')
    .option('--size <size>', 'size of each generated model', '64MiB')
    .action(async (o) => {
      const dir = path.resolve(o.dir);
      await rm(dir, { recursive: true, force: true });
      const fam = await writeSyntheticFamily(path.join(dir, 'family'), { dtype: 'BF16', bytes: parseSize(o.size, '--size'), shards: 2 });
      const say = (s: string) => process.stdout.write(s + '\n');
      say(`generated base, post and newbase (${formatBytes(fam.bytes)} each) under ${path.join(dir, 'family')}`);
      const steps: string[][] = [
        ['compute', '--base', fam.base, '--post', fam.post, '--out', path.join(dir, 'delta')],
        ['verify', '--base', fam.base, '--post', fam.post, '--delta', path.join(dir, 'delta')],
        ['apply', '--base', fam.newbase, '--delta', path.join(dir, 'delta'), '--out', path.join(dir, 'reposted')],
      ];
      for (const args of steps) {
        say(`\n$ paramdelta ${args.map((a) => (a.startsWith(dir) ? path.relative(process.cwd(), a) : a)).join(' ')}`);
        const t0 = performance.now();
        const code = await run(args);
        if (code !== 0) throw new Error(`demo step "${args[0]}" failed with exit code ${code}`);
        say(`(${((performance.now() - t0) / 1000).toFixed(2)} s)`);
      }
    });
}
