import { describe, it, expect } from 'vitest';
import path from 'node:path';
import { fixturesDir } from './helpers/fixtures.js';
import { loadTensors, withTempDir, writeCheckpoint, type LoadedTensor } from './helpers/models.js';
import { decodeFloats, encodeFloats } from './helpers/floats.js';
import { openCheckpoint } from '../lib/format/checkpoint.js';
import { LocalStore } from '../lib/storage/local.js';
import { modelIdentity } from '../lib/ops/manifest.js';
import { incompatibility } from '../lib/ops/compat.js';

const BF16 = path.join(fixturesDir, 'tiny-llama-bf16');

type Tensors = { name: string; dtype: string; shape: number[]; bytes: Uint8Array }[];

/** The fixture base's tensors, changed by `edit`, written as a one-file checkpoint and opened. */
async function candidate(tmp: string, label: string, edit: (ts: Tensors) => Tensors) {
  const loaded = await loadTensors(path.join(BF16, 'base'));
  const ts: Tensors = [...loaded].map(([name, t]: [string, LoadedTensor]) => ({ name, dtype: t.dtype, shape: t.shape, bytes: t.bytes }));
  await writeCheckpoint(path.join(tmp, label), edit(ts));
  return openCheckpoint(new LocalStore(path.join(tmp, label)));
}

describe('incompatibility: why a delta cannot be applied to a new base', () => {
  it('names each reason: a missing tensor, another shape, another float dtype, an extra tensor', () =>
    withTempDir(async (tmp) => {
      const recorded = modelIdentity(await openCheckpoint(new LocalStore(path.join(BF16, 'base'))));
      const shapeOf = (name: string) => recorded.tensors.find((t) => t[0] === name)![2];
      expect(shapeOf('lm_head.weight')).toEqual([256, 64]);

      // The new base of the same family fits.
      expect(incompatibility(recorded, await openCheckpoint(new LocalStore(path.join(BF16, 'newbase'))))).toBeNull();

      const missing = await candidate(tmp, 'missing', (ts) => ts.filter((t) => t.name !== 'model.norm.weight'));
      expect(incompatibility(recorded, missing)).toBe('tensor "model.norm.weight" is missing');

      const reshaped = await candidate(tmp, 'reshaped', (ts) => ts.map((t) => (t.name === 'lm_head.weight' ? { ...t, shape: [64, 256] } : t)));
      expect(incompatibility(recorded, reshaped)).toBe('tensor "lm_head.weight" has shape [64,256], the delta\'s base had [256,64]');

      // The same values widened exactly to F32.
      const widened = await candidate(tmp, 'widened', (ts) =>
        ts.map((t) => (t.name === 'model.norm.weight' ? { ...t, dtype: 'F32', bytes: encodeFloats('F32', decodeFloats('BF16', t.bytes)) } : t)),
      );
      expect(incompatibility(recorded, widened)).toBe('tensor "model.norm.weight" is F32, the delta\'s base had BF16');

      const extra = await candidate(tmp, 'extra', (ts) => [...ts, { name: 'extra.bias', dtype: 'BF16', shape: [2], bytes: new Uint8Array(4) }]);
      expect(incompatibility(recorded, extra)).toBe('tensor "extra.bias" is not in the delta\'s base');

      // Many problems: the first three, then how many more.
      const many = await candidate(tmp, 'many', (ts) => [
        ...ts.filter((t) => !t.name.startsWith('model.layers.1.')),
        { name: 'extra.bias', dtype: 'BF16', shape: [2], bytes: new Uint8Array(4) },
      ]);
      const dropped = recorded.tensors.filter((t) => t[0].startsWith('model.layers.1.')).map((t) => t[0]);
      expect(dropped.length).toBeGreaterThan(3);
      expect(incompatibility(recorded, many)).toBe(
        `${dropped.slice(0, 3).map((n) => `tensor "${n}" is missing`).join('; ')}; and ${dropped.length + 1 - 3} more`,
      );
    }));

  it('compares only the names of non-float tensors, which apply copies from the new base', () =>
    withTempDir(async (tmp) => {
      const w = { name: 'w', dtype: 'BF16', shape: [2], bytes: encodeFloats('BF16', [1, 2]) };
      await writeCheckpoint(path.join(tmp, 'old'), [w, { name: 'ids', dtype: 'I32', shape: [2], bytes: new Uint8Array(8) }]);
      await writeCheckpoint(path.join(tmp, 'new'), [w, { name: 'ids', dtype: 'I64', shape: [2], bytes: new Uint8Array(16) }]);
      await writeCheckpoint(path.join(tmp, 'renamed'), [w, { name: 'ids2', dtype: 'I32', shape: [2], bytes: new Uint8Array(8) }]);
      const recorded = modelIdentity(await openCheckpoint(new LocalStore(path.join(tmp, 'old'))));
      expect(incompatibility(recorded, await openCheckpoint(new LocalStore(path.join(tmp, 'new'))))).toBeNull();
      expect(incompatibility(recorded, await openCheckpoint(new LocalStore(path.join(tmp, 'renamed'))))).toBe(
        'tensor "ids" is missing; tensor "ids2" is not in the delta\'s base',
      );
    }));
});
