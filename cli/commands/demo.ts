import type { Command } from 'commander';
import path from 'node:path';
import { readdir, rm } from 'node:fs/promises';
import { InputError } from '../../lib/errors.js';
import { writeSyntheticFamily } from '../../lib/synth/family.js';
import { formatBytes, parseSize } from '../../lib/ops/sizes.js';

/** The names a demo folder holds: its generated family, and the outputs compute and apply replace (--force) themselves. */
const DEMO_ENTRIES = ['family', 'delta', 'reposted'];
const FAMILY_ENTRIES = ['base', 'post', 'newbase'];

async function entries(dir: string): Promise<string[] | null> {
  return readdir(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw e;
  });
}

/** Deletes an earlier demo's generated family, and refuses a folder that holds anything the demo did not write. */
async function clearDemoDir(dir: string, given: string): Promise<void> {
  const family = path.join(dir, 'family');
  const foreign = [
    ...((await entries(dir)) ?? []).filter((e) => !DEMO_ENTRIES.includes(e)),
    ...((await entries(family)) ?? []).filter((e) => !FAMILY_ENTRIES.includes(e)).map((e) => `family/${e}`),
  ];
  if (foreign.length) {
    throw new InputError(`--dir ${given}: holds ${foreign.slice(0, 5).join(', ')}, which the demo did not write; choose another folder`);
  }
  await rm(family, { recursive: true, force: true });
}

/** `run` is the CLI's own entry point, passed in so this command does not import it back. */
export function registerDemo(program: Command, run: (argv: string[]) => Promise<number>): void {
  program
    .command('demo')
    .description('generate a small BF16 model family, then compute, verify and apply its delta (the main job on local defaults)')
    .option('--dir <dir>', 'working folder', 'demo-out')
    .option('--size <size>', 'size of each generated model', '64MiB')
    .action(async (o) => {
      const dir = path.resolve(o.dir);
      await clearDemoDir(dir, o.dir);
      const fam = await writeSyntheticFamily(path.join(dir, 'family'), { dtype: 'BF16', bytes: parseSize(o.size, '--size'), shards: 2 });
      const say = (s: string) => process.stdout.write(s + '\n');
      say(`generated base, post and newbase (${formatBytes(fam.bytes)} each) under ${path.join(dir, 'family')}`);
      const steps: string[][] = [
        ['compute', '--base', fam.base, '--post', fam.post, '--out', path.join(dir, 'delta'), '--force'],
        ['verify', '--base', fam.base, '--post', fam.post, '--delta', path.join(dir, 'delta')],
        ['apply', '--base', fam.newbase, '--delta', path.join(dir, 'delta'), '--out', path.join(dir, 'reposted'), '--force'],
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
