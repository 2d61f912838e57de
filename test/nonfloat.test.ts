import { describe, it, expect, afterEach, vi } from 'vitest';
import path from 'node:path';
import { readdir, readFile } from 'node:fs/promises';
import { loadTensors, withTempDir, writeCheckpoint } from './helpers/models.js';
import { runCli } from './helpers/cli.js';
import { decodeFloats, encodeFloats } from './helpers/floats.js';
import { DELTA_LAYOUT } from '../lib/ops/manifest.js';

afterEach(() => vi.restoreAllMocks());

// Integer, byte and bool tensors are not differenced: compute checks them equal, apply copies them from the new base.
const f32 = (xs: number[]) => encodeFloats('F32', xs);
const i32 = (xs: number[]) => new Uint8Array(Int32Array.from(xs).buffer);
const u8 = (xs: number[]) => Uint8Array.from(xs);

interface Model {
  w: number[];
  ids: number[];
  mask: number[];
  flag: number[];
}

function tensors(m: Model) {
  return [
    { name: 'ids', dtype: 'I32', shape: [6], bytes: i32(m.ids) },
    { name: 'w', dtype: 'F32', shape: [2, 4], bytes: f32(m.w) },
    { name: 'mask', dtype: 'U8', shape: [5], bytes: u8(m.mask) },
    { name: 'flag', dtype: 'BOOL', shape: [3], bytes: u8(m.flag) },
  ];
}

const base: Model = { w: [1, -2, 0.5, 3, 0, 8, -0.25, 6], ids: [7, -1, 300000, 0, 2 ** 31 - 1, -(2 ** 31)], mask: [0, 1, 255, 3, 4], flag: [1, 0, 1] };
const post: Model = { ...base, w: [1.5, -2, 0.75, 2, 1, 8, -0.5, 6.25] };
const newbase: Model = { w: [2, -1, 0.25, 4, 0.5, 7, -1, 5], ids: [1, 2, 3, 4, 5, 6], mask: [9, 8, 7, 6, 5], flag: [0, 0, 1] };

describe('non-float tensors', () => {
  it('compute checks them equal and leaves them out; apply copies them from the new base; verify agrees', () =>
    withTempDir(async (tmp) => {
      for (const [name, m] of Object.entries({ base, post, newbase })) await writeCheckpoint(path.join(tmp, name), tensors(m));
      const d = path.join(tmp, 'delta');
      // The plain layout, so the test reads the delta's tensors as safetensors.
      const c = await runCli(['compute', '--base', path.join(tmp, 'base'), '--post', path.join(tmp, 'post'), '--out', d, '--delta-format', 'safetensors']);
      expect(c.stderr).toBe('');
      expect(c.code).toBe(0);
      expect(c.stdout).toContain('non-float tensors checked equal and left out: ids, mask, flag');
      const manifest = JSON.parse(await readFile(path.join(d, 'delta.json'), 'utf8'));
      expect(manifest.unchangedNonFloat).toEqual(['ids', 'mask', 'flag']);
      const delta = await loadTensors(d, DELTA_LAYOUT);
      expect([...delta.keys()]).toEqual(['w']);
      // post − base, exact in F32 for these values.
      expect(delta.get('w')!.bytes.equals(f32(post.w.map((x, i) => x - base.w[i])))).toBe(true);

      const v = await runCli(['verify', '--base', path.join(tmp, 'base'), '--post', path.join(tmp, 'post'), '--delta', d]);
      expect(v.code).toBe(0);

      const out = path.join(tmp, 'out');
      const a = await runCli(['apply', '--base', path.join(tmp, 'newbase'), '--delta', d, '--out', out]);
      expect(a.code).toBe(0);
      expect(a.stdout).toContain('copied unchanged from the new base (no delta has them): ids, mask, flag');
      const got = await loadTensors(out);
      expect([...got.keys()]).toEqual(['ids', 'w', 'mask', 'flag']);
      const nb = tensors(newbase);
      for (const name of ['ids', 'mask', 'flag']) {
        const t = got.get(name)!;
        const want = nb.find((x) => x.name === name)!;
        expect([t.dtype, t.shape, t.bytes.equals(Buffer.from(want.bytes))], name).toEqual([want.dtype, want.shape, true]);
      }
      const w = decodeFloats('F32', got.get('w')!.bytes);
      expect(w).toEqual(newbase.w.map((x, i) => Math.fround(x + (post.w[i] - base.w[i]))));
    }));

  it('compute names every non-float tensor that differs, exits 2 and writes nothing', () =>
    withTempDir(async (tmp) => {
      // ids differs only in its last element, flag only in its first; mask is equal.
      const bad: Model = { ...post, ids: [...base.ids.slice(0, 5), 12], flag: [0, 0, 1] };
      await writeCheckpoint(path.join(tmp, 'base'), tensors(base));
      await writeCheckpoint(path.join(tmp, 'post'), tensors(bad));
      const before = await readFile(path.join(tmp, 'post', 'model.safetensors'));
      const r = await runCli(['compute', '--base', path.join(tmp, 'base'), '--post', path.join(tmp, 'post'), '--out', path.join(tmp, 'delta')]);
      expect(r.code).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/non-float tensors differ between base and post.*"ids", "flag"$/m);
      expect(r.stderr).not.toContain('"mask"');
      expect(r.stdout).toBe('');
      expect((await readdir(tmp)).sort()).toEqual(['base', 'post']);
      expect((await readFile(path.join(tmp, 'post', 'model.safetensors'))).equals(before)).toBe(true);
    }));
});
