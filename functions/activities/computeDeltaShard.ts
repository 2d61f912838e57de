import * as df from 'durable-functions';
import { executeComputeShard } from '../../lib/ops/compute.js';
import type { ShardDone, ShardTask } from '../contracts.js';
import { shardOnce } from './shardOnce.js';

/** Writes one delta shard. */
export function computeDeltaShard(task: ShardTask): Promise<ShardDone> {
  return shardOnce(task, executeComputeShard);
}

df.app.activity('computeDeltaShard', { handler: computeDeltaShard });
