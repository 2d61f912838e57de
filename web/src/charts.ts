// The charts of one delta's analysis (lib/analyze/report.ts), drawn with Chart.js on canvas. Each
// chart's <figure> carries data-points (marks drawn for the first series) and data-series (per
// series), read from the chart instance after it drew, so a test can check what was drawn.
import {
  BarController, BarElement, CategoryScale, Chart, Legend, LinearScale, LineController, LineElement, PointElement, Tooltip,
  type ChartConfiguration,
} from 'chart.js';
import type { DeltaAnalysis, FusionCounts, SignCounts, TensorKind } from '../../lib/analyze/report.js';
import { bytes, count, h, percent, ratio, shortHash } from './dom.js';

Chart.register(BarController, BarElement, CategoryScale, LinearScale, LineController, LineElement, PointElement, Tooltip, Legend);

// The same order as TENSOR_KINDS in lib/analyze/report.ts (imported as a type only: its module pulls zod).
const KINDS: TensorKind[] = ['attention', 'mlp', 'norm', 'embedding', 'head', 'other'];
const KIND_COLORS: Record<TensorKind, string> = {
  attention: '#4e79a7', mlp: '#f28e2b', norm: '#59a14f', embedding: '#e15759', head: '#b07aa1', other: '#9c755f',
};
const PALETTE = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948', '#b07aa1', '#ff9da7'];

/** Marks a chart drew per dataset: elements with finite coordinates that are not skipped. */
function drawnMarks(chart: Chart): number[] {
  return chart.data.datasets.map((_, i) => chart.getDatasetMeta(i).data.filter((e) => {
    const el = e as unknown as { x: number; y: number; skip?: boolean };
    return !el.skip && Number.isFinite(el.x) && Number.isFinite(el.y);
  }).length);
}

function figure(name: string, title: string, caption: string, config: ChartConfiguration): HTMLElement {
  const canvas = h('canvas', { role: 'img', 'aria-label': title });
  const fig = h('figure', { class: 'chart', 'data-chart': name }, h('figcaption', {}, h('strong', {}, title), ' ', h('span', { class: 'muted' }, caption)), h('div', { class: 'canvas-box' }, canvas));
  // Drawn after the figure is in the page, so the chart takes its box's size.
  queueMicrotask(() => {
    const chart = new Chart(canvas, config);
    const marks = drawnMarks(chart);
    fig.dataset.points = String(marks[0] ?? 0);
    fig.dataset.series = marks.join(',');
    fig.dataset.drawn = 'true';
  });
  return fig;
}

const baseOptions = (yTitle: string, xTitle: string) => ({
  animation: false as const,
  responsive: true,
  maintainAspectRatio: false,
  interaction: { mode: 'index' as const, intersect: false },
  plugins: { legend: { position: 'bottom' as const } },
  scales: {
    x: { title: { display: true, text: xTitle } },
    y: { title: { display: true, text: yTitle }, beginAtZero: true },
  },
});

function layersChart(a: DeltaAnalysis): HTMLElement {
  const labels = a.layers.map((l) => String(l.layer));
  const kinds = KINDS.filter((k) => a.layers.some((l) => l.kinds[k]));
  const datasets = [
    { label: 'whole layer', data: a.layers.map((l) => l.relative), borderColor: '#222', backgroundColor: '#222', borderWidth: 2, pointRadius: 3 },
    ...kinds.map((k) => ({
      label: k, data: a.layers.map((l) => l.kinds[k]?.relative ?? null), borderColor: KIND_COLORS[k], backgroundColor: KIND_COLORS[k], borderWidth: 1.5, pointRadius: 2,
    })),
  ];
  return figure('layers', '‖Δ‖ / ‖W‖ by layer', `${a.layers.length} decoder layers, whole and by tensor kind`, {
    type: 'line', data: { labels, datasets }, options: baseOptions('‖Δ‖ / ‖W‖', 'layer'),
  });
}

function kindsChart(a: DeltaAnalysis): HTMLElement {
  const kinds = KINDS.filter((k) => a.kinds[k]);
  return figure('kinds', '‖Δ‖ / ‖W‖ by tensor kind', 'over the whole model', {
    type: 'bar',
    data: {
      labels: kinds.map((k) => `${k} (${a.kinds[k]!.tensors})`),
      datasets: [{ label: '‖Δ‖ / ‖W‖', data: kinds.map((k) => a.kinds[k]!.relative), backgroundColor: kinds.map((k) => KIND_COLORS[k]) }],
    },
    options: { ...baseOptions('‖Δ‖ / ‖W‖', 'tensor kind'), plugins: { legend: { display: false } } },
  });
}

/** Elements rounded per layer (the delta dtype could not hold them exactly). */
function roundingChart(a: DeltaAnalysis): HTMLElement {
  const perLayer = new Map<number, number>(a.layers.map((l) => [l.layer, 0]));
  let outside = 0;
  for (const t of a.tensors) {
    if (t.layer === null) outside += t.rounded;
    else perLayer.set(t.layer, (perLayer.get(t.layer) ?? 0) + t.rounded);
  }
  const layers = [...perLayer.keys()].sort((x, y) => x - y);
  const total = a.tensors.reduce((s, t) => s + t.rounded, 0);
  const caption = `${count(total)} elements rounded in all${outside ? `, ${count(outside)} outside the layers` : ''}`;
  return figure('rounding', 'Rounded elements by layer', caption, {
    type: 'bar',
    data: { labels: layers.map(String), datasets: [{ label: 'rounded elements', data: layers.map((l) => perLayer.get(l)!), backgroundColor: '#e15759' }] },
    options: { ...baseOptions('elements', 'layer'), plugins: { legend: { display: false } } },
  });
}

function similarityChart(a: DeltaAnalysis): HTMLElement {
  const layers = [...new Set(a.similarity.flatMap((s) => s.layers.map((l) => l.layer)))].sort((x, y) => x - y);
  const datasets = a.similarity.map((s, i) => {
    const byLayer = new Map(s.layers.map((l) => [l.layer, l.cosine]));
    const c = PALETTE[i % PALETTE.length];
    return { label: `vs ${s.against}`, data: layers.map((l) => byLayer.get(l) ?? null), borderColor: c, backgroundColor: c, borderWidth: 2, pointRadius: 3 };
  });
  const opts = baseOptions('cosine', 'layer');
  return figure('similarity', 'Cosine similarity by layer', 'with the other deltas on the same base', {
    type: 'line', data: { labels: layers.map(String), datasets }, options: { ...opts, scales: { ...opts.scales, y: { ...opts.scales.y, beginAtZero: false, suggestedMin: -1, suggestedMax: 1 } } },
  });
}

function summary(a: DeltaAnalysis): HTMLElement {
  const d = a.delta;
  const elements = Object.values(d.dtypes).reduce((s, n) => s + n, 0);
  const rows: [string, string][] = [
    ['delta', d.ref],
    ['layout', d.layout],
    ['base', `${d.base.modelType ?? '?'} · ${shortHash(d.base.signature)}`],
    ['post', `${d.post.modelType ?? '?'} · ${shortHash(d.post.signature)}`],
    ['tensors', count(d.tensors)],
    ['parameters', count(d.parameters)],
    ['bytes', `${bytes(d.rawBytes)} raw, ${bytes(d.storedBytes)} stored (${percent(d.storedBytes, d.rawBytes)})`],
    ['dtypes', Object.entries(d.dtypes).map(([t, n]) => `${t} ${percent(n, elements)}`).join(', ')],
    ['‖Δ‖ / ‖W‖', `${ratio(a.totals.relative)} (‖Δ‖ ${ratio(a.totals.deltaNorm)}, ‖W‖ ${ratio(a.totals.weightNorm)})`],
    ['rounding', a.lossy ? 'lossy delta dtype: some elements rounded' : 'exact: no element rounded'],
  ];
  return h('dl', { class: 'facts' }, ...rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

/** Sign agreement: agree ÷ (agree + disagree), over the elements where both are nonzero. */
const agreement = (s: Pick<SignCounts, 'agree' | 'disagree'>) => percent(s.agree, s.agree + s.disagree);

function similarityTable(a: DeltaAnalysis): HTMLElement {
  const kinds = KINDS.filter((k) => a.similarity.some((s) => s.kinds[k] !== undefined));
  const signs = a.similarity.some((s) => s.signs);
  return h('table', { class: 'grid', 'data-table': 'similarity' },
    h('thead', {}, h('tr', {}, h('th', {}, 'against'), h('th', {}, 'cosine'), h('th', {}, 'shared tensors'), ...kinds.map((k) => h('th', {}, k)),
      ...(signs ? [h('th', { title: 'agree ÷ (agree + disagree): among the elements where both deltas are nonzero' }, 'sign agreement'), h('th', {}, 'both nonzero'), h('th', {}, 'one zero')] : []))),
    h('tbody', {}, ...a.similarity.map((s) => h('tr', {}, h('td', {}, s.against), h('td', {}, s.cosine.toFixed(4)), h('td', {}, count(s.sharedTensors)),
      ...kinds.map((k) => h('td', {}, s.kinds[k] === undefined ? '' : s.kinds[k]!.toFixed(4))),
      ...(signs ? s.signs ? [h('td', { class: 'sign-agreement' }, agreement(s.signs)), h('td', {}, percent(s.signs.agree + s.signs.disagree, s.signs.elements)), h('td', {}, percent(s.signs.oneZero, s.signs.elements))] : [h('td', {}), h('td', {}), h('td', {})] : [])))));
}

/** analyze --method: per layer, each delta's share that enters the merge (elected, or kept), and each pair's sign agreement among kept elements. */
function fusionChart(a: DeltaAnalysis): HTMLElement {
  const f = a.fusion!;
  const electing = f.totals.elected !== undefined;
  const share = (c: FusionCounts, k: number) => (c.elements ? (electing ? c.elected![k] : c.kept[k]) / c.elements : null);
  const datasets = [
    ...f.deltas.map((d, k) => {
      const c = PALETTE[k % PALETTE.length];
      return { label: `${electing ? 'elected' : 'kept'}: ${k} ${d.ref}`, data: f.layers.map((l) => share(l, k)), borderColor: c, backgroundColor: c, borderWidth: 2, pointRadius: 3 };
    }),
    ...f.totals.pairs.map((p, i) => {
      const c = PALETTE[(f.deltas.length + i) % PALETTE.length];
      return {
        label: `kept sign agreement ${p.a}–${p.b}`, data: f.layers.map((l) => { const s = l.pairs[i].kept; return s.agree + s.disagree ? s.agree / (s.agree + s.disagree) : null; }),
        borderColor: c, backgroundColor: c, borderWidth: 1.5, borderDash: [4, 3], pointRadius: 2,
      };
    }),
  ];
  const opts = baseOptions('share', 'layer');
  return figure('fusion', `${f.method} by layer`, electing ? 'share of each delta that enters the merge, and sign agreement among kept elements' : 'share of each delta kept, and sign agreement among kept elements', {
    type: 'line', data: { labels: f.layers.map((l) => String(l.layer)), datasets }, options: { ...opts, scales: { ...opts.scales, y: { ...opts.scales.y, suggestedMax: 1 } } },
  });
}

/** analyze --method: what the method keeps of each delta, and the signs per pair, in all and by kind. */
function fusionTables(a: DeltaAnalysis): HTMLElement {
  const f = a.fusion!;
  const electing = f.totals.elected !== undefined;
  const t = f.totals;
  const opts = [`density ${f.density}`, ...(f.gamma !== undefined ? [`gamma ${f.gamma}`] : []), ...(f.seed !== undefined ? [`seed ${f.seed}`] : [])].join(', ');
  const kinds = KINDS.filter((k) => f.kinds[k]);
  return h('section', { class: 'fusion' },
    h('h2', {}, `Fusion by ${f.method} (${opts})`),
    h('table', { class: 'grid', 'data-table': 'fusion-deltas' },
      h('thead', {}, h('tr', {}, ...['delta', 'scale', 'kept', 'kept, τ ≠ 0', ...(electing ? ['elected'] : []), ...kinds.map((k) => `${electing ? 'elected' : 'kept'}: ${k}`)].map((c) => h('th', {}, c)))),
      h('tbody', {}, ...f.deltas.map((d, k) => h('tr', {}, h('td', {}, `${k} ${d.ref}`), h('td', {}, String(d.scale)), h('td', { class: 'kept' }, percent(t.kept[k], t.elements)), h('td', {}, percent(t.nonzero[k], t.elements)),
        ...(electing ? [h('td', { class: 'elected' }, percent(t.elected![k], t.elements))] : []),
        ...kinds.map((kind) => { const c = f.kinds[kind]!; return h('td', {}, percent(electing ? c.elected![k] : c.kept[k], c.elements)); }))))),
    t.pairs.length
      ? h('table', { class: 'grid', 'data-table': 'fusion-pairs' },
        h('thead', {}, h('tr', {}, ...['pair', 'sign agreement', 'both nonzero', 'kept sign agreement', 'both kept, τ ≠ 0', ...kinds.map((k) => `kept agreement: ${k}`)].map((c) => h('th', {}, c)))),
        h('tbody', {}, ...t.pairs.map((p, i) => h('tr', {}, h('td', {}, `${p.a}–${p.b}`), h('td', {}, agreement(p.signs)), h('td', {}, percent(p.signs.agree + p.signs.disagree, p.signs.elements)),
          h('td', { class: 'kept-agreement' }, agreement(p.kept)), h('td', {}, percent(p.kept.agree + p.kept.disagree, p.kept.elements)),
          ...kinds.map((k) => h('td', {}, agreement(f.kinds[k]!.pairs[i].kept)))))))
      : null,
    h('p', { class: 'muted small' }, `Of each delta's ${count(t.elements)} elements: kept by its mask; kept with τ = w·Δ nonzero${electing ? '; elected: τ nonzero with the sign of Σ τ, entering the merge' : ''}. Sign agreement is agree ÷ (agree + disagree), over the elements where both are nonzero (kept: both τ nonzero).`),
  );
}

function topTensors(a: DeltaAnalysis, n = 15): HTMLElement {
  const top = [...a.tensors].sort((x, y) => y.relative - x.relative).slice(0, n);
  return h('details', {},
    h('summary', {}, `The ${top.length} tensors with the largest ‖Δ‖ / ‖W‖`),
    h('table', { class: 'grid' },
      h('thead', {}, h('tr', {}, ...['tensor', 'kind', 'layer', 'dtype', '‖Δ‖ / ‖W‖', 'rounded'].map((c) => h('th', {}, c)))),
      h('tbody', {}, ...top.map((t) => h('tr', {}, h('td', { class: 'mono' }, t.name), h('td', {}, t.kind), h('td', {}, t.layer ?? ''), h('td', {}, t.dtype === t.modelDtype ? t.dtype : `${t.modelDtype}→${t.dtype}`),
        h('td', {}, ratio(t.relative)), h('td', {}, t.rounded ? count(t.rounded) : ''))))));
}

/** Draws every chart of the analysis into `root`: the same for the dashboard and `analyze --html`. */
export function drawAnalysis(root: HTMLElement, a: DeltaAnalysis): void {
  root.append(
    summary(a),
    h('div', { class: 'charts' },
      layersChart(a),
      kindsChart(a),
      a.lossy ? roundingChart(a) : null,
      a.similarity.length ? similarityChart(a) : null,
      a.fusion && a.fusion.layers.length ? fusionChart(a) : null),
    a.similarity.length ? similarityTable(a) : h('p', { class: 'muted' }, 'No other delta on the same base to compare with.'),
    ...(a.fusion ? [fusionTables(a)] : []),
    topTensors(a),
    h('p', { class: 'muted small' }, `Analysis by ${a.tool.name} ${a.tool.version}, ${a.createdAt}.`),
  );
}
