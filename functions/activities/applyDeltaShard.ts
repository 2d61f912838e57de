import { executeApplyShard } from '../../lib/ops/apply.js';
import type { ShardDone, ShardTask } from '../contracts.js';
import { shardOnce } from './shardOnce.js';
import * as register from '../app.js';

/** Writes one shard of the new model. */
export function applyDeltaShard(task: ShardTask): Promise<ShardDone> {
  return shardOnce(task, executeApplyShard);
}

register.activity('applyDeltaShard', { handler: applyDeltaShard });
