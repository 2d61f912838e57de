// App settings the pipeline reads, with their defaults; local.settings.example.json documents them.
import { parseSize } from '../lib/ops/sizes.js';
import { isValidHubName } from '../lib/storage/hub.js';
import { parseGate, type Gate } from '../lib/eval/gate.js';
import { providerFrom, type EvalProvider } from '../lib/eval/runtime.js';

export interface PipelineSettings {
  /** Name of the connection (`<name>` or `<name>__accountName` / `__blobServiceUri`) holding the models. */
  connection: string;
  containers: {
    models: string;
    deltas: string;
    baseModels: string;
    postedModels: string;
    /** Working files of runs: plans and per-shard results. */
    runs: string;
  };
  /** Chunk buffer bytes per activity. */
  bufferBytes: number;
  /** Largest output shard in bytes (one shard activity each). */
  shardSize: number;
  /** Hub owners whose repositories may be named as inputs (hf://owner/name); empty: none. */
  hubOwners: string[];
  /** The quality gate of deltas registered without one, as JSON ({"maxLossRatio": 1.1, "minAgreement": 0.8}); empty: {}, which gates nothing (figures are still recorded). */
  gate: Gate;
  /** Where evaluateModel runs its forward passes: cuda on the GPU workload profile, else cpu. */
  evalProvider: EvalProvider;
}

export const SETTING_NAMES = {
  connection: 'PARAMDELTA_STORAGE_CONNECTION',
  models: 'PARAMDELTA_MODELS_CONTAINER',
  deltas: 'PARAMDELTA_DELTAS_CONTAINER',
  baseModels: 'PARAMDELTA_BASE_MODELS_CONTAINER',
  postedModels: 'PARAMDELTA_POSTED_MODELS_CONTAINER',
  runs: 'PARAMDELTA_RUNS_CONTAINER',
  bufferBytes: 'PARAMDELTA_BUFFER_BYTES',
  shardSize: 'PARAMDELTA_SHARD_SIZE',
  hubOwners: 'PARAMDELTA_HUB_OWNERS',
  gate: 'PARAMDELTA_GATE',
  /** Read by lib/eval itself too (providerFrom), so the CLI and the pipeline agree. */
  evalProvider: 'PARAMDELTA_EVAL_PROVIDER',
} as const;

export function readSettings(env: Record<string, string | undefined> = process.env): PipelineSettings {
  const get = (k: keyof typeof SETTING_NAMES, d: string) => env[SETTING_NAMES[k]] || d;
  return {
    connection: get('connection', 'AzureWebJobsStorage'),
    containers: {
      models: get('models', 'models'),
      deltas: get('deltas', 'deltas'),
      baseModels: get('baseModels', 'base-models'),
      postedModels: get('postedModels', 'posted-models'),
      runs: get('runs', 'paramdelta-runs'),
    },
    bufferBytes: Number(get('bufferBytes', String(64 << 20))),
    shardSize: parseSize(get('shardSize', '5GB'), SETTING_NAMES.shardSize),
    hubOwners: hubOwners(get('hubOwners', '')),
    gate: parseGate(get('gate', ''), `setting ${SETTING_NAMES.gate}`),
    evalProvider: evalProvider(get('evalProvider', 'cpu')),
  };
}

/** A comma-separated list of Hub owners, each checked, so a typo cannot widen the list. */
function hubOwners(value: string): string[] {
  const owners = value.split(',').map((s) => s.trim()).filter(Boolean);
  const bad = owners.find((o) => !isValidHubName(o));
  if (bad !== undefined) throw new Error(`setting ${SETTING_NAMES.hubOwners}: ${JSON.stringify(bad)} is not a Hub owner name`);
  return [...new Set(owners)];
}

function evalProvider(value: string): EvalProvider {
  try {
    return providerFrom({ PARAMDELTA_EVAL_PROVIDER: value });
  } catch (e) {
    throw new Error(`setting ${(e as Error).message}`);
  }
}

/** Containers a user-supplied model reference may name. The runs container is internal only. */
export function userContainers(s: PipelineSettings): string[] {
  const c = s.containers;
  return [c.models, c.deltas, c.baseModels, c.postedModels];
}
