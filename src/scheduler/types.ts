/**
 * The service backplane's shared vocabulary. Everything here is plain data: specs as the operator declared them
 * (after validation), hosts and allocations as the controller sees them in one snapshot, and the plan the
 * reconciler makes from a snapshot. Placement and reconciliation are pure functions over these types (placement.ts,
 * reconcile.ts); the controller (controller.ts) reads a snapshot from the store, asks for a plan and commits it
 * with fenced writes; agents run what is assigned to them (src/agent/instances.ts).
 *
 * Terms (Nomad's, where it has one): a *service* is what the operator declares; an *instance* is one of its `count`
 * copies, numbered by `index` (0..count-1); an *allocation* (alloc) is one instance placed on one host, with an id
 * of its own: replacing an instance (new version, dead host, crash loop) makes a new alloc with the same index.
 */

/** cpu in cores (0.5 = half a core), memory in bytes. */
export interface Resources {
  readonly cpu: number;
  readonly memory: number;
}

export interface PortSpec {
  readonly name: string;
  /** A fixed port; undefined = dynamic (a free port picked per host from the agent's dynamic range). */
  readonly static?: number;
}

/** A host label constraint. `eq` has one value; `in` / `not_in` a set. */
export interface LabelConstraint {
  readonly label: string;
  readonly op: 'eq' | 'in' | 'not_in';
  readonly values: readonly string[];
}

export interface HealthSpec {
  readonly exec?: readonly string[];
  /** A URL; `{{ instance.port.NAME }}` is substituted per instance before it reaches the svc kind. */
  readonly http?: string;
  readonly tcp?: string;
  readonly intervalMs: number;
  readonly timeoutMs: number;
  readonly failures: number;
  /** Grace after start: failed checks do not count. */
  readonly graceMs: number;
}

/** In place, by the agent's svc supervisor. After `attempts` failures within `intervalMs` the instance has failed. */
export interface RestartPolicy {
  readonly attempts: number;
  readonly intervalMs: number;
  readonly delayMs: number;
}

/** Elsewhere, by the controller, once an instance has failed (crash loop) or its host is gone. */
export interface ReschedulePolicy {
  /** 0 with unlimited = false: never reschedule a failed instance (a lost host's instances are always replaced). */
  readonly attempts: number;
  readonly intervalMs: number;
  readonly delayMs: number;
  readonly maxDelayMs: number;
  readonly unlimited: boolean;
}

export interface UpdatePolicy {
  /**
   * Instances replaced at a time when the spec changes (or a drained host's instances move). 0 = all at once (the
   * `parallel` strategy); 1 = one by one (`serial`).
   */
  readonly maxParallel: number;
  /** A new instance must be healthy this long before it counts and the next old one goes. */
  readonly minHealthyMs: number;
  /** A new instance not healthy within this (from its placement) fails its step: the rollout fails (plans.ts). */
  readonly healthyDeadlineMs: number;
  /** No step completed for this long: the rollout fails. 0 = no deadline. */
  readonly progressDeadlineMs: number;
  /** New-version instances started first, next to the old ones, which stay until the canaries are promoted. */
  readonly canary: number;
  /** Promote healthy canaries without waiting for `backplane rollout promote`. */
  readonly autoPromote: boolean;
  /** A failed rollout goes back to the last version that was healthy, by itself (no canary phase). */
  readonly autoRevert: boolean;
  /**
   * Start the new instance before stopping the old one (surge). Undefined: yes for a service of one instance (so it
   * is never down), no otherwise (Nomad's default: stop first, so capacity and static ports are free).
   */
  readonly startFirst?: boolean;
}

export type HookName = 'afterStart' | 'beforeStop' | 'beforePromote';
export const HOOK_NAMES: readonly HookName[] = ['afterStart', 'beforeStop', 'beforePromote'];

/** A command the agent runs in an instance's context (its user, cwd, env, PORT_*), killed after timeoutMs. */
export interface HookSpec {
  readonly cmd: readonly string[];
  readonly timeoutMs: number;
}

export interface PlacementPolicy {
  readonly constraints: readonly LabelConstraint[];
  readonly distinctHosts: boolean;
  /** Spread instances evenly over this label's values (e.g. zone). */
  readonly spread?: string;
  readonly maxPerHost?: number;
  /** Never on a host that runs an instance of one of these services. */
  readonly antiAffinity: readonly string[];
  /** Bin-packing (default: fill the fullest host that fits) or spread (the emptiest). */
  readonly strategy: 'binpack' | 'spread';
}

/**
 * One graph resource of each instance, as declared in the spec, before per-instance rendering: strings may hold
 * `{{ instance.index }}`, `{{ instance.id }}`, `{{ instance.port.NAME }}`, `{{ service.name }}`, `{{ host.NAME }}`
 * and `{{ host.facts.X }}` (see render.ts).
 */
export interface InstanceResource {
  readonly kind: string;
  readonly name: string;
  readonly params: Readonly<Record<string, unknown>>;
  readonly meta?: unknown;
}

/** What each instance runs: becomes a `svc` resource named after the alloc. */
export interface TaskSpec {
  readonly cmd: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  readonly cwd?: string;
  readonly user?: string | number;
  readonly group?: string | number;
  readonly stopSignal?: string;
  readonly stopTimeoutMs?: number;
  /**
   * Before the agent stops an instance it sends a `stopping` event through the instance API (src/api/) and waits
   * this long before the stop signal (run.stopNotice). Undefined: no wait.
   */
  readonly stopNoticeMs?: number;
}

export interface ServiceSpec {
  readonly name: string;
  /**
   * The namespace it belongs to (policy.ts: quotas and defaults). Undefined = `default`; a spec never stores
   * `default` itself, so records of services that do not name one stay as they were.
   */
  readonly namespace?: string;
  /**
   * The update-policy fields (and maxUnavailable) the operator did not write: these come from the namespace's
   * defaults when it sets them (effectiveSpec in policy.ts), else they keep the built-in default they hold here.
   * Undefined (a record written before namespaces): every field is the operator's.
   */
  readonly inherits?: readonly InheritableField[];
  readonly count: number;
  /**
   * Changes on every edit that changes what an instance is (not on a count change): the operator's `version` label
   * when given, else a hash of the spec without `count`. Instances of another version are replaced (rolling).
   */
  readonly version: string;
  readonly task: TaskSpec;
  readonly resources: Resources;
  readonly ports: readonly PortSpec[];
  readonly health?: HealthSpec;
  readonly placement: PlacementPolicy;
  readonly restart: RestartPolicy;
  readonly reschedule: ReschedulePolicy;
  readonly update: UpdatePolicy;
  /** Extra resources per instance (files, templates, packages, ...), rendered per instance. */
  readonly files: readonly InstanceResource[];
  /**
   * The disruption budget: how many instances may be down at once before a voluntary change (a rollout's step, a
   * drain's move, a scale-down's stop) waits. Undefined: the update's parallelism (maxParallel, or count for 0).
   */
  readonly maxUnavailable?: number;
  /** Commands run at points of an instance's life (not part of the version: changing one rolls nothing). */
  readonly hooks?: Readonly<Partial<Record<HookName, HookSpec>>>;
  /**
   * The bounds within which the service's instances (through the instance API) or its application backplane may
   * change `count` without the operator (not part of the version). Undefined: only the operator changes count.
   */
  readonly scale?: ScaleBounds;
  /**
   * Named commands its application backplane may have run in an instance (react's `exec`), in the instance's context.
   * Only what the operator's signed spec names can run: a controller cannot run anything else (not part of the version).
   */
  readonly actions?: Readonly<Record<string, HookSpec>>;
  /** Set when an application backplane expanded this service from an object (`kind: redis`, ...). */
  readonly app?: AppRef;
}

/** The fields of a spec a namespace's defaults may fill (update policy fields, and the disruption budget). */
export const INHERITABLE_FIELDS = ['maxParallel', 'minHealthyMs', 'healthyDeadlineMs', 'progressDeadlineMs', 'canary', 'autoPromote', 'autoRevert', 'startFirst', 'maxUnavailable'] as const;
export type InheritableField = (typeof INHERITABLE_FIELDS)[number];

export interface ScaleBounds {
  readonly min: number;
  readonly max: number;
}

/** The application object a service belongs to: its backplane's kind, the object's name, the service's role in it. */
export interface AppRef {
  readonly kind: string;
  readonly name: string;
  /** What the service is to its backplane (e.g. "member"); free-form, the backplane's own. */
  readonly role?: string;
}

/**
 * What an instance last told the platform through its local API (src/api/instance-api.ts), relayed by its agent in
 * the alloc's status record (host-signed). The instance's own claims: used to steer (readiness, which member is the
 * primary), never as a proof of identity.
 */
export interface AppReport {
  /** undefined: never said. false keeps an otherwise healthy instance out of discovery and rollouts' counts. */
  readonly ready?: boolean;
  /** The application's own state, e.g. {role: "replica", offset: 1234, lagMs: 12}. JSON, at most 8 KiB. */
  readonly state?: Readonly<Record<string, unknown>>;
  /** One line for humans: "replica of h1, lag 12 ms". At most 200 characters. */
  readonly message?: string;
  /** Wall-clock ms of the report. */
  readonly at: number;
}

// ----------------------------------------------------------------------------------------------------------------
// The snapshot the controller plans over

export interface HostSnapshot {
  readonly name: string;
  /** Its membership record is in the store (the lease holds). */
  readonly alive: boolean;
  /** ms (snapshot clock) since the host was last seen alive, when it is not; 0 when alive. */
  readonly downForMs: number;
  /**
   * How long after its lease is gone this host's instances may still run (its fence), when known from its record;
   * else the snapshot's fenceGraceMs applies.
   */
  readonly fenceGraceMs?: number;
  readonly draining: boolean;
  /** Drain deadline (snapshot clock, ms): past it, the remaining instances are stopped without waiting. */
  readonly drainDeadline?: number;
  readonly labels: Readonly<Record<string, string>>;
  readonly capacity: Resources;
  /** Ports this host reserves for itself (the agent's own, a static port something else holds). */
  readonly reservedPorts: readonly number[];
  /** Dynamic ports are picked from this range, inclusive. */
  readonly dynamicPorts: { readonly from: number; readonly to: number };
}

/** What the agent running an alloc reports. */
/** 'stopping': no longer assigned, its process not gone yet (reported until the agent's graph no longer holds it). */
export type InstanceState = 'pending' | 'starting' | 'running' | 'healthy' | 'unhealthy' | 'failed' | 'stopped' | 'stopping';

/** What became of a hook the agent ran for an alloc; `nonce` is the request it answers (afterStart: 1). */
export interface HookResult {
  readonly nonce: number;
  readonly state: 'running' | 'ok' | 'failed';
  /** Its output (stdout and stderr, the last 4 KiB) and how it ended, for the plan's error. */
  readonly output?: string;
  readonly at: number;
}

export interface AllocStatus {
  readonly state: InstanceState;
  readonly restarts: number;
  /** Snapshot-clock ms when `state` began. */
  readonly since: number;
  readonly message?: string;
  readonly hooks?: Readonly<Partial<Record<HookName, HookResult>>>;
  /** What the instance reported through its local API, when it did. */
  readonly app?: AppReport;
  /** The last action its backplane asked to run (alloc.action), and how it went. */
  readonly action?: ActionResult;
}

/** An action run in an instance: which request (`id`) it answers. */
export interface ActionResult {
  readonly name: string;
  readonly id: string;
  readonly state: 'running' | 'ok' | 'failed';
  /** Its output (stdout and stderr, the last 4 KiB) and how it ended. */
  readonly output?: string;
  readonly at: number;
}

export interface Alloc {
  readonly id: string;
  readonly service: string;
  readonly index: number;
  readonly version: string;
  readonly host: string;
  readonly resources: Resources;
  readonly ports: Readonly<Record<string, number>>;
  /** Snapshot-clock ms when the controller placed it. */
  readonly createdAt: number;
  /** The alloc this one replaced (rescheduling, migration, update), if any. */
  readonly previous?: string;
  /** Reschedules of this instance so far, with when each happened (ms), for the reschedule policy's window. */
  readonly reschedules: readonly number[];
  /**
   * Hooks the controller asked the agent to run for this alloc (in its assignment), by request nonce: a new nonce
   * runs the hook again (restart-step). afterStart is not requested: the agent runs it once the instance is up.
   */
  readonly hookRequests?: Readonly<{ beforeStop?: number; beforePromote?: number }>;
  /**
   * What its application backplane tells this member (e.g. {role: "replica", primary: {...}, epoch: 3}), set by the
   * controller in the assignment (signed like it); a change reaches the instance through its local API as a
   * `config` event and never restarts it. JSON, at most 8 KiB.
   */
  readonly config?: Readonly<Record<string, unknown>>;
  /** An action of its spec its backplane asks to run once (a new id runs it again). */
  readonly action?: Readonly<{ name: string; id: string }>;
  /** The hooks its spec declares (filled from its spec when the snapshot is built; not stored in the alloc). */
  readonly hooks?: readonly HookName[];
  /** What the agent last reported; undefined = nothing yet. */
  readonly status?: AllocStatus;
}

/** An alloc whose assignment is gone but whose process its agent has not finished stopping: it still holds its ports. */
export interface StoppingAlloc {
  readonly id: string;
  readonly service: string;
  readonly index: number;
  readonly host: string;
  readonly resources: Resources;
  readonly ports: Readonly<Record<string, number>>;
}

export interface ClusterSnapshot {
  readonly now: number;
  readonly hosts: readonly HostSnapshot[];
  readonly services: readonly ServiceSpec[];
  readonly allocs: readonly Alloc[];
  /** How long after a host's lease is gone its instances may be replaced (its agent's fence has killed them by then). */
  readonly fenceGraceMs: number;
  /** Allocs being stopped (status 'stopping', no assignment): they use resources and ports, and count as down. */
  readonly stopping?: readonly StoppingAlloc[];
  /** The namespaces' policies (operator-signed `policy/namespaces/<ns>`), by name: quotas placement enforces. */
  readonly policies?: ReadonlyMap<string, NamespacePolicy>;
}

// ----------------------------------------------------------------------------------------------------------------
// Namespaces (policy.ts)

/** What a namespace may use at most, counted over every instance of its services (each unset: no limit). */
export interface NamespaceQuota {
  /** Cores. */
  readonly cpu?: number;
  /** Bytes. */
  readonly memory?: number;
  readonly instances?: number;
}

/** What a service of the namespace gets for the fields its spec does not write. */
export interface NamespaceDefaults {
  readonly update?: Partial<UpdatePolicy>;
  readonly maxUnavailable?: number;
}

export interface NamespacePolicy {
  readonly name: string;
  readonly quota?: NamespaceQuota;
  readonly defaults?: NamespaceDefaults;
  /** ISO time of the operator's last change. */
  readonly updatedAt: string;
}

// ----------------------------------------------------------------------------------------------------------------
// The plan

export interface Placement {
  readonly alloc: Alloc;
  /** Why: 'new' (scale up, first deploy), 'lost' (host gone), 'failed' (crash loop), 'update' (new version), 'drain'. */
  readonly reason: 'new' | 'lost' | 'failed' | 'update' | 'drain';
}

export interface Stop {
  readonly allocId: string;
  readonly host: string;
  readonly service: string;
  readonly index: number;
  readonly reason: string;
}

/** Why some instances of a service could not be placed, counted per reason (Nomad's "dimension exhausted"). */
export interface Infeasible {
  readonly service: string;
  readonly wanted: number;
  readonly unplaced: number;
  /** reason -> number of hosts it ruled out, e.g. "memory short" -> 4, "label zone=b" -> 6. */
  readonly hostsFiltered: Readonly<Record<string, number>>;
  /** One line: "3 of 6 instances cannot be placed: memory short on 4 hosts, label zone=b matches no host". */
  readonly message: string;
  /** When its namespace's quota refused some: "namespace team-a quota: memory 1G of 1G used (raise it: ...)". */
  readonly quota?: string;
}

export interface PlanEvent {
  readonly service: string;
  readonly message: string;
  readonly allocId?: string;
  readonly host?: string;
}

export interface Plan {
  readonly place: readonly Placement[];
  readonly stop: readonly Stop[];
  readonly infeasible: readonly Infeasible[];
  readonly events: readonly PlanEvent[];
  readonly warnings: readonly string[];
  /** Snapshot-clock ms at which the plan may differ although nothing else changes (a backoff or grace ends). */
  readonly wakeAt?: number;
  /** Hooks to ask agents to run (written into the allocs' assignments): before-stop before a voluntary stop. */
  readonly hookRequests?: readonly HookRequest[];
}

export interface HookRequest {
  readonly allocId: string;
  readonly host: string;
  readonly service: string;
  readonly index: number;
  readonly hook: 'beforeStop' | 'beforePromote';
  readonly nonce: number;
}
