// The package's built web pages (web/, built by `npm run build` into dist/web): the dashboard that
// the Functions app serves and the report template of `analyze --html`. Found from this module's
// own place, so they load the same from the source tree, dist/, the Docker image or node_modules.
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const WEB_PAGES = { dashboard: 'dashboard.html', report: 'report.html' } as const;
export type WebPage = keyof typeof WEB_PAGES;

const BUILT_DIR = path.join('dist', 'web');

/** The path of a built page: <package>/dist/web/<file>, the package being the nearest folder above this module that has it. */
export function webPagePath(page: WebPage): string {
  const file = WEB_PAGES[page];
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = path.join(dir, BUILT_DIR, file);
    if (existsSync(candidate)) return candidate;
    const up = path.dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  throw new Error(`the built web page ${BUILT_DIR}/${file} is missing: run \`npm run build\` (it builds web/ with Vite)`);
}

const cache = new Map<WebPage, Promise<string>>();

/** The built page's HTML (read once per process: it changes only with a new build). */
export function readWebPage(page: WebPage): Promise<string> {
  let text = cache.get(page);
  if (!text) {
    text = readFile(webPagePath(page), 'utf8');
    text.catch(() => cache.delete(page));
    cache.set(page, text);
  }
  return text;
}
