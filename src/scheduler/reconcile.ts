/**
 * The reconciler: from one snapshot of the cluster (hosts, specs, allocs with their reported status) to the plan that
 * moves it toward the specs — which instances to place, which to stop, and why. Nomad's reconciler as a pure
 * function: no I/O, no clock but `snapshot.now`, no randomness but the alloc id generator, so the controller,
 * `deploy --dry-run` and the tests all get the same plan from the same snapshot.
 *
 * Per service, instance by instance (index 0..count-1), every alloc of the index is classified by where it is
 * (healthy host, draining host, host past its drain deadline, host down within the fence grace, host down past it)
 * and by what it is (current version or not, failed or not), and the index gets one decision:
 *   - an alloc of the current version on a usable host is the index's *keeper*; once it has been healthy for
 *     update.minHealthyMs, every other alloc of the index (old version, on a draining host, duplicate) is stopped;
 *   - without a keeper: a host down within the grace holds the index (its instance may still run; replacing it now
 *     could make two); a failed alloc is rescheduled with the policy's backoff; an old-version or draining alloc is
 *     replaced surge-style (new first, old stopped once the new one is healthy), at most update.maxParallel at a time;
 *     an alloc on a host down past the grace is replaced at once; an empty index gets a new alloc.
 * Indexes >= count are stopped (scale down, highest index first). Every decision is an event with a human reason.
 *
 * Stops never free resources within the same plan (the old process holds its port until it is gone); the only
 * exception is a failed alloc, whose reservation its own replacement may take over on the same host.
 */
import { placeInstances, type AllocIdGenerator, type PlacementRequest } from './placement.js';
import type { Alloc, ClusterSnapshot, HookRequest, HostSnapshot, Infeasible, Placement, Plan, PlanEvent, ServiceSpec, Stop } from './types.js';

export interface ReconcileOptions {
  /** Default: `<service>.<index>.<8 random hex>`. */
  readonly newAllocId?: AllocIdGenerator;
  /** Per service: what its plan allows this pass (plans.ts). A service without one rolls with its spec's policy. */
  readonly gates?: ReadonlyMap<string, Gate>;
}

/**
 * What a service's plan lets the reconciler do in one pass. The reconciler still decides every placement and stop;
 * the gate says which voluntary changes (update steps, drain moves, scale-down stops) may start.
 */
export interface Gate {
  /** No new rollout step or scale-down stop starts (paused, or failed and waiting for the operator); ones in flight finish. Drains are not held. */
  readonly hold: boolean;
  readonly holdWhy?: string;
  /** Indexes that get their new-version instance next to the old one before promotion (the canaries). */
  readonly canaries: ReadonlySet<number>;
  /** Canaries promoted (or none): the old instances of canary indexes go, and the other indexes roll. */
  readonly promoted: boolean;
  readonly startFirst: boolean;
  /** >= 1. */
  readonly maxParallel: number;
  readonly maxUnavailable: number;
  /** Force-completed indexes: a running new instance is accepted now; an index not started is left as it is. */
  readonly forced: ReadonlySet<number>;
  /** Restarted this pass: the index's new-version instances that are not settled are stopped and placed again. */
  readonly restart: ReadonlySet<number>;
  /** Hook requests older than this nonce (per index) are asked again (restart-step). */
  readonly hookNonce?: ReadonlyMap<number, number>;
  /**
   * Hook requests (and their results) older than this are from an earlier plan: asked again, so that a before-stop
   * hook that failed once does not block every later stop of its instance.
   */
  readonly minHookNonce?: number;
  /** An application backplane's update order (indexes; the rest after, by index): e.g. replicas first, primary last. */
  readonly order?: readonly number[];
  /** Indexes an application backplane holds back from a rollout for now (the primary, until its switchover is done). */
  readonly holdIndexes?: ReadonlySet<number>;
}

/** The gate of a service without a plan: its own update policy, nothing held. */
export function defaultGate(spec: ServiceSpec): Gate {
  const maxParallel = effectiveParallel(spec);
  return {
    hold: false,
    canaries: new Set(),
    promoted: true,
    startFirst: spec.update.startFirst ?? spec.count <= 1,
    maxParallel,
    maxUnavailable: spec.maxUnavailable ?? maxParallel,
    forced: new Set(),
    restart: new Set(),
  };
}

/** maxParallel 0 means all at once. */
export function effectiveParallel(spec: ServiceSpec): number {
  return spec.update.maxParallel === 0 ? Math.max(1, spec.count) : spec.update.maxParallel;
}

/** Where an alloc is, as far as this plan is concerned. */
type Where =
  /** alive, not draining */
  | 'ok'
  /** alive, draining, before its deadline */
  | 'draining'
  /** alive, draining, past its deadline: stopped now */
  | 'gone'
  /** host down for less than the fence grace: the instance may still run */
  | 'waiting'
  /** host down for the fence grace or longer: fenced, replaced */
  | 'lost';

interface View {
  readonly a: Alloc;
  readonly where: Where;
  readonly host?: HostSnapshot;
  /** Crash loop past the restart policy, or stopped by itself: the controller must act. */
  readonly failed: boolean;
  readonly current: boolean;
  readonly healthy: boolean;
  /** Healthy for update.minHealthyMs: counts, and the alloc it replaces can go. */
  readonly settled: boolean;
}

/** A placement the reconciler asks for, with what to do once it has a host. */
interface Intent {
  readonly req: PlacementRequest;
  readonly priority: number;
  /** Allocs stopped only when the replacement got a host (a lost or failed alloc is kept while there is none). */
  readonly stopOnPlaced: readonly { readonly view: View; readonly reason: string }[];
  readonly describe: (placed: Alloc) => string;
}

/**
 * Healing first (an instance is down), then scale-up, then moves off draining hosts, then updates, so that when
 * capacity is short it goes to what is not running at all.
 */
const PRIORITY: Readonly<Record<Placement['reason'], number>> = { lost: 0, failed: 1, new: 2, drain: 3, update: 4 };

/** Reschedule timestamps kept per alloc: enough for the delay to reach any sane maximum, and for a window of attempts. */
const KEEP_RESCHEDULES = 32;

/** 3100 -> "3.1s", 10000 -> "10s", 300000 -> "5m". */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return 'ever';
  const trim = (n: number): string => String(Math.round(n * 10) / 10);
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${trim(ms / 1000)}s`;
  if (ms < 3_600_000) return `${trim(ms / 60_000)}m`;
  return `${trim(ms / 3_600_000)}h`;
}

const name = (a: Alloc): string => `${a.service}.${a.index}`;

function isFailed(a: Alloc): boolean {
  // 'stopped' while still assigned means the process ended on its own and the supervisor will not start it again:
  // for the service it is as gone as a crash loop.
  return a.status?.state === 'failed' || a.status?.state === 'stopped';
}

function isHealthy(a: Alloc, spec: ServiceSpec): boolean {
  const s = a.status?.state;
  // Without a health check, running is as healthy as the agent can tell.
  return s === 'healthy' || (s === 'running' && spec.health === undefined);
}

/** Best first: settled, healthy, running, starting, unknown, unhealthy; then the oldest; then by id. */
function rank(v: View): number {
  if (v.settled) return 0;
  if (v.healthy) return 1;
  switch (v.a.status?.state) {
    case 'running':
      return 2;
    case 'starting':
      return 3;
    case 'unhealthy':
      return 5;
    default:
      return 4;
  }
}

function better(x: View, y: View): number {
  return rank(x) - rank(y) || x.a.createdAt - y.a.createdAt || (x.a.id < y.a.id ? -1 : x.a.id > y.a.id ? 1 : 0);
}

export function reconcile(snapshot: ClusterSnapshot, opts: ReconcileOptions = {}): Plan {
  const { now } = snapshot;
  const hosts = new Map<string, HostSnapshot>();
  for (const h of snapshot.hosts) if (!hosts.has(h.name)) hosts.set(h.name, h);

  const stops: Stop[] = [];
  const events: PlanEvent[] = [];
  const warnings: string[] = [];
  const intents: Intent[] = [];
  const wakes: number[] = [];
  const wake = (at: number): void => {
    if (at > now && Number.isFinite(at)) wakes.push(at);
  };

  const specs = new Map<string, ServiceSpec>();
  for (const s of [...snapshot.services].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    if (specs.has(s.name)) warnings.push(`service ${s.name} is listed twice; the first spec is used`);
    else specs.set(s.name, s);
  }

  const allocsOf = new Map<string, Alloc[]>();
  for (const a of snapshot.allocs) {
    let list = allocsOf.get(a.service);
    if (list === undefined) allocsOf.set(a.service, (list = []));
    list.push(a);
  }
  for (const [service, list] of [...allocsOf].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
    // A spec the controller could not read (or verify) is unknown, not removed: removal comes as count 0.
    if (!specs.has(service)) warnings.push(`${list.length} alloc${list.length === 1 ? '' : 's'} of service ${service}, which has no spec: left alone`);
  }
  const unknownHosts = new Set<string>();

  const hookRequests: HookRequest[] = [];
  const stop = (v: View, reason: string, message: string): void => {
    stops.push({ allocId: v.a.id, host: v.a.host, service: v.a.service, index: v.a.index, reason });
    events.push({ service: v.a.service, message, allocId: v.a.id, host: v.a.host });
  };

  for (const spec of specs.values()) {
    const { update } = spec;
    const gate = opts.gates?.get(spec.name) ?? defaultGate(spec);
    const afterStart = spec.hooks?.afterStart !== undefined;
    const viewOf = (a: Alloc): View => {
      const host = hosts.get(a.host);
      let where: Where;
      if (host === undefined) {
        // Not in the snapshot at all: nothing says how long it has been gone, so never replace on that basis (a
        // duplicate is worse than a late replacement). The snapshot builder lists every host that holds an alloc.
        unknownHosts.add(a.host);
        where = 'waiting';
      } else if (!host.alive) where = host.downForMs >= (host.fenceGraceMs ?? snapshot.fenceGraceMs) ? 'lost' : 'waiting';
      else if (!host.draining) where = 'ok';
      else where = host.drainDeadline !== undefined && now >= host.drainDeadline ? 'gone' : 'draining';
      const live = where === 'ok' || where === 'draining';
      const healthy = live && isHealthy(a, spec);
      const current = a.version === spec.version;
      // An after-start hook must have succeeded before a new instance counts (it is the step's last act).
      const hooked = !current || !afterStart || a.status?.hooks?.afterStart?.state === 'ok';
      return {
        a,
        where,
        ...(host === undefined ? {} : { host }),
        failed: isFailed(a),
        current,
        healthy,
        settled: healthy && hooked && now - (a.status?.since ?? now) >= update.minHealthyMs,
      };
    };
    const views = (allocsOf.get(spec.name) ?? []).map(viewOf);

    /**
     * A voluntary stop (an update, a drain's move, a scale-down): an alloc whose spec has a before-stop hook and
     * whose agent reports on it is stopped only once the hook ran ok for the latest request (the plan shows a failed
     * hook as its step's error). Returns whether it was stopped now.
     */
    const letGo = (v: View, reason: string, message: string, forced: boolean): boolean => {
      const wantsHook = v.a.hooks?.includes('beforeStop') === true && (v.where === 'ok' || v.where === 'draining') && v.a.status !== undefined && !v.failed;
      if (!wantsHook || forced) {
        stop(v, reason, message);
        return true;
      }
      const min = Math.max(gate.hookNonce?.get(v.a.index) ?? 0, gate.minHookNonce ?? 0);
      const asked = v.a.hookRequests?.beforeStop;
      if (asked === undefined || asked < min) {
        hookRequests.push({ allocId: v.a.id, host: v.a.host, service: v.a.service, index: v.a.index, hook: 'beforeStop', nonce: Math.max(now, min) });
        events.push({ service: v.a.service, message: `running the before-stop hook of ${name(v.a)} on ${v.a.host} (${reason})`, allocId: v.a.id, host: v.a.host });
        return false;
      }
      const r = v.a.status?.hooks?.beforeStop;
      if (r?.nonce === asked && r.state === 'ok') {
        stop(v, reason, message);
        return true;
      }
      return false;
    };

    // Healthy instances, one per index at most: what the disruption budget is counted against.
    const healthyAt = new Set<number>();
    for (const v of views) if (v.healthy && Number.isInteger(v.a.index) && v.a.index >= 0 && v.a.index < spec.count) healthyAt.add(v.a.index);
    const stoppingOf = (snapshot.stopping ?? []).filter((x) => x.service === spec.name);
    const budget = gate.maxUnavailable;
    let down = spec.count - healthyAt.size + stoppingOf.filter((x) => x.index >= spec.count).length;

    // Scale down (and removal: count 0): every alloc past the count goes, the newest instances first. With a count
    // above 0 a scale-down is a voluntary change: healthy instances go at most `budget` at a time (each fully
    // stopped before the next); unhealthy ones go at once.
    const excess = views
      .filter((v) => !(Number.isInteger(v.a.index) && v.a.index >= 0 && v.a.index < spec.count))
      .sort((x, y) => Number(x.healthy) - Number(y.healthy) || y.a.index - x.a.index || y.a.createdAt - x.a.createdAt);
    let scaleHeld = 0;
    for (const v of excess) {
      if (!Number.isInteger(v.a.index) || v.a.index < 0) {
        stop(v, `invalid index ${v.a.index}`, `stopped ${v.a.id} on ${v.a.host}: invalid index`);
        continue;
      }
      const costs = spec.count > 0 && v.healthy;
      if (costs && (gate.hold || down >= Math.max(1, budget))) {
        scaleHeld++;
        continue;
      }
      // Counted from the moment it starts going (its before-stop hook included) until its process is gone.
      letGo(v, `scale down to ${spec.count}`, `stopped ${name(v.a)} on ${v.a.host} (scale down to ${spec.count})`, gate.forced.has(v.a.index));
      if (costs) down++;
    }
    if (scaleHeld > 0)
      events.push({ service: spec.name, message: gate.hold ? `scale-down of ${scaleHeld} instance${scaleHeld === 1 ? '' : 's'} held: ${gate.holdWhy ?? 'plan held'}` : `scale-down waits: ${down} of ${Math.max(1, budget)} instances may be down at once (disruption budget)` });

    const excessSet = new Set(excess);
    const byIndex = new Map<number, View[]>();
    for (const v of views) {
      if (excessSet.has(v)) continue;
      let list = byIndex.get(v.a.index);
      if (list === undefined) byIndex.set(v.a.index, (list = []));
      list.push(v);
    }

    let inFlight = 0;
    /** Indexes whose old or draining alloc waits for a replacement slot. */
    const budgeted: { index: number; source: View; drain: boolean }[] = [];

    for (let i = 0; i < spec.count; i++) {
      let list = byIndex.get(i) ?? [];
      const label = `${spec.name}.${i}`;
      const forced = gate.forced.has(i);

      if (gate.restart.has(i)) {
        // The operator restarts the step: its new-version instances that have not made it are replaced.
        const again = list.filter((v) => v.current && !v.settled && v.where !== 'waiting');
        for (const v of again) stop(v, 'step restarted', `stopped ${label} (${v.a.id}) on ${v.a.host}: step restarted by the operator`);
        list = list.filter((v) => !again.includes(v));
      }

      for (const v of list.filter((x) => x.where === 'gone' && !x.failed)) {
        stop(v, 'drain deadline passed', `stopped ${label} on ${v.a.host}: drain deadline passed${v.healthy ? ' (it was healthy)' : ''}`);
      }

      // Duplicates (a controller that died mid-plan, a host back from a partition): one per version and place.
      const groups = new Map<string, View[]>();
      for (const v of list) {
        if (v.failed || (v.where !== 'ok' && v.where !== 'draining')) continue;
        const key = `${v.a.version}\0${v.where}`;
        const g = groups.get(key);
        if (g === undefined) groups.set(key, [v]);
        else g.push(v);
      }
      const kept: View[] = [];
      for (const g of groups.values()) {
        g.sort(better);
        kept.push(g[0]!);
        for (const d of g.slice(1)) stop(d, 'duplicate', `stopped duplicate ${label} on ${d.a.host} (keeping ${g[0]!.a.id} on ${g[0]!.a.host})`);
      }
      const keeper = kept.find((v) => v.current && v.where === 'ok');
      const sources = kept.filter((v) => v !== keeper).sort((x, y) => (x.where === 'draining' ? 0 : 1) - (y.where === 'draining' ? 0 : 1) || better(x, y));
      const waiting = list.filter((v) => v.where === 'waiting');
      const lost = list.filter((v) => v.where === 'lost');
      const failed = list.filter((v) => v.failed && (v.where === 'ok' || v.where === 'draining' || v.where === 'gone'));

      if (keeper !== undefined) {
        for (const v of lost) stop(v, 'lost', `stopped ${label} on ${v.a.host}: host down, replaced by ${keeper.a.id} on ${keeper.a.host}`);
        for (const v of failed) stop(v, 'failed', `stopped failed ${label} on ${v.a.host}: replaced by ${keeper.a.id} on ${keeper.a.host}`);
        const waitingOn = [...sources, ...waiting];
        if (waitingOn.length === 0) {
          // A new instance not settled yet is a step in flight, also once its old one is gone (stop first).
          if (!keeper.settled) {
            inFlight++;
            if (keeper.healthy) wake((keeper.a.status?.since ?? now) + update.minHealthyMs);
            else wake(keeper.a.createdAt + update.healthyDeadlineMs);
          }
          continue;
        }
        // A canary keeps its old instance next to it until the canaries are promoted.
        const canaryHeld = gate.canaries.has(i) && !gate.promoted && sources.some((v) => v.where === 'ok');
        const accepted = forced && keeper.a.status !== undefined && !keeper.failed;
        if ((keeper.settled && !canaryHeld) || accepted) {
          for (const v of waitingOn) {
            const why =
              v.where === 'draining'
                ? `moved off draining ${v.a.host}`
                : v.where === 'waiting'
                  ? 'host down; replaced'
                  : `replaced by version ${keeper.a.version}`;
            const message = `stopped ${label} (${v.a.version}) on ${v.a.host}: ${why}; ${keeper.a.id} ${accepted && !keeper.settled ? 'accepted by the operator' : 'healthy'} on ${keeper.a.host}`;
            if (v.where === 'waiting') stop(v, why, message);
            else letGo(v, why, message, forced);
          }
          continue;
        }
        // The new alloc is in flight (or a canary waiting for promotion): the old one stays.
        if (!canaryHeld) inFlight++;
        if (keeper.healthy) wake((keeper.a.status?.since ?? now) + update.minHealthyMs);
        const deadline = keeper.a.createdAt + update.healthyDeadlineMs;
        if (!keeper.healthy && now >= deadline) {
          events.push({
            service: spec.name,
            message: `${keeper.a.id} on ${keeper.a.host} not healthy within ${formatDuration(update.healthyDeadlineMs)} (${keeper.a.status?.state ?? 'no status'}); ${label} keeps ${sources[0]?.a.id ?? 'its old alloc'}`,
            allocId: keeper.a.id,
            host: keeper.a.host,
          });
        } else if (!keeper.healthy) wake(deadline);
        for (const v of sources) if (v.where === 'draining' && v.host?.drainDeadline !== undefined) wake(v.host.drainDeadline);
        continue;
      }

      if (waiting.length > 0) {
        // Its host may still run it until its fence has killed it: replacing it now could make two.
        for (const v of waiting) {
          const downFor = v.host?.downForMs ?? 0;
          const grace = v.host?.fenceGraceMs ?? snapshot.fenceGraceMs;
          if (v.host !== undefined) wake(now + grace - downFor);
          events.push({
            service: spec.name,
            message: `${label} on ${v.a.host}: host down; replaced once it has been gone ${formatDuration(grace)} (fence grace)`,
            allocId: v.a.id,
            host: v.a.host,
          });
        }
        if (sources.length > 0) inFlight++;
        continue;
      }

      if (failed.length > 0) {
        // The latest failure decides; older failed allocs of the index are leftovers of earlier attempts.
        failed.sort((x, y) => (y.a.status?.since ?? 0) - (x.a.status?.since ?? 0) || y.a.createdAt - x.a.createdAt);
        const f = failed[0]!;
        const others = [...failed.slice(1), ...lost];
        if (sources.length > 0) inFlight++;
        const r = spec.reschedule;
        const failedAt = f.a.status?.since ?? f.a.createdAt;
        const inWindow = f.a.reschedules.filter((t) => now - t < r.intervalMs);
        const attempt = (r.unlimited ? f.a.reschedules.length : inWindow.length) + 1;
        const attemptText = r.unlimited ? `attempt ${attempt}` : `attempt ${attempt} of ${r.attempts}`;
        if (!r.unlimited && inWindow.length >= r.attempts) {
          const oldest = Math.min(...inWindow);
          if (r.attempts > 0) wake(oldest + r.intervalMs);
          events.push({
            service: spec.name,
            message:
              r.attempts === 0
                ? `${label} failed on ${f.a.host} (crash loop); not rescheduled (reschedule policy: no attempts)`
                : `${label} failed on ${f.a.host} (crash loop); not rescheduled: ${r.attempts} attempts in ${formatDuration(r.intervalMs)} used`,
            allocId: f.a.id,
            host: f.a.host,
          });
          continue;
        }
        // A failed new-version instance next to a running old one is the rollout's business (its step failed): the
        // old one keeps serving, and the plan decides (revert, or the operator restarts the step).
        if (f.current && sources.length > 0 && (gate.hold || !gate.promoted || forced)) continue;
        // Exponential backoff over every reschedule of the instance so far (Nomad's default delay function). A
        // failed instance of another version (a rollback replacing the version that crashed) is no crash loop of
        // what is wanted now: replaced at once.
        const delay = f.current ? Math.min(r.maxDelayMs, r.delayMs * 2 ** f.a.reschedules.length) : 0;
        if (now < failedAt + delay) {
          wake(failedAt + delay);
          events.push({
            service: spec.name,
            message: `${label} failed on ${f.a.host} (crash loop); rescheduling in ${formatDuration(delay)} (${attemptText})`,
            allocId: f.a.id,
            host: f.a.host,
          });
          continue;
        }
        const history = [...f.a.reschedules, now].slice(-Math.max(KEEP_RESCHEDULES, r.attempts + 1));
        intents.push({
          req: { spec, index: i, reason: 'failed', previous: f.a.id, reschedules: history, avoidHost: f.a.host, reuse: f.a },
          priority: PRIORITY.failed,
          stopOnPlaced: [{ view: f, reason: 'failed' }, ...others.map((view) => ({ view, reason: view.where === 'lost' ? 'lost' : 'failed' }))],
          describe: (p) => `${label} failed on ${f.a.host} (crash loop); rescheduled on ${p.host} (${attemptText})`,
        });
        continue;
      }

      if (sources.length > 0) {
        for (const v of lost) stop(v, 'lost', `stopped ${label} on ${v.a.host}: host down; ${sources[0]!.a.id} still serves it`);
        if (forced && !sources.some((v) => v.where === 'draining')) {
          // Force-completed: a step whose old instance was already being stopped (its before-stop hook asked for
          // in this plan, and failed or hangs) goes on without the hook; one not started stays as it is.
          const src = sources[0]!;
          const asked = src.a.hookRequests?.beforeStop;
          if (asked !== undefined && asked >= (gate.minHookNonce ?? 0) && src.where === 'ok') {
            stop(src, 'force-completed by the operator', `stopped ${label} (${src.a.version}) on ${src.a.host}: step force-completed by the operator (before-stop hook skipped)`);
            inFlight++;
          }
          continue;
        }
        budgeted.push({ index: i, source: sources[0]!, drain: sources.some((v) => v.where === 'draining') });
        for (const v of sources) if (v.where === 'draining' && v.host?.drainDeadline !== undefined) wake(v.host.drainDeadline);
        continue;
      }

      if (lost.length > 0) {
        lost.sort((x, y) => y.a.createdAt - x.a.createdAt);
        const l = lost[0]!;
        const downFor = l.host?.downForMs ?? 0;
        intents.push({
          req: { spec, index: i, reason: 'lost', previous: l.a.id, reschedules: l.a.reschedules },
          priority: PRIORITY.lost,
          stopOnPlaced: lost.map((view) => ({ view, reason: 'lost' })),
          describe: (p) => `${label} on ${l.a.host} lost (host down ${formatDuration(downFor)}); replacing on ${p.host}`,
        });
        continue;
      }

      const gone = list.find((v) => v.where === 'gone');
      if (gone !== undefined) {
        intents.push({
          req: { spec, index: i, reason: 'drain', previous: gone.a.id, reschedules: gone.a.reschedules },
          priority: PRIORITY.lost,
          stopOnPlaced: [],
          describe: (p) => `${label} stopped on ${gone.a.host} at its drain deadline; placed on ${p.host}`,
        });
        continue;
      }

      // Nothing runs it: a first deploy, a scale-up, or the second half of a stop-first update step (the old one
      // was stopped; placement counts it while it is still stopping). In flight until its new instance settles.
      inFlight++;
      intents.push({ req: { spec, index: i, reason: 'new' }, priority: PRIORITY.new, stopOnPlaced: [], describe: (p) => `placed ${label} on ${p.host}` });
    }

    // Voluntary replacements, at most maxParallel in flight, within the disruption budget; drains before updates
    // (the host is going away). Canaries first, all at once, before anything else rolls.
    const rank = (i: number): number => {
      const at = gate.order?.indexOf(i) ?? -1;
      return at < 0 ? (gate.order?.length ?? 0) + i : at;
    };
    budgeted.sort((x, y) => (x.drain === y.drain ? rank(x.index) - rank(y.index) : x.drain ? -1 : 1));
    let heldWhy: string | undefined;
    for (const b of budgeted) {
      const label = `${spec.name}.${b.index}`;
      const src = b.source.a;
      const canary = gate.canaries.has(b.index) && !gate.promoted && !b.drain;
      // A held rollout (paused, failed) holds its own steps, not a drain: the operator drains a host for reasons
      // of its own, with its own deadline, and the disruption budget still applies.
      if (gate.hold && !b.drain) {
        heldWhy ??= `rollout waits: ${gate.holdWhy ?? 'the plan is held'}`;
        continue;
      }
      if (!b.drain && !gate.promoted && !canary) {
        heldWhy ??= 'rollout waits: the canaries are not promoted yet';
        continue;
      }
      if (!b.drain && gate.holdIndexes?.has(b.index) === true) {
        heldWhy ??= `rollout waits: its application backplane holds ${label} back for now (e.g. until a switchover)`;
        continue;
      }
      // In flight up to maxParallel: the normal pace of a rollout, not worth an event.
      if (!canary && inFlight >= gate.maxParallel) break;
      // Starting the new one first costs no availability; stopping first costs one healthy instance.
      const startFirst = canary || b.drain || gate.startFirst;
      const costs = b.source.healthy && !startFirst ? 1 : 0;
      if (down + costs > Math.max(1, budget) || (b.drain && down >= Math.max(1, budget))) {
        heldWhy ??= `${b.drain ? 'drain' : 'rollout'} waits: ${down} of ${Math.max(1, budget)} instances may be down at once (disruption budget)`;
        continue;
      }
      inFlight++;
      if (!startFirst) {
        // Stop first: the replacement is placed once the old alloc's assignment is gone (the next pass).
        letGo(b.source, `update to ${spec.version} (stop first)`, `stopping ${label} (${src.version}) on ${src.host} to update it to ${spec.version}`, false);
        down += costs;
        continue;
      }
      intents.push({
        req: { spec, index: b.index, reason: b.drain ? 'drain' : 'update', previous: src.id, reschedules: src.reschedules },
        priority: b.drain ? PRIORITY.drain : PRIORITY.update,
        stopOnPlaced: [],
        describe: b.drain
          ? (p) => `moving ${label} off draining ${src.host} to ${p.host}`
          : (p) => `${canary ? 'canary ' : ''}updating ${label} to version ${spec.version} on ${p.host} (replaces ${src.id} on ${src.host}, version ${src.version})`,
      });
    }
    if (heldWhy !== undefined) events.push({ service: spec.name, message: heldWhy });
  }

  for (const h of [...unknownHosts].sort()) warnings.push(`allocs on host ${h}, which is not in the snapshot: left in place`);

  intents.sort((x, y) => x.priority - y.priority);
  const byKey = new Map<string, Intent>();
  for (const it of intents) byKey.set(`${it.req.spec.name}\0${it.req.index}`, it);
  // Allocs still stopping hold their ports and resources until their process is gone.
  const held: Alloc[] = (snapshot.stopping ?? []).map((x) => ({ ...x, version: '', createdAt: 0, reschedules: [] }));
  const result = placeInstances(
    {
      now,
      hosts: snapshot.hosts,
      allocs: held.length === 0 ? snapshot.allocs : [...snapshot.allocs, ...held],
      services: [...specs.values()],
      ...(snapshot.policies === undefined ? {} : { policies: snapshot.policies }),
    },
    intents.map((it) => it.req),
    opts.newAllocId === undefined ? {} : { newAllocId: opts.newAllocId },
  );
  const place: Placement[] = [];
  for (const alloc of result.placed) {
    const it = byKey.get(`${alloc.service}\0${alloc.index}`)!;
    place.push({ alloc, reason: it.req.reason });
    events.push({ service: alloc.service, message: it.describe(alloc), allocId: alloc.id, host: alloc.host });
    for (const s of it.stopOnPlaced) {
      stops.push({ allocId: s.view.a.id, host: s.view.a.host, service: s.view.a.service, index: s.view.a.index, reason: `${s.reason}; replaced by ${alloc.id}` });
    }
  }
  const infeasible: Infeasible[] = [...result.infeasible];
  for (const inf of infeasible) events.push({ service: inf.service, message: inf.message });
  warnings.push(...result.warnings);

  const plan: Plan = { place, stop: stops, infeasible, events, warnings, ...(hookRequests.length === 0 ? {} : { hookRequests }) };
  return wakes.length === 0 ? plan : { ...plan, wakeAt: Math.min(...wakes) };
}
