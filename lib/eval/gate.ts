// The quality gate on a re-posted model: its evaluation against a reference (the old post model, or
// the new base) must meet bounds on the loss ratio and on top-1 agreement before the model gets its
// model.safetensors.index.json. Until then the index waits under a pending name, so a model that
// failed (or was never judged) never looks complete; gate.json says why.
import { z } from 'zod';
import { MODEL_INDEX, SINGLE_FILE, type CheckpointLayout } from '../format/checkpoint.js';
import type { Store } from '../storage/types.js';
import { InputError } from '../errors.js';
import type { EvalReport } from './report.js';

/** Where a posted model's index waits for the gate; transformers never reads this name. */
export const PENDING_INDEX = 'model.safetensors.index.pending.json';
/** Why a posted model was withheld, and who published it anyway. */
export const GATE_FILE = 'gate.json';
export const GATE_FORMAT = 'paramdelta-gate/1';

/** How evaluation opens a model whose index is still pending (apply writes shards only, never a single file). */
export const PENDING_LAYOUT: CheckpointLayout = { single: SINGLE_FILE, index: PENDING_INDEX };

export const gateSchema = z
  .object({
    /** Largest allowed posted-model loss ÷ reference loss. */
    maxLossRatio: z.number().finite().positive().optional(),
    /** Smallest allowed share of positions whose top-1 next token agrees with the reference's. */
    minAgreement: z.number().min(0).max(1).optional(),
  })
  .strict();
export type Gate = z.infer<typeof gateSchema>;

/** A gate written as JSON (the default-gate setting); empty text is no gate. */
export function parseGate(text: string, where: string): Gate {
  if (text.trim() === '') return {};
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new InputError(`${where}: not valid JSON (${(e as Error).message}); expected {"maxLossRatio": …, "minAgreement": …}`);
  }
  const r = gateSchema.safeParse(v);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new InputError(`${where}: ${issue.path.length ? `field "${issue.path.join('.')}": ` : ''}${issue.message}`);
  }
  return r.data;
}

export function gateIsEmpty(g: Gate): boolean {
  return g.maxLossRatio === undefined && g.minAgreement === undefined;
}

/** Why an evaluation fails the gate (empty: it passes). A missing figure fails the bound that needs it. */
export function gateFailures(gate: Gate, figures: Pick<EvalReport, 'lossRatio' | 'agreement'>): string[] {
  const why: string[] = [];
  if (gate.maxLossRatio !== undefined) {
    const r = figures.lossRatio;
    if (r === undefined || !Number.isFinite(r)) why.push('no loss ratio was measured');
    else if (r > gate.maxLossRatio) why.push(`loss ratio ${r.toFixed(4)} is above maxLossRatio ${gate.maxLossRatio}`);
  }
  if (gate.minAgreement !== undefined) {
    const a = figures.agreement;
    if (a === undefined || !Number.isFinite(a)) why.push('no agreement was measured');
    else if (a < gate.minAgreement) why.push(`top-1 agreement ${a.toFixed(4)} is below minAgreement ${gate.minAgreement}`);
  }
  return why;
}

export interface GateRecord {
  format: typeof GATE_FORMAT;
  createdAt: string;
  /** withheld: the index waits under PENDING_INDEX; published: someone published it anyway. */
  status: 'withheld' | 'published';
  /** The re-post run that judged the model: publishing through another run's id is refused. */
  run?: string;
  gate: Gate;
  reasons: string[];
  /** What the posted model was compared with, and the figures the gate read. */
  reference?: { role: string; ref: string };
  lossRatio?: number;
  agreement?: number;
  /** Set by POST /api/runs/{id}/publish. */
  published?: { by: string; at: string };
}

export async function readGateRecord(store: Store): Promise<GateRecord | null> {
  if (!(await store.exists(GATE_FILE))) return null;
  try {
    return JSON.parse(await store.readText(GATE_FILE)) as GateRecord;
  } catch {
    return null;
  }
}

/** Where a posted model stands: complete (its index is there), withheld (pending only), or neither. */
export async function indexState(store: Store): Promise<'published' | 'pending' | 'none'> {
  if (await store.exists(MODEL_INDEX)) return 'published';
  if (await store.exists(PENDING_INDEX)) return 'pending';
  return 'none';
}

/**
 * Writes the pending index as model.safetensors.index.json (last: the mark of a complete model),
 * then removes the pending copy. Safe to repeat: an index already published is left as it is.
 */
export async function publishIndex(store: Store, tags: Record<string, string>): Promise<boolean> {
  if (!(await store.exists(PENDING_INDEX))) return false;
  const text = await store.readText(PENDING_INDEX);
  await store.writeFile(MODEL_INDEX, text, { metadata: tags });
  await store.remove?.(PENDING_INDEX);
  return true;
}
