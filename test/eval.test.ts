import { describe, it, expect, afterEach, vi } from 'vitest';
import path from 'node:path';
import { readFile, writeFile, mkdir, cp, chmod, readdir } from 'node:fs/promises';
import { fixturesDir } from './helpers/fixtures.js';
import { localEnv, loadTensors, withTempDir, writeCheckpoint } from './helpers/models.js';
import { runCli } from './helpers/cli.js';
import { argmax, logSoftmax, referenceLogits } from './helpers/reference-lm.js';
import { evaluate, type EvalOptions } from '../lib/eval/evaluate.js';
import { evaluateWithProbes, BUILTIN_CONVERSATIONS, EVAL_REPORT_FORMAT } from '../lib/eval/index.js';
import { createHash } from 'node:crypto';
import { InputError } from '../lib/errors.js';

interface Expected {
  model: string;
  tokens: string;
  sequences: { mean_loss: number; target_logprobs: number[]; argmax: number[] }[];
}
const expected: Record<string, Expected> = JSON.parse(await readFile(path.join(fixturesDir, 'eval/expected.json'), 'utf8'));
const tokensOf = async (file: string): Promise<number[][]> => JSON.parse(await readFile(path.join(fixturesDir, file), 'utf8'));
const STORIES = path.join(fixturesDir, 'stories260K-f32');
const TUNED_POST = path.join(fixturesDir, 'stories260K-tuned-f32/post');
const QWEN = path.join(fixturesDir, 'eval/qwen2-tied');

/** Small enough that every fixture runs in several layer calls, several head row blocks and several position chunks. */
const TIGHT: EvalOptions = { batchTokens: 40, limits: { attentionBytes: 1 << 20, headBlockBytes: 64 * 96 * 4, logitBytes: 16 * 64 * 4 } };

afterEach(() => vi.restoreAllMocks());

/** Copies a fixture model to a writable folder, so a test can change it. */
async function copyModel(from: string, to: string): Promise<string> {
  await cp(from, to, { recursive: true });
  for (const f of await readdir(to)) await chmod(path.join(to, f), 0o644);
  await chmod(to, 0o755);
  return to;
}

async function editConfig(dir: string, edit: (c: Record<string, unknown>) => void): Promise<void> {
  const file = path.join(dir, 'config.json');
  const c = JSON.parse(await readFile(file, 'utf8'));
  edit(c);
  await writeFile(file, JSON.stringify(c));
}

/** KL(ref ‖ model) and top-1 agreement over the first `rows` vocabulary rows of each, renormalized there. */
function klAndAgreement(model: Float64Array[], ref: Float64Array[], rows: number): { kl: number[]; agree: number[] } {
  const kl: number[] = [];
  const agree: number[] = [];
  for (let t = 0; t < model.length - 1; t++) {
    const lm = logSoftmax(model[t], rows);
    const lr = logSoftmax(ref[t], rows);
    let k = 0;
    for (let v = 0; v < rows; v++) k += Math.exp(lr[v]) * (lr[v] - lm[v]);
    kl.push(k);
    agree.push(argmax(model[t], rows) === argmax(ref[t], rows) ? 1 : 0);
  }
  return { kl, agree };
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

describe('eval: fixture figures (float64 reference)', () => {
  for (const [name, e] of Object.entries(expected)) {
    for (const [label, opts] of [['default batching', {}], ['tight limits', TIGHT]] as const) {
      it(`${name}: every sequence's mean loss, log-probabilities and argmax (${label})`, async () => {
        const sequences = await tokensOf(e.tokens);
        const r = await evaluate(localEnv, { model: path.join(fixturesDir, e.model), sequences }, { ...opts, positions: true });
        expect(r.model.sequences).toHaveLength(e.sequences.length);
        let nearTies = 0;
        for (let i = 0; i < e.sequences.length; i++) {
          const got = r.model.sequences[i];
          const want = e.sequences[i];
          expect(got.tokens).toBe(sequences[i].length - 1);
          expect(Math.abs(got.meanLoss - want.mean_loss) / Math.abs(want.mean_loss)).toBeLessThan(1e-4);
          expect(got.targetLogprobs).toHaveLength(want.target_logprobs.length);
          got.targetLogprobs!.forEach((lp, t) => expect(Math.abs(lp - want.target_logprobs[t])).toBeLessThan(1e-3));
          const diff = got.argmax!.map((a, t) => (a === want.argmax[t] ? -1 : t)).filter((t) => t >= 0);
          if (diff.length) {
            // Only at near-ties: the float64 reference's logits for the two tokens lie within 1e-3.
            const logits = await referenceLogits(path.join(fixturesDir, e.model), sequences[i]);
            for (const t of diff) expect(Math.abs(logits[t][got.argmax![t]] - logits[t][want.argmax[t]])).toBeLessThan(1e-3);
            nearTies += diff.length;
          }
        }
        expect(nearTies).toBeLessThanOrEqual(2);
        // The pooled figure is the token-weighted mean of the sequences'.
        const pooled = e.sequences.reduce((a, s) => a + s.mean_loss * s.target_logprobs.length, 0) / e.sequences.reduce((a, s) => a + s.target_logprobs.length, 0);
        expect(Math.abs(r.model.meanLoss - pooled) / pooled).toBeLessThan(1e-4);
        expect(r.model.perplexity).toBeCloseTo(Math.exp(r.model.meanLoss), 10);
      });
    }
  }
});

describe('eval: against a reference model', () => {
  it('agreement and KL(reference ‖ model) match a float64 computation, per sequence and pooled', async () => {
    const sequences = (await tokensOf('eval/tokens-512.json')).map((s) => s.slice(0, 24));
    const r = await evaluate(localEnv, { model: TUNED_POST, against: STORIES, sequences }, TIGHT);
    const all = { kl: [] as number[], agree: [] as number[] };
    for (let i = 0; i < sequences.length; i++) {
      const m = await referenceLogits(TUNED_POST, sequences[i]);
      const ref = await referenceLogits(STORIES, sequences[i]);
      const { kl, agree } = klAndAgreement(m, ref, 512);
      expect(r.model.sequences[i].kl!).toBeCloseTo(mean(kl), 4);
      expect(r.model.sequences[i].agreement).toBe(mean(agree));
      all.kl.push(...kl);
      all.agree.push(...agree);
      // The reference model's own loss on the same positions.
      const refLoss = -mean(sequences[i].slice(1).map((tok, t) => logSoftmax(ref[t])[tok]));
      expect(Math.abs(r.against!.sequences[i].meanLoss - refLoss) / refLoss).toBeLessThan(1e-4);
    }
    expect(r.kl!).toBeCloseTo(mean(all.kl), 4);
    expect(r.kl!).toBeGreaterThan(1e-3);
    expect(r.agreement).toBe(mean(all.agree));
    expect(r.sharedVocab).toBe(512);
  });

  it('over the shared rows when the vocabularies differ (512 vs 260)', async () => {
    const sequences = [[5, 17, 200, 33, 1, 250, 9, 64, 120, 7], [259, 0, 3, 100]];
    const r = await evaluate(localEnv, { model: STORIES, against: QWEN, sequences }, TIGHT);
    expect(r.sharedVocab).toBe(260);
    const all = { kl: [] as number[], agree: [] as number[] };
    for (const seq of sequences) {
      const { kl, agree } = klAndAgreement(await referenceLogits(STORIES, seq), await referenceLogits(QWEN, seq), 260);
      all.kl.push(...kl);
      all.agree.push(...agree);
    }
    expect(r.kl!).toBeCloseTo(mean(all.kl), 4);
    expect(r.agreement).toBe(mean(all.agree));
  });

  it('a model against itself agrees everywhere with zero KL', async () => {
    const sequences = await tokensOf('eval/tokens-260.json');
    const r = await evaluate(localEnv, { model: QWEN, against: QWEN, sequences });
    expect(r.agreement).toBe(1);
    expect(r.kl).toBe(0);
    expect(r.against!.meanLoss).toBe(r.model.meanLoss);
  });
});

describe('eval: weights and attention variants (float64 reference)', () => {
  /** The model's own loss on `seq`, from the reference logits. */
  async function referenceLoss(dir: string, seq: number[]): Promise<number> {
    const logits = await referenceLogits(dir, seq);
    return -mean(seq.slice(1).map((tok, t) => logSoftmax(logits[t])[tok]));
  }

  it('reads F16 and F64 weights', () =>
    withTempDir(async (tmp) => {
      const tensors = await loadTensors(STORIES);
      const config = await readFile(path.join(STORIES, 'config.json'), 'utf8');
      const seq = (await tokensOf('eval/tokens-512.json'))[1];
      for (const dtype of ['F16', 'F64'] as const) {
        const dir = path.join(tmp, dtype);
        await writeCheckpoint(
          dir,
          [...tensors].map(([name, t]) => {
            const f32 = new Float32Array(t.bytes.buffer.slice(t.bytes.byteOffset, t.bytes.byteOffset + t.bytes.byteLength));
            const bytes = dtype === 'F64' ? new Uint8Array(Float64Array.from(f32).buffer) : new Uint8Array(toHalf(f32).buffer);
            return { name, dtype, shape: t.shape, bytes };
          }),
          { 'config.json': config },
        );
        const r = await evaluate(localEnv, { model: dir, sequences: [seq] });
        const want = await referenceLoss(dir, seq);
        expect(Math.abs(r.model.meanLoss - want) / want).toBeLessThan(1e-4);
      }
    }));

  it('a bias on some fused projections only (q, not k or v), across layers', () =>
    withTempDir(async (tmp) => {
      const tensors = await loadTensors(QWEN);
      const dir = path.join(tmp, 'qbias');
      await writeCheckpoint(
        dir,
        [...tensors].filter(([n]) => !/(k|v)_proj\.bias$/.test(n)).map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape, bytes: t.bytes })),
        { 'config.json': await readFile(path.join(QWEN, 'config.json'), 'utf8') },
      );
      const seq = (await tokensOf('eval/tokens-260.json'))[1];
      const r = await evaluate(localEnv, { model: dir, sequences: [seq] });
      const want = await referenceLoss(dir, seq);
      expect(Math.abs(r.model.meanLoss - want) / want).toBeLessThan(1e-4);
    }));

  it('Mistral: a sliding window shorter than the sequence', () =>
    withTempDir(async (tmp) => {
      const dir = await copyModel(STORIES, path.join(tmp, 'mistral'));
      await editConfig(dir, (c) => Object.assign(c, { model_type: 'mistral', architectures: ['MistralForCausalLM'], sliding_window: 8 }));
      const seq = (await tokensOf('eval/tokens-512.json'))[0].slice(0, 30);
      const r = await evaluate(localEnv, { model: dir, sequences: [seq, seq.slice(0, 6)] });
      const want = await referenceLoss(dir, seq);
      expect(Math.abs(r.model.sequences[0].meanLoss - want) / want).toBeLessThan(1e-4);
      // The window changes the result: the same weights as Llama (no window) give another loss.
      const llama = await referenceLoss(STORIES, seq);
      expect(Math.abs(llama - want)).toBeGreaterThan(1e-3);
    }));
});

describe('eval: bad input names the problem', () => {
  it('unknown model_type, token outside the vocabulary, empty and one-token sequences, missing tensor', () =>
    withTempDir(async (tmp) => {
      const dir = await copyModel(STORIES, path.join(tmp, 'gpt2'));
      await editConfig(dir, (c) => (c.model_type = 'gpt2'));
      await expect(evaluate(localEnv, { model: dir, sequences: [[1, 2]] })).rejects.toThrow(/model_type "gpt2" is not supported/);
      await expect(evaluate(localEnv, { model: STORIES, sequences: [[1, 2], [3, 512]] })).rejects.toThrow(/sequence 1, position 1: token id 512 is outside .*vocabulary of 512/);
      await expect(evaluate(localEnv, { model: STORIES, sequences: [[1, 2], []] })).rejects.toThrow(/sequence 1 has 0 tokens/);
      await expect(evaluate(localEnv, { model: STORIES, sequences: [[7]] })).rejects.toThrow(InputError);
      await expect(evaluate(localEnv, { model: STORIES, sequences: [] })).rejects.toThrow(/no sequences/);
      const partial = path.join(tmp, 'partial');
      const tensors = await loadTensors(STORIES);
      await writeCheckpoint(
        partial,
        [...tensors].filter(([n]) => n !== 'model.layers.3.mlp.up_proj.weight').map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape, bytes: t.bytes })),
        { 'config.json': await readFile(path.join(STORIES, 'config.json'), 'utf8') },
      );
      await expect(evaluate(localEnv, { model: partial, sequences: [[1, 2]] })).rejects.toThrow(/"model.layers.3.mlp.up_proj.weight" is missing/);
    }));
});

/**
 * A character-level BPE tokenizer (no merges) over a few characters, with a BOS token its
 * post-processor adds; ids stay below stories260K's vocabulary of 512. Tests tokenize by hand with
 * the same table.
 */
const CHARS = ' abcdefghijklmnopqrstuvwxyz.,<>|!?';
const BOS = 1;
const charId = (ch: string) => 10 + CHARS.indexOf(ch);
function tokenizerJson(): string {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': BOS };
  for (const ch of CHARS) vocab[ch] = charId(ch);
  return JSON.stringify({
    version: '1.0',
    added_tokens: [
      { id: 0, content: '<unk>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
      { id: BOS, content: '<s>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
    ],
    normalizer: null,
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [BOS], tokens: ['<s>'] } },
    },
    decoder: null,
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: [] },
  });
}
const byHand = (text: string) => [...text].map(charId);

describe('paramdelta eval (CLI)', () => {
  it('--json: the figures for token input, and --against adds agreement and KL', async () => {
    const tokens = path.join(fixturesDir, 'eval/tokens-512.json');
    const r = await runCli(['eval', '--model', STORIES, '--tokens', tokens, '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    const e = expected['stories260K-f32'];
    expect(j.tokens).toBe(110);
    expect(j.sequences.map((s: { tokens: number }) => s.tokens)).toEqual([63, 39, 8]);
    j.sequences.forEach((s: { meanLoss: number }, i: number) => expect(Math.abs(s.meanLoss - e.sequences[i].mean_loss) / e.sequences[i].mean_loss).toBeLessThan(1e-4));
    expect(j.perplexity).toBeCloseTo(Math.exp(j.meanLoss), 8);
    expect(j.agreement).toBeUndefined();
    const a = JSON.parse((await runCli(['eval', '--model', STORIES, '--tokens', tokens, '--against', STORIES, '--json'])).stdout);
    expect(a).toMatchObject({ agreement: 1, kl: 0 });
    // Same figures; the pair head runs other chunk sizes, so float32 sums may differ in the last bits.
    expect(Math.abs(a.meanLoss - j.meanLoss) / j.meanLoss).toBeLessThan(1e-6);
    const text = await runCli(['eval', '--model', STORIES, '--tokens', tokens]);
    expect(text.stdout).toMatch(/mean loss 10\.51\d\d nats, perplexity .* over 110 tokens in 3 sequences/);
  });

  it('--text: plain documents and chat messages go through the model\'s tokenizer and chat template', () =>
    withTempDir(async (tmp) => {
      const model = await copyModel(STORIES, path.join(tmp, 'model'));
      await writeFile(path.join(model, 'tokenizer.json'), tokenizerJson());
      await writeFile(
        path.join(model, 'tokenizer_config.json'),
        JSON.stringify({ bos_token: '<s>', chat_template: "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}|{% endfor %}" }),
      );
      const plain = path.join(tmp, 'plain.txt');
      await writeFile(plain, 'once upon a time.\nthere was a cat.\n\n\nthe end!\n');
      const chat = path.join(tmp, 'chat.jsonl');
      await writeFile(chat, [JSON.stringify({ messages: [{ role: 'user', content: 'hi there' }, { role: 'assistant', content: 'hello, friend.' }] }), JSON.stringify({ text: 'just text' }), ''].join('\n'));
      const byTokens = async (seqs: number[][]) => {
        const f = path.join(tmp, `t${Math.random()}.json`);
        await writeFile(f, JSON.stringify(seqs));
        return JSON.parse((await runCli(['eval', '--model', model, '--tokens', f, '--json'])).stdout);
      };

      const p = await runCli(['eval', '--model', model, '--text', plain, '--json']);
      expect(p.stderr).toBe('');
      const pj = JSON.parse(p.stdout);
      // One blank line or more separates documents; the newline inside the first is not in the toy
      // vocabulary, so it becomes <unk> (0).
      const plainSeqs = [[BOS, ...byHand('once upon a time.'), 0, ...byHand('there was a cat.')], [BOS, ...byHand('the end!')]];
      expect(pj.sequences.map((s: { tokens: number }) => s.tokens)).toEqual(plainSeqs.map((s) => s.length - 1));
      expect(pj.meanLoss).toBeCloseTo((await byTokens(plainSeqs)).meanLoss, 10);

      const c = JSON.parse((await runCli(['eval', '--model', model, '--text', chat, '--json'])).stdout);
      // The template writes {{ bos_token }}, which tokenizes as the special token; no second BOS is added.
      const chatSeqs = [[BOS, ...byHand('<user>hi there|<assistant>hello, friend.|')], [BOS, ...byHand('just text')]];
      expect(c.sequences.map((s: { tokens: number }) => s.tokens)).toEqual(chatSeqs.map((s) => s.length - 1));
      expect(c.meanLoss).toBeCloseTo((await byTokens(chatSeqs)).meanLoss, 10);
      expect(c.probes.source).toBe('text');
    }));

  it('exits 2 naming the problem: no tokenizer for --text, both inputs, a token file that is not one', () =>
    withTempDir(async (tmp) => {
      const txt = path.join(tmp, 'a.txt');
      await writeFile(txt, 'hello');
      const r = await runCli(['eval', '--model', STORIES, '--text', txt]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/stories260K-f32: no tokenizer\.json/);
      expect((await runCli(['eval', '--model', STORIES, '--text', txt, '--tokens', txt])).code).toBe(2);
      const bad = path.join(tmp, 'bad.json');
      await writeFile(bad, '[[1, 2], [3, -1]]');
      const b = await runCli(['eval', '--model', STORIES, '--tokens', bad]);
      expect(b.code).toBe(2);
      expect(b.stderr).toMatch(/bad\.json: sequence 1, position 1: -1 is not a token id/);
      await mkdir(path.join(tmp, 'empty'));
      expect((await runCli(['eval', '--model', path.join(tmp, 'empty'), '--tokens', bad])).code).toBe(2);
    }));
});

/** float32 → binary16, round to nearest even (normal range only; these weights are small). */
function toHalf(x: Float32Array): Uint16Array {
  const out = new Uint16Array(x.length);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < x.length; i++) {
    f[0] = x[i];
    const b = u[0];
    const sign = (b >>> 16) & 0x8000;
    const exp = ((b >>> 23) & 0xff) - 127 + 15;
    if (exp <= 0) {
      out[i] = sign; // flush tiny values to zero: still a valid F16 model
      continue;
    }
    let m = (b >>> 13) & 0x3ff;
    const rest = b & 0x1fff;
    let e = exp;
    if (rest > 0x1000 || (rest === 0x1000 && m & 1)) {
      m++;
      if (m === 0x400) {
        m = 0;
        e++;
      }
    }
    out[i] = sign | (Math.min(e, 30) << 10) | m;
  }
  return out;
}

describe('probe sets and the report', () => {
  it('the built-in set: rendered with the chat template when there is one, stand-in tokens when there is no tokenizer', () =>
    withTempDir(async (tmp) => {
      const model = await copyModel(STORIES, path.join(tmp, 'model'));
      await writeFile(path.join(model, 'tokenizer.json'), tokenizerJson());
      await writeFile(path.join(model, 'chat_template.jinja'), '{% for m in messages %}<{{ m.role }}>{{ m.content | lower }}|{% endfor %}');
      const e = await evaluateWithProbes(localEnv, { model, against: STORIES, probes: { builtin: true }, referenceRole: 'old post' });
      expect(e.probes.source).toBe('builtin-chat');
      // Rendered by hand: lower-cased (the template says so), characters outside the toy vocabulary become <unk>.
      const want = BUILTIN_CONVERSATIONS.map((c) => [...c.map((m) => `<${m.role}>${m.content.toLowerCase()}|`).join('')].map((ch) => (CHARS.includes(ch) ? charId(ch) : 0)));
      expect(e.probes.sequences).toEqual(want);
      expect(e.probes.sha256).toBe(createHash('sha256').update(JSON.stringify(want)).digest('hex'));
      // The report: both models' figures on the same probes, the ratio a gate bounds, the hash.
      const r = e.report;
      expect(r).toMatchObject({ format: EVAL_REPORT_FORMAT, probes: { source: 'builtin-chat', sequences: want.length, sha256: e.probes.sha256 }, reference: { ref: STORIES, role: 'old post' } });
      expect(r.model.tokens).toBe(want.reduce((a, q) => a + q.length - 1, 0));
      expect(r.lossRatio).toBeCloseTo(r.model.meanLoss / r.reference!.meanLoss, 12);
      expect(r.agreement).toBe(1); // same weights: only the files beside them differ
      expect(r.kl).toBe(0);

      const bare = await evaluateWithProbes(localEnv, { model: STORIES, against: QWEN, probes: { builtin: true } });
      expect(bare.probes.source).toBe('builtin-tokens');
      expect(bare.probes.sequences.flat().every((t) => t < 260)).toBe(true); // inside both vocabularies
      expect(bare.report.sharedVocab).toBe(260);
    }));

  it('a probe file of either kind is told apart by its content', () =>
    withTempDir(async (tmp) => {
      const model = await copyModel(STORIES, path.join(tmp, 'model'));
      await writeFile(path.join(model, 'tokenizer.json'), tokenizerJson());
      await writeFile(path.join(tmp, 'p.json'), JSON.stringify([[1, 20, 30], [4, 5]]));
      await writeFile(path.join(tmp, 'p.txt'), 'abc');
      const t = await evaluateWithProbes(localEnv, { model, probes: { file: path.join(tmp, 'p.json') } });
      expect(t.probes).toMatchObject({ source: 'tokens', sequences: [[1, 20, 30], [4, 5]] });
      const x = await evaluateWithProbes(localEnv, { model, probes: { file: path.join(tmp, 'p.txt') } });
      expect(x.probes).toMatchObject({ source: 'text', sequences: [[BOS, ...byHand('abc')]] });
      await expect(evaluateWithProbes(localEnv, { model, probes: { file: path.join(tmp, 'none.txt') } })).rejects.toThrow(/none\.txt: no such file/);
      // A model whose index is not written yet (a posted model waiting on its gate), read through another index name.
      const pending = await copyModel(path.join(fixturesDir, 'eval/llama3-rope'), path.join(tmp, 'pending'));
      const { rename } = await import('node:fs/promises');
      await rename(path.join(pending, 'model.safetensors.index.json'), path.join(pending, 'pending.index.json'));
      const seqs = await tokensOf('eval/tokens-300.json');
      const p = await evaluateWithProbes(localEnv, { model: pending, modelLayout: { single: 'model.safetensors', index: 'pending.index.json' }, probes: { tokens: path.join(fixturesDir, 'eval/tokens-300.json') } });
      p.result.model.sequences.forEach((sq, i) => expect(Math.abs(sq.meanLoss - expected['llama3-rope'].sequences[i].mean_loss) / expected['llama3-rope'].sequences[i].mean_loss).toBeLessThan(1e-4));
      expect(p.probes.sequences).toEqual(seqs);
    }));
});
