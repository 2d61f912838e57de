// Evaluation, as the CLI and the pipeline call it: probes from a file or built in, then the figures.
import type { ExecEnv } from '../ops/env.js';
import type { CheckpointLayout } from '../format/checkpoint.js';
import { InputError } from '../errors.js';
import { evaluate, openEvalModel, type EvalOptions, type EvalResult } from './evaluate.js';
import { builtinProbes, parseTokenFile, probeSet, probesFromText, type ProbeSet } from './probes.js';
import { evalReport, type EvalReport } from './report.js';

export * from './evaluate.js';
export * from './probes.js';
export * from './report.js';
export * from './gate.js';
export { EVAL_MODEL_TYPES } from './arch.js';
export { providerFrom, EVAL_PROVIDERS, type EvalProvider } from './runtime.js';

/** Where the probes come from: a token file, a text file, a file of either kind (told apart by content), or the built-in set. */
export type ProbeInput = { tokens: string } | { text: string } | { file: string } | { builtin: true };

/** Reads a small file named by a reference (a path, or a blob reference), through the resolver. */
export async function readInputFile(env: Pick<ExecEnv, 'resolve'>, ref: string): Promise<string> {
  const cut = ref.lastIndexOf('/');
  const folder = cut < 0 ? '.' : ref.slice(0, cut) || '/';
  const file = ref.slice(cut + 1);
  if (!file) throw new InputError(`${ref}: names a folder, not a file`);
  const store = env.resolve(folder);
  if (!(await store.exists(file))) throw new InputError(`${ref}: no such file`);
  return store.readText(file);
}

function looksLikeTokens(text: string): boolean {
  return /^\s*\[\s*(\[|\])/.test(text);
}

/**
 * The probe set for evaluating `model` (text goes through its tokenizer and chat template). With a
 * reference, built-in stand-in tokens stay inside both vocabularies.
 */
export async function loadProbes(env: Pick<ExecEnv, 'resolve'>, model: string, input: ProbeInput, against?: string, modelLayout?: CheckpointLayout): Promise<ProbeSet> {
  const spec = await openEvalModel(env, model, modelLayout);
  const ref = against === undefined ? null : await openEvalModel(env, against);
  const maxPositions = ref?.maxPositions != null && spec.maxPositions != null ? Math.min(ref.maxPositions, spec.maxPositions) : (spec.maxPositions ?? ref?.maxPositions ?? null);
  if ('builtin' in input) return builtinProbes(env.resolve(model), Math.min(spec.vocab, ref?.vocab ?? Infinity), maxPositions);
  const where = 'tokens' in input ? input.tokens : 'text' in input ? input.text : input.file;
  const text = await readInputFile(env, where);
  if ('tokens' in input || ('file' in input && looksLikeTokens(text))) return probeSet('tokens', parseTokenFile(text, where));
  return probesFromText(env.resolve(model), text, where, maxPositions);
}

export interface Evaluation {
  result: EvalResult;
  probes: ProbeSet;
  /** What to write as paramdelta-eval.json. */
  report: EvalReport;
}

/** Loads the probes, evaluates, and builds the report: the whole of `paramdelta eval` and of the pipeline's evaluateModel activity. */
export async function evaluateWithProbes(
  env: ExecEnv,
  req: { model: string; modelLayout?: CheckpointLayout; against?: string; probes: ProbeInput; referenceRole?: string },
  opts: EvalOptions = {},
): Promise<Evaluation> {
  const probes = await loadProbes(env, req.model, req.probes, req.against, req.modelLayout);
  const result = await evaluate(env, { model: req.model, modelLayout: req.modelLayout, against: req.against, sequences: probes.sequences }, opts);
  return { result, probes, report: evalReport(result, probes, req.referenceRole) };
}
