// onnxruntime sessions for evaluation: one per graph shape, reused for every layer; the execution
// provider (CPU here, CUDA on a GPU worker) chosen by option or PARAMDELTA_EVAL_PROVIDER.
import os from 'node:os';
import type * as Ort from 'onnxruntime-node';
import { InputError } from '../errors.js';

export type EvalProvider = 'cpu' | 'cuda';
export const EVAL_PROVIDERS: readonly EvalProvider[] = ['cpu', 'cuda'];

export interface RuntimeOptions {
  /** Default: PARAMDELTA_EVAL_PROVIDER, else cpu. */
  provider?: EvalProvider;
  /** Intra-op threads; default: PARAMDELTA_EVAL_THREADS, else every core this process may use. */
  threads?: number;
}

export function providerFrom(env: NodeJS.ProcessEnv = process.env): EvalProvider {
  const p = (env.PARAMDELTA_EVAL_PROVIDER ?? 'cpu').toLowerCase();
  if (!(EVAL_PROVIDERS as readonly string[]).includes(p)) {
    throw new InputError(`PARAMDELTA_EVAL_PROVIDER must be one of ${EVAL_PROVIDERS.join(', ')}, not ${JSON.stringify(p)}`);
  }
  return p as EvalProvider;
}

function threadsFrom(env: NodeJS.ProcessEnv = process.env): number {
  const t = Number(env.PARAMDELTA_EVAL_THREADS);
  return Number.isInteger(t) && t > 0 ? t : os.availableParallelism();
}

let ortModule: Promise<typeof Ort> | null = null;
/** Loaded on first use: the native library is large, and most commands never evaluate. */
export function loadOrt(): Promise<typeof Ort> {
  ortModule ??= import('onnxruntime-node');
  return ortModule;
}

export type Feeds = Record<string, Ort.Tensor>;

export class EvalRuntime {
  readonly provider: EvalProvider;
  readonly threads: number;
  private readonly sessions = new Map<string, Promise<Ort.InferenceSession>>();

  private constructor(readonly ort: typeof Ort, opts: RuntimeOptions) {
    this.provider = opts.provider ?? providerFrom();
    this.threads = opts.threads ?? threadsFrom();
  }

  static async create(opts: RuntimeOptions = {}): Promise<EvalRuntime> {
    return new EvalRuntime(await loadOrt(), opts);
  }

  /** The session for a graph, built once per key. */
  session(key: string, build: () => Uint8Array): Promise<Ort.InferenceSession> {
    let s = this.sessions.get(key);
    if (!s) {
      s = this.open(build());
      this.sessions.set(key, s);
    }
    return s;
  }

  private async open(model: Uint8Array): Promise<Ort.InferenceSession> {
    const options: Ort.InferenceSession.SessionOptions = {
      executionProviders: this.provider === 'cuda' ? [{ name: 'cuda', deviceId: 0 }] : [{ name: 'cpu', useArena: true }],
      intraOpNumThreads: this.threads,
      interOpNumThreads: 1,
      executionMode: 'sequential',
      graphOptimizationLevel: 'all',
      // The arena reuses one call's activation buffers for the next; without it glibc keeps the
      // freed ones in a fragmented heap (measured: about 80 MiB more peak RSS). Memory patterns
      // (one planned block per input shape) only added to the peak.
      enableCpuMemArena: true,
      enableMemPattern: false,
    };
    try {
      return await this.ort.InferenceSession.create(model, options);
    } catch (e) {
      if (this.provider === 'cuda') {
        throw new InputError(
          `the CUDA execution provider is unavailable (${(e as Error).message}); install onnxruntime-node with ` +
            `--onnxruntime-node-install=cuda12 on a machine with CUDA 12, or set PARAMDELTA_EVAL_PROVIDER=cpu`,
        );
      }
      throw e;
    }
  }

  tensor(data: Float32Array, dims: number[]): Ort.Tensor {
    return new this.ort.Tensor('float32', data, dims);
  }

  int64(data: BigInt64Array, dims: number[]): Ort.Tensor {
    return new this.ort.Tensor('int64', data, dims);
  }

  async dispose(): Promise<void> {
    const all = [...this.sessions.values()];
    this.sessions.clear();
    for (const s of all) await (await s).release();
  }
}
