import { describe, it, expect } from 'vitest';
import path from 'node:path';
import { copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { fixturesDir } from './helpers/fixtures.js';
import { loadDelta, loadTensors, localEnv, withTempDir, type LoadedTensor } from './helpers/models.js';
import { runCli } from './helpers/cli.js';
import { torchSave, type TorchSaveOptions, type TorchTensorSpec } from './helpers/torch.js';
import { runCompute, runApply } from '../lib/ops/run.js';
import { verify } from '../lib/ops/verify.js';
import { inspect } from '../lib/ops/inspect.js';
import { localOutput } from '../lib/storage/output.js';
import { LocalStore } from '../lib/storage/local.js';
import { DEFAULT_SHARD_SIZE } from '../lib/ops/plan.js';
import { DELTA_LAYOUT } from '../lib/ops/manifest.js';
import { encodeHeader } from '../lib/format/safetensors.js';
import { openCheckpoint, checkpointCompleteness } from '../lib/format/checkpoint.js';

const dataDir = fileURLToPath(new URL('./data/torch/', import.meta.url));
const fam = (...p: string[]) => path.join(fixturesDir, ...p);
const NON_WEIGHTS = (f: string) => !f.endsWith('.safetensors') && f !== 'model.safetensors.index.json';

/** A folder with a checkpoint's non-weight files (config, tokenizer) and the given weight files. */
async function folder(dir: string, from: string, weights: Record<string, Uint8Array | string>): Promise<string> {
  await mkdir(dir, { recursive: true });
  for (const f of (await readdir(from)).filter(NON_WEIGHTS)) await copyFile(path.join(from, f), path.join(dir, f));
  for (const [f, w] of Object.entries(weights)) {
    if (typeof w === 'string') await copyFile(w, path.join(dir, f));
    else await writeFile(path.join(dir, f), w);
  }
  return dir;
}

/** Every file of two output folders, byte for byte; delta.json without its timestamp. */
async function expectSameFolders(got: string, want: string) {
  const files = (await readdir(want)).sort();
  expect((await readdir(got)).sort()).toEqual(files);
  for (const f of files) {
    let [a, b] = [await readFile(path.join(got, f)), await readFile(path.join(want, f))];
    if (f === 'delta.json') {
      const strip = (x: Buffer) => Buffer.from(JSON.stringify({ ...JSON.parse(x.toString()), createdAt: null }));
      [a, b] = [strip(a), strip(b)];
    }
    if (f === 'paramdelta.json') {
      // The model manifest names its inputs, which are the twins' own folders: compare the rest.
      const strip = (x: Buffer) => {
        const m = JSON.parse(x.toString());
        return Buffer.from(JSON.stringify({ ...m, createdAt: null, base: null, deltas: m.deltas.map((d: { scale: number }) => d.scale) }));
      };
      [a, b] = [strip(a), strip(b)];
    }
    expect(a.equals(b), `${f} differs`).toBe(true);
  }
}

const compute = (base: string, post: string, out: string) => runCompute(localEnv, { base, post, shardSize: DEFAULT_SHARD_SIZE }, () => localOutput(out));
const apply = (base: string, deltas: string[], out: string) =>
  runApply(localEnv, { base, deltas: deltas.map((ref) => ({ ref })), shardSize: DEFAULT_SHARD_SIZE }, () => localOutput(out));

/** A float tensor's values, widened exactly to float64. */
function floats(t: LoadedTensor): number[] {
  const copy = t.bytes.buffer.slice(t.bytes.byteOffset, t.bytes.byteOffset + t.bytes.length);
  if (t.dtype === 'F64') return [...new Float64Array(copy)];
  if (t.dtype === 'F32') return [...new Float32Array(copy)];
  throw new Error(`unexpected dtype ${t.dtype}`);
}

/** The .bin twin of a safetensors checkpoint, written by the test in torch.save's layout. */
async function torchTwin(dir: string, from: string, opts: TorchSaveOptions & { tie?: boolean } = {}): Promise<string> {
  const ckpt = await openCheckpoint(new LocalStore(from));
  const specs: TorchTensorSpec[] = [];
  for (const [name, t] of await loadTensors(from)) specs.push({ name, dtype: t.dtype, shape: t.shape, bytes: t.bytes });
  expect(specs.map((s) => s.name)).toEqual(ckpt.tensors.map((t) => t.name));
  if (opts.tie) specs.push({ name: 'lm_head.weight', dtype: specs[0].dtype, shape: specs[0].shape, share: 'model.embed_tokens.weight' });
  return folder(dir, from, { 'pytorch_model.bin': torchSave(specs, opts) });
}

/** A single-file safetensors copy with `lm_head.weight` written out as a copy of the embedding (what a tied .bin holds). */
async function untiedCopy(dir: string, from: string): Promise<string> {
  const tensors = [...(await loadTensors(from))].map(([name, t]) => ({ name, ...t }));
  const emb = tensors.find((t) => t.name === 'model.embed_tokens.weight')!;
  tensors.push({ ...emb, name: 'lm_head.weight' });
  const prefix = encodeHeader(tensors as never, { format: 'pt' }).bytes;
  return folder(dir, from, { 'model.safetensors': Buffer.concat([prefix, ...tensors.map((t) => t.bytes)]) });
}

describe('PyTorch checkpoints give byte-identical results to their safetensors twins', () => {
  it('real torch files: compute (sharded .bin base, state_dict .bin post), apply onto a .pt newbase, and verify', () =>
    withTempDir(async (tmp) => {
      const base = await folder(path.join(tmp, 'base'), fam('tiny-llama-bf16', 'base'), {
        'pytorch_model.bin.index.json': path.join(dataDir, 'tiny-llama-bf16/base/pytorch_model.bin.index.json'),
        'pytorch_model-00001-of-00002.bin': path.join(dataDir, 'tiny-llama-bf16/base/pytorch_model-00001-of-00002.bin'),
        'pytorch_model-00002-of-00002.bin': path.join(dataDir, 'tiny-llama-bf16/base/pytorch_model-00002-of-00002.bin'),
      });
      const post = await folder(path.join(tmp, 'post'), fam('tiny-llama-bf16', 'post'), {
        'pytorch_model.bin': path.join(dataDir, 'tiny-llama-bf16/post/pytorch_model.bin'),
      });
      const newbase = await folder(path.join(tmp, 'newbase'), fam('tiny-llama-bf16', 'newbase'), {
        'model.pt': path.join(dataDir, 'tiny-llama-bf16/newbase/model.pt'),
      });

      await compute(base, post, path.join(tmp, 'd-bin'));
      await compute(fam('tiny-llama-bf16', 'base'), fam('tiny-llama-bf16', 'post'), path.join(tmp, 'd-st'));
      await expectSameFolders(path.join(tmp, 'd-bin'), path.join(tmp, 'd-st'));
      // And it is the reference delta, by value.
      const got = await loadDelta(path.join(tmp, 'd-bin'));
      for (const [n, t] of await loadTensors(fam('tiny-llama-bf16', 'expected/delta-post'))) expect(got.get(n)!.bytes.equals(t.bytes), n).toBe(true);

      await apply(newbase, [path.join(tmp, 'd-bin')], path.join(tmp, 'a-bin'));
      await apply(fam('tiny-llama-bf16', 'newbase'), [path.join(tmp, 'd-st')], path.join(tmp, 'a-st'));
      await expectSameFolders(path.join(tmp, 'a-bin'), path.join(tmp, 'a-st'));
      const out = await readFile(path.join(tmp, 'a-bin', 'model-00001-of-00001.safetensors'));
      expect(out.equals(await readFile(fam('tiny-llama-bf16', 'expected/apply-post-1.0/model.safetensors')))).toBe(true);

      const v = await verify(localEnv, base, post, path.join(tmp, 'd-bin'));
      expect({ ok: v.ok, mismatches: v.mismatches, tensors: v.tensors }).toEqual({ ok: true, mismatches: [], tensors: 21 });
    }));

  for (const [family, opts] of [
    ['tiny-llama-f16', { zip64: true }],
    ['tiny-llama-f32', { archive: 'pytorch_model', current: false, ordered: false }],
  ] as const) {
    it(`test-written twins of ${family} (${JSON.stringify(opts)}): compute and apply`, () =>
      withTempDir(async (tmp) => {
        const twin = (sub: string) => torchTwin(path.join(tmp, sub), fam(family, sub), opts);
        const [base, post, newbase] = [await twin('base'), await twin('post'), await twin('newbase')];
        await compute(base, post, path.join(tmp, 'd-bin'));
        await compute(fam(family, 'base'), fam(family, 'post'), path.join(tmp, 'd-st'));
        await expectSameFolders(path.join(tmp, 'd-bin'), path.join(tmp, 'd-st'));
        await apply(newbase, [path.join(tmp, 'd-bin')], path.join(tmp, 'a-bin'));
        await apply(fam(family, 'newbase'), [path.join(tmp, 'd-st')], path.join(tmp, 'a-st'));
        await expectSameFolders(path.join(tmp, 'a-bin'), path.join(tmp, 'a-st'));
      }));
  }

  it('tied stories260K-tuned pair (lm_head sharing embed_tokens’ storage) matches safetensors with lm_head written out, and stays tied', () =>
    withTempDir(async (tmp) => {
      const f = (sub: string) => fam('stories260K-tuned-f32', sub);
      const bin = async (sub: string) => torchTwin(path.join(tmp, `${sub}-bin`), f(sub), { tie: true });
      const st = async (sub: string) => untiedCopy(path.join(tmp, `${sub}-st`), f(sub));
      await compute(await bin('base'), await bin('post'), path.join(tmp, 'd-bin'));
      await compute(await st('base'), await st('post'), path.join(tmp, 'd-st'));
      await expectSameFolders(path.join(tmp, 'd-bin'), path.join(tmp, 'd-st'));
      await apply(await bin('newbase'), [path.join(tmp, 'd-bin')], path.join(tmp, 'a-bin'));
      await apply(await st('newbase'), [path.join(tmp, 'd-st')], path.join(tmp, 'a-st'));
      await expectSameFolders(path.join(tmp, 'a-bin'), path.join(tmp, 'a-st'));
      // Both configs tie the head to the embedding, so the pair stays tied: the head is the embedding,
      // whose delta is post's minus base's (computed here from the fixtures), and no lm_head is written.
      const d = await loadDelta(path.join(tmp, 'd-bin'));
      const [b, p] = [await loadTensors(f('base')), await loadTensors(f('post'))];
      const [be, pe] = [floats(b.get('model.embed_tokens.weight')!), floats(p.get('model.embed_tokens.weight')!)];
      expect([...floats(d.get('model.embed_tokens.weight')!)]).toEqual(pe.map((x, i) => x - be[i]));
      expect(d.has('lm_head.weight')).toBe(false);
      expect((await loadTensors(path.join(tmp, 'a-bin'))).has('lm_head.weight')).toBe(false);
    }));
});

describe('which files a folder’s weights are read from', () => {
  it('safetensors wins over pytorch_model.bin, which is then never opened', () =>
    withTempDir(async (tmp) => {
      const dir = await folder(path.join(tmp, 'm'), fam('tiny-llama-bf16', 'post'), {});
      for (const f of (await readdir(fam('tiny-llama-bf16', 'post'))).filter((x) => !NON_WEIGHTS(x))) await copyFile(fam('tiny-llama-bf16', 'post', f), path.join(dir, f));
      await writeFile(path.join(dir, 'pytorch_model.bin'), 'not a zip at all');
      const c = await openCheckpoint(new LocalStore(dir));
      expect(c.files).toEqual(['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors']);
    }));

  it('pytorch_model.bin wins over its index and over other .pt files; a lone .pt/.pth is read; training files are ignored', () =>
    withTempDir(async (tmp) => {
      const one = torchSave([{ name: 'w', dtype: 'F32', shape: [1], bytes: new Uint8Array(4) }]);
      const two = torchSave([{ name: 'v', dtype: 'F32', shape: [1], bytes: new Uint8Array(4) }]);
      const names = async (files: Record<string, Uint8Array | string>) => {
        const dir = path.join(tmp, String(Math.random()).slice(2));
        await mkdir(dir);
        for (const [f, b] of Object.entries(files)) await writeFile(path.join(dir, f), b);
        const c = await openCheckpoint(new LocalStore(dir));
        return { files: c.files, tensors: c.tensors.map((t) => t.name) };
      };
      expect(await names({ 'pytorch_model.bin': one, 'pytorch_model.bin.index.json': '{}', 'extra.pt': two })).toEqual({ files: ['pytorch_model.bin'], tensors: ['w'] });
      expect(await names({ 'consolidated.00.pth': one })).toEqual({ files: ['consolidated.00.pth'], tensors: ['w'] });
      expect(await names({ 'model.pt': two, 'training_args.bin': 'pickled TrainingArguments', 'optimizer.pt': one })).toEqual({ files: ['model.pt'], tensors: ['v'] });
      await expect(names({ 'a.pt': one, 'b.bin': two })).rejects.toThrow(/several PyTorch files \(a\.pt, b\.bin\) and no pytorch_model\.bin\.index\.json/);
      await expect(names({ 'notes.txt': 'x' })).rejects.toThrow(/no model\.safetensors, model\.safetensors\.index\.json, pytorch_model\.bin or pytorch_model\.bin\.index\.json/);
    }));

  it('a sharded .bin index is checked against the files like a safetensors one', () =>
    withTempDir(async (tmp) => {
      const dir = path.join(tmp, 'm');
      await mkdir(dir);
      await writeFile(path.join(dir, 'pytorch_model-00001-of-00001.bin'), torchSave([{ name: 'w', dtype: 'F32', shape: [1], bytes: new Uint8Array(4) }]));
      const index = (map: Record<string, string>) => writeFile(path.join(dir, 'pytorch_model.bin.index.json'), JSON.stringify({ weight_map: map }));
      await index({ w: 'pytorch_model-00001-of-00001.bin', v: 'pytorch_model-00001-of-00001.bin' });
      await expect(openCheckpoint(new LocalStore(dir))).rejects.toThrow(/pytorch_model\.bin\.index\.json: maps tensor "v" to pytorch_model-00001-of-00001\.bin, whose header does not have it/);
      await index({ w: 'model.safetensors' });
      await expect(openCheckpoint(new LocalStore(dir))).rejects.toThrow(/weight_map\["w"\] must name a PyTorch \(\.bin, \.pt, \.pth\) file/);
      await index({ w: 'pytorch_model-00002-of-00002.bin' });
      await expect(openCheckpoint(new LocalStore(dir))).rejects.toThrow(/names shard files that are missing: pytorch_model-00002-of-00002\.bin/);
    }));

  it('deltas stay safetensors-only', () =>
    withTempDir(async (tmp) => {
      await writeFile(path.join(tmp, 'pytorch_model.bin'), torchSave([{ name: 'w', dtype: 'F32', shape: [1], bytes: new Uint8Array(4) }]));
      await expect(openCheckpoint(new LocalStore(tmp), DELTA_LAYOUT)).rejects.toThrow(/no delta\.safetensors and no delta\.safetensors\.index\.json/);
    }));

  it('an upload is complete once pytorch_model.bin, or every shard its index names, is there', () =>
    withTempDir(async (tmp) => {
      const store = new LocalStore(tmp);
      await writeFile(path.join(tmp, 'pytorch_model.bin.index.json'), JSON.stringify({ weight_map: { w: 'pytorch_model-00001-of-00002.bin', v: 'pytorch_model-00002-of-00002.bin' } }));
      await writeFile(path.join(tmp, 'pytorch_model-00001-of-00002.bin'), 'x');
      expect(await checkpointCompleteness(store)).toEqual({ complete: false, marker: 'pytorch_model.bin.index.json', missing: ['pytorch_model-00002-of-00002.bin'] });
      await writeFile(path.join(tmp, 'pytorch_model-00002-of-00002.bin'), 'x');
      expect(await checkpointCompleteness(store)).toEqual({ complete: true, marker: 'pytorch_model.bin.index.json', missing: [] });
      await writeFile(path.join(tmp, 'pytorch_model.bin'), 'x');
      expect(await checkpointCompleteness(store)).toEqual({ complete: true, marker: 'pytorch_model.bin', missing: [] });
    }));
});

describe('inspect and the CLI', () => {
  it('inspect describes a .bin file and a .bin folder', async () => {
    const file = await inspect(path.join(dataDir, 'stories260K-f32/pytorch_model.bin'));
    expect(file.kind).toBe('shard');
    const st = await loadTensors(fam('stories260K-f32'));
    expect(file.tensors.map((t) => t.name).sort()).toEqual([...st.keys(), 'lm_head.weight'].sort());
    expect(file.parameters).toBe([...st.values()].reduce((a, t) => a + t.bytes.length / 4, 0) + 512 * 64);
    const dir = await inspect(path.join(dataDir, 'tiny-llama-bf16/base'));
    expect(dir.files).toEqual(['pytorch_model-00001-of-00002.bin', 'pytorch_model-00002-of-00002.bin']);
    expect(dir.tensors).toHaveLength(21);
  });

  it('a malicious post: compute exits 2 naming the global, and writes nothing', () =>
    withTempDir(async (tmp) => {
      const post = await folder(path.join(tmp, 'post'), fam('tiny-llama-bf16', 'post'), { 'pytorch_model.bin': path.join(dataDir, 'malicious/os-system.bin') });
      const out = path.join(tmp, 'delta');
      const r = await runCli(['compute', '--base', fam('tiny-llama-bf16', 'base'), '--post', post, '--out', out]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/os-system\/data\.pkl\): global posix\.system is not allowed/);
      expect(existsSync(out)).toBe(false);
      expect((await readdir(tmp)).sort()).toEqual(['post']);
    }));

  it('a compressed tensor record: exit 2 with the reason', () =>
    withTempDir(async (tmp) => {
      const dir = path.join(tmp, 'm');
      await mkdir(dir);
      await writeFile(path.join(dir, 'pytorch_model.bin'), torchSave([{ name: 'w', dtype: 'F32', shape: [2], bytes: new Uint8Array(8) }], { deflateStorages: true }));
      const r = await runCli(['inspect', dir]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/zip entry "archive\/data\/0": is compressed \(method 8\)/);
    }));
});
