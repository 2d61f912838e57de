// Kernel throughput on one core: `npm run bench:kernels`. Every subtract and apply pairing that compute and apply use,
// each timed against a plain memory copy of the same bytes (its input plus output bytes, between buffers of the
// same arena, warm in cache) measured in the same run, windows interleaved. Target: ≥ 1 G elements/s, or at most 1.5×
// the copy's time where that is the lower bar. Inputs look like fine-tuned weights (base ~ N(0, 0.02), post = base +
// N(0, 1e-3), deltas ~ N(0, 1e-3)) so the vector paths run as on real checkpoints; the redo to the model dtype gets
// deltas that fit it, as compute only redoes to it then. Time is this process's CPU time (the time it actually ran on
// a core: the machine is shared), best of several windows. `--wall` times wall-clock instead; `--quick` takes fewer
// windows; `--only REGEX` runs the matching cases.
import { dtypeSize, type FloatDType } from '../lib/format/dtype.js';
import { createKernels, newSubtractStats, readElement, writeElement, type DeltaInput, type Kernels } from '../lib/kernels/index.js';

const N = 1 << 20; // elements per call, about one engine chunk
const DTYPES: FloatDType[] = ['BF16', 'F16', 'F32', 'F64'];
const TARGET_RATE = 1e9;
const TARGET_RATIO = 1.5;

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const wall = args.includes('--wall');
const only = args.includes('--only') ? new RegExp(args[args.indexOf('--only') + 1]) : undefined;
const WINDOWS = quick ? 3 : 7;
const WINDOW_MS = 100;

/** Milliseconds of this process's CPU time (user + system), or of wall-clock time with --wall. */
function clock(): number {
  if (wall) return performance.now();
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

let seed = 0x2545f491;
function uniform(): number {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>> 0) / 2 ** 32;
}
function gauss(sigma: number): number {
  return sigma * Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
}

function tensor(k: Kernels, dtype: FloatDType, values: (i: number) => number): Uint8Array {
  const buf = k.alloc(N * dtypeSize(dtype));
  for (let i = 0; i < N; i++) writeElement(dtype, buf, i, values(i));
  return buf;
}

interface Case {
  name: string;
  /** Input plus output bytes per element. */
  bytes: number;
  /** Why compute or apply runs it. */
  use: string;
  setup(k: Kernels): () => void;
}

/** The probe compute passes while writing `out` for a model of `dtype` (auto policy: see lib/ops/compute.ts). */
function autoProbe(dtype: FloatDType, out: FloatDType): FloatDType | undefined {
  return out === 'F32' && dtypeSize(dtype) < 4 ? dtype : undefined;
}

/**
 * `redo`: compute's redo to the model dtype, which it runs only when every delta fits that dtype (here the post
 * keeps two thirds of the base and doubles the rest); else the deltas of a fine-tune, which --delta-dtype rounds.
 */
function subtractCase(dtype: FloatDType, outDtype: FloatDType, redo = false): Case {
  const probe = autoProbe(dtype, outDtype);
  const auto = outDtype === 'F32' ? 'first pass' : outDtype === 'F64' ? 'redo to F64' : redo ? 'redo to model dtype' : undefined;
  return {
    name: `${dtype} subtract → ${outDtype}${probe ? ` (probe ${probe})` : ''}${redo ? ', deltas fit' : ''}`,
    bytes: 2 * dtypeSize(dtype) + dtypeSize(outDtype),
    use: auto ?? `--delta-dtype ${outDtype.toLowerCase()}`,
    setup(k) {
      const base = tensor(k, dtype, () => gauss(0.02));
      const post = tensor(k, dtype, (i) => (redo ? readElement(dtype, base, i) * (i % 3 === 0 ? 2 : 1) : readElement(dtype, base, i) + gauss(1e-3)));
      const out = k.alloc(N * dtypeSize(outDtype));
      const stats = newSubtractStats();
      return () => k.subtract(dtype, base, post, N, outDtype, out, stats, probe);
    },
  };
}

function applyCase(dtype: FloatDType, deltaDtype: FloatDType, count: 1 | 2): Case {
  const scales = count === 1 ? [1] : [0.7, 0.3];
  return {
    name: `${dtype} apply + ${count === 1 ? `${deltaDtype} delta` : `2 ${deltaDtype} deltas (0.7, 0.3)`}`,
    bytes: 2 * dtypeSize(dtype) + count * dtypeSize(deltaDtype),
    use: count === 1 ? 'apply' : 'apply, two deltas',
    setup(k) {
      const base = tensor(k, dtype, () => gauss(0.02));
      const deltas: DeltaInput[] = scales.map((scale) => ({ dtype: deltaDtype, data: tensor(k, deltaDtype, () => gauss(1e-3)), scale }));
      const out = k.alloc(N * dtypeSize(dtype));
      return () => k.apply(dtype, base, deltas, N, dtype, out);
    },
  };
}

/** Seconds per call: the best of WINDOWS windows of WINDOW_MS each, after a warm-up that lets V8 tier up. */
function timer(run: () => void): { warm(): void; window(): void; best: number } {
  const t = {
    best: Infinity,
    warm() {
      const start = performance.now();
      while (performance.now() - start < 200) run();
    },
    window() {
      let calls = 0;
      const start = clock();
      let elapsed: number;
      do {
        run();
        calls++;
        elapsed = clock() - start;
      } while (elapsed < WINDOW_MS);
      t.best = Math.min(t.best, elapsed / 1000 / calls);
    },
  };
  return t;
}

const cases: Case[] = [];
for (const dtype of DTYPES) {
  for (const out of DTYPES) {
    if (out === dtype && dtypeSize(dtype) < 4) cases.push(subtractCase(dtype, out, true));
    cases.push(subtractCase(dtype, out));
  }
}
for (const dtype of DTYPES) for (const delta of DTYPES) for (const count of [1, 2] as const) cases.push(applyCase(dtype, delta, count));

const arenaBytes = 3 * 32 * N + (1 << 20); // the widest case: 32 bytes per element, then its copy's source and destination
const g = (rate: number) => (rate / 1e9).toFixed(2);
const col = (s: string, w: number) => s.padStart(w);
console.log(`${N} elements per call, one core, Node ${process.versions.node}; best of ${WINDOWS} windows of ${WINDOW_MS} ms ${wall ? 'wall-clock' : 'CPU'} time, kernel and copy interleaved`);
console.log(`memcpy: Uint8Array.set of the case's input + output bytes per element; ratio = kernel time ÷ copy time`);
console.log(`${'case'.padEnd(44)} ${'used by'.padEnd(24)} ${col('B/el', 4)} ${col('G el/s', 7)} ${col('memcpy', 7)} ${col('ratio', 6)}  target`);
const misses: string[] = [];
for (const c of cases) {
  if (only && !only.test(c.name)) continue;
  // A fresh arena per case: the kernel's buffers, then the copy's source and destination.
  const k = await createKernels({ arenaBytes, impl: 'wasm' });
  const kernel = timer(c.setup(k));
  const src = k.alloc(N * c.bytes);
  const dst = k.alloc(N * c.bytes);
  src.fill(1);
  const copy = timer(() => dst.set(src));
  kernel.warm();
  copy.warm();
  for (let w = 0; w < WINDOWS; w++) {
    kernel.window();
    copy.window();
  }
  const rate = N / kernel.best;
  const ratio = kernel.best / copy.best;
  const ok = rate >= TARGET_RATE || ratio <= TARGET_RATIO;
  if (!ok) misses.push(c.name);
  console.log(`${c.name.padEnd(44)} ${c.use.padEnd(24)} ${col(String(c.bytes), 4)} ${col(g(rate), 7)} ${col(g(N / copy.best), 7)} ${col(ratio.toFixed(2), 6)}  ${ok ? 'met' : 'MISSED'}`);
}
console.log(misses.length ? `${misses.length} below target: ${misses.join('; ')}` : 'every case meets the target (≥ 1 G elements/s, or ≤ 1.5× the copy)');
