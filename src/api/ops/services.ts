import { z } from 'zod';
import { keys } from '../../cluster/keys.js';
import { BackplaneError } from '../../errors.js';
import type { ServicePlan } from '../../scheduler/plan-types.js';
import type { ScaleRecord, ServiceRecord } from '../../scheduler/records.js';
import { policyInForce, type PolicyInForce } from '../../scheduler/policy.js';
import { outOfBounds, scaleSource } from '../../scheduler/scale.js';
import { readEvents, specInForce, type SchedState } from '../../scheduler/state.js';
import type { ServiceSpec } from '../../scheduler/types.js';
import { ApiError, defineOp, q, visibleTo } from '../ops.js';
import { namespaceOf, nameParam, noService, serviceScope, serviceVisible } from './shared.js';

/**
 * The services of the backplane and their levers: list, one service with its instances and events, scale, remove,
 * and how far a deploy got (what `deploy --wait` follows). Reads answer only verified records (a forged status never
 * shows up as healthy); writes are operator records signed by the host that runs the op (the agent's, or this one's
 * with a direct store).
 */

// ---- views (pure, over a SchedState) ---------------------------------------------------------------------------------

const scaleFields = {
  /** The count in force. */
  count: z.number().int(),
  /** The operator's count, when `count` is not it. */
  operatorCount: z.number().int(),
  bounds: z.object({ min: z.number().int(), max: z.number().int() }).optional(),
  /** Who chose the count in force within the bounds ("instance worker.0.1a2b3c4d"), and why. */
  scaledBy: z.string().optional(),
  scaleReason: z.string().optional(),
};

export const serviceRowSchema = z.object({
  name: z.string(),
  namespace: z.string(),
  version: z.string(),
  ...scaleFields,
  placed: z.number().int(),
  healthy: z.number().int(),
  removed: z.boolean(),
  deployedAt: z.string(),
  /** The current plan in one phrase: "web-4 update v1 -> v2 running 3/6". */
  plan: z.string().optional(),
});
export type ServiceRow = z.infer<typeof serviceRowSchema>;
type CountFields = Pick<ServiceRow, 'count' | 'operatorCount' | 'bounds' | 'scaledBy' | 'scaleReason'>;

/** The count in force and where it came from. */
export function countRow(spec: ServiceSpec, deployedAt: string, record: ScaleRecord | undefined): CountFields {
  const src = scaleSource(spec, deployedAt, record);
  return {
    count: src.count,
    operatorCount: src.operatorCount,
    ...(spec.scale === undefined ? {} : { bounds: spec.scale }),
    ...(src.scaledBy === undefined ? {} : { scaledBy: src.scaledBy }),
    ...(src.reason === undefined ? {} : { scaleReason: src.reason }),
  };
}

export function countOf(state: SchedState, name: string): number {
  const svc = state.services.get(name);
  return svc?.spec === undefined ? 0 : scaleSource(svc.spec, svc.deployedAt, state.scales.get(name)).count;
}

/** One line for a plan: id, kind, versions, status, steps complete of all. */
export function planSummary(p: ServicePlan): string {
  const steps = p.phases.flatMap((ph) => ph.steps);
  const done = steps.filter((x) => x.state === 'complete').length;
  const versions = p.kind === 'update' || p.kind === 'rollback' ? ` ${p.fromVersion ?? '?'} -> ${p.toVersion}` : '';
  return `${p.id} ${p.kind}${versions} ${p.failedAt === undefined ? p.status : 'failed, waiting'} ${done}/${steps.length}`;
}

export function serviceRows(state: SchedState): ServiceRow[] {
  const names = new Set([...state.services.keys(), ...[...state.assigns.values()].map((a) => a.alloc.service)]);
  return [...names].sort().map((name) => {
    const svc = state.services.get(name);
    const inst = instanceRows(state, name);
    const plan = state.plans.get(name);
    return {
      name,
      namespace: namespaceOf(state, name),
      version: svc?.spec?.version ?? '?',
      ...(svc?.spec === undefined ? { count: 0, operatorCount: 0 } : countRow(svc.spec, svc.deployedAt, state.scales.get(name))),
      placed: inst.length,
      healthy: inst.filter((i) => i.state === 'healthy' || (i.state === 'running' && svc?.spec?.health === undefined)).length,
      removed: svc?.removed === true,
      deployedAt: svc?.deployedAt ?? '?',
      ...(plan === undefined ? {} : { plan: planSummary(plan) }),
    };
  });
}

export const instanceRowSchema = z.object({
  id: z.string(),
  index: z.number().int(),
  host: z.string(),
  version: z.string(),
  state: z.string(),
  restarts: z.number().int(),
  since: z.number().optional(),
  message: z.string().optional(),
  ports: z.record(z.string(), z.number()),
  hostAlive: z.boolean(),
});
export type InstanceRow = z.infer<typeof instanceRowSchema>;

export function instanceRows(state: SchedState, service: string): InstanceRow[] {
  const alive = new Set(state.members.filter((m) => m.verified).map((m) => m.host));
  return [...state.assigns.values()]
    .filter((a) => a.alloc.service === service)
    .map((a) => {
      const st = state.statuses.get(a.alloc.id);
      const hostAlive = alive.has(a.alloc.host);
      return {
        id: a.alloc.id,
        index: a.alloc.index,
        host: a.alloc.host,
        version: a.alloc.version,
        state: hostAlive ? (st?.state ?? 'pending') : 'host-down',
        restarts: st?.restarts ?? 0,
        ...(st === undefined ? {} : { since: st.since }),
        ...(st?.message === undefined ? {} : { message: st.message }),
        ports: { ...a.alloc.ports },
        hostAlive,
      };
    })
    .sort((x, y) => x.index - y.index || x.id.localeCompare(y.id));
}

// ---- ops ------------------------------------------------------------------------------------------------------------

export const servicesList = defineOp({
  name: 'services.list',
  method: 'GET',
  path: '/v1/services',
  role: 'viewer',
  summary: 'List the services: version, instances wanted, placed and healthy, the current plan',
  input: z.object({}),
  output: z.array(serviceRowSchema),
  mutates: false,
  run: async (ctx) => {
    const state = await (await ctx.cluster()).readState();
    return serviceRows(state).filter((r) => visibleTo(ctx.caller, r.namespace));
  },
});

export const clusterProblems = defineOp({
  name: 'cluster.problems',
  method: 'GET',
  path: '/v1/problems',
  role: 'viewer',
  summary: 'List the records in the store that failed verification and are ignored',
  input: z.object({}),
  output: z.object({ problems: z.array(z.string()) }),
  mutates: false,
  // Store keys of every namespace: not for a namespace-scoped token.
  run: async (ctx) => (ctx.caller.namespace !== undefined ? { problems: [] } : { problems: [...(await (await ctx.cluster()).readState()).problems] }),
});

const eventSchema = z.object({ at: z.number(), service: z.string(), message: z.string(), allocId: z.string().optional(), host: z.string().optional() });

export const serviceGetSchema = z.object({
  name: z.string(),
  namespace: z.string(),
  // The operator's spec as stored: its shape is the spec schema's (`backplane schema --service`).
  spec: z.looseObject({ name: z.string(), version: z.string(), count: z.number() }).nullable(),
  removed: z.boolean(),
  deployedAt: z.string().optional(),
  by: z.string().optional(),
  scale: z
    .object({
      count: z.number().int(),
      operatorCount: z.number().int(),
      scaledBy: z.string().optional(),
      reason: z.string().optional(),
      at: z.number().optional(),
      bounds: z.object({ min: z.number().int(), max: z.number().int() }).nullable(),
    })
    .optional(),
  /** The current plan in one phrase, and why it is as it is. */
  plan: z.object({ summary: z.string(), why: z.string().optional() }).optional(),
  /**
   * The update policy and disruption budget in force (src/scheduler/policy.ts): the spec's, else its namespace's
   * defaults, else the built-in ones; `from` says which, per field.
   */
  policy: z
    .object({
      update: z.looseObject({ maxParallel: z.number().int(), canary: z.number().int(), autoRevert: z.boolean(), autoPromote: z.boolean() }),
      maxUnavailable: z.number().int().optional(),
      from: z.record(z.string(), z.enum(['spec', 'namespace', 'built-in'])),
    })
    .optional(),
  instances: z.array(instanceRowSchema),
  events: z.array(eventSchema),
});
export type ServiceGet = Omit<z.infer<typeof serviceGetSchema>, 'spec' | 'policy'> & { readonly spec: ServiceSpec | null; readonly policy?: PolicyInForce };

export const servicesGet = defineOp({
  name: 'services.get',
  method: 'GET',
  path: '/v1/services/{name}',
  role: 'viewer',
  summary: 'Show one service: each instance with its host, version, state, health, restarts and since when; its events',
  input: z.object({ name: nameParam(), events: q.int(0, 10_000).optional() }),
  output: serviceGetSchema as unknown as z.ZodType<ServiceGet>,
  mutates: false,
  scope: serviceScope,
  run: async (ctx, input) => {
    const cluster = await ctx.cluster();
    const state = await cluster.readState();
    const name = input.name;
    const svc = state.services.get(name);
    const instances = instanceRows(state, name);
    if ((svc === undefined && instances.length === 0) || !serviceVisible(ctx, state, name)) throw noService(name);
    const events = await readEvents(cluster.store, cluster.view, { service: name, limit: input.events ?? 20 });
    const scale = svc?.spec === undefined ? undefined : { ...scaleSource(svc.spec, svc.deployedAt, state.scales.get(name)), bounds: svc.spec.scale ?? null };
    const plan = state.plans.get(name);
    return {
      name,
      namespace: namespaceOf(state, name),
      spec: svc?.spec ?? null,
      removed: svc?.removed === true,
      ...(svc === undefined ? {} : { deployedAt: svc.deployedAt, by: svc.by }),
      ...(scale === undefined ? {} : { scale }),
      ...(plan === undefined ? {} : { plan: { summary: planSummary(plan), ...(plan.why === undefined ? {} : { why: plan.why }) } }),
      ...(svc?.spec === undefined ? {} : { policy: policyInForce(svc.spec, state.policies) }),
      instances,
      events: events.map((e) => ({ ...e })),
    };
  },
});

export const servicesScale = defineOp({
  name: 'services.scale',
  method: 'POST',
  path: '/v1/services/{name}/scale',
  role: 'operator',
  summary: 'Set how many instances a service runs (scaling down stops the newest first)',
  input: z.object({ name: nameParam(), count: q.int(0, 100_000) }),
  output: z.object({
    name: z.string(),
    count: z.number().int(),
    /** The count in force before. */
    was: z.number().int(),
    /** The operator's count before (was differs when the count in force was chosen within the scale bounds). */
    operatorCount: z.number().int(),
    scaledBy: z.string().optional(),
  }),
  mutates: true,
  scope: serviceScope,
  run: async (ctx, { name, count }) => {
    const cluster = await ctx.cluster();
    const signer = await cluster.signer();
    const state = await cluster.readState();
    const svc = state.services.get(name);
    if (svc?.spec === undefined) throw new ApiError(404, `no service "${name}" to scale`, { code: 'E_USAGE', hint: 'deploy it first: `backplane deploy -f spec.yaml`' });
    const b = svc.spec.scale;
    if (b !== undefined && outOfBounds(svc.spec, count) !== undefined) {
      throw new ApiError(400, `${count} is outside ${name}'s scale bounds ${b.min}..${b.max}`, {
        hint: `the operator's count must lie within the bounds; to go beyond them, change scale: { min, max } in the spec and deploy it`,
      });
    }
    const key = keys.service(name);
    const kv = await cluster.store.get(key);
    // The count changes, the version does not: scaling never replaces running instances.
    const record: ServiceRecord = { spec: { ...svc.spec, count }, source: `scale (was ${svc.spec.count})`, deployedAt: new Date().toISOString() };
    const r = await cluster.store.cas(key, kv?.modRevision ?? 0, signer.sign(key, JSON.stringify(record)));
    if (!r.ok) throw new BackplaneError('E_IO', `service ${name} changed while scaling it`, { retryable: true, hint: 'run the command again' });
    const by = state.scales.get(name)?.by;
    return { name, count, was: countOf(state, name), operatorCount: svc.spec.count, ...(by === undefined ? {} : { scaledBy: by }) };
  },
});

export const servicesRemove = defineOp({
  name: 'services.remove',
  method: 'DELETE',
  path: '/v1/services/{name}',
  role: 'operator',
  summary: 'Stop every instance of a service and forget it',
  input: z.object({ name: nameParam() }),
  output: z.object({ name: z.string(), removed: z.literal(true) }),
  mutates: true,
  scope: serviceScope,
  run: async (ctx, { name }) => {
    const cluster = await ctx.cluster();
    const signer = await cluster.signer();
    const state = await cluster.readState();
    if (!state.services.has(name) && instanceRows(state, name).length === 0) throw noService(name);
    const key = keys.service(name);
    // A signed tombstone, not a delete: a deleted key could be anyone's doing, and must never stop a service.
    const record: ServiceRecord = { removed: true, name, at: new Date().toISOString() };
    await cluster.store.put(key, signer.sign(key, JSON.stringify(record)));
    return { name, removed: true as const };
  },
});

/**
 * How far a deploy of `version` (written at `deployedAt`) got: what `deploy --wait` polls. `done` when its plan is
 * complete (or, before the controller made one, every wanted instance runs it healthy); `promote` when healthy
 * canaries wait for the operator; `failed` (with why) when its plan failed or rolled back.
 */
export const serviceProgressSchema = z.object({
  name: z.string(),
  state: z.enum(['waiting', 'done', 'promote', 'failed']),
  healthy: z.number().int(),
  wanted: z.number().int(),
  /** What it waits for, or why it failed. */
  message: z.string().optional(),
  hint: z.string().optional(),
});
export type ServiceProgress = z.infer<typeof serviceProgressSchema>;

export function serviceProgress(state: SchedState, name: string, version: string, health: boolean, deployedAt: string | undefined): ServiceProgress {
  const ok = [...state.assigns.values()].filter((a) => {
    if (a.alloc.service !== name || a.alloc.version !== version) return false;
    const st = state.statuses.get(a.alloc.id)?.state;
    return st === 'healthy' || (!health && st === 'running');
  });
  const healthy = new Set(ok.map((a) => a.alloc.index)).size;
  const wanted = specInForce(state, name)?.spec.count ?? state.services.get(name)?.spec?.count ?? 0;
  const plan = state.plans.get(name);
  // A count chosen within the scale bounds after this deploy makes a plan of its own, triggered by `<at>+scale@…`.
  if (plan !== undefined && deployedAt !== undefined && (plan.trigger.deployedAt === deployedAt || plan.trigger.deployedAt.startsWith(`${deployedAt}+scale@`))) {
    if (plan.kind === 'rollback') {
      return { name, state: 'failed', healthy, wanted, message: `version ${version} failed and was rolled back: ${plan.log[0]?.message ?? plan.why ?? ''}`, hint: `see: backplane plan ${name} --history` };
    }
    if (plan.failedAt !== undefined) return { name, state: 'failed', healthy, wanted, message: `plan ${plan.id} failed: ${plan.why ?? ''}`, hint: `see: backplane plan ${name}` };
    if (plan.status === 'waiting' && plan.promote === 'no') return { name, state: 'promote', healthy, wanted, message: `canaries healthy; waiting for promote (backplane rollout promote ${name})` };
    // The change is done when its plan is: every step complete (healthy for minHealthy, old ones stopped).
    if (plan.status !== 'complete') {
      const steps = plan.phases.flatMap((p) => p.steps);
      return { name, state: 'waiting', healthy, wanted, message: `plan ${plan.id} ${plan.status}, ${steps.filter((x) => x.state === 'complete').length} of ${steps.length} steps complete` };
    }
  }
  if (healthy < wanted) return { name, state: 'waiting', healthy, wanted, message: `${healthy} of ${wanted} healthy` };
  return { name, state: 'done', healthy, wanted };
}

export const servicesProgress = defineOp({
  name: 'services.progress',
  method: 'GET',
  path: '/v1/services/{name}/progress',
  role: 'viewer',
  summary: "Show how far a deploy of a service got: instances of its version healthy of wanted, and its plan's state",
  input: z.object({ name: nameParam(), version: z.string().min(1), deployedAt: z.string().optional() }),
  output: serviceProgressSchema,
  mutates: false,
  scope: serviceScope,
  run: async (ctx, input) => {
    const state = await (await ctx.cluster()).readState();
    const svc = state.services.get(input.name);
    if (svc === undefined || !serviceVisible(ctx, state, input.name)) throw noService(input.name);
    const health = (svc.spec ?? [...state.assigns.values()].find((a) => a.alloc.service === input.name)?.spec)?.health !== undefined;
    return serviceProgress(state, input.name, input.version, health, input.deployedAt);
  },
});

export const SERVICE_OPS = [servicesList, clusterProblems, servicesGet, servicesScale, servicesRemove, servicesProgress] as const;
