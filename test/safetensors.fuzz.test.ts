import { describe, it, expect } from 'vitest';
import path from 'node:path';
import { fixturesDir } from './helpers/fixtures.js';
import { fuzzSafetensors } from '../bench/chaos/fuzz.js';

// The chaos suite (`npm run chaos`) runs the same harness with 1,000,000 inputs.
describe('safetensors reader under fuzzing (fast-check, seeded)', () => {
  it('20,000 generated and mutated files: only SafetensorsError, none over 1 s, no read outside the file', async () => {
    const r = await fuzzSafetensors({ runs: 20_000, samplesDir: path.join(fixturesDir, 'safetensors-samples') });
    expect(r.runs).toBe(20_000);
    // The generators reach both sides: accepted files, and every rule the reader has.
    expect(r.accepted).toBeGreaterThan(2_000);
    expect(Object.keys(r.rejected).sort()).toEqual([
      'byte-length', 'data-offsets', 'dtype', 'duplicate-name', 'file-length', 'file-too-small', 'header-depth', 'header-json',
      'header-not-object', 'header-past-eof', 'header-too-large', 'header-utf8', 'metadata', 'name-empty', 'name-nul',
      'offsets-tiling', 'shape', 'tensor-entry',
    ]);
    expect(Object.keys(r.kinds).sort()).toEqual(expect.arrayContaining(['json-edited', 'mutated', 'random', 'valid']));
  }, 120_000);
});
