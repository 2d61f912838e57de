import { describe, it, expect } from 'vitest';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readFile } from 'node:fs/promises';
import { fixturesDir } from './helpers/fixtures.js';
import { withTempDir } from './helpers/models.js';

// vitest transforms sources; these run what `npm run build` emits under Node's own ESM loader,
// which is stricter about CommonJS named exports (as the Functions host and `npx paramdelta` are).
const run = promisify(execFile);
const root = fileURLToPath(new URL('..', import.meta.url));
const cli = path.join(root, 'dist/cli/index.js');

describe('the built JavaScript (npm test builds it first)', () => {
  it('loads the Functions entry point and the local host under plain Node', async () => {
    const code = `await import(${JSON.stringify(path.join(root, 'dist/functions/index.js'))}); const s = await import(${JSON.stringify(path.join(root, 'dist/cli/host/serve.js'))}); process.stdout.write(typeof s.startServe);`;
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', code], { env: { ...process.env, AzureWebJobsStorage: 'UseDevelopmentStorage=true' } });
    expect(stdout).toBe('function');
  });

  it('runs the paramdelta bin: compute then apply, byte for byte', () =>
    withTempDir(async (tmp) => {
      const fam = path.join(fixturesDir, 'tiny-llama-f16');
      const { stdout: version } = await run(process.execPath, [cli, '--version']);
      expect(version.trim()).toBe(JSON.parse(await readFile(path.join(root, 'package.json'), 'utf8')).version);
      await run(process.execPath, [cli, 'compute', '--base', `${fam}/base`, '--post', `${fam}/post`, '--out', `${tmp}/d`]);
      const { stdout } = await run(process.execPath, [cli, 'apply', '--base', `${fam}/newbase`, '--delta', `${tmp}/d`, '--out', `${tmp}/m`, '--json']);
      expect(JSON.parse(stdout).ok).toBe(true);
      const got = await readFile(`${tmp}/m/model-00001-of-00001.safetensors`);
      expect(got.equals(await readFile(`${fam}/expected/apply-post-1.0/model.safetensors`))).toBe(true);
    }));
});
