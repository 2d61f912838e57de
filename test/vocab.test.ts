// Issue 9: vocabulary changes and tied heads. Tiny Llama families with the test's own tokenizer.json;
// every output is checked against values computed here from the inputs' tensors (float64 sum, rounded
// once to BF16), and loads in the float64 reference forward pass with its own config.
import { describe, it, expect } from 'vitest';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { roundTo } from './helpers/floats.js';
import { localEnv, withTempDir } from './helpers/models.js';
import { runCli } from './helpers/cli.js';
import { runApply, runCompute, runConvert } from '../lib/ops/run.js';
import { localOutput } from '../lib/storage/output.js';
import { verify } from '../lib/ops/verify.js';
import { applyRefusal } from '../lib/ops/compat.js';
import { parseTokenTable } from '../lib/format/tokenizer.js';
import type { DeltaFormat } from '../lib/ops/manifest.js';
import type { VocabPairing } from '../lib/ops/vocab.js';
import {
  H, join, llamaConfig, loss, readJson, readTensors, rowsOf, writeModel, writeTensors, type ModelSpec, type Tensors,
} from './helpers/vocab-family.js';

const EMBED = 'model.embed_tokens.weight';
const HEAD = 'lm_head.weight';
const BASE_TOKENS: (string | null)[] = ['<unk>', '<s>', '</s>', ...Array.from({ length: 29 }, (_, i) => `w${i}`)];
const CHAT = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>{% endfor %}";

/** Where each output row comes from: new base + Δ of row r, the new base's row r, or post's own row r. */
type Src = { applied: number } | { newBase: number } | { post: number };
const applied = (a: number, b: number): Src[] => Array.from({ length: b - a }, (_, i) => ({ applied: a + i }));
const newBase = (a: number, b: number): Src[] => Array.from({ length: b - a }, (_, i) => ({ newBase: a + i }));

const headOf = (m: Tensors) => m.get(HEAD) ?? m.get(EMBED)!;

/** The output the arithmetic contract gives: Σ in float64, rounded once to BF16; carried rows are post's own. */
function expectedModel(base: Tensors, post: Tensors, nb: Tensors, rows: Src[], tied: boolean): Tensors {
  const out: Tensors = new Map();
  for (const [name, t] of nb) {
    if (name === EMBED || name === HEAD) continue;
    const b = base.get(name)!.values;
    const p = post.get(name)!.values;
    out.set(name, { ...t, values: t.values.map((x, i) => roundTo('BF16', x + 1 * (p[i] - b[i]))) });
  }
  const vocab = (pick: (m: Tensors) => { shape: number[]; values: number[] }) =>
    rows.flatMap((s) => {
      if ('applied' in s) {
        const [x, b, p] = [nb, base, post].map((m) => rowsOf(pick(m), s.applied, s.applied + 1));
        return x.map((v, j) => roundTo('BF16', v + 1 * (p[j] - b[j])));
      }
      if ('newBase' in s) return rowsOf(pick(nb), s.newBase, s.newBase + 1);
      return rowsOf(pick(post), s.post, s.post + 1).map((v) => roundTo('BF16', v));
    });
  out.set(EMBED, { dtype: 'BF16', shape: [rows.length, H], values: vocab((m) => m.get(EMBED)!) });
  if (!tied) out.set(HEAD, { dtype: 'BF16', shape: [rows.length, H], values: vocab(headOf) });
  return out;
}

/** Output tensors equal the expected ones bit for bit; config and forward pass agree with them. */
async function expectOutput(dir: string, want: Tensors, tied: boolean, tmp: string, sequence: number[]): Promise<void> {
  const got = await readTensors(dir);
  expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
  for (const [name, w] of want) {
    const g = got.get(name)!;
    expect({ name, dtype: g.dtype, shape: g.shape }).toEqual({ name, dtype: w.dtype, shape: w.shape });
    expect(g.values.every((v, i) => Object.is(v, w.values[i])), name).toBe(true);
  }
  const rows = want.get(EMBED)!.shape[0];
  const config = await readJson(join(dir, 'config.json'));
  expect({ vocab: config.vocab_size, tied: config.tie_word_embeddings, dtype: config.torch_dtype }).toEqual({ vocab: rows, tied, dtype: 'bfloat16' });
  // "Loads": the reference forward pass over the output (its own config) gives the expected tensors' loss.
  const ref = join(tmp, `expected-${Math.random().toString(36).slice(2)}`);
  await writeTensors(ref, want, llamaConfig(rows, tied));
  const [a, b] = [await loss(dir, sequence), await loss(ref, sequence)];
  expect(Number.isFinite(a)).toBe(true);
  expect(a).toBe(b);
}

async function compute(base: string, post: string, out: string, format: DeltaFormat) {
  return runCompute(localEnv, { base, post, shardSize: 5e9, format, chunkElements: format === 'compact' ? 64 : undefined }, () => localOutput(out));
}
async function apply(base: string, delta: string, out: string, vocab?: VocabPairing) {
  return runApply(localEnv, { base, deltas: [{ ref: delta }], shardSize: 5e9, vocab }, () => localOutput(out));
}
async function family(tmp: string, specs: Record<string, ModelSpec>): Promise<Record<string, Tensors>> {
  const out: Record<string, Tensors> = {};
  for (const [name, spec] of Object.entries(specs)) out[name] = await writeModel(join(tmp, name), spec);
  return out;
}
const tokensOf = async (dir: string) => parseTokenTable(await readFile(join(dir, 'tokenizer.json'), 'utf8'), dir).tokens;

const CHATML = [...BASE_TOKENS, '<|im_start|>', '<|im_end|>'];

describe.each(['compact', 'safetensors'] as DeltaFormat[])('vocabulary changes, %s deltas', (format) => {
  it('post adds tokens: Δ on the base rows, the added rows carried with their tokens, and appended on apply', () =>
    withTempDir(async (tmp) => {
      const m = await family(tmp, {
        base: { tokens: BASE_TOKENS, tied: false, salt: 1 },
        post: { tokens: CHATML, tied: false, salt: 2, chatTemplate: CHAT },
        newbase: { tokens: BASE_TOKENS, tied: false, salt: 3 },
      });
      await compute(join(tmp, 'base'), join(tmp, 'post'), join(tmp, 'delta'), format);
      const dj = await readJson(join(tmp, 'delta', 'delta.json'));
      expect(dj.vocab).toEqual({
        baseRows: 32, postRows: 34, baseTokens: { file: 'tokenizer.json', except: {} },
        carried: { tensors: { [EMBED]: `carried:${EMBED}`, [HEAD]: `carried:${HEAD}` }, tokens: ['<|im_start|>', '<|im_end|>'] },
      });
      const tensors = dj.tensors as Record<string, { shape: number[]; carried?: unknown }>;
      expect(tensors[EMBED].shape).toEqual([32, H]);
      expect(tensors[`carried:${HEAD}`]).toMatchObject({ shape: [2, H], carried: { of: HEAD, rows: [32, 34] } });
      // The original base plus the delta gives post back, carried rows included.
      expect(await verify(localEnv, join(tmp, 'base'), join(tmp, 'post'), join(tmp, 'delta'))).toMatchObject({ ok: true, mismatches: [] });

      await apply(join(tmp, 'newbase'), join(tmp, 'delta'), join(tmp, 'out'));
      const rows = [...applied(0, 32), { post: 32 }, { post: 33 }];
      await expectOutput(join(tmp, 'out'), expectedModel(m.base, m.post, m.newbase, rows, false), false, tmp, [1, 5, 32, 9, 33, 2]);
      // Nothing moved against post's tokenizer: its files are the output's, and hold exactly its 34 tokens.
      expect(await readFile(join(tmp, 'out', 'tokenizer.json'), 'utf8')).toBe(await readFile(join(tmp, 'post', 'tokenizer.json'), 'utf8'));
      expect(await tokensOf(join(tmp, 'out'))).toEqual(CHATML);
      const pm = await readJson(join(tmp, 'out', 'paramdelta.json'));
      expect(pm.vocab).toEqual({
        rows: 34, newBaseRows: 32, deltaBaseRows: 32, pairing: 'tokens', applied: [[0, 32]], newBase: [], carried: [],
        appended: [{ row: 32, postRow: 32, token: '<|im_start|>' }, { row: 33, postRow: 33, token: '<|im_end|>' }],
      });
      expect(pm.tied).toBe(false);
      // Converted to the other layout, the delta keeps its carried rows and applies to the same bytes.
      const other = format === 'compact' ? 'safetensors' : 'compact';
      await runConvert(localEnv, { delta: join(tmp, 'delta'), to: other, shardSize: 5e9, chunkElements: 64 }, () => localOutput(join(tmp, 'converted')));
      expect((await readJson(join(tmp, 'converted', 'delta.json'))).vocab).toEqual(dj.vocab);
      await apply(join(tmp, 'newbase'), join(tmp, 'converted'), join(tmp, 'out-converted'));
      await expectOutput(join(tmp, 'out-converted'), expectedModel(m.base, m.post, m.newbase, rows, false), false, tmp, [1, 5, 32, 9, 33, 2]);
    }));

  it('both: post adds tokens, the new base extended the vocabulary; a shared token goes to its row, padding pairs by index, the rest is appended', () =>
    withTempDir(async (tmp) => {
      const m = await family(tmp, {
        base: { tokens: BASE_TOKENS, tied: false, salt: 1 },
        post: { tokens: [...CHATML, null], tied: false, salt: 2, chatTemplate: CHAT },
        newbase: { tokens: [...BASE_TOKENS, '<tool_call>', '<|im_end|>', null], tied: false, salt: 3 },
      });
      await writeFile(join(tmp, 'post', 'generation_config.json'), JSON.stringify({ bos_token_id: 1, eos_token_id: [2, 32, 33] }));
      await compute(join(tmp, 'base'), join(tmp, 'post'), join(tmp, 'delta'), format);
      expect((await readJson(join(tmp, 'delta', 'delta.json'))).vocab).toMatchObject({ carried: { tokens: ['<|im_start|>', '<|im_end|>', null] } });
      await apply(join(tmp, 'newbase'), join(tmp, 'delta'), join(tmp, 'out'));
      const rows = [...applied(0, 32), ...newBase(32, 33), { post: 33 }, { post: 34 }, { post: 32 }];
      await expectOutput(join(tmp, 'out'), expectedModel(m.base, m.post, m.newbase, rows, false), false, tmp, [1, 35, 4, 32, 33, 34, 2]);
      // The new base's tokenizer, holding exactly the output's tokens, with post's chat template and special tokens.
      expect(await tokensOf(join(tmp, 'out'))).toEqual([...BASE_TOKENS, '<tool_call>', '<|im_end|>', null, '<|im_start|>']);
      const tc = await readJson(join(tmp, 'out', 'tokenizer_config.json'));
      expect(tc.chat_template).toBe(CHAT);
      expect(tc.added_tokens_decoder).toMatchObject({ '35': { content: '<|im_start|>', special: true } });
      // Post's generation ids follow its tokens: <|im_start|> (post 32) is 35 here, <|im_end|> stays 33.
      expect(await readJson(join(tmp, 'out', 'generation_config.json'))).toEqual({ bos_token_id: 1, eos_token_id: [2, 35, 33] });
      const pm = await readJson(join(tmp, 'out', 'paramdelta.json'));
      expect(pm.vocab).toMatchObject({
        rows: 36, newBaseRows: 35, deltaBaseRows: 32, applied: [[0, 32]], newBase: [[32, 33]],
        carried: [{ row: 33, postRow: 33, token: '<|im_end|>' }, { row: 34, postRow: 34, token: null }],
        appended: [{ row: 35, postRow: 32, token: '<|im_start|>' }],
      });
    }));
});

describe('vocabulary changes, streamed in several chunks', () => {
  it('pieces and carried rows longer than a stream chunk, read off the compact chunk grid', () =>
    withTempDir(async (tmp) => {
      const words = Array.from({ length: 600 }, (_, i) => `v${i}`);
      const added = Array.from({ length: 1100 }, (_, i) => `<t${i}>`);
      const m = await family(tmp, {
        base: { tokens: words, tied: false, salt: 1 },
        post: { tokens: [...words, ...added], tied: false, salt: 2 },
        newbase: { tokens: [...words, '<t3>', '<x>'], tied: false, salt: 3 },
      });
      // The smallest buffers: 4096-element stream chunks, 64-element compact chunks (8 rows).
      const env = { ...localEnv, bufferBytes: 1 };
      await runCompute(env, { base: join(tmp, 'base'), post: join(tmp, 'post'), shardSize: 5e9, format: 'compact', chunkElements: 64 }, () => localOutput(join(tmp, 'delta')));
      await runApply(env, { base: join(tmp, 'newbase'), deltas: [{ ref: join(tmp, 'delta') }], shardSize: 5e9 }, () => localOutput(join(tmp, 'out')));
      const post = (a: number, b: number): Src[] => Array.from({ length: b - a }, (_, i) => ({ post: a + i }));
      const rows = [...applied(0, 600), { post: 603 }, ...newBase(601, 602), ...post(600, 603), ...post(604, 1700)];
      await expectOutput(join(tmp, 'out'), expectedModel(m.base, m.post, m.newbase, rows, false), false, tmp, [1, 600, 601, 650, 1700]);
      expect(await tokensOf(join(tmp, 'out'))).toEqual([...words, '<t3>', '<x>', ...added.filter((t) => t !== '<t3>')]);
    }));
});

describe('vocabulary changes on apply', () => {
  it('the new base extended the vocabulary: its rows beyond V are its own, its tokenizer kept with post chat template', () =>
    withTempDir(async (tmp) => {
      const extended = [...BASE_TOKENS, '<tool_call>', '</tool_call>', '<tool_x>', '<tool_y>'];
      const m = await family(tmp, {
        base: { tokens: BASE_TOKENS, tied: false, salt: 1 },
        post: { tokens: BASE_TOKENS, tied: false, salt: 2, chatTemplate: CHAT },
        newbase: { tokens: extended, tied: false, salt: 3 },
      });
      await compute(join(tmp, 'base'), join(tmp, 'post'), join(tmp, 'delta'), 'compact');
      await apply(join(tmp, 'newbase'), join(tmp, 'delta'), join(tmp, 'out'));
      const rows = [...applied(0, 32), ...newBase(32, 36)];
      await expectOutput(join(tmp, 'out'), expectedModel(m.base, m.post, m.newbase, rows, false), false, tmp, [1, 33, 7, 35, 2]);
      expect(await readFile(join(tmp, 'out', 'tokenizer.json'), 'utf8')).toBe(await readFile(join(tmp, 'newbase', 'tokenizer.json'), 'utf8'));
      expect((await readJson(join(tmp, 'out', 'tokenizer_config.json'))).chat_template).toBe(CHAT);
      expect((await readJson(join(tmp, 'out', 'paramdelta.json'))).vocab).toMatchObject({ rows: 36, applied: [[0, 32]], newBase: [[32, 36]], carried: [], appended: [] });
    }));

  it('refuses a smaller new base, and tokenizers that disagree, naming both sizes and the first differing token; --vocab rows pairs by index', () =>
    withTempDir(async (tmp) => {
      const renamed = BASE_TOKENS.map((t, i) => (i === 5 ? 'zz' : t));
      const m = await family(tmp, {
        base: { tokens: BASE_TOKENS, tied: false, salt: 1 },
        post: { tokens: CHATML, tied: false, salt: 2 },
        small: { tokens: BASE_TOKENS.slice(0, 30), tied: false, salt: 3 },
        renamed: { tokens: renamed, tied: false, salt: 4 },
      });
      expect((await runCli(['compute', '--base', join(tmp, 'base'), '--post', join(tmp, 'post'), '--out', join(tmp, 'delta')])).code).toBe(0);
      // The pipeline's re-post check (findCompatibleDeltas) refuses exactly what apply refuses.
      expect(await applyRefusal(localEnv, join(tmp, 'small'), join(tmp, 'delta'), { shardSize: 5e9 })).toMatch(/base of 32 rows, but the new base .* has 30/);
      expect(await applyRefusal(localEnv, join(tmp, 'renamed'), join(tmp, 'delta'), { shardSize: 5e9 })).toMatch(/first at row 5, "w2" in the delta's base but "zz"/);
      expect(await applyRefusal(localEnv, join(tmp, 'base'), join(tmp, 'delta'), { shardSize: 5e9 })).toBeNull();
      const small = await runCli(['apply', '--base', join(tmp, 'small'), '--delta', join(tmp, 'delta'), '--out', join(tmp, 'out1')]);
      expect(small.code).toBe(2);
      expect(small.stderr).toMatch(/base of 32 rows, but the new base .* has 30; the first token it lacks is "w27" \(row 30\).*--vocab rows/);
      expect(existsSync(join(tmp, 'out1'))).toBe(false);
      const other = await runCli(['apply', '--base', join(tmp, 'renamed'), '--delta', join(tmp, 'delta'), '--out', join(tmp, 'out2')]);
      expect(other.code).toBe(2);
      expect(other.stderr).toMatch(/base of 32 rows whose tokenizer disagrees with the new base's \(32 rows.*first at row 5, "w2" in the delta's base but "zz" in the new base; pass --vocab rows/);
      expect(existsSync(join(tmp, 'out2'))).toBe(false);

      const forced = await runCli(['apply', '--base', join(tmp, 'small'), '--delta', join(tmp, 'delta'), '--vocab', 'rows', '--out', join(tmp, 'out3')]);
      expect(forced.code, forced.stderr).toBe(0);
      const rows = [...applied(0, 30), { post: 32 }, { post: 33 }];
      await expectOutput(join(tmp, 'out3'), expectedModel(m.base, m.post, m.small, rows, false), false, tmp, [1, 30, 4, 31, 2]);
      expect(await tokensOf(join(tmp, 'out3'))).toEqual([...BASE_TOKENS.slice(0, 30), '<|im_start|>', '<|im_end|>']);
      expect((await readJson(join(tmp, 'out3', 'paramdelta.json'))).vocab).toMatchObject({ pairing: 'rows', rows: 32, applied: [[0, 30]] });
      const forced2 = await runCli(['apply', '--base', join(tmp, 'renamed'), '--delta', join(tmp, 'delta'), '--vocab', 'rows', '--out', join(tmp, 'out4')]);
      expect(forced2.code, forced2.stderr).toBe(0);
      await expectOutput(join(tmp, 'out4'), expectedModel(m.base, m.post, m.renamed, [...applied(0, 32), { post: 32 }, { post: 33 }], false), false, tmp, [1, 5, 33, 2]);
    }));
});

describe('vocabulary refusals', () => {
  it('a malformed tokenizer.json, and two fused deltas that each carry tokens: exit 2 naming the file or deltas, nothing written', () =>
    withTempDir(async (tmp) => {
      await family(tmp, {
        base: { tokens: BASE_TOKENS, tied: false, salt: 1 },
        post: { tokens: CHATML, tied: false, salt: 2 },
        post2: { tokens: [...BASE_TOKENS, '<pad>'], tied: false, salt: 5 },
        newbase: { tokens: BASE_TOKENS, tied: false, salt: 3 },
      });
      for (const post of ['post', 'post2']) expect((await runCli(['compute', '--base', join(tmp, 'base'), '--post', join(tmp, post), '--out', join(tmp, `d-${post}`)])).code).toBe(0);
      const fused = await runCli(['apply', '--base', join(tmp, 'newbase'), '--delta', join(tmp, 'd-post'), '--delta', join(tmp, 'd-post2'), '--out', join(tmp, 'out1')]);
      expect(fused.code).toBe(2);
      expect(fused.stderr).toMatch(/d-post, .*d-post2 each carry added tokens; apply them one at a time/);
      expect(existsSync(join(tmp, 'out1'))).toBe(false);
      await writeFile(join(tmp, 'newbase', 'tokenizer.json'), '{"model": {"vocab": {"a": "one"}}}');
      const bad = await runCli(['apply', '--base', join(tmp, 'newbase'), '--delta', join(tmp, 'd-post'), '--out', join(tmp, 'out2')]);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toMatch(/newbase\/tokenizer.json: field "model.vocab" must map token strings to non-negative integer ids/);
      expect(existsSync(join(tmp, 'out2'))).toBe(false);
    }));
});

describe('tied embeddings', () => {
  const kinds = [
    { base: true, post: true },
    { base: true, post: false },
    { base: false, post: true },
    { base: false, post: false },
  ];
  it.each(kinds)('base tied $base, post tied $post: compute, then apply onto a tied and an untied new base', (k) =>
    withTempDir(async (tmp) => {
      const m = await family(tmp, {
        base: { tokens: BASE_TOKENS, tied: k.base, salt: 1 },
        post: { tokens: BASE_TOKENS, tied: k.post, salt: 2 },
        tiednb: { tokens: BASE_TOKENS, tied: true, salt: 3 },
        untiednb: { tokens: BASE_TOKENS, tied: false, salt: 4 },
      });
      await compute(join(tmp, 'base'), join(tmp, 'post'), join(tmp, 'delta'), 'compact');
      const dj = await readJson(join(tmp, 'delta', 'delta.json'));
      expect(dj.tied).toEqual(k);
      // A head delta exists unless both are tied; it is post's head minus the base's (a tied model's head is its embed_tokens).
      expect(HEAD in (dj.tensors as object)).toBe(!(k.base && k.post));
      for (const nb of ['tiednb', 'untiednb']) {
        const out = join(tmp, `out-${nb}`);
        expect(await applyRefusal(localEnv, join(tmp, nb), join(tmp, 'delta'), { shardSize: 5e9 })).toBeNull();
        await apply(join(tmp, nb), join(tmp, 'delta'), out);
        const tied = nb === 'tiednb' && k.base && k.post;
        await expectOutput(out, expectedModel(m.base, m.post, m[nb], applied(0, 32), tied), tied, tmp, [1, 7, 3, 30, 2]);
        // Recorded once a tied model is involved; untied throughout leaves the manifest as it always was.
        const pm = await readJson(join(out, 'paramdelta.json'));
        if (k.base || k.post || nb === 'tiednb') expect(pm.tied).toBe(tied);
        else expect(pm).not.toHaveProperty('tied');
      }
      if (k.base && k.post) {
        // A new base tied only by having no lm_head: the output's config says so rather than leave it to a default.
        const cfg = await readJson(join(tmp, 'tiednb', 'config.json'));
        delete cfg.tie_word_embeddings;
        await writeFile(join(tmp, 'tiednb', 'config.json'), JSON.stringify(cfg));
        await apply(join(tmp, 'tiednb'), join(tmp, 'delta'), join(tmp, 'out-bare'));
        await expectOutput(join(tmp, 'out-bare'), expectedModel(m.base, m.post, m.tiednb, applied(0, 32), true), true, tmp, [1, 7, 3, 30, 2]);
      }
    }));
});
