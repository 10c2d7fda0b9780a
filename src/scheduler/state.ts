import { ClusterLink, type Member } from '../cluster/link.js';
import { keys, parseAllocKey, parseAppKey, parseAppStateKey, parseCmdKey, parseDrainKey, parseHistoryKey, parsePlanKey, parseScaleKey, parseScaleReqKey, parseServiceKey } from '../cluster/keys.js';
import type { Store } from '../cluster/store.js';
import type { TrustView } from '../cluster/trust.js';
import type { PlanCommand, ServicePlan, SpecRef } from './plan-types.js';
import { effectiveSpec, readPolicies } from './policy.js';
import type { ServiceInput } from './plans.js';
import { scaleInForce } from './scale.js';
import { defaultCapacity } from './capacity.js';
import {
  openAppRecord,
  openAppStateRecord,
  openAssignRecord,
  openScaleRecord,
  openScaleRequest,
  openCommandRecord,
  openDrainRecord,
  openEventRecord,
  openPlanRecord,
  openStatusRecord,
  readServiceValue,
  specOfRef,
  type AppRecord,
  type AppStateRecord,
  type AssignRecord,
  type DrainRecord,
  type ScaleRecord,
  type ScaleRequest,
  type EventRecord,
  type StatusRecord,
} from './records.js';
import type { Alloc, ClusterSnapshot, HookName, HostSnapshot, NamespacePolicy, Resources, ServiceSpec, StoppingAlloc } from './types.js';

/**
 * The scheduler's view of the store, read in one go and checked record by record (records.ts). Shared by the
 * controller (each pass), `deploy --dry-run` and the status commands, so all three see exactly the same thing.
 * Anything that fails a check is listed in `problems` and otherwise ignored.
 */
export interface SchedState {
  readonly revision: number;
  readonly members: readonly Member[];
  /** Current service records by name: a spec, or a signed removal. */
  readonly services: ReadonlyMap<string, { readonly spec?: ServiceSpec; readonly removed?: boolean; readonly record: string; readonly by: string; readonly deployedAt: string }>;
  readonly assigns: ReadonlyMap<string, AssignRecord & { readonly spec: ServiceSpec; readonly key: string; readonly modRevision: number }>;
  /** By alloc id. */
  readonly statuses: ReadonlyMap<string, StatusRecord & { readonly host: string }>;
  readonly drains: ReadonlyMap<string, DrainRecord>;
  /** The current plan record of each service. */
  readonly plans: ReadonlyMap<string, ServicePlan>;
  /** History keys per service, oldest first, with their seq. */
  readonly history: ReadonlyMap<string, readonly { readonly key: string; readonly seq: number }[]>;
  /** Operator commands waiting for the controller, and the keys of ones that failed their checks. */
  readonly commands: readonly PlanCommand[];
  readonly badCommands: readonly string[];
  /** Application objects (operator-signed `apps/<name>`), and their backplanes' state (`sched/app/<name>`). */
  readonly apps: ReadonlyMap<string, { readonly record: AppRecord; readonly by: string }>;
  readonly appStates: ReadonlyMap<string, AppStateRecord>;
  /** Counts chosen within the operator's scale bounds (`sched/scale/<service>`), by service. */
  readonly scales: ReadonlyMap<string, ScaleRecord>;
  /** Instances' requests to scale (host-signed), and the keys of ones that failed their checks (to delete). */
  readonly scaleRequests: readonly (ScaleRequest & { readonly host: string; readonly key: string })[];
  readonly badScaleRequests: readonly string[];
  /**
   * Namespaces' policies (operator-signed `policy/namespaces/<ns>`; removed ones are absent), by name. Always set by
   * readSchedState; optional for states built by hand (tests), where it means none.
   */
  readonly policies?: ReadonlyMap<string, NamespacePolicy>;
  readonly problems: readonly string[];
}

export const DEFAULT_DYNAMIC_PORTS = { from: 20000, to: 32767 } as const;

export async function readSchedState(store: Store, view: TrustView, opts: { signal?: AbortSignal } = {}): Promise<SchedState> {
  const signal = opts.signal === undefined ? {} : { signal: opts.signal };
  const [members, services, sched, appKvs, policyRead] = await Promise.all([
    ClusterLink.members(store, view, signal),
    store.list(keys.servicesPrefix, signal),
    store.list(keys.schedPrefix, signal),
    store.list(keys.appsPrefix, signal),
    readPolicies(store, view, signal),
  ]);
  const problems: string[] = [...policyRead.problems];
  const policies = new Map([...policyRead.policies].map(([ns, e]) => [ns, e.policy]));
  const apps = new Map<string, { record: AppRecord; by: string }>();
  for (const kv of appKvs.kvs) {
    const name = parseAppKey(kv.key);
    const r = name === undefined ? undefined : openAppRecord(view, name, kv.value);
    if (name !== undefined && r?.ok === true && r.by !== undefined) apps.set(name, { record: r.value, by: r.by });
    else problems.push(`${kv.key}: ${r === undefined ? 'not an application key' : r.ok ? 'unsigned' : r.why}`);
  }
  const appStates = new Map<string, AppStateRecord>();
  const scales = new Map<string, ScaleRecord>();
  const scaleRequests: (ScaleRequest & { host: string; key: string })[] = [];
  const badScaleRequests: string[] = [];
  const svc = new Map<string, { spec?: ServiceSpec; removed?: boolean; record: string; by: string; deployedAt: string }>();
  for (const kv of services.kvs) {
    const name = parseServiceKey(kv.key);
    if (name === undefined) continue;
    const r = readServiceValue(view, name, kv.value);
    if (!r.ok || r.by === undefined || r.record === undefined) {
      problems.push(`${kv.key}: ${r.ok ? 'unsigned' : r.why}`);
      continue;
    }
    const v = r.value;
    svc.set(name, 'spec' in v ? { spec: v.spec, record: r.record, by: r.by, deployedAt: v.deployedAt } : { removed: true, record: r.record, by: r.by, deployedAt: v.at });
  }
  const assigns = new Map<string, AssignRecord & { spec: ServiceSpec; key: string; modRevision: number }>();
  const statuses = new Map<string, StatusRecord & { host: string }>();
  const drains = new Map<string, DrainRecord>();
  const plans = new Map<string, ServicePlan>();
  const history = new Map<string, { key: string; seq: number }[]>();
  const commands: PlanCommand[] = [];
  const badCommands: string[] = [];
  for (const kv of sched.kvs) {
    if (kv.key.startsWith(keys.eventsPrefix)) continue;
    const planOf = parsePlanKey(kv.key);
    if (planOf !== undefined) {
      const r = openPlanRecord(view, kv.key, planOf, kv.value);
      if (r.ok) plans.set(planOf, r.value);
      else problems.push(`${kv.key}: ${r.why}`);
      continue;
    }
    const hist = parseHistoryKey(kv.key);
    if (hist !== undefined) {
      // Only the keys: the history is read in full by `backplane plan --history`, not on every pass.
      let list = history.get(hist.service);
      if (list === undefined) history.set(hist.service, (list = []));
      list.push({ key: kv.key, seq: hist.seq });
      continue;
    }
    const cmd = parseCmdKey(kv.key);
    if (cmd !== undefined) {
      const r = openCommandRecord(view, cmd.service, cmd.id, kv.value);
      if (r.ok) commands.push(r.value);
      else {
        badCommands.push(kv.key);
        problems.push(`${kv.key}: ${r.why}`);
      }
      continue;
    }
    const appOf = parseAppStateKey(kv.key);
    if (appOf !== undefined) {
      const r = openAppStateRecord(view, appOf, kv.value);
      if (r.ok) appStates.set(appOf, r.value);
      else problems.push(`${kv.key}: ${r.why}`);
      continue;
    }
    const scaleOf = parseScaleKey(kv.key);
    if (scaleOf !== undefined) {
      const r = openScaleRecord(view, scaleOf, kv.value);
      if (r.ok) scales.set(scaleOf, r.value);
      else problems.push(`${kv.key}: ${r.why}`);
      continue;
    }
    const req = parseScaleReqKey(kv.key);
    if (req !== undefined) {
      const r = openScaleRequest(view, req.host, req.alloc, kv.value);
      if (r.ok) scaleRequests.push({ ...r.value, host: req.host, key: kv.key });
      else {
        badScaleRequests.push(kv.key);
        problems.push(`${kv.key}: ${r.why}`);
      }
      continue;
    }
    const drainHost = parseDrainKey(kv.key);
    if (drainHost !== undefined) {
      const d = openDrainRecord(view, drainHost, kv.value);
      if (d.ok) drains.set(drainHost, d.value);
      else problems.push(`${kv.key}: ${d.why}`);
      continue;
    }
    const where = parseAllocKey(kv.key);
    if (where === undefined) {
      problems.push(`${kv.key}: not a scheduler key`);
      continue;
    }
    if (where.kind === 'assign') {
      const a = openAssignRecord(view, where.host, where.alloc, kv.value);
      if (a.ok) assigns.set(where.alloc, { ...a.value, key: kv.key, modRevision: kv.modRevision });
      else problems.push(`${kv.key}: ${a.why}`);
    } else {
      const s = openStatusRecord(view, where.host, where.alloc, kv.value);
      if (s.ok) statuses.set(where.alloc, { ...s.value, host: where.host });
      else problems.push(`${kv.key}: ${s.why}`);
    }
  }
  for (const list of history.values()) list.sort((a, b) => a.seq - b.seq);
  return {
    revision: Math.max(services.revision, sched.revision, appKvs.revision, policyRead.revision),
    members,
    services: svc,
    assigns,
    statuses,
    drains,
    plans,
    history,
    commands,
    badCommands,
    apps,
    appStates,
    scales,
    scaleRequests,
    badScaleRequests,
    policies,
    problems,
  };
}

export async function readEvents(store: Store, view: TrustView, opts: { service?: string; limit?: number } = {}): Promise<EventRecord[]> {
  const { kvs } = await store.list(keys.eventsPrefix);
  const out: EventRecord[] = [];
  for (const kv of kvs) {
    const e = openEventRecord(view, kv.key, kv.value);
    if (e.ok && (opts.service === undefined || e.value.service === opts.service)) out.push(e.value);
  }
  return opts.limit === undefined ? out : opts.limit <= 0 ? [] : out.slice(-opts.limit);
}

/** A host's declared port range, if it is one (a signed record can still hold nonsense from a buggy writer). */
function validRange(r: { from: number; to: number } | undefined): { from: number; to: number } | undefined {
  if (r === undefined || typeof r !== 'object') return undefined;
  const ok = Number.isInteger(r.from) && Number.isInteger(r.to) && r.from >= 1 && r.to <= 65535 && r.from <= r.to;
  return ok ? { from: r.from, to: r.to } : undefined;
}

/** What a node record declares it can give instances (capacity), or its facts less the default reserve. */
export function capacityOf(m: Member): Resources {
  const r = m.record;
  if (r === undefined) return { cpu: 0, memory: 0 };
  if (r.capacity !== undefined) return r.capacity;
  return defaultCapacity(r.facts.cpus, r.facts.memory.total);
}

export { defaultCapacity };

/**
 * The pure planner's input from a SchedState. `lastAlive` (host -> wall-clock ms it was last seen alive) is the
 * controller's memory of when each host went away; a host never seen alive counts as gone since `since`.
 */
export function toSnapshot(
  state: SchedState,
  now: number,
  opts: { lastAlive: ReadonlyMap<string, number>; since: number; fenceGraceMs: number; graceOf?: ReadonlyMap<string, number>; override?: ServiceSpec },
): ClusterSnapshot {
  const hosts = new Map<string, HostSnapshot>();
  for (const m of state.members) {
    if (!m.verified || m.record === undefined) continue;
    const d = state.drains.get(m.host);
    hosts.set(m.host, {
      name: m.host,
      alive: true,
      downForMs: 0,
      draining: d?.drain === true,
      ...(d?.drain === true && d.deadline !== undefined ? { drainDeadline: d.deadline } : {}),
      labels: m.record.labels,
      capacity: capacityOf(m),
      reservedPorts: [],
      dynamicPorts: validRange(m.record.ports) ?? DEFAULT_DYNAMIC_PORTS,
    });
  }
  const allocs: Alloc[] = [];
  for (const a of state.assigns.values()) {
    const status = state.statuses.get(a.alloc.id);
    const hooks = Object.keys(a.spec.hooks ?? {}) as HookName[];
    allocs.push({ ...a.alloc, ...(hooks.length === 0 ? {} : { hooks }), ...(status === undefined || status.host !== a.alloc.host ? {} : { status }) });
    if (!hosts.has(a.alloc.host)) {
      const last = opts.lastAlive.get(a.alloc.host) ?? opts.since;
      const d = state.drains.get(a.alloc.host);
      hosts.set(a.alloc.host, {
        name: a.alloc.host,
        alive: false,
        downForMs: Math.max(0, now - last),
        ...(opts.graceOf?.has(a.alloc.host) === true ? { fenceGraceMs: opts.graceOf.get(a.alloc.host) ?? opts.fenceGraceMs } : {}),
        draining: d?.drain === true,
        labels: {},
        capacity: { cpu: 0, memory: 0 },
        reservedPorts: [],
        dynamicPorts: DEFAULT_DYNAMIC_PORTS,
      });
    }
  }
  const services: ServiceSpec[] = [];
  // Every spec as the controller runs it: with its namespace's defaults for what it does not say (policy.ts).
  const effective = (spec: ServiceSpec): ServiceSpec => effectiveSpec(spec, state.policies);
  for (const [name, s] of state.services) {
    if (opts.override?.name === name) continue;
    if (s.spec !== undefined) services.push(effective(specInForce(state, name)?.spec ?? s.spec));
    else if (s.removed === true) {
      // A signed removal: count 0 of whatever version its instances run, so every one of them is stopped.
      const any = [...state.assigns.values()].find((a) => a.alloc.service === name);
      if (any !== undefined) services.push(effective({ ...any.spec, count: 0 }));
    }
  }
  if (opts.override !== undefined) services.push(effective(opts.override));
  // Allocs whose assignment is gone but whose agent still reports them stopping: they hold their host's resources.
  const stopping: StoppingAlloc[] = [];
  for (const [id, st] of state.statuses) {
    if (st.state !== 'stopping' || st.stopping === undefined || state.assigns.has(id)) continue;
    stopping.push({ id, host: st.host, service: st.stopping.service, index: st.stopping.index, resources: st.stopping.resources, ports: st.stopping.ports });
  }
  return {
    now,
    hosts: [...hosts.values()],
    services,
    allocs,
    fenceGraceMs: opts.fenceGraceMs,
    ...(stopping.length === 0 ? {} : { stopping }),
    ...(state.policies === undefined || state.policies.size === 0 ? {} : { policies: state.policies }),
  };
}

/**
 * The operator's current service records, as the plan engine takes them, each with the count in force (scale.ts).
 * A count chosen within the bounds is a change of its own: its trigger is the record's deployedAt with the scale
 * record's time after it (`<deployedAt>+scale@<at>`), so the plan engine makes a scale plan for it, as for the
 * operator's `backplane scale`; the version does not change.
 */
export function serviceInputs(state: SchedState): Map<string, ServiceInput> {
  const out = new Map<string, ServiceInput>();
  for (const [name, s] of state.services) {
    const ref = { version: s.spec?.version ?? '', record: s.record, by: s.by, deployedAt: s.deployedAt };
    const scaled = specInForce(state, name);
    out.set(
      name,
      s.spec === undefined
        ? { removed: true, ref }
        : scaled === undefined
          ? { spec: effectiveSpec(s.spec, state.policies), ref }
          : { spec: effectiveSpec(scaled.spec, state.policies), ref: { ...ref, deployedAt: `${s.deployedAt}+scale@${scaled.at}` } },
    );
  }
  return out;
}

/**
 * The spec in a plan's SpecRef as the controller runs it: with its namespace's defaults (a plan's own strategy was
 * fixed when it started; a changed default applies from the service's next plan).
 */
export function specOfRefIn(state: Pick<SchedState, 'policies'>, view: TrustView, service: string, ref: SpecRef): ServiceSpec | undefined {
  const spec = specOfRef(view, service, ref);
  return spec === undefined ? undefined : effectiveSpec(spec, state.policies);
}

/** A service's spec with the count in force, when a scale record (within the bounds, for this deploy) sets it. */
export function specInForce(state: SchedState, name: string): { spec: ServiceSpec; at: number } | undefined {
  const s = state.services.get(name);
  const rec = state.scales.get(name);
  if (s?.spec === undefined || !scaleInForce(s.spec, s.deployedAt, rec)) return undefined;
  return { spec: { ...s.spec, count: rec.count }, at: rec.at };
}
