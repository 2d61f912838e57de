// `analyze --method --html` in a real browser (Debian's chromium through playwright-core): the report page
// draws the fusion chart (one mark per layer for each delta and each pair) and its tables show the kept and
// elected shares and the sign agreements that this test computes from the fixture tensors.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import path from 'node:path';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { pathToFileURL } from 'node:url';
import { chromium, type Browser } from 'playwright-core';
import { fixturesDir } from './helpers/fixtures.js';
import { localEnv } from './helpers/models.js';
import { runCli } from './helpers/cli.js';
import { deltaOf, signs, sumCounts, sumSigns, tensorCounts } from './helpers/fusion-counts.js';
import { runCompute } from '../lib/ops/run.js';
import { localOutput } from '../lib/storage/output.js';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const TINY = path.join(fixturesDir, 'tiny-llama-bf16');

let tmp: string;
let browser: Browser;
const dir = (name: string) => path.join(tmp, name);

beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'paramdelta-fusion-report-'));
  await Promise.all(
    (['post', 'post2', 'newbase'] as const).map((post, i) =>
      runCompute(localEnv, { base: path.join(TINY, 'base'), post: path.join(TINY, post), shardSize: 5e9, format: i === 1 ? 'safetensors' : 'compact' }, () => localOutput(dir(post))),
    ),
  );
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS });
}, 60_000);

afterAll(async () => {
  await browser?.close();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** The page's percentages (web/src/dom.ts percent), spelled out here. */
const percent = (part: number, whole: number) => (whole > 0 ? `${((100 * part) / whole).toFixed(part === whole ? 0 : 1)}%` : '–');

describe('analyze --method --html', () => {
  it('draws the fusion chart and shows the kept, elected and sign-agreement figures computed from the fixtures', async () => {
    const file = dir('report.html');
    const weights = [1, 0.5, 2];
    const r = await runCli(['analyze', dir('post'), '--against', dir('post2'), '--scale', '0.5', '--against', dir('newbase'), '--scale', '2', '--method', 'ties', '--density', '0.3', '--html', file]);
    expect(r.code, r.stderr).toBe(0);
    const deltas = await Promise.all(['post', 'post2', 'newbase'].map((p) => deltaOf(TINY, p)));
    const names = [...deltas[0].keys()];
    const totals = sumCounts(names.map((n) => tensorCounts(n, deltas.map((d) => d.get(n)!), weights, { method: 'ties', density: 0.3 })));
    const layers = new Set(names.filter((n) => n.startsWith('model.layers.')).map((n) => n.split('.')[2])).size;

    const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    const requests: string[] = [];
    page.on('request', (q) => requests.push(q.url()));
    await page.goto(pathToFileURL(file).href);
    await page.waitForFunction(() => document.querySelectorAll('figure.chart').length > 0 && document.querySelectorAll('figure.chart[data-drawn="true"]').length === document.querySelectorAll('figure.chart').length);
    expect(requests).toEqual([pathToFileURL(file).href]);
    const charts = await page.$$eval('figure.chart', (fs) => fs.map((f) => [(f as HTMLElement).dataset.chart, (f as HTMLElement).dataset.series]));
    // Fusion: one line per delta (its elected share) and one per pair (kept-sign agreement), each a mark per layer.
    expect(charts.find(([c]) => c === 'fusion')).toEqual(['fusion', Array(6).fill(layers).join(',')]);
    const painted = await page.$eval('figure[data-chart="fusion"] canvas', (c) => {
      const d = (c as HTMLCanvasElement).getContext('2d')!.getImageData(0, 0, (c as HTMLCanvasElement).width, (c as HTMLCanvasElement).height).data;
      let n = 0;
      for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
      return n;
    });
    expect(painted).toBeGreaterThan(1000);

    const cells = (table: string, cls: string) => page.$$eval(`table[data-table="${table}"] td.${cls}`, (tds) => tds.map((td) => td.textContent));
    expect(await cells('fusion-deltas', 'kept')).toEqual(totals.kept.map((k) => percent(k, totals.elements)));
    expect(await cells('fusion-deltas', 'elected')).toEqual(totals.elected!.map((k) => percent(k, totals.elements)));
    expect(await cells('fusion-pairs', 'kept-agreement')).toEqual(totals.pairs.map((p) => percent(p.kept.agree, p.kept.agree + p.kept.disagree)));
    const raw = [1, 2].map((j) => sumSigns(names.map((n) => signs(deltas[0].get(n)!, deltas[j].get(n)!))));
    expect(await cells('similarity', 'sign-agreement')).toEqual(raw.map((s) => percent(s.agree, s.agree + s.disagree)));
    await page.close();
  });
});
