// `paramdelta analyze --html FILE`: one analysis as a single self-contained HTML file, with the
// dashboard's own charts (web/src/charts.ts). The page's script and styles are inlined at build
// time (dist/web/report.html); the analysis goes into its JSON script element here.
import { analysisSchema, type DeltaAnalysis } from '../lib/analyze/report.js';
import { readWebPage } from '../lib/assets.js';

/** The placeholder report.html holds where the data goes (web/report.html). */
const DATA_MARKER = '"__PARAMDELTA_ANALYSIS__"';

/** JSON that is safe inside a <script> element: no "</script>", "<!--" or line separators left as such. */
function scriptSafeJson(value: unknown): string {
  return JSON.stringify(value).replace(/</g, '\\u003c').replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
}

/** Renders one analysis into a standalone HTML page (inline script, styles and data; nothing fetched). */
export async function renderAnalysisHtml(analysis: DeltaAnalysis): Promise<string> {
  const checked = analysisSchema.safeParse(analysis);
  if (!checked.success) {
    const issue = checked.error.issues[0];
    throw new Error(`renderAnalysisHtml: the analysis does not match its schema at "${issue.path.join('.')}": ${issue.message}`);
  }
  const template = await readWebPage('report');
  const at = template.indexOf(DATA_MARKER);
  if (at < 0 || template.indexOf(DATA_MARKER, at + 1) >= 0) throw new Error('dist/web/report.html does not hold exactly one data placeholder: rebuild it (`npm run build`)');
  return template.slice(0, at) + scriptSafeJson(analysis) + template.slice(at + DATA_MARKER.length);
}
