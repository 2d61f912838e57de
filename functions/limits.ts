// The Durable backend's documented limits, which `paramdelta serve` enforces so that a local run
// fails where Azure would, and the instance ids the pipeline derives, made to fit them.
//
// Sources (Microsoft Learn; MicrosoftDocs/azure-docs):
// - Durable Task Scheduler, "Limitations and considerations" (articles/durable-task/scheduler/
//   durable-task-scheduler.md): orchestrator and activity inputs and outputs, and the orchestration
//   custom status, at most 1 MB each (JSON-serialized); instance ids 1-100 characters of printable
//   ASCII (0x20-0x7E), ids starting with "@" reserved for entities. Its large-payload page puts the
//   message boundary at 1 MiB (1,048,576 bytes).
// - Durable Functions custom orchestration status (articles/durable-task/common/
//   durable-task-custom-orchestration-status.md): at most 16 KB of UTF-16 JSON text, whatever the
//   backend (the extension's SetCustomStatus checks it). The Azure Storage provider has the same
//   16 KB custom-status bound and moves large inputs and outputs to blobs, so the scheduler's
//   1 MiB is the binding payload limit for this app.
import { createHash } from 'node:crypto';

export const BACKEND_LIMITS = {
  /** Characters in an orchestration instance id. */
  instanceIdLength: 100,
  /** UTF-8 bytes of a JSON-serialized orchestration or activity input or output. */
  payloadBytes: 1 << 20,
  /** UTF-16 bytes of the JSON-serialized custom status. */
  customStatusBytes: 16 << 10,
} as const;

/** Why the backend would refuse this instance id, or undefined when it would accept it. */
export function instanceIdProblem(id: string): string | undefined {
  const max = BACKEND_LIMITS.instanceIdLength;
  if (id.length === 0) return 'an instance id must not be empty';
  if (id.length > max) return `instance id "${id}" is ${id.length} characters; the Durable Task Scheduler allows at most ${max}`;
  const bad = [...id].find((c) => c < ' ' || c > '~');
  if (bad !== undefined) {
    return `instance id ${JSON.stringify(id)} holds U+${bad.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}; the Durable Task Scheduler allows printable ASCII only`;
  }
  if (id.startsWith('@')) return `instance id "${id}" starts with "@", which the Durable Task Scheduler reserves for entities`;
  return undefined;
}

/** Why the backend would refuse this JSON payload (`what` names it), or undefined. */
export function payloadProblem(what: string, json: string | undefined): string | undefined {
  if (json === undefined) return undefined;
  const bytes = Buffer.byteLength(json, 'utf8');
  const max = BACKEND_LIMITS.payloadBytes;
  return bytes > max ? `${what} is ${bytes} bytes of JSON; the Durable Task Scheduler allows at most ${max} (1 MiB)` : undefined;
}

/** Why the extension would refuse this custom status (JSON), or undefined. */
export function customStatusProblem(json: string | undefined): string | undefined {
  if (json === undefined) return undefined;
  const bytes = Buffer.byteLength(json, 'utf16le');
  const max = BACKEND_LIMITS.customStatusBytes;
  return bytes > max ? `the custom status is ${bytes} bytes of UTF-16 JSON; Durable Functions allows at most ${max} (16 KB)` : undefined;
}

const HASH_CHARS = 12;

/**
 * The instance id of a sub-orchestration named by `label` (e.g. a delta name) under `parentId`:
 * `<parent>:<label, cut to fit>-<12 hex of sha256(label)>`, at most 100 characters. The hash keeps
 * ids of labels that share a prefix apart; it depends only on the label, so replays agree.
 */
export function childInstanceId(parentId: string, label: string): string {
  const hash = createHash('sha256').update(label).digest('hex').slice(0, HASH_CHARS);
  const room = BACKEND_LIMITS.instanceIdLength - parentId.length - 2 - HASH_CHARS;
  const readable = label.replace(/[^\x21-\x7e]/g, '_').slice(0, Math.max(0, room));
  const id = readable ? `${parentId}:${readable}-${hash}` : `${parentId}:${hash}`;
  if (id.length <= BACKEND_LIMITS.instanceIdLength) return id;
  // Only a parent id longer than the pipeline's own (at most 64) ends up here: hash the pair.
  return `child-${createHash('sha256').update(`${parentId}\n${label}`).digest('hex').slice(0, 32)}`;
}
