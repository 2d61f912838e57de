import { describe, it, expect } from 'vitest';
import path from 'node:path';
import { readFile } from 'node:fs/promises';
import { fixturesDir } from './helpers/fixtures.js';
import { loadTensors, localEnv, withTempDir, writeCheckpoint, type LoadedTensor } from './helpers/models.js';
import { runCompute, runApply } from '../lib/ops/run.js';
import { verify } from '../lib/ops/verify.js';
import { localOutput } from '../lib/storage/output.js';

const F32 = path.join(fixturesDir, 'stories260K-f32');
const BF16 = path.join(fixturesDir, 'stories260K-bf16');

/** BF16 values widened exactly to F32 (the bf16 bits are the f32's high half). */
function widenBf16(t: LoadedTensor): LoadedTensor {
  const n = t.bytes.length / 2;
  const out = Buffer.alloc(n * 4);
  for (let i = 0; i < n; i++) out.writeUInt32LE(t.bytes.readUInt16LE(2 * i) << 16 >>> 0, 4 * i);
  return { dtype: 'F32', shape: t.shape, bytes: out };
}

/** A "fine-tuned" BF16 model: each element moved by the f32 weight's low bits, a real-looking spread of small and large moves. */
function perturbBf16(bf: LoadedTensor, f32: LoadedTensor): LoadedTensor {
  const n = bf.bytes.length / 2;
  const out = Buffer.alloc(n * 2);
  for (let i = 0; i < n; i++) {
    const noise = (f32.bytes.readUInt16LE(4 * i) % 9) - 4;
    const sign = (f32.bytes.readUInt16LE(4 * i) & 0x8000) && i % 97 === 0 ? 0x8000 : 0;
    const orig = bf.bytes.readUInt16LE(2 * i);
    const moved = ((orig + noise) ^ sign) & 0xffff;
    // Keep clear of NaN/Inf patterns and of −0, which IEEE addition cannot produce from a nonzero base.
    const bad = ((moved >> 7) & 0xff) === 0xff || moved === 0x8000;
    out.writeUInt16LE(bad ? orig : moved, 2 * i);
  }
  return { dtype: 'BF16', shape: bf.shape, bytes: out };
}

async function roundTrip(tmp: string, label: string, base: string, post: string) {
  const delta = path.join(tmp, `${label}-delta`);
  const out = path.join(tmp, `${label}-out`);
  await runCompute(localEnv, { base, post, shardSize: 5e9 }, () => localOutput(delta));
  const v = await verify(localEnv, base, post, delta);
  expect(v.mismatches).toEqual([]);
  expect(v.ok).toBe(true);
  await runApply(localEnv, { base, deltas: [{ ref: delta }], shardSize: 5e9 }, () => localOutput(out));
  const got = await loadTensors(out);
  const want = await loadTensors(post);
  expect([...got.keys()]).toEqual([...want.keys()]);
  for (const [n, t] of want) expect(got.get(n)!.bytes.equals(t.bytes), `${label}: ${n}`).toBe(true);
}

describe('stories260K (real weights) round-trips exactly', () => {
  it('between F32, BF16-valued F32 and perturbed BF16 variants', () =>
    withTempDir(async (tmp) => {
      const f32 = await loadTensors(F32);
      const bf16 = await loadTensors(BF16);
      const config = await readFile(path.join(F32, 'config.json'), 'utf8');
      const list = (m: Map<string, LoadedTensor>) => [...m].map(([name, t]) => ({ name, ...t }));
      const widened = new Map([...bf16].map(([n, t]) => [n, widenBf16(t)]));
      const perturbed = new Map([...bf16].map(([n, t]) => [n, perturbBf16(t, f32.get(n)!)]));
      await writeCheckpoint(path.join(tmp, 'widened'), list(widened), { 'config.json': config });
      await writeCheckpoint(path.join(tmp, 'perturbed'), list(perturbed), { 'config.json': config });

      await roundTrip(tmp, 'f32-to-widened', F32, path.join(tmp, 'widened'));
      await roundTrip(tmp, 'widened-to-f32', path.join(tmp, 'widened'), F32);
      await roundTrip(tmp, 'bf16-to-perturbed', BF16, path.join(tmp, 'perturbed'));
      await roundTrip(tmp, 'perturbed-to-bf16', path.join(tmp, 'perturbed'), BF16);
    }));
});
