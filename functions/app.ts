// Every function of the app registers through here: each call registers with the Functions host
// (app.http, app.eventGrid, df.app.*), exactly as written, and keeps the options it passed, which
// catalog.ts and `paramdelta serve` read. So a route, method or authLevel cannot differ between
// the real host and the local one.
import { app, type EventGridFunctionOptions, type HttpFunctionOptions } from '@azure/functions';
import * as df from 'durable-functions';

export interface Registrations {
  http: Map<string, HttpFunctionOptions>;
  eventGrid: Map<string, EventGridFunctionOptions>;
  orchestrations: Map<string, df.OrchestrationHandler>;
  activities: Map<string, df.ActivityOptions>;
}

export const registrations: Registrations = { http: new Map(), eventGrid: new Map(), orchestrations: new Map(), activities: new Map() };

function keep<T>(kind: keyof Registrations, map: Map<string, T>, name: string, value: T): void {
  // Function names are unique across an app, whatever their kind.
  for (const [k, m] of Object.entries(registrations) as [string, Map<string, unknown>][]) {
    if (m.has(name)) throw new Error(`function "${name}" is registered twice (as ${k} and as ${kind})`);
  }
  map.set(name, value);
}

export function http(name: string, options: HttpFunctionOptions): void {
  keep('http', registrations.http, name, options);
  app.http(name, options);
}

export function eventGrid(name: string, options: EventGridFunctionOptions): void {
  keep('eventGrid', registrations.eventGrid, name, options);
  app.eventGrid(name, options);
}

export function orchestration(name: string, handler: df.OrchestrationHandler): void {
  keep('orchestrations', registrations.orchestrations, name, handler);
  df.app.orchestration(name, handler);
}

export function activity(name: string, options: df.ActivityOptions): void {
  keep('activities', registrations.activities, name, options);
  df.app.activity(name, options);
}
