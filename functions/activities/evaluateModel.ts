import { checkpointCompleteness, MODEL_LAYOUT, openCheckpoint } from '../../lib/format/checkpoint.js';
import { SafetensorsError } from '../../lib/format/safetensors.js';
import { InputError } from '../../lib/errors.js';
import { DELTA_MANIFEST, modelIdentity, parseDeltaManifest, type DeltaManifest } from '../../lib/ops/manifest.js';
import { outputTags } from '../../lib/ops/outputs.js';
import { readRegistration } from '../../lib/ops/registry.js';
import {
  EVAL_REPORT, GATE_FILE, GATE_FORMAT, PENDING_LAYOUT, evaluateWithProbes, gateFailures, gateIsEmpty, indexState, publishIndex,
  type GateRecord, type ProbeInput,
} from '../../lib/eval/index.js';
import type { EvaluateModelInput, EvaluationSummary } from '../contracts.js';
import { pipeline, type Pipeline } from '../pipeline.js';
import * as register from '../app.js';

/**
 * The old post model, when it is still where delta.json says it was, complete, and the same model
 * (its tensor signature unchanged); otherwise null.
 */
async function oldPost(p: Pipeline, manifest: DeltaManifest): Promise<string | null> {
  const recorded = manifest.sources?.post;
  if (!recorded) return null;
  try {
    const ref = p.ref('post', recorded);
    const store = p.env.resolve(ref);
    if (!(await checkpointCompleteness(store)).complete) return null;
    return modelIdentity(await openCheckpoint(store)).signature === manifest.post.signature ? ref : null;
  } catch (e) {
    if (e instanceof InputError || e instanceof SafetensorsError) return null;
    throw e;
  }
}

/**
 * Evaluates one re-posted model on its delta's probe set (else the built-in one) against the old
 * post model, or the new base when that is gone; writes paramdelta-eval.json beside the model; then
 * applies the gate: a pass publishes the pending index, a failure writes gate.json and keeps it pending.
 */
export async function evaluateModel(input: EvaluateModelInput): Promise<EvaluationSummary> {
  const p = pipeline();
  const delta = p.env.resolve(input.delta);
  const out = p.env.resolve(input.output);
  const tags = outputTags('model');
  const registration = await readRegistration(delta);
  const bounds = registration.gate ?? p.settings.gate;
  const state = await indexState(out);
  const summary: EvaluationSummary = { output: input.output, gate: { bounds, passed: false, reasons: [] }, published: false };
  try {
    const manifest = parseDeltaManifest(await delta.readText(DELTA_MANIFEST), `${input.delta}/${DELTA_MANIFEST}`);
    const post = await oldPost(p, manifest);
    const reference = post !== null ? { role: 'old post' as const, ref: post } : { role: 'new base' as const, ref: input.base };
    const probes: ProbeInput = registration.probes !== undefined ? { file: registration.probes } : { builtin: true };
    const e = await evaluateWithProbes(
      p.env,
      { model: input.output, modelLayout: state === 'pending' ? PENDING_LAYOUT : MODEL_LAYOUT, against: reference.ref, probes, referenceRole: reference.role },
      { provider: p.settings.evalProvider },
    );
    await out.writeFile(EVAL_REPORT, JSON.stringify(e.report, null, 2) + '\n', { metadata: tags });
    const r = e.report;
    Object.assign(summary, {
      model: { ref: r.model.ref, meanLoss: r.model.meanLoss, perplexity: r.model.perplexity },
      reference: { role: reference.role, ref: r.reference!.ref, meanLoss: r.reference!.meanLoss, perplexity: r.reference!.perplexity },
      lossRatio: r.lossRatio,
      agreement: r.agreement,
      kl: r.kl,
      probes: r.probes,
    });
  } catch (e) {
    // Bad probes or a model evaluation cannot read: retrying cannot help; the gate decides what it means.
    if (!(e instanceof InputError || e instanceof SafetensorsError)) throw e;
    // One line, bounded: it travels in the run's output (1 MiB for every model together).
    summary.error = e.message.split('\n')[0].slice(0, 500);
  }
  const reasons = summary.error !== undefined ? (gateIsEmpty(bounds) ? [] : [`evaluation failed: ${summary.error}`]) : gateFailures(bounds, summary);
  summary.gate = { bounds, passed: reasons.length === 0, reasons };
  if (summary.gate.passed) {
    if (await out.exists(GATE_FILE)) await out.remove?.(GATE_FILE);
    summary.published = (await publishIndex(out, tags)) || state === 'published';
  } else {
    const record: GateRecord = {
      format: GATE_FORMAT,
      createdAt: new Date().toISOString(),
      status: 'withheld',
      run: input.runId,
      gate: bounds,
      reasons,
      ...(summary.reference ? { reference: { role: summary.reference.role, ref: summary.reference.ref } } : {}),
      ...(summary.lossRatio !== undefined ? { lossRatio: summary.lossRatio } : {}),
      ...(summary.agreement !== undefined ? { agreement: summary.agreement } : {}),
    };
    await out.writeFile(GATE_FILE, JSON.stringify(record, null, 2) + '\n', { metadata: tags });
    summary.published = state === 'published';
  }
  return summary;
}

register.activity('evaluateModel', { handler: evaluateModel });
