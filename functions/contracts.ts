// Small JSON payloads passed between triggers, orchestrators and activities. Plans stay in blobs.
import type { DeltaDtypePolicy } from '../lib/ops/plan.js';
import type { DeltaFormat } from '../lib/ops/manifest.js';
import type { Gate } from '../lib/eval/gate.js';
import type { FusionMethod } from '../lib/fusion/options.js';

export interface ComputeDeltaInput {
  name: string;
  base: string;
  post: string;
  deltaDtype: DeltaDtypePolicy;
  /** Absent in runs started before the compact layout existed: those wrote plain deltas. */
  deltaFormat?: DeltaFormat;
  autoApply: boolean;
  /** The probe set re-posted models are evaluated on (a blob reference), recorded in the registration. */
  probes?: string;
  /** This delta's quality gate, recorded in the registration. */
  gate?: Gate;
  /** Where the delta goes: `<deltas container>/<name>`. */
  output: string;
}

export interface ApplyDeltasInput {
  base: string;
  deltas: { ref: string; scale: number }[];
  output: string;
  /** Write the index under its pending name: the gate (evaluateModel) publishes it. Set by repostBase. */
  held?: boolean;
  /** Fusion (absent: linear); the options as checkFusion filled them in, the seed as a decimal string. */
  method?: FusionMethod;
  density?: number;
  gamma?: number;
  lambda?: number;
  seed?: string;
  normalize?: boolean;
}

export interface RepostBaseInput {
  /** The new base's folder name under the base-models container. */
  name: string;
  base: string;
  /** ETag of the blob that completed the upload (index or single file), which makes the run id. */
  etag: string;
}

/** A planning activity's answer when the request itself is wrong: retrying cannot help, so the run fails at once with this. */
export interface PlanRejected {
  rejected: string;
}

/** What a planning activity hands the orchestrator: enough to fan out and report progress. */
export interface PlanSummary {
  runId: string;
  planHash: string;
  shards: { file: string; inputBytes: number }[];
}

export interface ShardTask {
  runId: string;
  planHash: string;
  index: number;
  output: string;
}

export interface ShardDone {
  file: string;
  bytes: number;
  /** True when an earlier attempt had already committed this shard under the same plan. */
  skipped: boolean;
}

/** Orchestration progress, published with setCustomStatus (kept far below its 16 KB limit). */
export interface Progress {
  phase: 'planning' | 'shards' | 'finalizing' | 'reposting' | 'evaluating' | 'completed';
  shardsDone: number;
  shardsTotal: number;
  bytesDone: number;
  bytesTotal: number;
}

/** What repostBase asks evaluateModel: one posted model, whose index is pending. */
export interface EvaluateModelInput {
  /** The re-post run, recorded in gate.json. */
  runId: string;
  /** The delta's folder (its delta.json and registration.json). */
  delta: string;
  /** The new base the model was posted onto. */
  base: string;
  /** The posted model's folder. */
  output: string;
}

/** One model's figures, without the per-sequence ones (those are in paramdelta-eval.json): small enough for a run's output. */
export interface EvaluatedFigures {
  ref: string;
  meanLoss: number;
  perplexity: number;
}

/** evaluateModel's answer: the figures and the gate's verdict, kept small for the orchestration payloads. */
export interface EvaluationSummary {
  output: string;
  /** The evaluation could not run (bad probes, an architecture evaluation does not know): why. */
  error?: string;
  model?: EvaluatedFigures;
  reference?: EvaluatedFigures & { role: 'old post' | 'new base' };
  lossRatio?: number;
  agreement?: number;
  kl?: number;
  probes?: { source: string; sequences: number; tokens: number; sha256: string };
  gate: { bounds: Gate; passed: boolean; reasons: string[] };
  /** Whether model.safetensors.index.json is now written. */
  published: boolean;
}
