import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import path from 'node:path';
import { readFile } from 'node:fs/promises';
import { BlobServiceClient } from '@azure/storage-blob';
import { fixturesDir } from './helpers/fixtures.js';
import { withTempDir } from './helpers/models.js';
import { listNames, uploadFolder } from './helpers/blob.js';
import { startAzurite, type Azurite } from '../cli/host/azurite.js';
import { runCli } from './helpers/cli.js';

const BF16 = path.join(fixturesDir, 'tiny-llama-bf16');
let azurite: Azurite;

const run = (args: string[]) => runCli([...args, '--storage', azurite.connectionString]);

beforeAll(async () => {
  azurite = await startAzurite();
  const service = BlobServiceClient.fromConnectionString(azurite.connectionString);
  for (const c of ['models', 'deltas', 'posted-models', 'base-models']) await service.getContainerClient(c).createIfNotExists();
  for (const m of ['base', 'post']) await uploadFolder(service.getContainerClient('models'), `tiny/${m}`, path.join(BF16, m));
});

afterAll(async () => {
  await azurite?.stop();
});

describe('CLI on az:// references', () => {
  it('computes into blob storage, verifies there, and applies from it to a local folder', () =>
    withTempDir(async (tmp) => {
      const c = await run(['compute', '--base', 'az://models/tiny/base', '--post', 'az://models/tiny/post', '--out', 'az://deltas/chat']);
      expect(c.stderr).toBe('');
      expect(c.code).toBe(0);
      const service = BlobServiceClient.fromConnectionString(azurite.connectionString);
      expect(await listNames(service.getContainerClient('deltas'), 'chat')).toEqual(
        ['delta-00001-of-00001.pdelta', 'delta.json', 'tokenizer_config.json'],
      );
      const v = await run(['verify', '--base', 'az://models/tiny/base', '--post', 'az://models/tiny/post', '--delta', 'az://deltas/chat']);
      expect(v.code).toBe(0);
      const out = path.join(tmp, 'out');
      const a = await run(['apply', '--base', path.join(BF16, 'newbase'), '--delta', 'az://deltas/chat', '--out', out]);
      expect(a.code).toBe(0);
      expect((await readFile(path.join(out, 'model-00001-of-00001.safetensors'))).equals(await readFile(path.join(BF16, 'expected/apply-post-1.0/model.safetensors')))).toBe(true);

      const again = await run(['compute', '--base', 'az://models/tiny/base', '--post', 'az://models/tiny/post', '--out', 'az://deltas/chat']);
      expect(again.code).toBe(2);
      expect(again.stderr).toMatch(/already holds a complete delta\.json; pass --force/);
      expect((await run(['compute', '--base', 'az://models/tiny/base', '--post', 'az://models/tiny/post', '--out', 'az://deltas/chat', '--force'])).code).toBe(0);
      // Replaced by a plain delta, the folder holds only the plain layout's files.
      const plain = ['compute', '--base', 'az://models/tiny/base', '--post', 'az://models/tiny/post', '--out', 'az://deltas/chat', '--force', '--delta-format', 'safetensors'];
      expect((await run(plain)).code).toBe(0);
      expect(await listNames(service.getContainerClient('deltas'), 'chat')).toEqual(
        ['delta-00001-of-00001.safetensors', 'delta.json', 'delta.safetensors.index.json', 'tokenizer_config.json'],
      );
      const back = await run(['convert', 'az://deltas/chat', '--to', 'compact', '--out', 'az://deltas/chat-compact']);
      expect(back.code).toBe(0);
      const a2 = await run(['apply', '--base', path.join(BF16, 'newbase'), '--delta', 'az://deltas/chat-compact', '--out', path.join(tmp, 'out2')]);
      expect(a2.code).toBe(0);
      expect((await readFile(path.join(tmp, 'out2', 'model-00001-of-00001.safetensors'))).equals(await readFile(path.join(BF16, 'expected/apply-post-1.0/model.safetensors')))).toBe(true);

      const outside = await run(['inspect', 'az://secrets/x']);
      expect(outside.code).toBe(2);
      expect(outside.stderr).toMatch(/secrets/);
      const i = await run(['inspect', 'az://deltas/chat', '--json']);
      expect(JSON.parse(i.stdout)).toMatchObject({ kind: 'delta', tensors: expect.any(Array) });
    }));
  it('a malformed --storage connection string is bad input (exit 2), named and never echoed', async () => {
    const secret = 'AccountName=x;AccountKey=notbase64secret;Nonsense';
    const r = await runCli(['inspect', 'az://deltas/chat', '--storage', secret]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--storage');
    expect(r.stderr).not.toContain('notbase64secret');
  });
});
