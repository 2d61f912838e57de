// Token contents by id from a Hugging Face tokenizer.json. Read by hand: only the id → content table is
// needed, and the tokenizers library would build (and validate) a whole tokenizer to give it.
import { InputError } from '../errors.js';
import type { Store } from '../storage/types.js';

export const TOKENIZER_FILE = 'tokenizer.json';

/** An added token's entry, as tokenizer.json's `added_tokens` holds it. */
export interface AddedToken {
  id: number;
  content: string;
  single_word?: boolean;
  lstrip?: boolean;
  rstrip?: boolean;
  normalized?: boolean;
  special?: boolean;
}

export interface TokenTable {
  /** Content of each id; null where no token has that id (padding rows). */
  tokens: (string | null)[];
  /** added_tokens entries by id. */
  added: Map<number, AddedToken>;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Parses tokenizer.json text; `where` names the file in errors. */
export function parseTokenTable(text: string, where: string): TokenTable {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new InputError(`${where}: not valid JSON (${(e as Error).message})`);
  }
  if (!isObject(json)) throw new InputError(`${where}: must be a JSON object`);
  const byId = new Map<number, string>();
  const set = (id: unknown, content: unknown, field: string) => {
    if (!Number.isSafeInteger(id) || (id as number) < 0 || typeof content !== 'string') {
      throw new InputError(`${where}: field "${field}" must map token strings to non-negative integer ids`);
    }
    byId.set(id as number, content);
  };
  const model = json.model;
  if (model !== undefined && model !== null) {
    if (!isObject(model)) throw new InputError(`${where}: field "model" must be an object`);
    const vocab = model.vocab;
    if (Array.isArray(vocab)) vocab.forEach((e, i) => set(i, Array.isArray(e) ? e[0] : undefined, 'model.vocab')); // Unigram: [token, score] by id
    else if (isObject(vocab)) for (const [tok, id] of Object.entries(vocab)) set(id, tok, 'model.vocab');
    else if (vocab !== undefined) throw new InputError(`${where}: field "model.vocab" must be an object or an array`);
  }
  const added = new Map<number, AddedToken>();
  if (json.added_tokens !== undefined) {
    if (!Array.isArray(json.added_tokens)) throw new InputError(`${where}: field "added_tokens" must be an array`);
    for (const a of json.added_tokens) {
      if (!isObject(a)) throw new InputError(`${where}: field "added_tokens" must hold objects`);
      set(a.id, a.content, 'added_tokens');
      added.set(a.id as number, a as unknown as AddedToken);
    }
  }
  const size = byId.size ? Math.max(...byId.keys()) + 1 : 0;
  const tokens: (string | null)[] = Array.from({ length: size }, (_, i) => byId.get(i) ?? null);
  return { tokens, added };
}

/** A folder's tokenizer.json token table, or null when it has none. */
export async function readTokenTable(store: Store, file = TOKENIZER_FILE): Promise<TokenTable | null> {
  if (!(await store.exists(file))) return null;
  return parseTokenTable(await store.readText(file), `${store.ref}/${file}`);
}

/** tokenizer.json text with `tokens` added to added_tokens (ids beyond the table). */
export function withAddedTokens(text: string, tokens: readonly AddedToken[]): string {
  const json = JSON.parse(text) as Record<string, unknown>;
  const added = Array.isArray(json.added_tokens) ? [...json.added_tokens] : [];
  added.push(...tokens);
  json.added_tokens = added;
  return JSON.stringify(json, null, 2);
}
