// paramdelta-eval.json: the figures of one evaluation, written beside a model (by the pipeline,
// beside each posted model) and printed by `paramdelta eval --json` in a flatter form.
import { TOOL_VERSION } from '../version.js';
import type { EvalResult, ModelFigures } from './evaluate.js';
import type { ProbeSet } from './probes.js';

export const EVAL_REPORT = 'paramdelta-eval.json';
export const EVAL_REPORT_FORMAT = 'paramdelta-eval/1';

export interface ReportModel {
  ref: string;
  meanLoss: number;
  perplexity: number;
  tokens: number;
  sequences: { meanLoss: number; tokens: number }[];
}

export interface EvalReport {
  format: typeof EVAL_REPORT_FORMAT;
  tool: string;
  createdAt: string;
  /** The model evaluated (in the pipeline: the posted model). */
  model: ReportModel;
  /** The reference it was compared with (the old post model, or the new base), on the same positions. */
  reference?: ReportModel & { role?: string };
  /** Top-1 next-token agreement between model and reference. */
  agreement?: number;
  /** Mean KL(reference ‖ model), nats per position. */
  kl?: number;
  /** model.meanLoss ÷ reference.meanLoss, what a gate's maxLossRatio bounds. */
  lossRatio?: number;
  sharedVocab?: number;
  probes: { source: string; sequences: number; tokens: number; sha256: string };
  engine: EvalResult['engine'];
}

function reportModel(f: ModelFigures): ReportModel {
  return { ref: f.ref, meanLoss: f.meanLoss, perplexity: f.perplexity, tokens: f.tokens, sequences: f.sequences.map((s) => ({ meanLoss: s.meanLoss, tokens: s.tokens })) };
}

/** The report for a result; `referenceRole` says what the reference was ("old post", "new base"). */
export function evalReport(r: EvalResult, probes: ProbeSet, referenceRole?: string, now = new Date()): EvalReport {
  const report: EvalReport = {
    format: EVAL_REPORT_FORMAT,
    tool: TOOL_VERSION,
    createdAt: now.toISOString(),
    model: reportModel(r.model),
    probes: { source: probes.source, sequences: probes.sequences.length, tokens: r.model.tokens, sha256: probes.sha256 },
    engine: r.engine,
  };
  if (r.against) {
    report.reference = { ...reportModel(r.against), ...(referenceRole ? { role: referenceRole } : {}) };
    report.agreement = r.agreement;
    report.kl = r.kl;
    report.lossRatio = r.model.meanLoss / r.against.meanLoss;
    report.sharedVocab = r.sharedVocab;
  }
  return report;
}
