// What paramdelta writes into each kind of output folder: the one list of names that clearing and
// replacing may touch, and the tags that mark a folder as paramdelta's own. New output files are
// added here, and nowhere else. (A folder fetched by `download` also holds its DOWNLOAD_TAG.)
import { MODEL_INDEX } from '../format/checkpoint.js';
import { KIND_TAG, PLAN_TAG } from '../storage/types.js';
import type { OutputKind } from '../storage/output.js';
import {
  CHAT_FILES, DELTA_FORMAT, DELTA_LAYOUT, DELTA_MANIFEST, DELTA_SHARD_STEM, MODEL_FORMAT, MODEL_MANIFEST,
} from './manifest.js';
import { REGISTRATION_FILE } from './registry.js';
import { COMPACT_EXTENSION } from '../codec/format.js';
import { ANALYSIS_FILE } from '../analyze/report.js';
import { DOWNLOAD_TAG } from '../storage/transfer.js';
import { EVAL_REPORT } from '../eval/report.js';
import { GATE_FILE, PENDING_INDEX } from '../eval/gate.js';

export type OutputKindName = 'delta' | 'model';

/** A shard name as shardFileName writes it: STEM-00001-of-00004.safetensors. */
const shardPattern = (stem: string, ext = '.safetensors') => new RegExp(`^${stem}-\\d{5,}-of-\\d{5,}\\${ext}$`);

function kind(name: OutputKindName, def: Omit<OutputKind, 'name' | 'owns'>): OutputKind {
  const names = new Set(def.names);
  return { name, ...def, owns: (file) => names.has(file) || def.patterns.some((p) => p.test(file)) };
}

export const OUTPUT_KINDS: Record<OutputKindName, OutputKind> = {
  /** `compute` and the pipeline's computeDelta. */
  delta: kind('delta', {
    marker: DELTA_MANIFEST,
    manifest: { file: DELTA_MANIFEST, format: DELTA_FORMAT },
    names: [DELTA_MANIFEST, DELTA_LAYOUT.index, REGISTRATION_FILE, ANALYSIS_FILE, DOWNLOAD_TAG, ...CHAT_FILES],
    patterns: [shardPattern(DELTA_SHARD_STEM), shardPattern(DELTA_SHARD_STEM, COMPACT_EXTENSION)],
  }),
  /** `apply` and the pipeline's applyDeltas; a re-posted model also gets its evaluation, and its index waits on the gate. */
  model: kind('model', {
    marker: MODEL_INDEX,
    manifest: { file: MODEL_MANIFEST, format: MODEL_FORMAT },
    names: [MODEL_INDEX, MODEL_MANIFEST, 'config.json', DOWNLOAD_TAG, ...CHAT_FILES, EVAL_REPORT, GATE_FILE, PENDING_INDEX],
    patterns: [shardPattern('model')],
  }),
};

/** Metadata for every file written into an output of this kind (and the plan that wrote a shard). */
export function outputTags(kind: OutputKindName, planHash?: string): Record<string, string> {
  return planHash ? { [KIND_TAG]: kind, [PLAN_TAG]: planHash } : { [KIND_TAG]: kind };
}
