// Small JSON payloads passed between triggers, orchestrators and activities. Plans stay in blobs.
import type { DeltaDtypePolicy } from '../lib/ops/plan.js';
import type { DeltaFormat } from '../lib/ops/manifest.js';
import type { FusionMethod } from '../lib/fusion/options.js';

export interface ComputeDeltaInput {
  name: string;
  base: string;
  post: string;
  deltaDtype: DeltaDtypePolicy;
  /** Absent in runs started before the compact layout existed: those wrote plain deltas. */
  deltaFormat?: DeltaFormat;
  autoApply: boolean;
  /** Where the delta goes: `<deltas container>/<name>`. */
  output: string;
}

export interface ApplyDeltasInput {
  base: string;
  deltas: { ref: string; scale: number }[];
  output: string;
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
  phase: 'planning' | 'shards' | 'finalizing' | 'reposting' | 'completed';
  shardsDone: number;
  shardsTotal: number;
  bytesDone: number;
  bytesTotal: number;
}
