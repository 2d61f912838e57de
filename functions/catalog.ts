// Every function of the app. Importing this registers them with the Functions host (each module
// calls ./app.ts, which calls app.http, app.eventGrid and df.app.*); the tables below are read from
// those same registrations, and `paramdelta serve` runs them in-process.
import type { EventGridHandler, HttpHandler } from '@azure/functions';
import type * as df from 'durable-functions';
import './triggers/startDelta.js';
import './triggers/startModel.js';
import './triggers/getRun.js';
import './triggers/listDeltas.js';
import './triggers/getDeltaAnalysis.js';
import './triggers/listRuns.js';
import './triggers/listModels.js';
import './triggers/dashboard.js';
import './triggers/baseModelUploaded.js';
import './triggers/publishRun.js';
import './orchestrators/computeDelta.js';
import './orchestrators/applyDeltas.js';
import './orchestrators/repostBase.js';
import './activities/planDelta.js';
import './activities/computeDeltaShard.js';
import './activities/finalizeDelta.js';
import './activities/planModel.js';
import './activities/applyDeltaShard.js';
import './activities/finalizeModel.js';
import './activities/findCompatibleDeltas.js';
import './activities/evaluateModel.js';
import { registrations } from './app.js';

export interface HttpRoute {
  name: string;
  /** The route under the host's prefix (`api`), as registered (the function name when none is given). */
  route: string;
  /** Upper case; the @azure/functions defaults (GET and POST) when none are given. */
  methods: string[];
  authLevel: 'anonymous' | 'function' | 'admin';
  handler: HttpHandler;
}

/** HTTP routes, with the defaults the Functions host applies to options left out. */
export const httpRoutes: readonly HttpRoute[] = [...registrations.http].map(([name, o]) => ({
  name,
  route: o.route ?? name,
  methods: (o.methods ?? ['GET', 'POST']).map((m) => m.toUpperCase()),
  authLevel: o.authLevel ?? 'anonymous',
  handler: o.handler,
}));

export const eventGridTriggers: Readonly<Record<string, EventGridHandler>> = Object.fromEntries(
  [...registrations.eventGrid].map(([name, o]) => [name, o.handler]),
);

export const orchestrators: Readonly<Record<string, df.OrchestrationHandler>> = Object.fromEntries(registrations.orchestrations);

export const activities: Readonly<Record<string, df.ActivityHandler>> = Object.fromEntries(
  [...registrations.activities].map(([name, o]) => [name, o.handler]),
);
