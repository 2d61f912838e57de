import * as df from 'durable-functions';
import type { ApplyDeltasInput, EvaluateModelInput, EvaluationSummary, RepostBaseInput } from '../contracts.js';
import type { Compatibility } from '../activities/findCompatibleDeltas.js';
import { report, shardRetry } from './fanout.js';
import { childInstanceId } from '../limits.js';
import * as register from '../app.js';

/** A posted model: its delta, and the folder it was written to. */
export interface PostedModel {
  delta: string;
  output: string;
}

/** evaluateModel's summary of one posted model (figures and the gate's verdict), named by its delta. */
export interface Evaluated extends Omit<EvaluationSummary, 'output'> {
  delta: string;
}

/**
 * A new base arrived: apply every compatible registered delta to it, each as an applyDeltas
 * sub-orchestration whose index is held; then evaluate each posted model (evaluateModel), whose
 * gate publishes the index or withholds it. The run's output says `gate failed` when any was withheld.
 */
export function* repostBaseOrchestrator(ctx: df.OrchestrationContext): Generator<df.Task, unknown, unknown> {
  const input = ctx.df.getInput() as RepostBaseInput;
  report(ctx, { phase: 'planning', shardsDone: 0, shardsTotal: 0, bytesDone: 0, bytesTotal: 0 });
  const found = (yield ctx.df.callActivityWithRetry('findCompatibleDeltas', shardRetry(), input)) as Compatibility;
  const total = found.compatible.length;
  report(ctx, { phase: 'reposting', shardsDone: 0, shardsTotal: total, bytesDone: 0, bytesTotal: 0 });
  const outputs: PostedModel[] = [];
  const failed: { delta: string; error: string }[] = [];
  const evaluations: Evaluated[] = [];
  const withheld: { delta: string; output: string; reasons: string[] }[] = [];
  if (total > 0) {
    const runs = found.compatible.map((d) => {
      const child: ApplyDeltasInput = { base: input.base, deltas: [{ ref: d.ref, scale: 1 }], output: d.output, held: true };
      outputs.push({ delta: d.name, output: d.output });
      return ctx.df.callSubOrchestratorWithRetry('applyDeltas', shardRetry(), child, childInstanceId(ctx.df.instanceId, d.name));
    });
    yield ctx.df.Task.any(runs);
    const evals: (df.Task | null)[] = [];
    for (let i = 0; i < runs.length; i++) {
      const d = found.compatible[i];
      // One delta failing (after its retries) must not lose the others' posted models.
      try {
        yield runs[i];
        const task: EvaluateModelInput = { runId: ctx.df.instanceId, delta: d.ref, base: input.base, output: d.output };
        evals.push(ctx.df.callActivityWithRetry('evaluateModel', shardRetry(), task));
      } catch (e) {
        failed.push({ delta: d.name, error: String((e as Error).message ?? e).split('\n')[0] });
        evals.push(null);
      }
      report(ctx, { phase: 'reposting', shardsDone: i + 1, shardsTotal: total, bytesDone: 0, bytesTotal: 0 });
    }
    // Every posted model's evaluation scheduled at once (one Task.any, as fanOutShards does), then joined in order.
    const scheduled = evals.filter((t): t is df.Task => t !== null);
    if (scheduled.length) {
      report(ctx, { phase: 'evaluating', shardsDone: 0, shardsTotal: scheduled.length, bytesDone: 0, bytesTotal: 0 });
      yield ctx.df.Task.any(scheduled);
    }
    let judged = 0;
    for (let i = 0; i < evals.length; i++) {
      const task = evals[i];
      if (!task) continue;
      const d = found.compatible[i];
      try {
        const s = (yield task) as EvaluationSummary;
        const { output: _o, ...rest } = s;
        evaluations.push({ delta: d.name, ...rest });
        if (!s.published) withheld.push({ delta: d.name, output: d.output, reasons: s.gate.reasons });
      } catch (e) {
        // The model stays without its index: nothing judged it.
        const error = String((e as Error).message ?? e).split('\n')[0].trim().slice(0, 500);
        evaluations.push({ delta: d.name, error, gate: { bounds: {}, passed: false, reasons: [`evaluation failed: ${error}`] }, published: false });
        withheld.push({ delta: d.name, output: d.output, reasons: [`evaluation failed: ${error}`] });
      }
      report(ctx, { phase: 'evaluating', shardsDone: ++judged, shardsTotal: scheduled.length, bytesDone: 0, bytesTotal: 0 });
    }
  }
  report(ctx, { phase: 'completed', shardsDone: total, shardsTotal: total, bytesDone: 0, bytesTotal: 0 });
  const posted = outputs.filter((o) => !failed.some((f) => f.delta === o.delta));
  return {
    base: input.base,
    posted,
    skipped: found.skipped,
    failed,
    evaluations,
    withheld,
    gate: withheld.length ? 'gate failed' : 'passed',
  };
}

register.orchestration('repostBase', repostBaseOrchestrator);
