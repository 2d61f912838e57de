// Evaluation of a causal LM on token sequences: mean next-token cross-entropy and perplexity, and,
// against a reference model, top-1 agreement and KL(reference ‖ model) on the same positions.
import { MODEL_LAYOUT, openCheckpoint, type CheckpointLayout } from '../format/checkpoint.js';
import type { ExecEnv } from '../ops/env.js';
import { InputError } from '../errors.js';
import { modelSpec, type ModelSpec } from './arch.js';
import { DEFAULT_LIMITS, forwardHidden, headPass, planBatches, rowLayout, weightArenaElements, type BatchLimits, type HeadStats, type RowLayout } from './forward.js';
import { EvalRuntime, type RuntimeOptions } from './runtime.js';

export interface SequenceFigures {
  meanLoss: number;
  /** Positions scored: the sequence's length − 1. */
  tokens: number;
  /** With a reference: the share of positions whose top-1 next token is the same in both. */
  agreement?: number;
  /** With a reference: mean KL(reference ‖ model) over the positions, in nats. */
  kl?: number;
  /** With `positions`: log p(token[t+1] | tokens[0..t]) for t = 0 … T−2. */
  targetLogprobs?: number[];
  /** With `positions`: the most likely next token at each position. */
  argmax?: number[];
}

export interface ModelFigures {
  ref: string;
  modelType: string;
  parameters: number;
  vocab: number;
  /** Mean of −log p(token[t+1] | tokens[0..t]) over every scored position of every sequence, in nats. */
  meanLoss: number;
  perplexity: number;
  /** Positions scored in all: Σ (length − 1). */
  tokens: number;
  /** In input order. */
  sequences: SequenceFigures[];
}

export interface EvalResult {
  model: ModelFigures;
  /** The reference model's own figures on the same positions, when one was given. */
  against?: ModelFigures;
  agreement?: number;
  kl?: number;
  /** Vocabulary rows agreement and KL were computed over (the rows both models share). */
  sharedVocab?: number;
  engine: { provider: string; threads: number; seconds: number; batchTokens: number };
}

export interface EvalOptions extends RuntimeOptions {
  /** Padded tokens per decoder-layer call; also PARAMDELTA_EVAL_BATCH_TOKENS. */
  batchTokens?: number;
  /** Other limits on what one kernel call holds (tests shrink them to exercise the blocking). */
  limits?: Partial<BatchLimits>;
  /** Also return per-position log-probabilities and argmax tokens. */
  positions?: boolean;
  /** After each layer of each model. */
  onLayer?: (model: string, layer: number, layers: number) => void;
  /** Once every input is checked, with about how many weight bytes will be read (for a progress bar). */
  onPlan?: (bytes: number) => void;
}

export interface EvalRequest {
  model: string;
  /** Where the model's index is, when not at model.safetensors.index.json (see openEvalModel). */
  modelLayout?: CheckpointLayout;
  against?: string;
  sequences: number[][];
}

/**
 * Opens a model for evaluation: its checkpoint, architecture and every tensor checked. `layout`
 * names the index to read, for a model whose model.safetensors.index.json is not written yet (a
 * posted model waiting on its gate).
 */
export async function openEvalModel(env: Pick<ExecEnv, 'resolve'>, ref: string, layout: CheckpointLayout = MODEL_LAYOUT): Promise<ModelSpec> {
  return modelSpec(ref, await openCheckpoint(env.resolve(ref), layout));
}

/** Checks token sequences against a model: at least 2 tokens each, ids inside its vocabulary, within its positions. */
export function checkSequences(sequences: number[][], spec: ModelSpec, what = 'sequence'): void {
  if (sequences.length === 0) throw new InputError(`no ${what}s to evaluate`);
  sequences.forEach((seq, i) => {
    if (seq.length < 2) throw new InputError(`${what} ${i} has ${seq.length} token${seq.length === 1 ? '' : 's'}; evaluation needs at least 2`);
    if (spec.maxPositions !== null && seq.length > spec.maxPositions) {
      throw new InputError(`${what} ${i} has ${seq.length} tokens, more than ${spec.ref}'s max_position_embeddings ${spec.maxPositions}`);
    }
    for (let t = 0; t < seq.length; t++) {
      const id = seq[t];
      if (!Number.isInteger(id) || id < 0 || id >= spec.vocab) {
        throw new InputError(`${what} ${i}, position ${t}: token id ${id} is outside ${spec.ref}'s vocabulary of ${spec.vocab}`);
      }
    }
  });
}

function batchTokensFrom(env: NodeJS.ProcessEnv = process.env): number | undefined {
  const t = Number(env.PARAMDELTA_EVAL_BATCH_TOKENS);
  return Number.isInteger(t) && t > 0 ? t : undefined;
}

/**
 * Evaluates `model` (and `against`, when given) on token sequences, layer-streamed: every model is
 * opened and checked, and every sequence checked against it, before any weights are read.
 */
export async function evaluate(env: ExecEnv, req: EvalRequest, opts: EvalOptions = {}): Promise<EvalResult> {
  const t0 = performance.now();
  const specs = [await openEvalModel(env, req.model, req.modelLayout)];
  if (req.against !== undefined) specs.push(await openEvalModel(env, req.against));
  for (const s of specs) checkSequences(req.sequences, s);
  opts.onPlan?.(specs.reduce((a, s) => a + s.checkpoint.tensors.reduce((b, t) => b + t.byteLength, 0) + (s.tied ? s.headTensor.byteLength : 0), 0));

  const rt = await EvalRuntime.create(opts);
  const limits: BatchLimits = {
    ...DEFAULT_LIMITS[rt.provider],
    ...opts.limits,
    ...(opts.batchTokens ?? batchTokensFrom() ? { batchTokens: opts.batchTokens ?? batchTokensFrom() } : {}),
  };
  try {
    const lengths = req.sequences.map((q) => q.length);
    // One batch plan for every model, so their rows line up in the head.
    const layout = rowLayout(planBatches(lengths, Math.max(...specs.map((s) => s.heads)), limits), lengths.length);
    // The target of each row: the next token, or −1 where nothing is scored (last position, padding).
    const targets = new Int32Array(layout.total).fill(-1);
    req.sequences.forEach((q, i) => targets.set(q.slice(1), layout.rowOf(i, 0)));
    const total = lengths.reduce((a, n) => a + n - 1, 0);
    const fopts = { limits, onBytes: env.onProgress, arena: new Float32Array(weightArenaElements(specs)) };
    const hidden: Float32Array[][] = [];
    for (const s of specs) {
      hidden.push(await forwardHidden(rt, s, req.sequences, layout.batches, { ...fopts, onLayer: (l, n) => opts.onLayer?.(s.ref, l, n) }));
    }
    const head = await headPass(rt, specs.map((spec, i) => ({ spec, hidden: hidden[i] })), layout, targets, fopts);

    const figures = specs.map((s, i) => modelFigures(s, head.stats[i], lengths, layout, !!opts.positions));
    const result: EvalResult = {
      model: figures[0],
      engine: { provider: rt.provider, threads: rt.threads, seconds: 0, batchTokens: limits.batchTokens },
    };
    if (head.shared) {
      const [m, r] = head.shared.stats;
      const agree = (p: number) => (m.argmax[p] === r.argmax[p] ? 1 : 0);
      let agreeAll = 0;
      let klAll = 0;
      req.sequences.forEach((_, i) => {
        let a = 0;
        let k = 0;
        for (let p = layout.rowOf(i, 0); p < layout.rowOf(i, 0) + lengths[i] - 1; p++) {
          a += agree(p);
          k += head.shared!.kl[p];
        }
        agreeAll += a;
        klAll += k;
        figures[0].sequences[i].agreement = a / (lengths[i] - 1);
        figures[0].sequences[i].kl = k / (lengths[i] - 1);
      });
      result.against = figures[1];
      result.agreement = agreeAll / total;
      result.kl = klAll / total;
      result.sharedVocab = Math.min(...specs.map((s) => s.vocab));
    }
    result.engine.seconds = (performance.now() - t0) / 1000;
    return result;
  } finally {
    await rt.dispose();
  }
}

function modelFigures(s: ModelSpec, st: HeadStats, lengths: number[], layout: RowLayout, positions: boolean): ModelFigures {
  let sum = 0;
  let count = 0;
  const sequences = lengths.map((n, i): SequenceFigures => {
    let seqSum = 0;
    const lp: number[] = [];
    const am: number[] = [];
    for (let p = layout.rowOf(i, 0); p < layout.rowOf(i, 0) + n - 1; p++) {
      const logprob = st.target[p] - st.lse[p];
      seqSum -= logprob;
      if (positions) {
        lp.push(logprob);
        am.push(st.argmax[p]);
      }
    }
    sum += seqSum;
    count += n - 1;
    const f: SequenceFigures = { meanLoss: seqSum / (n - 1), tokens: n - 1 };
    if (positions) Object.assign(f, { targetLogprobs: lp, argmax: am });
    return f;
  });
  const meanLoss = sum / count;
  return { ref: s.ref, modelType: s.modelType, parameters: s.parameters, vocab: s.vocab, meanLoss, perplexity: Math.exp(meanLoss), tokens: count, sequences };
}
