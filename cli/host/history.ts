// Instance logs of the local host in blob storage (Azurite, or the account given to serve), in a
// container of its own: one append blob per instance, one JSON line per record. An append is
// atomic, so a killed process leaves whole records; each append names the offset it expects, so a
// retried append that had landed is recognised instead of written twice.
import type { ContainerClient } from '@azure/storage-blob';
import type { InstanceRecord, InstanceStore } from './runtime.js';

/** The local host's own container; not one a model reference may name (functions/settings.ts). */
export const HOST_CONTAINER = 'paramdelta-host';
const PREFIX = 'instances/';

// Instance ids are printable ASCII, "/" included, which a blob name would read as a folder.
const blobName = (id: string) => `${PREFIX}${Buffer.from(id, 'utf8').toString('base64url')}.jsonl`;
const idOf = (name: string) => Buffer.from(name.slice(PREFIX.length, -'.jsonl'.length), 'base64url').toString('utf8');

function status(e: unknown): number | undefined {
  return (e as { statusCode?: number }).statusCode;
}

export class BlobInstanceStore implements InstanceStore {
  /** The length of each instance's blob as this process last wrote or read it. */
  private readonly offsets = new Map<string, number>();
  private ready: Promise<unknown> | null = null;

  constructor(private readonly container: ContainerClient) {}

  private ensure(): Promise<unknown> {
    this.ready ??= this.container.createIfNotExists();
    return this.ready;
  }

  async create(id: string, first: InstanceRecord): Promise<void> {
    await this.ensure();
    const blob = this.container.getAppendBlobClient(blobName(id));
    await blob.create(); // replaces the log of an earlier instance of this id, as startNew replaces the instance
    this.offsets.set(id, 0);
    await this.append(id, first);
  }

  async append(id: string, record: InstanceRecord): Promise<void> {
    const line = Buffer.from(JSON.stringify(record) + '\n', 'utf8');
    const at = this.offsets.get(id);
    if (at === undefined) throw new Error(`the log of instance '${id}' was neither created nor loaded by this process`);
    const blob = this.container.getAppendBlobClient(blobName(id));
    try {
      await blob.appendBlock(line, line.length, { conditions: { appendPosition: at } });
    } catch (e) {
      // 412: the blob is not where this process left it. If it grew by exactly this record, a
      // retry of an append whose answer was lost has already written it.
      if (status(e) !== 412) throw e;
      const props = await blob.getProperties();
      if (props.contentLength !== at + line.length) throw e;
      const tail = await blob.downloadToBuffer(at, line.length);
      if (!tail.equals(line)) throw e;
    }
    this.offsets.set(id, at + line.length);
  }

  async load(): Promise<Map<string, InstanceRecord[]>> {
    await this.ensure();
    const out = new Map<string, InstanceRecord[]>();
    for await (const b of this.container.listBlobsFlat({ prefix: PREFIX })) {
      if (!b.name.endsWith('.jsonl')) continue;
      const id = idOf(b.name);
      const bytes = await this.container.getAppendBlobClient(b.name).downloadToBuffer();
      const records: InstanceRecord[] = [];
      let end = 0;
      // Records are whole lines; anything after the last newline is not a record.
      for (let nl = bytes.indexOf(10); nl >= 0; nl = bytes.indexOf(10, end)) {
        records.push(JSON.parse(bytes.subarray(end, nl).toString('utf8')) as InstanceRecord);
        end = nl + 1;
      }
      this.offsets.set(id, bytes.length);
      out.set(id, records);
    }
    return out;
  }
}
