// `paramdelta analyze --html`: the analysis is inlined in the page (a JSON script element).
import './style.css';
import type { DeltaAnalysis } from '../../lib/analyze/report.js';
import { drawAnalysis } from './charts.js';
import { h } from './dom.js';

const app = document.getElementById('app')!;
const data = JSON.parse(document.getElementById('paramdelta-analysis')?.textContent ?? 'null') as DeltaAnalysis | string | null;
if (data && typeof data === 'object') {
  document.title = `paramdelta analysis: ${data.delta.ref}`;
  app.append(h('h1', {}, data.delta.ref));
  drawAnalysis(app, data);
} else {
  app.append(h('p', {}, 'This report holds no analysis.'));
}
