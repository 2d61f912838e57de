// Delta analysis: the engine (analyzeDelta), the report's schema, and the tensor-name grouping.
export { analyzeDelta, type AnalyzeOptions } from './analyze.js';
export { kindOf, layerOf } from './kinds.js';
export * from './report.js';
export { writeAnalysis } from './write.js';
