import { keys } from '../cluster/keys.js';
import type { ScaleRecord } from './records.js';
import type { SchedState } from './state.js';
import type { PlanEvent, ServiceSpec } from './types.js';

/**
 * Scaling within the operator's bounds (`scale: { min, max }` in a service spec). Pure: the controller hands in what
 * it read and commits what comes out.
 *
 * The count in force is the operator's `count` unless a ScaleRecord (`sched/scale/<service>`, controller-signed)
 * was made for the same deploy (its deployedAt is the service record's) and still lies within the spec's bounds:
 * a new deploy by the operator, or bounds narrowed past it, puts the operator's count back in force.
 *
 * Who may move it: an instance of the service, through its agent's instance API (the agent signs the request with
 * its host's key under `sched/scalereq/<host>/<alloc>`), and only while that alloc is a live assignment of that
 * service on that very host: a host can speak for the instances it runs and for no others. And an application
 * backplane, for its own services (`asks`). Nobody but the operator can move it outside the bounds.
 */

/** A backplane's wish for one of its services' counts (its `scale` output), checked like an instance's request. */
export interface ScaleAsk {
  readonly service: string;
  readonly count: number;
  /** Who asks, as events show it: "backplane redis". */
  readonly by: string;
  readonly reason?: string;
}

export interface ScalePassInput {
  readonly state: SchedState;
  /** Wall-clock ms: the `at` of the records written. */
  readonly now: number;
  readonly asks?: readonly ScaleAsk[];
}

export interface ScalePassOutput {
  /** Records to write, controller-signed, at keys.scale(record.service). */
  readonly put: readonly ScaleRecord[];
  /** Keys to delete: every request handled or refused, requests that failed their checks, stale scale records. */
  readonly deleteKeys: readonly string[];
  /** What was changed or refused, and why. */
  readonly events: readonly PlanEvent[];
}

/** Whether `record` is the count in force for a service deployed at `deployedAt` with `spec`'s bounds. */
export function scaleInForce(spec: ServiceSpec, deployedAt: string, record: ScaleRecord | undefined): record is ScaleRecord {
  const b = spec.scale;
  return record !== undefined && b !== undefined && record.deployedAt === deployedAt && record.count >= b.min && record.count <= b.max;
}

/** The count in force: the ScaleRecord's when it was made for this deploy and lies within the bounds, else spec.count. */
export function effectiveCount(spec: ServiceSpec, deployedAt: string, record?: ScaleRecord): number {
  return scaleInForce(spec, deployedAt, record) ? record.count : spec.count;
}

/** Why `count` is refused for `spec`, or undefined when it is within the operator's bounds. */
export function outOfBounds(spec: ServiceSpec, count: number): string | undefined {
  const b = spec.scale;
  if (b === undefined) return `the operator set no scale bounds for ${spec.name} (only the operator changes its count)`;
  if (!Number.isSafeInteger(count) || count < 0) return `${count} is not a whole number of instances`;
  if (count > b.max) return `${count} is above the operator's max ${b.max}`;
  if (count < b.min) return `${count} is below the operator's min ${b.min}`;
  return undefined;
}

interface Candidate {
  readonly service: string;
  readonly count: number;
  readonly by: string;
  readonly reason?: string;
  readonly at: number;
  /** An instance's request: its key (deleted whatever the outcome), alloc and host. */
  readonly request?: { readonly key: string; readonly allocId: string; readonly host: string };
}

/**
 * One pass over the instances' requests and the backplanes' asks. Each request's key is deleted whether it was
 * applied or refused, with an event that says which and why; an ask from a backplane is repeated every pass, so it
 * makes an event only when it changes the count or is refused. Requests are taken oldest first, then the asks:
 * the last accepted one for a service is its new count.
 */
export function scalePass(input: ScalePassInput): ScalePassOutput {
  const { state, now } = input;
  const put = new Map<string, ScaleRecord>();
  const deleteKeys: string[] = [...state.badScaleRequests];
  const events: PlanEvent[] = [];

  const candidates: Candidate[] = [...state.scaleRequests]
    .sort((a, b) => a.at - b.at || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
    .map((r) => ({ service: r.service, count: r.count, by: `instance ${r.allocId}`, at: r.at, ...(r.reason === undefined ? {} : { reason: r.reason }), request: { key: r.key, allocId: r.allocId, host: r.host } }));
  for (const a of input.asks ?? []) candidates.push({ ...a, at: now });

  for (const c of candidates) {
    if (c.request !== undefined) deleteKeys.push(c.request.key);
    const svc = state.services.get(c.service);
    const refuse = (why: string): void => {
      const from = c.request === undefined ? c.by : `${c.by} on ${c.request.host}`;
      events.push({ service: c.service, message: `scale request from ${from} refused: ${why}`, ...eventTarget(c) });
    };
    if (svc?.spec === undefined) {
      refuse(svc?.removed === true ? `${c.service} has been removed` : `there is no service ${c.service}`);
      continue;
    }
    const spec = svc.spec;
    if (c.request !== undefined) {
      const a = state.assigns.get(c.request.allocId);
      if (a === undefined || a.alloc.host !== c.request.host || a.alloc.service !== c.service) {
        refuse(`${c.request.allocId} is not a live instance of ${c.service} on ${c.request.host}`);
        continue;
      }
      const deployed = Date.parse(svc.deployedAt);
      if (Number.isFinite(deployed) && c.at < deployed) {
        refuse(`it was made before the operator's deploy of ${svc.deployedAt}, which set the count to ${spec.count}`);
        continue;
      }
    }
    const bad = outOfBounds(spec, c.count);
    if (bad !== undefined) {
      refuse(bad);
      continue;
    }
    const current = put.get(c.service) ?? state.scales.get(c.service);
    const from = effectiveCount(spec, svc.deployedAt, current);
    if (c.count === from) {
      // Nothing changes; an instance's request still gets its answer.
      if (c.request !== undefined) events.push({ service: c.service, message: `${c.service} stays at ${from}: asked by ${c.by}${reasonText(c.reason)}`, ...eventTarget(c) });
      continue;
    }
    put.set(c.service, { service: c.service, count: c.count, deployedAt: svc.deployedAt, by: c.by, ...(c.reason === undefined ? {} : { reason: c.reason }), at: now });
    events.push({ service: c.service, message: `${c.service} scaled ${from} → ${c.count} by ${c.by}${reasonText(c.reason)}`, ...eventTarget(c) });
  }

  // A scale record no deploy of its service can use again (removed, or redeployed since) goes.
  for (const [service, rec] of state.scales) {
    if (put.has(service)) continue;
    const svc = state.services.get(service);
    if (svc?.spec === undefined || svc.deployedAt !== rec.deployedAt) deleteKeys.push(keys.scale(service));
  }
  return { put: [...put.values()], deleteKeys: [...new Set(deleteKeys)], events };
}

function reasonText(reason: string | undefined): string {
  return reason === undefined || reason === '' ? '' : ` (${reason})`;
}

function eventTarget(c: Candidate): { allocId?: string; host?: string } {
  return c.request === undefined ? {} : { allocId: c.request.allocId, host: c.request.host };
}

/** Where the count in force came from, for status: "scaled by instance worker.0.1a2b3c4d: queue length 40". */
export function scaleSource(spec: ServiceSpec, deployedAt: string, record: ScaleRecord | undefined): { readonly count: number; readonly operatorCount: number; readonly scaledBy?: string; readonly reason?: string; readonly at?: number } {
  if (!scaleInForce(spec, deployedAt, record)) return { count: spec.count, operatorCount: spec.count };
  return { count: record.count, operatorCount: spec.count, scaledBy: record.by, ...(record.reason === undefined ? {} : { reason: record.reason }), at: record.at };
}
