// npm run bench:eval [-- --size 1GiB --seqs 64 --len 128 --rounds 2 --dir /tmp/x --keep --eval-args "--batch-tokens 512"]
// Generates a BF16 Llama-shaped model, then times `paramdelta eval` over seqs × len tokens in a child
// process (its peak RSS is its own) against the ceiling measured in the same run, before and after:
// onnxruntime's own MatMul of the model's shapes (the fused q/k/v, o, gate/up, down projections and
// the head) over all the tokens, with the same thread count, in one batch and in eval-sized calls.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeSyntheticModel } from '../lib/synth/family.js';
import { formatBytes, parseSize } from '../lib/ops/sizes.js';
import { matmulGraph } from '../lib/eval/graphs.js';
import { EvalRuntime } from '../lib/eval/runtime.js';
import { openEvalModel } from '../lib/eval/evaluate.js';
import { layerElements } from '../lib/eval/arch.js';
import { LocalStore } from '../lib/storage/local.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const size = parseSize(opt('--size', '1GiB'));
const seqs = Number(opt('--seqs', '64'));
const len = Number(opt('--len', '128'));
const rounds = Number(opt('--rounds', '2'));
const keep = args.includes('--keep');
const extra = opt('--eval-args', '').split(' ').filter(Boolean);
const cli = fileURLToPath(new URL('../cli/index.js', import.meta.url));

const root = opt('--dir', '') || (await mkdtemp(path.join(os.tmpdir(), 'paramdelta-bench-eval-')));
console.log(`machine: ${os.cpus()[0]?.model} x${os.availableParallelism()}, ${formatBytes(os.totalmem())} RAM, node ${process.version}`);
let t0 = performance.now();
const model = await writeSyntheticModel(path.join(root, 'model'), { dtype: 'BF16', bytes: size, shards: 4, hidden: 2048 });
const spec = await openEvalModel({ resolve: (r) => new LocalStore(r) }, model.dir);
console.log(
  `generated a BF16 Llama-shaped model: ${formatBytes(model.bytes)}, ${(spec.parameters / 1e6).toFixed(0)}M parameters, ${spec.layers} layers, ` +
    `hidden ${spec.hidden}, intermediate ${spec.intermediate}, vocab ${spec.vocab}, in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
);

// Token sequences: fixed pseudo-random ids.
let s = 12345;
const rand = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0), s >>> 8);
const tokensFile = path.join(root, 'tokens.json');
await writeFile(tokensFile, JSON.stringify(Array.from({ length: seqs }, () => Array.from({ length: len }, () => rand() % spec.vocab))));
const tokens = seqs * len;
const flops = 2 * spec.parameters * tokens;

// The ceiling: every matmul of the model at full batch, in the engine alone.
const H = spec.hidden;
const I = spec.intermediate;
const qkv = (spec.heads + 2 * spec.kvHeads) * spec.headDim;
const shapes: { k: number; m: number; times: number }[] = [
  { k: H, m: qkv, times: spec.layers },
  { k: spec.heads * spec.headDim, m: H, times: spec.layers },
  { k: H, m: 2 * I, times: spec.layers },
  { k: I, m: H, times: spec.layers },
  { k: H, m: spec.vocab, times: 1 },
];
/** Random activations in [-1, 1), and weights rounded to BF16 values as the model's are (throughput here depends on the data). */
function randomF32(n: number, bf16: boolean): Float32Array {
  const a = new Float32Array(n);
  const u = new Uint32Array(a.buffer);
  for (let i = 0; i < n; i++) {
    a[i] = (rand() / 2 ** 23 - 1) * (bf16 ? 0.05 : 1);
    if (bf16) u[i] &= 0xffff0000;
  }
  return a;
}

/**
 * The ceiling: every matmul of the model, over all the tokens, in the engine alone, best of two
 * runs per shape. `rows` = tokens is the "one large batch"; rows = the eval's batch size
 * is the same GEMMs cut as eval cuts them, which on this machine is faster (a stricter bar).
 */
async function ceiling(rows: number): Promise<{ secs: number; gflops: number; threads: number }> {
  const rt = await EvalRuntime.create({ provider: 'cpu' });
  let secs = 0;
  let matmulFlops = 0;
  try {
    for (const { k, m, times } of shapes) {
      const session = await rt.session(`mm${k}x${m}`, () => matmulGraph(k, m));
      const x = randomF32(tokens * k, false);
      const w = rt.tensor(randomF32(k * m, true), [k, m]);
      let best = Infinity;
      for (let run = 0; run < 2; run++) {
        const t = performance.now();
        for (let r0 = 0; r0 < tokens; r0 += rows) {
          const n = Math.min(rows, tokens - r0);
          await session.run({ x: rt.tensor(x.subarray(r0 * k, (r0 + n) * k), [n, k]), w });
        }
        best = Math.min(best, (performance.now() - t) / 1000);
      }
      secs += best * times;
      matmulFlops += 2 * tokens * k * m * times;
    }
    return { secs, gflops: matmulFlops / secs / 1e9, threads: rt.threads };
  } finally {
    await rt.dispose();
  }
}

async function evalRun(): Promise<{ secs: number; rss: number; out: { meanLoss: number } }> {
  const argv = ['eval', '--model', model.dir, '--tokens', tokensFile, '--json', ...extra];
  // Peak RSS from the child's own VmHWM: ru_maxrss survives exec, so a child forked from this
  // (large) process would report the parent's size.
  const code =
    `import(${JSON.stringify(cli)}).then(async (m) => { const c = await m.main(${JSON.stringify(argv)}); ` +
    `const hwm = /VmHWM:\\s+(\\d+) kB/.exec((await import('node:fs')).readFileSync('/proc/self/status', 'utf8')); ` +
    `process.stderr.write('\\nRSS ' + (hwm ? Number(hwm[1]) * 1024 : process.resourceUsage().maxRSS * 1024) + '\\n'); process.exit(c); })`;
  const start = performance.now();
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const [exit] = await once(child, 'exit');
  const secs = (performance.now() - start) / 1000;
  if (exit !== 0) throw new Error(`paramdelta eval failed (${exit}): ${err}`);
  return { secs, rss: Number(/RSS (\d+)/.exec(err)?.[1] ?? NaN), out: JSON.parse(out) };
}

const layerF32 = layerElements(spec) * 4;
const hiddenStates = tokens * H * 4;
const rssTarget = layerF32 + hiddenStates + 256 * 2 ** 20;
console.log(
  `${seqs} sequences × ${len} tokens; counted work 2 × parameters × tokens = ${(flops / 1e12).toFixed(2)} TFLOP; ` +
    `RSS target ${formatBytes(rssTarget)} (one layer in F32 ${formatBytes(layerF32)} + hidden states ${formatBytes(hiddenStates)} + 256 MiB)`,
);
t0 = performance.now();
const batchRows = Number(extra[extra.indexOf('--batch-tokens') + 1]) || 256;
for (let r = 0; r < rounds; r++) {
  const big = await ceiling(tokens);
  const e = await evalRun();
  const cut = await ceiling(batchRows);
  if (!Number.isFinite(e.out.meanLoss)) throw new Error(`eval gave a loss of ${e.out.meanLoss}`);
  const row =
    `round ${r + 1}: eval ${e.secs.toFixed(1)} s, ${(tokens / e.secs).toFixed(0)} tokens/s, ${(flops / e.secs / 1e9).toFixed(1)} GFLOP/s, ` +
    `peak RSS ${formatBytes(e.rss)} (${e.rss <= rssTarget ? 'within' : 'OVER'} target) | ceiling, MatMul alone (${big.threads} threads): ` +
    `one batch of ${tokens} rows ${big.secs.toFixed(1)} s (${big.gflops.toFixed(0)} GFLOP/s), ratio ${(big.secs / e.secs).toFixed(2)}; ` +
    `in ${batchRows}-row calls ${cut.secs.toFixed(1)} s (${cut.gflops.toFixed(0)} GFLOP/s), ratio ${(cut.secs / e.secs).toFixed(2)} (target ≥ 0.70) | loss ${e.out.meanLoss.toFixed(3)}`;
  console.log(row);
}
console.log(`(${((performance.now() - t0) / 1000).toFixed(0)} s in all)`);
if (!keep) await rm(root, { recursive: true, force: true });
