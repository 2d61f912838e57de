import { fileURLToPath } from 'node:url';

/** Absolute path of the shared reference fixtures (/work/shared/fixtures beside the repo), with a trailing slash. */
export const fixturesDir: string = fileURLToPath(new URL('../../../shared/fixtures/', import.meta.url));
