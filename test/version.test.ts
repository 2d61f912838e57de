import { it, expect } from 'vitest';
import { readFile } from 'node:fs/promises';
import { TOOL_VERSION } from '../lib/version.js';

it('the version recorded in manifests is package.json\'s', async () => {
  const pkg = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8'));
  expect(TOOL_VERSION).toBe(pkg.version);
});
