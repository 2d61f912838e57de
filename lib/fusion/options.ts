import { InputError } from '../errors.js';

/** The ways `apply` combines several deltas; `linear` is new base + Σ wᵢ·Δᵢ, the plain path. */
export const FUSION_METHODS = ['linear', 'ties', 'dare-linear', 'dare-ties', 'breadcrumbs', 'breadcrumbs-ties'] as const;
export type FusionMethod = (typeof FUSION_METHODS)[number];

export const DEFAULT_GAMMA = 0.01;
const U64_MAX = (1n << 64n) - 1n;

/** What a request or command line may say about fusion, before checking. */
export interface FusionRequest {
  method?: string;
  density?: number;
  gamma?: number;
  lambda?: number;
  /** A u64: a non-negative integer, or its decimal string. */
  seed?: number | string | bigint;
  normalize?: boolean;
}

/** A checked sparse method and every option it uses (defaults filled in); recorded in the plan and paramdelta.json. */
export interface FusionSpec {
  method: Exclude<FusionMethod, 'linear'>;
  density: number;
  /** Breadcrumbs: the fraction of largest magnitudes dropped. */
  gamma?: number;
  lambda: number;
  /** DARE: the seed as a decimal string (u64 does not fit a JSON number). */
  seed?: string;
  /** Sign-electing methods only (normalize has no effect on the linear ones). */
  normalize?: boolean;
}

export const usesRanks = (m: FusionMethod): boolean => m === 'ties' || m.startsWith('breadcrumbs');
export const usesDare = (m: FusionMethod): boolean => m.startsWith('dare');
export const electsSign = (m: FusionMethod): boolean => m.endsWith('ties');

/** Parses a u64 given as a number or a decimal string; null when it is not one. */
export function parseSeed(v: number | string | bigint): bigint | null {
  if (typeof v === 'bigint') return v >= 0n && v <= U64_MAX ? v : null;
  if (typeof v === 'number') return Number.isSafeInteger(v) && v >= 0 ? BigInt(v) : null;
  if (typeof v !== 'string' || !/^[0-9]{1,20}$/.test(v.trim())) return null;
  const s = BigInt(v.trim());
  return s <= U64_MAX ? s : null;
}

/**
 * Checks fusion options; null for the plain linear method. Errors start with the option's name as
 * `label` spells it (`--density` on the command line, `density` in the API), so callers can point at it.
 */
export function checkFusion(r: FusionRequest, label: (field: keyof FusionRequest) => string = (f) => f): FusionSpec | null {
  const method = r.method ?? 'linear';
  if (!(FUSION_METHODS as readonly string[]).includes(method)) {
    throw new InputError(`${label('method')}: unknown method "${method}"; one of ${FUSION_METHODS.join(', ')}`);
  }
  const m = method as FusionMethod;
  const fraction = (field: 'density' | 'gamma', v: unknown, lowOpen: boolean): number => {
    if (typeof v !== 'number' || !Number.isFinite(v) || (lowOpen ? v <= 0 : v < 0) || v > 1) {
      throw new InputError(`${label(field)}: ${String(v)} is not a number in ${lowOpen ? '(0, 1]' : '[0, 1]'}`);
    }
    return v;
  };
  const notFor = (field: keyof FusionRequest) => {
    if (r[field] !== undefined) throw new InputError(`${label(field)}: has no meaning for method ${m}`);
  };
  if (m === 'linear') {
    // Today's exact path: new base + Σ wᵢ·Δᵢ. Normalize has no effect on a linear method.
    (['density', 'gamma', 'lambda', 'seed'] as const).forEach(notFor);
    return null;
  }
  if (r.density === undefined) throw new InputError(`${label('density')}: required for method ${m}`);
  const spec: FusionSpec = { method: m, density: fraction('density', r.density, true), lambda: 1 };
  if (r.lambda !== undefined) {
    if (typeof r.lambda !== 'number' || !Number.isFinite(r.lambda)) throw new InputError(`${label('lambda')}: ${String(r.lambda)} is not a finite number`);
    spec.lambda = r.lambda;
  }
  if (m.startsWith('breadcrumbs')) spec.gamma = r.gamma === undefined ? DEFAULT_GAMMA : fraction('gamma', r.gamma, false);
  else notFor('gamma');
  if (usesDare(m)) {
    const seed = r.seed === undefined ? 0n : parseSeed(r.seed);
    if (seed === null) throw new InputError(`${label('seed')}: ${String(r.seed)} is not a u64 (an integer 0 … 2^64−1, or its decimal string)`);
    spec.seed = seed.toString();
  } else notFor('seed');
  if (r.normalize !== undefined && typeof r.normalize !== 'boolean') throw new InputError(`${label('normalize')}: must be true or false`);
  if (electsSign(m)) spec.normalize = r.normalize ?? true;
  return spec;
}

/** k(f) = floor(f·n + 0.5), in float64. */
export function rankCount(f: number, n: number): number {
  return Math.floor(f * n + 0.5);
}

/** "ties (density 0.2, λ 1, normalize)" and the like. */
export function describeFusion(f: FusionSpec): string {
  const opts = [
    `density ${f.density}`,
    ...(f.gamma !== undefined ? [`gamma ${f.gamma}`] : []),
    `λ ${f.lambda}`,
    ...(f.seed !== undefined ? [`seed ${f.seed}`] : []),
    ...(f.normalize !== undefined ? [f.normalize ? 'normalize' : 'no normalize'] : []),
  ];
  return `${f.method} (${opts.join(', ')})`;
}
