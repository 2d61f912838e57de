import { executeApplyShard } from '../../lib/ops/apply.js';
import type { ApplyPlan } from '../../lib/ops/plan.js';
import { DEFAULT_BUFFER_BYTES } from '../../lib/ops/env.js';
import type { ShardDone, ShardTask } from '../contracts.js';
import { shardOnce } from './shardOnce.js';
import * as register from '../app.js';

/**
 * Writes one shard of the new model. Its blob reads go through read-ahead windows and its writes are
 * gathered into blocks (about half the buffer budget together), so request sizes no longer follow the
 * chunk size: its chunk buffers take a quarter of the budget and the activity stays near it in all.
 */
export function applyDeltaShard(task: ShardTask): Promise<ShardDone> {
  return shardOnce(task, (plan: ApplyPlan, index, env, out) =>
    executeApplyShard(plan, index, { ...env, bufferBytes: Math.max(MIN_CHUNK_BUFFERS, (env.bufferBytes ?? DEFAULT_BUFFER_BYTES) / 4) }, out),
  );
}

const MIN_CHUNK_BUFFERS = 8 << 20;

register.activity('applyDeltaShard', { handler: applyDeltaShard });
