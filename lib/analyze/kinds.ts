// What a tensor does and which decoder layer holds it, from its name (Llama, Mistral and Qwen2 naming,
// with the common GPT-2/NeoX spellings as a fallback): the groups the analysis charts show.
import type { TensorKind } from './report.js';

const LAYER = /(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\./;
// Order matters: a norm inside attention (Qwen3's self_attn.q_norm) is a norm.
const RULES: [TensorKind, RegExp][] = [
  ['norm', /(?:^|\.)(?:[a-z0-9_]*norm[a-z0-9_]*|ln_\w+|ln_f|ln\d*)\./],
  ['embedding', /(?:^|\.)(?:embed_tokens|wte|wpe|word_embeddings|embed_in|tok_embeddings)\./],
  ['head', /(?:^|\.)(?:lm_head|embed_out)\.|^output\.weight$/],
  ['attention', /(?:^|\.)(?:self_attn|attention|attn)\./],
  ['mlp', /(?:^|\.)(?:mlp|feed_forward|ffn|block_sparse_moe)\./],
];

/** The decoder layer index in a tensor name, or null outside the layers. */
export function layerOf(name: string): number | null {
  const m = LAYER.exec(name);
  return m ? Number(m[1]) : null;
}

export function kindOf(name: string): TensorKind {
  for (const [kind, re] of RULES) if (re.test(name)) return kind;
  return 'other';
}
