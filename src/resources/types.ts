import type { z } from 'zod';
import type { ResourceId } from '../graph/ids.js';

/**
 * The contract every resource kind implements (after mgmt's engine/resources.go): validate parameters (the schema),
 * watch what it manages, and check/apply idempotently. Retries, polling, locking and ordering are engine policy and
 * never appear here. Resources see only this narrow surface — never the engine, the graph or the cluster store.
 */

export interface ResourceLog {
  /** A change made (or, in noop mode, that would be made): one human-readable line per change. */
  change(message: string): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  debug(message: string, fields?: Record<string, unknown>): void;
}

export interface CheckApplyContext {
  /** false in noop mode: report what would change, change nothing. */
  readonly apply: boolean;
  /** true when a notify edge fired since the last successful run (e.g. re-run a refreshOnly exec). */
  readonly refresh: boolean;
  readonly signal: AbortSignal;
  /**
   * `signal.aborted` without making the signal (the engine makes a worker's on first use): in the engine's contexts.
   * A signal per file written, an AbortController each, was ~770 bytes kept per file and ~1 s of aborts at the exit
   * of an agent that had written 100,000 files.
   */
  readonly aborted?: boolean;
  readonly log: ResourceLog;
}

export interface CheckResult {
  /** true when the resource already was in its desired state and nothing was (or would be) done. */
  readonly converged: boolean;
  /** What was changed (or would be, in noop mode), one short phrase each: "content changed", "mode 0600 -> 0644". */
  readonly changes: readonly string[];
  /** A unified diff for content changes, shown in noop mode. */
  readonly diff?: string;
}

export interface WatchContext {
  readonly signal: AbortSignal;
  /** Call once the watch is established, so the first check cannot miss a change made in between. */
  readonly ready: () => void;
  /** Something the resource manages may have changed. Cheap, idempotent, safe to call spuriously. */
  readonly changed: (reason: string) => void;
  readonly log: ResourceLog;
}

/**
 * What attachWatch is given: watch()'s context without the signal, and where a watch that fails says so. Methods
 * (called on the context, not taken off it): the engine's is one small object per watch, without closures.
 */
export interface AttachedWatchContext {
  /** Call once the watch is established (may be called from attachWatch itself). */
  ready(): void;
  /** Something the resource manages may have changed. Cheap, idempotent, safe to call spuriously. */
  changed(reason: string): void;
  /** The watch could not be established or broke: the engine detaches it and attaches it again after a back-off. */
  failed(err: unknown): void;
}

export interface Resource {
  /**
   * Long-lived: resolves when `signal` aborts. Without a watch the engine considers the resource ready at once
   * and re-checks it only when a dependency changes, it is refreshed, or `poll` is set.
   */
  watch?(ctx: WatchContext): Promise<void>;
  /**
   * The same watch, ended by detachWatch() rather than by a signal; the engine uses this pair when a kind has it.
   * An AbortController per watch with its listeners was ~1 KiB per file (100 MiB at 100,000 files) and aborting
   * 100,000 of them one event each ~1 s of an agent's exit. detachWatch is synchronous: nothing is awaited after it.
   */
  attachWatch?(ctx: AttachedWatchContext): void;
  detachWatch?(): void;
  checkApply(ctx: CheckApplyContext): Promise<CheckResult>;
  /**
   * Called once as the worker starts (with the graph, for a kind that has startEarly), before its dependencies are
   * done, and never in noop mode: the kind may begin work its first checkApply would otherwise begin with, where
   * that work changes nothing the graph describes and is right whatever the dependencies do (svc starts the logger
   * of a service it is about to start, so that its start after a config file is one spawn). checkApply must work
   * without it; failures are the kind's to handle.
   */
  prepare?(log: ResourceLog): void;
  /**
   * Called once when the resource stops being managed by this worker: `removed` from the graph, `replaced` by a
   * changed definition (a new resource with the same id starts right after), or agent `shutdown` — after which a
   * restarted agent manages it again. A supervised process, for example, is stopped on `removed` and left running
   * (to be adopted) on `shutdown`.
   */
  close?(reason: CloseReason): void | Promise<void>;
}

export type CloseReason = 'removed' | 'replaced' | 'shutdown';

export interface AutoEdges {
  /** Keys this resource provides to others, e.g. `path:/etc/nginx`. */
  readonly provides?: readonly string[];
  /** Keys this resource would like to depend on when some other resource provides them. */
  readonly wants?: readonly string[];
}

export interface ResourceKind<P = unknown> {
  readonly kind: string;
  /** One line for `backplane kinds` and the README. */
  readonly description: string;
  /** Parameters: validation, defaults and JSON Schema all come from here. Path issues are reported file:line. */
  readonly schema: z.ZodType<P>;
  /** Whether a notify edge into this kind means something (documentation and a validation warning). */
  readonly refreshable?: boolean;
  /**
   * Its workers start with the graph rather than once their dependencies have settled (the engine's default, which
   * keeps 100,000 waiting workers from being made up front), so that Resource.prepare runs while the dependencies
   * are applied. For kinds with a prepare and few resources per graph (svc).
   */
  readonly startEarly?: boolean;
  /** Parameters implied by the name when not given, e.g. a file's `path` defaults to its name. */
  defaults?(name: string): Record<string, unknown>;
  /**
   * Optional shortcut for validation: exactly what `schema.safeParse({ ...defaults(name), ...params })` returns as its
   * data, for the common shapes a kind recognizes, or undefined to let the schema decide (and report). Must never
   * accept what the schema refuses nor answer differently (a test compares them).
   */
  quickParams?(name: string, params: Readonly<Record<string, unknown>>): P | undefined;
  create(id: ResourceId, params: P, world: ResourceWorld): Resource;
  /**
   * The one thing on the host this resource manages, named so that two resources managing the same thing give the
   * same text whatever their names (a file's normalized path: `path /etc/motd`). Two such resources would undo each
   * other's work forever, so validation refuses them. Kinds that manage nothing exclusive (exec, svc, checks) leave
   * it out.
   */
  manages?(params: P): string;
  /**
   * Keys for automatic edges. A build may ask twice for the same parameters (it keeps only each key's length between
   * the asks, see Hints in src/graph/build.ts), so the answer must be the same both times — unless the kind sets
   * `autoEdgesReadHost`.
   */
  autoEdges?(params: P): AutoEdges;
  /**
   * The autoEdges answer reads the host (pkg: dpkg's file lists), so it can change between two asks of one build (a
   * package installed meanwhile). The build then keeps the first answer instead of asking again: the edges follow one
   * answer, never a mix of two.
   */
  readonly autoEdgesReadHost?: boolean;
  /** What another host's export may choose for this kind on a collecting host (see CollectRule.take). */
  readonly collect?: CollectPolicy;
}

/**
 * Which parameters give power on the host that collects a resource of this kind: what root copies, writes where,
 * runs, or runs as. A collect rule takes them from an exporter only when its `take` names them; validation warns
 * when it does. Every other top-level parameter is taken by default.
 */
export interface CollectPolicy {
  /** Power parameters, each with what it lets an exporter choose ("what root copies"), for messages. */
  readonly power: Readonly<Record<string, PowerParam>>;
  /**
   * Power parameters that `defaults(name)` derives from the resource's name (a file's path). The exporter chooses
   * the name, so a rule must `set` these or `take` them explicitly, or validation refuses it.
   */
  readonly fromName?: readonly string[];
}

/**
 * A power parameter: always (a string saying what it lets an exporter choose), or only for some values, e.g. a
 * mode with setuid bits. A value-dependent parameter is taken by default, but a powerful value of it only when
 * `take` names it.
 */
export type PowerParam = string | { readonly why: string; readonly when: (value: unknown) => boolean };

/**
 * What a resource may know about the rest of the graph: nothing but this. It is live — it reflects the graph
 * currently running, also after a swap.
 */
export interface ResourceWorld {
  /** Whether some resource in the current graph provides this auto-edge key (e.g. `path:/etc/nginx/site.conf`). */
  isProvided(key: string): boolean;
  /**
   * A directory this resource may keep private state in across agent restarts (e.g. a supervised process's pid
   * and start time), created on demand; unique per resource id and stable across restarts.
   */
  stateDir(id: ResourceId): Promise<string>;
  /** Facts about this host (hostname, cpus, memory, addresses), gathered once per agent start. */
  facts(): HostFacts;
  /** This host's values in the cluster store (the `kv` kind); absent where no agent runs (validate, unit tests). */
  readonly cluster?: ClusterValues;
  /** The healthy instances of the cluster's services (the template kind's `services`); absent where no agent runs. */
  readonly services?: ServiceDirectory;
}

/** One healthy instance of a scheduled service, as service discovery reports it (src/agent/discovery.ts). */
export interface ServiceInstance {
  /** The alloc id, `<service>.<index>.<8 hex>`: changes when the instance is replaced. */
  readonly id: string;
  readonly index: number;
  readonly host: string;
  /** The host's address (its facts.ipv4, from its verified membership record). */
  readonly address: string;
  /** Port name -> port number on that host. */
  readonly ports: Readonly<Record<string, number>>;
  readonly version: string;
}

/** Service name -> its healthy instances, sorted by index then id. A service with none is absent. */
export type ServiceInstances = Readonly<Record<string, readonly ServiceInstance[]>>;

/**
 * The narrow handle a resource gets on service discovery: read-only, already verified by the agent (an unsigned or
 * forged record never shows up here). A resource never sees the store.
 */
export interface ServiceDirectory {
  /**
   * The healthy instances of `service` now ([] when it has none). Waits for the agent's first read of the store, so
   * a template rendered at start-up does not write an empty upstream list just because the store was not read yet.
   */
  get(service: string, signal: AbortSignal): Promise<readonly ServiceInstance[]>;
  /** Calls `onChange` whenever `service`'s instances change; returns the function that stops it. */
  watch(service: string, onChange: () => void): () => void;
}

/**
 * The narrow handle a resource gets on the cluster store: this host's own values under `kv/<host>/`, signed and kept
 * by the agent like its exports (under its lease: they go when the host goes). A resource never sees the store.
 */
export interface ClusterValues {
  /** This host's value for `key` as the store holds it now (a record this host signed), or undefined. */
  get(key: string, signal: AbortSignal): Promise<string | undefined>;
  /** Publishes this host's value for `key` (undefined withdraws it); resolves once the store has it. */
  set(key: string, value: string | undefined, signal: AbortSignal): Promise<void>;
  /** Calls `onChange` whenever the store's value for `key` changes; returns the function that stops it. */
  watch(key: string, onChange: () => void): () => void;
}

export interface HostFacts {
  readonly hostname: string;
  readonly fqdn: string;
  readonly os: { readonly platform: string; readonly release: string; readonly arch: string };
  readonly cpus: number;
  /** Bytes. */
  readonly memory: { readonly total: number; readonly free: number };
  /** Non-internal addresses by interface name. */
  readonly interfaces: Readonly<Record<string, readonly { readonly address: string; readonly family: 'IPv4' | 'IPv6' }[]>>;
  /** The first non-internal IPv4 address, or 127.0.0.1. */
  readonly ipv4: string;
}

/** Kinds of different parameter types share one registry: methods are bivariant in their parameters. */
export type AnyResourceKind = ResourceKind<unknown>;

export function defineKind<P>(kind: ResourceKind<P>): ResourceKind<P> {
  return kind;
}
