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
import { runCli } from './helpers/cli.js';
import { packIsCurrent } from '../lib/wasm/assembler.js';
import { decodePack } from '../lib/wasm/pack.js';

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

const pack = path.join(root, 'dist/lib/wasm/modules.wasmpack');
/** Whether dist/ has a WebAssembly pack made from the code beside it. */
function packCurrent(): boolean {
  try {
    return packIsCurrent(decodePack(readFileSync(pack), pack), path.dirname(pack));
  } catch {
    return false;
  }
}
// `npm test` packs after building; after a bare tsc the pack would be retired (and every command would load wabt).
beforeAll(() => {
  if (!packCurrent()) execFileSync(process.execPath, [path.join(root, 'dist/build/wasm-pack.js')], { cwd: root, stdio: 'pipe' });
}, 180_000);

/** A preloaded resolve hook that writes every module URL the process loads to $LOADED_LIST. */
const listLoaded = `data:text/javascript,${encodeURIComponent(`import { registerHooks } from 'node:module'; import { writeFileSync } from 'node:fs';
  const seen = []; registerHooks({ resolve(s, c, next) { const r = next(s, c); seen.push(r.url); return r; } });
  process.on('exit', () => writeFileSync(process.env.LOADED_LIST, seen.join('\\n')));`)}`;

/** Runs Node with `args` under listLoaded; its stdout and the URL of every module it loaded. */
async function runListingLoaded(tmp: string, args: string[]): Promise<{ stdout: string; loaded: string[] }> {
  const list = path.join(tmp, 'loaded.txt');
  const { stdout } = await run(process.execPath, ['--import', listLoaded, ...args], { env: { ...process.env, LOADED_LIST: list } });
  return { stdout, loaded: (await readFile(list, 'utf8')).split('\n') };
}
const wabtIn = (loaded: string[]) => loaded.filter((u) => /node_modules\/wabt\//.test(u));

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

  it('loads for a local compute neither the Azure SDK, the Hub client, ONNX nor wabt (every command would start half a second later)', () =>
    withTempDir(async (tmp) => {
      const fam = path.join(fixturesDir, 'tiny-llama-f16');
      const { loaded } = await runListingLoaded(tmp, [cli, 'compute', '--base', `${fam}/base`, '--post', `${fam}/post`, '--out', `${tmp}/d`]);
      expect(loaded.filter((u) => /node_modules\/(commander|zstd-napi)\//.test(u)).length).toBeGreaterThan(0);
      expect(loaded.filter((u) => /node_modules\/(@azure|@huggingface|onnx-proto|onnxruntime-node|protobufjs|wabt)\//.test(u))).toEqual([]);
      expect(loaded.filter((u) => /dist\/(cli\/commands\/(?!compute)|lib\/eval\/(forward|graphs|probes))/.test(u))).toEqual([]);
    }));

  it('runs every kernel pairing from the build\'s WebAssembly pack, bit for bit as the reference kernels, without loading wabt', () =>
    withTempDir(async (tmp) => {
      const dist = (f: string) => JSON.stringify(path.join(root, 'dist/lib/kernels', f));
      // Inputs: float64 values rounded into each dtype by the reference kernels; post is base nudged by up to 1 %, as
      // a fine-tune moves it. n is not a multiple of the vector width, so each scalar tail runs too.
      const code = `const { createKernels, newSubtractStats } = await import(${dist('index.js')});
        const { FORMATS } = await import(${dist('wat.js')});
        const W = await createKernels({ arenaBytes: 32 << 20 }), R = await createKernels({ arenaBytes: 32 << 20, impl: 'reference' });
        const n = 4099, size = { BF16: 2, F16: 2, F32: 4, F64: 8 };
        let s = 7; const rnd = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32;
        const zero = { dtype: 'F64', data: new Uint8Array(8 * n), scale: 1 };
        const as = (v, d) => { const out = new Uint8Array(n * size[d]); R.apply('F64', new Uint8Array(v.buffer), [zero], n, d, out); return out; };
        const base = Float64Array.from({ length: n }, () => (rnd() - 0.5) * 2 ** Math.floor(rnd() * 12 - 8));
        const post = base.map((x) => x * (1 + (rnd() - 0.5) * 0.02));
        const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
        let checked = 0; const mismatches = [];
        for (const x of FORMATS) for (const y of FORMATS) for (const probe of [undefined, 'BF16', 'F16', 'F32']) {
          const [b, p] = [as(base, x), as(post, x)], ow = new Uint8Array(n * size[y]), or = new Uint8Array(n * size[y]);
          const sw = newSubtractStats(), sr = newSubtractStats();
          W.subtract(x, b, p, n, y, ow, sw, probe); R.subtract(x, b, p, n, y, or, sr, probe); checked++;
          if (!same(ow, or) || JSON.stringify(sw) !== JSON.stringify(sr)) mismatches.push(['subtract', x, y, probe ?? 'none']);
        }
        for (const x of FORMATS) for (const y of FORMATS) for (const d of FORMATS) for (const ds of [[d], ...FORMATS.map((e) => [d, e])]) {
          const deltas = ds.map((t, k) => ({ dtype: t, data: as(post.map((v, i) => (v - base[i]) * (k ? -0.5 : 1)), t), scale: k ? 0.3 : 0.7 }));
          const ow = new Uint8Array(n * size[y]), or = new Uint8Array(n * size[y]);
          W.apply(x, as(base, x), deltas, n, y, ow); R.apply(x, as(base, x), deltas, n, y, or); checked++;
          if (!same(ow, or)) mismatches.push(['apply', x, ...ds, y]);
        }
        process.stdout.write(JSON.stringify({ checked, mismatches }));`;
      const { stdout, loaded } = await runListingLoaded(tmp, ['--input-type=module', '-e', code]);
      // subtract: model × delta dtype × probe; apply: model × output × (one delta, or two of any dtypes)
      expect(JSON.parse(stdout)).toEqual({ checked: 4 * 4 * 4 + 4 * 4 * 4 * (1 + 4), mismatches: [] });
      expect(wabtIn(loaded)).toEqual([]);
    }));

  it('applies TIES with the pack\'s fusion kernels byte for byte as the sources do with wabt\'s', () =>
    withTempDir(async (tmp) => {
      const fam = path.join(fixturesDir, 'tiny-llama-bf16');
      const args = (out: string) => ['apply', '--base', `${fam}/newbase`, '--delta', `${tmp}/d1`, '--delta', `${tmp}/d2`, '--method', 'ties', '--density', '0.5', '--out', out];
      await run(process.execPath, [cli, 'compute', '--base', `${fam}/base`, '--post', `${fam}/post`, '--out', `${tmp}/d1`]);
      await run(process.execPath, [cli, 'compute', '--base', `${fam}/base`, '--post', `${fam}/post2`, '--out', `${tmp}/d2`]);
      expect(wabtIn((await runListingLoaded(tmp, [cli, ...args(`${tmp}/built`)])).loaded)).toEqual([]);
      expect(await runCli(args(`${tmp}/sources`))).toMatchObject({ code: 0 });
      const got = await readFile(`${tmp}/built/model-00001-of-00001.safetensors`);
      expect(got.equals(await readFile(`${tmp}/sources/model-00001-of-00001.safetensors`))).toBe(true);
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
