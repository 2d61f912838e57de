import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import path from 'node:path';
import { cp, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import { fixturesDir } from './helpers/fixtures.js';
import { withTempDir } from './helpers/models.js';
import { listNames } from './helpers/blob.js';
import { runCli } from './helpers/cli.js';
import { startAzurite, type Azurite } from '../cli/host/azurite.js';
import { LocalStore } from '../lib/storage/local.js';
import { BlobStore } from '../lib/storage/blob.js';
import { DOWNLOAD_TAG, planTransfer, transfer } from '../lib/storage/transfer.js';
import type { ByteSource, ShardOptions, ShardSink, Store } from '../lib/storage/types.js';

const BASE = path.join(fixturesDir, 'tiny-llama-bf16', 'base');
const POST = path.join(fixturesDir, 'tiny-llama-bf16', 'post');
let azurite: Azurite;
let models: ContainerClient;

const run = (args: string[]) => runCli([...args, '--storage', azurite.connectionString]);
const md5 = (b: Uint8Array) => createHash('md5').update(b).digest('base64');

beforeAll(async () => {
  azurite = await startAzurite();
  models = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient('models');
  await models.createIfNotExists();
});

afterAll(async () => {
  await azurite?.stop();
});

/** A store whose committed files are recorded in order, and whose reads can be made to fail. */
function recording(inner: Store, opts: { failReadOf?: string } = {}): Store & { committed: string[] } {
  const committed: string[] = [];
  return Object.assign(Object.create(inner) as Store, {
    committed,
    async openRead(file: string): Promise<ByteSource> {
      const src = await inner.openRead(file);
      if (file !== opts.failReadOf) return src;
      let reads = 0;
      return { name: src.name, size: src.size, close: () => src.close(), read: (o, n, into) => (++reads > 1 ? Promise.reject(new Error('connection reset')) : src.read(o, n, into)) };
    },
    async createShard(file: string, prefixLength: number, hashFrom?: Uint8Array, o?: ShardOptions): Promise<ShardSink> {
      const sink = await inner.createShard(file, prefixLength, hashFrom, o);
      return Object.assign(Object.create(sink) as ShardSink, {
        write: (d: Uint8Array) => sink.write(d),
        truncate: (n: number) => sink.truncate(n),
        abort: () => sink.abort(),
        commit: async (p: Uint8Array) => {
          const r = await sink.commit(p);
          committed.push(file);
          return r;
        },
      });
    },
  });
}

async function sameBytes(dir: string, prefix: string): Promise<void> {
  const local = (await readdir(dir)).sort();
  expect(await listNames(models, prefix)).toEqual(local);
  for (const f of local) {
    const blob = await models.getBlobClient(`${prefix}/${f}`).downloadToBuffer();
    expect(blob.equals(await readFile(path.join(dir, f))), f).toBe(true);
    const props = await models.getBlobClient(`${prefix}/${f}`).getProperties();
    expect(Buffer.from(props.contentMD5!).toString('base64'), `${f} Content-MD5`).toBe(md5(blob));
  }
}

describe('upload and download', () => {
  it('round-trips a checkpoint byte for byte, the index last both ways, and skips what is already there', () =>
    withTempDir(async (tmp) => {
      const to = recording(new BlobStore(models, 'roundtrip'));
      const from = new LocalStore(POST);
      const r = await transfer(await planTransfer(from, to), from, to, { chunkBytes: 64 << 10 });
      expect(to.committed.at(-1)).toBe('model.safetensors.index.json');
      expect(r.sent.sort()).toEqual((await readdir(POST)).sort());
      await sameBytes(POST, 'roundtrip');

      const again = await run(['upload', POST, 'az://models/roundtrip', '--json']);
      expect(again.code).toBe(0);
      const j = JSON.parse(again.stdout);
      expect(j.sent).toEqual([]);
      expect(j.skipped.sort()).toEqual((await readdir(POST)).sort());

      const down = recording(new LocalStore(path.join(tmp, 'down')));
      const src = new BlobStore(models, 'roundtrip');
      await transfer(await planTransfer(src, down), src, down, { chunkBytes: 64 << 10 });
      expect(down.committed.at(-1)).toBe('model.safetensors.index.json');
      for (const f of await readdir(POST)) {
        expect((await readFile(path.join(tmp, 'down', f))).equals(await readFile(path.join(POST, f))), f).toBe(true);
      }
      const d2 = JSON.parse((await run(['download', 'az://models/roundtrip', path.join(tmp, 'down'), '--json'])).stdout);
      expect(d2.sent).toEqual([]);
      const forced = JSON.parse((await run(['download', 'az://models/roundtrip', path.join(tmp, 'down'), '--json', '--force'])).stdout);
      expect(forced.sent.sort()).toEqual((await readdir(POST)).sort());
    }));

  it('resumes an interrupted upload, sending only what did not arrive, and the marker again', async () => {
    const from = recording(new LocalStore(BASE), { failReadOf: 'model-00002-of-00002.safetensors' });
    const to = new BlobStore(models, 'resume');
    const plan = await planTransfer(from, to);
    await expect(transfer(plan, from, to, { chunkBytes: 16 << 10 })).rejects.toThrow(/connection reset/);
    // config.json and the first shard arrived; the second shard and the index did not.
    expect(await listNames(models, 'resume')).toEqual(['config.json', 'model-00001-of-00002.safetensors']);

    const r = await run(['upload', BASE, 'az://models/resume', '--json']);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.skipped.sort()).toEqual(['config.json', 'model-00001-of-00002.safetensors']);
    expect(j.sent).toEqual(['model-00002-of-00002.safetensors', 'model.safetensors.index.json']);
    await sameBytes(BASE, 'resume');
  });

  it('refuses a folder with a missing shard before anything is uploaded', () =>
    withTempDir(async (tmp) => {
      const dir = path.join(tmp, 'partial');
      await cp(BASE, dir, { recursive: true });
      await rm(path.join(dir, 'model-00002-of-00002.safetensors'));
      const r = await run(['upload', dir, 'az://models/partial']);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/incomplete, nothing was sent: missing model-00002-of-00002\.safetensors/);
      expect(await listNames(models, 'partial')).toEqual([]);
      const notModel = await run(['upload', tmp, 'az://models/nothing']);
      expect(notModel.code).toBe(2);
      expect(notModel.stderr).toMatch(/not a checkpoint or delta folder/);
      expect((await run(['upload', 'az://models/x', 'az://models/y'])).code).toBe(2);
    }));

  it('download writes only into a new or empty folder, or an earlier download of the same source; --force writes into another, deleting nothing', () =>
    withTempDir(async (tmp) => {
      expect((await run(['upload', POST, 'az://models/dl/post'])).code).toBe(0);
      expect((await run(['upload', BASE, 'az://models/dl/base'])).code).toBe(0);
      const postFiles = (await readdir(POST)).sort();

      // A new folder: the tag first, then the files; a rerun into it is an earlier download of the same source.
      const fresh = path.join(tmp, 'fresh');
      expect((await run(['download', 'az://models/dl/post', fresh])).code).toBe(0);
      expect((await readdir(fresh)).sort()).toEqual([DOWNLOAD_TAG, ...postFiles].sort());
      expect(JSON.parse(await readFile(path.join(fresh, DOWNLOAD_TAG), 'utf8'))).toMatchObject({ source: 'az://models/dl/post' });
      const again = JSON.parse((await run(['download', 'az://models/dl/post', fresh, '--json'])).stdout);
      expect(again.sent).toEqual([]);
      // Another model into the same folder: refused, nothing written.
      const other = await run(['download', 'az://models/dl/base', fresh]);
      expect(other.code).toBe(2);
      expect(other.stderr).toContain(`holds ${DOWNLOAD_TAG}, `);
      expect(other.stderr).toContain('and is not an earlier download of az://models/dl/base');
      for (const f of postFiles) expect((await readFile(path.join(fresh, f))).equals(await readFile(path.join(POST, f))), f).toBe(true);

      // A folder of the user's own: refused without --force, and left as it was.
      const mine = path.join(tmp, 'mine');
      await mkdir(mine);
      await writeFile(path.join(mine, 'notes.txt'), 'mine');
      const refused = await run(['download', 'az://models/dl/post', mine]);
      expect(refused.code).toBe(2);
      expect(refused.stderr).toMatch(/mine: holds notes\.txt, and is not an earlier download of az:\/\/models\/dl\/post; .*--force/);
      expect(await readdir(mine)).toEqual(['notes.txt']);
      // With --force the files arrive beside it; nothing is deleted, and no tag claims the folder.
      expect((await run(['download', 'az://models/dl/post', mine, '--force'])).code).toBe(0);
      expect((await readdir(mine)).sort()).toEqual(['notes.txt', ...postFiles].sort());
      expect(await readFile(path.join(mine, 'notes.txt'), 'utf8')).toBe('mine');
    }));

  it('upload refuses a whole container and a prefix holding files the folder does not have, before sending anything', async () => {
    const root = await run(['upload', POST, 'az://models']);
    expect(root.code).toBe(2);
    expect(root.stderr).toMatch(/<ref>: az:\/\/models is a whole container/);

    expect((await run(['upload', BASE, 'az://models/mixed'])).code).toBe(0);
    const before = await listNames(models, 'mixed');
    // post has three shards and a tokenizer_config.json; base's two shards would stay beside them, a mixed folder.
    const mixed = await run(['upload', POST, 'az://models/mixed']);
    expect(mixed.code).toBe(2);
    expect(mixed.stderr).toMatch(/az:\/\/models\/mixed: holds .*which .*post does not have/);
    expect(await listNames(models, 'mixed')).toEqual(before);
    // A subfolder under the prefix is another model's: refused too.
    expect((await run(['upload', BASE, 'az://models/outer/inner'])).code).toBe(0);
    const around = await run(['upload', BASE, 'az://models/outer']);
    expect(around.code).toBe(2);
    expect(around.stderr).toMatch(/holds inner\//);
    expect(await listNames(models, 'outer')).toEqual((await readdir(BASE)).map((f) => `inner/${f}`).sort());
  });
});
