import { describe, it, expect } from 'vitest';
import path from 'node:path';
import { readFile, readdir } from 'node:fs/promises';
import { fixturesDir } from './helpers/fixtures.js';
import { loadDelta, loadTensors, localEnv, withTempDir } from './helpers/models.js';
import { runCompute, runApply } from '../lib/ops/run.js';
import { verify } from '../lib/ops/verify.js';
import { localOutput } from '../lib/storage/output.js';
import { DELTA_LAYOUT, DELTA_MANIFEST, parseDeltaManifest, type DeltaFormat } from '../lib/ops/manifest.js';
import { DEFAULT_SHARD_SIZE } from '../lib/ops/plan.js';

const FAMILIES = ['tiny-llama-bf16', 'tiny-llama-f16', 'tiny-llama-f32'];
const IMPLS = ['wasm', 'reference'] as const;

function fam(name: string, sub: string): string {
  return path.join(fixturesDir, name, sub);
}

async function compute(env: typeof localEnv, base: string, post: string, out: string, shardSize = DEFAULT_SHARD_SIZE, format?: DeltaFormat) {
  return runCompute(env, { base, post, shardSize, format }, () => localOutput(out));
}

async function apply(env: typeof localEnv, base: string, deltas: { ref: string; scale?: number }[], out: string, shardSize = DEFAULT_SHARD_SIZE) {
  return runApply(env, { base, deltas, shardSize }, () => localOutput(out));
}

/** Our single output shard must equal the expected single-file model byte for byte. */
async function expectModelBytes(outDir: string, expectedDir: string) {
  const files = (await readdir(outDir)).filter((f) => f.endsWith('.safetensors'));
  expect(files).toEqual(['model-00001-of-00001.safetensors']);
  const got = await readFile(path.join(outDir, files[0]));
  const want = await readFile(path.join(expectedDir, 'model.safetensors'));
  expect(got.length).toBe(want.length);
  expect(got.equals(want)).toBe(true);
}

/** Deltas compare by value: same tensors, same dtype (so the auto rule picked the same one), same bytes. */
async function expectDeltaValues(deltaDir: string, expectedDir: string) {
  const got = await loadDelta(deltaDir);
  const want = await loadTensors(expectedDir);
  expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
  for (const [name, w] of want) {
    const g = got.get(name)!;
    expect({ name, dtype: g.dtype, shape: g.shape }).toEqual({ name, dtype: w.dtype, shape: w.shape });
    expect(g.bytes.equals(w.bytes), `${name} bytes`).toBe(true);
  }
}

describe.each(IMPLS)('fixtures with %s kernels', (impl) => {
  const env = { ...localEnv, kernels: impl };
  describe.each(FAMILIES)('%s', (family) => {
    it('compute matches expected/delta-post and delta-post2 by value', () =>
      withTempDir(async (tmp) => {
        await compute(env, fam(family, 'base'), fam(family, 'post'), path.join(tmp, 'd1'));
        await expectDeltaValues(path.join(tmp, 'd1'), fam(family, 'expected/delta-post'));
        await compute(env, fam(family, 'base'), fam(family, 'post2'), path.join(tmp, 'd2'));
        await expectDeltaValues(path.join(tmp, 'd2'), fam(family, 'expected/delta-post2'));
      }));

    it('apply matches every expected model byte for byte, fusion and round trip included', () =>
      withTempDir(async (tmp) => {
        const d1 = path.join(tmp, 'd1');
        const d2 = path.join(tmp, 'd2');
        await compute(env, fam(family, 'base'), fam(family, 'post'), d1);
        await compute(env, fam(family, 'base'), fam(family, 'post2'), d2);
        const cases: [string, { ref: string; scale?: number }[], string, string][] = [
          ['a10', [{ ref: d1 }], 'newbase', 'apply-post-1.0'],
          ['a05', [{ ref: d1, scale: 0.5 }], 'newbase', 'apply-post-0.5'],
          ['fused', [{ ref: d1, scale: 0.7 }, { ref: d2, scale: 0.3 }], 'newbase', 'apply-post-0.7-post2-0.3'],
          ['rt', [{ ref: d1 }], 'base', 'roundtrip-post'],
        ];
        for (const [name, deltas, base, expected] of cases) {
          const out = path.join(tmp, name);
          await apply(env, fam(family, base), deltas, out);
          await expectModelBytes(out, fam(family, `expected/${expected}`));
        }
        // The round trip is post itself, tensor for tensor.
        const rt = await loadTensors(path.join(tmp, 'rt'));
        const post = await loadTensors(fam(family, 'post'));
        for (const [n, t] of post) expect(rt.get(n)!.bytes.equals(t.bytes), n).toBe(true);
      }));

    it('verify reproduces post bit for bit', () =>
      withTempDir(async (tmp) => {
        const d1 = path.join(tmp, 'd1');
        await compute(env, fam(family, 'base'), fam(family, 'post'), d1);
        const r = await verify(env, fam(family, 'base'), fam(family, 'post'), d1);
        expect(r).toMatchObject({ ok: true, mismatches: [], corruptShards: [], tensors: 21 });
        // Against the wrong post model, verify names the differing tensors.
        const bad = await verify(env, fam(family, 'base'), fam(family, 'post2'), d1);
        expect(bad.ok).toBe(false);
        expect(bad.mismatches.length).toBeGreaterThan(0);
        expect(bad.mismatches.map((m) => m.tensor)).toContain('model.embed_tokens.weight');
      }));
  });
});

describe('delta artifact', () => {
  it('in the plain layout holds shards, index, manifest and the chat files, with hashes that match', () =>
    withTempDir(async (tmp) => {
      const d = path.join(tmp, 'd');
      await compute(localEnv, fam('tiny-llama-bf16', 'base'), fam('tiny-llama-bf16', 'post'), d, 150_000, 'safetensors');
      const files = (await readdir(d)).sort();
      expect(files).toContain(DELTA_MANIFEST);
      expect(files).toContain(DELTA_LAYOUT.index);
      expect(files).toContain('tokenizer_config.json');
      const m = parseDeltaManifest(await readFile(path.join(d, DELTA_MANIFEST), 'utf8'), 'delta.json');
      expect(m).toMatchObject({ formatVersion: 1, layout: 'safetensors', index: DELTA_LAYOUT.index });
      expect(m.shards.length).toBeGreaterThan(1);
      expect(m.shards.every((s) => s.file.endsWith('.safetensors'))).toBe(true);
      expect(await loadTensors(d, DELTA_LAYOUT)).toEqual(await loadTensors(fam('tiny-llama-bf16', 'expected/delta-post')));
      const { createHash } = await import('node:crypto');
      for (const s of m.shards) {
        const bytes = await readFile(path.join(d, s.file));
        expect(createHash('sha256').update(bytes).digest('hex')).toBe(s.sha256);
        expect(bytes.length).toBe(s.bytes);
      }
      expect(m.tensors['model.layers.0.self_attn.v_proj.weight'].zero).toBe(true);
      expect(m.tensors['model.embed_tokens.weight'].zero).toBe(false);
      expect(m.tensors['model.layers.1.self_attn.k_proj.weight'].dtype).toBe('F64');
      expect(m.base.config.architectures).toEqual(['LlamaForCausalLM']);
      expect(m.files.map((f) => f.file)).toEqual(['tokenizer_config.json']);
      // Sharded deltas apply exactly like single-file ones.
      const out = path.join(tmp, 'out');
      await apply(localEnv, fam('tiny-llama-bf16', 'newbase'), [{ ref: d }], out);
      await expectModelBytes(out, fam('tiny-llama-bf16', 'expected/apply-post-1.0'));
      // The applied model is a complete HF folder: config from the new base, chat template from post.
      expect(await readFile(path.join(out, 'config.json'), 'utf8')).toBe(
        await readFile(fam('tiny-llama-bf16', 'newbase/config.json'), 'utf8'),
      );
      expect(JSON.parse(await readFile(path.join(out, 'tokenizer_config.json'), 'utf8')).chat_template).toBe('{{ messages }}');
      const index = JSON.parse(await readFile(path.join(out, 'model.safetensors.index.json'), 'utf8'));
      expect(Object.keys(index.weight_map)).toHaveLength(21);
    }));

  it('sharded apply output holds the same tensors as the single-shard one', () =>
    withTempDir(async (tmp) => {
      const d = path.join(tmp, 'd');
      await compute(localEnv, fam('tiny-llama-f32', 'base'), fam('tiny-llama-f32', 'post'), d);
      await apply(localEnv, fam('tiny-llama-f32', 'newbase'), [{ ref: d }], path.join(tmp, 'o'), 100_000);
      const got = await loadTensors(path.join(tmp, 'o'));
      const want = await loadTensors(fam('tiny-llama-f32', 'expected/apply-post-1.0'));
      expect((await readdir(path.join(tmp, 'o'))).filter((f) => f.endsWith('.safetensors')).length).toBeGreaterThan(2);
      for (const [n, t] of want) expect(got.get(n)!.bytes.equals(t.bytes), n).toBe(true);
    }));
});
