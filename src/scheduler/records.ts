import { z } from 'zod';
import { keys } from '../cluster/keys.js';
import type { TrustView } from '../cluster/trust.js';
import type { PlanCommand, ServicePlan, SpecRef } from './plan-types.js';
import { NAMESPACE_NAME } from './names.js';
import { INHERITABLE_FIELDS, type Alloc, type AllocStatus, type ServiceSpec } from './types.js';
import { ALLOC_ID_SOURCE } from './alloc-id.js';

/**
 * The scheduler's records in the store, and how a reader decides to believe one. Everything read here is hostile
 * until checked: a record is a signed envelope (trust.ts); this module says *who* must have signed *what*:
 *
 * - a service spec (`services/<name>`) and a drain (`sched/drain/<host>`): an operator host (HostEntry.operator);
 * - an assignment (`sched/assign/<host>/<alloc>`): any approved host (the controller of its epoch; the store fenced
 *   the write on that controller's election key), and it carries the operator-signed spec record it runs, verbatim,
 *   so even a rogue controller can place only what an operator declared;
 * - a status (`sched/status/<host>/<alloc>`): the host it is about.
 *
 * The shapes are checked with zod after the signature: a signed record from a newer or buggy writer must not crash
 * or mislead a reader either.
 */

const num = z.number().finite();
const nonneg = num.nonnegative();
const resources = z.lazy(() => z.strictObject({ cpu: nonneg, memory: nonneg }));
const hookSchema = z.lazy(() => z.strictObject({ cmd: z.array(z.string()).min(1), timeoutMs: nonneg }));
const instanceResource = z.lazy(() => z.strictObject({ kind: z.string().min(1), name: z.string().min(1), params: z.record(z.string(), z.unknown()), meta: z.unknown().optional() }));

export const serviceSpecSchema = z.lazy(() => z.strictObject({
  name: z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/),
  namespace: z.string().regex(NAMESPACE_NAME).optional(),
  inherits: z.array(z.enum(INHERITABLE_FIELDS)).optional(),
  count: z.number().int().min(0).max(100_000),
  version: z.string().min(1).max(200),
  task: z.strictObject({
    cmd: z.array(z.string()).min(1),
    env: z.record(z.string(), z.string()),
    cwd: z.string().optional(),
    user: z.union([z.string(), z.number().int().nonnegative()]).optional(),
    group: z.union([z.string(), z.number().int().nonnegative()]).optional(),
    stopSignal: z.string().optional(),
    stopTimeoutMs: nonneg.optional(),
    stopNoticeMs: nonneg.optional(),
  }),
  resources,
  ports: z.array(z.strictObject({ name: z.string().min(1), static: z.number().int().min(1).max(65535).optional() })),
  health: z
    .strictObject({
      exec: z.array(z.string()).min(1).optional(),
      http: z.string().optional(),
      tcp: z.string().optional(),
      intervalMs: nonneg,
      timeoutMs: nonneg,
      failures: z.number().int().min(1),
      graceMs: nonneg,
    })
    .optional(),
  placement: z.strictObject({
    constraints: z.array(z.strictObject({ label: z.string(), op: z.enum(['eq', 'in', 'not_in']), values: z.array(z.string()) })),
    distinctHosts: z.boolean(),
    spread: z.string().optional(),
    maxPerHost: z.number().int().min(1).optional(),
    antiAffinity: z.array(z.string()),
    strategy: z.enum(['binpack', 'spread']),
  }),
  restart: z.strictObject({ attempts: z.number().int().min(0), intervalMs: nonneg, delayMs: nonneg }),
  reschedule: z.strictObject({ attempts: z.number().int().min(0), intervalMs: nonneg, delayMs: nonneg, maxDelayMs: nonneg, unlimited: z.boolean() }),
  update: z.strictObject({
    maxParallel: z.number().int().min(0),
    minHealthyMs: nonneg,
    healthyDeadlineMs: nonneg,
    progressDeadlineMs: nonneg,
    canary: z.number().int().min(0),
    autoPromote: z.boolean(),
    autoRevert: z.boolean(),
    startFirst: z.boolean().optional(),
  }),
  files: z.array(instanceResource),
  maxUnavailable: z.number().int().min(0).optional(),
  hooks: z.strictObject({ afterStart: hookSchema.optional(), beforeStop: hookSchema.optional(), beforePromote: hookSchema.optional() }).optional(),
  actions: z.record(z.string().regex(/^[a-z][a-z0-9-]{0,31}$/), hookSchema).optional(),
  scale: z.strictObject({ min: z.number().int().min(0), max: z.number().int().min(0).max(100_000) }).optional(),
  app: z.strictObject({ kind: z.string().regex(/^[a-z][a-z0-9-]{0,62}$/), name: z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/), role: z.string().max(64).optional() }).optional(),
}));

/** Free-form JSON a backplane or an instance hands over, bounded so a hostile one cannot bloat every record. */
export const MAX_APP_JSON_BYTES = 8192;
export const boundedJson = z.lazy(() => z.record(z.string(), z.unknown()).refine((v) => JSON.stringify(v).length <= MAX_APP_JSON_BYTES, { message: `at most ${MAX_APP_JSON_BYTES} bytes of JSON` }));
const appReportSchema = z.lazy(() => z.strictObject({ ready: z.boolean().optional(), state: boundedJson.optional(), message: z.string().max(200).optional(), at: num }));

/** What `services/<name>` holds (signed by an operator host). */
export type ServiceRecord =
  | { readonly spec: ServiceSpec; readonly source: string; readonly deployedAt: string }
  | { readonly removed: true; readonly name: string; readonly at: string };

const serviceRecordSchema = z.lazy(() => z.union([
  z.strictObject({ spec: serviceSpecSchema, source: z.string(), deployedAt: z.string() }),
  z.strictObject({ removed: z.literal(true), name: z.string(), at: z.string() }),
]));

const allocSchema = z.lazy(() => z.strictObject({
  id: z.string().regex(new RegExp(`^${ALLOC_ID_SOURCE}$`)),
  service: z.string(),
  index: z.number().int().min(0),
  version: z.string(),
  host: z.string(),
  resources,
  ports: z.record(z.string(), z.number().int().min(1).max(65535)),
  createdAt: num,
  previous: z.string().optional(),
  reschedules: z.array(num),
  hookRequests: z.strictObject({ beforeStop: num.optional(), beforePromote: num.optional() }).optional(),
  config: boundedJson.optional(),
  action: z.strictObject({ name: z.string().regex(/^[a-z][a-z0-9-]{0,31}$/), id: z.string().regex(/^[a-z0-9][a-z0-9-]{0,63}$/) }).optional(),
}));

/** What `sched/assign/<host>/<alloc>` holds (signed by the controller that placed it). */
export interface AssignRecord {
  readonly alloc: Omit<Alloc, 'status'>;
  /** createRevision of the controller's election key when it wrote this: the fencing token. */
  readonly epoch: number;
  readonly controller: string;
  /** The signed `services/<name>` value the alloc runs, exactly as the operator's host signed it, and by whom. */
  readonly specRecord: string;
  readonly specBy: string;
}

const assignSchema = z.lazy(() => z.strictObject({
  alloc: allocSchema,
  epoch: z.number().int().min(1),
  controller: z.string(),
  specRecord: z.string(),
  specBy: z.string(),
}));

const hookResult = z.lazy(() => z.strictObject({ nonce: num, state: z.enum(['running', 'ok', 'failed']), output: z.string().max(5000).optional(), at: num }));

const statusSchema = z.lazy(() => z.strictObject({
  state: z.enum(['pending', 'starting', 'running', 'healthy', 'unhealthy', 'failed', 'stopped', 'stopping']),
  restarts: z.number().int().min(0),
  since: num,
  message: z.string().max(2000).optional(),
  version: z.string().optional(),
  hooks: z.strictObject({ afterStart: hookResult.optional(), beforeStop: hookResult.optional(), beforePromote: hookResult.optional() }).optional(),
  /** With state 'stopping': what the alloc holds until its process is gone (its assignment, which said so, is deleted). */
  stopping: z
    .strictObject({ service: z.string(), index: z.number().int().min(0), resources, ports: z.record(z.string(), z.number().int().min(1).max(65535)) })
    .optional(),
  app: appReportSchema.optional(),
  action: z.strictObject({ name: z.string().max(32), id: z.string().max(64), state: z.enum(['running', 'ok', 'failed']), output: z.string().max(5000).optional(), at: num }).optional(),
}));

export type StatusRecord = AllocStatus & {
  readonly version?: string;
  readonly stopping?: { readonly service: string; readonly index: number; readonly resources: { cpu: number; memory: number }; readonly ports: Readonly<Record<string, number>> };
};

/** `sched/drain/<host>` (operator-signed). */
export interface DrainRecord {
  readonly drain: boolean;
  /** Wall-clock ms; past it the remaining instances are stopped without waiting. */
  readonly deadline?: number;
  readonly at: string;
}

const drainSchema = z.lazy(() => z.strictObject({ drain: z.boolean(), deadline: num.optional(), at: z.string() }));

export type Checked<T> = { readonly ok: true; readonly value: T; readonly seq: number } | { readonly ok: false; readonly why: string };

function parseBody<T>(body: string, schema: z.ZodType<T>, what: string): Checked<T> {
  let data: unknown;
  try {
    data = JSON.parse(body);
  } catch {
    return { ok: false, why: `the signed ${what} is not JSON` };
  }
  const r = schema.safeParse(data);
  if (!r.success) {
    const i = r.error.issues[0];
    return { ok: false, why: `the signed ${what} is malformed (${i === undefined ? '?' : `${i.path.join('.') || 'value'}: ${i.message}`})` };
  }
  return { ok: true, value: r.data, seq: 0 };
}

/** A `services/<name>` value, believed only when signed by an operator host (`by`). */
export function openServiceRecord(view: TrustView, by: string, name: string, value: string): Checked<ServiceRecord> {
  if (!view.mayOperate(by)) return { ok: false, why: `host "${by}" may not sign service specs (not an operator: \`backplane hosts approve ${by} --operator\`)` };
  const v = view.verify(by, keys.service(name), value);
  if (!v.ok) return { ok: false, why: v.why };
  const r = parseBody<ServiceRecord>(v.body, serviceRecordSchema as z.ZodType<ServiceRecord>, 'service record');
  if (!r.ok) return r;
  const recName = 'spec' in r.value ? r.value.spec.name : r.value.name;
  if (recName !== name) return { ok: false, why: `the record is for service "${recName}", not "${name}"` };
  return { ok: true, value: r.value, seq: v.seq };
}

/**
 * Who signed a service record: the envelope does not name its signer, so the record is wrapped as `{by, record}`
 * (the signer's name is not trusted: the signature is checked against that host's key, and that host must operate).
 */
export interface SignedBy {
  readonly by: string;
  readonly record: string;
}

export function wrapSigned(by: string, record: string): string {
  return JSON.stringify({ by, record } satisfies SignedBy);
}

export function unwrapSigned(value: string): SignedBy | undefined {
  try {
    const v = JSON.parse(value) as Record<string, unknown>;
    return typeof v['by'] === 'string' && typeof v['record'] === 'string' ? { by: v['by'], record: v['record'] } : undefined;
  } catch {
    return undefined;
  }
}

/** A service key's value: `{by, record}` whose record an operator host signed. */
export function readServiceValue(view: TrustView, name: string, value: string): Checked<ServiceRecord & { by?: string }> & { by?: string; record?: string } {
  const w = unwrapSigned(value);
  if (w === undefined) return { ok: false, why: 'not a signed service record ({by, record})' };
  const r = openServiceRecord(view, w.by, name, w.record);
  return r.ok ? { ...r, by: w.by, record: w.record } : r;
}

/** An assignment for `host`, signed by an approved host (the controller), running an operator-signed spec. */
export function openAssignRecord(view: TrustView, host: string, allocId: string, value: string): Checked<AssignRecord & { spec: ServiceSpec }> & { signer?: string } {
  const w = unwrapSigned(value);
  if (w === undefined) return { ok: false, why: 'not a signed assignment ({by, record})' };
  const v = view.verify(w.by, keys.assign(host, allocId), w.record);
  if (!v.ok) return { ok: false, why: v.why };
  const r = parseBody<AssignRecord>(v.body, assignSchema as z.ZodType<AssignRecord>, 'assignment');
  if (!r.ok) return r;
  const a = r.value;
  if (a.alloc.host !== host || a.alloc.id !== allocId) return { ok: false, why: `the assignment is for ${a.alloc.id} on ${a.alloc.host}, not what its key names` };
  if (a.controller !== w.by) return { ok: false, why: `the assignment names controller ${a.controller} but was signed by ${w.by}` };
  const spec = openServiceRecord(view, a.specBy, a.alloc.service, a.specRecord);
  if (!spec.ok) return { ok: false, why: `its service spec: ${spec.why}` };
  if (!('spec' in spec.value)) return { ok: false, why: `its service record is a removal` };
  if (spec.value.spec.version !== a.alloc.version) return { ok: false, why: `the alloc is version ${a.alloc.version} but its spec is ${spec.value.spec.version}` };
  return { ok: true, value: { ...a, spec: spec.value.spec }, seq: v.seq, signer: w.by };
}

export function openStatusRecord(view: TrustView, host: string, allocId: string, value: string): Checked<StatusRecord> {
  const v = view.verify(host, keys.status(host, allocId), value);
  if (!v.ok) return { ok: false, why: v.why };
  const r = parseBody<StatusRecord>(v.body, statusSchema as z.ZodType<StatusRecord>, 'status');
  return r.ok ? { ...r, seq: v.seq } : r;
}

export function openDrainRecord(view: TrustView, host: string, value: string): Checked<DrainRecord> {
  const w = unwrapSigned(value);
  if (w === undefined) return { ok: false, why: 'not a signed drain record ({by, record})' };
  if (!view.mayOperate(w.by)) return { ok: false, why: `host "${w.by}" may not drain hosts (not an operator)` };
  const v = view.verify(w.by, keys.drain(host), w.record);
  if (!v.ok) return { ok: false, why: v.why };
  const r = parseBody<DrainRecord>(v.body, drainSchema as z.ZodType<DrainRecord>, 'drain record');
  return r.ok ? { ...r, seq: v.seq } : r;
}

/** An event the controller recorded. */
export interface EventRecord {
  readonly at: number;
  readonly service: string;
  readonly message: string;
  readonly allocId?: string;
  readonly host?: string;
}

const eventSchema = z.lazy(() => z.strictObject({ at: num, service: z.string(), message: z.string().max(4000), allocId: z.string().optional(), host: z.string().optional() }));

export function openEventRecord(view: TrustView, key: string, value: string): Checked<EventRecord> {
  const w = unwrapSigned(value);
  if (w === undefined) return { ok: false, why: 'not a signed event' };
  const v = view.verify(w.by, key, w.record);
  if (!v.ok) return { ok: false, why: v.why };
  return parseBody<EventRecord>(v.body, eventSchema as z.ZodType<EventRecord>, 'event');
}

// ----------------------------------------------------------------------------------------------------------------
// Plans (plan-types.ts) and the operator's commands

const specRef = z.lazy(() => z.strictObject({ version: z.string(), record: z.string(), by: z.string(), deployedAt: z.string() }));
const stepSchema = z.lazy(() => z.strictObject({
  name: z.string(),
  index: z.number().int().min(0),
  action: z.enum(['replace', 'place', 'stop', 'move']),
  state: z.enum(['pending', 'prepared', 'starting', 'waiting-health', 'complete', 'waiting-operator', 'error']),
  why: z.string().max(2000).optional(),
  since: num,
  from: z.strictObject({ allocId: z.string(), host: z.string(), version: z.string() }).optional(),
  to: z.strictObject({ allocId: z.string(), host: z.string() }).optional(),
  output: z.string().max(5000).optional(),
  forced: z.boolean().optional(),
}));
const commandAction = z.enum(['pause', 'resume', 'promote', 'abort', 'restart-step', 'force-complete']);
const planSchema = z.lazy(() => z.strictObject({
  id: z.string(),
  seq: z.number().int().min(1),
  service: z.string(),
  kind: z.enum(['deploy', 'update', 'rollback', 'scale', 'config', 'recover', 'drain', 'remove']),
  fromVersion: z.string().optional(),
  toVersion: z.string(),
  fromCount: z.number().int().min(0).optional(),
  toCount: z.number().int().min(0),
  target: specRef,
  trigger: z.strictObject({ deployedAt: z.string(), version: z.string() }),
  stable: specRef.optional(),
  strategy: z.strictObject({
    canary: z.number().int().min(0),
    maxParallel: z.number().int().min(1),
    startFirst: z.boolean(),
    autoPromote: z.boolean(),
    autoRevert: z.boolean(),
    minHealthyMs: nonneg,
    healthyDeadlineMs: nonneg,
    progressDeadlineMs: nonneg,
    maxUnavailable: z.number().int().min(0),
  }),
  status: z.enum(['running', 'paused', 'waiting', 'complete', 'failed', 'rolled-back', 'superseded', 'aborted']),
  why: z.string().max(4000).optional(),
  paused: z.boolean(),
  promote: z.enum(['no', 'requested', 'done']),
  createdAt: num,
  updatedAt: num,
  lastProgressAt: num,
  finishedAt: num.optional(),
  failedAt: num.optional(),
  phases: z.array(z.strictObject({ name: z.string(), strategy: z.string(), steps: z.array(stepSchema) })),
  forced: z.array(z.string()),
  restarted: z.record(z.string(), num),
  log: z.array(z.strictObject({ at: num, message: z.string().max(4000) })),
  commands: z.array(z.strictObject({ id: z.string(), action: commandAction, ok: z.boolean(), message: z.string().max(4000), at: num })),
}));

/** A plan's body as the store hands it back to a controller (its fields in the schema's order, not the writer's). */
export function parsePlanBody(body: string): Checked<ServicePlan> {
  return parseBody<ServicePlan>(body, planSchema as z.ZodType<ServicePlan>, 'plan');
}

/**
 * A plan record (`sched/plan/<service>` or a history entry), written by a controller: signed by an approved host (the
 * store fenced the write on that controller's election key, as for assignments). Its target and stable spec records
 * must still carry an operator's signature: a rollback can only go to a version an operator once deployed.
 */
export function openPlanRecord(view: TrustView, key: string, service: string, value: string): Checked<ServicePlan> & { signer?: string } {
  const w = unwrapSigned(value);
  if (w === undefined) return { ok: false, why: 'not a signed plan ({by, record})' };
  const v = view.verify(w.by, key, w.record);
  if (!v.ok) return { ok: false, why: v.why };
  const r = parsePlanBody(v.body);
  if (!r.ok) return r;
  if (r.value.service !== service) return { ok: false, why: `the plan is for service "${r.value.service}", not "${service}"` };
  for (const [what, ref] of [['target', r.value.target], ['stable', r.value.stable]] as const) {
    if (ref === undefined) continue;
    const spec = openServiceRecord(view, ref.by, service, ref.record);
    if (!spec.ok) return { ok: false, why: `its ${what} spec: ${spec.why}` };
    if (!('spec' in spec.value) || spec.value.spec.version !== ref.version) return { ok: false, why: `its ${what} spec is not version ${ref.version}` };
  }
  return { ok: true, value: r.value, seq: v.seq, signer: w.by };
}

/** The spec inside a SpecRef (already checked by openPlanRecord or taken from a checked service record). */
export function specOfRef(view: TrustView, service: string, ref: SpecRef): ServiceSpec | undefined {
  const r = openServiceRecord(view, ref.by, service, ref.record);
  return r.ok && 'spec' in r.value ? r.value.spec : undefined;
}

const commandSchema = z.lazy(() => z.strictObject({
  id: z.string().regex(/^[0-9a-f]{8,32}$/),
  service: z.string(),
  action: commandAction,
  planId: z.string(),
  step: z.string().max(200).optional(),
  at: z.string(),
}));

/** `sched/cmd/<service>/<id>`, believed only when an operator host signed it. */
export function openCommandRecord(view: TrustView, service: string, id: string, value: string): Checked<PlanCommand> {
  const w = unwrapSigned(value);
  if (w === undefined) return { ok: false, why: 'not a signed command ({by, record})' };
  if (!view.mayOperate(w.by)) return { ok: false, why: `host "${w.by}" may not steer plans (not an operator)` };
  const v = view.verify(w.by, keys.cmd(service, id), w.record);
  if (!v.ok) return { ok: false, why: v.why };
  const r = parseBody<PlanCommand>(v.body, commandSchema as z.ZodType<PlanCommand>, 'command');
  if (!r.ok) return r;
  if (r.value.service !== service || r.value.id !== id) return { ok: false, why: 'the command names another service or id than its key' };
  return { ok: true, value: { ...r.value, by: w.by }, seq: v.seq };
}

// ----------------------------------------------------------------------------------------------------------------
// Application objects (src/backplanes/) and scaling within the operator's bounds

/** What `apps/<name>` holds (signed by an operator host): the object as deployed, and the services it became. */
export type AppRecord =
  | {
      readonly object: { readonly kind: string; readonly name: string; readonly params: Readonly<Record<string, unknown>> };
      /** The services its backplane expanded it into (each deployed beside it, with `app` naming this object). */
      readonly services: readonly string[];
      readonly source: string;
      readonly deployedAt: string;
    }
  | { readonly removed: true; readonly name: string; readonly at: string };

const appRecordSchema = z.lazy(() => z.union([
  z.strictObject({
    object: z.strictObject({ kind: z.string().regex(/^[a-z][a-z0-9-]{0,62}$/), name: z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/), params: z.record(z.string(), z.unknown()) }),
    services: z.array(z.string()).max(100),
    source: z.string(),
    deployedAt: z.string(),
  }),
  z.strictObject({ removed: z.literal(true), name: z.string(), at: z.string() }),
]));

/** An `apps/<name>` value: `{by, record}` whose record an operator host signed for that key. */
export function openAppRecord(view: TrustView, name: string, value: string): Checked<AppRecord> & { by?: string } {
  const w = unwrapSigned(value);
  if (w === undefined) return { ok: false, why: 'not a signed application record ({by, record})' };
  if (!view.mayOperate(w.by)) return { ok: false, why: `host "${w.by}" may not deploy applications (not an operator)` };
  const v = view.verify(w.by, keys.app(name), w.record);
  if (!v.ok) return { ok: false, why: v.why };
  const r = parseBody<AppRecord>(v.body, appRecordSchema, 'application record');
  if (!r.ok) return r;
  const named = 'removed' in r.value ? r.value.name : r.value.object.name;
  if (named !== name) return { ok: false, why: `the record is for "${named}", not "${name}"` };
  return { ok: true, value: r.value, seq: v.seq, by: w.by };
}

/**
 * What `sched/app/<name>` holds: the object's backplane's state, written by the controller after each call of the
 * backplane's `react` (src/backplanes/host.ts). The backplane's `memory` is its own, handed back on the next call.
 */
export interface AppStateRecord {
  readonly name: string;
  readonly kind: string;
  /** The operator record this state is for: a new deploy of the object is seen by the backplane as a change. */
  readonly deployedAt: string;
  readonly updatedAt: number;
  readonly memory?: unknown;
  readonly status?: AppStatus;
  /** Discovery entries: `<name>.<entry>` lists these members (e.g. cache.primary). */
  readonly discovery: Readonly<Record<string, readonly DiscoveryTarget[]>>;
  /** Per service: steering of its rollouts (update order; indexes held back). */
  readonly gates: Readonly<Record<string, AppGate>>;
  /** The backplane's last failure (threw, timed out, returned nonsense), when its last call failed. */
  readonly error?: { readonly message: string; readonly at: number };
}

export interface DiscoveryTarget {
  readonly allocId: string;
  /** The port name on that alloc clients connect to. */
  readonly port: string;
}

export interface AppGate {
  /** Indexes in the order a rolling update replaces them (the rest after, by index). */
  readonly order?: readonly number[];
  /** Indexes a rollout must not replace yet (e.g. the primary until its switchover is done). */
  readonly hold?: readonly number[];
}

/** What `backplane app NAME` shows: the backplane's own summary. */
export interface AppStatus {
  /** One line: "primary cache.0 on h1; 2 replicas in sync". */
  readonly summary: string;
  /** Named facts, e.g. {primary: "cache.0.ab12cd34", "replication lag max (ms)": 12}. */
  readonly fields?: Readonly<Record<string, string | number | boolean>>;
  /** Per member: its role and one line. */
  readonly members?: Readonly<Record<string, { readonly role?: string; readonly message?: string }>>;
  /** The last failover (or switchover), step by step. */
  readonly lastFailover?: { readonly at: number; readonly from?: string; readonly to: string; readonly reason: string; readonly timeline: readonly { readonly at: number; readonly message: string }[] };
}

const discoveryTarget = z.lazy(() => z.strictObject({ allocId: z.string().max(200), port: z.string().max(64) }));
export const appStatusSchema = z.lazy(() => z.strictObject({
  summary: z.string().max(500),
  fields: z.record(z.string().max(100), z.union([z.string().max(500), z.number(), z.boolean()])).optional(),
  members: z.record(z.string().max(200), z.strictObject({ role: z.string().max(64).optional(), message: z.string().max(200).optional() })).optional(),
  lastFailover: z
    .strictObject({ at: num, from: z.string().max(200).optional(), to: z.string().max(200), reason: z.string().max(500), timeline: z.array(z.strictObject({ at: num, message: z.string().max(500) })).max(50) })
    .optional(),
}));
export const appGateSchema = z.lazy(() => z.strictObject({ order: z.array(z.number().int().min(0)).max(1000).optional(), hold: z.array(z.number().int().min(0)).max(1000).optional() }));
const appStateSchema = z.lazy(() => z.strictObject({
  name: z.string(),
  kind: z.string(),
  deployedAt: z.string(),
  updatedAt: num,
  memory: z.unknown().optional(),
  status: appStatusSchema.optional(),
  discovery: z.record(z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/), z.array(discoveryTarget).max(1000)),
  gates: z.record(z.string(), appGateSchema),
  error: z.strictObject({ message: z.string().max(4000), at: num }).optional(),
}));

/** `sched/app/<name>`, written by a controller (any approved host; the write was fenced on its election key). */
export function openAppStateRecord(view: TrustView, name: string, value: string): Checked<AppStateRecord> {
  const w = unwrapSigned(value);
  if (w === undefined) return { ok: false, why: 'not a signed application state ({by, record})' };
  const v = view.verify(w.by, keys.appState(name), w.record);
  if (!v.ok) return { ok: false, why: v.why };
  const r = parseBody<AppStateRecord>(v.body, appStateSchema as z.ZodType<AppStateRecord>, 'application state');
  if (!r.ok) return r;
  if (r.value.name !== name) return { ok: false, why: `the state is for "${r.value.name}", not "${name}"` };
  return { ok: true, value: r.value, seq: v.seq };
}

/**
 * What `sched/scale/<service>` holds (controller-signed): a count within the operator's `scale` bounds that replaces
 * the spec's count while `deployedAt` is the service record's (a new deploy by the operator drops it).
 */
export interface ScaleRecord {
  readonly service: string;
  readonly count: number;
  readonly deployedAt: string;
  /** Who asked: "instance worker.0.1a2b3c4d", "backplane redis". */
  readonly by: string;
  readonly reason?: string;
  readonly at: number;
}

const scaleSchema = z.lazy(() => z.strictObject({ service: z.string(), count: z.number().int().min(0).max(100_000), deployedAt: z.string(), by: z.string().max(300), reason: z.string().max(200).optional(), at: num }));

export function openScaleRecord(view: TrustView, service: string, value: string): Checked<ScaleRecord> {
  const w = unwrapSigned(value);
  if (w === undefined) return { ok: false, why: 'not a signed scale record ({by, record})' };
  const v = view.verify(w.by, keys.scale(service), w.record);
  if (!v.ok) return { ok: false, why: v.why };
  const r = parseBody<ScaleRecord>(v.body, scaleSchema as z.ZodType<ScaleRecord>, 'scale record');
  if (!r.ok) return r;
  if (r.value.service !== service) return { ok: false, why: `the scale record is for "${r.value.service}", not "${service}"` };
  return { ok: true, value: r.value, seq: v.seq };
}

/** What `sched/scalereq/<host>/<alloc>` holds, signed by <host> (the agent relaying its instance's request). */
export interface ScaleRequest {
  readonly allocId: string;
  readonly service: string;
  readonly count: number;
  readonly reason?: string;
  /** Wall-clock ms; also the request's identity (a newer request from the same instance replaces it). */
  readonly at: number;
}

const scaleReqSchema = z.lazy(() => z.strictObject({ allocId: z.string(), service: z.string(), count: z.number().int().min(0).max(100_000), reason: z.string().max(200).optional(), at: num }));

export function openScaleRequest(view: TrustView, host: string, allocId: string, value: string): Checked<ScaleRequest> {
  const v = view.verify(host, keys.scaleReq(host, allocId), value);
  if (!v.ok) return { ok: false, why: v.why };
  const r = parseBody<ScaleRequest>(v.body, scaleReqSchema as z.ZodType<ScaleRequest>, 'scale request');
  if (!r.ok) return r;
  if (r.value.allocId !== allocId) return { ok: false, why: 'the request names another alloc than its key' };
  return { ok: true, value: r.value, seq: v.seq };
}
