// The JSON bodies of the GET routes the dashboard reads (web/ imports these types only, so this
// file imports nothing that needs Node).

/** GET /api/deltas: one registered delta. */
export interface DeltaSummary {
  name: string;
  ref: string;
  autoApply: boolean;
  /** The registered probe set and quality gate (null: the built-in probes and the default gate). */
  probes: string | null;
  gate: { maxLossRatio?: number; minAgreement?: number } | null;
  createdAt: string;
  tool: { name: string; version: string };
  dtypePolicy: string;
  /** compact or safetensors. */
  layout: string;
  base: { config: Record<string, unknown>; signature: string };
  post: { config: Record<string, unknown>; signature: string };
  tensors: number;
  parameters: number;
  /** Every delta tensor in its plain dtype; the shards' bytes as stored. */
  rawBytes: number;
  /** Kept as `bytes` for clients of the first version of this route. */
  bytes: number;
  storedBytes: number;
  /** Elements per delta dtype. */
  dtypes: Record<string, number>;
  files: string[];
}

export interface DeltaList {
  deltas: DeltaSummary[];
  incomplete: { name: string; reason: string }[];
}

/** The progress an orchestration publishes as its custom status (functions/contracts.ts Progress). */
export interface RunProgress {
  phase: string;
  shardsDone: number;
  shardsTotal: number;
  bytesDone: number;
  bytesTotal: number;
}

/** GET /api/runs: one orchestration instance, newest first. */
export interface RunSummary {
  id: string;
  /** The orchestrator: computeDelta, applyDeltas, repostBase. */
  name: string;
  status: 'Pending' | 'Running' | 'Completed' | 'Failed' | 'Terminated';
  /** The run that started this one as a sub-orchestration, when its id says so. */
  parentId: string | null;
  createdTime: string | null;
  lastUpdatedTime: string | null;
  progress: RunProgress | null;
  /** The first line of the failure, when Failed. */
  error: string | null;
}

export interface RunList {
  runs: RunSummary[];
  /** True when more runs matched than `limit`. */
  truncated: boolean;
}

/** The figures `paramdelta-eval.json` holds, when the model was evaluated. */
export interface EvalFigures {
  meanLoss: number;
  perplexity: number;
  agreement: number | null;
  kl: number | null;
  lossRatio: number | null;
  reference: { ref: string; role: string | null; meanLoss: number } | null;
  createdAt: string | null;
}

/** GET /api/models: one model paramdelta wrote into the posted-models container. */
export interface PostedModel {
  ref: string;
  createdAt: string | null;
  base: string | null;
  deltas: { ref: string; scale: number }[];
  /** False while the model's index is not written (its shards are, and it may wait on a gate). */
  complete: boolean;
  eval: EvalFigures | null;
}

export interface ModelList {
  models: PostedModel[];
  truncated: boolean;
}
