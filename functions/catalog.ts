// Every function of the app, by kind. Importing this registers them with the Functions host;
// `paramdelta serve` reads the same table to run the same handlers in-process.
import { startDelta } from './triggers/startDelta.js';
import { startModel } from './triggers/startModel.js';
import { getRun } from './triggers/getRun.js';
import { listDeltas } from './triggers/listDeltas.js';
import { baseModelUploaded } from './triggers/baseModelUploaded.js';
import { computeDeltaOrchestrator } from './orchestrators/computeDelta.js';
import { applyDeltasOrchestrator } from './orchestrators/applyDeltas.js';
import { repostBaseOrchestrator } from './orchestrators/repostBase.js';
import { planDelta } from './activities/planDelta.js';
import { computeDeltaShard } from './activities/computeDeltaShard.js';
import { finalizeDelta } from './activities/finalizeDelta.js';
import { planModel } from './activities/planModel.js';
import { applyDeltaShard } from './activities/applyDeltaShard.js';
import { finalizeModel } from './activities/finalizeModel.js';
import { findCompatibleDeltas } from './activities/findCompatibleDeltas.js';

/** HTTP routes under /api, as registered with app.http. */
export const httpRoutes = [
  { name: 'startDelta', method: 'POST', route: 'deltas', handler: startDelta },
  { name: 'listDeltas', method: 'GET', route: 'deltas', handler: listDeltas },
  { name: 'startModel', method: 'POST', route: 'models', handler: startModel },
  { name: 'getRun', method: 'GET', route: 'runs/{id}', handler: getRun },
] as const;

export const eventGridTriggers = { baseModelUploaded } as const;

export const orchestrators = {
  computeDelta: computeDeltaOrchestrator,
  applyDeltas: applyDeltasOrchestrator,
  repostBase: repostBaseOrchestrator,
} as const;

export const activities = {
  planDelta,
  computeDeltaShard,
  finalizeDelta,
  planModel,
  applyDeltaShard,
  finalizeModel,
  findCompatibleDeltas,
} as const;
