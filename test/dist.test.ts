import { beforeAll, describe, it, expect } from 'vitest';
import { execFile, execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { readdirSync, readFileSync, statSync } from 'node:fs';
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

/** Sources tsconfig.json compiles whose dist/ output is missing or older than they are. */
function staleOutputs(): string[] {
  const tsconfig = JSON.parse(readFileSync(path.join(root, 'tsconfig.json'), 'utf8')) as { include: string[]; compilerOptions: { outDir: string } };
  const folders = [...new Set(tsconfig.include.map((g) => g.split('/')[0]))];
  const stale: string[] = [];
  const walk = (rel: string) => {
    for (const e of readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const file = path.join(rel, e.name);
      if (e.isDirectory()) walk(file);
      else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) {
        const out = path.join(root, tsconfig.compilerOptions.outDir, file.replace(/\.ts$/, '.js'));
        const built = statSync(out, { throwIfNoEntry: false });
        if (!built || built.mtimeMs < statSync(path.join(root, file)).mtimeMs) stale.push(file);
      }
    }
  };
  for (const f of folders) walk(f);
  return stale;
}

// `npm test` builds first; a bare `vitest run` after editing a source would otherwise run the old code.
beforeAll(() => {
  if (staleOutputs().length === 0) return;
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  execFileSync(process.execPath, [tsc, '-p', path.join(root, 'tsconfig.json')], { cwd: root, stdio: 'pipe' });
  const still = staleOutputs();
  if (still.length) throw new Error(`dist/ is older than its sources even after building: ${still.slice(0, 5).join(', ')}`);
}, 180_000);

describe('the built JavaScript (npm test builds it first)', () => {
  it('is newer than every source it is built from', () => {
    expect(staleOutputs()).toEqual([]);
  });


  it('loads the Functions entry point and the local host under plain Node', async () => {
    const code = `await import(${JSON.stringify(path.join(root, 'dist/functions/index.js'))}); const s = await import(${JSON.stringify(path.join(root, 'dist/cli/host/serve.js'))}); process.stdout.write(typeof s.startServe);`;
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', code], { env: { ...process.env, AzureWebJobsStorage: 'UseDevelopmentStorage=true' } });
    expect(stdout).toBe('function');
  });

  it('starts codec workers in an inline module script, as the benchmarks run the CLI', async () => {
    // Node refuses a file worker under --input-type; before the pool dropped it, every job ran on the main thread.
    const code = `const { CodecPool, sharedBytes } = await import(${JSON.stringify(path.join(root, 'dist/lib/codec/pool.js'))});
      const p = new CodecPool(2), n = 4096, raw = sharedBytes(n * 2), out = sharedBytes(4 * n * 2);
      await p.encode(raw, n, 2, out); await p.encode(raw, n, 2, out);
      process.stdout.write(String(p.running)); await p.close();`;
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', code]);
    expect(Number(stdout)).toBeGreaterThan(0);
  });

  it('loads for a local compute neither the Azure SDK, the Hub client nor ONNX (every command would start half a second later)', () =>
    withTempDir(async (tmp) => {
      const fam = path.join(fixturesDir, 'tiny-llama-f16');
      // A preloaded resolve hook lists every module the process loads.
      const hook = `import { registerHooks } from 'node:module'; import { writeFileSync } from 'node:fs';
        const seen = []; registerHooks({ resolve(s, c, next) { const r = next(s, c); seen.push(r.url); return r; } });
        process.on('exit', () => writeFileSync(process.env.LOADED_LIST, seen.join('\\n')));`;
      const list = path.join(tmp, 'loaded.txt');
      await run(process.execPath, ['--import', `data:text/javascript,${encodeURIComponent(hook)}`, cli, 'compute', '--base', `${fam}/base`, '--post', `${fam}/post`, '--out', `${tmp}/d`], {
        env: { ...process.env, LOADED_LIST: list },
      });
      const loaded = (await readFile(list, 'utf8')).split('\n');
      expect(loaded.filter((u) => /node_modules\/(commander|zstd-napi)\//.test(u)).length).toBeGreaterThan(0);
      expect(loaded.filter((u) => /node_modules\/(@azure|@huggingface|onnx-proto|onnxruntime-node|protobufjs)\//.test(u))).toEqual([]);
      expect(loaded.filter((u) => /dist\/(cli\/commands\/(?!compute)|lib\/eval\/(forward|graphs|probes))/.test(u))).toEqual([]);
    }));

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
