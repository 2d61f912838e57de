import { outputTags } from '../ops/outputs.js';
import type { ExecEnv } from '../ops/env.js';
import { analyzeDelta, type AnalyzeOptions } from './analyze.js';
import { ANALYSIS_FILE, type DeltaAnalysis } from './report.js';

/** Analyzes the delta at `ref` and writes the report beside it as analysis.json, tagged as part of the delta. */
export async function writeAnalysis(env: ExecEnv, ref: string, opts: AnalyzeOptions = {}): Promise<DeltaAnalysis> {
  const analysis = await analyzeDelta(env, ref, opts);
  await env.resolve(ref).writeFile(ANALYSIS_FILE, JSON.stringify(analysis, null, 2) + '\n', { metadata: outputTags('delta') });
  return analysis;
}
