import { type EventGridEvent, type InvocationContext } from '@azure/functions';
import * as df from 'durable-functions';
import { checkpointCompleteness } from '../../lib/format/checkpoint.js';
import type { RepostBaseInput } from '../contracts.js';
import { runClient, startOnce } from '../client.js';
import { runId } from '../http.js';
import { pipeline } from '../pipeline.js';
import * as register from '../app.js';

const SUBJECT = /^\/blobServices\/default\/containers\/([^/]+)\/blobs\/(.+)$/;

/**
 * Event Grid BlobCreated under base-models/<name>/: once the model is complete (its index and every
 * shard it names, or a single model.safetensors), start repostBase. The event carries only the
 * blob's URL, never its content, so a 5 GB shard is never loaded here. Uploads arrive in any order.
 */
export async function baseModelUploaded(event: EventGridEvent, ctx: InvocationContext): Promise<void> {
  if (event.eventType !== 'Microsoft.Storage.BlobCreated') return;
  const m = SUBJECT.exec(event.subject ?? '');
  const p = pipeline();
  if (!m || m[1] !== p.settings.containers.baseModels) return;
  const segments = m[2].split('/');
  if (segments.length < 2) return; // a blob at the container's top level belongs to no model
  const name = segments[0];
  const base = `${p.settings.containers.baseModels}/${name}`;
  const store = p.env.resolve(base);
  const state = await checkpointCompleteness(store);
  if (!state.complete || !state.marker) {
    ctx.log(`base model ${base}: not complete yet (missing ${state.missing.join(', ') || 'shards'})`);
    return;
  }
  const etag = (await store.fileVersion?.(state.marker)) ?? '';
  const input: RepostBaseInput = { name, base, etag };
  const id = runId('repost', name, [name, etag]);
  const started = await startOnce(runClient(ctx), 'repostBase', id, input, { once: true });
  ctx.log(started ? `base model ${base} complete: started ${id}` : `base model ${base}: ${id} already ran or is running`);
}

register.eventGrid('baseModelUploaded', { extraInputs: [df.input.durableClient()], handler: baseModelUploaded });
