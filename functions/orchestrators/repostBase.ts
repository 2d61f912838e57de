import * as df from 'durable-functions';
import type { ApplyDeltasInput, RepostBaseInput } from '../contracts.js';
import type { Compatibility } from '../activities/findCompatibleDeltas.js';
import { report, shardRetry } from './fanout.js';
import { childInstanceId } from '../limits.js';
import * as register from '../app.js';

/** A new base arrived: apply every compatible registered delta to it, each as an applyDeltas sub-orchestration. */
export function* repostBaseOrchestrator(ctx: df.OrchestrationContext): Generator<df.Task, unknown, unknown> {
  const input = ctx.df.getInput() as RepostBaseInput;
  report(ctx, { phase: 'planning', shardsDone: 0, shardsTotal: 0, bytesDone: 0, bytesTotal: 0 });
  const found = (yield ctx.df.callActivityWithRetry('findCompatibleDeltas', shardRetry(), input)) as Compatibility;
  const total = found.compatible.length;
  report(ctx, { phase: 'reposting', shardsDone: 0, shardsTotal: total, bytesDone: 0, bytesTotal: 0 });
  const outputs: { delta: string; output: string }[] = [];
  const failed: { delta: string; error: string }[] = [];
  if (total > 0) {
    const runs = found.compatible.map((d) => {
      const child: ApplyDeltasInput = { base: input.base, deltas: [{ ref: d.ref, scale: 1 }], output: d.output };
      outputs.push({ delta: d.name, output: d.output });
      return ctx.df.callSubOrchestratorWithRetry('applyDeltas', shardRetry(), child, childInstanceId(ctx.df.instanceId, d.name));
    });
    yield ctx.df.Task.any(runs);
    for (let i = 0; i < runs.length; i++) {
      // One delta failing (after its retries) must not lose the others' posted models.
      try {
        yield runs[i];
      } catch (e) {
        failed.push({ delta: found.compatible[i].name, error: String((e as Error).message ?? e).split('\n')[0] });
      }
      report(ctx, { phase: 'reposting', shardsDone: i + 1, shardsTotal: total, bytesDone: 0, bytesTotal: 0 });
    }
  }
  report(ctx, { phase: 'completed', shardsDone: total, shardsTotal: total, bytesDone: 0, bytesTotal: 0 });
  const posted = outputs.filter((o) => !failed.some((f) => f.delta === o.delta));
  return { base: input.base, posted, skipped: found.skipped, failed };
}

register.orchestration('repostBase', repostBaseOrchestrator);
