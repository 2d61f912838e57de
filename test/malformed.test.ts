import { describe, it, expect, beforeAll, afterAll, afterEach, vi } from 'vitest';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { chmod, cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { fixturesDir } from './helpers/fixtures.js';
import { runCli } from './helpers/cli.js';

const BF16 = path.join(fixturesDir, 'tiny-llama-bf16');
let tmp: string;
let goodDelta: string;

/** A writable copy of a folder. */
async function copy(from: string, to: string): Promise<string> {
  await cp(from, to, { recursive: true });
  await chmod(to, 0o755);
  for (const f of await readdir(to)) await chmod(path.join(to, f), 0o644);
  return to;
}

/** Every file of a folder, by name, with the sha256 of its bytes. */
async function contents(dir: string): Promise<[string, string][]> {
  const out: [string, string][] = [];
  for (const f of (await readdir(dir)).sort()) out.push([f, createHash('sha256').update(await readFile(path.join(dir, f))).digest('hex')]);
  return out;
}

const editJson = (edit: (j: any) => unknown) => (text: string) => JSON.stringify(edit(JSON.parse(text)));

beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'paramdelta-malformed-'));
  goodDelta = path.join(tmp, 'good-delta');
  // The plain layout: these cases edit its index and shards (compact shards have their own damage tests).
  const r = await runCli(['compute', '--base', `${BF16}/base`, '--post', `${BF16}/post`, '--out', goodDelta, '--delta-format', 'safetensors']);
  expect(r.code).toBe(0);
  vi.restoreAllMocks();
});
afterAll(() => rm(tmp, { recursive: true, force: true }));
afterEach(() => vi.restoreAllMocks());

interface Case {
  label: string;
  /** The fixture folder (or the good delta) that gets the bad file. */
  from: 'base' | 'newbase' | 'delta';
  file: string;
  /** New content, from the old; null deletes the file. */
  edit: ((text: string) => string) | null;
  /** Commands to run, with `{bad}` for the damaged folder and `{out}` for an output that must not appear. */
  commands: string[][];
  error: RegExp;
}

const CASES: Case[] = [
  // model.safetensors.index.json
  { label: 'index not JSON', from: 'base', file: 'model.safetensors.index.json', edit: () => '{"weight_map": ', commands: ['compute', 'verify-base', 'inspect'].map(cmd), error: /model\.safetensors\.index\.json: not valid JSON/ },
  { label: 'index an array', from: 'base', file: 'model.safetensors.index.json', edit: () => '[]', commands: ['compute', 'inspect'].map(cmd), error: /model\.safetensors\.index\.json: must be a JSON object with "weight_map"/ },
  { label: 'index without weight_map', from: 'base', file: 'model.safetensors.index.json', edit: editJson((j) => ({ metadata: j.metadata })), commands: ['compute', 'inspect'].map(cmd), error: /model\.safetensors\.index\.json: field "weight_map" must be an object/ },
  {
    label: 'index maps to a number', from: 'base', file: 'model.safetensors.index.json', edit: editJson((j) => ({ ...j, weight_map: { ...j.weight_map, 'model.norm.weight': 5 } })),
    commands: ['compute'].map(cmd), error: /model\.safetensors\.index\.json: weight_map\["model\.norm\.weight"\] must name a \.safetensors file in the same folder/,
  },
  {
    label: 'index leaves the folder', from: 'base', file: 'model.safetensors.index.json', edit: editJson((j) => ({ ...j, weight_map: { ...j.weight_map, 'model.norm.weight': '../post/model-00003-of-00003.safetensors' } })),
    commands: ['compute'].map(cmd), error: /weight_map\["model\.norm\.weight"\] must name a \.safetensors file in the same folder/,
  },
  {
    label: 'index names a missing shard', from: 'newbase', file: 'model.safetensors.index.json', edit: editJson((j) => ({ ...j, weight_map: { ...j.weight_map, 'model.norm.weight': 'model-00009-of-00009.safetensors' } })),
    commands: ['apply', 'inspect'].map(cmd), error: /model\.safetensors\.index\.json: names shard files that are missing: model-00009-of-00009\.safetensors/,
  },
  {
    label: 'index maps a tensor to another shard', from: 'base', file: 'model.safetensors.index.json', edit: editJson((j) => ({ ...j, weight_map: { ...j.weight_map, 'model.norm.weight': 'model-00001-of-00002.safetensors' } })),
    commands: ['compute', 'verify-base'].map(cmd), error: /tensor "model\.norm\.weight" is in model-00002-of-00002\.safetensors but the index maps it to model-00001-of-00002\.safetensors/,
  },
  {
    label: 'index omits a tensor', from: 'base', file: 'model.safetensors.index.json', edit: editJson((j) => { delete j.weight_map['model.norm.weight']; return j; }),
    commands: ['compute'].map(cmd), error: /tensor "model\.norm\.weight" is in model-00002-of-00002\.safetensors but the index does not list it/,
  },
  {
    label: 'index lists a tensor no shard has', from: 'base', file: 'model.safetensors.index.json', edit: editJson((j) => ({ ...j, weight_map: { ...j.weight_map, ghost: 'model-00001-of-00002.safetensors' } })),
    commands: ['compute'].map(cmd), error: /model\.safetensors\.index\.json: maps tensor "ghost" to model-00001-of-00002\.safetensors, whose header does not have it/,
  },
  // config.json
  { label: 'config not JSON', from: 'base', file: 'config.json', edit: (t) => t.slice(0, -3), commands: ['compute', 'inspect'].map(cmd), error: /config\.json: not valid JSON/ },
  { label: 'config a string', from: 'base', file: 'config.json', edit: () => '"llama"', commands: ['compute', 'inspect'].map(cmd), error: /config\.json: must be a JSON object/ },
  { label: 'config an array', from: 'newbase', file: 'config.json', edit: () => '[1, 2]', commands: ['apply', 'inspect'].map(cmd), error: /config\.json: must be a JSON object/ },
  // delta.json
  { label: 'delta.json not JSON', from: 'delta', file: 'delta.json', edit: (t) => t.slice(0, 100), commands: ['apply-delta', 'verify-delta', 'inspect'].map(cmd), error: /delta\.json: not valid JSON/ },
  { label: 'delta.json without tensors', from: 'delta', file: 'delta.json', edit: editJson((j) => { delete j.tensors; return j; }), commands: ['apply-delta', 'verify-delta', 'inspect'].map(cmd), error: /delta\.json: field "tensors": / },
  { label: 'delta.json of another format', from: 'delta', file: 'delta.json', edit: editJson((j) => ({ ...j, format: 'other' })), commands: ['apply-delta'].map(cmd), error: /delta\.json: field "format": / },
  {
    label: 'delta.json with an integer delta dtype', from: 'delta', file: 'delta.json', edit: editJson((j) => { j.tensors['model.norm.weight'].dtype = 'I8'; return j; }),
    commands: ['apply-delta', 'inspect'].map(cmd), error: /delta\.json: field "tensors\.model\.norm\.weight\.dtype": /,
  },
  { label: 'delta.json with a bad sha256', from: 'delta', file: 'delta.json', edit: editJson((j) => { j.shards[0].sha256 = 'xyz'; return j; }), commands: ['verify-delta'].map(cmd), error: /delta\.json: field "shards\.0\.sha256": / },
  {
    label: 'delta.json lists a tensor the shards lack', from: 'delta', file: 'delta.json', edit: editJson((j) => { j.tensors.ghost = j.tensors['model.norm.weight']; return j; }),
    commands: ['apply-delta', 'verify-delta'].map(cmd), error: /delta\.json lists tensors the shards lack: ghost/,
  },
  {
    label: 'delta.json disagrees with a shard', from: 'delta', file: 'delta.json', edit: editJson((j) => { j.tensors['model.norm.weight'].dtype = j.tensors['model.norm.weight'].dtype === 'F64' ? 'F32' : 'F64'; return j; }),
    commands: ['apply-delta', 'inspect'].map(cmd), error: /tensor "model\.norm\.weight" in delta-00001-of-\d+\.safetensors does not match delta\.json/,
  },
  { label: 'delta index not JSON', from: 'delta', file: 'delta.safetensors.index.json', edit: () => '{', commands: ['apply-delta', 'verify-delta', 'inspect'].map(cmd), error: /delta\.safetensors\.index\.json: not valid JSON/ },
  { label: 'delta without its shards', from: 'delta', file: 'delta-00001-of-00001.safetensors', edit: null, commands: ['apply-delta', 'inspect'].map(cmd), error: /delta\.safetensors\.index\.json: names shard files that are missing: delta-00001-of-00001\.safetensors/ },
];

/** The command line for each use of the damaged folder. */
function cmd(kind: string): string[] {
  switch (kind) {
    case 'compute':
      return ['compute', '--base', '{bad}', '--post', `${BF16}/post`, '--out', '{out}'];
    case 'apply':
      return ['apply', '--base', '{bad}', '--delta', '{delta}', '--out', '{out}'];
    case 'apply-delta':
      return ['apply', '--base', `${BF16}/newbase`, '--delta', '{bad}', '--out', '{out}'];
    case 'verify-base':
      return ['verify', '--base', '{bad}', '--post', `${BF16}/post`, '--delta', '{delta}'];
    case 'verify-delta':
      return ['verify', '--base', `${BF16}/base`, '--post', `${BF16}/post`, '--delta', '{bad}'];
    case 'inspect':
      return ['inspect', '{bad}'];
    default:
      throw new Error(kind);
  }
}

async function expectRefused(args: string[], error: RegExp, bad: string, label: string): Promise<void> {
  const out = path.join(tmp, 'out');
  const argv = args.map((a) => a.replace('{bad}', bad).replace('{out}', out).replace('{delta}', goodDelta));
  const before = await contents(bad);
  const what = `${label}: paramdelta ${args.join(' ')}`;
  const r = await runCli(argv);
  expect(r.code, `${what}\n${r.stderr}`).toBe(2);
  expect(r.stderr, what).toMatch(error);
  expect(r.stderr, what).toMatch(/^paramdelta: error: /);
  expect(r.stderr, what).toContain(bad);
  expect(r.stderr.trim().split('\n'), what).toHaveLength(1);
  expect(r.stdout, what).toBe('');
  // Nothing written: no output folder, no staging folder beside it, and the input as it was.
  expect((await readdir(tmp)).filter((f) => f === 'out' || f.startsWith('.out.')), what).toEqual([]);
  expect(await contents(bad), what).toEqual(before);
}

describe('malformed inputs: exit 2, one line naming the file and field, and no output', () => {
  for (const c of CASES) {
    it(c.label, async () => {
      const bad = await copy(c.from === 'delta' ? goodDelta : path.join(BF16, c.from), path.join(tmp, c.label.replace(/\W+/g, '-')));
      const file = path.join(bad, c.file);
      if (c.edit) await writeFile(file, c.edit(await readFile(file, 'utf8')));
      else await rm(file);
      for (const args of c.commands) await expectRefused(args, c.error, bad, c.label);
    });
  }

  it('a damaged shard, given to apply, verify and inspect (the folder or the file)', async () => {
    const bad = await copy(path.join(BF16, 'newbase'), path.join(tmp, 'cut-shard'));
    const shard = path.join(bad, 'model-00003-of-00003.safetensors');
    const bytes = await readFile(shard);
    await writeFile(shard, bytes.subarray(0, bytes.length - 2));
    const rule = /model-00003-of-00003\.safetensors: tensors end at byte \d+ of the file, but the file is \d+ bytes \[rule: file-length\]/;
    await expectRefused(cmd('apply'), rule, bad, 'cut shard');
    await expectRefused(['verify', '--base', `${BF16}/base`, '--post', '{bad}', '--delta', '{delta}'], rule, bad, 'cut shard');
    await expectRefused(cmd('inspect'), rule, bad, 'cut shard');
    await expectRefused(['inspect', shard], rule, bad, 'cut shard');
    await expectRefused(['inspect', path.join(bad, 'no-such.safetensors')], /no-such\.safetensors/, bad, 'missing file');
  });
});
