import { executeComputeShard } from '../../lib/ops/compute.js';
import type { ShardDone, ShardTask } from '../contracts.js';
import { shardOnce } from './shardOnce.js';
import * as register from '../app.js';

/** Writes one delta shard. */
export function computeDeltaShard(task: ShardTask): Promise<ShardDone> {
  return shardOnce(task, executeComputeShard);
}

register.activity('computeDeltaShard', { handler: computeDeltaShard });
