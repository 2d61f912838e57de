import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { analyzeDelta, signAgreement, TENSOR_KINDS, type DeltaAnalysis, type FusionCounts, type Norms, type SignCounts } from '../../lib/analyze/index.js';
import { checkFusion, describeFusion } from '../../lib/fusion/options.js';
import { InputError } from '../../lib/errors.js';
import { formatBytes } from '../../lib/ops/sizes.js';
import { Progress } from '../progress.js';
import { commandEnv, fusionOptions, print, storageOption } from '../common.js';
import { assertCliOutputApart } from '../../lib/storage/overlap.js';
import { isBlobRef } from '../../lib/storage/refs.js';

/** Checks --html before any work: a local file, outside every input, not over an existing file unless --force. */
async function checkHtmlTarget(file: string, inputs: { label: string; ref: string }[], force: boolean): Promise<void> {
  if (isBlobRef(file) || /^[a-z][a-z0-9+.-]*:\/\//i.test(file)) throw new InputError(`--html ${file}: must be a local file path`);
  await assertCliOutputApart({ label: '--html', ref: file }, inputs);
  if (existsSync(file) && !force) throw new InputError(`--html ${file}: already exists; pass --force to replace it`);
}

/** Writes the page under a temporary name, then renames it into place: never a half-written report. */
async function writeHtml(file: string, html: string): Promise<void> {
  const tmp = path.join(path.dirname(path.resolve(file)), `.${path.basename(file)}.partial-${process.pid}`);
  try {
    await writeFile(tmp, html);
    await rename(tmp, file);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

const num = (x: number) => (x === 0 ? '0' : Math.abs(x) >= 1e-3 && Math.abs(x) < 1e4 ? x.toFixed(4) : x.toExponential(3));
const ratio = (n: Norms) => num(n.relative);
const pct = (part: number, whole: number) => (whole > 0 ? `${((100 * part) / whole).toFixed(1)}%` : '-');
/** The sign agreement where both are nonzero, as a percentage ('-' where no element is nonzero in both). */
const agreement = (s: Pick<SignCounts, 'agree' | 'disagree'>) => {
  const a = signAgreement(s);
  return a === null ? '-' : `${(100 * a).toFixed(1)}%`;
};
/** "61.2% of the 80.1% where both are nonzero (one zero 19.0%, both zero 0.9%)". */
const signLine = (s: SignCounts) =>
  `${agreement(s)} of the ${pct(s.agree + s.disagree, s.elements)} of elements where both are nonzero (one zero ${pct(s.oneZero, s.elements)}, both zero ${pct(s.bothZero, s.elements)})`;

/** The fusion section: per delta what its mask keeps and what survives the sign election, and the signs per pair. */
function fusionText(a: DeltaAnalysis, top: number): string[] {
  const f = a.fusion;
  if (!f) return [];
  const lines: string[] = ['', `fusion by ${describeFusion(f as Parameters<typeof describeFusion>[0])}: deltas ${f.deltas.map((d, i) => `${i} ${d.ref} (scale ${d.scale})`).join(', ')}`];
  const elected = f.totals.elected !== undefined;
  const perDelta = (c: FusionCounts, k: number) => [pct(c.kept[k], c.elements), pct(c.nonzero[k], c.elements), ...(elected ? [pct(c.elected![k], c.elements)] : [])];
  const header = ['kept', 'kept≠0', ...(elected ? ['elected'] : [])];
  lines.push(`  of each delta's ${f.totals.elements} elements: kept by its mask, kept with τ ≠ 0${elected ? ', and elected (τ ≠ 0 with the elected sign: into the merge)' : ''}`);
  f.deltas.forEach((d, k) => lines.push(`  ${String(k).padStart(2)} ${header.map((h, i) => `${h} ${perDelta(f.totals, k)[i]}`).join(', ')}`));
  for (const p of f.totals.pairs) {
    lines.push(`  sign agreement ${p.a}–${p.b}: all ${signLine(p.signs)}`);
    lines.push(`    among kept (τ): ${agreement(p.kept)} of the ${pct(p.kept.agree + p.kept.disagree, p.kept.elements)} where both keep a nonzero τ`);
  }
  const kinds = TENSOR_KINDS.filter((k) => f.kinds[k]);
  const table = (title: string, rows: [string, FusionCounts][]) => {
    const cols = [...f.deltas.flatMap((_, k) => header.map((h) => `${h} ${k}`)), ...f.totals.pairs.flatMap((p) => [`agree ${p.a}–${p.b}`, `kept ${p.a}–${p.b}`])];
    lines.push('', title, ['group'.padEnd(10), ...cols.map((c) => c.padStart(11))].join(' '));
    for (const [name, c] of rows) {
      const cells = [...f.deltas.flatMap((_, k) => perDelta(c, k)), ...c.pairs.flatMap((p) => [agreement(p.signs), agreement(p.kept)])];
      lines.push([name.padEnd(10), ...cells.map((x) => x.padStart(11))].join(' '));
    }
  };
  table('fusion by kind', kinds.map((k) => [k, f.kinds[k]!]));
  if (f.layers.length) table('fusion by layer', f.layers.map((l) => [String(l.layer), l]));
  if (f.totals.pairs.length && top > 0) {
    const p0 = (c: FusionCounts) => signAgreement(c.pairs[0].signs) ?? Infinity;
    const least = [...f.tensors].sort((x, y) => p0(x) - p0(y)).slice(0, top);
    const w = Math.min(60, Math.max(4, ...least.map((t) => t.name.length)));
    lines.push('', `${least.length} tensors with the least sign agreement 0–1`, `${'name'.padEnd(w)}  ${'agree'.padStart(7)}  ${'kept'.padStart(7)}  ${'kept 0'.padStart(7)}  ${'kept 1'.padStart(7)}`);
    for (const t of least) lines.push(`${t.name.padEnd(w)}  ${agreement(t.pairs[0].signs).padStart(7)}  ${agreement(t.pairs[0].kept).padStart(7)}  ${pct(t.kept[0], t.elements).padStart(7)}  ${pct(t.kept[1], t.elements).padStart(7)}`);
  }
  return lines;
}

/** The analysis as a few short tables: totals, by layer and kind, the top tensors, and similarity. */
export function analysisText(a: DeltaAnalysis, top = 10): string {
  const d = a.delta;
  const lines: string[] = [];
  const elements = Object.values(d.dtypes).reduce((x, y) => x + y, 0) || 1;
  lines.push(`delta ${d.ref}: ${d.layout} layout, ${d.tensors} tensors, ${d.parameters} parameters`);
  lines.push(
    `stored ${formatBytes(d.storedBytes)} (${(d.storedBytes / Math.max(1, d.rawBytes)).toFixed(3)}× the raw delta, ${formatBytes(d.rawBytes)}); dtypes ${Object.entries(d.dtypes)
      .map(([t, n]) => `${t} ${n > 0 && n < elements / 1000 ? '<0.1' : ((100 * n) / elements).toFixed(1)}%`)
      .join(', ')}`,
  );
  lines.push(`‖Δ‖ ${num(a.totals.deltaNorm)}, ‖W‖ ${num(a.totals.weightNorm)}, ‖Δ‖/‖W‖ ${ratio(a.totals)}`);
  const rounded = a.tensors.filter((t) => t.rounded > 0);
  if (a.lossy) lines.push(`lossy: ${rounded.reduce((x, t) => x + t.rounded, 0)} elements rounded in ${rounded.length} tensors (largest error ${num(Math.max(...rounded.map((t) => t.maxError)))})`);
  const src = d.weightNormSources ?? {};
  if (src.unknown) lines.push(`note: ‖W‖ of ${src.unknown} tensors is unknown (an older delta.json without base norms, and a zero delta there); pass --base for exact figures`);

  const kinds = TENSOR_KINDS.filter((k) => a.layers.some((l) => l.kinds[k]));
  if (a.layers.length) {
    lines.push('', `‖Δ‖/‖W‖ by layer`, ['layer'.padStart(5), 'all'.padStart(10), ...kinds.map((k) => k.padStart(10))].join('  '));
    for (const l of a.layers) lines.push([String(l.layer).padStart(5), ratio(l).padStart(10), ...kinds.map((k) => (l.kinds[k] ? ratio(l.kinds[k]) : '-').padStart(10))].join('  '));
  }
  lines.push('', 'by kind', `${'kind'.padEnd(10)}  ${'tensors'.padStart(7)}  ${'‖Δ‖'.padStart(10)}  ${'‖W‖'.padStart(10)}  ${'‖Δ‖/‖W‖'.padStart(10)}`);
  for (const k of TENSOR_KINDS) {
    const g = a.kinds[k];
    if (g) lines.push(`${k.padEnd(10)}  ${String(g.tensors).padStart(7)}  ${num(g.deltaNorm).padStart(10)}  ${num(g.weightNorm).padStart(10)}  ${ratio(g).padStart(10)}`);
  }
  const ranked = [...a.tensors].sort((x, y) => y.relative - x.relative).slice(0, top);
  if (ranked.length) {
    const w = Math.min(60, Math.max(4, ...ranked.map((t) => t.name.length)));
    lines.push('', `top ${ranked.length} tensors by ‖Δ‖/‖W‖`, `${'name'.padEnd(w)}  ${'kind'.padEnd(9)}  ${'‖Δ‖/‖W‖'.padStart(10)}  ${'‖Δ‖'.padStart(10)}${a.lossy ? '  rounded' : ''}`);
    for (const t of ranked) lines.push(`${t.name.padEnd(w)}  ${t.kind.padEnd(9)}  ${ratio(t).padStart(10)}  ${num(t.deltaNorm).padStart(10)}${a.lossy ? `  ${String(t.rounded).padStart(7)}` : ''}`);
  }
  if (a.similarity.length) {
    lines.push('', 'cosine similarity');
    for (const s of a.similarity) {
      lines.push(`  ${s.against}: ${num(s.cosine)} over ${s.sharedTensors} shared tensors`);
      const byKind = TENSOR_KINDS.filter((k) => s.kinds[k] !== undefined).map((k) => `${k} ${num(s.kinds[k]!)}`);
      if (byKind.length) lines.push(`    by kind: ${byKind.join(', ')}`);
      if (s.layers.length) lines.push(`    by layer: ${s.layers.map((l) => `${l.layer} ${num(l.cosine)}`).join(', ')}`);
      if (s.signs) {
        lines.push(`    sign agreement: ${signLine(s.signs)}`);
        const kindSigns = TENSOR_KINDS.filter((k) => s.kindSigns?.[k]).map((k) => `${k} ${agreement(s.kindSigns![k]!)}`);
        if (kindSigns.length) lines.push(`      by kind: ${kindSigns.join(', ')}`);
        if (s.layers.some((l) => l.signs)) lines.push(`      by layer: ${s.layers.map((l) => `${l.layer} ${l.signs ? agreement(l.signs) : '-'}`).join(', ')}`);
      }
    }
  }
  lines.push(...fusionText(a, top));
  if (!a.fusion && a.similarity.length) lines.push('', 'kept fractions: pass a sparse --method (and --density) to see what it keeps of each delta and what survives its sign election');
  return lines.join('\n');
}

export function registerAnalyze(program: Command): void {
  // Weights by delta (0: DELTA, then each --against), as --scale follows the delta it weighs.
  const scales: (number | undefined)[] = [undefined];
  let scaled = false;
  const analyzeCmd = program
    .command('analyze')
    .description('norms of a delta (‖Δ‖/‖W‖ by tensor, layer and kind), rounding, sizes, cosine similarity and sign agreement with other deltas, and what a sparse fusion method keeps')
    .argument('<delta>', 'a delta folder (either layout): a path, az://container/prefix or hf://owner/name')
    .option('--against <delta>', 'another delta to compare with (repeatable)', (v: string, prev: string[]) => {
      scales.push(undefined);
      return [...prev, v];
    }, [] as string[])
    .option('--scale <w>', 'with --method: the weight of DELTA (before any --against) or of the --against just before it (default 1)', (v: string) => {
      const w = Number(v);
      if (v.trim() === '' || !Number.isFinite(w)) throw new InputError(`--scale ${v}: not a finite number`);
      if (scales[scales.length - 1] !== undefined) throw new InputError(`--scale ${v}: ${scales.length === 1 ? 'DELTA' : 'that --against'} already has a --scale`);
      scales[scales.length - 1] = w;
      scaled = true;
      return v;
    });
  fusionOptions(analyzeCmd, 'a sparse fusion method, as apply takes it: count what it keeps of each delta', true)
    .option('--base <dir>', "the delta's original base, streamed for ‖W‖ when delta.json does not record base norms (older deltas)")
    .option('--top <n>', 'tensors listed in the text output', '10')
    .option('--json', 'print the analysis report (the analysis.json schema)')
    .option('--html <file>', 'also write the report as one self-contained HTML page with its charts')
    .option('--force', 'replace an existing --html file')
    .addOption(storageOption())
    .action(async (deltaRef: string, o) => {
      const top = Number(o.top);
      if (!Number.isInteger(top) || top < 0) throw new InputError(`--top must be a whole number, not ${JSON.stringify(o.top)}`);
      const fusion = checkFusion({ method: o.method, density: o.density, gamma: o.gamma, lambda: o.lambda, seed: o.seed, normalize: o.normalize }, (f) => `--${f}`);
      if (scaled && !fusion) throw new InputError('--scale: has no meaning without a sparse --method');
      const progress = new Progress(process.stderr.isTTY && !o.json);
      const refs = [deltaRef, ...o.against, ...(o.base ? [o.base] : [])];
      const env = commandEnv(o, progress, refs);
      if (o.html) await checkHtmlTarget(o.html, refs.map((ref) => ({ label: ref === deltaRef ? 'DELTA' : ref === o.base ? '--base' : '--against', ref })), !!o.force);
      try {
        const a = await analyzeDelta(env, deltaRef, {
          against: o.against,
          base: o.base,
          fusion,
          ...(fusion ? { scales: scales.map((w) => w ?? 1) } : {}),
          onStart: (bytes) => bytes > 0 && progress.start('analyze', bytes),
        });
        progress.stop();
        if (o.html) {
          const { renderAnalysisHtml } = await import('../html-report.js');
          await writeHtml(o.html, await renderAnalysisHtml(a));
        }
        print(o, analysisText(a, top) + (o.html ? `\nwrote ${o.html}` : ''), a);
      } finally {
        progress.stop();
      }
    });
}
