// Probe sets: the token sequences a model is evaluated on, from a token file, from text (plain or
// chat messages, tokenized with the model's own tokenizer and chat template), or built in.
import { createHash } from 'node:crypto';
import { Tokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import type { Store } from '../storage/types.js';
import { InputError } from '../errors.js';

export interface ChatMessage {
  role: string;
  content: string;
}

/** One document of a text input: plain text, or a conversation to render with the chat template. */
export type ProbeDocument = { text: string } | { messages: ChatMessage[] };

export type ProbeSource = 'tokens' | 'text' | 'builtin-chat' | 'builtin-text' | 'builtin-tokens';

export interface ProbeSet {
  source: ProbeSource;
  /** Token ids, one array per sequence, in input order. */
  sequences: number[][];
  /** sha256 of the sequences as JSON (`[[1,2,…],…]`): what was scored, whatever it was made from. */
  sha256: string;
}

export function probeSet(source: ProbeSource, sequences: number[][]): ProbeSet {
  return { source, sequences, sha256: createHash('sha256').update(JSON.stringify(sequences)).digest('hex') };
}

/** A token file: a JSON array of arrays of non-negative integer token ids. */
export function parseTokenFile(text: string, where: string): number[][] {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new InputError(`${where}: not valid JSON (${(e as Error).message}); expected an array of arrays of token ids`);
  }
  if (!Array.isArray(v)) throw new InputError(`${where}: expected a JSON array of arrays of token ids`);
  if (v.length === 0) throw new InputError(`${where}: holds no sequences`);
  return v.map((seq, i) => {
    if (!Array.isArray(seq)) throw new InputError(`${where}: sequence ${i} is not an array of token ids`);
    if (seq.length === 0) throw new InputError(`${where}: sequence ${i} is empty`);
    seq.forEach((id, t) => {
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
        throw new InputError(`${where}: sequence ${i}, position ${t}: ${JSON.stringify(id)} is not a token id (a non-negative integer)`);
      }
    });
    return seq as number[];
  });
}

function isMessage(m: unknown): m is ChatMessage {
  return typeof m === 'object' && m !== null && typeof (m as ChatMessage).role === 'string' && typeof (m as ChatMessage).content === 'string';
}

/**
 * A text input. JSON Lines when its first non-empty line is a JSON object: one document per line,
 * `{"text": "..."}` or `{"messages": [{"role": "user", "content": "..."}, ...]}`. Otherwise plain
 * UTF-8 text, one document per block of lines, blocks separated by blank lines.
 */
export function parseTextInput(text: string, where: string): ProbeDocument[] {
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  const first = lines.find((l) => l.trim() !== '');
  if (first === undefined) throw new InputError(`${where}: holds no text`);
  let jsonl = false;
  try {
    const v = JSON.parse(first);
    jsonl = typeof v === 'object' && v !== null && !Array.isArray(v);
  } catch {
    jsonl = false;
  }
  if (!jsonl) {
    const docs = text
      .replace(/^\uFEFF/, '')
      .split(/\r?\n[ \t]*\r?\n(?:[ \t]*\r?\n)*/)
      .map((d) => d.trim())
      .filter((d) => d !== '');
    return docs.map((d) => ({ text: d }));
  }
  const docs: ProbeDocument[] = [];
  lines.forEach((line, i) => {
    if (line.trim() === '') return;
    const at = `${where}: line ${i + 1}`;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      throw new InputError(`${at}: not valid JSON (${(e as Error).message})`);
    }
    const o = v as Record<string, unknown>;
    if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new InputError(`${at}: expected a JSON object with "text" or "messages"`);
    if (Array.isArray(o.messages)) {
      if (o.messages.length === 0 || !o.messages.every(isMessage)) {
        throw new InputError(`${at}: "messages" must be a non-empty array of {"role": string, "content": string}`);
      }
      docs.push({ messages: o.messages as ChatMessage[] });
    } else if (typeof o.text === 'string') docs.push({ text: o.text });
    else throw new InputError(`${at}: expected a JSON object with "text" (a string) or "messages" (an array)`);
  });
  return docs;
}

/** A model's tokenizer.json, tokenizer_config.json and chat template, as transformers finds them. */
export class ModelTokenizer {
  private constructor(
    readonly where: string,
    private readonly tokenizer: Tokenizer,
    private readonly config: Record<string, unknown>,
    readonly chatTemplate: string | null,
  ) {}

  static async open(store: Store): Promise<ModelTokenizer> {
    const files = new Set(await store.list());
    if (!files.has('tokenizer.json')) throw new InputError(`${store.ref}: no tokenizer.json; text input needs the model's tokenizer (or give --tokens)`);
    const json = async (file: string): Promise<Record<string, unknown>> => {
      try {
        const v = JSON.parse(await store.readText(file));
        if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('expected a JSON object');
        return v as Record<string, unknown>;
      } catch (e) {
        throw new InputError(`${store.ref}/${file}: ${(e as Error).message}`);
      }
    };
    const tj = await json('tokenizer.json');
    const config = files.has('tokenizer_config.json') ? await json('tokenizer_config.json') : {};
    let tokenizer: Tokenizer;
    try {
      tokenizer = new Tokenizer(tj, config);
    } catch (e) {
      throw new InputError(`${store.ref}/tokenizer.json: cannot build the tokenizer (${(e as Error).message})`);
    }
    // transformers prefers chat_template.jinja to the template inside tokenizer_config.json.
    let template: string | null = files.has('chat_template.jinja') ? await store.readText('chat_template.jinja') : null;
    const ct = config.chat_template;
    if (template === null && typeof ct === 'string') template = ct;
    if (template === null && Array.isArray(ct)) {
      const named = ct.find((t) => t && (t as { name?: string }).name === 'default') ?? ct[0];
      if (named && typeof (named as { template?: unknown }).template === 'string') template = (named as { template: string }).template;
    }
    return new ModelTokenizer(store.ref, tokenizer, config, template);
  }

  /** A special token's text from tokenizer_config.json (a string, or an AddedToken object). */
  private special(name: string): string {
    const v = this.config[name];
    if (typeof v === 'string') return v;
    if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
    return '';
  }

  /** Renders a conversation with the chat template, as apply_chat_template(tokenize=False) does. */
  renderChat(messages: ChatMessage[]): string {
    if (this.chatTemplate === null) throw new InputError(`${this.where}: no chat template (tokenizer_config.json "chat_template" or chat_template.jinja) to render chat messages with`);
    try {
      return new Template(this.chatTemplate).render({
        messages,
        add_generation_prompt: false,
        bos_token: this.special('bos_token'),
        eos_token: this.special('eos_token'),
        unk_token: this.special('unk_token'),
        pad_token: this.special('pad_token'),
      });
    } catch (e) {
      throw new InputError(`${this.where}: the chat template failed to render (${(e as Error).message})`);
    }
  }

  /**
   * Token ids of a document. Plain text gets the tokenizer's own special tokens (its post-processor's
   * BOS, say); a rendered conversation does not, since its template already wrote them.
   */
  encodeDocument(doc: ProbeDocument): number[] {
    if ('messages' in doc) return this.tokenizer.encode(this.renderChat(doc.messages), { add_special_tokens: false }).ids;
    return this.tokenizer.encode(doc.text).ids;
  }
}

/**
 * Tokenizes documents into sequences; a document longer than `maxTokens` is cut into consecutive
 * windows of at most that many tokens (a last window of one token, with nothing to score, is dropped).
 */
export function tokenizeDocuments(tok: ModelTokenizer, docs: ProbeDocument[], maxTokens: number, where: string): number[][] {
  const out: number[][] = [];
  docs.forEach((doc, i) => {
    const ids = tok.encodeDocument(doc);
    if (ids.length < 2) throw new InputError(`${where}: document ${i} tokenizes to ${ids.length} token${ids.length === 1 ? '' : 's'}; at least 2 are needed`);
    for (let s = 0; s < ids.length; s += maxTokens) {
      const w = ids.slice(s, s + maxTokens);
      if (w.length >= 2) out.push(w);
    }
  });
  return out;
}

/** Longest text window: the model's max_position_embeddings, at most 2048 (attention memory grows with its square). */
export function textWindow(maxPositions: number | null): number {
  return Math.min(maxPositions ?? 2048, 2048);
}

/** Sequences from a text input, through the model's tokenizer (and chat template, for messages). */
export async function probesFromText(modelStore: Store, text: string, where: string, maxPositions: number | null): Promise<ProbeSet> {
  const docs = parseTextInput(text, where);
  const tok = await ModelTokenizer.open(modelStore);
  return probeSet('text', tokenizeDocuments(tok, docs, textWindow(maxPositions), where));
}

/**
 * The built-in probe set: short conversations across everyday tasks, rendered with the model's
 * chat template. Without a template they are plain text ("role: content" lines); without a
 * tokenizer, fixed pseudo-random token sequences, which still compare models sharing a vocabulary.
 */
export const BUILTIN_CONVERSATIONS: ChatMessage[][] = [
  [
    { role: 'user', content: 'What is the capital of France?' },
    { role: 'assistant', content: 'The capital of France is Paris.' },
  ],
  [
    { role: 'user', content: 'Write a haiku about autumn leaves.' },
    { role: 'assistant', content: 'Red leaves drift and fall,\nwhispering to the cold ground:\nsummer says goodbye.' },
  ],
  [
    { role: 'user', content: 'What is 17 multiplied by 23?' },
    { role: 'assistant', content: '17 × 23 = 391. Multiply 17 by 20 to get 340, then 17 by 3 to get 51, and add them: 340 + 51 = 391.' },
  ],
  [
    { role: 'user', content: 'Write a Python function that returns the factorial of n.' },
    {
      role: 'assistant',
      content: 'def factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result',
    },
  ],
  [
    { role: 'user', content: 'Summarize in one sentence: The city council met on Tuesday and voted to extend the library\'s opening hours on weekends, starting next month.' },
    { role: 'assistant', content: 'The city council voted on Tuesday to keep the library open longer on weekends from next month.' },
  ],
  [
    { role: 'user', content: 'Translate "Good morning, how are you?" into Spanish.' },
    { role: 'assistant', content: '"Buenos días, ¿cómo estás?"' },
  ],
  [
    { role: 'user', content: 'Why is the sky blue?' },
    {
      role: 'assistant',
      content:
        'Sunlight is scattered by the molecules in the air, and shorter wavelengths are scattered much more than longer ones. Blue light is scattered across the whole sky, so that is the color we see.',
    },
  ],
  [
    { role: 'user', content: 'Give me three tips for sleeping better.' },
    {
      role: 'assistant',
      content: '1. Go to bed and wake up at the same time every day.\n2. Keep your bedroom dark, quiet and cool.\n3. Avoid screens and caffeine in the hour before bed.',
    },
  ],
  [
    { role: 'user', content: 'Is 221 a prime number?' },
    { role: 'assistant', content: 'No. 221 = 13 × 17, so it is not prime.' },
  ],
  [
    { role: 'user', content: 'Explain what a hash table is to a beginner.' },
    {
      role: 'assistant',
      content:
        'A hash table stores values under keys. It runs each key through a hash function that turns it into a position in an array, so it can find the value for a key almost immediately instead of searching through everything.',
    },
  ],
  [
    { role: 'user', content: 'Write a short, polite email declining a meeting invitation.' },
    {
      role: 'assistant',
      content:
        'Hi Sam,\n\nThank you for the invitation. Unfortunately I cannot attend the meeting on Thursday because of a prior commitment. Could you share the notes afterwards?\n\nBest regards,\nAlex',
    },
  ],
  [
    { role: 'user', content: 'If a train travels 120 km in 1.5 hours, what is its average speed?' },
    { role: 'assistant', content: 'Its average speed is 120 km ÷ 1.5 h = 80 km/h.' },
  ],
];

/** Deterministic stand-in token sequences for a model without a tokenizer: 16 sequences of 64 ids. */
function builtinTokenSequences(vocab: number): number[][] {
  let s = 0x2545f491;
  const next = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
  return Array.from({ length: 16 }, () => Array.from({ length: 64 }, () => next() % vocab));
}

/** The built-in probe set for a model (in the pipeline: the posted model, which carries the delta's chat files). */
export async function builtinProbes(modelStore: Store, vocab: number, maxPositions: number | null): Promise<ProbeSet> {
  if (!(await modelStore.exists('tokenizer.json'))) return probeSet('builtin-tokens', builtinTokenSequences(vocab));
  const tok = await ModelTokenizer.open(modelStore);
  const window = textWindow(maxPositions);
  if (tok.chatTemplate !== null) {
    return probeSet('builtin-chat', tokenizeDocuments(tok, BUILTIN_CONVERSATIONS.map((messages) => ({ messages })), window, 'built-in probes'));
  }
  const docs = BUILTIN_CONVERSATIONS.map((c) => ({ text: c.map((m) => `${m.role}: ${m.content}`).join('\n') }));
  return probeSet('builtin-text', tokenizeDocuments(tok, docs, window, 'built-in probes'));
}
