// A plain float64 causal-LM forward pass (Hugging Face Llama/Mistral/Qwen2 conventions), written
// from the transformers modeling code independently of lib/eval, to check what the engine computes
// beyond the fixture figures: KL, agreement, shared vocabularies, sliding windows, F16/F64 weights.
// Small models only: it holds every tensor and every position's logits.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { loadTensors, type LoadedTensor } from './models.js';

function toF64(t: LoadedTensor): Float64Array {
  const b = t.bytes;
  const n = t.shape.reduce((a, d) => a * d, 1);
  const out = new Float64Array(n);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  for (let i = 0; i < n; i++) {
    switch (t.dtype) {
      case 'F32':
        out[i] = dv.getFloat32(i * 4, true);
        break;
      case 'F64':
        out[i] = dv.getFloat64(i * 8, true);
        break;
      case 'BF16': {
        const u = new DataView(new ArrayBuffer(4));
        u.setUint32(0, dv.getUint16(i * 2, true) << 16);
        out[i] = u.getFloat32(0);
        break;
      }
      case 'F16': {
        const h = dv.getUint16(i * 2, true);
        const e = (h >> 10) & 31;
        const f = h & 1023;
        const v = e === 0 ? f * 2 ** -24 : e === 31 ? (f ? NaN : Infinity) : (1 + f / 1024) * 2 ** (e - 15);
        out[i] = h & 0x8000 ? -v : v;
        break;
      }
      default:
        throw new Error(`reference: dtype ${t.dtype}`);
    }
  }
  return out;
}

/** y[o] = Σ_i W[o][i] x[i] (+ b[o]) for W stored [out, in]. */
function linear(W: Float64Array, x: Float64Array, out: number, b?: Float64Array): Float64Array {
  const inn = x.length;
  const y = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let s = b ? b[o] : 0;
    for (let i = 0; i < inn; i++) s += W[o * inn + i] * x[i];
    y[o] = s;
  }
  return y;
}

function rmsNorm(x: Float64Array, w: Float64Array, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const r = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * r * w[i]);
}

/** Logits [T][V] for one token sequence. */
export async function referenceLogits(dir: string, tokens: number[]): Promise<Float64Array[]> {
  const c = JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8'));
  const raw = await loadTensors(dir);
  const W = (name: string) => toF64(raw.get(name)!);
  const H: number = c.hidden_size;
  const nh: number = c.num_attention_heads;
  const nkv: number = c.num_key_value_heads ?? nh;
  const hd: number = c.head_dim ?? H / nh;
  const I: number = c.intermediate_size;
  const eps: number = c.rms_norm_eps ?? 1e-6;
  const theta: number = c.rope_theta ?? 10000;
  const L: number = c.num_hidden_layers;
  const window: number | null = c.model_type === 'mistral' ? (c.sliding_window ?? null) : null;

  // Rotary frequencies (transformers' _compute_default / _compute_llama3_parameters).
  const inv: number[] = [];
  for (let i = 0; i < hd; i += 2) inv.push(1 / theta ** (i / hd));
  const rs = c.rope_scaling;
  if (rs && (rs.rope_type ?? rs.type) === 'llama3') {
    const old = rs.original_max_position_embeddings;
    for (let i = 0; i < inv.length; i++) {
      const wl = (2 * Math.PI) / inv[i];
      if (wl > old / rs.low_freq_factor) inv[i] = inv[i] / rs.factor;
      else if (wl >= old / rs.high_freq_factor) {
        const sm = (old / wl - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        inv[i] = (1 - sm) * (inv[i] / rs.factor) + sm * inv[i];
      }
    }
  } else if (rs) throw new Error('reference: rope_scaling');
  const rope = (v: Float64Array, pos: number) => {
    // rotate_half: q·cos + [−q2, q1]·sin with cos/sin repeated over both halves.
    const out = new Float64Array(hd);
    for (let i = 0; i < hd / 2; i++) {
      const a = pos * inv[i];
      out[i] = v[i] * Math.cos(a) - v[i + hd / 2] * Math.sin(a);
      out[i + hd / 2] = v[i + hd / 2] * Math.cos(a) + v[i] * Math.sin(a);
    }
    return out;
  };

  const E = W('model.embed_tokens.weight');
  const V = raw.get('model.embed_tokens.weight')!.shape[0];
  let xs: Float64Array[] = tokens.map((t) => E.slice(t * H, (t + 1) * H));
  const T = tokens.length;
  for (let l = 0; l < L; l++) {
    const p = (s: string) => `model.layers.${l}.${s}`;
    const opt = (s: string) => (raw.has(p(s)) ? W(p(s)) : undefined);
    const [wq, wk, wv, wo] = ['q', 'k', 'v', 'o'].map((m) => W(p(`self_attn.${m}_proj.weight`)));
    const [bq, bk, bv] = ['q', 'k', 'v'].map((m) => opt(`self_attn.${m}_proj.bias`));
    const ln1 = W(p('input_layernorm.weight'));
    const ln2 = W(p('post_attention_layernorm.weight'));
    const [wg, wu, wd] = ['gate', 'up', 'down'].map((m) => W(p(`mlp.${m}_proj.weight`)));
    const q: Float64Array[][] = [];
    const k: Float64Array[][] = [];
    const v: Float64Array[][] = [];
    for (let t = 0; t < T; t++) {
      const n = rmsNorm(xs[t], ln1, eps);
      const qa = linear(wq, n, nh * hd, bq);
      const ka = linear(wk, n, nkv * hd, bk);
      const va = linear(wv, n, nkv * hd, bv);
      q.push(Array.from({ length: nh }, (_, h) => rope(qa.slice(h * hd, (h + 1) * hd), t)));
      k.push(Array.from({ length: nkv }, (_, h) => rope(ka.slice(h * hd, (h + 1) * hd), t)));
      v.push(Array.from({ length: nkv }, (_, h) => va.slice(h * hd, (h + 1) * hd)));
    }
    const next: Float64Array[] = [];
    for (let t = 0; t < T; t++) {
      const ctx = new Float64Array(nh * hd);
      for (let h = 0; h < nh; h++) {
        const g = Math.floor(h / (nh / nkv));
        const lo = window === null ? 0 : Math.max(0, t - window + 1);
        const scores: number[] = [];
        for (let j = lo; j <= t; j++) {
          let s = 0;
          for (let d = 0; d < hd; d++) s += q[t][h][d] * k[j][g][d];
          scores.push(s / Math.sqrt(hd));
        }
        const m = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - m));
        const z = e.reduce((a, b) => a + b, 0);
        for (let j = lo; j <= t; j++) for (let d = 0; d < hd; d++) ctx[h * hd + d] += (e[j - lo] / z) * v[j][g][d];
      }
      const h1 = linear(wo, ctx, H).map((o, i) => o + xs[t][i]);
      const n2 = rmsNorm(h1, ln2, eps);
      const gate = linear(wg, n2, I);
      const up = linear(wu, n2, I);
      const act = gate.map((g, i) => (g / (1 + Math.exp(-g))) * up[i]);
      next.push(linear(wd, act, H).map((o, i) => o + h1[i]));
    }
    xs = next;
  }
  const norm = W('model.norm.weight');
  const head = raw.has('lm_head.weight') && c.tie_word_embeddings !== true ? W('lm_head.weight') : E;
  return xs.map((x) => linear(head, rmsNorm(x, norm, eps), V));
}

export function logSoftmax(z: ArrayLike<number>, rows = z.length): Float64Array {
  let m = -Infinity;
  for (let i = 0; i < rows; i++) m = Math.max(m, z[i]);
  let s = 0;
  for (let i = 0; i < rows; i++) s += Math.exp(z[i] - m);
  const lse = m + Math.log(s);
  const out = new Float64Array(rows);
  for (let i = 0; i < rows; i++) out[i] = z[i] - lse;
  return out;
}

export function argmax(z: ArrayLike<number>, rows = z.length): number {
  let best = 0;
  for (let i = 1; i < rows; i++) if (z[i] > z[best]) best = i;
  return best;
}
