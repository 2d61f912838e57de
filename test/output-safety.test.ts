// Outputs never touch inputs, and clearing or replacing an output touches only what paramdelta
// wrote there: on local folders and on Azurite, through the CLI and the HTTP API. Every case hashes
// every input byte before and after.
import { describe, it, expect, beforeAll, afterAll, vi } from 'vitest';
import { createHash } from 'node:crypto';
import { cp, mkdir, open, readdir, readFile, readlink, symlink, writeFile } from 'node:fs/promises';
import { readlinkSync } from 'node:fs';
import path from 'node:path';
import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import { fixturesDir } from './helpers/fixtures.js';
import { localEnv, withTempDir } from './helpers/models.js';
import { listNames, uploadFolder } from './helpers/blob.js';
import { runCli } from './helpers/cli.js';
import { startAzurite, type Azurite } from '../cli/host/azurite.js';
import { startServe, type ServeHandle } from '../cli/host/serve.js';
import { blobResolver } from '../lib/storage/blob.js';
import { blobOutput, localOutput } from '../lib/storage/output.js';
import { KIND_TAG } from '../lib/storage/types.js';
import { OUTPUT_KINDS } from '../lib/ops/outputs.js';
import { prepareCompute, executeComputeShard } from '../lib/ops/compute.js';
import { planModel } from '../functions/activities/planModel.js';
import { planDelta } from '../functions/activities/planDelta.js';
import { serveApi } from './helpers/serve-api.js';

const BF16 = path.join(fixturesDir, 'tiny-llama-bf16');
const USER_CONTAINERS = ['models', 'deltas', 'base-models', 'posted-models'];
// compute writes the compact layout by default: shards and delta.json, no index.
const DELTA_FILES = ['delta-00001-of-00001.pdelta', 'delta.json', 'tokenizer_config.json'];

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** Every file under `dir` (recursively, hidden ones too) by relative path: its sha256, or where a symlink points. */
async function hashTree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    const p = path.join(e.parentPath, e.name);
    const rel = path.relative(dir, p);
    if (e.isSymbolicLink()) out[rel] = `-> ${await readlink(p)}`;
    else if (e.isFile()) out[rel] = sha(await readFile(p));
  }
  return out;
}

/** Copies the fixture models that act as inputs into a writable folder (links and siblings need one). */
async function localModels(tmp: string): Promise<{ a: string; b: string; c: string; m: string }> {
  const m = path.join(tmp, 'm');
  const dirs = { a: path.join(m, 'a'), b: path.join(m, 'b'), c: path.join(m, 'c'), m };
  await cp(path.join(BF16, 'base'), dirs.a, { recursive: true });
  await cp(path.join(BF16, 'post'), dirs.b, { recursive: true });
  await cp(path.join(BF16, 'newbase'), dirs.c, { recursive: true });
  return dirs;
}

async function expectRefused(r: { code: number; stderr: string }, ...patterns: RegExp[]): Promise<void> {
  expect(r.code, r.stderr).toBe(2);
  expect(r.stderr.trim().split('\n'), r.stderr).toHaveLength(1);
  for (const p of patterns) expect(r.stderr).toMatch(p);
}

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

describe('local folders, through the CLI', () => {
  it('refuses an output that is, lies in or contains an input, seeing through symlinks; every input byte stays', () =>
    withTempDir(async (tmp) => {
      const { a, b, c, m } = await localModels(tmp);
      const link = path.join(tmp, 'link');
      await symlink(a, link);
      // A dangling link into an input: writing through it would create a/new.
      const dangling = path.join(tmp, 'dangling');
      await symlink(path.join(a, 'new'), dangling);
      const d = path.join(tmp, 'd');
      expect((await runCli(['compute', '--base', a, '--post', b, '--out', d])).code).toBe(0);
      const compute = (base: string, out: string) => runCli(['compute', '--base', base, '--post', b, '--out', out, '--force']);
      const cases: [() => Promise<{ code: number; stderr: string }>, RegExp[]][] = [
        [() => compute(a, a), [new RegExp(`--out: ${esc(a)} overlaps the input --base ${esc(a)} \\(it is that folder\\)`)]],
        [() => compute(a, b), [new RegExp(`overlaps the input --post ${esc(b)} \\(it is that folder\\)`)]],
        [() => compute(a, path.join(a, 'delta')), [/overlaps the input --base .* \(it lies inside it\)/]],
        [() => compute(a, m), [new RegExp(`--out: ${esc(m)} overlaps the input --base ${esc(a)} \\(it contains it\\)`)]],
        [() => compute(a, tmp), [/\(it contains it\)/]],
        [() => compute(a, link), [new RegExp(`--out: ${esc(link)} \\(${esc(a)} through symlinks\\) overlaps the input --base ${esc(a)} \\(it is that folder\\)`)]],
        [() => compute(a, path.join(link, 'sub')), [/through symlinks\) overlaps the input --base .* \(it lies inside it\)/]],
        [() => compute(a, dangling), [new RegExp(`--out: ${esc(dangling)} \\(${esc(path.join(a, 'new'))} through symlinks\\) overlaps the input --base ${esc(a)} \\(it lies inside it\\)`)]],
        [() => compute(link, a), [new RegExp(`overlaps the input --base ${esc(link)} \\(${esc(a)} through symlinks\\) \\(it is that folder\\)`)]],
        [() => runCli(['apply', '--base', c, '--delta', d, '--out', d, '--force']), [/overlaps the input --delta .* \(it is that folder\)/]],
        [() => runCli(['apply', '--base', c, '--delta', d, '--out', path.join(c, 'x')]), [/overlaps the input --base .* \(it lies inside it\)/]],
      ];
      const before = await hashTree(tmp);
      for (const [i, [run, patterns]] of cases.entries()) {
        const r = await run();
        await expectRefused(r, ...patterns);
        expect(await hashTree(tmp), `case ${i}`).toEqual(before);
      }
    }));

  it('allows a sibling whose name merely starts with an input\'s (a and ab)', () =>
    withTempDir(async (tmp) => {
      const { a, b } = await localModels(tmp);
      const before = await hashTree(path.join(tmp, 'm'));
      const ab = path.join(tmp, 'm', 'ab');
      expect((await runCli(['compute', '--base', a, '--post', b, '--out', ab])).code).toBe(0);
      expect((await runCli(['verify', '--base', a, '--post', b, '--delta', ab])).code).toBe(0);
      const after = await hashTree(path.join(tmp, 'm'));
      for (const [f, h] of Object.entries(before)) expect(after[f], f).toBe(h);
      expect(Object.keys(after).filter((f) => !(f in before)).sort()).toEqual(DELTA_FILES.map((f) => path.join('ab', f)));
    }));

  it('refuses a folder holding anything paramdelta did not write, even with --force', () =>
    withTempDir(async (tmp) => {
      const { a, b, c } = await localModels(tmp);
      const d = path.join(tmp, 'd');
      expect((await runCli(['compute', '--base', a, '--post', b, '--out', d])).code).toBe(0);
      const sub = path.join(tmp, 'withsub');
      await cp(d, sub, { recursive: true });
      await writeFile(path.join(d, 'notes.txt'), 'mine');
      const hf = path.join(tmp, 'hf');
      await cp(path.join(BF16, 'post'), hf, { recursive: true });
      await mkdir(path.join(sub, 'old'));
      await writeFile(path.join(sub, 'old', 'x.bin'), 'x');
      const single = path.join(tmp, 'file.bin');
      await writeFile(single, 'just a file');
      const before = await hashTree(tmp);
      // A delta with a note in it.
      await expectRefused(await runCli(['compute', '--base', a, '--post', b, '--out', d, '--force']), /holds notes\.txt, which paramdelta does not write into a delta folder/, /even with --force/);
      // A Hugging Face model folder: only names apply writes, but no paramdelta.json.
      await expectRefused(
        await runCli(['apply', '--base', c, '--delta', d, '--out', hf, '--force']),
        /holds config\.json, model-00001-of-00003\.safetensors.* but no paramdelta paramdelta\.json, so it is not a model paramdelta wrote/,
      );
      await expectRefused(await runCli(['compute', '--base', a, '--post', b, '--out', sub, '--force']), /holds old\//);
      await expectRefused(await runCli(['compute', '--base', a, '--post', b, '--out', single, '--force']), /is a file, not a folder/);
      expect(await hashTree(tmp)).toEqual(before);
    }));

  it('replaces an earlier output of the same kind with --force (only its files), never one of the other kind', () =>
    withTempDir(async (tmp) => {
      const { a, b, c } = await localModels(tmp);
      const inputs = await hashTree(path.join(tmp, 'm'));
      const d = path.join(tmp, 'd');
      expect((await runCli(['compute', '--base', a, '--post', b, '--out', d, '--shard-size', '100kB'])).code).toBe(0);
      expect((await readdir(d)).filter((f) => f.startsWith('delta-')).length).toBeGreaterThan(1);
      expect((await runCli(['compute', '--base', a, '--post', b, '--out', d])).stderr).toMatch(/already exists; pass --force/);
      expect((await runCli(['compute', '--base', a, '--post', b, '--out', d, '--force'])).code).toBe(0);
      expect((await readdir(d)).sort()).toEqual(DELTA_FILES);
      expect((await runCli(['verify', '--base', a, '--post', b, '--delta', d])).code).toBe(0);

      const model = path.join(tmp, 'model');
      expect((await runCli(['apply', '--base', c, '--delta', d, '--scale', '1', '--out', model])).code).toBe(0);
      const want = await readFile(path.join(BF16, 'expected/apply-post-1.0/model.safetensors'));
      expect((await readFile(path.join(model, 'model-00001-of-00001.safetensors'))).equals(want)).toBe(true);
      const manifest = JSON.parse(await readFile(path.join(model, 'paramdelta.json'), 'utf8'));
      expect(manifest).toMatchObject({ format: 'paramdelta.model', tool: { name: 'paramdelta' }, base: c, deltas: [{ ref: d, scale: 1 }] });

      const snapshot = await hashTree(tmp);
      await expectRefused(await runCli(['compute', '--base', a, '--post', b, '--out', model, '--force']), /holds config\.json, model-00001-of-00001\.safetensors, model\.safetensors\.index\.json, paramdelta\.json, which paramdelta does not write into a delta folder/);
      const d2 = path.join(tmp, 'd2');
      await cp(d, d2, { recursive: true });
      const snapshot2 = await hashTree(tmp);
      await expectRefused(await runCli(['apply', '--base', c, '--delta', d, '--out', d2, '--force']), /holds delta-00001-of-00001\.pdelta, delta\.json.*which paramdelta does not write into a model folder/);
      expect(await hashTree(tmp)).toEqual(snapshot2);
      expect(Object.fromEntries(Object.entries(snapshot2).filter(([f]) => !f.startsWith('d2')))).toEqual(snapshot);

      expect((await runCli(['apply', '--base', c, '--delta', d, '--scale', '1', '--out', model, '--force'])).code).toBe(0);
      expect((await readFile(path.join(model, 'model-00001-of-00001.safetensors'))).equals(want)).toBe(true);
      // No hidden .old or .partial folder is left next to the outputs.
      expect((await readdir(tmp)).sort()).toEqual(['d', 'd2', 'm', 'model']);
      const after = await hashTree(path.join(tmp, 'm'));
      expect(after).toEqual(inputs);
    }));

  it('reruns after an interrupted run, without --force', () =>
    withTempDir(async (tmp) => {
      const { a, b } = await localModels(tmp);
      const inputs = await hashTree(path.join(tmp, 'm'));
      const d = path.join(tmp, 'd');
      const plan = await prepareCompute(localEnv, a, b, { shardSize: 100_000 });
      const target = await localOutput(d, OUTPUT_KINDS.delta);
      await executeComputeShard(plan, 0, localEnv, target.store);
      // Killed here: neither published nor discarded.
      expect((await readdir(tmp)).filter((f) => f.startsWith('.d.partial-'))).toHaveLength(1);
      expect((await runCli(['compute', '--base', a, '--post', b, '--out', d, '--shard-size', '100kB'])).code).toBe(0);
      expect((await runCli(['verify', '--base', a, '--post', b, '--delta', d])).code).toBe(0);
      expect(await hashTree(path.join(tmp, 'm'))).toEqual(inputs);
    }));

  it('fsyncs each file, then its folder, before the rename that publishes it; the marker after every shard; the parent last', () =>
    withTempDir(async (tmp) => {
      const { a, b } = await localModels(tmp);
      const probe = await open(path.join(a, 'config.json'), 'r');
      const proto = Object.getPrototypeOf(probe) as { sync: () => Promise<void> };
      await probe.close();
      const synced: string[] = [];
      const original = proto.sync;
      const spy = vi.spyOn(proto, 'sync').mockImplementation(function (this: { fd: number }) {
        // What the descriptor names at the moment of the fsync (Linux).
        synced.push(readlinkSync(`/proc/self/fd/${this.fd}`));
        return original.call(this);
      });
      const d = path.join(tmp, 'd');
      try {
        expect((await runCli(['compute', '--base', a, '--post', b, '--out', d, '--shard-size', '100kB'])).code).toBe(0);
      } finally {
        spy.mockRestore();
      }
      const files = (await readdir(d)).sort();
      const shards = files.filter((f) => f.endsWith('.pdelta'));
      expect(shards.length).toBeGreaterThan(1);
      const staging = path.dirname(synced[0]);
      expect(path.basename(staging)).toMatch(/^\.d\.partial-[0-9a-f]{8}$/);
      // Each file under its temporary name, then the staging folder after its rename.
      const at = (name: string) => synced.findIndex((p) => p.startsWith(path.join(staging, `${name}.partial-`)));
      for (const f of files) {
        const i = at(f);
        expect(i, f).toBeGreaterThanOrEqual(0);
        expect(synced[i + 1], f).toBe(staging);
      }
      const marker = at('delta.json');
      for (const s of shards) expect(at(s)).toBeLessThan(marker);
      // The rename of the staging folder into place, then its parent.
      expect(synced.slice(marker + 2)).toEqual([tmp]);
      expect(synced).toHaveLength(2 * files.length + 1);
    }));
});

describe('Azurite, through the CLI (az://) and the HTTP API', () => {
  let azurite: Azurite;
  let serve: ServeHandle;
  let service: BlobServiceClient;
  const cli = (args: string[]) => runCli([...args, '--storage', azurite.connectionString]);

  /** sha256 of blobs already downloaded, by name and ETag (a blob's ETag changes whenever it does). */
  const hashed = new Map<string, string>();

  /** Every blob in the user containers: bytes (sha256) and its paramdelta kind tag. */
  async function blobs(): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    for (const c of USER_CONTAINERS) {
      const container = service.getContainerClient(c);
      for await (const item of container.listBlobsFlat({ includeMetadata: true })) {
        const key = `${c}/${item.name}@${item.properties.etag}`;
        let hash = hashed.get(key);
        if (!hash) {
          const blob = container.getBlobClient(item.name);
          hash = sha(await blob.downloadToBuffer(0, undefined, { conditions: { ifMatch: item.properties.etag } }));
          hashed.set(key, hash);
        }
        out[`${c}/${item.name}`] = `${hash} ${item.metadata?.[KIND_TAG] ?? '-'}`;
      }
    }
    return out;
  }

  const { api, waitFor } = serveApi(() => serve.url);

  function expectKept(before: Record<string, string>, after: Record<string, string>): void {
    for (const [k, v] of Object.entries(before)) expect(after[k], k).toBe(v);
  }



  const models = (): ContainerClient => service.getContainerClient('models');
  const deltas = (): ContainerClient => service.getContainerClient('deltas');

  beforeAll(async () => {
    azurite = await startAzurite();
    service = BlobServiceClient.fromConnectionString(azurite.connectionString);
    for (const c of USER_CONTAINERS) await service.getContainerClient(c).createIfNotExists();
    for (const [name, dir] of [['a', 'base'], ['b', 'post'], ['c', 'newbase'], ['fam/base', 'base']]) {
      await uploadFolder(models(), name, path.join(BF16, dir));
    }
    serve = await startServe({ port: 0, storage: azurite.connectionString, pollMs: 60_000, timerScale: 0.001, log: () => {} });
    expect((await cli(['compute', '--base', 'az://models/a', '--post', 'az://models/b', '--out', 'az://deltas/x'])).code).toBe(0);
  });

  afterAll(async () => {
    await serve?.close();
    await azurite?.stop();
  });

  it('CLI: refuses an output that is, lies in or contains an input, or is a whole container; every blob stays', async () => {
    const compute = (base: string, out: string) => cli(['compute', '--base', base, '--post', 'az://models/b', '--out', out, '--force']);
    const cases: [() => Promise<{ code: number; stderr: string }>, RegExp][] = [
      // The reported defect: this deleted every blob of models/a.
      [() => compute('az://models/a', 'az://models/a'), /--out: az:\/\/models\/a overlaps the input --base az:\/\/models\/a \(it is that folder\)/],
      [() => compute('az://models/a', 'az://models/a/'), /overlaps the input --base az:\/\/models\/a \(it is that folder\)/],
      [() => compute('az://models/a', 'az://models/b'), /overlaps the input --post az:\/\/models\/b \(it is that folder\)/],
      [() => compute('az://models/a', 'az://models/a/delta'), /overlaps the input --base az:\/\/models\/a \(it lies inside it\)/],
      [() => compute('az://models/fam/base', 'az://models/fam'), /--out: az:\/\/models\/fam overlaps the input --base az:\/\/models\/fam\/base \(it contains it\)/],
      [() => compute('az://models/a', 'az://models'), /--out: az:\/\/models is a whole container/],
      [() => compute('az://models/a', 'az://deltas'), /--out: az:\/\/deltas is a whole container/],
      [() => cli(['apply', '--base', 'az://models/c', '--delta', 'az://deltas/x', '--out', 'az://deltas/x', '--force']), /overlaps the input --delta az:\/\/deltas\/x \(it is that folder\)/],
    ];
    const before = await blobs();
    for (const [run, pattern] of cases) {
      await expectRefused(await run(), pattern);
      expect(await blobs()).toEqual(before);
    }
  });

  it('CLI: a sibling prefix (models/a, models/ab) is written; the inputs keep every byte', async () => {
    const before = await blobs();
    expect((await cli(['compute', '--base', 'az://models/a', '--post', 'az://models/b', '--out', 'az://models/ab'])).code).toBe(0);
    expect((await cli(['verify', '--base', 'az://models/a', '--post', 'az://models/b', '--delta', 'az://models/ab'])).code).toBe(0);
    const after = await blobs();
    expectKept(before, after);
    expect(Object.keys(after).filter((k) => !(k in before)).sort()).toEqual(DELTA_FILES.map((f) => `models/ab/${f}`));
    expect(await listNames(models(), 'a')).toEqual(['config.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']);
  });

  it('CLI: refuses a folder holding anything paramdelta did not write, even with --force', async () => {
    const foreign = deltas();
    await foreign.getBlockBlobClient('mixed/notes.txt').upload('mine', 4);
    await foreign.getBlockBlobClient('mixed/delta.json').upload('{}', 2);
    await foreign.getBlockBlobClient('nested/delta.json').upload('{}', 2);
    await foreign.getBlockBlobClient('nested/old/delta.json').upload('{}', 2);
    const before = await blobs();
    await expectRefused(
      await cli(['compute', '--base', 'az://models/a', '--post', 'az://models/b', '--out', 'az://deltas/mixed', '--force']),
      /--out az:\/\/deltas\/mixed: holds notes\.txt, which paramdelta does not write into a delta folder.*even with --force/,
    );
    await expectRefused(await cli(['compute', '--base', 'az://models/a', '--post', 'az://models/b', '--out', 'az://deltas/nested', '--force']), /holds old\//);
    // An uploaded Hugging Face model: only names apply writes, but no tag of paramdelta's.
    await expectRefused(
      await cli(['apply', '--base', 'az://models/c', '--delta', 'az://deltas/x', '--out', 'az://models/fam/base', '--force']),
      /holds config\.json, .* but no paramdelta paramdelta\.json nor paramdelta tags on its blobs/,
    );
    expect(await blobs()).toEqual(before);
  });

  it('CLI: replaces an earlier output of the same kind with --force (removing its files the new plan does not write), never one of the other kind', async () => {
    const args = ['compute', '--base', 'az://models/a', '--post', 'az://models/b', '--out', 'az://deltas/r'];
    expect((await cli([...args, '--shard-size', '100kB'])).code).toBe(0);
    const many = await listNames(deltas(), 'r');
    expect(many.filter((f) => f.startsWith('delta-')).length).toBeGreaterThan(1);
    expect((await cli(args)).stderr).toMatch(/already holds a complete delta\.json; pass --force/);
    const before = await blobs();
    expect((await cli([...args, '--force'])).code).toBe(0);
    expect(await listNames(deltas(), 'r')).toEqual(DELTA_FILES);
    expect((await cli(['verify', '--base', 'az://models/a', '--post', 'az://models/b', '--delta', 'az://deltas/r'])).code).toBe(0);
    const after = await blobs();
    for (const [k, v] of Object.entries(before)) if (!k.startsWith('deltas/r/')) expect(after[k], k).toBe(v);
    // Every blob written carries its kind.
    for (const f of DELTA_FILES) expect(after[`deltas/r/${f}`], f).toMatch(/ delta$/);

    expect((await cli(['apply', '--base', 'az://models/c', '--delta', 'az://deltas/x', '--out', 'az://posted-models/m'])).code).toBe(0);
    const model = await service.getContainerClient('posted-models').getBlobClient('m/model-00001-of-00001.safetensors').downloadToBuffer();
    expect(model.equals(await readFile(path.join(BF16, 'expected/apply-post-1.0/model.safetensors')))).toBe(true);
    const kinds = await blobs();
    for (const f of await listNames(service.getContainerClient('posted-models'), 'm')) expect(kinds[`posted-models/m/${f}`], f).toMatch(/ model$/);
    const snapshot = await blobs();
    await expectRefused(
      await cli(['compute', '--base', 'az://models/a', '--post', 'az://models/b', '--out', 'az://posted-models/m', '--force']),
      /which paramdelta does not write into a delta folder \(it holds a paramdelta model output\)/,
    );
    await expectRefused(
      await cli(['apply', '--base', 'az://models/c', '--delta', 'az://deltas/x', '--out', 'az://deltas/r', '--force']),
      /which paramdelta does not write into a model folder \(it holds a paramdelta delta output\)/,
    );
    expect(await blobs()).toEqual(snapshot);
    expect((await cli(['apply', '--base', 'az://models/c', '--delta', 'az://deltas/x', '--out', 'az://posted-models/m', '--force'])).code).toBe(0);
  });

  it('CLI: reruns after an interrupted run (tagged leftovers, no marker) without --force', async () => {
    const resolve = blobResolver(service, USER_CONTAINERS);
    const env = { resolve };
    const plan = await prepareCompute(env, 'az://models/a', 'az://models/b', { shardSize: 100_000 });
    const store = resolve('az://deltas/cut');
    const target = await blobOutput(store, OUTPUT_KINDS.delta, plan.shards.map((s) => s.file));
    await executeComputeShard(plan, 0, env, target.store);
    // Killed here. What is left is tagged as a delta, with no marker.
    const left = await blobs();
    expect(Object.entries(left).filter(([k]) => k.startsWith('deltas/cut/'))).toEqual([[`deltas/cut/${plan.shards[0].file}`, expect.stringMatching(/ delta$/)]]);
    // Rerun with another shard size: the leftover shard is not one the new plan writes, and goes.
    expect((await cli(['compute', '--base', 'az://models/a', '--post', 'az://models/b', '--out', 'az://deltas/cut'])).code).toBe(0);
    expect(await listNames(deltas(), 'cut')).toEqual(DELTA_FILES);
    expect((await cli(['verify', '--base', 'az://models/a', '--post', 'az://models/b', '--delta', 'az://deltas/cut'])).code).toBe(0);
    expectKept(
      Object.fromEntries(Object.entries(left).filter(([k]) => !k.startsWith('deltas/cut/'))),
      await blobs(),
    );
  });

  it('API: answers 400 naming output (or the delta name) for an output on, in or around an input, or a whole container; nothing is written', async () => {
    const cases: [string, unknown, string, RegExp][] = [
      ['models', { base: 'models/a', deltas: [{ name: 'x' }], output: 'models/a' }, 'output', /^output: models\/a overlaps the input base models\/a \(it is that folder\)/],
      ['models', { base: 'models/a', deltas: [{ name: 'x' }], output: 'models' }, 'output', /^output: models is a whole container/],
      ['models', { base: 'models/a', deltas: [{ name: 'x' }], output: 'models/' }, 'output', /whole container/],
      ['models', { base: 'models/a', deltas: [{ name: 'x' }], output: 'posted-models' }, 'output', /whole container/],
      ['models', { base: 'models/a', deltas: [{ name: 'x' }], output: 'models/a/new' }, 'output', /overlaps the input base models\/a \(it lies inside it\)/],
      ['models', { base: 'models/fam/base', deltas: [{ name: 'x' }], output: 'models/fam' }, 'output', /overlaps the input base models\/fam\/base \(it contains it\)/],
      ['deltas', { name: 'x', base: 'deltas/x', post: 'models/b', replace: true }, 'name', /^name: deltas\/x overlaps the input base deltas\/x \(it is that folder\)/],
      ['deltas', { name: 'y', base: 'models/a', post: 'deltas', replace: true }, 'name', /^name: deltas\/y overlaps the input post deltas \(it lies inside it\)/],
    ];
    const before = await blobs();
    for (const [route, body, field, detail] of cases) {
      const r = await api('POST', route, body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.json.field, JSON.stringify(body)).toBe(field);
      expect(r.json.detail).toMatch(detail);
      expect(await blobs()).toEqual(before);
    }
  });

  it('API: the planning activities refuse an overlap too, whoever started the run', async () => {
    const before = await blobs();
    const m = await planModel({ runId: 'safety-model', base: 'models/a', deltas: [{ ref: 'deltas/x', scale: 1 }], output: 'models/a' });
    expect(m).toEqual({ rejected: expect.stringMatching(/^output: models\/a overlaps the input base models\/a/) });
    const c = await planModel({ runId: 'safety-root', base: 'models/a', deltas: [{ ref: 'deltas/x', scale: 1 }], output: 'models' });
    expect(c).toEqual({ rejected: expect.stringMatching(/whole container/) });
    const d = await planDelta({ runId: 'safety-delta', name: 'x', base: 'models/a', post: 'deltas/x', deltaDtype: 'auto', autoApply: true, output: 'deltas/x' });
    expect(d).toEqual({ rejected: expect.stringMatching(/^output: deltas\/x overlaps the input post deltas\/x/) });
    expect(await blobs()).toEqual(before);
  });

  it('API: a sibling output is written exactly; a folder paramdelta did not write fails the run, untouched', async () => {
    const before = await blobs();
    const ok = await api('POST', 'models', { base: 'models/c', deltas: [{ name: 'x' }], output: 'models/cc' });
    expect(ok.status).toBe(202);
    expect((await waitFor(ok.json.id)).status).toBe('Completed');
    const got = await models().getBlobClient('cc/model-00001-of-00001.safetensors').downloadToBuffer();
    expect(got.equals(await readFile(path.join(BF16, 'expected/apply-post-1.0/model.safetensors')))).toBe(true);
    const manifest = JSON.parse((await models().getBlobClient('cc/paramdelta.json').downloadToBuffer()).toString('utf8'));
    expect(manifest).toMatchObject({ format: 'paramdelta.model', base: 'az://models/c', deltas: [{ ref: 'az://deltas/x', scale: 1 }] });
    expectKept(before, await blobs());

    const snapshot = await blobs();
    const bad = await api('POST', 'models', { base: 'models/c', deltas: [{ name: 'x' }], output: 'models/b' });
    expect(bad.status).toBe(202);
    const run = await waitFor(bad.json.id);
    expect(run.status).toBe('Failed');
    expect(run.error).toMatch(/output models\/b: holds config\.json, .* but no paramdelta paramdelta\.json nor paramdelta tags/);
    expect(await blobs()).toEqual(snapshot);
  });
});
