import { setMaxListeners } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { campaign } from '../cluster/election.js';
import { keys, parseNodeKey } from '../cluster/keys.js';
import type { NodeRecord } from '../cluster/link.js';
import type { Lease, Leadership, Store, TxnOp } from '../cluster/store.js';
import type { TrustView } from '../cluster/trust.js';
import { BackplaneError, errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { BackplaneHost } from '../backplanes/host.js';
import { applyReact, appWork, type AppApplied } from './apps.js';
import { PLAN_HISTORY_KEPT, type ServicePlan } from './plan-types.js';
import { scalePass, type ScalePassOutput } from './scale.js';
import { planPass, type PlanPassOutput } from './plans.js';
import { wrapSigned, type AssignRecord, type EventRecord } from './records.js';
import { readSchedState, serviceInputs, specOfRefIn, toSnapshot, type SchedState } from './state.js';
import type { PlanEvent } from './types.js';
import type { Metrics } from '../api/metrics.js';
import { ControllerMetrics } from './controller-metrics.js';
import { SpinGuard } from './spin-guard.js';

export const ELECTION = 'controller';
/** Events kept in the store: enough for `backplane service NAME` to explain the last hours of a busy cluster. */
const MAX_EVENTS = 1000;
/**
 * A pass at least this often even when nothing changes. Backoffs and graces that end on the clock are woken for
 * (the plan's wakeAt), so this only bounds what a missed event could cost; an idle cluster costs one pass per 10 s.
 */
const IDLE_PASS_MS = 10_000;
/** The watchdog polls every 100 ms; timers on a loaded machine run late: margin on top of the fence arithmetic. */
const FENCE_SLACK_MS = 400;
/** etcd's default limits are 128 operations and 1.5 MiB per request: stay well inside both. */
const OPS_PER_TXN = 100;
const BYTES_PER_TXN = 1024 * 1024;

export interface ControllerOptions {
  readonly store: Store;
  readonly host: string;
  readonly log: Logger;
  /** The controller's lease TTL: when it dies, another agent takes over after about this long. */
  readonly ttlMs: number;
  /**
   * The lease to campaign under: this host's membership lease (ClusterLink.sessionLease), so an idle agent keeps one
   * lease alive, not two (a keep-alive a second each, on every agent of the cluster). Leadership ends with the
   * membership, as it would with etcd's concurrency.Session. Without it, each campaign grants a lease of its own.
   */
  readonly lease?: (signal: AbortSignal) => Promise<Lease>;
  /** This agent's own fence: the grace for a host whose record never said what its fence is. */
  readonly fenceMs: number;
  readonly trust: () => TrustView | undefined;
  /** Signs a record for a key with this host's key (ClusterLink.sign). */
  readonly sign: (key: string, body: string) => string;
  /** Runs application backplanes' react (default: a host of its own, ended when run() ends). */
  readonly backplanes?: BackplaneHost;
  /** The agent's metrics: leadership, passes, placements, plan steps, failovers, recoveries (controller-metrics.ts). */
  readonly metrics?: Metrics;
}

/**
 * The controller: one at a time in the whole cluster, elected through the store (any agent can be it). While it
 * leads, it runs passes — read a fresh snapshot, plan with the pure reconciler, commit — on every change under
 * services/, sched/ and nodes/, and on a timer, so a missed event costs latency, never correctness (Patroni's
 * loop). Every write is a transaction fenced on its own election key's createRevision (the epoch): once another
 * candidate has taken over, the key is gone and the write fails, so two controllers can never both commit. It keeps
 * nothing it cannot rebuild from the store, except when it last saw each host alive; a new controller counts a host
 * it never saw alive as gone since it took over, which only delays a replacement, never duplicates one.
 */
export class Controller {
  /**
   * Followed from the moment this agent is a candidate, not only while it leads: when a host's membership went away
   * and what its fence is. A controller that takes over after the host died (the dead host was often the controller
   * itself) then knows how long it has been gone, instead of counting from its own takeover.
   */
  private readonly present = new Set<string>();
  private readonly goneAt = new Map<string, number>();
  private readonly graceOf = new Map<string, number>();
  private readonly lastRecord = new Map<string, string>();
  private readonly startedAt = Date.now();
  private leading: { leadership: Leadership; epoch: number; since: number } | undefined;
  private wake: (() => void) | undefined;
  private dirty = true;
  /** Set by the pass itself when it wants the next one at once (see SpinGuard). */
  private rerun: string[] | undefined;
  private readonly spin = new SpinGuard();
  private eventSeq = 0;
  private eventKeys: string[] | undefined;
  /** Events already recorded, so a plan repeated pass after pass (waiting for capacity) is recorded once. */
  private readonly recent = new Map<string, number>();

  private readonly backplanes: BackplaneHost;
  private readonly metrics: ControllerMetrics | undefined;

  constructor(private readonly opts: ControllerOptions) {
    this.backplanes = opts.backplanes ?? new BackplaneHost();
    this.metrics = opts.metrics === undefined ? undefined : new ControllerMetrics(opts.metrics);
    opts.metrics?.observeLeader(() => this.isLeader);
  }

  get isLeader(): boolean {
    return this.leading !== undefined && !this.leading.leadership.lost.aborted;
  }

  /** Campaigns, leads while elected, campaigns again when deposed; until `signal` aborts (then resigns). */
  async run(signal: AbortSignal): Promise<void> {
    try {
      await this.campaignLoop(signal);
    } finally {
      if (this.opts.backplanes === undefined) await this.backplanes.close();
    }
  }

  private async campaignLoop(signal: AbortSignal): Promise<void> {
    await this.followHosts(signal).catch((err: unknown) => this.opts.log.warn(`controller: cannot follow the hosts' membership: ${errorMessage(err)}`));
    while (!signal.aborted) {
      let leadership: Leadership;
      try {
        const shared = await this.opts.lease?.(signal);
        leadership = await campaign(this.opts.store, ELECTION, this.opts.host, this.opts.ttlMs, signal, shared);
      } catch (err) {
        if (signal.aborted) return;
        this.opts.log.debug(`controller election: ${errorMessage(err)}; trying again`);
        await sleep(500, undefined, { signal }).catch(() => undefined);
        continue;
      }
      try {
        await this.lead(leadership, signal);
      } catch (err) {
        if (!signal.aborted) this.opts.log.warn(`controller: ${errorMessage(err)}`);
      } finally {
        this.leading = undefined;
        // Resigning lets the next candidate take over at once instead of after the TTL.
        await leadership.resign().catch(() => undefined);
      }
    }
  }

  private async followHosts(signal: AbortSignal): Promise<void> {
    const onKv = (key: string, value: string | undefined): void => {
      const host = parseNodeKey(key);
      if (host === undefined) return;
      if (value === undefined) {
        this.present.delete(host);
        if (!this.goneAt.has(host)) this.goneAt.set(host, Date.now());
        return;
      }
      // Its fence is judged when it is needed (graceFor), against the hosts list of that moment: a joining host's
      // record often arrives before the list that approves it.
      this.lastRecord.set(host, value);
      this.graceOf.delete(host);
      // Only a record its host signed says it is back: junk written under its key must not erase when it went away
      // (that would count it as gone since this agent started, and cut its fence grace short).
      if (this.opts.trust()?.verify(host, key, value).ok !== true) return;
      this.present.add(host);
      this.goneAt.delete(host);
    };
    const { kvs, revision } = await this.opts.store.list(keys.nodesPrefix, { signal });
    for (const kv of kvs) onKv(kv.key, kv.value);
    await this.opts.store.watch(
      keys.nodesPrefix,
      revision + 1,
      (b) => {
        if (b.type === 'resync') {
          const now = new Set(b.kvs.map((kv) => kv.key));
          for (const host of [...this.present]) if (!now.has(keys.node(host))) onKv(keys.node(host), undefined);
          for (const kv of b.kvs) onKv(kv.key, kv.value);
        } else for (const e of b.events) onKv(e.type === 'put' ? e.kv.key : e.key, e.type === 'put' ? e.kv.value : undefined);
      },
      signal,
    );
  }

  /** How long after its lease is gone `host`'s instances may still run, from its last verified record. */
  private graceFor(host: string, view: TrustView): number | undefined {
    const known = this.graceOf.get(host);
    if (known !== undefined) return known;
    const value = this.lastRecord.get(host);
    const v = value === undefined ? undefined : view.verify(host, keys.node(host), value);
    if (v?.ok !== true) return undefined;
    try {
      const f = (JSON.parse(v.body) as NodeRecord).fence;
      if (f === undefined || !(Number.isFinite(f.fenceMs) && Number.isFinite(f.ttlMs) && f.fenceMs > 0 && f.ttlMs > 0)) return undefined;
      // Its instances die by renewal + fenceMs; its lease ends no earlier than renewal + ttlMs.
      const grace = Math.max(0, f.fenceMs + FENCE_SLACK_MS - f.ttlMs);
      this.graceOf.set(host, grace);
      return grace;
    } catch {
      return undefined;
    }
  }

  private async lead(leadership: Leadership, signal: AbortSignal): Promise<void> {
    const kv = await this.opts.store.get(leadership.key, { signal });
    if (kv === undefined) return;
    const epoch = kv.createRevision;
    const since = Date.now();
    this.leading = { leadership, epoch, since };
    this.opts.log.info(`this host is the controller now (epoch ${epoch})`);
    const stop = AbortSignal.any([signal, leadership.lost]);
    // Ten store watches and the wake below listen on it: a fixed number, not a leak, but past Node's default of 10
    // every agent printed a MaxListenersExceededWarning when it became the controller.
    setMaxListeners(16, stop);
    stop.addEventListener('abort', () => this.wake?.(), { once: true });
    const poke = (): void => {
      this.dirty = true;
      this.wake?.();
    };
    // Operator commands wake it too; its own plan writes do not need to (it runs again after writing one).
    for (const prefix of [keys.servicesPrefix, keys.assignPrefix, keys.statusPrefix, keys.drainPrefix, keys.nodesPrefix, keys.trustPrefix, keys.cmdPrefix, keys.appsPrefix, keys.scaleReqPrefix, keys.policyPrefix]) {
      await this.opts.store.watch(prefix, 0, poke, stop);
    }
    let wakeAt: number | undefined;
    while (!stop.aborted) {
      const wait = wakeAt === undefined ? IDLE_PASS_MS : Math.max(0, Math.min(IDLE_PASS_MS, wakeAt - Date.now()));
      if (!this.dirty) {
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, wait);
          this.wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
        this.wake = undefined;
        // Let a burst of watch events land before reading the store again.
        await sleep(5);
      }
      if (stop.aborted) break;
      this.dirty = false;
      this.rerun = undefined;
      const t0 = performance.now();
      try {
        wakeAt = await this.pass(epoch, leadership, since, stop);
        this.metrics?.pass((performance.now() - t0) / 1000, true);
        const why = this.rerunAsked();
        if (why !== undefined) {
          const g = this.spin.selfRerun(Date.now());
          if (g.warn) this.opts.log.warn(`controller: more than 20 passes a second, each asking for the next (${why.join(', ') || 'scaling'} changed every time): a plan that never settles, which is a bug; slowing to one pass a second`);
          if (g.waitMs > 0) await sleep(g.waitMs, undefined, { signal: stop }).catch(() => undefined);
        } else this.spin.settled();
      } catch (err) {
        if (stop.aborted) break;
        this.metrics?.pass((performance.now() - t0) / 1000, false);
        this.opts.log.warn(`controller pass failed: ${errorMessage(err)}; retrying`);
        await sleep(500, undefined, { signal: stop }).catch(() => undefined);
        this.dirty = true;
      }
    }
    if (leadership.lost.aborted && !signal.aborted) this.opts.log.warn(`this host is no longer the controller (${errorMessage(leadership.lost.reason)})`);
  }

  /** What the last pass changed when it asked for the next one itself (undefined: it did not). */
  private rerunAsked(): string[] | undefined {
    return this.rerun;
  }

  /** One pass: snapshot, plan, commit. Returns when the plan may change on its own (wakeAt). */
  private async pass(epoch: number, leadership: Leadership, _since: number, signal: AbortSignal): Promise<number | undefined> {
    const view = this.opts.trust();
    if (view === undefined) return undefined;
    const state = await readSchedState(this.opts.store, view, { signal });
    const now = Date.now();
    const lastAlive = new Map<string, number>(this.goneAt);
    for (const m of state.members) if (m.verified) lastAlive.set(m.host, now);
    // A host never seen here went away before this agent started following (or took over): count from then.
    const graceOf = new Map<string, number>();
    for (const host of new Set([...this.lastRecord.keys(), ...[...state.assigns.values()].map((a) => a.alloc.host)])) {
      const g = this.graceFor(host, view);
      if (g !== undefined) graceOf.set(host, g);
    }
    const snapshot = toSnapshot(state, now, { lastAlive, since: this.startedAt, fenceGraceMs: this.opts.fenceMs + FENCE_SLACK_MS, graceOf });
    const out = planPass({
      snapshot,
      services: serviceInputs(state),
      plans: state.plans,
      lastSeq: new Map([...state.history].map(([svc, list]) => [svc, list.at(-1)?.seq ?? 0])),
      commands: state.commands,
      specOf: (service, ref) => specOfRefIn(state, view, service, ref),
      appGates: new Map([...state.appStates.values()].flatMap((a) => (state.apps.has(a.name) ? Object.entries(a.gates) : []))),
    });
    // Application backplanes, each in its own worker with a time limit: one that fails leaves its object as it was.
    const apps = await Promise.all(appWork(state, snapshot, now).map(async (w) => applyReact(w, await this.backplanes.react(w.kind, w.input), now)));
    for (const w of out.plan.warnings) this.once(`warn:${w}`, () => this.opts.log.warn(w));
    for (const key of state.badCommands) this.once(`badcmd:${key}`, () => this.opts.log.warn(`ignoring ${key}: not a command an operator host signed; deleted`));
    // Counts chosen within the operator's bounds: instances' requests and backplanes' asks.
    const scaled = scalePass({ state, now, asks: apps.flatMap((a) => a.asks) });
    await this.commit(out, state, epoch, leadership, signal, apps, scaled);
    this.metrics?.committed({ epoch, out, state, snapshot, apps, now });
    if (scaled.put.length > 0) this.dirty = true;
    // A plan that changed this pass (a rollback started, canaries promoted, a step completed) may let the reconciler
    // do more at once: run again rather than wait for the next event.
    if (out.again || out.write.length > 0) this.dirty = true;
    if (scaled.put.length > 0 || out.again || out.write.length > 0) this.rerun = out.write.map((p) => `plan ${p.id}`);
    const wakes = [out.plan.wakeAt, ...apps.map((a) => a.wakeAt)].filter((w): w is number => w !== undefined);
    return wakes.length === 0 ? undefined : Math.min(...wakes);
  }

  private async commit(out: PlanPassOutput, state: SchedState, epoch: number, leadership: Leadership, signal: AbortSignal, apps: readonly AppApplied[], scaled: ScalePassOutput): Promise<void> {
    const plan = out.plan;
    const ops: TxnOp[] = [];
    const signed = (key: string, body: unknown): TxnOp => ({ put: key, value: wrapSigned(this.opts.host, this.opts.sign(key, JSON.stringify(body))) });
    for (const p of plan.place) {
      // What the plan rolls to: the operator's spec, or for a rollback the last healthy version's record.
      const target = out.targets.get(p.alloc.service);
      if (target === undefined) continue;
      const { status: _status, hooks: _hooks, ...alloc } = p.alloc;
      const body: AssignRecord = { alloc, epoch, controller: this.opts.host, specRecord: target.record, specBy: target.by };
      ops.push(signed(keys.assign(alloc.host, alloc.id), body));
    }
    for (const s of plan.stop) ops.push({ delete: keys.assign(s.host, s.allocId) });
    const stopped = new Set(plan.stop.map((s) => s.allocId));
    // A hook request rides in the alloc's assignment, re-signed by this controller (the agent re-checks it); one
    // rewrite per alloc, whatever it is asked to run.
    // A backplane's config for a member rides there too (the agent hands it to the instance; it never restarts it).
    const asks = new Map<string, Record<string, number>>();
    for (const r of plan.hookRequests ?? []) asks.set(r.allocId, { ...asks.get(r.allocId), [r.hook]: r.nonce });
    const configs = new Map<string, Readonly<Record<string, unknown>>>();
    for (const a of apps) for (const [id, c] of a.configs) configs.set(id, c);
    const actions = new Map<string, { name: string; id: string }>();
    for (const a of apps) for (const [id, x] of a.actions) actions.set(id, x);
    for (const allocId of new Set([...asks.keys(), ...configs.keys(), ...actions.keys()])) {
      const a = state.assigns.get(allocId);
      if (a === undefined || stopped.has(allocId)) continue;
      const hookRequests = asks.get(allocId);
      const config = configs.get(allocId);
      const action = actions.get(allocId);
      const alloc = {
        ...a.alloc,
        ...(hookRequests === undefined ? {} : { hookRequests: { ...a.alloc.hookRequests, ...hookRequests } }),
        ...(config === undefined ? {} : { config }),
        ...(action === undefined ? {} : { action }),
      };
      const body: AssignRecord = { alloc, epoch, controller: this.opts.host, specRecord: a.specRecord, specBy: a.specBy };
      ops.push(signed(a.key, body));
    }
    for (const a of apps) if (a.changed) ops.push(signed(keys.appState(a.record.name), a.record));
    for (const r of scaled.put) ops.push(signed(keys.scale(r.service), r));
    for (const key of scaled.deleteKeys) ops.push({ delete: key });
    // The state of an object that is no longer deployed goes with it.
    for (const name of state.appStates.keys()) {
      const rec = state.apps.get(name)?.record;
      if (rec === undefined || 'removed' in rec) ops.push({ delete: keys.appState(name) });
    }
    const planEvents: PlanEvent[] = [];
    for (const p of out.write) {
      ops.push(signed(keys.plan(p.service), p));
      const before = state.plans.get(p.service);
      const seen = before?.id === p.id ? before.log.length : 0;
      for (const l of p.log.slice(seen)) planEvents.push({ service: p.service, message: `plan ${p.id}: ${l.message}` });
    }
    for (const p of out.finished) ops.push(...this.archive(p, state));
    for (const c of out.commands) {
      ops.push({ delete: keys.cmd(c.command.service, c.command.id) });
      const line = `${c.command.action}${c.command.step === undefined ? '' : ` ${c.command.step}`} by ${c.command.by ?? '?'}: ${c.result.ok ? 'done' : 'refused'}: ${c.result.message}`;
      if (c.result.ok) this.opts.log.info(`${c.command.service}: ${line}`);
      else this.opts.log.warn(`${c.command.service}: ${line}`);
    }
    for (const key of state.badCommands) ops.push({ delete: key });
    const events = [...plan.events, ...planEvents, ...apps.flatMap((a) => a.events), ...scaled.events].filter((e) => this.once(`event:${e.service}:${e.allocId ?? ''}:${e.message}`));
    for (const e of events) {
      const rec: EventRecord = { at: Date.now(), service: e.service, message: e.message, ...(e.allocId === undefined ? {} : { allocId: e.allocId }), ...(e.host === undefined ? {} : { host: e.host }) };
      const key = keys.event(this.nextEventSeq());
      ops.push({ put: key, value: wrapSigned(this.opts.host, this.opts.sign(key, JSON.stringify(rec))) });
      this.opts.log.info(`${e.service}: ${e.message}`);
    }
    for (const i of plan.infeasible) this.once(`infeasible:${i.service}:${i.message}`, () => this.opts.log.warn(`${i.service}: ${i.message}`));
    ops.push(...(await this.trimEvents(events.length, signal)));
    // The fence: each transaction commits only while our election key is the one we won with.
    let chunk: TxnOp[] = [];
    let bytes = 0;
    const flush = async (): Promise<void> => {
      if (chunk.length === 0) return;
      const r = await this.opts.store.txn(chunk, { signal, if: [{ key: leadership.key, createRevision: epoch }] });
      chunk = [];
      bytes = 0;
      if (!r.ok) throw new BackplaneError('E_IO', 'a plan could not be committed: this host is no longer the controller', { retryable: false });
    };
    for (const op of ops) {
      const b = ('put' in op ? op.put.length + op.value.length : op.delete.length) + 64;
      if (chunk.length >= OPS_PER_TXN || bytes + b > BYTES_PER_TXN) await flush();
      chunk.push(op);
      bytes += b;
    }
    await flush();
  }

  /** A finished plan goes to the history; the oldest entries beyond PLAN_HISTORY_KEPT go. */
  private archive(p: ServicePlan, state: SchedState): TxnOp[] {
    const key = keys.history(p.service, p.seq);
    const ops: TxnOp[] = [{ put: key, value: wrapSigned(this.opts.host, this.opts.sign(key, JSON.stringify(p))) }];
    const list = (state.history.get(p.service) ?? []).filter((h) => h.seq !== p.seq);
    const excess = list.length + 1 - PLAN_HISTORY_KEPT;
    for (const h of list.slice(0, Math.max(0, excess))) ops.push({ delete: h.key });
    return ops;
  }

  private nextEventSeq(): number {
    // Wall-clock microseconds, strictly increasing in this process: a later controller's keys sort after ours.
    this.eventSeq = Math.max(Date.now() * 1000, this.eventSeq + 1);
    return this.eventSeq;
  }

  private async trimEvents(added: number, signal: AbortSignal): Promise<TxnOp[]> {
    if (this.eventKeys === undefined) {
      const { kvs } = await this.opts.store.list(keys.eventsPrefix, { signal });
      this.eventKeys = kvs.map((kv) => kv.key);
      const last = this.eventKeys.at(-1);
      const seq = last === undefined ? 0 : Number(last.slice(keys.eventsPrefix.length));
      if (Number.isSafeInteger(seq)) this.eventSeq = Math.max(this.eventSeq, seq);
    }
    for (let i = 0; i < added; i++) this.eventKeys.push(keys.event(this.eventSeq - added + 1 + i));
    const excess = this.eventKeys.length - MAX_EVENTS;
    if (excess <= 0) return [];
    return this.eventKeys.splice(0, excess).map((key) => ({ delete: key }));
  }

  /** Runs `fn` (or just answers true) the first time `tag` is seen in a while, so repeated passes do not repeat. */
  private once(tag: string, fn?: () => void): boolean {
    const now = Date.now();
    const seen = this.recent.get(tag);
    if (seen !== undefined && now - seen < 60_000) return false;
    if (this.recent.size > 10_000) this.recent.clear();
    this.recent.set(tag, now);
    fn?.();
    return true;
  }
}
