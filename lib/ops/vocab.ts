// Vocabulary-sized tensors and tied heads (issue 9): which rows of embed_tokens and lm_head a delta holds
// as differences or carries as post's own values, and where each row lands in an applied model. Pure
// planning over headers and token tables: the rows themselves stream through lib/ops/stream.ts.
import type { Checkpoint, CheckpointTensor } from '../format/checkpoint.js';
import type { DType } from '../format/dtype.js';
import type { AddedToken, TokenTable } from '../format/tokenizer.js';
import type { DeltaVocabRecord, ModelVocabRecord } from './manifest.js';
import type { ApplyTensorPlan, OpenedDelta, TensorRef } from './plan-types.js';

export const HEAD = 'lm_head.weight';
/** A delta's carried rows of vocabulary tensor X are stored as tensor `carried:X`. */
export const CARRIED_PREFIX = 'carried:';
const EMBED = /(^|\.)embed_tokens\.weight$/;

/** How apply pairs the delta's rows with the new base's: by token content (default) or by index. */
export type VocabPairing = 'tokens' | 'rows';
export const VOCAB_PAIRINGS: readonly VocabPairing[] = ['tokens', 'rows'];

export const isVocabTensor = (name: string): boolean => name === HEAD || EMBED.test(name);
export const embedOf = (c: { tensors: readonly CheckpointTensor[] }): CheckpointTensor | undefined => c.tensors.find((t) => EMBED.test(t.name));

/** A model whose head is its embed_tokens: tie_word_embeddings, or no lm_head at all. */
export function isTied(c: Checkpoint): boolean {
  return embedOf(c) !== undefined && (c.config?.tie_word_embeddings === true || !c.byName.has(HEAD));
}

/** The tensors that hold weights: a tied model's lm_head (if its file has one) is its embed_tokens. */
export function weightTensors(c: Checkpoint): CheckpointTensor[] {
  return isTied(c) ? c.tensors.filter((t) => t.name !== HEAD) : c.tensors;
}

const ref = (t: CheckpointTensor, row = 0): TensorRef => ({ file: t.file, offset: t.offset + row * rowBytes(t), dtype: t.dtype });
const rowElements = (t: { shape: readonly number[] }) => t.shape.slice(1).reduce((a, b) => a * b, 1);
const rowBytes = (t: CheckpointTensor) => (t.shape[0] ? t.byteLength / t.shape[0] : 0);
const sameRowShape = (a: { shape: readonly number[] }, b: { shape: readonly number[] }) =>
  a.shape.length === b.shape.length && a.shape.length >= 1 && a.shape.slice(1).every((d, i) => d === b.shape[i + 1]);

// ---------------------------------------------------------------- compute

export interface TensorPair {
  name: string;
  base: CheckpointTensor;
  post: CheckpointTensor;
}

/**
 * Pairs base and post tensors by name, reading a tied model's head as its embed_tokens: base tied and post
 * untied gives Δ_head = post lm_head − base embed_tokens; base untied and post tied, post embed_tokens − base lm_head.
 */
export function pairForCompute(base: Checkpoint, post: Checkpoint): { pairs: TensorPair[]; problems: string[]; tied: { base: boolean; post: boolean } } {
  const tied = { base: isTied(base), post: isTied(post) };
  const B = weightTensors(base);
  const P = weightTensors(post);
  const inB = new Set(B.map((t) => t.name));
  const inP = new Map(P.map((t) => [t.name, t]));
  const pairs: TensorPair[] = [];
  const problems: string[] = [];
  for (const b of B) {
    const p = inP.get(b.name) ?? (b.name === HEAD && tied.post ? embedOf(post) : undefined);
    if (p) pairs.push({ name: b.name, base: b, post: p });
    else problems.push(`tensor "${b.name}" is in the base (${base.store.ref}) but not in post (${post.store.ref})`);
  }
  for (const p of P) {
    if (inB.has(p.name)) continue;
    const b = p.name === HEAD && tied.base ? embedOf(base) : undefined;
    if (b) pairs.push({ name: HEAD, base: b, post: p });
    else problems.push(`tensor "${p.name}" is in post (${post.store.ref}) but not in the base (${base.store.ref})`);
  }
  return { pairs, problems, tied };
}

/** A vocabulary tensor where post has more rows than the base: V and V_post; null when the shapes are not that. */
export function addedRows(pair: TensorPair): { rows: number; postRows: number } | null {
  const { base: b, post: p } = pair;
  if (!isVocabTensor(pair.name) || !sameRowShape(b, p) || p.shape[0] <= b.shape[0]) return null;
  return { rows: b.shape[0], postRows: p.shape[0] };
}

/** Post's rows [V, V_post) of a vocabulary tensor, as their own tensor. */
export function carriedSlice(pair: TensorPair): { name: string; shape: number[]; elements: number; post: TensorRef } {
  const V = pair.base.shape[0];
  const shape = [pair.post.shape[0] - V, ...pair.post.shape.slice(1)];
  return { name: CARRIED_PREFIX + pair.name, shape, elements: shape.reduce((a, b) => a * b, 1), post: ref(pair.post, V) };
}

/** delta.json's vocab record: the rows, post's tokens for the carried rows, and the base's tokens as a difference from post's. */
export function deltaVocabRecord(
  rows: number, postRows: number, carried: Record<string, string>, baseTokens: TokenTable | null, postTokens: TokenTable | null,
): DeltaVocabRecord {
  const tok = (t: TokenTable | null, i: number) => t?.tokens[i] ?? null;
  const except: Record<string, string | null> = {};
  if (baseTokens) for (let i = 0; i < rows; i++) if (tok(baseTokens, i) !== tok(postTokens, i)) except[String(i)] = tok(baseTokens, i);
  return {
    baseRows: rows,
    postRows,
    ...(postRows > rows ? { carried: { tensors: carried, tokens: Array.from({ length: postRows - rows }, (_, k) => tok(postTokens, rows + k)) } } : {}),
    baseTokens: baseTokens ? { file: postTokens ? 'tokenizer.json' : null, except } : null,
  };
}

// ---------------------------------------------------------------- apply

/** What apply's vocabulary planning reads besides headers: token tables, and how to pair rows. */
export interface ApplyVocabInputs {
  pairing: VocabPairing;
  /** The new base's tokenizer.json table, or null. */
  newBase: TokenTable | null;
  /** Each delta's copy of post's tokenizer.json table, or null. */
  deltas: (TokenTable | null)[];
  /** Whether the new base ships tokenizer.json (its tokenizer files then take precedence when rows move). */
  newBaseFiles: readonly string[];
}

export interface TokenizerEdit {
  /** Tokens added to tokenizer.json's added_tokens (and tokenizer_config.json's added_tokens_decoder). */
  append: AddedToken[];
  /** A delta whose tokenizer_config.json's chat template and special tokens go over the new base's. */
  chatFrom: string | null;
  /** Post's token ids that moved, [post id, output id]: generation_config.json's ids follow them. */
  moved: [number, number][];
}

/** generation_config.json with its token ids (bos, eos, pad; a number or a list) renumbered as `moved` says. */
export function renumberGenerationConfig(config: Record<string, unknown>, moved: readonly [number, number][]): Record<string, unknown> {
  const map = new Map(moved);
  const renumber = (v: unknown): unknown => (typeof v === 'number' ? (map.get(v) ?? v) : Array.isArray(v) ? v.map(renumber) : v);
  const out = { ...config };
  for (const k of ['bos_token_id', 'eos_token_id', 'pad_token_id', 'decoder_start_token_id']) if (k in out) out[k] = renumber(out[k]);
  return out;
}

export interface ApplyVocabPlan {
  /** Output tensors for the vocabulary tensors, by name (lm_head last when the new base has none). */
  tensors: ApplyTensorPlan[];
  /** Delta tensors this plan consumed (the generic name-by-name pairing skips them). */
  consumed: Set<string>[];
  record?: ModelVocabRecord;
  tied: boolean;
  /** Whether the new base or a delta's models tie their head (then the output's tie is recorded). */
  tiedAnywhere: boolean;
  config: Record<string, unknown>;
  /** Non-null: the output takes the new base's tokenizer files, edited so. */
  tokenizer: TokenizerEdit | null;
}

const TORCH_DTYPE: Partial<Record<DType, string>> = { BF16: 'bfloat16', F16: 'float16', F32: 'float32', F64: 'float64' };

/** The base tokens a delta recorded, rows [0, V); null when unknown. */
export function recordedBaseTokens(record: DeltaVocabRecord | undefined, table: TokenTable | null): (string | null)[] | null {
  const bt = record?.baseTokens;
  if (!record || !bt) return null;
  const from = bt.file ? table : null;
  return Array.from({ length: record.baseRows }, (_, i) => (String(i) in bt.except ? bt.except[String(i)] : (from?.tokens[i] ?? null)));
}

type RowSource = { kind: 'applied' | 'newBase'; row: number } | { kind: 'carried'; k: number };

/**
 * Plans the vocabulary tensors of an apply: rows [0, min(V, V_new)) get new base + Σ scale·Δ, the new base's
 * rows beyond V stay its own, carried rows go to the new base's row for the same token or are appended;
 * a tied head is read as embed_tokens. Returns null when the new base has no embed_tokens.
 */
export function planApplyVocab(base: Checkpoint, deltas: OpenedDelta[], inputs: ApplyVocabInputs, problems: string[]): ApplyVocabPlan | null {
  const embB = embedOf(base);
  const consumed = deltas.map(() => new Set<string>());
  if (!embB) return null;
  const tiedNew = isTied(base);
  const headB = tiedNew ? embB : base.byName.get(HEAD)!;
  const Vnew = embB.shape[0];
  const H = rowElements(embB);
  const start = problems.length;

  // Each delta's Δ for the embedding and for the head (a tied delta's head Δ is its embed Δ), and its carried rows.
  const per = deltas.map((d, i) => {
    const c = d.ckpt;
    const emb = c.byName.get(embB.name);
    const head = c.byName.get(HEAD) ?? emb;
    const rec = d.manifest.vocab;
    const carriedNames = rec?.carried?.tensors ?? {};
    const carriedEmb = carriedNames[embB.name] ? c.byName.get(carriedNames[embB.name]) : undefined;
    const carriedHead = carriedNames[HEAD] ? c.byName.get(carriedNames[HEAD]) : carriedEmb;
    for (const t of [emb, c.byName.get(HEAD), carriedEmb, carriedHead]) if (t) consumed[i].add(t.name);
    for (const t of c.tensors) if (t.name.startsWith(CARRIED_PREFIX)) consumed[i].add(t.name);
    const rows = rec?.baseRows ?? emb?.shape[0] ?? Vnew;
    for (const t of [emb, c.byName.get(HEAD)]) {
      if (t && (!sameRowShape(t, embB) || t.shape[0] !== rows)) {
        problems.push(`delta ${d.ref}: tensor "${t.name}" has shape [${t.shape}]; the new base's ${embB.name} has rows of [${embB.shape.slice(1)}] and the delta's base had ${rows} rows`);
      }
    }
    const carried = rec?.carried ? { emb: carriedEmb, head: carriedHead, tokens: rec.carried.tokens } : null;
    if (rec?.carried && (!carriedEmb || carriedEmb.shape[0] !== rec.carried.tokens.length)) {
      problems.push(`delta ${d.ref}: delta.json records ${rec.carried.tokens.length} carried rows of "${embB.name}", but its tensor "${carriedNames[embB.name]}" is missing or has another shape`);
    }
    return { d, i, emb, head, carried, rows };
  });
  const V = per.length ? per[0].rows : Vnew;
  for (const p of per) if (p.rows !== V) problems.push(`delta ${p.d.ref} was computed on a base of ${p.rows} rows, delta ${per[0].d.ref} on one of ${V}; fuse deltas of one base`);
  const carriers = per.filter((p) => p.carried);
  if (carriers.length > 1) problems.push(`deltas ${carriers.map((p) => p.d.ref).join(', ')} each carry added tokens; apply them one at a time`);
  if (problems.length > start) return null;

  // The new base must agree with the deltas' base on the shared rows.
  const newTokens = inputs.newBase?.tokens ?? null;
  if (inputs.pairing === 'tokens') {
    if (Vnew < V) {
      const d = per[0].d;
      const old = recordedBaseTokens(d.manifest.vocab, inputs.deltas[0]);
      const first = old?.[Vnew] != null ? `; the first token it lacks is ${JSON.stringify(old[Vnew])} (row ${Vnew})` : '';
      problems.push(
        `delta ${d.ref} was computed on a base of ${V} rows, but the new base ${base.store.ref} has ${Vnew}${first}: ` +
          'its vocabulary is smaller; pass --vocab rows to pair rows by index',
      );
    }
    for (const p of per) {
      const old = recordedBaseTokens(p.d.manifest.vocab, inputs.deltas[p.i]);
      if (!old || !newTokens) continue;
      for (let r = 0; r < Math.min(V, Vnew); r++) {
        const a = old[r];
        const b = newTokens[r] ?? null;
        if (a !== null && b !== null && a !== b) {
          problems.push(
            `delta ${p.d.ref} was computed on a base of ${V} rows whose tokenizer disagrees with the new base's (${Vnew} rows, ${base.store.ref}): ` +
              `first at row ${r}, ${JSON.stringify(a)} in the delta's base but ${JSON.stringify(b)} in the new base; pass --vocab rows to pair rows by index`,
          );
          break;
        }
      }
    }
    if (problems.length > start) return null;
  }

  // Where each carried row goes: the new base's row for its token, its own index (padding, or --vocab rows), or the end.
  const A = Math.min(V, Vnew);
  const carrier = carriers[0];
  const tokens = carrier?.carried?.tokens ?? [];
  const byContent = new Map<string, number>();
  if (inputs.pairing === 'tokens' && newTokens) newTokens.forEach((t, r) => t !== null && r < Vnew && !byContent.has(t) && byContent.set(t, r));
  const at = new Map<number, number>(); // output row → carried index
  const placed: { row: number; k: number }[] = [];
  let next = Vnew;
  tokens.forEach((t, k) => {
    const postRow = V + k;
    // Padding pairs by index with a row the new base leaves without a token too (any row, with --vocab rows).
    const byIndex = postRow >= A && postRow < Vnew && (inputs.pairing === 'rows' || (newTokens?.[postRow] ?? null) === null);
    let row = inputs.pairing === 'tokens' && t !== null ? byContent.get(t) : byIndex ? postRow : undefined;
    if (row === undefined || at.has(row)) row = next++;
    at.set(row, k);
    placed.push({ row, k });
  });
  const rowsOut = next;
  const source = (r: number): RowSource => {
    const k = at.get(r);
    if (k !== undefined) return { kind: 'carried', k };
    return { kind: r < A ? 'applied' : 'newBase', row: r };
  };
  // Runs of consecutive rows from one kind of source, each source row following the previous one.
  const runs: { src: RowSource; rows: number }[] = [];
  for (let r = 0; r < rowsOut; r++) {
    const s = source(r);
    const last = runs[runs.length - 1];
    const follows =
      last && last.src.kind === s.kind &&
      (s.kind === 'carried' ? (last.src as { k: number }).k + last.rows === s.k : (last.src as { row: number }).row + last.rows === (s as { row: number }).row);
    if (follows) last.rows++;
    else runs.push({ src: s, rows: 1 });
  }

  const outHead = !tiedNew || deltas.some((d) => d.ckpt.byName.has(HEAD));
  const tensorFor = (name: string, baseT: CheckpointTensor, pick: (p: (typeof per)[number]) => CheckpointTensor | undefined, carriedOf: (p: (typeof per)[number]) => CheckpointTensor | undefined): ApplyTensorPlan => {
    const shape = [rowsOut, ...embB.shape.slice(1)];
    const whole: ApplyTensorPlan = {
      name, shape, elements: rowsOut * H, dtype: baseT.dtype, base: ref(baseT),
      deltas: per.flatMap((p) => (pick(p) ? [{ delta: p.i, ref: ref(pick(p)!), ...(pick(p)!.name !== name ? { tensor: pick(p)!.name } : {}) }] : [])),
    };
    // The common case: every row is new base + Δ, the tensor read whole under its own name.
    if (runs.length === 1 && runs[0].src.kind === 'applied' && baseT.name === name && whole.deltas.every((d) => d.tensor === undefined)) return whole;
    const pieces: ApplyTensorPlan[] = runs.map(({ src, rows }) => {
      const piece = { name, shape: [rows, ...embB.shape.slice(1)], elements: rows * H, dtype: baseT.dtype };
      if (src.kind === 'carried') {
        const c = carriedOf(carrier!)!;
        return { ...piece, base: null, deltas: [{ delta: carrier!.i, ref: ref(c), tensor: c.name, start: src.k * H, scale: 1 }] };
      }
      const deltasHere = src.kind === 'applied' ? whole.deltas.map((d) => ({ ...d, tensor: d.tensor ?? name, start: src.row * H })) : [];
      return { ...piece, base: ref(baseT, src.row), deltas: deltasHere };
    });
    return { ...whole, deltas: [], pieces };
  };
  const tensors = [tensorFor(embB.name, embB, (p) => p.emb, (p) => p.carried?.emb)];
  if (outHead) tensors.push(tensorFor(HEAD, headB, (p) => p.head, (p) => p.carried?.head));

  const config: Record<string, unknown> = {};
  const cfg = base.config ?? {};
  if (cfg.vocab_size !== rowsOut) config.vocab_size = rowsOut;
  // Written where it differs, or where an absent flag would leave the output's tie to the architecture's default.
  const tie = !outHead;
  if (cfg.tie_word_embeddings !== tie && (cfg.tie_word_embeddings !== undefined || tie || tie !== tiedNew)) config.tie_word_embeddings = tie;
  // Recent transformers name it `dtype`.
  const dtypeKey = 'dtype' in cfg && !('torch_dtype' in cfg) ? 'dtype' : 'torch_dtype';
  if (TORCH_DTYPE[embB.dtype] && cfg[dtypeKey] !== TORCH_DTYPE[embB.dtype]) config[dtypeKey] = TORCH_DTYPE[embB.dtype];

  const moved = V !== Vnew || placed.some((p) => p.row !== V + p.k);
  const record: ModelVocabRecord | undefined =
    moved || tokens.length
      ? {
          rows: rowsOut,
          newBaseRows: Vnew,
          deltaBaseRows: V,
          pairing: inputs.pairing,
          applied: A > 0 ? [[0, A]] : [],
          newBase: runs.filter((r) => r.src.kind === 'newBase').map((r) => [(r.src as { row: number }).row, (r.src as { row: number }).row + r.rows] as [number, number]),
          carried: placed.filter((p) => p.row < Vnew).map((p) => ({ row: p.row, postRow: V + p.k, token: tokens[p.k] })),
          appended: placed.filter((p) => p.row >= Vnew).map((p) => ({ row: p.row, postRow: V + p.k, token: tokens[p.k] })),
        }
      : undefined;

  // Rows moved against post's tokenizer: the output takes the new base's tokenizer, with the appended tokens added.
  let tokenizer: TokenizerEdit | null = null;
  if (moved && inputs.newBaseFiles.includes('tokenizer.json')) {
    const table = carrier ? inputs.deltas[carrier.i] : null;
    const append = placed
      .filter((p) => p.row >= Vnew && tokens[p.k] !== null)
      .map((p) => {
        const flags = table?.added.get(V + p.k);
        return { single_word: false, lstrip: false, rstrip: false, normalized: true, special: false, ...flags, id: p.row, content: tokens[p.k]! };
      });
    const chat = deltas.find((d) => d.manifest.files.some((f) => f.file === 'tokenizer_config.json'));
    tokenizer = { append, chatFrom: chat?.ref ?? null, moved: placed.filter((p) => p.row !== V + p.k).map((p) => [V + p.k, p.row]) };
  }
  // The head is worth recording once a tied model is involved.
  const tiedAnywhere = tiedNew || deltas.some((d) => d.manifest.tied?.base || d.manifest.tied?.post || !d.ckpt.byName.has(HEAD));
  return { tensors, consumed, record, tied: !outHead, tiedAnywhere, config, tokenizer };
}

/** tokenizer_config.json keys that carry a chat model's template and special tokens. */
export const CHAT_CONFIG_KEYS = ['chat_template', 'bos_token', 'eos_token', 'pad_token', 'unk_token', 'additional_special_tokens'];

/** The new base's tokenizer_config.json with post's chat template and special tokens, and the appended tokens declared. */
export function mergeTokenizerConfig(newBase: Record<string, unknown>, post: Record<string, unknown> | null, append: readonly AddedToken[]): Record<string, unknown> {
  const out: Record<string, unknown> = { ...newBase };
  if (post) for (const k of CHAT_CONFIG_KEYS) if (k in post) out[k] = post[k];
  if (append.length) {
    const decoder = { ...((newBase.added_tokens_decoder as Record<string, unknown> | undefined) ?? {}) };
    for (const { id, ...rest } of append) decoder[String(id)] = rest;
    out.added_tokens_decoder = decoder;
  }
  return out;
}
