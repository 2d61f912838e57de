// Builds the dashboard (dashboard.html) and the analysis report (report.html, what `analyze --html`
// fills with data) into dist/web, one mode each: `vite build -c web/vite.config.ts -m report`.
// Each page comes out as one self-contained HTML file: its script and styles inlined, nothing
// fetched from elsewhere, so one keyed request serves the whole dashboard and a report is one file.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineConfig, type Plugin } from 'vite';

const here = path.dirname(fileURLToPath(import.meta.url));
const PAGES = { dashboard: 'dashboard.html', report: 'report.html' } as const;

/**
 * Inlines the built entry script and stylesheet into each HTML page and drops them from the output.
 * Written here because vite-plugin-singlefile, which does this, needs rollup as a peer and Vite 8
 * bundles with rolldown.
 */
function inlineIntoHtml(): Plugin {
  return {
    name: 'paramdelta-inline',
    enforce: 'post',
    generateBundle(_options, bundle) {
      for (const html of Object.values(bundle)) {
        if (html.type !== 'asset' || !html.fileName.endsWith('.html')) continue;
        let text = String(html.source);
        for (const [name, item] of Object.entries(bundle)) {
          const ref = new RegExp(`<(script|link)[^>]*(?:src|href)="\\.?/?${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}"[^>]*>(?:</script>)?`);
          const tag = ref.exec(text);
          if (!tag) continue;
          if (item.type === 'chunk') {
            const code = item.code.replace(/<\/script/gi, '<\\/script');
            text = text.replace(tag[0], () => `<script type="module">${code}</script>`);
          } else {
            const css = String(item.source).replace(/<\/style/gi, '<\\/style');
            text = text.replace(tag[0], () => `<style>${css}</style>`);
          }
          delete bundle[name];
        }
        html.source = text;
      }
    },
  };
}

export default defineConfig(({ mode }) => {
  const page = PAGES[mode as keyof typeof PAGES];
  if (!page) throw new Error(`web/vite.config.ts: mode must be one of ${Object.keys(PAGES).join(', ')}`);
  return {
    root: here,
    base: './',
    logLevel: 'warn',
    plugins: [inlineIntoHtml()],
    build: {
      outDir: path.join(here, '../dist/web'),
      emptyOutDir: false,
      modulePreload: false,
      cssCodeSplit: false,
      assetsInlineLimit: Number.MAX_SAFE_INTEGER,
      reportCompressedSize: false,
      chunkSizeWarningLimit: 1024,
      rolldownOptions: { input: path.join(here, page), output: { codeSplitting: false } },
    },
  };
});
