import type { Command } from 'commander';
import path from 'node:path';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { InputError } from '../../lib/errors.js';
import { writeSyntheticFamily } from '../../lib/synth/family.js';
import { formatBytes, parseSize } from '../../lib/ops/sizes.js';
import { EXIT } from '../common.js';

/** The demo's mark on its folder: only a folder carrying it (or new, or empty) is written into. */
const DEMO_TAG = '.paramdelta-demo.json';
const DEMO_FORMAT = 'paramdelta.demo';
/** The names a demo folder holds: the generated family, the outputs of both walk-throughs, serve's log. */
const DEMO_ENTRIES = ['family', 'delta', 'reposted', 'posted', 'expected', 'serve.log', DEMO_TAG];
/** What the demo wrote before it tagged its folder (a folder holding only these is adopted). */
const UNTAGGED_ENTRIES = ['family', 'delta', 'reposted'];
const FAMILY_ENTRIES = ['base', 'post', 'newbase'];
/** What an interrupted compute or apply leaves beside its output (lib/storage/output.ts): the demo's own. */
const LEFTOVER = /^\.(delta|reposted|expected)\.(partial|old)-[0-9a-f]{8}$/;

async function entries(dir: string): Promise<string[] | null> {
  return readdir(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw e;
  });
}

async function isTagged(dir: string): Promise<boolean> {
  try {
    return (JSON.parse(await readFile(path.join(dir, DEMO_TAG), 'utf8')) as { format?: unknown }).format === DEMO_FORMAT;
  } catch {
    return false;
  }
}

/**
 * Makes sure `dir` is the demo's own folder: new, empty, or tagged by an earlier demo (or holding
 * only what the untagged demo of earlier versions wrote) and holding nothing else; then tags it.
 * Anything else is refused, so the demo never writes into or deletes what it did not create.
 */
async function claimDemoDir(dir: string, given: string): Promise<void> {
  const found = await entries(dir);
  if (found && found.length) {
    const tagged = await isTagged(dir);
    const known = tagged ? DEMO_ENTRIES : UNTAGGED_ENTRIES;
    const foreign = [
      ...found.filter((e) => !known.includes(e) && !(tagged && LEFTOVER.test(e))),
      ...((await entries(path.join(dir, 'family'))) ?? []).filter((e) => !FAMILY_ENTRIES.includes(e)).map((e) => `family/${e}`),
    ];
    if (foreign.length) {
      throw new InputError(`--dir ${given}: holds ${foreign.slice(0, 5).join(', ')}, which the demo did not write; choose another folder`);
    }
  }
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, DEMO_TAG), JSON.stringify({ format: DEMO_FORMAT, note: 'written by paramdelta demo; it rewrites this folder' }, null, 2) + '\n');
}

/** The CLI-only walk-through: compute, verify and apply on a generated family. */
async function cliWalkThrough(dir: string, bytes: number, run: (argv: string[]) => Promise<number>): Promise<void> {
  await rm(path.join(dir, 'family'), { recursive: true, force: true });
  const fam = await writeSyntheticFamily(path.join(dir, 'family'), { dtype: 'BF16', bytes, shards: 2 });
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
}

/** `run` is the CLI's own entry point, passed in so this command does not import it back. */
export function registerDemo(program: Command, run: (argv: string[]) => Promise<number>): void {
  program
    .command('demo')
    .description(
      'the pipeline end to end on this machine: serve with its own Azurite, a generated model family, a delta registered over HTTP, ' +
        'a new base uploaded into base-models, the automatic re-post, and the posted model checked byte for byte against a local apply ' +
        '(--cli: the CLI-only walk-through instead)',
    )
    .option('--cli', 'the CLI-only walk-through: compute, verify and apply, no pipeline')
    .option('--dir <dir>', 'working folder (the demo writes only into a folder it made)', 'demo-out')
    .option('--size <size>', 'size of each generated model (default 32MiB; 64MiB with --cli)')
    .option('--keep', 'leave serve and Azurite running after the check, until Ctrl-C')
    .option('--port <port>', "serve's port on 127.0.0.1 (default 7071 when free, else a free one)")
    .option('--azurite-ports <ports>', 'standard (10000-10002 when free, else free ones), free, or BLOB,QUEUE,TABLE', 'standard')
    .action(async (o) => {
      const dir = path.resolve(o.dir);
      const bytes = parseSize(o.size ?? (o.cli ? '64MiB' : '32MiB'), '--size');
      if (o.cli && (o.keep || o.port !== undefined)) throw new InputError('--keep and --port belong to the pipeline demo, not --cli');
      const port = o.port === undefined ? 'auto' : Number(o.port);
      if (port !== 'auto' && (!Number.isInteger(port) || port < 0 || port > 65535)) throw new InputError(`--port: "${o.port}" is not a port`);
      const { parseAzuritePorts } = await import('../host/azurite.js');
      const azuritePorts = parseAzuritePorts(o.azuritePorts);
      await claimDemoDir(dir, o.dir);
      if (o.cli) return cliWalkThrough(dir, bytes, run);
      const { runPipelineDemo } = await import('../host/demo.js');
      const say = (s: string) => process.stdout.write(s + '\n');
      const r = await runPipelineDemo({ dir, bytes, port, azuritePorts, keep: !!o.keep, run, say });
      // Ctrl-C before the end: 130, as shells report an interrupted command.
      if (r.interrupted) process.exitCode = 130;
      else if (!r.same) process.exitCode = EXIT.mismatch;
    });
}
