/**
 * The PostgreSQL backplane's brain: a pure function from what the controller sees (the members of the object's
 * service, their hosts, what each member reported through its instance API) to what it wants (each member's config,
 * the `primary` and `replicas` discovery entries, a status, events, rollout gates). No clock, no store, no I/O.
 *
 * The rules that keep two writable primaries from ever existing (docs/backplanes/postgres.md):
 *  1. A member never starts postgres writable: it starts a standby, or nothing. It becomes primary only when its
 *     config says `role: primary` with an epoch it has not applied in its life *and* the run id it reports now
 *     (member.ts: its own start and every start and exit of postgres change it). A primary whose postgres exits,
 *     or whose member restarts, stays down until told again, with a new epoch.
 *  2. A new primary is chosen only when the old one is certainly not writable: its run id changed since it became
 *     primary (it reported `down`, or restarted: read-only), its alloc is gone, or its host is fenced (gone past its
 *     fence: its agent has killed it). A host that merely stopped renewing its lease is not enough.
 *  3. The standby with the highest LSN (received and flushed) wins. In synchronous mode the last synchronous standby
 *     the primary named must be among the candidates (it holds every acknowledged commit; the highest LSN is then
 *     at least its LSN); while it is not, nothing is promoted. `<name>.primary` lists the primary only once it
 *     reports `role: primary` at the current epoch.
 * A planned switchover (rolling update, replicas first) tells the old primary to step down (a fast shutdown, which
 * streams all its WAL to the standbys first); once it reports down, the most advanced standby — the switchover's
 * target on a tie — is promoted as in a failover, and the old primary rewinds and follows it.
 */
import { z } from 'zod';
import type { AppGate, AppStatus, DiscoveryTarget, Member, ReactInput, ReactOutput } from '../sdk.js';
import { failoverMemorySchema, lastFailoverStatus, primaryLastGate } from '../kit.js';

/** The port name of postgres on every member. */
export const PG_PORT = 'pg';

/** The application_name / cluster_name a member's postgres uses, from its alloc id: `main.0.3fa9c0d1` -> `main_0_3fa9c0d1`. */
export function pgName(allocId: string): string {
  return allocId.toLowerCase().replace(/[^a-z0-9_]/g, '_').slice(0, 63);
}

export interface PgTarget {
  readonly allocId: string;
  readonly address: string;
  readonly port: number;
}

/** What the backplane tells a member (alloc.config). */
export interface PgConfig {
  readonly epoch: number;
  readonly role: 'primary' | 'replica';
  /** Its application_name and cluster_name (pgName of its alloc id). */
  readonly name: string;
  /** With role primary: the run id the member must report now to promote (a restarted one has another). */
  readonly runId?: string;
  /** With role primary in synchronous mode: `synchronous_standby_names = FIRST 1 (<sync...>)`; [] or absent: none. */
  readonly sync?: readonly string[];
  /** With role replica: whom to stream from (absent before the first primary: wait). */
  readonly primary?: PgTarget;
}

export interface PgStandbyReport {
  readonly name: string;
  /** pg_stat_replication.state: streaming, catchup, startup, backup. */
  readonly state: string;
  /** sync_state: sync, potential, async, quorum. */
  readonly sync: string;
  /** Bytes between the primary's current WAL LSN and the standby's flushed LSN. */
  readonly lagBytes: number;
}

/** What a member reports (report.state). */
export interface PgMemberState {
  readonly role: 'primary' | 'replica' | 'down' | 'starting';
  /** The epoch it last applied as primary, or the config epoch it follows. */
  readonly epoch: number;
  /** `<member start>-<postgres generation>`: changes when the member restarts and whenever postgres starts or exits. */
  readonly runId?: string;
  /** LSN as a number: the primary's current WAL LSN; a standby's received (flushed) LSN, else its replayed LSN. */
  readonly offset?: number;
  /** The WAL timeline postgres is on. */
  readonly timeline?: number;
  /** A standby: its WAL receiver is streaming from the primary it was told. */
  readonly link?: 'up' | 'down';
  /** The alloc id a standby streams from (or tries to). */
  readonly following?: string;
  /** Whether it holds a data directory (false: a new member not seeded yet). */
  readonly hasData?: boolean;
  /** A primary: its standbys as pg_stat_replication shows them. */
  readonly standbys?: readonly PgStandbyReport[];
}

const stateSchema = z.object({
  role: z.enum(['primary', 'replica', 'down', 'starting']),
  epoch: z.number().int().min(0),
  runId: z.string().max(100).optional(),
  offset: z.number().min(0).optional(),
  timeline: z.number().int().min(0).optional(),
  link: z.enum(['up', 'down']).optional(),
  following: z.string().max(200).optional(),
  hasData: z.boolean().optional(),
  standbys: z.array(z.object({ name: z.string().max(100), state: z.string().max(40), sync: z.string().max(40), lagBytes: z.number() })).max(100).optional(),
});

const memorySchema = z.object({
  epoch: z.number().int().min(0),
  /** The member told to be primary last, with the run id it must keep (updated once it reports primary). */
  primary: z.object({ allocId: z.string(), runId: z.string(), since: z.number(), confirmed: z.boolean() }).optional(),
  /** The primary is certainly not writable any more; no successor chosen yet. */
  lost: z.object({ at: z.number(), reason: z.string() }).optional(),
  /** A planned handover in progress: `from` was told to step down so that `to` takes over. */
  switchover: z.object({ from: z.string(), to: z.string(), at: z.number() }).optional(),
  /** The standby the primary last reported as synchronous (alloc id). */
  syncStandby: z.string().optional(),
  failover: failoverMemorySchema.optional(),
});
export type PgMemory = z.infer<typeof memorySchema>;
type Failover = NonNullable<PgMemory['failover']>;

export interface PgParamsForReact {
  readonly synchronous?: boolean;
}

const MAX_TIMELINE = 40;
/** After the primary is lost, how long to wait for standbys' final LSNs (a report with link down) before choosing. */
export const SETTLE_MS = 1500;
/** A report older than this does not make a member a candidate. */
export const FRESH_MS = 15_000;
/** While something is awaited, ask to be called again this soon. */
const WAKE_MS = 250;

export function readState(m: Member): PgMemberState | undefined {
  const r = stateSchema.safeParse(m.report?.state);
  return r.success ? (r.data as PgMemberState) : undefined;
}

export function readConfig(m: Member): PgConfig | undefined {
  const c = m.config;
  if (c === undefined || typeof c.epoch !== 'number' || (c.role !== 'primary' && c.role !== 'replica')) return undefined;
  return c as unknown as PgConfig;
}

/** The memory handed back, or one rebuilt from the members' configs (never restarting epochs at 0). */
function readMemory(raw: unknown, members: readonly Member[], now: number): PgMemory {
  const parsed = memorySchema.safeParse(raw);
  const mem: PgMemory = parsed.success ? structuredClone(parsed.data) : { epoch: 0 };
  let maxEpoch = mem.epoch;
  for (const m of members) {
    const c = readConfig(m);
    if (c !== undefined) maxEpoch = Math.max(maxEpoch, c.epoch);
    const s = readState(m);
    if (s !== undefined) maxEpoch = Math.max(maxEpoch, s.epoch);
  }
  if (!parsed.success || mem.primary === undefined) {
    const p = members
      .map((m) => ({ m, c: readConfig(m) }))
      .filter((x) => x.c?.role === 'primary' && x.c.runId !== undefined)
      .sort((a, b) => (b.c?.epoch ?? 0) - (a.c?.epoch ?? 0))[0];
    if (p?.c?.runId !== undefined && p.c.epoch === maxEpoch) mem.primary = { allocId: p.m.allocId, runId: p.c.runId, since: now, confirmed: false };
  }
  mem.epoch = maxEpoch;
  return mem;
}

/** Why the member holding the primary role is certainly not writable now, or undefined when it may be. */
export function primaryLost(m: Member | undefined, runId: string): string | undefined {
  if (m === undefined) return 'its instance is gone';
  if (m.fenced) return `its host ${m.host} is fenced (gone past its fence: its agent has stopped it)`;
  const s = readState(m);
  if (s?.runId !== undefined && s.runId !== runId) {
    return s.role === 'down' ? 'its postgres exited' : `its member or postgres restarted (run ${runId} -> ${s.runId}): it came back read-only`;
  }
  return undefined;
}

interface Candidate {
  readonly m: Member;
  readonly s: PgMemberState & { readonly runId: string };
}

function fresh(m: Member, now: number): boolean {
  return m.report !== undefined && now - m.report.at <= FRESH_MS;
}

/** Standbys that run now and could be promoted: best (highest LSN, then lowest index) first. */
function candidates(members: readonly Member[], now: number, exclude?: string): Candidate[] {
  const out: Candidate[] = [];
  for (const m of members) {
    if (m.allocId === exclude) continue;
    const s = readState(m);
    if (s === undefined || s.role !== 'replica' || s.runId === undefined || s.offset === undefined) continue;
    if (m.stopping || !m.hostAlive || m.fenced || !fresh(m, now)) continue;
    out.push({ m, s: { ...s, runId: s.runId } });
  }
  return out.sort((a, b) => (b.s.offset ?? 0) - (a.s.offset ?? 0) || a.m.index - b.m.index || a.m.allocId.localeCompare(b.m.allocId));
}

function target(m: Member): PgTarget | undefined {
  const port = m.ports[PG_PORT];
  if (port === undefined) return undefined;
  return { allocId: m.allocId, address: m.address === '' ? '127.0.0.1' : m.address, port };
}

function note(f: Failover | undefined, at: number, message: string): void {
  if (f === undefined) return;
  f.timeline.push({ at, message: message.slice(0, 500) });
  if (f.timeline.length > MAX_TIMELINE) f.timeline.splice(0, f.timeline.length - MAX_TIMELINE);
}

function paramsOf(p: unknown): PgParamsForReact {
  if (typeof p === 'object' && p !== null && 'synchronous' in p && typeof p.synchronous === 'boolean') return { synchronous: p.synchronous };
  return {};
}

export function reactPostgres(input: ReactInput<unknown>): ReactOutput {
  const { now, object } = input;
  const name = object.name;
  const synchronous = paramsOf(object.params).synchronous === true;
  const svc = input.services.find((s) => s.name === name);
  const all = input.members.filter((m) => m.service === name).sort((a, b) => a.index - b.index || a.allocId.localeCompare(b.allocId));
  const byId = new Map(all.map((m) => [m.allocId, m]));
  const byName = new Map(all.map((m) => [pgName(m.allocId), m]));
  const mem = readMemory(input.memory, all, now);
  const events: string[] = [];
  let wake = false;

  const promote = (m: Member, runId: string, offset: number | undefined, why: string): void => {
    mem.epoch += 1;
    mem.primary = { allocId: m.allocId, runId, since: now, confirmed: false };
    mem.lost = undefined;
    mem.switchover = undefined;
    mem.syncStandby = undefined;
    if (mem.failover !== undefined) mem.failover.to = m.allocId;
    note(mem.failover, now, `promoted ${m.allocId} on ${m.host} (LSN ${offset ?? 0}) at epoch ${mem.epoch}${why}`);
    events.push(`${name}: ${m.allocId} on ${m.host} is told to become primary at epoch ${mem.epoch} (LSN ${offset ?? 0})${why}`);
  };

  // 1. The primary: confirmed once it reports primary at the epoch; lost once certainly not writable.
  if (mem.primary !== undefined && mem.lost === undefined) {
    const pm = byId.get(mem.primary.allocId);
    const ps = pm === undefined ? undefined : readState(pm);
    if (pm !== undefined && !pm.fenced && ps?.role === 'primary' && ps.epoch === mem.epoch && ps.runId !== undefined) {
      // The postgres it runs now is the writable one (a bootstrap or restart-as-primary starts a new one).
      mem.primary.runId = ps.runId;
      mem.primary.confirmed = true;
      const sync = ps.standbys?.find((s) => s.sync === 'sync');
      const syncMember = sync === undefined ? undefined : byName.get(sync.name);
      if (syncMember !== undefined) mem.syncStandby = syncMember.allocId;
    }
    const why = primaryLost(pm, mem.primary.runId);
    if (why !== undefined) {
      const at = ps?.role === 'down' && pm?.report !== undefined ? Math.min(pm.report.at, now) : now;
      mem.lost = { at, reason: why };
      const planned = mem.switchover !== undefined && mem.switchover.from === mem.primary.allocId;
      if (!planned) mem.failover = { at, from: mem.primary.allocId, to: '', reason: `primary ${mem.primary.allocId} lost: ${why}`, timeline: [], done: [] };
      note(mem.failover, at, `primary ${mem.primary.allocId}${pm === undefined ? '' : ` on ${pm.host}`} ${planned ? 'stepped down' : `lost: ${why}`}`);
      events.push(`${name}: primary ${mem.primary.allocId} ${planned ? 'stepped down (switchover)' : `lost: ${why}`}`);
    } else if (pm !== undefined && !pm.hostAlive) {
      // Rule 2: a host that stopped renewing may still run a writable primary. Wait for its fence.
      wake = true;
    }
  }

  // 2. No primary yet, or a lost one: choose.
  let waitingFor: string | undefined;
  if (mem.primary === undefined) {
    // First primary: the lowest-index member that reported, once no member holds data (else the most advanced).
    const reported = all.filter((m) => !m.stopping && m.hostAlive && fresh(m, now) && readState(m)?.runId !== undefined);
    const withData = reported.filter((m) => readState(m)?.hasData === true && readState(m)?.offset !== undefined);
    const pick = (withData.length > 0 ? withData.sort((a, b) => (readState(b)?.offset ?? 0) - (readState(a)?.offset ?? 0) || a.index - b.index) : reported)[0];
    const ps = pick === undefined ? undefined : readState(pick);
    if (pick !== undefined && ps?.runId !== undefined) {
      if (withData.length > 0) mem.failover = { at: now, to: pick.allocId, reason: 'no primary known: the most advanced member', timeline: [], done: [] };
      promote(pick, ps.runId, ps.offset, withData.length > 0 ? '' : ' (first primary: initdb)');
    } else {
      waitingFor = 'a member to report';
      wake = all.length > 0;
    }
  } else if (mem.lost !== undefined) {
    const oldId = mem.primary.allocId;
    let cands = candidates(all, now, oldId);
    const sw = mem.switchover;
    const lostAt = mem.lost.at;
    // A standby whose last report is from before the loss and still says its link is up has not told its final
    // LSN yet: wait for it a little (its member reports a link change at once).
    const settling = now - lostAt < SETTLE_MS && cands.some((c) => c.s.link === 'up' && (c.m.report?.at ?? 0) < lostAt);
    const best = cands[0];
    const syncId = mem.syncStandby;
    const syncOk = !synchronous || syncId === undefined || syncId === oldId || cands.some((c) => c.m.allocId === syncId);
    if (best !== undefined && sw !== undefined) {
      const t = cands.find((c) => c.m.allocId === sw.to && (c.s.offset ?? 0) >= (best.s.offset ?? 0));
      if (t !== undefined) cands = [t, ...cands.filter((c) => c !== t)];
    }
    const chosen = cands[0];
    const old = byId.get(oldId);
    const os = old === undefined ? undefined : readState(old);
    if (settling) {
      wake = true;
      waitingFor = "the standbys' final LSNs";
    } else if (chosen !== undefined && syncOk) {
      promote(chosen.m, chosen.s.runId, chosen.s.offset, sw !== undefined ? ' (switchover)' : '');
    } else if (old !== undefined && os?.runId !== undefined && os.hasData === true && os.role !== 'primary' && !old.stopping && !old.fenced && old.hostAlive && fresh(old, now)) {
      // No standby may take over, but the old primary's member is back with its data (all it ever acknowledged):
      // it becomes primary again at a new epoch.
      promote(old, os.runId, os.offset, syncOk ? ' (no standby to promote: the old primary again)' : ` (the synchronous standby ${syncId ?? ''} is not available: the old primary again)`);
    } else {
      wake = true;
      waitingFor = syncOk ? 'a standby to promote' : `the synchronous standby ${syncId ?? ''} (it holds the last acknowledged commits)`;
    }
  }

  // 3. Rolling update: when the primary is the only member left on the old version, it steps down for an
  //    up-to-date, streaming standby.
  const cur = mem.primary !== undefined && mem.lost === undefined ? byId.get(mem.primary.allocId) : undefined;
  if (svc !== undefined && cur !== undefined && mem.primary?.confirmed === true && mem.switchover === undefined && cur.version !== svc.version && !cur.stopping) {
    const othersOld = all.filter((m) => m !== cur && !m.stopping && m.version !== svc.version);
    const linkedNew = candidates(all, now, cur.allocId).filter((c) => c.m.version === svc.version && c.s.link === 'up' && c.s.following === cur.allocId);
    const t = (synchronous && mem.syncStandby !== undefined ? linkedNew.find((c) => c.m.allocId === mem.syncStandby) : undefined) ?? linkedNew[0];
    if (othersOld.length === 0 && t !== undefined && readState(cur)?.role === 'primary') {
      mem.switchover = { from: cur.allocId, to: t.m.allocId, at: now };
      mem.failover = { at: now, from: cur.allocId, to: t.m.allocId, reason: `switchover: ${cur.allocId} runs the old version ${cur.version}`, timeline: [], done: [] };
      note(mem.failover, now, `switchover: ${cur.allocId} is told to step down for ${t.m.allocId}`);
      events.push(`${name}: switchover from ${cur.allocId} (version ${cur.version}) to ${t.m.allocId} (version ${t.m.version})`);
    }
  }

  // 4. Configs: exactly one member may be told primary, and only the member chosen with its run id.
  const primaryMember = mem.primary === undefined ? undefined : byId.get(mem.primary.allocId);
  const primaryTarget = primaryMember === undefined ? undefined : target(primaryMember);
  const swTo = mem.switchover === undefined ? undefined : byId.get(mem.switchover.to);
  const swTarget = swTo === undefined ? undefined : target(swTo);
  const standbyNames = all.filter((m) => m !== primaryMember && !m.stopping).map((m) => pgName(m.allocId));
  const config: Record<string, PgConfig> = {};
  for (const m of all) {
    const prev = readConfig(m);
    const base = { epoch: mem.epoch, name: pgName(m.allocId) };
    if (mem.switchover !== undefined && m.allocId === mem.switchover.from && swTarget !== undefined && mem.lost === undefined) {
      config[m.allocId] = { ...base, role: 'replica', primary: swTarget };
    } else if (mem.primary !== undefined && m.allocId === mem.primary.allocId && mem.lost === undefined) {
      config[m.allocId] = { ...base, role: 'primary', runId: mem.primary.runId, ...(synchronous ? { sync: standbyNames } : {}) };
    } else if (mem.primary !== undefined && m.allocId === mem.primary.allocId) {
      // Lost, no successor yet: keep what it had (the run id guard keeps it from becoming writable again).
      config[m.allocId] = prev ?? { ...base, role: 'replica' };
    } else if (primaryTarget !== undefined && mem.lost === undefined) {
      config[m.allocId] = { ...base, role: 'replica', primary: primaryTarget };
    } else if (prev !== undefined && prev.role === 'replica') {
      config[m.allocId] = prev;
    } else {
      config[m.allocId] = { ...base, role: 'replica' };
    }
  }

  // 5. Discovery, status, timeline.
  const ps = primaryMember === undefined ? undefined : readState(primaryMember);
  const writable =
    primaryMember !== undefined && mem.lost === undefined && !primaryMember.fenced && ps?.role === 'primary' && ps.epoch === mem.epoch && ps.runId === mem.primary?.runId;
  const standbyStates = all.filter((m) => m !== primaryMember && !m.stopping).map((m) => ({ m, s: readState(m) }));
  const linked = standbyStates.filter((x) => x.s?.role === 'replica' && x.s.link === 'up' && primaryMember !== undefined && x.s.following === primaryMember.allocId && mem.lost === undefined);
  const discovery: Record<string, DiscoveryTarget[]> = {
    primary: writable && primaryMember !== undefined ? [{ allocId: primaryMember.allocId, port: PG_PORT }] : [],
    replicas: linked.map((x) => ({ allocId: x.m.allocId, port: PG_PORT })),
  };

  const f = mem.failover;
  if (f !== undefined && f.to !== '' && primaryMember?.allocId === f.to) {
    if (writable && !f.done.includes('writable')) {
      f.done.push('writable');
      note(f, primaryMember.report?.at ?? now, `${f.to} reports primary at epoch ${mem.epoch} (timeline ${ps?.timeline ?? '?'}): it accepts writes; ${name}.primary -> ${f.to}`);
      events.push(`${name}: ${f.to} is primary at epoch ${mem.epoch}`);
    }
    const old = f.from === undefined ? undefined : linked.find((x) => x.m.allocId === f.from);
    if (old !== undefined && !f.done.includes('rejoined')) {
      f.done.push('rejoined');
      note(f, old.m.report?.at ?? now, `old primary ${f.from} rejoined as a standby of ${f.to}`);
      events.push(`${name}: old primary ${f.from} rejoined as a standby`);
    }
    const live = standbyStates.filter((x) => x.m.hostAlive && x.s !== undefined && x.s.role !== 'down');
    if (writable && live.length > 0 && linked.length === live.length && !f.done.includes('linked')) {
      f.done.push('linked');
      note(f, now, `${linked.length} standby${linked.length === 1 ? '' : 's'} streaming from ${f.to}`);
    }
  }

  // Per-standby lag and sync state, from the primary's pg_stat_replication.
  const fromPrimary = new Map((writable ? (ps?.standbys ?? []) : []).map((s) => [s.name, s]));
  const replicasWanted = Math.max(0, (svc?.count ?? all.length) - 1);
  let maxLag = 0;
  const fields: Record<string, string | number | boolean> = {
    primary: writable && primaryMember !== undefined ? primaryMember.allocId : '',
    epoch: mem.epoch,
    synchronous,
    'standbys streaming': linked.length,
    standbys: replicasWanted,
  };
  if (primaryMember !== undefined) fields['primary host'] = primaryMember.host;
  if (ps?.timeline !== undefined) fields.timeline = ps.timeline;
  const members: Record<string, { role?: string; message?: string }> = {};
  const standbyLines: string[] = [];
  for (const m of all) {
    const s = readState(m);
    const r = fromPrimary.get(pgName(m.allocId));
    const role = s?.role === 'replica' ? 'standby' : (s?.role ?? (m.state === undefined || m.state === 'pending' ? 'pending' : 'unknown'));
    let message = m.report?.message ?? `${m.state ?? 'pending'} on ${m.host}`;
    if (r !== undefined && m !== primaryMember) {
      maxLag = Math.max(maxLag, r.lagBytes);
      fields[`${m.allocId} lag (bytes)`] = r.lagBytes;
      fields[`${m.allocId} sync`] = r.sync;
      message = `standby (${r.sync}, ${r.state}), lag ${r.lagBytes} bytes, on ${m.host}`;
      standbyLines.push(`${m.allocId} ${r.sync} lag ${r.lagBytes} B`);
    }
    members[m.allocId] = { role: (m.stopping ? `${role} (stopping)` : role).slice(0, 64), message: message.slice(0, 200) };
  }
  fields['max lag (bytes)'] = maxLag;
  let summary: string;
  if (mem.lost !== undefined) summary = `no primary: ${mem.failover?.reason ?? mem.lost.reason}; waiting for ${waitingFor ?? 'a standby to promote'}`;
  else if (primaryMember === undefined) summary = `no primary yet: waiting for ${waitingFor ?? 'a member to report'}`;
  else if (!writable) summary = `${primaryMember.allocId} on ${primaryMember.host} is becoming primary (epoch ${mem.epoch})`;
  else summary = `primary ${primaryMember.allocId} on ${primaryMember.host} (epoch ${mem.epoch}); ${linked.length}/${replicasWanted} standbys streaming${standbyLines.length > 0 ? `: ${standbyLines.join(', ')}` : ''}`;
  if (primaryMember !== undefined && !primaryMember.hostAlive && !primaryMember.fenced && mem.lost === undefined) summary += `; its host ${primaryMember.host} is not responding: waiting for its fence before promoting`;
  if (mem.switchover !== undefined) summary += `; switchover to ${mem.switchover.to} in progress`;

  const status: AppStatus = {
    summary: summary.slice(0, 500),
    fields,
    members,
    ...lastFailoverStatus(f),
  };

  // 6. Rollout gates: standbys first, the primary last; the primary is held while it is primary on an old version
  //    (the switchover above releases it).
  const gates: Record<string, AppGate> = {};
  if (svc !== undefined) gates[name] = primaryLastGate(all, svc, mem.lost === undefined ? primaryMember : undefined);

  return {
    memory: mem,
    config: config as unknown as Record<string, Record<string, unknown>>,
    discovery,
    status,
    gates,
    ...(events.length > 0 ? { events } : {}),
    ...(wake || mem.switchover !== undefined || (mem.primary !== undefined && !writable) ? { wakeInMs: WAKE_MS } : {}),
  };
}
