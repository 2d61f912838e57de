// The pipeline dashboard: registered deltas, runs with live progress, posted models, and a page per
// delta with its analysis charts. It reads the API beside it (/api/...), with the function key it
// was opened with (?code=KEY), sent as the x-functions-key header.
import './style.css';
import type { DeltaAnalysis } from '../../lib/analyze/report.js';
import type { DeltaList, DeltaSummary, ModelList, RunList, RunSummary } from '../../functions/dashboard-api.js';
import { drawAnalysis } from './charts.js';
import { bytes, count, h, percent, ratio, shortHash, when } from './dom.js';

const params = new URLSearchParams(location.search);
const key = params.get('code');
/** How often runs are polled, in ms (?poll=MS); deltas and models five times less often. */
const POLL_MS = Math.max(200, Number(params.get('poll')) || 1000);
const apiBase = new URL('.', location.href);
const app = document.getElementById('app')!;

class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

async function get<T>(route: string): Promise<T> {
  const res = await fetch(new URL(route, apiBase), { headers: key ? { 'x-functions-key': key } : {}, cache: 'no-store' });
  if (!res.ok) {
    const body = await res.json().catch(() => null) as { detail?: string } | null;
    throw new HttpError(res.status, body?.detail ?? `${res.status} ${res.statusText}`);
  }
  return (await res.json()) as T;
}

function section(id: string, title: string): { el: HTMLElement; body: HTMLElement; status: HTMLElement } {
  const status = h('span', { class: 'muted small' });
  const body = h('div', { class: 'section-body' });
  return { el: h('section', { id }, h('h2', {}, title, ' ', status), body), body, status };
}

function dtypeMix(d: { dtypes: Record<string, number> }): string {
  const total = Object.values(d.dtypes).reduce((s, n) => s + n, 0);
  return Object.entries(d.dtypes).sort((x, y) => y[1] - x[1]).map(([t, n]) => `${t} ${percent(n, total)}`).join(', ');
}

function identity(m: { config: Record<string, unknown>; signature: string }): string {
  const type = typeof m.config.model_type === 'string' ? m.config.model_type : '?';
  const layers = typeof m.config.num_hidden_layers === 'number' ? ` · ${m.config.num_hidden_layers} layers` : '';
  return `${type}${layers} · ${shortHash(m.signature)}`;
}

function deltasTable(list: DeltaList): HTMLElement {
  if (!list.deltas.length) return h('p', { class: 'muted' }, 'No delta registered yet: POST /api/deltas.');
  return h('table', { class: 'grid', id: 'deltas-table' },
    h('thead', {}, h('tr', {}, ...['delta', 'base', 'post', 'tensors', 'parameters', 'raw', 'stored', 'dtype mix', 'auto-apply', 'created'].map((c) => h('th', {}, c)))),
    h('tbody', {}, ...list.deltas.map((d) => h('tr', { 'data-delta': d.name },
      h('td', {}, h('a', { href: `#/deltas/${encodeURIComponent(d.name)}` }, d.name), h('div', { class: 'muted small' }, d.layout)),
      h('td', {}, identity(d.base)),
      h('td', {}, identity(d.post)),
      h('td', { class: 'num' }, count(d.tensors)),
      h('td', { class: 'num' }, count(d.parameters)),
      h('td', { class: 'num' }, bytes(d.rawBytes)),
      h('td', { class: 'num' }, bytes(d.storedBytes), h('div', { class: 'muted small' }, percent(d.storedBytes, d.rawBytes))),
      h('td', {}, dtypeMix(d)),
      h('td', {}, d.autoApply ? 'on' : 'off'),
      h('td', { class: 'small' }, when(d.createdAt))))),
    list.incomplete.length ? h('caption', { class: 'muted small' }, `Passed over: ${list.incomplete.map((s) => `${s.name} (${s.reason})`).join('; ')}`) : null);
}

/** Bytes per second per run, from the last two polls that saw its bytes move. */
const samples = new Map<string, { bytes: number; at: number; rate: number | null }>();

function rateOf(r: RunSummary): number | null {
  const p = r.progress;
  if (!p || !p.bytesTotal) return null;
  const now = Date.now();
  const last = samples.get(r.id);
  if (!last) {
    samples.set(r.id, { bytes: p.bytesDone, at: now, rate: null });
  } else if (p.bytesDone !== last.bytes) {
    samples.set(r.id, { bytes: p.bytesDone, at: now, rate: ((p.bytesDone - last.bytes) * 1000) / Math.max(1, now - last.at) });
  }
  const live = samples.get(r.id)!.rate;
  if (r.status === 'Running' || r.status === 'Pending') return live;
  // Finished: the average over the run.
  const t0 = Date.parse(r.createdTime ?? ''), t1 = Date.parse(r.lastUpdatedTime ?? '');
  return t1 > t0 ? (p.bytesDone * 1000) / (t1 - t0) : live;
}

function progressCell(r: RunSummary): HTMLElement {
  const p = r.progress;
  if (!p) return h('td', { class: 'muted' }, '–');
  const unit = r.name === 'repostBase' ? 'deltas' : 'shards';
  const total = Math.max(p.shardsTotal, 0);
  const done = r.status === 'Completed' && total === 0 ? 1 : p.shardsDone;
  const bar = h('progress', { max: Math.max(total, 1), value: Math.min(done, Math.max(total, 1)), 'data-done': p.shardsDone, 'data-total': p.shardsTotal });
  const rate = rateOf(r);
  return h('td', { class: 'progress-cell' },
    bar,
    h('div', { class: 'small' },
      h('span', { class: 'phase' }, p.phase), ' · ', `${p.shardsDone}/${p.shardsTotal} ${unit}`,
      p.bytesTotal ? ` · ${bytes(p.bytesDone)} of ${bytes(p.bytesTotal)}` : '',
      rate ? ` · ${bytes(rate)}/s` : ''));
}

function runsTable(list: RunList): HTMLElement {
  if (!list.runs.length) return h('p', { class: 'muted' }, 'No run yet.');
  return h('table', { class: 'grid', id: 'runs-table' },
    h('thead', {}, h('tr', {}, ...['run', 'status', 'progress', 'started', 'updated', 'error'].map((c) => h('th', {}, c)))),
    h('tbody', {}, ...list.runs.map((r) => h('tr', { 'data-run': r.id, 'data-name': r.name, 'data-status': r.status, class: r.parentId ? 'child' : '' },
      h('td', {}, h('strong', {}, r.name), h('div', { class: 'muted small mono' }, r.id)),
      h('td', {}, h('span', { class: `badge ${r.status.toLowerCase()}` }, r.status)),
      progressCell(r),
      h('td', { class: 'small' }, when(r.createdTime)),
      h('td', { class: 'small' }, when(r.lastUpdatedTime)),
      h('td', { class: 'error' }, r.error ?? '')))),
    list.truncated ? h('caption', { class: 'muted small' }, 'Older runs are not shown.') : null);
}

function modelsTable(list: ModelList): HTMLElement {
  if (!list.models.length) return h('p', { class: 'muted' }, 'No posted model yet.');
  const fig = (x: number | null | undefined, digits = 4) => (x === null || x === undefined ? '' : x.toFixed(digits));
  return h('table', { class: 'grid', id: 'models-table' },
    h('thead', {}, h('tr', {}, ...['model', 'base', 'deltas', 'state', 'mean loss', 'perplexity', 'agreement', 'KL', 'loss ratio', 'created'].map((c) => h('th', {}, c)))),
    h('tbody', {}, ...list.models.map((m) => h('tr', { 'data-model': m.ref },
      h('td', { class: 'mono' }, m.ref),
      h('td', { class: 'mono small' }, m.base ?? ''),
      h('td', { class: 'small' }, m.deltas.map((d) => `${d.ref.split('/').pop()}×${d.scale}`).join(' + ')),
      h('td', {}, m.complete ? 'complete' : 'no index yet'),
      h('td', { class: 'num' }, fig(m.eval?.meanLoss)),
      h('td', { class: 'num' }, fig(m.eval?.perplexity, 2)),
      h('td', { class: 'num' }, m.eval?.agreement == null ? '' : percent(m.eval.agreement, 1)),
      h('td', { class: 'num' }, fig(m.eval?.kl)),
      h('td', { class: 'num' }, fig(m.eval?.lossRatio)),
      h('td', { class: 'small' }, when(m.createdAt))))),
    list.truncated ? h('caption', { class: 'muted small' }, 'More models are not shown.') : null);
}

/** Polls `load` every `ms` into a section until the page changes. */
function poll<T>(s: ReturnType<typeof section>, route: string, render: (x: T) => HTMLElement, ms: number, alive: () => boolean): void {
  const tick = async () => {
    if (!alive()) return;
    try {
      const data = await get<T>(route);
      if (!alive()) return;
      s.body.replaceChildren(render(data));
      s.status.textContent = `updated ${new Date().toLocaleTimeString('en-GB')}`;
      s.el.dataset.loaded = 'true';
    } catch (e) {
      s.status.textContent = `could not load: ${(e as Error).message}`;
    }
    setTimeout(() => void tick(), ms);
  };
  void tick();
}

let page = 0;

function overview(): void {
  const mine = ++page;
  const alive = () => page === mine;
  const deltas = section('deltas', 'Registered deltas');
  const runs = section('runs', 'Runs');
  const models = section('models', 'Posted models');
  app.replaceChildren(deltas.el, runs.el, models.el);
  poll<DeltaList>(deltas, 'deltas', deltasTable, POLL_MS * 5, alive);
  poll<RunList>(runs, 'runs', runsTable, POLL_MS, alive);
  poll<ModelList>(models, 'models', modelsTable, POLL_MS * 5, alive);
}

async function deltaPage(name: string): Promise<void> {
  const mine = ++page;
  const head = h('div', { class: 'delta-head' });
  const body = h('div', { id: 'analysis' }, h('p', { class: 'muted' }, 'Loading the analysis…'));
  app.replaceChildren(h('p', {}, h('a', { href: '#/' }, '← all deltas')), h('h1', {}, name), head, body);
  const [list, analysis] = await Promise.all([
    get<DeltaList>('deltas').catch(() => null),
    get<DeltaAnalysis>(`deltas/${encodeURIComponent(name)}/analysis`).catch((e: unknown) => e as Error),
  ]);
  if (page !== mine) return;
  const d: DeltaSummary | undefined = list?.deltas.find((x) => x.name === name);
  if (d) head.append(h('p', { class: 'muted' }, `${d.ref} · base ${identity(d.base)} · post ${identity(d.post)} · auto-apply ${d.autoApply ? 'on' : 'off'}`));
  if (analysis instanceof Error) {
    const missing = analysis instanceof HttpError && analysis.status === 404;
    body.replaceChildren(h('p', { class: missing ? 'muted' : 'error' }, missing ? 'This delta has no analysis.json yet.' : `Could not load the analysis: ${analysis.message}`));
    return;
  }
  body.replaceChildren();
  drawAnalysis(body, analysis);
  body.dataset.loaded = 'true';
  document.title = `paramdelta · ${name} · ‖Δ‖/‖W‖ ${ratio(analysis.totals.relative)}`;
}

function route(): void {
  const m = /^#\/deltas\/([^/]+)$/.exec(location.hash);
  if (m) void deltaPage(decodeURIComponent(m[1]));
  else {
    document.title = 'paramdelta';
    overview();
  }
}

window.addEventListener('hashchange', route);
route();
