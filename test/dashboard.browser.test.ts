/// <reference lib="dom" />
// The dashboard in a real browser (Debian's chromium through playwright-core), against `paramdelta
// serve` on Azurite: a re-post's progress moving to Completed, the delta page's charts drawing one
// mark per layer, and `analyze --html` as one self-contained file. Screenshots of the dashboard and
// the delta page go to docs/screenshots/ when UPDATE_SCREENSHOTS=1 (the README shows them).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import path from 'node:path';
import { createServer } from 'node:net';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { readdirSync, statSync } from 'node:fs';
import { build } from 'vite';
import { tmpdir } from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import { chromium, type Browser, type Page } from 'playwright-core';
import { startAzurite, type Azurite } from '../cli/host/azurite.js';
import { startServe, type ServeHandle } from '../cli/host/serve.js';
import type { ActivityFn } from '../cli/host/runtime.js';
import { writeSyntheticFamily } from '../lib/synth/family.js';
import { ANALYSIS_FILE, analysisSchema, type DeltaAnalysis } from '../lib/analyze/report.js';
import { renderAnalysisHtml } from '../cli/html-report.js';
import { loadTensors, withTempDir } from './helpers/models.js';
import { uploadFolder } from './helpers/blob.js';
import { roundTo } from './helpers/floats.js';
import { analysisOf, deltaOf, type DeltaOf } from './helpers/delta-analysis.js';
import { serveApi } from './helpers/serve-api.js';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const root = fileURLToPath(new URL('..', import.meta.url));
const shotsDir = process.env.UPDATE_SCREENSHOTS === '1' ? path.join(root, 'docs/screenshots') : path.join(tmpdir(), 'paramdelta-screenshots');
/** Each re-post shard waits this long, so the progress bar has steps to be seen between. */
const SHARD_DELAY_MS = 500;

let work: string;
let family: { base: string; post: string; newbase: string };
let azurite: Azurite;
let serve: ServeHandle;
const { api, waitFor } = serveApi(() => serve.url);
let service: BlobServiceClient;
let browser: Browser;
let chatAnalysis: DeltaAnalysis;
/** Decoder layers of the synthetic family (its config.json). */
let layers: number;
let chat: DeltaOf;
let other: DeltaOf;
const savedShardSize = process.env.PARAMDELTA_SHARD_SIZE;

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}



async function readJson(container: ContainerClient, name: string): Promise<any> {
  return JSON.parse((await container.getBlobClient(name).downloadToBuffer()).toString('utf8'));
}

const slowShards = (name: string, fn: ActivityFn): ActivityFn =>
  name === 'applyDeltaShard' ? async (input, ctx) => { await new Promise((r) => setTimeout(r, SHARD_DELAY_MS)); return fn(input, ctx); } : fn;

/** Pixels of a canvas that are not transparent: the chart painted something. */
const paintedPixels = (page: Page, chart: string) =>
  page.$eval(`figure[data-chart="${chart}"] canvas`, (c) => {
    const canvas = c as HTMLCanvasElement;
    const data = canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height).data;
    let n = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) n++;
    return n;
  });

/** Builds dist/web from web/ when a page is missing or older than a source (`npm test` builds it first). */
async function buildWebIfStale(): Promise<void> {
  const newest = (dir: string): number => Math.max(...readdirSync(dir, { withFileTypes: true }).map((e) =>
    e.isDirectory() ? newest(path.join(dir, e.name)) : statSync(path.join(dir, e.name)).mtimeMs));
  const sources = Math.max(newest(path.join(root, 'web')), statSync(path.join(root, 'lib/analyze/report.ts')).mtimeMs);
  const built = ['dashboard', 'report'].map((p) => statSync(path.join(root, `dist/web/${p}.html`), { throwIfNoEntry: false })?.mtimeMs ?? 0);
  if (Math.min(...built) >= sources) return;
  for (const mode of ['dashboard', 'report']) await build({ configFile: path.join(root, 'web/vite.config.ts'), mode });
}

beforeAll(async () => {
  await buildWebIfStale();
  work = path.join(tmpdir(), `paramdelta-dashboard-${process.pid}`);
  // Six decoder layers, about 0.7 MB a model; 250 KB output shards make a re-post of several shards.
  family = await writeSyntheticFamily(work, { dtype: 'BF16', bytes: 700_000, shards: 2, hidden: 64, seed: 11 });
  layers = JSON.parse(await readFile(path.join(family.base, 'config.json'), 'utf8')).num_hidden_layers;
  process.env.PARAMDELTA_SHARD_SIZE = '250KB';
  const [a, port] = await Promise.all([startAzurite(), freePort()]);
  azurite = a;
  service = BlobServiceClient.fromConnectionString(azurite.connectionString);
  serve = await startServe({ port, storage: azurite.connectionString, pollMs: 200, timerScale: 0.001, activityConcurrency: 2, log: () => {}, wrapActivity: slowShards });
  const models = service.getContainerClient('models');
  await Promise.all(['base', 'post', 'newbase'].map((m) => uploadFolder(models, `syn/${m}`, path.join(work, m))));
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS });
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await serve?.close();
  await azurite?.stop();
  if (savedShardSize === undefined) delete process.env.PARAMDELTA_SHARD_SIZE;
  else process.env.PARAMDELTA_SHARD_SIZE = savedShardSize;
  const { rm } = await import('node:fs/promises');
  if (work) await rm(work, { recursive: true, force: true });
});

describe('the dashboard', () => {
  it('registers two deltas and serves their routes: deltas with sizes and dtype mix, analysis (404 until written), / to the dashboard', async () => {
    // Two deltas on the same base: post − base (auto-applied) and newbase − base (for the similarity chart).
    // One after the other: a delta's analysis.json compares it with the deltas already registered.
    const b = await api('POST', 'deltas', { name: 'other', base: 'models/syn/base', post: 'models/syn/newbase', autoApply: false });
    expect(b.status).toBe(202);
    expect((await waitFor(b.json.id)).status).toBe('Completed');
    const a = await api('POST', 'deltas', { name: 'chat', base: 'models/syn/base', post: 'models/syn/post' });
    expect(a.status).toBe(202);
    expect((await waitFor(a.json.id)).status).toBe('Completed');

    const [base, post, newbase] = await Promise.all(['base', 'post', 'newbase'].map((m) => loadTensors(path.join(work, m))));
    chat = deltaOf(base, post);
    other = deltaOf(base, newbase);
    const parameters = [...base.values()].reduce((s, t) => s + t.shape.reduce((x, y) => x * y, 1), 0);

    const list = await api('GET', 'deltas');
    expect(list.status).toBe(200);
    const deltas = service.getContainerClient('deltas');
    const manifest = await readJson(deltas, 'chat/delta.json');
    const d = list.json.deltas.find((x: any) => x.name === 'chat');
    expect(d).toMatchObject({ autoApply: true, layout: 'compact', tensors: base.size, parameters });
    // Raw bytes: every delta tensor in its dtype; stored: the shard blobs as listed in storage.
    const sizes: Record<string, number> = { F32: 4, F64: 8, BF16: 2, F16: 2 };
    const raw = Object.entries(manifest.tensors as Record<string, { dtype: string; shape: number[] }>).reduce((s, [, t]) => s + sizes[t.dtype] * t.shape.reduce((x, y) => x * y, 1), 0);
    expect(d.rawBytes).toBe(raw);
    let stored = 0;
    for await (const blob of deltas.listBlobsFlat({ prefix: 'chat/delta-' })) stored += blob.properties.contentLength ?? 0;
    expect(d.storedBytes).toBe(stored);
    expect(Object.values(d.dtypes as Record<string, number>).reduce((s, n) => s + n, 0)).toBe(parameters);

    // An analysis.json that does not match the schema is not passed on; without one, 404.
    await deltas.getBlockBlobClient(`other/${ANALYSIS_FILE}`).upload('{"format":"paramdelta.analysis"}', 32);
    const bad = await api('GET', 'deltas/other/analysis');
    expect(bad.status).toBe(500);
    expect(bad.json.detail).toMatch(/deltas\/other\/analysis\.json: field "formatVersion"/);
    await deltas.getBlockBlobClient(`other/${ANALYSIS_FILE}`).delete();
    expect((await api('GET', 'deltas/other/analysis')).status).toBe(404);
    expect((await api('GET', 'deltas/Bad%20Name/analysis')).json.field).toBe('name');
    // chat's analysis.json is the pipeline's own (written when the delta was computed), checked
    // against figures computed here from the models' tensors (test/helpers/delta-analysis.ts).
    const dtypes = new Map(Object.entries(manifest.tensors as Record<string, { dtype: string; modelDtype: string }>).map(([n, t]) => [n, { dtype: t.dtype, modelDtype: t.modelDtype }]));
    const want = analysisOf({
      ref: 'deltas/chat', d: chat, dtypes, storedBytes: stored, against: [{ ref: 'deltas/other', d: other }],
      signatures: { base: manifest.base.signature, post: manifest.post.signature },
    });
    const got = await api('GET', 'deltas/chat/analysis');
    expect(got.status).toBe(200);
    chatAnalysis = analysisSchema.parse(got.json);
    const close = (x: number, y: number, what: string) => expect(Math.abs(x - y), `${what}: ${x} vs ${y}`).toBeLessThanOrEqual(1e-9 * Math.max(Math.abs(y), 1e-300));
    expect(chatAnalysis.layers.map((l) => l.layer)).toEqual(want.layers.map((l) => l.layer));
    for (const [i, l] of want.layers.entries()) {
      for (const k of ['deltaNorm', 'weightNorm', 'relative'] as const) close(chatAnalysis.layers[i][k], l[k], `layer ${l.layer} ${k}`);
    }
    expect(chatAnalysis.similarity.map((x) => x.against)).toEqual(['other']);
    close(chatAnalysis.similarity[0].cosine, want.similarity[0].cosine, 'cosine');
    for (const [i, l] of want.similarity[0].layers.entries()) close(chatAnalysis.similarity[0].layers[i].cosine, l.cosine, `layer ${l.layer} cosine`);

    const home = await fetch(`${serve.url}/?poll=250`, { redirect: 'manual' });
    expect(home.status).toBe(302);
    expect(home.headers.get('location')).toBe('/api/dashboard?poll=250');
    const page = await api('GET', 'dashboard');
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toMatch(/^text\/html/);
    expect(page.headers.get('content-security-policy')).toMatch(/connect-src 'self'/);
    // One self-contained page: no script or stylesheet fetched from anywhere.
    expect(page.json).not.toMatch(/<script[^>]+src=|<link[^>]+stylesheet/);
  });

  it('shows a re-post moving to Completed, the posted model with its figures, and a delta page whose charts draw every layer', async () => {
    const browserPage = await browser.newPage({ viewport: { width: 1360, height: 900 } });
    const outside: string[] = [];
    const apiCalls: { url: string; key?: string; referer?: string }[] = [];
    browserPage.on('request', (r) => {
      if (!r.url().startsWith(serve.url)) outside.push(r.url());
      else if (r.url().startsWith(`${serve.url}/api/`) && !r.url().includes('/api/dashboard')) {
        apiCalls.push({ url: r.url(), key: r.headers()['x-functions-key'], referer: r.headers()['referer'] });
      }
    });
    const errors: string[] = [];
    browserPage.on('pageerror', (e) => errors.push(e.message));
    // Opened as in Azure, with the function key in the address: the page sends it on to the API.
    await browserPage.goto(`${serve.url}/?poll=250&code=test-key`);
    await browserPage.waitForSelector('#deltas-table tr[data-delta="chat"]');
    await browserPage.waitForSelector('#deltas-table tr[data-delta="other"]');
    expect(await browserPage.textContent('#deltas-table tr[data-delta="chat"]')).toMatch(/on/);

    // A new base arrives: the poller starts repostBase, which applies `chat` shard by shard.
    await uploadFolder(service.getContainerClient('base-models'), 'syn-next', path.join(work, 'newbase'));
    const row = 'tr[data-name="applyDeltas"]';
    const seen: { done: number; total: number; status: string }[] = [];
    const deadline = Date.now() + 60_000;
    for (;;) {
      const s = await browserPage.$eval(row, (tr) => {
        const p = tr.querySelector('progress')!;
        return { done: Number(p.value), total: Number(p.max), status: (tr as HTMLElement).dataset.status! };
      }).catch(() => null);
      if (s) seen.push(s);
      if (s?.status === 'Completed') break;
      if (s && s.done > 0 && s.done < s.total && !seen.slice(0, -1).some((x) => x.done > 0 && x.done < x.total)) {
        await mkdir(shotsDir, { recursive: true });
        await browserPage.screenshot({ path: path.join(shotsDir, 'dashboard-running.png'), fullPage: true });
      }
      if (Date.now() > deadline) throw new Error(`the re-post did not complete on the page: ${JSON.stringify(seen.slice(-3))}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const total = seen.at(-1)!.total;
    expect(total).toBeGreaterThanOrEqual(3);
    expect(layers).toBeGreaterThanOrEqual(4);
    // The bar moved: it showed a part done between none and all, and ended full.
    expect(seen.some((s) => s.done > 0 && s.done < total)).toBe(true);
    expect(new Set(seen.map((s) => s.done)).size).toBeGreaterThanOrEqual(2);
    expect(seen.at(-1)!.done).toBe(total);
    await browserPage.waitForSelector('tr[data-name="repostBase"][data-status="Completed"]');

    // The posted model is listed with the figures of the evaluation the re-post ran on it (the gate's
    // paramdelta-eval.json, lib/eval/report.ts), read here from storage and looked for on the page.
    const postedModels = service.getContainerClient('posted-models');
    const evalReport = JSON.parse((await postedModels.getBlobClient('syn-next/chat/paramdelta-eval.json').downloadToBuffer()).toString());
    expect(evalReport.model.meanLoss).toBeGreaterThan(0);
    const modelRow = '#models-table tr[data-model="posted-models/syn-next/chat"]';
    const loss = evalReport.model.meanLoss.toFixed(4);
    await browserPage.waitForFunction(([sel, want]) => (document.querySelector(sel)?.textContent ?? '').includes(want), [modelRow, loss] as const, { timeout: 10_000 });
    const modelText = await browserPage.textContent(modelRow);
    expect(modelText).toContain('complete');
    expect(modelText).toContain(`${(evalReport.agreement * 100).toFixed(evalReport.agreement === 1 ? 0 : 1)}%`);
    await mkdir(shotsDir, { recursive: true });
    await browserPage.screenshot({ path: path.join(shotsDir, 'dashboard.png'), fullPage: true });

    await browserPage.click('#deltas-table tr[data-delta="chat"] a');
    await browserPage.waitForSelector('#analysis[data-loaded="true"]');
    await browserPage.waitForFunction(() => document.querySelectorAll('figure.chart[data-drawn="true"]').length === document.querySelectorAll('figure.chart').length);
    const charts = await browserPage.$$eval('figure.chart', (fs) => fs.map((f) => ({ chart: (f as HTMLElement).dataset.chart, points: Number((f as HTMLElement).dataset.points), series: (f as HTMLElement).dataset.series })));
    expect(chatAnalysis.layers).toHaveLength(layers);
    // Exact delta: no rounding chart. Layers and similarity: one mark per layer; kinds: one bar per kind.
    expect(charts.map((c) => c.chart)).toEqual(['layers', 'kinds', 'similarity']);
    expect(charts.find((c) => c.chart === 'layers')!.points).toBe(layers);
    expect(charts.find((c) => c.chart === 'kinds')!.points).toBe(5); // attention, mlp, norm, embedding, head
    expect(charts.find((c) => c.chart === 'similarity')!.points).toBe(layers);
    // Per kind inside the layers (attention, mlp, norm): every layer too.
    expect(charts.find((c) => c.chart === 'layers')!.series).toBe([layers, layers, layers, layers].join(','));
    for (const c of charts) expect(await paintedPixels(browserPage, c.chart!), c.chart).toBeGreaterThan(1000);
    const cosineCell = await browserPage.textContent('table.grid tbody tr td:nth-child(2)');
    expect(Number(cosineCell)).toBeCloseTo(chatAnalysis.similarity[0].cosine, 4);
    await browserPage.screenshot({ path: path.join(shotsDir, 'delta.png'), fullPage: true });

    expect(outside).toEqual([]);
    expect(errors).toEqual([]);
    // Every API call carried the key as a header, and no call gave the address (and its key) as a referrer.
    expect(apiCalls.length).toBeGreaterThan(10);
    expect(apiCalls.filter((c) => c.key !== 'test-key' || !!c.referer)).toEqual([]);
    await browserPage.close();
  });
});

describe('analyze --html (renderAnalysisHtml)', () => {
  it('writes one self-contained page holding the analysis, whose charts draw every layer, rounding included', () =>
    withTempDir(async (tmp) => {
      // A lossy variant of the same delta: stored as BF16, the elements that BF16 cannot hold are counted here.
      const rounded = new Map([...chat.delta].map(([n, d]) => [n, d.reduce((s, x) => s + (roundTo('BF16', x) === x ? 0 : 1), 0)]));
      expect([...rounded.values()].some((r) => r > 0)).toBe(true);
      const lossy: DeltaAnalysis = {
        ...chatAnalysis,
        // A name that tries to end the data's script element must stay data.
        delta: { ...chatAnalysis.delta, ref: 'deltas/chat</script><script>window.__injected = 1</script>' },
        lossy: true,
        tensors: chatAnalysis.tensors.map((t) => ({ ...t, dtype: 'BF16', rounded: rounded.get(t.name)! })),
      };
      const html = await renderAnalysisHtml(lossy);
      expect(html).not.toMatch(/<script[^>]+src=|<link[^>]+stylesheet/);
      const data = /<script id="paramdelta-analysis" type="application\/json">([\s\S]*?)<\/script>/.exec(html);
      expect(analysisSchema.parse(JSON.parse(data![1]))).toEqual(lossy);
      const file = path.join(tmp, 'report.html');
      await writeFile(file, html);

      const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
      const requests: string[] = [];
      page.on('request', (r) => requests.push(r.url()));
      await page.goto(pathToFileURL(file).href);
      await page.waitForFunction(() => document.querySelectorAll('figure.chart[data-drawn="true"]').length === 4);
      expect(requests).toEqual([pathToFileURL(file).href]);
      expect(await page.evaluate(() => (window as unknown as { __injected?: number }).__injected)).toBeUndefined();
      expect(await page.evaluate(() => JSON.parse(document.getElementById('paramdelta-analysis')!.textContent!))).toEqual(lossy);
      const charts = await page.$$eval('figure.chart', (fs) => fs.map((f) => [(f as HTMLElement).dataset.chart, Number((f as HTMLElement).dataset.points)]));
      expect(charts).toEqual([['layers', layers], ['kinds', 5], ['rounding', layers], ['similarity', layers]]);
      for (const [chart] of charts) expect(await paintedPixels(page, chart as string)).toBeGreaterThan(1000);
      // The rounding chart's caption carries the total the test counted.
      const total = [...rounded.values()].reduce((s, n) => s + n, 0);
      expect(await page.textContent('figure[data-chart="rounding"] figcaption')).toContain(total.toLocaleString('en-US'));
      await page.close();
    }));
});
