/**
 * The plan engine: one pure pass from (snapshot, plan records, operator commands) to (the reconciler's plan, the
 * plan records to store, the finished plans for the history, the commands' outcomes). The controller runs it on
 * every pass and commits everything it returns in fenced transactions; `deploy --dry-run` and the tests run it on
 * a snapshot and an injected clock (`snapshot.now`).
 *
 * What it decides, per service:
 * - Which change is running. A service record whose deployedAt differs from the current plan's trigger is a new
 *   change: the running plan is superseded (Nomad's rule: the newest spec wins; instances already on the superseded
 *   version are rolled again, and the rollback target stays the last version that completed healthy) and a plan of
 *   the right kind starts (deploy, update, scale, config, remove).
 * - What the reconciler may do for it (its Gate: held while paused or failed, canaries before promotion, stop-first
 *   or start-first, parallelism, the disruption budget, forced and restarted steps).
 * - Every step's state, rebuilt from the allocs each pass (the allocs are the truth; the record keeps what they
 *   cannot say: errors that stick until the operator acts, forced steps, promotion).
 * - Transitions: a step in error (healthy deadline passed, a crash loop, a hook failed) or no progress within the
 *   progress deadline fails the plan; with autoRevert and an earlier healthy version it is rolled back at once by a
 *   rollback plan (no canary phase), else it waits for the operator. Healthy canaries wait for promote (or promote
 *   themselves with autoPromote, after their before-promote hooks). All steps complete: the plan is complete and its
 *   version becomes the stable one.
 * - Recoveries and drains outside a rollout get a plan of their own (recover, drain), so every change shows.
 */
import { allSteps, applyCommand, isActive, withLog } from './commands.js';
import type { CommandResult, PlanCommand, PlanKind, PlanPhase, PlanStep, PlanStrategy, ServicePlan, SpecRef, StepAction } from './plan-types.js';
import type { AllocIdGenerator } from './placement.js';
import { defaultGate, effectiveParallel, formatDuration, reconcile, type Gate } from './reconcile.js';
import type { AppGate } from './records.js';
import type { Alloc, ClusterSnapshot, HookRequest, HostSnapshot, Plan, ServiceSpec } from './types.js';
import { canonicalJson } from '../util/canonical.js';

/** The operator's current record of a service. */
export interface ServiceInput {
  /** The spec, unless the record is a removal. */
  readonly spec?: ServiceSpec;
  readonly removed?: boolean;
  /** The record itself (for a removal: its version is ''). */
  readonly ref: SpecRef;
}

export interface PlanPassInput {
  /** hosts, allocs, stopping, now; `services` is replaced by each plan's target spec. */
  readonly snapshot: ClusterSnapshot;
  readonly services: ReadonlyMap<string, ServiceInput>;
  /** The current plan record of each service. */
  readonly plans: ReadonlyMap<string, ServicePlan>;
  /** The highest plan seq seen per service (history included), so ids never repeat. */
  readonly lastSeq?: ReadonlyMap<string, number>;
  readonly commands?: readonly PlanCommand[];
  /** The (checked) spec in a SpecRef. */
  readonly specOf: (service: string, ref: SpecRef) => ServiceSpec | undefined;
  readonly newAllocId?: AllocIdGenerator;
  /** Application backplanes' steering of their services' rollouts (update order, indexes held back). */
  readonly appGates?: ReadonlyMap<string, AppGate>;
}

export interface PlanPassOutput {
  readonly plan: Plan;
  /** Plan records that changed (to put under sched/plan/<service>). */
  readonly write: readonly ServicePlan[];
  /** Plans that finished this pass (to append to the history). */
  readonly finished: readonly ServicePlan[];
  readonly commands: readonly { readonly command: PlanCommand; readonly result: CommandResult }[];
  /** The spec record new allocs of each service carry (a rollback's is the stable version's). */
  readonly targets: ReadonlyMap<string, SpecRef>;
  /** Run another pass at once: a plan started that the reconciler has not acted on yet (a rollback). */
  readonly again: boolean;
}

const PROMOTE_NONCE = '@promote';

function stepName(service: string, index: number): string {
  return `${service}.${index}`;
}

function parallelText(n: number, count: number): string {
  return n >= count ? 'all at once' : n === 1 ? 'one at a time' : `${n} at a time`;
}

export function strategyOf(spec: ServiceSpec, kind: PlanKind): PlanStrategy {
  const maxParallel = effectiveParallel(spec);
  return {
    canary: kind === 'update' ? Math.min(spec.update.canary, spec.count) : 0,
    maxParallel,
    startFirst: spec.update.startFirst ?? spec.count <= 1,
    autoPromote: spec.update.autoPromote,
    autoRevert: spec.update.autoRevert,
    minHealthyMs: spec.update.minHealthyMs,
    healthyDeadlineMs: spec.update.healthyDeadlineMs,
    progressDeadlineMs: spec.update.progressDeadlineMs,
    maxUnavailable: spec.maxUnavailable ?? maxParallel,
  };
}

function step(service: string, index: number, action: StepAction, now: number): PlanStep {
  return { name: stepName(service, index), index, action, state: 'pending', since: now };
}

function range(from: number, to: number): number[] {
  const out: number[] = [];
  for (let i = from; i < to; i++) out.push(i);
  return out;
}

function buildPhases(kind: PlanKind, service: string, s: PlanStrategy, count: number, fromCount: number, indexes: readonly number[], now: number): PlanPhase[] {
  const rolling = `${parallelText(s.maxParallel, count)}, ${s.startFirst ? 'start first' : 'stop first'}`;
  switch (kind) {
    case 'deploy':
      return [{ name: 'deploy', strategy: 'all at once', steps: range(0, count).map((i) => step(service, i, 'place', now)) }];
    case 'update': {
      const phases: PlanPhase[] = [];
      if (s.canary > 0)
        phases.push({
          name: 'canary',
          strategy: `${s.canary} next to the old instances; ${s.autoPromote ? 'promoted once healthy' : 'waits for promote'}`,
          steps: range(0, s.canary).map((i) => step(service, i, 'replace', now)),
        });
      if (count > s.canary) phases.push({ name: 'rollout', strategy: rolling, steps: range(s.canary, count).map((i) => step(service, i, 'replace', now)) });
      return phases;
    }
    case 'rollback':
      return [{ name: 'rollback', strategy: rolling, steps: range(0, count).map((i) => step(service, i, 'replace', now)) }];
    case 'scale': {
      const steps = count >= fromCount ? range(fromCount, count).map((i) => step(service, i, 'place', now)) : range(count, fromCount).reverse().map((i) => step(service, i, 'stop', now));
      return [{ name: 'scale', strategy: count >= fromCount ? 'all at once' : `${s.maxUnavailable} at a time (disruption budget)`, steps }];
    }
    case 'remove':
      return [{ name: 'remove', strategy: 'all at once', steps: indexes.map((i) => step(service, i, 'stop', now)) }];
    case 'recover':
    case 'drain':
      return [{ name: kind, strategy: kind === 'drain' ? `${parallelText(s.maxParallel, count)}, start first` : 'as soon as a host fits', steps: indexes.map((i) => step(service, i, 'move', now)) }];
    case 'config':
      return [];
  }
}

/** Indexes (distinct) that have allocs now. */
function indexesOf(allocs: readonly Alloc[]): number[] {
  return [...new Set(allocs.map((a) => a.index))].sort((a, b) => a - b);
}

/** The version most of the service's allocs run (the "from" of a change). */
function runningVersion(allocs: readonly Alloc[]): string | undefined {
  const n = new Map<string, number>();
  for (const a of allocs) n.set(a.version, (n.get(a.version) ?? 0) + 1);
  let best: string | undefined;
  for (const [v, c] of n) if (best === undefined || c > (n.get(best) ?? 0)) best = v;
  return best;
}

interface NewPlan {
  readonly service: string;
  readonly kind: PlanKind;
  readonly spec: ServiceSpec;
  readonly target: SpecRef;
  readonly trigger: { readonly deployedAt: string; readonly version: string };
  readonly stable: SpecRef | undefined;
  readonly seq: number;
  readonly fromVersion: string | undefined;
  readonly fromCount: number;
  readonly count: number;
  readonly indexes: readonly number[];
  readonly paused: boolean;
  readonly now: number;
  readonly message: string;
}

function makePlan(n: NewPlan): ServicePlan {
  const strategy = strategyOf({ ...n.spec, count: n.count }, n.kind);
  return {
    id: `${n.service}-${n.seq}`,
    seq: n.seq,
    service: n.service,
    kind: n.kind,
    ...(n.fromVersion === undefined ? {} : { fromVersion: n.fromVersion }),
    toVersion: n.target.version,
    fromCount: n.fromCount,
    toCount: n.count,
    target: n.target,
    trigger: n.trigger,
    ...(n.stable === undefined ? {} : { stable: n.stable }),
    strategy,
    status: n.paused ? 'paused' : 'running',
    paused: n.paused,
    promote: strategy.canary > 0 ? 'no' : 'done',
    createdAt: n.now,
    updatedAt: n.now,
    lastProgressAt: n.now,
    phases: buildPhases(n.kind, n.service, strategy, n.count, n.fromCount, n.indexes, n.now),
    forced: [],
    restarted: {},
    log: [{ at: n.now, message: n.message }],
    commands: [],
  };
}

function finish(plan: ServicePlan, status: ServicePlan['status'], why: string, now: number): ServicePlan {
  return withLog({ ...plan, status, why, finishedAt: now }, now, `${status}: ${why}`);
}

/** What a plan lets the reconciler do this pass. */
function gateOf(plan: ServicePlan | undefined, spec: ServiceSpec, restart: ReadonlySet<number>): Gate | undefined {
  if (plan === undefined) return undefined;
  const s = plan.strategy;
  const failed = plan.status === 'failed' || plan.status === 'aborted' || plan.failedAt !== undefined;
  const holdWhy = plan.paused ? `plan ${plan.id} is paused` : failed ? `plan ${plan.id} ${plan.failedAt !== undefined ? 'failed and waits for the operator' : `is ${plan.status}`}` : undefined;
  const byName = new Map(allSteps(plan).map((x) => [x.name, x.index]));
  const forced = new Set<number>();
  for (const name of plan.forced) {
    const i = byName.get(name);
    if (i !== undefined) forced.add(i);
  }
  const hookNonce = new Map<number, number>();
  for (const [name, nonce] of Object.entries(plan.restarted)) {
    const i = byName.get(name);
    if (i !== undefined) hookNonce.set(i, nonce);
  }
  // A finished plan's policy still paces what follows it (drains, recoveries): the spec's own, not held.
  const active = isActive(plan) || plan.status === 'failed' || plan.status === 'aborted';
  return {
    hold: active && (plan.paused || failed),
    ...(holdWhy === undefined ? {} : { holdWhy }),
    canaries: active && plan.promote !== 'done' ? new Set(range(0, s.canary)) : new Set(),
    promoted: !active || plan.promote === 'done',
    startFirst: active ? s.startFirst : (spec.update.startFirst ?? spec.count <= 1),
    maxParallel: active ? s.maxParallel : effectiveParallel(spec),
    maxUnavailable: active ? s.maxUnavailable : (spec.maxUnavailable ?? effectiveParallel(spec)),
    forced,
    restart,
    hookNonce,
    minHookNonce: plan.createdAt,
  };
}

// ----------------------------------------------------------------------------------------------------------------
// Step states, from the allocs

interface StepContext {
  readonly now: number;
  readonly plan: ServicePlan;
  readonly spec: ServiceSpec;
  readonly hosts: ReadonlyMap<string, HostSnapshot>;
  readonly allocs: readonly Alloc[];
  readonly result: Plan;
  readonly restarted: ReadonlySet<number>;
  /** Why a pending step waits, from the reconciler's events for the service ("drain waits: ..."). */
  readonly waitWhy: string | undefined;
  readonly infeasible: string | undefined;
  readonly stoppingIdx: ReadonlyMap<number, { host: string; id: string }>;
}

function alive(ctx: StepContext, a: Alloc): boolean {
  const h = ctx.hosts.get(a.host);
  return h !== undefined && h.alive;
}

function isHealthy(a: Alloc, spec: ServiceSpec): boolean {
  const s = a.status?.state;
  return s === 'healthy' || (s === 'running' && spec.health === undefined);
}

function failedState(a: Alloc): boolean {
  return a.status?.state === 'failed' || a.status?.state === 'stopped';
}

/**
 * Failed for good: its restart policy is used up. A fenced instance (its agent could not vouch for it for a moment)
 * is stopped by the watchdog and starts again by itself: not a failed step — the healthy deadline still applies.
 */
function crashed(a: Alloc): boolean {
  return failedState(a) && !(a.status?.message ?? '').startsWith('fenced');
}

type Derived = Pick<PlanStep, 'state'> & { readonly why?: string; readonly output?: string; readonly from?: PlanStep['from']; readonly to?: PlanStep['to'] };

function describeOld(a: Alloc): string {
  return `${stepName(a.service, a.index)} (${a.version}) on ${a.host}`;
}

function pendingWhy(ctx: StepContext, s: PlanStep): string {
  const { plan } = ctx;
  if (plan.paused) return `paused (backplane rollout resume ${plan.service})`;
  if (plan.failedAt !== undefined) return 'held: the plan failed and waits for the operator';
  if (plan.status === 'failed' || plan.status === 'aborted') return `held: the plan is ${plan.status}`;
  if (plan.promote !== 'done' && s.index >= plan.strategy.canary && s.action === 'replace') return 'waiting for the canaries to be promoted';
  if (ctx.infeasible !== undefined) return ctx.infeasible;
  if (ctx.waitWhy !== undefined) return ctx.waitWhy;
  return `waiting for a slot (${parallelText(plan.strategy.maxParallel, plan.toCount)})`;
}

function deriveStep(ctx: StepContext, s: PlanStep): Derived {
  const { now, plan, spec } = ctx;
  const i = s.index;
  const target = plan.target.version;
  const stoppedNow = new Set(ctx.result.stop.filter((x) => x.service === plan.service && x.index === i).map((x) => x.allocId));
  const placedNow = ctx.result.place.find((p) => p.alloc.service === plan.service && p.alloc.index === i);
  const list = ctx.allocs.filter((a) => a.index === i && !stoppedNow.has(a.id));
  const draining = (a: Alloc): boolean => ctx.hosts.get(a.host)?.draining === true;
  const isNew = (a: Alloc): boolean => a.version === target && (s.action !== 'move' || (!draining(a) && alive(ctx, a)));
  const news = list.filter(isNew);
  const olds = list.filter((a) => !isNew(a));
  const keeper = news.filter((a) => alive(ctx, a) && !crashed(a)).sort((x, y) => Number(isHealthy(y, spec)) - Number(isHealthy(x, spec)) || x.createdAt - y.createdAt)[0];
  const from = olds[0] ?? ctx.allocs.find((a) => a.index === i && stoppedNow.has(a.id));
  const fromRef = from === undefined ? {} : { from: { allocId: from.id, host: from.host, version: from.version } };
  const toRef = (a: Alloc): Derived['to'] => ({ allocId: a.id, host: a.host });

  // A failed before-stop hook on the instance this step stops.
  // Hook results from before this plan, or from before the operator restarted the step, are stale.
  const minNonce = Math.max(plan.createdAt, plan.restarted[s.name] ?? 0);
  const hookFailure = (): Derived | undefined => {
    for (const a of olds) {
      const asked = a.hookRequests?.beforeStop;
      const r = a.status?.hooks?.beforeStop;
      if (asked !== undefined && asked >= minNonce && r?.nonce === asked && r.state === 'failed')
        return { state: 'error', why: `the before-stop hook of ${describeOld(a)} failed`, ...(r.output === undefined ? {} : { output: r.output }), ...fromRef };
    }
    return undefined;
  };
  const stopping = (): Derived | undefined => {
    const hooked = olds.find((a) => (a.hookRequests?.beforeStop ?? 0) >= minNonce && a.status?.hooks?.beforeStop?.state !== 'ok');
    if (hooked !== undefined) return { state: 'prepared', why: `running the before-stop hook of ${describeOld(hooked)}`, ...fromRef };
    const going = ctx.allocs.find((a) => a.index === i && stoppedNow.has(a.id));
    if (going !== undefined) return { state: 'prepared', why: `stopping ${describeOld(going)}`, ...fromRef };
    const st = ctx.stoppingIdx.get(i);
    if (st !== undefined) return { state: 'prepared', why: `waiting for ${st.id} to stop on ${st.host}`, ...fromRef };
    return undefined;
  };

  if (s.action === 'stop') {
    const failedHook = hookFailure();
    if (failedHook !== undefined) return failedHook;
    const going = stopping();
    if (going !== undefined) return going;
    if (list.length === 0) return { state: 'complete', why: 'stopped', ...(s.from === undefined ? {} : { from: s.from }) };
    return { state: 'pending', why: pendingWhy(ctx, s), ...fromRef };
  }

  if (keeper !== undefined) {
    const st = keeper.status;
    const to = { to: toRef(keeper) };
    if (!isHealthy(keeper, spec)) {
      const deadline = keeper.createdAt + plan.strategy.healthyDeadlineMs;
      const state = st?.state ?? 'no status yet';
      if (now >= deadline)
        return { state: 'error', why: `${keeper.id} on ${keeper.host} not healthy within ${formatDuration(plan.strategy.healthyDeadlineMs)} (${state}${st?.message === undefined ? '' : `: ${firstLine(st.message)}`})`, ...(st?.message === undefined ? {} : { output: st.message }), ...fromRef, ...to };
      if (st === undefined || st.state === 'pending' || st.state === 'starting')
        return { state: 'starting', why: `placed on ${keeper.host}; starting (healthy deadline ${formatDuration(plan.strategy.healthyDeadlineMs)})`, ...fromRef, ...to };
      return { state: 'waiting-health', why: `${state} on ${keeper.host}, not healthy yet${st.message === undefined ? '' : ` (${st.message})`}`, ...fromRef, ...to };
    }
    if (spec.hooks?.afterStart !== undefined) {
      const r = st?.hooks?.afterStart;
      if (r?.state === 'failed') return { state: 'error', why: `the after-start hook of ${keeper.id} on ${keeper.host} failed`, ...(r.output === undefined ? {} : { output: r.output }), ...fromRef, ...to };
      if (r?.state !== 'ok') return { state: 'waiting-health', why: `healthy; running the after-start hook on ${keeper.host}`, ...fromRef, ...to };
    }
    if (now - (st?.since ?? now) < plan.strategy.minHealthyMs)
      return { state: 'waiting-health', why: `healthy on ${keeper.host}; counts once healthy for ${formatDuration(plan.strategy.minHealthyMs)}`, ...fromRef, ...to };
    const canary = s.action === 'replace' && plan.kind === 'update' && i < plan.strategy.canary;
    if (canary && plan.promote !== 'done') {
      if (plan.promote === 'requested' && spec.hooks?.beforePromote !== undefined) {
        const r = st?.hooks?.beforePromote;
        const nonce = plan.restarted[PROMOTE_NONCE];
        if (r?.state === 'failed' && r.nonce === nonce) return { state: 'error', why: `the before-promote hook of ${keeper.id} on ${keeper.host} failed`, ...(r.output === undefined ? {} : { output: r.output }), ...fromRef, ...to };
        if (!(r?.state === 'ok' && r.nonce === nonce)) return { state: 'waiting-operator', why: `canary healthy; running its before-promote hook`, ...fromRef, ...to };
      }
      return {
        state: 'waiting-operator',
        why: plan.promote === 'requested' || plan.strategy.autoPromote ? 'canary healthy; promoting' : `canary healthy; waiting for promote (backplane rollout promote ${plan.service})`,
        ...fromRef,
        ...to,
      };
    }
    const failedHook = hookFailure();
    if (failedHook !== undefined) return { ...failedHook, ...to };
    const live = olds.filter((a) => alive(ctx, a) && !failedState(a));
    if (live.length > 0) {
      const going = stopping();
      return going !== undefined ? { ...going, ...to } : { state: 'prepared', why: `stopping ${describeOld(live[0]!)}`, ...fromRef, ...to };
    }
    return { state: 'complete', why: `healthy on ${keeper.host}`, ...fromRef, ...to };
  }

  const failedNew = news.filter(crashed).sort((x, y) => y.createdAt - x.createdAt)[0];
  // A new version that crash-loops fails its update at once: the old version is there to go back to, and waiting
  // would only cost time. Anything else (a first deploy, a scale-up, a recovery, a rollback) has nothing better to
  // go back to: the crashed instance is rescheduled by its policy, and only the progress deadline fails the plan
  // (Nomad's rule) — a machine too loaded to start a process in time must not fail a deploy for good.
  if (failedNew !== undefined && !ctx.restarted.has(i) && plan.kind !== 'update')
    return { state: 'starting', why: `${failedNew.id} failed on ${failedNew.host}${failedNew.status?.message === undefined ? '' : `: ${firstLine(failedNew.status.message)}`}; rescheduled by its policy`, ...fromRef, to: toRef(failedNew) };
  if (failedNew !== undefined && !ctx.restarted.has(i))
    return {
      state: 'error',
      // The first line says what happened; the whole message (last output, hints) is the step's output.
      why: `${failedNew.id} failed on ${failedNew.host}${failedNew.status?.message === undefined ? '' : `: ${firstLine(failedNew.status.message)}`}`,
      ...(failedNew.status?.message === undefined ? {} : { output: failedNew.status.message }),
      ...fromRef,
      to: toRef(failedNew),
    };
  if (placedNow !== undefined) return { state: 'starting', why: `placed on ${placedNow.alloc.host}`, ...fromRef, to: toRef(placedNow.alloc) };
  const failedHook = hookFailure();
  if (failedHook !== undefined) return failedHook;
  const going = stopping();
  if (going !== undefined) return going;
  const waiting = news.find((a) => !alive(ctx, a));
  if (waiting !== undefined) return { state: 'starting', why: `${waiting.id} on ${waiting.host}: host down, waiting for its fence grace`, ...fromRef, to: toRef(waiting) };
  if (olds.length === 0 && s.action === 'move' && list.length === 0) return { state: 'pending', why: ctx.infeasible ?? 'waiting for a host', ...fromRef };
  // Say where the instance is leaving from when that is the reason for the step.
  const leaving = olds.find(draining);
  return { state: 'pending', why: `${leaving === undefined ? '' : `host ${leaving.host} draining; `}${pendingWhy(ctx, s)}`, ...fromRef };
}

/** The gist of a failure message: its first line, and the line after it when the first one announces it. */
function firstLine(s: string): string {
  const lines = s.split('\n').map((l) => l.trim());
  let line = lines[0] ?? '';
  if (line.endsWith(':') && (lines[1] ?? '') !== '') line = `${line} ${lines[1]!.replace(/^\|\s*/, '')}`;
  return line.length > 300 ? `${line.slice(0, 300)}...` : line;
}

/** Key order aside: a step read back from the store and the same step rebuilt here list their fields differently. */
function sameStep(a: PlanStep, b: PlanStep): boolean {
  return canonicalJson(a) === canonicalJson(b);
}

// ----------------------------------------------------------------------------------------------------------------
// The pass

export function planPass(input: PlanPassInput): PlanPassOutput {
  const { snapshot } = input;
  const now = snapshot.now;
  const plans = new Map(input.plans);
  const original = input.plans;
  const finished: ServicePlan[] = [];
  const commandsOut: { command: PlanCommand; result: CommandResult }[] = [];
  const restarts = new Map<string, Set<number>>();
  let again = false;
  const seqOf = (service: string): number => Math.max(input.lastSeq?.get(service) ?? 0, plans.get(service)?.seq ?? 0, original.get(service)?.seq ?? 0) + 1;

  const allocsOf = new Map<string, Alloc[]>();
  for (const a of snapshot.allocs) {
    let l = allocsOf.get(a.service);
    if (l === undefined) allocsOf.set(a.service, (l = []));
    l.push(a);
  }
  const hosts = new Map(snapshot.hosts.map((h) => [h.name, h]));

  const rollbackOf = (failed: ServicePlan, why: string): ServicePlan | undefined => {
    const stable = failed.stable;
    if (stable === undefined || stable.version === failed.target.version || failed.kind === 'rollback') return undefined;
    const spec = input.specOf(failed.service, stable);
    if (spec === undefined) return undefined;
    const count = failed.toCount;
    return makePlan({
      service: failed.service,
      kind: 'rollback',
      spec,
      target: stable,
      trigger: failed.trigger,
      stable,
      seq: seqOf(failed.service),
      fromVersion: failed.target.version,
      fromCount: count,
      count,
      indexes: [],
      paused: false,
      now,
      message: `rollback from ${failed.target.version} to ${stable.version} (${why})`,
    });
  };

  // 1. A new operator record is a new change.
  for (const [name, svc] of [...input.services].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
    const cur = plans.get(name);
    if (cur !== undefined && cur.trigger.deployedAt === svc.ref.deployedAt) continue;
    const allocs = allocsOf.get(name) ?? [];
    const stable = cur === undefined ? undefined : cur.status === 'complete' && cur.kind !== 'remove' ? cur.target : cur.stable;
    let spec = svc.spec;
    let target = svc.ref;
    if (svc.removed === true) {
      if (cur === undefined && allocs.length === 0) continue;
      const last = cur === undefined ? undefined : input.specOf(name, cur.target);
      if (last === undefined || cur === undefined) continue;
      spec = last;
      target = cur.target;
    }
    if (spec === undefined) continue;
    const count = svc.removed === true ? 0 : spec.count;
    const running = runningVersion(allocs);
    const fromCount = cur?.toCount ?? indexesOf(allocs).length;
    const kind: PlanKind =
      svc.removed === true
        ? 'remove'
        : allocs.length === 0 && (cur === undefined || cur.kind === 'remove' || cur.toCount === 0)
          ? 'deploy'
          : (cur?.target.version ?? running) !== spec.version || allocs.some((a) => a.version !== spec.version)
            ? 'update'
            : count !== fromCount
              ? 'scale'
              : 'config';
    const fromVersion = cur?.target.version ?? running;
    const next = makePlan({
      service: name,
      kind,
      spec,
      target,
      trigger: { deployedAt: svc.ref.deployedAt, version: svc.ref.version },
      stable,
      seq: seqOf(name),
      fromVersion: kind === 'deploy' ? undefined : fromVersion,
      fromCount,
      count,
      indexes: indexesOf(allocs),
      // A pause outlives a new spec (Kubernetes' rule): the operator paused for a reason a new spec does not know.
      paused: cur !== undefined && isActive(cur) && cur.paused,
      now,
      message:
        kind === 'deploy'
          ? `deploy ${spec.version} x${count}`
          : kind === 'update'
            ? `update ${fromVersion ?? '?'} -> ${spec.version} (x${count})`
            : kind === 'scale'
              ? `scale ${fromCount} -> ${count}`
              : kind === 'remove'
                ? 'remove'
                : 'new spec record (no instance changes)',
    });
    if (cur !== undefined && isActive(cur)) finished.push(finish(cur, 'superseded', `superseded by ${next.id} (${next.kind} to ${next.toVersion})`, now));
    plans.set(name, next);
  }

  // 2. The operator's commands, oldest first.
  const cmds = [...(input.commands ?? [])].sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : a.id < b.id ? -1 : 1));
  for (const command of cmds) {
    const cur = plans.get(command.service);
    const { plan, result } = applyCommand(cur, command, now);
    commandsOut.push({ command, result });
    if (plan === undefined) continue;
    let next = plan;
    if (result.ok && command.action === 'restart-step' && command.step !== undefined) {
      const s = allSteps(plan).find((x) => x.name === command.step);
      if (s !== undefined) {
        let set = restarts.get(command.service);
        if (set === undefined) restarts.set(command.service, (set = new Set()));
        set.add(s.index);
        // The error is cleared: the step runs again from the allocs' state.
        next = { ...next, phases: next.phases.map((p) => ({ ...p, steps: p.steps.map((x) => (x.name === s.name ? { ...x, state: 'pending', since: now } : x)) })) };
        if (s.action === 'replace' && next.promote === 'requested') next = { ...next, restarted: { ...next.restarted, [PROMOTE_NONCE]: now } };
      }
    }
    if (result.ok && command.action === 'promote') next = { ...next, restarted: { ...next.restarted, [PROMOTE_NONCE]: now } };
    if (result.ok && command.action === 'abort') {
      finished.push(next);
      const rb = rollbackOf(next, `plan ${next.id} aborted`);
      if (rb !== undefined) {
        next = rb;
        again = true;
      }
    }
    plans.set(command.service, next);
  }

  // 3. Each service's target spec and gate; then the reconciler.
  const specs: ServiceSpec[] = [];
  const gates = new Map<string, Gate>();
  const targets = new Map<string, SpecRef>();
  const effective = new Map<string, ServiceSpec>();
  const covered = new Set<string>();
  for (const [name, svc] of input.services) {
    const plan = plans.get(name);
    const base = plan === undefined ? svc.spec : (input.specOf(name, plan.target) ?? svc.spec);
    if (base === undefined) continue;
    const spec: ServiceSpec = { ...base, count: svc.removed === true ? 0 : (svc.spec?.count ?? 0) };
    specs.push(spec);
    effective.set(name, spec);
    covered.add(name);
    targets.set(name, plan?.target ?? svc.ref);
    const gate = gateOf(plan, spec, restarts.get(name) ?? new Set());
    const steer = input.appGates?.get(name);
    if (steer !== undefined) gates.set(name, { ...(gate ?? defaultGate(spec)), ...(steer.order === undefined ? {} : { order: steer.order }), ...(steer.hold === undefined ? {} : { holdIndexes: new Set(steer.hold) }) });
    else if (gate !== undefined) gates.set(name, gate);
  }
  // Services the snapshot has without an operator record here (a removal of a never-planned service): as given.
  for (const s of snapshot.services) if (!covered.has(s.name)) specs.push(s);
  const result = reconcile({ ...snapshot, services: specs }, { gates, ...(input.newAllocId === undefined ? {} : { newAllocId: input.newAllocId }) });

  // 4. Steps and transitions.
  const hookRequests: HookRequest[] = [...(result.hookRequests ?? [])];
  const wakes: number[] = result.wakeAt === undefined ? [] : [result.wakeAt];
  for (const [name, plan0] of [...plans]) {
    const spec = effective.get(name);
    if (spec === undefined) continue;
    let plan = plan0;
    const infeasible = result.infeasible.find((x) => x.service === name)?.message;
    const waitWhy = result.events.find((e) => e.service === name && / waits: /.test(e.message))?.message;
    const stoppingIdx = new Map<number, { host: string; id: string }>();
    for (const x of snapshot.stopping ?? []) if (x.service === name) stoppingIdx.set(x.index, { host: x.host, id: x.id });
    const ctx: StepContext = {
      now,
      plan,
      spec,
      hosts,
      allocs: allocsOf.get(name) ?? [],
      result,
      restarted: restarts.get(name) ?? new Set(),
      waitWhy,
      infeasible,
      stoppingIdx,
    };

    // Recoveries and drains outside a rollout become a plan of their own.
    if (plan.status === 'complete' || ((plan.kind === 'recover' || plan.kind === 'drain') && isActive(plan))) {
      const moves = [...result.place.filter((p) => p.alloc.service === name && (p.reason === 'lost' || p.reason === 'failed' || p.reason === 'drain'))];
      // An instance on a draining host is a step of the drain even while it cannot move (no host fits, the budget
      // holds it): the drain is not complete while it is there.
      const stuck = (allocsOf.get(name) ?? []).filter((a) => a.index < spec.count && hosts.get(a.host)?.draining === true && hosts.get(a.host)?.alive === true);
      const idx = [...new Set([...moves.map((p) => p.alloc.index), ...stuck.map((a) => a.index)])].filter((i) => !allSteps(plan).some((s) => s.index === i && plan.status !== 'complete'));
      if (idx.length > 0) {
        const kind: PlanKind = moves.some((p) => p.reason === 'drain') || stuck.length > 0 ? 'drain' : 'recover';
        if (plan.status === 'complete') {
          const why = moves.map((p) => `${stepName(name, p.alloc.index)} (${p.reason})`).join(', ');
          const next = makePlan({
            service: name,
            kind,
            spec,
            target: plan.target,
            trigger: plan.trigger,
            stable: plan.target,
            seq: seqOf(name),
            fromVersion: plan.target.version,
            fromCount: spec.count,
            count: spec.count,
            indexes: idx,
            paused: false,
            now,
            message: `${kind}: ${why}`,
          });
          plan = next;
        } else {
          const phase = plan.phases[0];
          if (phase !== undefined) plan = { ...plan, phases: [{ ...phase, steps: [...phase.steps, ...idx.map((i) => step(name, i, 'move', now))] }, ...plan.phases.slice(1)] };
        }
      }
    }
    if (!isActive(plan)) {
      if (plan !== plan0) plans.set(name, plan);
      continue;
    }

    const ctx2: StepContext = { ...ctx, plan };
    let completedNow = 0;
    const forced = new Set(plan.forced);
    const phases = plan.phases.map((ph) => ({
      ...ph,
      steps: ph.steps.map((s) => {
        let d: Derived;
        // The view says "forced" from the flag; no why of its own.
        if (forced.has(s.name)) d = { state: 'complete' };
        else if (s.state === 'error' && !ctx.restarted.has(s.index)) return s;
        else d = deriveStep(ctx2, s);
        if (d.state === 'complete' && s.state !== 'complete') completedNow++;
        const next: PlanStep = {
          name: s.name,
          index: s.index,
          action: s.action,
          state: d.state,
          since: d.state === s.state ? s.since : now,
          ...(d.why === undefined ? {} : { why: d.why }),
          ...(d.from !== undefined ? { from: d.from } : s.from !== undefined ? { from: s.from } : {}),
          ...(d.to !== undefined ? { to: d.to } : s.to !== undefined ? { to: s.to } : {}),
          ...(d.output === undefined ? {} : { output: d.output.slice(-4096) }),
          ...(forced.has(s.name) ? { forced: true } : {}),
        };
        return sameStep(next, s) ? s : next;
      }),
    }));
    plan = { ...plan, phases };
    if (completedNow > 0) plan = { ...plan, lastProgressAt: now };
    const steps = allSteps(plan);

    // Transitions.
    const error = steps.find((s) => s.state === 'error');
    const canarySteps = plan.phases.find((p) => p.name === 'canary')?.steps ?? [];
    const canariesReady = canarySteps.length > 0 && canarySteps.every((s) => s.state === 'waiting-operator' || s.state === 'complete');
    const awaitingPromote = plan.promote === 'no' && canariesReady && !plan.strategy.autoPromote;
    const open = steps.some((s) => s.state !== 'complete');
    // Waiting for the operator (paused, promote) is not a lack of progress.
    const clocked = plan.strategy.progressDeadlineMs > 0 && open && !plan.paused && !awaitingPromote && plan.failedAt === undefined;
    const stalled = clocked && now - plan.lastProgressAt >= plan.strategy.progressDeadlineMs;
    if (clocked && !stalled) wakes.push(plan.lastProgressAt + plan.strategy.progressDeadlineMs);
    if ((error !== undefined || stalled) && plan.failedAt === undefined) {
      const why = error !== undefined ? `step ${error.name} failed: ${error.why ?? 'error'}` : `no step completed for ${formatDuration(plan.strategy.progressDeadlineMs)} (progress deadline)`;
      const rb = plan.strategy.autoRevert ? rollbackOf(plan, why) : undefined;
      if (rb !== undefined) {
        finished.push(finish(plan, 'rolled-back', `${why}; rolled back to ${rb.toVersion}`, now));
        plans.set(name, rb);
        again = true;
        continue;
      }
      const hint =
        plan.kind === 'rollback'
          ? 'the rollback itself failed'
          : plan.strategy.autoRevert
            ? 'no earlier healthy version to roll back to'
            : 'auto-revert is off';
      plan = withLog({ ...plan, status: 'waiting', failedAt: now, why: `${why}; ${hint}: restart the step, force-complete it, abort, or deploy a fix` }, now, `failed: ${why}`);
    } else if (plan.failedAt === undefined) {
      if (plan.promote === 'no' && canariesReady && plan.strategy.autoPromote)
        plan = withLog({ ...plan, promote: 'requested', restarted: { ...plan.restarted, [PROMOTE_NONCE]: now } }, now, 'canaries healthy: promoting (autoPromote)');
      if (plan.promote === 'requested') {
        const nonce = plan.restarted[PROMOTE_NONCE] ?? now;
        const keepers = canarySteps.map((s) => ctx.allocs.find((a) => a.id === s.to?.allocId));
        const hooked = spec.hooks?.beforePromote !== undefined;
        const done = !hooked || keepers.every((a) => a?.status?.hooks?.beforePromote?.nonce === nonce && a.status.hooks.beforePromote.state === 'ok');
        if (done) plan = withLog({ ...plan, promote: 'done', lastProgressAt: now }, now, 'canaries promoted');
        else
          for (const a of keepers)
            if (a !== undefined && (a.hookRequests?.beforePromote ?? 0) < nonce) hookRequests.push({ allocId: a.id, host: a.host, service: name, index: a.index, hook: 'beforePromote', nonce });
      }
      const status = plan.paused ? 'paused' : awaitingPromote ? 'waiting' : 'running';
      if (status !== plan.status) {
        if (status === 'waiting') plan = withLog({ ...plan, status, why: `canaries healthy: waiting for promote (backplane rollout promote ${name})` }, now, 'canaries healthy: waiting for promote');
        else {
          const { why: _w, ...rest } = plan;
          plan = { ...rest, status };
        }
      }
      if (!open && plan.promote === 'done') {
        const done = finish(plan, 'complete', `${plan.kind} to ${plan.toVersion} complete (${steps.length} step${steps.length === 1 ? '' : 's'})`, now);
        finished.push(done);
        plan = done;
      }
    }
    plans.set(name, plan);
  }

  const write: ServicePlan[] = [];
  for (const [name, plan] of plans) {
    const before = original.get(name);
    // Compared without key order: a plan read back from the store lists its fields as it was written, not as it was
    // rebuilt this tick; comparing texts rewrote an unchanged plan on every tick (a hundred writes a second while it
    // waited for health or an operator).
    if (before !== undefined && canonicalJson({ ...before, updatedAt: 0 }) === canonicalJson({ ...plan, updatedAt: 0 })) continue;
    write.push({ ...plan, updatedAt: now });
  }
  const future = wakes.filter((w) => w > now);
  const { wakeAt: _wake, hookRequests: _hooks, ...rest } = result;
  const out: Plan = { ...rest, ...(hookRequests.length === 0 ? {} : { hookRequests }), ...(future.length === 0 ? {} : { wakeAt: Math.min(...future) }) };
  return { plan: out, write, finished, commands: commandsOut, targets, again };
}
