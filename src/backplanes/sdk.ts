/**
 * The application backplane SDK: the standard interface between a backplane — a TypeScript module written by the
 * people who know a piece of software — and the cluster.
 *
 * A backplane has two halves:
 *  - `expand` (run by `backplane deploy` on the operator's host): an object such as `{kind: redis, name: cache,
 *    replicas: 2}` becomes ordinary service documents, so placement, rollouts, `backplane plan`, `services` and
 *    `rollout` all work on it unchanged. The services carry `app: {kind, name}`.
 *  - `react` (run by the elected controller, in a worker thread with a timeout: host.ts): a **pure function** from
 *    what the cluster sees now (its members, their hosts, what each instance reported through its local API) to what
 *    it wants (each member's config, discovery entries, a status, events, counts within the operator's bounds, rollout
 *    order). It never touches the store: the controller commits its answer with its own fenced writes, so fencing,
 *    persistence and controller failover apply unchanged, and it can be tested over a hand-made input like placement.
 *
 * The per-instance half — the process that runs next to the software (starts it with the role its config says,
 * promotes it, reports its offset) — is the service's task; it talks to the platform through the instance API
 * (src/api/instance-api.ts, docs/instance-api.md).
 */
import { z } from 'zod';
import { appGateSchema, appStatusSchema, boundedJson, type AppGate, type AppStatus, type DiscoveryTarget } from '../scheduler/records.js';
import type { ActionResult, AppReport, InstanceState } from '../scheduler/types.js';

export type { AppGate, AppStatus, DiscoveryTarget };

export interface AppObject<P> {
  readonly kind: string;
  readonly name: string;
  readonly params: P;
}

/** What `expand` may use besides the object. */
export interface ExpandEnv {
  /**
   * The command that runs one of this backplane's own scripts with the Node running Backplane, e.g.
   * `env.script('member')` -> ['/usr/bin/node', '/opt/backplane/dist/backplanes/redis/member.mjs'] (shipped backplanes
   * are built to dist/backplanes/<kind>/<entry>.mjs; from a source checkout, tsx runs src/backplanes/<kind>/<entry>.ts).
   */
  script(entry: string): string[];
}

/**
 * A service document exactly as an operator would write one in a deploy file (docs/services.md): `name`, `count`,
 * `run`, `resources`, `ports`, `health`, `placement`, `update`, `scale`, ... It goes through the same validation.
 */
export type ServiceDocument = Readonly<Record<string, unknown>> & { readonly name: string };

/** One instance of one of the object's services, as the controller sees it in this pass. */
export interface Member {
  readonly allocId: string;
  readonly service: string;
  readonly index: number;
  readonly version: string;
  readonly host: string;
  /** The host's address (its verified facts), '' when unknown. */
  readonly address: string;
  readonly ports: Readonly<Record<string, number>>;
  /** What its agent last reported; undefined before the first report. */
  readonly state?: InstanceState;
  /** Wall-clock ms when `state` began. */
  readonly since?: number;
  readonly restarts: number;
  /** Its host's lease holds. */
  readonly hostAlive: boolean;
  /**
   * Its host has been gone longer than its fence: its agent has killed its processes by now (or is dead). Only then
   * is a member whose host vanished certainly not serving: promote a replacement for a primary on this, not on
   * `!hostAlive` alone (that would risk two primaries while a partitioned host still runs its own).
   */
  readonly fenced: boolean;
  /** Its assignment is gone (a rollout or scale-down is stopping it): it may still run for a moment. */
  readonly stopping: boolean;
  /** The config this backplane last gave it (in its assignment). */
  readonly config?: Readonly<Record<string, unknown>>;
  /** What the instance reported through its local API (role, offset, lag, ...). */
  readonly report?: AppReport;
  /** The action last asked of it (`exec`) and how it went (running, ok, failed with its output). */
  readonly action?: ActionResult;
  /** The actions its spec declares (the only ones `exec` can run). */
  readonly actions?: readonly string[];
}

export interface ServiceView {
  readonly name: string;
  /** The count in force (the operator's, or one chosen within `scale`). */
  readonly count: number;
  readonly version: string;
  readonly role?: string;
  readonly scale?: { readonly min: number; readonly max: number };
  /** Its current plan, when one is running (a rollout, a scale, a recovery). */
  readonly plan?: { readonly id: string; readonly kind: string; readonly status: string; readonly toVersion: string };
}

export interface ReactInput<P> {
  /** Wall-clock ms of this pass. */
  readonly now: number;
  readonly object: AppObject<P>;
  /** When the operator last deployed the object (ISO): a change means new params. */
  readonly deployedAt: string;
  readonly services: readonly ServiceView[];
  /** Every alloc of the object's services the controller knows of, including stopping ones. */
  readonly members: readonly Member[];
  /** What this backplane returned as `memory` last time (undefined the first time). */
  readonly memory?: unknown;
}

export interface ReactOutput {
  /** Kept for the next call (persisted in the store with the state: survives a controller failover). ≤ 64 KiB. */
  readonly memory?: unknown;
  /** allocId -> the config that member should have now. A member left out keeps what it has. */
  readonly config?: Readonly<Record<string, Readonly<Record<string, unknown>>>>;
  /** entry -> the members clients should reach as `<object>.<entry>` (e.g. "primary"). Replaces all entries. */
  readonly discovery?: Readonly<Record<string, readonly DiscoveryTarget[]>>;
  readonly status?: AppStatus;
  /** Lines for the event log (`backplane service`, the controller's log). */
  readonly events?: readonly string[];
  /** service -> count, within the service's `scale` bounds (refused otherwise, with an event saying why). */
  readonly scale?: Readonly<Record<string, number>>;
  /** service -> rollout steering: update order, indexes held back. */
  readonly gates?: Readonly<Record<string, AppGate>>;
  /**
   * allocId -> run one of the member's spec `actions` in it (in its context, like a hook), once per id: a new id runs it
   * again. The result comes back as the member's `action`. Only actions the operator's spec names can run.
   */
  readonly exec?: Readonly<Record<string, { readonly action: string; readonly id: string }>>;
  /** Call again after this many ms even if nothing changes (a timeout the backplane waits on). */
  readonly wakeInMs?: number;
}

export interface BackplaneDefinition<P> {
  /** The `kind:` operators write (`redis`); lowercase letters, digits, '-'. */
  readonly kind: string;
  readonly description: string;
  /** The object's parameters (everything besides kind and name): validated at deploy with file:line errors. */
  readonly params: z.ZodType<P>;
  expand(object: AppObject<P>, env: ExpandEnv): readonly ServiceDocument[];
  react(input: ReactInput<P>): ReactOutput | Promise<ReactOutput>;
  /** How long one react call may take before the controller gives up on it (default 2000 ms). */
  readonly reactTimeoutMs?: number;
}

/** What a backplane module's default export is. Typed helper: `export default defineBackplane({...})`. */
export function defineBackplane<P>(def: BackplaneDefinition<P>): BackplaneDefinition<P> {
  return def;
}

/** What the controller accepts back from `react`: anything else is the backplane's bug, reported as such. */
export const reactOutputSchema = z.lazy(() => z.strictObject({
  memory: z.unknown().optional(),
  config: z.record(z.string().max(200), boundedJson).optional(),
  discovery: z.record(z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/), z.array(z.strictObject({ allocId: z.string().max(200), port: z.string().max(64) })).max(1000)).optional(),
  status: appStatusSchema.optional(),
  events: z.array(z.string().max(1000)).max(50).optional(),
  scale: z.record(z.string(), z.number().int().min(0).max(100_000)).optional(),
  gates: z.record(z.string(), appGateSchema).optional(),
  exec: z.record(z.string().max(200), z.strictObject({ action: z.string().regex(/^[a-z][a-z0-9-]{0,31}$/), id: z.string().regex(/^[a-z0-9][a-z0-9-]{0,63}$/) })).optional(),
  wakeInMs: z.number().int().min(10).max(3_600_000).optional(),
}));

export const MAX_MEMORY_BYTES = 65536;
