/**
 * Prometheus metrics of one agent (and of its controller while it leads): one prom-client Registry per agent, never
 * the global one, so several agents can run in one process (tests). The API server answers `GET /metrics` with
 * `text()`. Every metric is documented in docs/metrics.md.
 *
 * Hot paths (the engine runs 100k resources) get per-kind handles made once (`forKind`): a run costs one histogram
 * observe, a watch event one counter increment. Gauges of state (resources by state, instances, lease, leader) are
 * computed when scraped, from callbacks the engine, the cluster link, the instances and the controller register.
 * Labels are low-cardinality: a resource kind, a state, a result, a store operation, a service name — never a
 * resource id or an alloc id.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { isStoreError } from '../cluster/store.js';

/** Resource runs: fast checks (a stat) to slow applies (a package install, a service start). */
const RUN_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];
/** Store requests: ~2 ms on a healthy etcd; seconds when a member is down (per-attempt deadline 1 s). */
const STORE_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** From a lost host or a failed instance to its replacement healthy: the lease TTL, backoffs, a start, a health check. */
const RECOVERY_BUCKETS = [1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300, 600, 1800];
const PASS_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** The vertex states counted by backplane_resources (every one of them, so a 0 is a sample, not a missing series). */
const RESOURCE_STATES = ['pending', 'running', 'retrying', 'converged', 'failed', 'blocked'] as const;

export type StoreOp = 'get' | 'list' | 'put' | 'delete' | 'cas' | 'txn' | 'lease' | 'compact' | 'health';

/** What the engine's workers record, per resource kind; made once per kind (Metrics.forKind). */
export interface KindMetrics {
  /** A check/apply run that found the resource in place (or, in noop mode, any run that did not fail). */
  checked(seconds: number): void;
  /** A run that changed something ('changed') or failed ('failed'), check included. */
  applied(seconds: number, result: 'changed' | 'failed'): void;
  /** A converged resource changed something again after its own watch or poll saw drift. */
  repaired(): void;
  /** The resource's watch reported an event. */
  watchEvent(): void;
}

/**
 * How often the event loop's delay is sampled (nodejs_eventloop_lag_{min,max,mean,stddev,p50,p90,p99}_seconds).
 * prom-client's default, 10 ms, was 7-10 ms of CPU a second in an agent that otherwise sleeps; 100 ms was still 10 of
 * an idle cluster agent's ~30 wakes a second. Once a second: each sample is still the loop's delay at a moment, so
 * the mean and percentiles keep their meaning with a scrape's 15-60 samples; a stall shorter than a second is caught
 * in proportion to its length (a 100 ms one by one sample in ten). nodejs_eventloop_lag_seconds is measured at each
 * scrape and does not depend on it.
 */
export const EVENT_LOOP_SAMPLE_MS = 1000;

/** Counts of the engine's vertices: kind -> state -> n. */
export type ResourceCounts = ReadonlyMap<string, ReadonlyMap<string, number>>;

export interface LinkState {
  readonly store: 'embedded' | 'etcd';
  /** The store answered the agent's last writes. */
  readonly reachable: boolean;
  /** The lease this host's membership lives under, when it holds one. */
  readonly lease: { readonly renewedAt: number; readonly lost: AbortSignal } | undefined;
}

export interface MetricsOptions {
  /** Node's process metrics (process_*, nodejs_*) on this registry; default true. */
  readonly processMetrics?: boolean;
  /** Reported as backplane_build_info{version}. */
  readonly version?: string;
}

export class Metrics {
  readonly registry = new Registry();
  /** `text/plain; version=0.0.4; charset=utf-8` */
  readonly contentType: string = this.registry.contentType;

  private resourceSource: (() => ResourceCounts) | undefined;
  private settledSource: (() => boolean) | undefined;
  private linkSource: (() => LinkState | undefined) | undefined;
  private instanceSource: (() => ReadonlyMap<string, number>) | undefined;
  private leaderSource: (() => boolean) | undefined;
  private unplacedNow = 0;

  private readonly checkDuration: Histogram<'kind'>;
  private readonly applyDuration: Histogram<'kind' | 'result'>;
  private readonly repairs: Counter<'kind'>;
  private readonly watchEvents: Counter<'kind'>;
  private readonly kinds = new Map<string, KindMetrics>();
  private readonly graphSwaps: Counter;
  private readonly reloadErrors: Counter;
  private readonly storeDuration: Histogram<'op'>;
  private readonly storeErrors: Counter<'op'>;
  private readonly leaseLosses: Counter;
  private readonly restarts: Counter<'service'>;
  private readonly passes: Counter<'result'>;
  private readonly passDuration: Histogram;
  private readonly placements: Counter<'result'>;
  private readonly planSteps: Counter<'result'>;
  private readonly plansFinished: Counter<'kind' | 'status'>;
  private readonly failovers: Counter<'kind'>;
  private readonly recovery: Histogram<'reason'>;

  constructor(opts: MetricsOptions = {}) {
    const registers = [this.registry];
    if (opts.processMetrics !== false) collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
    // Read by the collect callbacks below; a callback cannot reach `this` through prom-client's own `this`.
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;

    new Gauge({ name: 'backplane_build_info', help: 'This agent\'s version (always 1).', labelNames: ['version'], registers }).set({ version: opts.version ?? 'unknown' }, 1);

    // --- the engine -------------------------------------------------------------------------------------------
    new Gauge({
      name: 'backplane_resources',
      help: 'Resources of the running graph by kind and state (pending, running, retrying, converged, failed, blocked).',
      labelNames: ['kind', 'state'],
      registers,
      collect() {
        this.reset();
        const counts = self.resourceSource?.();
        if (counts === undefined) return;
        for (const [kind, byState] of counts) for (const state of RESOURCE_STATES) this.set({ kind, state }, byState.get(state) ?? 0);
      },
    });
    new Gauge({
      name: 'backplane_graph_settled',
      help: '1 when nothing is pending, running or retrying (every resource converged, failed or blocked).',
      registers,
      collect() {
        this.set(self.settledSource?.() === true ? 1 : 0);
      },
    });
    this.checkDuration = new Histogram({
      name: 'backplane_resource_check_duration_seconds',
      help: 'Check/apply runs that found the resource in place: how long the check took.',
      labelNames: ['kind'],
      buckets: RUN_BUCKETS,
      registers,
    });
    this.applyDuration = new Histogram({
      name: 'backplane_resource_apply_duration_seconds',
      help: 'Check/apply runs that changed something (result="changed") or failed (result="failed"), check included.',
      labelNames: ['kind', 'result'],
      buckets: RUN_BUCKETS,
      registers,
    });
    this.repairs = new Counter({
      name: 'backplane_resource_repairs_total',
      help: 'Drift repaired: changes made by a converged resource after its own watch (or poll) saw what it manages change.',
      labelNames: ['kind'],
      registers,
    });
    this.watchEvents = new Counter({ name: 'backplane_watch_events_total', help: 'Events reported by resources\' watches.', labelNames: ['kind'], registers });
    this.graphSwaps = new Counter({ name: 'backplane_graph_swaps_total', help: 'New graphs swapped in after the first one (file edits, collected data, assigned instances).', registers });
    this.reloadErrors = new Counter({ name: 'backplane_graph_reload_errors_total', help: 'Edited or re-rendered graphs refused as invalid (the running graph was kept).', registers });

    // --- the cluster store and this host's membership -------------------------------------------------------
    this.storeDuration = new Histogram({
      name: 'backplane_store_request_duration_seconds',
      help: 'Requests of this agent to the cluster store, by operation (watches and elections are not requests).',
      labelNames: ['op'],
      buckets: STORE_BUCKETS,
      registers,
    });
    this.storeErrors = new Counter({ name: 'backplane_store_request_errors_total', help: 'Cluster store requests that failed (not counting ones aborted by the agent).', labelNames: ['op'], registers });
    new Gauge({
      name: 'backplane_cluster_store_up',
      help: '1 while the cluster store answers this agent\'s writes; absent while the agent uses no cluster store.',
      labelNames: ['store'],
      registers,
      collect() {
        this.reset();
        const l = self.linkSource?.();
        if (l !== undefined) this.set({ store: l.store }, l.reachable ? 1 : 0);
      },
    });
    new Gauge({
      name: 'backplane_lease_up',
      help: '1 while this host holds its membership lease (its node record and exports live under it); absent without a cluster store.',
      labelNames: ['store'],
      registers,
      collect() {
        this.reset();
        const l = self.linkSource?.();
        if (l !== undefined) this.set({ store: l.store }, l.lease !== undefined && !l.lease.lost.aborted ? 1 : 0);
      },
    });
    new Gauge({
      name: 'backplane_lease_renewal_age_seconds',
      help: 'Seconds since the store last restarted the membership lease\'s TTL (a keep-alive acknowledged); absent without a lease.',
      labelNames: ['store'],
      registers,
      collect() {
        this.reset();
        const l = self.linkSource?.();
        if (l?.lease !== undefined && !l.lease.lost.aborted && l.lease.renewedAt > 0) this.set({ store: l.store }, Math.max(0, Date.now() - l.lease.renewedAt) / 1000);
      },
    });
    this.leaseLosses = new Counter({ name: 'backplane_lease_losses_total', help: 'Membership leases lost (keep-alives failed for a TTL, or revoked behind the agent\'s back); the agent registers again.', registers });

    // --- scheduled instances on this host ---------------------------------------------------------------------
    new Gauge({
      name: 'backplane_instances',
      help: 'Scheduled instances assigned to this host, by state (pending, starting, running, healthy, failed, stopping).',
      labelNames: ['state'],
      registers,
      collect() {
        this.reset();
        for (const [state, n] of self.instanceSource?.() ?? []) this.set({ state }, n);
      },
    });
    this.restarts = new Counter({ name: 'backplane_instance_restarts_total', help: 'Instances restarted in place by this agent after their process ended or their health failed, by service.', labelNames: ['service'], registers });

    // --- the controller (only the leader's are meaningful) ----------------------------------------------------
    new Gauge({
      name: 'backplane_controller_leader',
      help: '1 while this agent is the cluster\'s controller.',
      registers,
      collect() {
        this.set(self.leaderSource?.() === true ? 1 : 0);
      },
    });
    this.passes = new Counter({ name: 'backplane_controller_passes_total', help: 'Controller passes (snapshot, plan, commit), by result (ok, error).', labelNames: ['result'], registers });
    this.passDuration = new Histogram({ name: 'backplane_controller_pass_duration_seconds', help: 'How long a controller pass took (snapshot, plan, backplanes, commit).', buckets: PASS_BUCKETS, registers });
    this.placements = new Counter({
      name: 'backplane_placements_total',
      help: 'Instances placed on a host (result="placed") and instances newly left without a host (result="unplaced").',
      labelNames: ['result'],
      registers,
    });
    new Gauge({
      name: 'backplane_unplaced_instances',
      help: 'Instances wanted that no host can take now (after the last pass).',
      registers,
      collect() {
        this.set(self.unplacedNow);
      },
    });
    this.planSteps = new Counter({ name: 'backplane_plan_steps_total', help: 'Plan steps that completed (complete, forced) or failed (error).', labelNames: ['result'], registers });
    this.plansFinished = new Counter({
      name: 'backplane_plans_finished_total',
      help: 'Plans finished, by kind (deploy, update, rollback, ...) and status (complete, failed, rolled-back, superseded, aborted).',
      labelNames: ['kind', 'status'],
      registers,
    });
    this.failovers = new Counter({ name: 'backplane_failovers_total', help: 'Failovers and switchovers an application backplane made, by backplane kind.', labelNames: ['kind'], registers });
    this.recovery = new Histogram({
      name: 'backplane_recovery_duration_seconds',
      help: 'From an instance found failed (reason="failed") or its host lost (reason="lost") to its replacement running healthy.',
      labelNames: ['reason'],
      buckets: RECOVERY_BUCKETS,
      registers,
    });
    for (const result of ['placed', 'unplaced']) this.placements.inc({ result }, 0);
    for (const result of ['ok', 'error']) this.passes.inc({ result }, 0);
    for (const result of ['complete', 'forced', 'error']) this.planSteps.inc({ result }, 0);
  }

  /** The exposition text (Prometheus text format 0.0.4). */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  // --- the engine ---------------------------------------------------------------------------------------------

  /** The handles one kind's workers record through; made once per kind. */
  forKind(kind: string): KindMetrics {
    let k = this.kinds.get(kind);
    if (k !== undefined) return k;
    const check = this.checkDuration.labels(kind);
    const changed = this.applyDuration.labels(kind, 'changed');
    const failed = this.applyDuration.labels(kind, 'failed');
    const repairs = this.repairs.labels(kind);
    const watch = this.watchEvents.labels(kind);
    // Series exist from the kind's first resource on (a 0, not a gap), so rate() and alerts see the first event.
    this.repairs.inc({ kind }, 0);
    this.watchEvents.inc({ kind }, 0);
    this.checkDuration.zero({ kind });
    this.applyDuration.zero({ kind, result: 'changed' });
    this.applyDuration.zero({ kind, result: 'failed' });
    k = {
      checked: (s) => check.observe(s),
      applied: (s, result) => (result === 'changed' ? changed : failed).observe(s),
      repaired: () => repairs.inc(),
      watchEvent: () => watch.inc(),
    };
    this.kinds.set(kind, k);
    return k;
  }

  /** Where backplane_resources and backplane_graph_settled are read from when scraped. */
  observeEngine(resources: () => ResourceCounts, settled: () => boolean): void {
    this.resourceSource = resources;
    this.settledSource = settled;
  }

  graphSwapped(): void {
    this.graphSwaps.inc();
  }

  graphReloadFailed(): void {
    this.reloadErrors.inc();
  }

  // --- the cluster store --------------------------------------------------------------------------------------

  storeRequest(op: StoreOp, seconds: number, err?: unknown): void {
    this.storeDuration.observe({ op }, seconds);
    if (err !== undefined && !isStoreError(err, 'aborted') && !isStoreError(err, 'closed')) this.storeErrors.inc({ op });
  }

  /** Where the cluster link's state (store reachable, lease) is read from when scraped. */
  observeLink(state: () => LinkState | undefined): void {
    this.linkSource = state;
  }

  leaseLost(): void {
    this.leaseLosses.inc();
  }

  // --- instances ----------------------------------------------------------------------------------------------

  observeInstances(byState: () => ReadonlyMap<string, number>): void {
    this.instanceSource = byState;
  }

  instanceRestarted(service: string): void {
    this.restarts.inc({ service });
  }

  // --- the controller -----------------------------------------------------------------------------------------

  observeLeader(isLeader: () => boolean): void {
    this.leaderSource = isLeader;
  }

  controllerPass(seconds: number, ok: boolean): void {
    this.passes.inc({ result: ok ? 'ok' : 'error' });
    this.passDuration.observe(seconds);
  }

  placed(n: number): void {
    if (n > 0) this.placements.inc({ result: 'placed' }, n);
  }

  /** `newly`: instances that became unplaceable since the last pass; `now`: how many are unplaced after it. */
  unplaced(newly: number, now: number): void {
    if (newly > 0) this.placements.inc({ result: 'unplaced' }, newly);
    this.unplacedNow = now;
  }

  planStep(result: 'complete' | 'forced' | 'error'): void {
    this.planSteps.inc({ result });
  }

  planFinished(kind: string, status: string): void {
    this.plansFinished.inc({ kind, status });
  }

  failover(kind: string): void {
    this.failovers.inc({ kind });
  }

  recovered(reason: 'lost' | 'failed', seconds: number): void {
    this.recovery.observe({ reason }, seconds);
  }
}
