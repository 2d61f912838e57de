// The analysis report: figures about one delta (and its similarity to others), as `paramdelta analyze
// --json` prints them, as the pipeline stores them beside each delta (`analysis.json`), and as the
// dashboard and `analyze --html` draw them. One schema for all four, so they cannot drift apart.
import { z } from 'zod';

export const ANALYSIS_FILE = 'analysis.json';
export const ANALYSIS_FORMAT = 'paramdelta.analysis';

/** What a tensor does, from its name: the groups the charts show. */
export const TENSOR_KINDS = ['attention', 'mlp', 'norm', 'embedding', 'head', 'other'] as const;
export type TensorKind = (typeof TENSOR_KINDS)[number];

/** ‖Δ‖ and ‖W‖ (W: the base weights the delta was taken from) over a group, and their ratio. */
const normsSchema = z.object({
  deltaNorm: z.number().nonnegative(),
  weightNorm: z.number().nonnegative(),
  /** ‖Δ‖ / ‖W‖; 0 when ‖W‖ is 0. */
  relative: z.number().nonnegative(),
});
export type Norms = z.infer<typeof normsSchema>;

const tensorSchema = normsSchema.extend({
  name: z.string(),
  /** Decoder layer index, or null for tensors outside the layers (embeddings, final norm, head). */
  layer: z.number().int().nonnegative().nullable(),
  kind: z.enum(TENSOR_KINDS),
  dtype: z.string(),
  modelDtype: z.string(),
  elements: z.number().int().nonnegative(),
  /** Elements the delta's dtype could not hold exactly (lossy --delta-dtype), and the largest error. */
  rounded: z.number().int().nonnegative(),
  maxError: z.number().nonnegative(),
});
export type TensorAnalysis = z.infer<typeof tensorSchema>;

const layerSchema = normsSchema.extend({
  layer: z.number().int().nonnegative(),
  /** The same figures per kind within the layer (kinds absent from the layer are left out). */
  kinds: z.partialRecord(z.enum(TENSOR_KINDS), normsSchema),
});

const count = z.number().int().nonnegative();

/**
 * Signs of two deltas compared element by element over `elements` elements: `agree` where both are nonzero
 * with the same sign, `disagree` where both are nonzero with opposite signs, `oneZero` where exactly one is
 * zero, `bothZero` where both are (NaN is nonzero and has no sign: it counts in none of agree/disagree).
 * The sign agreement is agree ÷ (agree + disagree): the share of the elements where both are nonzero.
 */
export const signCountsSchema = z.object({ elements: count, agree: count, disagree: count, oneZero: count, bothZero: count });
export type SignCounts = z.infer<typeof signCountsSchema>;

/** agree ÷ (agree + disagree), the sign agreement where both are nonzero; null where no element is nonzero in both. */
export const signAgreement = (s: Pick<SignCounts, 'agree' | 'disagree'>): number | null => (s.agree + s.disagree > 0 ? s.agree / (s.agree + s.disagree) : null);

const similaritySchema = z.object({
  /** The other delta's reference, as given (`--against`) or its registered name in the pipeline. */
  against: z.string(),
  /** Σ Δ₁Δ₂ / (‖Δ₁‖‖Δ₂‖) over the tensors both deltas hold with the same shape; 0 where a norm is 0. */
  cosine: z.number(),
  sharedTensors: z.number().int().nonnegative(),
  layers: z.array(z.object({ layer: z.number().int().nonnegative(), cosine: z.number(), signs: signCountsSchema.optional() })),
  kinds: z.partialRecord(z.enum(TENSOR_KINDS), z.number()),
  /** Optional (added with sign agreement): the stored values' signs over the same shared tensors, in all, by kind and per tensor. */
  signs: signCountsSchema.optional(),
  kindSigns: z.partialRecord(z.enum(TENSOR_KINDS), signCountsSchema).optional(),
  tensors: z.array(z.object({ name: z.string(), cosine: z.number(), signs: signCountsSchema })).optional(),
});
export type Similarity = z.infer<typeof similaritySchema>;

/**
 * What a sparse fusion method (`analyze --method`) does to each delta, over a group of tensors (all deltas
 * hold the same tensors). Per delta i, in the order apply takes them (DELTA, then each --against):
 * `kept` elements its mask keeps (trim or drop), `nonzero` of those with τᵢ ≠ 0, and for sign-electing
 * methods `elected`, those with τᵢ ≠ 0 and sign(τᵢ) = σ, which enter the merge. Per pair of deltas: the
 * signs of the stored deltas (`signs`), and among the elements both keep, of τᵢ and τⱼ (`kept`).
 */
const fusionCountsSchema = z.object({
  elements: count,
  kept: z.array(count),
  nonzero: z.array(count),
  elected: z.array(count).optional(),
  pairs: z.array(z.object({ a: count, b: count, signs: signCountsSchema, kept: signCountsSchema })),
});
export type FusionCounts = z.infer<typeof fusionCountsSchema>;

const fusionSchema = z.object({
  method: z.string(),
  density: z.number(),
  gamma: z.number().optional(),
  lambda: z.number(),
  seed: z.string().optional(),
  normalize: z.boolean().optional(),
  /** The deltas as apply would take them (i = 0, 1, …): their reference and weight wᵢ. */
  deltas: z.array(z.object({ ref: z.string(), scale: z.number() })),
  totals: fusionCountsSchema,
  layers: z.array(fusionCountsSchema.extend({ layer: count, kinds: z.partialRecord(z.enum(TENSOR_KINDS), fusionCountsSchema) })),
  kinds: z.partialRecord(z.enum(TENSOR_KINDS), fusionCountsSchema),
  tensors: z.array(fusionCountsSchema.extend({ name: z.string() })),
});
export type FusionAnalysis = z.infer<typeof fusionSchema>;

export const analysisSchema = z.object({
  format: z.literal(ANALYSIS_FORMAT),
  formatVersion: z.literal(1),
  tool: z.object({ name: z.literal('paramdelta'), version: z.string() }),
  createdAt: z.string(),
  delta: z.object({
    ref: z.string(),
    layout: z.string(),
    /** The base and post model types and signatures, from delta.json. */
    base: z.object({ modelType: z.string().nullable(), signature: z.string() }),
    post: z.object({ modelType: z.string().nullable(), signature: z.string() }),
    tensors: z.number().int().nonnegative(),
    parameters: z.number().int().nonnegative(),
    /** Every tensor in its plain dtype, and the bytes the delta's shards take as stored. */
    rawBytes: z.number().int().nonnegative(),
    storedBytes: z.number().int().nonnegative(),
    /** Elements per delta dtype. */
    dtypes: z.record(z.string(), z.number().int().nonnegative()),
    /**
     * Optional (added by analyze): tensors per source of ‖W‖: streamed from the base (`base`), recorded in
     * delta.json (`recorded`), derived as ‖Δ‖/relNorm from an older delta.json (`relNorm`), or not knowable
     * without the base (`unknown`: a zero delta in an older delta.json; counted as 0).
     */
    weightNormSources: z.partialRecord(z.enum(['base', 'recorded', 'relNorm', 'unknown']), z.number().int().nonnegative()).optional(),
  }),
  totals: normsSchema,
  layers: z.array(layerSchema),
  kinds: z.partialRecord(z.enum(TENSOR_KINDS), normsSchema.extend({ tensors: z.number().int().nonnegative() })),
  tensors: z.array(tensorSchema),
  /** True when any tensor was rounded (a lossy delta dtype): the charts then show rounding counts. */
  lossy: z.boolean(),
  similarity: z.array(similaritySchema),
  /** Optional (analyze --method): each delta's kept fraction and the signs among the kept elements. */
  fusion: fusionSchema.optional(),
});
export type DeltaAnalysis = z.infer<typeof analysisSchema>;
