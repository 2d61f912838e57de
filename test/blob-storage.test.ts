import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import { DefaultAzureCredential } from '@azure/identity';
import { InputError } from '../lib/errors.js';
import { formatRef, isBlobRef, parseModelRef } from '../lib/storage/refs.js';
import { blobServiceFromConnectionString, blobServiceFromSettings } from '../lib/storage/azure.js';
import { BlobStore, blobResolver, ensureContainers } from '../lib/storage/blob.js';
import { LocalStore } from '../lib/storage/local.js';
import { openCheckpoint } from '../lib/format/checkpoint.js';
import { startAzurite, AZURITE_KEY, type Azurite } from '../cli/host/azurite.js';
import { fixturesDir } from './helpers/fixtures.js';

const sha = (...parts: Uint8Array[]) => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest('hex');
};
const bytes = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed * 7 + 3) & 0xff);
const cat = (...parts: Uint8Array[]) => new Uint8Array(Buffer.concat(parts));

describe('model references', () => {
  const allowedContainers = ['models', 'outputs'];
  const parse = (ref: string, field?: string) => parseModelRef(ref, { allowedContainers, field });

  it.each([
    ['models/llama/8b', 'models', 'llama/8b'],
    ['az://models/llama/8b', 'models', 'llama/8b'],
    ['az://models/llama/8b/', 'models', 'llama/8b'],
    ['models/tiny', 'models', 'tiny'],
    ['models', 'models', ''],
    ['models/', 'models', ''],
    ['az://outputs', 'outputs', ''],
  ])('parses %j', (ref, container, prefix) => {
    expect(parse(ref)).toEqual({ container, prefix });
  });

  it.each([
    ['https://evil/x', /URL/],
    ['http://models/x', /URL/],
    ['file:///etc/passwd', /URL/],
    ['abfss://models@acct.dfs.core.windows.net/x', /URL/],
    ['../x', /"\.\."/],
    ['models/../x', /"\.\."/],
    ['models/./x', /"\.\."/],
    ['models//x', /empty path segment/],
    ['/models/x', /empty path segment/],
    ['az://', /no container/],
    ['', /required/],
    ['models\\x', /backslash/],
    ['models/x\u0000y', /control/],
    ['models/x\ny', /control/],
    ['models/x?sig=abc', /\?/],
    ['Models/x', /not a valid container name/],
    ['ab/x', /not a valid container name/],
    ['my--models/x', /not a valid container name/],
    ['-models/x', /not a valid container name/],
    ['other/x', /not one this service may use/],
    ['az://other/x', /not one this service may use/],
  ])('rejects %j', (ref, why) => {
    let err: unknown;
    try {
      parse(ref, 'base');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InputError);
    expect((err as Error).message).toMatch(/^base: /);
    expect((err as Error).message).toMatch(why);
  });

  it('refuses a container the allow-list names but Azure would not accept', () => {
    expect(() => parseModelRef('Bad_Name/x', { allowedContainers: ['Bad_Name'] })).toThrow(InputError);
  });

  it('formats and recognises the CLI form', () => {
    expect(formatRef({ container: 'models', prefix: 'a/b' })).toBe('az://models/a/b');
    expect(formatRef({ container: 'models', prefix: '' })).toBe('az://models');
    expect(isBlobRef('az://models/a')).toBe(true);
    expect(isBlobRef('models/a')).toBe(false);
    expect(isBlobRef('./az://x')).toBe(false);
  });
});

describe('blob storage against Azurite', () => {
  let azurite: Azurite;
  let service: BlobServiceClient;
  let models: ContainerClient;
  // Small blocks so the multi-block paths run on small data.
  const store = (prefix: string, maxBlockBytes?: number) => new BlobStore(models, prefix, undefined, { maxBlockBytes, readBlockBytes: 1000 });

  beforeAll(async () => {
    azurite = await startAzurite();
    service = blobServiceFromConnectionString(azurite.connectionString);
    await ensureContainers(service, ['models', 'outputs']);
    await ensureContainers(service, ['models']); // idempotent
    models = service.getContainerClient('models');
  });
  afterAll(async () => {
    await azurite?.stop();
  });

  it('lists only files directly under the prefix, sorted', async () => {
    const s = store('listing/a');
    await s.writeFile('b.json', '{"x":1}');
    await s.writeFile('a.bin', bytes(10, 1));
    await models.getBlockBlobClient('listing/a/deeper/c.bin').upload('zz', 2);
    await models.getBlockBlobClient('listing/ab.bin').upload('zz', 2); // shares the string prefix, not the folder
    expect(await s.list()).toEqual(['a.bin', 'b.json']);
    expect(await store('listing').list()).toEqual(['ab.bin']);
    expect(await store('listing/none').list()).toEqual([]);
    expect(s.ref).toBe('az://models/listing/a');
  });

  it('reports a missing container as an input error', async () => {
    const s = new BlobStore(service.getContainerClient('nosuch'), 'x');
    await expect(s.list()).rejects.toThrow(/container "nosuch" does not exist/);
    await expect(s.list()).rejects.toBeInstanceOf(InputError);
  });

  it('exists, readText, writeFile and missing files', async () => {
    const s = store('rw');
    await s.writeFile('config.json', '{"héllo":"wörld"}');
    expect(await s.exists('config.json')).toBe(true);
    expect(await s.exists('nope.json')).toBe(false);
    expect(await s.readText('config.json')).toBe('{"héllo":"wörld"}');
    await s.writeFile('config.json', 'replaced');
    expect(await s.readText('config.json')).toBe('replaced');
    await expect(s.readText('nope.json')).rejects.toBeInstanceOf(InputError);
    await expect(s.openRead('nope.bin')).rejects.toThrow(/az:\/\/models\/rw\/nope\.bin: no such file/);
    expect(() => s.blobName('a/b')).toThrow(/plain file name/);
    expect(() => s.blobName('..')).toThrow(/plain file name/);
  });

  it('reads ranges, into a fresh buffer or a view into a larger one, split into parallel sub-ranges', async () => {
    const s = store('ranges');
    const data = bytes(5000, 9);
    await s.writeFile('d.bin', data);
    const src = await s.openRead('d.bin');
    try {
      expect(src.size).toBe(5000);
      expect(src.name).toBe('az://models/ranges/d.bin');
      expect(Buffer.from(await src.read(10, 20))).toEqual(Buffer.from(data.subarray(10, 30)));
      // 4321 bytes with readBlockBytes 1000 → five ranged downloads.
      expect(Buffer.from(await src.read(600, 4321))).toEqual(Buffer.from(data.subarray(600, 4921)));
      expect((await src.read(5000, 0)).length).toBe(0);

      // As the engine does with WebAssembly memory: a view at an offset into a bigger ArrayBuffer.
      const memory = new ArrayBuffer(8192);
      const whole = new Uint8Array(memory).fill(0xee);
      const view = new Uint8Array(memory, 100, 3000);
      const got = await src.read(1234, 2500, view);
      expect(got.buffer).toBe(memory);
      expect(got.byteOffset).toBe(100);
      expect(got.length).toBe(2500);
      expect(Buffer.from(whole.subarray(100, 2600))).toEqual(Buffer.from(data.subarray(1234, 3734)));
      expect(whole[99]).toBe(0xee);
      expect(whole[2600]).toBe(0xee); // nothing written past the requested length

      await expect(src.read(4990, 20)).rejects.toThrow(RangeError);
      await expect(src.read(0, 100, new Uint8Array(50))).rejects.toThrow(/too small/);
    } finally {
      await src.close();
    }
  });

  it('fails a read when the blob was replaced after opening', async () => {
    const s = store('pinned');
    await s.writeFile('p.bin', bytes(100, 1));
    const src = await s.openRead('p.bin');
    await s.writeFile('p.bin', bytes(100, 2));
    await expect(src.read(0, 10)).rejects.toThrow(/changed while it was being read/);
  });

  it('commits multi-block shards: prefix + body, streamed sha256', async () => {
    const s = store('shards', 1000);
    const prefix = bytes(16, 42);
    const a = bytes(2500, 1); // three blocks
    const b = bytes(300, 2);
    const c = bytes(1000, 3);
    const sink = await s.createShard('s1.safetensors', prefix.length, prefix);
    // Two writes in flight at once, as the engine overlaps them; order must hold.
    const w1 = sink.write(a);
    const w2 = sink.write(b);
    await Promise.all([w1, w2]);
    await sink.write(new Uint8Array(0));
    await sink.write(c);
    const res = await sink.commit(prefix);
    const expected = cat(prefix, a, b, c);
    expect(res.bytes).toBe(expected.length);
    expect(res.sha256).toBe(sha(expected));
    const blob = models.getBlockBlobClient('shards/s1.safetensors');
    expect(Buffer.from(await blob.downloadToBuffer())).toEqual(Buffer.from(expected));
    const list = await blob.getBlockList('committed');
    expect(list.committedBlocks?.length).toBe(1 + 3 + 1 + 1);
    const ids = list.committedBlocks!.map((x) => Buffer.from(x.name, 'base64').toString());
    expect(new Set(ids.map((x) => x.length)).size).toBe(1);
    await expect(sink.write(a)).rejects.toThrow(/committed/);

    // One write split into many blocks (more than are staged at once) keeps its order.
    const many = await store('shards', 100).createShard('s2.bin', 0, new Uint8Array(0));
    const big = bytes(1234, 7);
    expect((await many.write(big), await many.commit(new Uint8Array(0))).sha256).toBe(sha(big));
    expect((await models.getBlockBlobClient('shards/s2.bin').getBlockList('committed')).committedBlocks?.length).toBe(13);
    expect(Buffer.from(await models.getBlobClient('shards/s2.bin').downloadToBuffer())).toEqual(Buffer.from(big));
  });

  it('gathers the writes of a coalesced shard into full blocks, in order, and refuses to cut it back', async () => {
    const s = new BlobStore(models, 'shards', undefined, { writeBlockBytes: 1000 });
    const prefix = bytes(8, 9);
    const sink = await s.createShard('s3.safetensors', prefix.length, prefix, { coalesce: true });
    const parts = [bytes(300, 1), bytes(2500, 2), bytes(0, 0), bytes(999, 3), bytes(1, 4), bytes(450, 5)];
    // All in flight at once, as the engine overlaps them: more than the two blocks held.
    await Promise.all(parts.map((p) => sink.write(p)));
    await expect(sink.truncate(300)).rejects.toThrow(/cannot cut back/);
    const res = await sink.commit(prefix);
    const expected = cat(prefix, ...parts);
    expect(res.bytes).toBe(expected.length);
    expect(res.sha256).toBe(sha(expected));
    const blob = models.getBlockBlobClient('shards/s3.safetensors');
    expect(Buffer.from(await blob.downloadToBuffer())).toEqual(Buffer.from(expected));
    // 4250 body bytes: four full blocks of 1000 and one of 250, after the prefix's own block.
    const sizes = (await blob.getBlockList('committed')).committedBlocks!.map((x) => x.size);
    expect(sizes).toEqual([8, 1000, 1000, 1000, 1000, 250]);
  });

  it('without hashFrom, returns no hash; refuses a prefix of the wrong length', async () => {
    const s = store('shards');
    const sink = await s.createShard('nohash.bin', 4);
    await sink.write(bytes(10, 1));
    await expect(sink.commit(new Uint8Array(5))).rejects.toThrow(/prefix is 5 bytes, 4 were reserved/);
    const res = await sink.commit(new Uint8Array(4));
    expect(res).toEqual({ sha256: null, bytes: 14 });
  });

  it('truncates back to a write boundary and writes again; the hash falls back to the committed blob', async () => {
    const s = store('shards', 1000);
    const prefix = bytes(8, 5);
    const a = bytes(1500, 1);
    const b = bytes(700, 2);
    const c = bytes(900, 3);
    const sink = await s.createShard('t.bin', prefix.length, prefix);
    await sink.write(a);
    await sink.write(b);
    await expect(sink.truncate(1200)).rejects.toThrow(/not where a write ended/); // inside a block
    await expect(sink.truncate(1600)).rejects.toThrow(/not where a write ended/);
    await expect(sink.truncate(5000)).rejects.toThrow(RangeError);
    await sink.truncate(1500);
    await sink.write(c);
    const res = await sink.commit(prefix);
    const expected = cat(prefix, a, c);
    expect(res.bytes).toBe(expected.length);
    expect(res.sha256).toBe(sha(expected));
    expect(Buffer.from(await models.getBlobClient('shards/t.bin').downloadToBuffer())).toEqual(Buffer.from(expected));

    const again = await s.createShard('t0.bin', 2, new Uint8Array(2));
    await again.write(bytes(10, 1));
    await again.truncate(0);
    await again.write(bytes(5, 2));
    expect((await again.commit(new Uint8Array(2))).sha256).toBe(sha(new Uint8Array(2), bytes(5, 2)));
  });

  it('hashes the committed blob when the final prefix differs from hashFrom', async () => {
    const s = store('shards');
    const planned = bytes(32, 1);
    const final = bytes(32, 2);
    const body = bytes(3000, 3);
    const sink = await s.createShard('m.bin', 32, planned);
    await sink.write(body);
    const res = await sink.commit(final);
    expect(res.sha256).toBe(sha(final, body));
    expect(res.sha256).not.toBe(sha(planned, body));
  });

  it('records metadata and reads the plan tag back', async () => {
    const s = store('shards');
    const sink = await s.createShard('tagged.bin', 2, undefined, { metadata: { paramdeltaplan: 'plan-abc123' } });
    await sink.write(bytes(10, 1));
    await sink.commit(new Uint8Array(2));
    expect(await s.shardTag('tagged.bin')).toBe('plan-abc123');
    expect(await s.shardTag('absent.bin')).toBeNull();
    await s.writeFile('plain.bin', bytes(3, 1));
    expect(await s.shardTag('plain.bin')).toBeNull();
  });

  it('abort leaves nothing, or the earlier version, under the name', async () => {
    const s = store('aborts');
    const sink = await s.createShard('x.bin', 4, new Uint8Array(4));
    await sink.write(bytes(100, 1));
    await sink.abort();
    expect(await s.exists('x.bin')).toBe(false);
    expect(await s.list()).toEqual([]);

    await s.writeFile('y.bin', 'old');
    const sink2 = await s.createShard('y.bin', 0);
    await sink2.write(bytes(100, 1));
    await sink2.abort();
    expect(await s.readText('y.bin')).toBe('old');
    await expect(sink2.commit(new Uint8Array(0))).rejects.toThrow(/aborted/);
  });

  it('two attempts at one shard never mix: the later commit fails', async () => {
    const s = store('race');
    const one = await s.createShard('r.bin', 2);
    const two = await s.createShard('r.bin', 2);
    await one.write(bytes(100, 1));
    await two.write(bytes(100, 2));
    await two.commit(new Uint8Array(2));
    await expect(one.commit(new Uint8Array(2))).rejects.toThrow(/staged blocks are gone/);
    const got = await models.getBlobClient('race/r.bin').downloadToBuffer();
    expect(Buffer.from(got)).toEqual(Buffer.from(cat(new Uint8Array(2), bytes(100, 2))));
  });

  it('remove and removeAll', async () => {
    const s = store('gone/a');
    await s.writeFile('one.bin', 'x');
    await s.writeFile('two.bin', 'y');
    await models.getBlockBlobClient('gone/a/nested/three.bin').upload('z', 1);
    await models.getBlockBlobClient('gone/keep.bin').upload('k', 1);
    await s.remove('one.bin');
    await s.remove('one.bin'); // already gone: fine
    expect(await s.list()).toEqual(['two.bin']);
    await s.removeAll();
    const left: string[] = [];
    for await (const b of models.listBlobsFlat({ prefix: 'gone/' })) left.push(b.name);
    expect(left).toEqual(['gone/keep.bin']);
    await expect(new BlobStore(models, '').removeAll()).rejects.toThrow(/refusing/);
  });

  it('resolves references within the allow-list only', async () => {
    const resolve = blobResolver(service, ['models']);
    const s = resolve('az://models/rw/');
    expect(s).toBeInstanceOf(BlobStore);
    expect(s.ref).toBe('az://models/rw');
    expect(await s.readText('config.json')).toBe('replaced');
    expect(resolve('models/rw').ref).toBe('az://models/rw');
    expect(() => resolve('outputs/x')).toThrow(InputError);
    expect(() => resolve('https://evil/x')).toThrow(InputError);
  });

  it('reads the fixture checkpoint from blob storage as from the local folder', async () => {
    const dir = path.join(fixturesDir, 'tiny-llama-bf16/base');
    const s = new BlobStore(models, 'tiny/base');
    for (const f of await readdir(dir)) await s.writeFile(f, await readFile(path.join(dir, f)));
    const local = await openCheckpoint(new LocalStore(dir));
    const remote = await openCheckpoint(s);
    expect(remote.files).toEqual(local.files);
    expect(remote.config).toEqual(local.config);
    expect(remote.tensors).toEqual(local.tensors);
    expect(remote.tensors.length).toBeGreaterThan(0);
    // And tensor bytes agree.
    const t = remote.tensors[remote.tensors.length - 1];
    const [rs, ls] = [await s.openRead(t.file), await new LocalStore(dir).openRead(t.file)];
    try {
      expect(Buffer.from(await rs.read(t.offset, t.byteLength))).toEqual(Buffer.from(await ls.read(t.offset, t.byteLength)));
    } finally {
      await Promise.all([rs.close(), ls.close()]);
    }
  });

  describe('settings', () => {
    it('UseDevelopmentStorage=true means Azurite on its default port', () => {
      const svc = blobServiceFromSettings({ AzureWebJobsStorage: 'UseDevelopmentStorage=true' });
      expect(svc.url).toMatch(/^http:\/\/127\.0\.0\.1:10000\/devstoreaccount1\/?$/);
      expect(svc.accountName).toBe('devstoreaccount1');
    });

    it('a full connection string, under a custom connection name', async () => {
      const svc = blobServiceFromSettings({ MyStorage: azurite.connectionString }, 'MyStorage');
      const names: string[] = [];
      for await (const c of svc.listContainers()) names.push(c.name);
      expect(names).toEqual(expect.arrayContaining(['models', 'outputs']));
    });

    it('identity-based settings use DefaultAzureCredential', () => {
      const byName = blobServiceFromSettings({ AzureWebJobsStorage__accountName: 'myacct' });
      expect(byName.url).toBe('https://myacct.blob.core.windows.net/');
      expect(byName.credential).toBeInstanceOf(DefaultAzureCredential);
      const byUri = blobServiceFromSettings({
        X__blobServiceUri: 'https://other.blob.core.windows.net',
        X__accountName: 'ignored',
        X__credential: 'managedidentity',
        X__clientId: '00000000-0000-0000-0000-000000000001',
      }, 'X');
      expect(byUri.url).toBe('https://other.blob.core.windows.net/');
      expect(blobServiceFromSettings({ X__serviceUri: 'https://third.blob.core.windows.net/' }, 'X').url).toBe('https://third.blob.core.windows.net/');
      expect(() => blobServiceFromSettings({ X__blobServiceUri: 'https://a.blob.core.windows.net/?sig=SECRETSAS' }, 'X')).toThrow(/X__blobServiceUri/);
      expect(() => blobServiceFromSettings({ X__blobServiceUri: 'http://a.blob.core.windows.net/' }, 'X')).toThrow(/https/);
    });

    it('errors name the setting and never carry secrets', () => {
      const secret = 'c2VjcmV0LXNlY3JldC1zZWNyZXQ=';
      const msg = (fn: () => unknown) => {
        try {
          fn();
        } catch (e) {
          return (e as Error).message;
        }
        throw new Error('expected an error');
      };
      const none = msg(() => blobServiceFromSettings({ OtherStorage: `AccountKey=${secret}`, AzureWebJobsStorage: '  ' }));
      expect(none).toMatch(/AzureWebJobsStorage/);
      expect(none).toMatch(/__accountName/);
      expect(none).not.toContain(secret);

      const broken = msg(() => blobServiceFromSettings({ AzureWebJobsStorage: `DefaultEndpointsProtocol=https;AccountKey=${secret};EndpointSuffix=core.windows.net` }));
      expect(broken).toMatch(/AzureWebJobsStorage/);
      expect(broken).not.toContain(secret);
      expect(broken).not.toContain(AZURITE_KEY);

      const sas = msg(() => blobServiceFromSettings({ S__blobServiceUri: `https://a.blob.core.windows.net/?sig=${secret}` }, 'S'));
      expect(sas).not.toContain(secret);
      const cli = msg(() => blobServiceFromConnectionString(`AccountName=x;AccountKey=${secret};BlobEndpoint=not a url`));
      expect(cli).not.toContain(secret);
    });
  });
});
