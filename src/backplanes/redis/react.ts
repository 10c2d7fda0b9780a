/**
 * The Redis backplane's brain: a pure function from what the controller sees (the members of the object's service,
 * their hosts, what each member reported through its instance API) to what it wants (each member's config, the
 * `primary` and `replicas` discovery entries, a status, events, rollout gates). No clock, no store, no I/O: the
 * controller calls it each pass and commits the answer with its own fenced writes; tests call it over hand-made input.
 *
 * The rules that keep two writable primaries from ever existing (docs/backplanes.md):
 *  1. A member never starts redis writable; it promotes only when its config says `role: primary` with an epoch it has
 *     not applied in its life *and* the run id of the redis it runs now (member.ts). A primary that restarts is
 *     read-only, and a stale promotion meant for its previous incarnation is ignored.
 *  2. A new primary is chosen only when the old one is certainly not writable: it reported `down`, its run id changed
 *     since its promotion (its redis restarted, read-only), its alloc is gone, or its host is fenced (gone past its
 *     fence: its agent has killed it). A host that merely stopped renewing its lease is not enough.
 *  3. The candidate with the highest replication offset wins; `<name>.primary` lists the primary only once it reports
 *     `role: primary` at the current epoch.
 * A planned switchover (rolling upgrade) demotes the old primary first — Redis `FAILOVER TO` hands over without losing
 * writes — and promotes the target only once the old one reports it is a replica.
 */
import { z } from 'zod';
import type { AppGate, AppStatus, DiscoveryTarget, Member, ReactInput, ReactOutput } from '../sdk.js';
import { failoverMemorySchema, lastFailoverStatus, primaryLastGate } from '../kit.js';

/** The port name of the redis server on every member. */
export const REDIS_PORT = 'redis';

/** What the backplane tells a member (alloc.config). */
export interface RedisConfig {
  readonly epoch: number;
  readonly role: 'primary' | 'replica';
  /** With role primary: the run id of the redis it must be running to promote (a restarted one has another). */
  readonly runId?: string;
  /** With role replica: whom to replicate from (absent before the first primary: stay read-only, alone). */
  readonly primary?: { readonly allocId: string; readonly address: string; readonly port: number };
  /** A primary told to become a replica in a switchover: hand over with `FAILOVER TO` (no lost writes), not `REPLICAOF`. */
  readonly failover?: boolean;
}

/** What a member reports (report.state). */
export interface RedisMemberState {
  readonly role: 'primary' | 'replica' | 'down' | 'starting';
  /** The epoch it last applied (as primary, or the config epoch it follows). */
  readonly epoch: number;
  /** The redis server's run_id: a new one on every start. */
  readonly runId?: string;
  /** master_repl_offset. */
  readonly offset?: number;
  readonly link?: 'up' | 'down';
  readonly lagMs?: number;
}

const stateSchema = z.object({
  role: z.enum(['primary', 'replica', 'down', 'starting']),
  epoch: z.number().int().min(0),
  runId: z.string().max(64).optional(),
  offset: z.number().min(0).optional(),
  link: z.enum(['up', 'down']).optional(),
  lagMs: z.number().min(0).optional(),
});

/** What this backplane keeps between calls (ReactOutput.memory). */
const memorySchema = z.object({
  epoch: z.number().int().min(0),
  /** The member promoted last, with its redis's run id at promotion. */
  primary: z.object({ allocId: z.string(), runId: z.string(), since: z.number() }).optional(),
  /** The primary is certainly not writable any more; no successor chosen yet. */
  lost: z.object({ at: z.number(), reason: z.string() }).optional(),
  /** A planned handover in progress: `from` was told to become a replica of `to` at `epoch`. */
  switchover: z.object({ from: z.string(), to: z.string(), toRunId: z.string(), epoch: z.number().int(), at: z.number() }).optional(),
  failover: failoverMemorySchema.optional(),
});
export type RedisMemory = z.infer<typeof memorySchema>;
type Failover = NonNullable<RedisMemory['failover']>;

const MAX_TIMELINE = 40;
/** After the primary is lost, how long to wait for replicas' fresh reports (their final offsets) before choosing. */
export const SETTLE_MS = 1000;
/** While something is awaited (a fence, a report), ask to be called again this soon. */
const WAKE_MS = 250;

export function readState(m: Member): RedisMemberState | undefined {
  const r = stateSchema.safeParse(m.report?.state);
  return r.success ? (r.data as RedisMemberState) : undefined;
}

function readConfig(m: Member): RedisConfig | undefined {
  const c = m.config;
  if (c === undefined || typeof c.epoch !== 'number' || (c.role !== 'primary' && c.role !== 'replica')) return undefined;
  return c as unknown as RedisConfig;
}

/**
 * The memory handed back, or one rebuilt from the members' configs when it is missing or unreadable (so a lost
 * memory never restarts the epochs at 0, which members would ignore, nor forgets who the primary is).
 */
function readMemory(raw: unknown, members: readonly Member[], now: number): RedisMemory {
  const parsed = memorySchema.safeParse(raw);
  const mem: RedisMemory = parsed.success ? structuredClone(parsed.data) : { epoch: 0 };
  let maxEpoch = mem.epoch;
  for (const m of members) {
    // During a switchover its old primary already follows the switchover's epoch: that epoch is not in force yet.
    if (mem.switchover !== undefined && m.allocId === mem.switchover.from) continue;
    const c = readConfig(m);
    if (c !== undefined) maxEpoch = Math.max(maxEpoch, c.epoch);
    const s = readState(m);
    if (s !== undefined) maxEpoch = Math.max(maxEpoch, s.epoch);
  }
  // The members' configs are the truth the members act on. A member told primary at an epoch the memory does not know
  // (the memory was lost, or a pass's configs were committed but not its memory) is the primary: adopt it, so a
  // second member is never promoted beside it.
  const p = members
    .map((m) => ({ m, c: readConfig(m) }))
    .filter((x) => x.c?.role === 'primary' && x.c.runId !== undefined)
    .sort((a, b) => (b.c?.epoch ?? 0) - (a.c?.epoch ?? 0))[0];
  if (p?.c?.runId !== undefined && p.c.epoch === maxEpoch && (mem.primary === undefined || p.c.epoch > mem.epoch || (p.c.epoch === mem.epoch && mem.primary.allocId !== p.m.allocId))) {
    mem.primary = { allocId: p.m.allocId, runId: p.c.runId, since: now };
    mem.lost = undefined;
    if (mem.switchover !== undefined && mem.switchover.epoch <= p.c.epoch) mem.switchover = undefined;
  }
  mem.epoch = maxEpoch;
  return mem;
}

/** Why the member holding the primary role is certainly not writable now, or undefined when it may be. */
export function primaryLost(m: Member | undefined, runIdAtPromotion: string): string | undefined {
  if (m === undefined) return 'its instance is gone';
  if (m.fenced) return `its host ${m.host} is fenced (gone past its fence: its agent has stopped it)`;
  const s = readState(m);
  if (s?.role === 'down') return 'its redis exited';
  if (s?.runId !== undefined && s.runId !== runIdAtPromotion) return `its redis restarted (run id ${short(runIdAtPromotion)} -> ${short(s.runId)}): it came back read-only`;
  return undefined;
}

function short(runId: string): string {
  return runId.slice(0, 8);
}

interface Candidate {
  readonly m: Member;
  readonly s: RedisMemberState & { readonly runId: string };
}

/** Members that run a read-only redis now and could be promoted: best (highest offset, then lowest index) first. */
function candidates(members: readonly Member[]): Candidate[] {
  const out: Candidate[] = [];
  for (const m of members) {
    const s = readState(m);
    if (s === undefined || s.role !== 'replica' || s.runId === undefined || s.runId === '') continue;
    if (m.stopping || !m.hostAlive || m.fenced) continue;
    out.push({ m, s: { ...s, runId: s.runId } });
  }
  return out.sort((a, b) => (b.s.offset ?? 0) - (a.s.offset ?? 0) || a.m.index - b.m.index || a.m.allocId.localeCompare(b.m.allocId));
}

function target(m: Member): { allocId: string; address: string; port: number } | undefined {
  const port = m.ports[REDIS_PORT];
  if (port === undefined) return undefined;
  return { allocId: m.allocId, address: m.address === '' ? '127.0.0.1' : m.address, port };
}

function note(f: Failover | undefined, at: number, message: string): void {
  if (f === undefined) return;
  f.timeline.push({ at, message });
  // Reports carry their own times: one may predate the pass that reads it (kept in time order).
  f.timeline.sort((a, b) => a.at - b.at);
  if (f.timeline.length > MAX_TIMELINE) f.timeline.splice(0, f.timeline.length - MAX_TIMELINE);
}

export function reactRedis(input: ReactInput<unknown>): ReactOutput {
  const { now, object } = input;
  const name = object.name;
  const svc = input.services.find((s) => s.name === name);
  const all = input.members.filter((m) => m.service === name).sort((a, b) => a.index - b.index || a.allocId.localeCompare(b.allocId));
  const byId = new Map(all.map((m) => [m.allocId, m]));
  const mem = readMemory(input.memory, all, now);
  const events: string[] = [];
  let wake = false;

  const promote = (c: Candidate, epoch: number, why: string): void => {
    mem.epoch = epoch;
    mem.primary = { allocId: c.m.allocId, runId: c.s.runId, since: now };
    mem.lost = undefined;
    if (mem.failover !== undefined && mem.failover.to === '') mem.failover.to = c.m.allocId;
    note(mem.failover, now, `promoted ${c.m.allocId} on ${c.m.host} (offset ${c.s.offset ?? 0}) at epoch ${epoch}${why}`);
    events.push(`${name}: ${c.m.allocId} on ${c.m.host} is told to become primary at epoch ${epoch} (offset ${c.s.offset ?? 0})${why}`);
  };

  // 1. Is the primary still (possibly) writable?
  if (mem.primary !== undefined && mem.lost === undefined) {
    const pm = byId.get(mem.primary.allocId);
    const why = primaryLost(pm, mem.primary.runId);
    if (why !== undefined) {
      const s = pm === undefined ? undefined : readState(pm);
      // When the member said so (a down report, a new run id), else now.
      const at = s !== undefined && s.role !== 'primary' && pm?.report !== undefined ? Math.min(pm.report.at, now) : now;
      mem.lost = { at, reason: why };
      const planned = mem.switchover !== undefined;
      mem.failover = { at, from: mem.primary.allocId, to: '', reason: `primary ${mem.primary.allocId} lost: ${why}`, timeline: [], done: [] };
      note(mem.failover, at, `primary ${mem.primary.allocId}${pm === undefined ? '' : ` on ${pm.host}`} lost: ${why}`);
      events.push(`${name}: primary ${mem.primary.allocId} lost: ${why}${planned ? ' (during a switchover)' : ''}`);
    } else if (pm !== undefined && !pm.hostAlive) {
      // Rule 2: a host that stopped renewing may still run a writable primary. Wait for its fence.
      wake = true;
    }
  }

  // 2. A lost primary (or none yet): promote the best candidate, once the replicas' last offsets are in.
  if (mem.primary === undefined || mem.lost !== undefined) {
    let cands = candidates(all);
    const sw = mem.switchover;
    if (sw !== undefined) {
      // The switchover's target may already be primary by `FAILOVER TO`: prefer it, so redis is never told otherwise.
      const t = cands.find((c) => c.m.allocId === sw.to && c.s.runId === sw.toRunId);
      if (t !== undefined) cands = [t, ...cands.filter((c) => c !== t)];
      mem.switchover = undefined;
    }
    const lostAt = mem.lost?.at;
    // A replica whose last report is from before the loss and still says its link is up has not told its final
    // offset yet: wait for it a little (its member reports a link change at once).
    const settling = lostAt !== undefined && cands.length > 1 && now - lostAt < SETTLE_MS && cands.some((c) => c.s.link === 'up' && (c.m.report?.at ?? 0) < lostAt);
    const best = cands[0];
    if (best !== undefined && !settling) {
      promote(best, mem.epoch + 1, mem.lost === undefined ? ' (first primary)' : '');
    } else {
      wake = true;
    }
  }

  // 3. Rolling upgrade: when the primary is the only member left on the old version, hand over to an up-to-date replica.
  const cur = mem.primary !== undefined && mem.lost === undefined ? byId.get(mem.primary.allocId) : undefined;
  if (svc !== undefined && cur !== undefined && mem.switchover === undefined && cur.version !== svc.version && !cur.stopping) {
    const othersOld = all.filter((m) => m !== cur && !m.stopping && m.version !== svc.version);
    const t = candidates(all).find((c) => c.m.version === svc.version && c.s.link === 'up' && c.s.epoch === mem.epoch && target(c.m) !== undefined);
    if (othersOld.length === 0 && t !== undefined && readState(cur)?.role === 'primary') {
      mem.switchover = { from: cur.allocId, to: t.m.allocId, toRunId: t.s.runId, epoch: mem.epoch + 1, at: now };
      mem.failover = { at: now, from: cur.allocId, to: t.m.allocId, reason: `switchover: ${cur.allocId} runs the old version ${cur.version}`, timeline: [], done: [] };
      note(mem.failover, now, `switchover: ${cur.allocId} is told to hand over to ${t.m.allocId} (FAILOVER TO) at epoch ${mem.epoch + 1}`);
      events.push(`${name}: switchover from ${cur.allocId} (version ${cur.version}) to ${t.m.allocId} (version ${t.m.version})`);
    }
  }
  if (mem.switchover !== undefined && cur !== undefined) {
    const sw = mem.switchover;
    const from = byId.get(sw.from);
    const fs = from === undefined ? undefined : readState(from);
    const to = byId.get(sw.to);
    const ts = to === undefined ? undefined : readState(to);
    wake = true;
    if (fs?.role === 'replica' && fs.epoch >= sw.epoch && from !== undefined && fs.runId === mem.primary?.runId) {
      // The old primary says it is a replica now: it is not writable. Promote the target (already primary by FAILOVER
      // when that worked; REPLICAOF NO ONE otherwise).
      mem.switchover = undefined;
      if (to !== undefined && ts !== undefined && ts.runId === sw.toRunId && (ts.role === 'replica' || ts.role === 'primary') && !to.fenced) {
        note(mem.failover, Math.min(from.report?.at ?? now, now), `${sw.from} reports it is a replica (epoch ${fs.epoch})`);
        promote({ m: to, s: { ...ts, runId: sw.toRunId } }, sw.epoch, ' (switchover)');
      } else {
        // The target went away meanwhile: the old primary is read-only, so any candidate may take over.
        mem.lost = { at: now, reason: `it handed over to ${sw.to}, which is gone` };
        note(mem.failover, now, `${sw.from} is a replica but the target ${sw.to} is gone: choosing another`);
        const best = candidates(all)[0];
        if (best !== undefined) promote(best, Math.max(mem.epoch, sw.epoch) + 1, '');
      }
    }
  }

  // 4. Configs for every member: exactly one may say primary.
  const primaryMember = mem.primary === undefined ? undefined : byId.get(mem.primary.allocId);
  const primaryTarget = primaryMember === undefined ? undefined : target(primaryMember);
  const config: Record<string, RedisConfig> = {};
  for (const m of all) {
    const prev = readConfig(m);
    const swTo = mem.switchover === undefined ? undefined : byId.get(mem.switchover.to);
    const swTarget = swTo === undefined ? undefined : target(swTo);
    if (mem.switchover !== undefined && m.allocId === mem.switchover.from && swTarget !== undefined) {
      // Handing over: a replica of the target now (by FAILOVER TO), at the switchover's epoch.
      config[m.allocId] = { epoch: mem.switchover.epoch, role: 'replica', primary: swTarget, failover: true };
    } else if (mem.primary !== undefined && m.allocId === mem.primary.allocId && mem.lost === undefined) {
      config[m.allocId] = { epoch: mem.epoch, role: 'primary', runId: mem.primary.runId };
    } else if (mem.primary !== undefined && m.allocId === mem.primary.allocId) {
      // Lost, no successor yet: keep what it had (its runId guard keeps a restarted redis read-only).
      config[m.allocId] = prev ?? { epoch: mem.epoch, role: 'replica' };
    } else if (primaryTarget !== undefined && mem.lost === undefined) {
      config[m.allocId] = { epoch: mem.epoch, role: 'replica', primary: primaryTarget };
    } else if (prev !== undefined && prev.role === 'replica') {
      config[m.allocId] = prev;
    } else {
      config[m.allocId] = { epoch: mem.epoch, role: 'replica' };
    }
  }

  // 5. Discovery, status, timeline.
  const ps = primaryMember === undefined ? undefined : readState(primaryMember);
  const writable =
    primaryMember !== undefined && mem.lost === undefined && !primaryMember.fenced && ps?.role === 'primary' && ps.epoch === mem.epoch && ps.runId === mem.primary?.runId;
  const replicaStates = all.filter((m) => m !== primaryMember && !m.stopping).map((m) => ({ m, s: readState(m) }));
  const linked = replicaStates.filter((x) => x.s?.role === 'replica' && x.s.link === 'up' && x.s.epoch === mem.epoch && !mem.lost && primaryMember !== undefined);
  const discovery: Record<string, DiscoveryTarget[]> = {
    primary: writable && primaryMember !== undefined ? [{ allocId: primaryMember.allocId, port: REDIS_PORT }] : [],
    replicas: linked.map((x) => ({ allocId: x.m.allocId, port: REDIS_PORT })),
  };

  const f = mem.failover;
  if (f !== undefined && f.to !== '' && primaryMember?.allocId === f.to) {
    if (writable && !f.done.includes('writable')) {
      f.done.push('writable');
      note(f, primaryMember.report?.at ?? now, `${f.to} reports primary at epoch ${mem.epoch}: it accepts writes; ${name}.primary -> ${f.to}`);
      events.push(`${name}: ${f.to} is primary at epoch ${mem.epoch}`);
    }
    const old = f.from === undefined ? undefined : linked.find((x) => x.m.allocId === f.from);
    if (old !== undefined && !f.done.includes('rejoined')) {
      f.done.push('rejoined');
      note(f, old.m.report?.at ?? now, `old primary ${f.from} rejoined as a replica of ${f.to}`);
      events.push(`${name}: old primary ${f.from} rejoined as a replica`);
    }
    const live = replicaStates.filter((x) => x.m.hostAlive && x.s?.role !== 'down');
    if (writable && live.length > 0 && linked.length === live.length && !f.done.includes('linked')) {
      f.done.push('linked');
      note(f, now, `${linked.length} replica${linked.length === 1 ? '' : 's'} linked to ${f.to}`);
    }
  }

  const primaryOffset = ps?.offset;
  let maxLagBytes = 0;
  let maxLagMs = 0;
  for (const x of linked) {
    if (primaryOffset !== undefined && x.s?.offset !== undefined) maxLagBytes = Math.max(maxLagBytes, primaryOffset - x.s.offset);
    maxLagMs = Math.max(maxLagMs, x.s?.lagMs ?? 0);
  }
  const replicasWanted = Math.max(0, (svc?.count ?? all.length) - 1);
  let summary: string;
  if (mem.lost !== undefined) summary = `no primary: ${mem.failover?.reason ?? mem.lost.reason}; waiting for a replica to promote`;
  else if (primaryMember === undefined) summary = 'no primary yet: waiting for a member to report';
  else if (!writable) summary = `${primaryMember.allocId} on ${primaryMember.host} is becoming primary (epoch ${mem.epoch})`;
  else summary = `primary ${primaryMember.allocId} on ${primaryMember.host} (epoch ${mem.epoch}); ${linked.length}/${replicasWanted} replicas linked, max lag ${maxLagBytes} bytes`;
  if (primaryMember !== undefined && !primaryMember.hostAlive && !primaryMember.fenced && mem.lost === undefined) summary += `; its host ${primaryMember.host} is not responding: waiting for its fence before promoting`;
  if (mem.switchover !== undefined) summary += `; switchover to ${mem.switchover.to} in progress`;

  const fields: Record<string, string | number | boolean> = {
    primary: writable && primaryMember !== undefined ? primaryMember.allocId : '',
    epoch: mem.epoch,
    'replicas linked': linked.length,
    replicas: replicasWanted,
    'max lag (bytes)': maxLagBytes,
    'max lag (ms)': maxLagMs,
  };
  if (primaryMember !== undefined) fields['primary host'] = primaryMember.host;
  const members: Record<string, { role?: string; message?: string }> = {};
  for (const m of all) {
    const s = readState(m);
    const role = s?.role ?? (m.state === undefined || m.state === 'pending' ? 'pending' : 'unknown');
    const message = (m.report?.message ?? `${m.state ?? 'pending'} on ${m.host}`).slice(0, 200);
    members[m.allocId] = { role: m.stopping ? `${role} (stopping)`.slice(0, 64) : role, message };
  }
  const status: AppStatus = {
    summary: summary.slice(0, 500),
    fields,
    members,
    ...lastFailoverStatus(f),
  };

  // 6. Rollout gates: replicas first, the primary last; the primary is held while it is the primary on an old version.
  const gates: Record<string, AppGate> = {};
  if (svc !== undefined) gates[name] = primaryLastGate(all, svc, mem.lost === undefined ? primaryMember : undefined);

  const out: ReactOutput = {
    memory: mem,
    config: config as unknown as Record<string, Record<string, unknown>>,
    discovery,
    status,
    gates,
    ...(events.length > 0 ? { events } : {}),
    ...(wake ? { wakeInMs: WAKE_MS } : {}),
  };
  return out;
}
