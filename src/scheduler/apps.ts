/**
 * The controller's side of application backplanes, as pure functions: what each object's backplane is shown
 * (`appWork`: its members, their hosts, what each instance reported) and what of its answer is taken
 * (`applyReact`): configs only for its own live members, discovery entries only over its own members' ports, counts
 * only for its own services, and everything bounded. The controller (controller.ts) runs the backplanes in between
 * (src/backplanes/host.ts) and commits the result with its fenced writes.
 */
import type { ReactResult } from '../backplanes/host.js';
import type { Member, ReactInput, ServiceView } from '../backplanes/sdk.js';
import { canonicalJson } from '../util/canonical.js';
import type { AppGate, AppStateRecord, DiscoveryTarget } from './records.js';
import type { SchedState } from './state.js';
import type { ClusterSnapshot, PlanEvent } from './types.js';

export interface AppWork {
  readonly name: string;
  readonly kind: string;
  readonly deployedAt: string;
  readonly services: readonly string[];
  readonly input: ReactInput<unknown>;
  readonly prev?: AppStateRecord;
  /** allocId -> the id of the action its assignment asks for now. */
  readonly requested: ReadonlyMap<string, string>;
}

/** One unit of work per deployed (not removed) application object. */
export function appWork(state: SchedState, snapshot: ClusterSnapshot, now: number): AppWork[] {
  const address = new Map<string, string>();
  for (const m of state.members) {
    const ip: unknown = m.verified ? m.record?.facts.ipv4 : undefined;
    if (typeof ip === 'string') address.set(m.host, ip);
  }
  const hosts = new Map(snapshot.hosts.map((h) => [h.name, h]));
  const counts = new Map(snapshot.services.map((s) => [s.name, s.count]));
  const out: AppWork[] = [];
  for (const [name, { record }] of state.apps) {
    if ('removed' in record) continue;
    const own = new Set(record.services);
    const services: ServiceView[] = [];
    for (const svc of record.services) {
      const s = state.services.get(svc);
      if (s?.spec === undefined || s.spec.app?.name !== name) continue;
      const plan = state.plans.get(svc);
      services.push({
        name: svc,
        count: counts.get(svc) ?? s.spec.count,
        version: s.spec.version,
        ...(s.spec.app.role === undefined ? {} : { role: s.spec.app.role }),
        ...(s.spec.scale === undefined ? {} : { scale: s.spec.scale }),
        ...(plan !== undefined && (plan.status === 'running' || plan.status === 'paused' || plan.status === 'waiting') ? { plan: { id: plan.id, kind: plan.kind, status: plan.status, toVersion: plan.toVersion } } : {}),
      });
    }
    const members: Member[] = [];
    const requested = new Map<string, string>();
    const hostFacts = (host: string): { hostAlive: boolean; fenced: boolean } => {
      const h = hosts.get(host);
      if (h === undefined) return { hostAlive: false, fenced: true };
      return { hostAlive: h.alive, fenced: !h.alive && h.downForMs > (h.fenceGraceMs ?? snapshot.fenceGraceMs) };
    };
    for (const a of state.assigns.values()) {
      if (!own.has(a.alloc.service) || a.spec.app?.name !== name) continue;
      const st = state.statuses.get(a.alloc.id);
      const status = st !== undefined && st.host === a.alloc.host ? st : undefined;
      if (a.alloc.action !== undefined) requested.set(a.alloc.id, a.alloc.action.id);
      members.push({
        allocId: a.alloc.id,
        service: a.alloc.service,
        index: a.alloc.index,
        version: a.alloc.version,
        host: a.alloc.host,
        address: address.get(a.alloc.host) ?? '',
        ports: a.alloc.ports,
        ...(status === undefined ? {} : { state: status.state, since: status.since }),
        restarts: status?.restarts ?? 0,
        ...hostFacts(a.alloc.host),
        stopping: false,
        ...(a.alloc.config === undefined ? {} : { config: a.alloc.config }),
        ...(status?.app === undefined ? {} : { report: status.app }),
        ...(status?.action === undefined ? {} : { action: status.action }),
        actions: Object.keys(a.spec.actions ?? {}).sort(),
      });
    }
    // Stopped by a rollout or a scale-down but not gone yet: the backplane must know it may still serve.
    for (const [id, st] of state.statuses) {
      if (st.state !== 'stopping' || st.stopping === undefined || state.assigns.has(id) || !own.has(st.stopping.service)) continue;
      members.push({
        allocId: id,
        service: st.stopping.service,
        index: st.stopping.index,
        version: st.version ?? '',
        host: st.host,
        address: address.get(st.host) ?? '',
        ports: st.stopping.ports,
        state: 'stopping',
        since: st.since,
        restarts: st.restarts,
        ...hostFacts(st.host),
        stopping: true,
        ...(st.app === undefined ? {} : { report: st.app }),
        actions: [],
      });
    }
    members.sort((x, y) => (x.service < y.service ? -1 : x.service > y.service ? 1 : x.index - y.index || (x.allocId < y.allocId ? -1 : 1)));
    const prev = state.appStates.get(name);
    out.push({
      name,
      kind: record.object.kind,
      deployedAt: record.deployedAt,
      services: record.services,
      prev,
      requested,
      input: {
        now,
        object: record.object,
        deployedAt: record.deployedAt,
        services,
        members,
        ...(prev?.memory === undefined ? {} : { memory: prev.memory }),
      },
    } as AppWork);
  }
  return out;
}

export interface AppApplied {
  readonly record: AppStateRecord;
  /** The record differs from the stored one (beyond its timestamp): write it. */
  readonly changed: boolean;
  /** allocId -> new config, only where it differs from what the member has. */
  readonly configs: ReadonlyMap<string, Readonly<Record<string, unknown>>>;
  /** allocId -> the action to ask of it, only where it is a new request for an action its spec declares. */
  readonly actions: ReadonlyMap<string, { readonly name: string; readonly id: string }>;
  readonly events: readonly PlanEvent[];
  readonly asks: readonly { readonly service: string; readonly count: number; readonly by: string; readonly reason?: string }[];
  /** Wall-clock ms when the backplane wants to be asked again. */
  readonly wakeAt?: number;
}

export function applyReact(work: AppWork, result: ReactResult, now: number): AppApplied {
  const prev = work.prev !== undefined && work.prev.kind === work.kind ? work.prev : undefined;
  const live = new Map(work.input.members.filter((m) => !m.stopping).map((m) => [m.allocId, m]));
  const events: PlanEvent[] = [];
  if (!result.ok) {
    const record: AppStateRecord = {
      name: work.name,
      kind: work.kind,
      deployedAt: work.deployedAt,
      updatedAt: now,
      ...(prev?.memory === undefined ? {} : { memory: prev.memory }),
      ...(prev?.status === undefined ? {} : { status: prev.status }),
      discovery: prev?.discovery ?? {},
      gates: prev?.gates ?? {},
      error: { message: result.error.slice(0, 4000), at: prev?.error?.message === result.error.slice(0, 4000) ? prev.error.at : now },
    };
    if (prev?.error?.message !== record.error?.message) events.push({ service: work.name, message: `backplane ${work.kind} failed: ${result.error}; its last state stays (members keep their roles)` });
    return { record, changed: !same(prev, record), configs: new Map(), actions: new Map(), events, asks: [] };
  }
  const out = result.output;
  const configs = new Map<string, Readonly<Record<string, unknown>>>();
  for (const [id, config] of Object.entries(out.config ?? {})) {
    const m = live.get(id);
    if (m === undefined) continue;
    if (m.config === undefined || canonicalJson(m.config) !== canonicalJson(config)) configs.set(id, config);
  }
  const actions = new Map<string, { name: string; id: string }>();
  for (const [id, x] of Object.entries(out.exec ?? {})) {
    const m = live.get(id);
    if (m === undefined) continue;
    if (!(m.actions ?? []).includes(x.action)) {
      events.push({ service: work.name, message: `backplane ${work.kind} asked to run "${x.action}" in ${id}, which its spec does not declare: refused` });
      continue;
    }
    // Asked already (in its assignment) or answered: nothing to write.
    if (work.requested.get(id) !== x.id && m.action?.id !== x.id) actions.set(id, { name: x.action, id: x.id });
  }
  const discovery: Record<string, DiscoveryTarget[]> = {};
  for (const [entry, targets] of Object.entries(out.discovery ?? prev?.discovery ?? {})) {
    discovery[entry] = targets.filter((t) => live.get(t.allocId)?.ports[t.port] !== undefined);
  }
  const own = new Set(work.services);
  const gates: Record<string, AppGate> = {};
  for (const [svc, g] of Object.entries(out.gates ?? prev?.gates ?? {})) if (own.has(svc)) gates[svc] = g;
  const asks = Object.entries(out.scale ?? {})
    .filter(([svc]) => own.has(svc))
    .map(([service, count]) => ({ service, count, by: `backplane ${work.kind} (${work.name})` }));
  for (const e of out.events ?? []) events.push({ service: work.name, message: e });
  if (prev?.error !== undefined) events.push({ service: work.name, message: `backplane ${work.kind} works again` });
  const status = out.status ?? prev?.status;
  const record: AppStateRecord = {
    name: work.name,
    kind: work.kind,
    deployedAt: work.deployedAt,
    updatedAt: now,
    ...(out.memory === undefined ? {} : { memory: out.memory }),
    ...(status === undefined ? {} : { status }),
    discovery,
    gates,
  };
  return { record, changed: !same(prev, record), configs, actions, events, asks, ...(out.wakeInMs === undefined ? {} : { wakeAt: now + out.wakeInMs }) };
}

function same(a: AppStateRecord | undefined, b: AppStateRecord): boolean {
  if (a === undefined) return false;
  const { updatedAt: _a, ...x } = a;
  const { updatedAt: _b, ...y } = b;
  return canonicalJson(x) === canonicalJson(y);
}
