import { BackplaneError, errorMessage } from '../errors.js';
import type { KindRegistry } from '../graph/build.js';
import type { DependentIds, Graph, Vertex } from '../graph/graph.js';
import type { ResourceId } from '../graph/ids.js';
import type { Logger } from '../log.js';
import type { ClusterValues, HostFacts, Resource, ResourceWorld, ServiceDirectory } from '../resources/types.js';
import type { Metrics } from '../api/metrics.js';
import { gatherFacts } from '../facts.js';
import { defaultStateDir, resourceStateDir } from '../state-dir.js';
import { Semaphore, SemaphoreSet } from '../util/semaphore.js';
import { ACTIVE_STATES, type ConvergeSummary, type VertexState, type VertexStatus } from './state.js';
import { Worker, type WorkerHost } from './worker.js';

/**
 * How long one event-loop turn may spend starting workers when a graph is swapped in (see swap), or waking the
 * dependents of a vertex (wakeSlice), and how many are started between looks at the clock. A fixed 500 workers a turn
 * was 20-40 ms with the garbage collection it caused (10,000 files), and every step of the first checks (a stat, a
 * statfs, an fsync: each needs a turn) waited that long. 4 ms slices still left the first file of 100,000 ~0.1 s
 * behind the swap under load: the directory's check and the first file's take ~8 such steps. At 1 ms it was ~25 ms;
 * a turn given back costs a setImmediate, a few microseconds.
 */
const START_SLICE_MS = 1;
const START_CLOCK_EVERY = 32;
/**
 * A vertex with more dependents than this wakes them in turns of START_SLICE_MS rather than all at once. A directory
 * of 10,000 files converging started thousands of checks in one go, and they moved in lockstep: each step of the
 * first file's check (a readdir, a statfs, a cached promise) waited for that step of all the others, ~0.15 s from
 * the directory converging to the first file's write. Woken in turns, the first checks are well ahead of the rest.
 */
const WAKE_AT_ONCE = 64;

/** The dependents of `id` in `graph` still to wake, in turns (wakeSlice). */
interface WakeList {
  readonly graph: Graph;
  readonly id: ResourceId;
  readonly ids: DependentIds;
}

export interface EngineOptions {
  readonly registry: KindRegistry;
  readonly log: Logger;
  /** Check everything, change nothing. */
  readonly noop?: boolean;
  /**
   * false for a run that ends at its first settle (`run --converged-timeout 0`, `--noop`): each resource is checked
   * once and nothing is watched or polled, since nobody would be left to act on what a watch saw. Setting up a watch
   * per resource (and taking the echo of every write the run makes) was a tenth of a one-shot 1,000-file run.
   */
  readonly watch?: boolean;
  /** At most this many check/apply runs at once; 0 = no limit. */
  readonly parallel?: number;
  /** Root of the agent's state directory (resources get private subdirectories). */
  readonly stateDir?: string;
  /** This host's facts (ResourceWorld.facts), asked for when a resource first reads them; default: gatherFacts(). */
  readonly facts?: () => HostFacts;
  /** The `kv` kind's handle on this host's values in the cluster store (ResourceWorld.cluster). */
  readonly cluster?: ClusterValues;
  /** Service discovery for the template kind's `services` (ResourceWorld.services). */
  readonly services?: ServiceDirectory;
  /** Where runs, watch events, repairs and resource states are counted (src/api/metrics.ts); none in most tests. */
  readonly metrics?: Metrics;
}

export interface SwapSummary {
  readonly added: readonly ResourceId[];
  readonly removed: readonly ResourceId[];
  readonly changed: readonly ResourceId[];
  readonly unchanged: number;
}

export type EngineListener = (event: { readonly id: ResourceId; readonly state: VertexState; readonly prev: VertexState }) => void;

/**
 * The per-host engine: one worker per vertex, every vertex running as soon as its dependencies are converged,
 * re-checked only when an event says something changed. Knows nothing of kinds beyond the registry, nothing of
 * where graphs come from, and nothing of the cluster.
 */
export class Engine implements WorkerHost {
  readonly noop: boolean;
  readonly watch: boolean;
  private graph: Graph | undefined;
  private readonly workers = new Map<ResourceId, Worker>();
  private readonly root = new AbortController();
  private readonly global: Semaphore | undefined;
  private readonly semas = new SemaphoreSet();
  private readonly log: Logger;
  private readonly registry: KindRegistry;
  /**
   * What the running graph's resources provide (their autoEdges' `provides`), for ResourceWorld.isProvided: worked
   * out on the first question about a graph, since few runs ask one (noop, purge, group members) and every file's
   * autoEdges walk was ~5% of a converged 1,000-file run; from then on kept up to date by each swap (updateProvided).
   * Each key with the number of vertices that provide it.
   */
  private provided: Map<string, number> | undefined;
  private active = 0;
  /**
   * Vertices of the running graph without a worker yet (see mayStart): pending, and listed as such by status() and
   * countStates(). After stop() they count as stopped (`unstartedStopped`) and are never started.
   */
  private unstarted = 0;
  private unstartedStopped = 0;
  /** A swap is stopping the workers it removes or redefines: no worker is started until the new graph is in. */
  private replacing = false;
  /** A swap is still starting workers: not settled, whatever the started ones are doing. */
  private starting = 0;
  /** startsEarly's answers, per kind. */
  private readonly earlyKinds = new Map<string, boolean>();
  private lastEarly = { kind: '', early: false };
  private readonly listeners = new Set<EngineListener>();
  private readonly settleListeners = new Set<(settled: boolean) => void>();
  private readonly changeListeners = new Set<(id: ResourceId) => void>();
  private wasSettled = false;
  /** Swaps are serialized: a second edit waits for the first to finish swapping. */
  private swapping: Promise<unknown> = Promise.resolve();
  private readonly metrics: Metrics | undefined;

  readonly world: ResourceWorld;

  constructor(opts: EngineOptions) {
    this.registry = opts.registry;
    this.log = opts.log;
    this.noop = opts.noop ?? false;
    this.watch = opts.watch ?? true;
    const stateRoot = opts.stateDir ?? defaultStateDir();
    // Gathered when a resource first reads them (a template): network interfaces and /proc/meminfo twice, which a run
    // of files or of an empty graph never needs.
    let facts: HostFacts | undefined;
    const gather = opts.facts ?? gatherFacts;
    this.world = {
      isProvided: (key) => (this.provided ??= this.providedKeys(this.graph)).has(key),
      stateDir: (id) => resourceStateDir(stateRoot, id),
      facts: () => (facts ??= gather()),
      ...(opts.cluster === undefined ? {} : { cluster: opts.cluster }),
      ...(opts.services === undefined ? {} : { services: opts.services }),
    };
    this.global = opts.parallel !== undefined && opts.parallel > 0 ? new Semaphore(opts.parallel) : undefined;
    this.metrics = opts.metrics;
    opts.metrics?.observeEngine(() => this.countStates(), () => this.settled);
  }

  /** Starts the first graph, or swaps in a new one: unchanged resources keep running, watches included. */
  setGraph(next: Graph): Promise<SwapSummary> {
    const run = this.swapping.then(() => this.swap(next));
    this.swapping = run.catch(() => undefined);
    return run;
  }

  private async swap(next: Graph): Promise<SwapSummary> {
    if (this.root.signal.aborted) throw new BackplaneError('E_ABORTED', 'engine is stopped');
    const prev = this.graph;
    // From the graphs, not the workers: a vertex of the last graph may not have a worker yet (see mayStart).
    const removed: ResourceId[] = [];
    const changed: ResourceId[] = [];
    if (prev !== undefined) {
      for (const [id, v] of prev.vertices) {
        const n = next.vertices.get(id);
        if (n === undefined) removed.push(id);
        else if (n.fingerprint !== v.fingerprint) changed.push(id);
      }
    }
    // The old definition must be fully stopped before the new one may touch the same thing. Meanwhile nothing is
    // started: a vertex of the old graph whose dependency settles now may be one this swap removes or redefines.
    this.replacing = true;
    try {
      await Promise.all([
        ...removed.map((id) => this.workers.get(id)?.stop('removed') ?? Promise.resolve()),
        ...changed.map((id) => this.workers.get(id)?.stop('replaced') ?? Promise.resolve()),
      ]);
    } finally {
      this.replacing = false;
    }
    for (const id of [...removed, ...changed]) {
      const w = this.workers.get(id);
      if (w !== undefined) this.count(w.state, -1);
      this.workers.delete(id);
    }

    // The vertices new in `next`: listed before the workers start only when a swap needs them for the provided keys.
    // A first graph's are all of them, listed after its first workers started: at 100,000 files, making every id
    // first put ~50 ms between "running" and the first file (scale bench, 2026-12-03).
    let added: ResourceId[] | undefined;
    const addedIds = (): ResourceId[] => {
      if (added === undefined) {
        added = [];
        for (const id of next.vertices.keys()) if (prev?.vertices.has(id) !== true) added.push(id);
      }
      return added;
    };
    if (prev === undefined) this.provided = undefined;
    else this.updateProvided(prev, next, removed, changed, addedIds());
    this.graph = next;
    // Every vertex without a worker is pending until it gets one; the engine is not settled meanwhile.
    this.unstarted = next.vertices.size - this.workers.size;
    // A worker is started once its dependencies let it run (mayStart): here the vertices that can run now (no
    // dependencies, or all of them settled already), the rest when their last dependency settles. 100,000 files in
    // one directory then start one worker (the directory) here, and each file's when the directory is converged,
    // in the turns that wake them: the first file is checked and written while most workers do not exist yet, not
    // behind 100,000 workers made, started and gated first (~0.1 s of the event loop and ~40% garbage collection).
    // Looked at in slices, giving the event loop back between them, so a graph of 100,000 independent resources
    // changes its first one before the last worker exists. Meanwhile the engine does not count as settled. A kind
    // that prepares (svc: its logger) has its workers started now, waiting on their dependencies' gate.
    this.starting++;
    try {
      let sliceStart = performance.now();
      let slice = 0;
      for (const v of next.vertices.values()) {
        if (!this.workers.has(v.id) && (this.mayStart(v.id) || this.startsEarly(v.kind))) this.startWorker(v);
        if (++slice % START_CLOCK_EVERY === 0 && performance.now() - sliceStart >= START_SLICE_MS) {
          await new Promise<void>((resolve) => setImmediate(resolve));
          if (this.root.signal.aborted) break;
          sliceStart = performance.now();
        }
      }
    } finally {
      this.starting--;
    }
    // Resources whose dependencies changed, and everything downstream of a changed or new resource, re-run.
    const roots = new Set<ResourceId>([...changed, ...addedIds()]);
    if (prev !== undefined) {
      for (const id of next.vertices.keys()) {
        if (roots.has(id) || !prev.vertices.has(id)) continue;
        if (edgeKey(prev.dependencies(id)) !== edgeKey(next.dependencies(id))) roots.add(id);
      }
    }
    // New workers start dirty on their own; only the ones that survived the swap need a poke.
    const fresh = new Set<ResourceId>([...changed, ...addedIds()]);
    if (prev !== undefined) for (const id of next.downstream(roots)) if (!fresh.has(id)) this.workers.get(id)?.poke(false, 'graph changed');
    // What a removed or redefined resource was auto-attached to may have had a stake in it: a purging directory
    // keeps only the entries the graph provides, and a resource dropped from the graph leaves its file behind
    // without touching the directory, so no watch event would ever tell the directory to look again. Only
    // auto-edge providers (directories, packages, accounts: pure checks) are re-checked — never a declared
    // dependency such as an exec, which would run again just because something after it changed.
    // A provider's stake in the graph is only what it can ask of it (ResourceWorld.isProvided), so a resource
    // redefined with the same `provides` (a collected file whose content changed) leaves it nothing to look at again:
    // each such change used to cost the purging directory of collected files a check and a readdir.
    if (prev !== undefined) {
      const pokeProviders = (id: ResourceId): void => {
        for (const e of prev.dependencies(id)) {
          if (e.auto && !fresh.has(e.from)) this.workers.get(e.from)?.poke(false, `${id} was removed or redefined`);
        }
      };
      for (const id of removed) pokeProviders(id);
      for (const id of changed) if (!this.sameProvides(prev.vertices.get(id), next.vertices.get(id))) pokeProviders(id);
    }
    // A swap may end a fight (the other writer removed): resources held for oscillating get to run again.
    for (const w of this.workers.values()) {
      w.release();
      w.wake();
    }
    this.checkSettled();
    if (prev !== undefined) this.metrics?.graphSwapped();
    const all = addedIds();
    return { added: all, removed, changed, unchanged: next.vertices.size - all.length - changed.length };
  }

  /**
   * Whether a vertex without a worker can be given one now: every dependency has a worker that is settled (converged,
   * or failed or blocked: the new worker then reports itself blocked at once). A dependency that is still pending,
   * running or retrying, or has no worker itself, starts this one when it settles (stateChanged).
   */
  private mayStart(id: ResourceId): boolean {
    for (const e of this.graph?.dependencies(id) ?? []) {
      const dep = this.workers.get(e.from);
      if (dep === undefined) {
        if (this.graph?.vertices.has(e.from) === true) return false;
        continue;
      }
      if (dep.state !== 'converged' && dep.state !== 'failed' && dep.state !== 'blocked') return false;
    }
    return true;
  }

  /** Whether a kind's workers start with the graph (ResourceKind.startEarly); asked per vertex, so kept per kind. */
  private startsEarly(kind: string): boolean {
    // The last kind's answer first: a big graph is mostly one kind, and this runs once per waiting vertex.
    if (kind === this.lastEarly.kind) return this.lastEarly.early;
    let early = this.earlyKinds.get(kind);
    if (early === undefined) {
      early = this.registry.get(kind)?.startEarly === true;
      this.earlyKinds.set(kind, early);
    }
    this.lastEarly = { kind, early };
    return early;
  }

  /** A dependency settled or changed: the dependent re-evaluates, or is started if it has no worker yet and may run. */
  private wakeOrStart(id: ResourceId): void {
    const w = this.workers.get(id);
    if (w !== undefined) {
      w.wake();
      return;
    }
    if (!this.mayStartNow()) return;
    const v = this.graph?.vertices.get(id);
    if (v !== undefined && this.mayStart(id)) this.startWorker(v);
  }

  /** Workers may be started: the engine is not stopping, nor between two graphs (replacing). */
  private mayStartNow(): boolean {
    return !this.root.signal.aborted && !this.replacing;
  }

  private startWorker(v: Vertex): Worker {
    const kind = this.registry.get(v.kind);
    let resource: Resource;
    try {
      if (kind === undefined) throw new BackplaneError('E_UNKNOWN_KIND', `unknown kind ${v.kind}`);
      resource = kind.create(v.id, v.params, this.world);
    } catch (err) {
      const message = errorMessage(err, v.id);
      resource = { checkApply: () => Promise.reject(new BackplaneError('E_APPLY', `could not be created: ${message}`, { resource: v.id })) };
    }
    const w = new Worker(v, resource, this, this.log, this.metrics?.forKind(v.kind));
    this.workers.set(v.id, w);
    this.unstarted--;
    this.active++; // workers start pending
    this.count('pending', 1);
    w.start();
    return w;
  }

  /** Whether two definitions of a resource provide the same keys (autoEdges' `provides`) to the rest of the graph. */
  private sameProvides(a: Vertex | undefined, b: Vertex | undefined): boolean {
    if (a === undefined || b === undefined || a.kind !== b.kind) return false;
    const pa = this.providesOf(a);
    const pb = this.providesOf(b);
    return pa.length === pb.length && pa.every((k, i) => k === pb[i]);
  }

  private providesOf(v: Vertex): readonly string[] {
    return this.registry.get(v.kind)?.autoEdges?.(v.params).provides ?? NO_KEYS;
  }

  /** Every key the graph's vertices provide, with how many provide it. */
  private providedKeys(g: Graph | undefined): Map<string, number> {
    const keys = new Map<string, number>();
    for (const v of g?.vertices.values() ?? []) for (const k of this.providesOf(v)) keys.set(k, (keys.get(k) ?? 0) + 1);
    return keys;
  }

  /**
   * The provided keys of `prev` made those of `next` by what the swap changed, when they were asked for already. Made
   * anew after every swap (every vertex's kind asked again: a file's path normalized, its ancestors listed), they were
   * the largest single item of a collector's change with 60 collected files (profile of a 30-agent bench).
   */
  private updateProvided(prev: Graph, next: Graph, removed: readonly ResourceId[], changed: readonly ResourceId[], added: readonly ResourceId[]): void {
    const keys = this.provided;
    if (keys === undefined) return;
    const add = (v: Vertex | undefined, by: 1 | -1): void => {
      if (v === undefined) return;
      for (const k of this.providesOf(v)) {
        const n = (keys.get(k) ?? 0) + by;
        if (n > 0) keys.set(k, n);
        else keys.delete(k);
      }
    };
    for (const id of removed) add(prev.vertices.get(id), -1);
    for (const id of changed) {
      add(prev.vertices.get(id), -1);
      add(next.vertices.get(id), 1);
    }
    for (const id of added) add(next.vertices.get(id), 1);
  }

  // --- WorkerHost -------------------------------------------------------------------------------------------

  dependencyGate(w: Worker): { gate: 'ready' } | { gate: 'wait' } | { gate: 'blocked'; by: ResourceId } {
    let waiting = false;
    for (const e of this.graph?.dependencies(w.id) ?? []) {
      const dep = this.workers.get(e.from);
      if (dep === undefined) {
        // Not started yet (a swap starts workers in slices): it will wake us when it settles.
        if (this.graph?.vertices.has(e.from) === true) waiting = true;
        continue;
      }
      if (dep.state === 'failed' || dep.state === 'blocked') return { gate: 'blocked', by: dep.id };
      if (dep.state !== 'converged') waiting = true;
    }
    return waiting ? { gate: 'wait' } : { gate: 'ready' };
  }

  acquire(w: Worker): (() => void) | Promise<() => void> {
    // Nothing to wait for (no --parallel, no sema): no promise, and no signal made for the worker (Worker.ac).
    if (this.global === undefined && w.vertex.meta.sema.length === 0) return noRelease;
    return this.acquireSlots(w, w.signal);
  }

  private async acquireSlots(w: Worker, signal: AbortSignal): Promise<() => void> {
    await this.global?.acquire(signal);
    try {
      const releaseNamed = w.vertex.meta.sema.length === 0 ? () => undefined : await this.semas.acquireAll(w.vertex.meta.sema, signal);
      return () => {
        releaseNamed();
        this.global?.release();
      };
    } catch (err) {
      this.global?.release();
      throw err;
    }
  }

  stateChanged(w: Worker, prev: VertexState): void {
    if (this.workers.get(w.id) !== w) return; // a stopped, replaced worker
    this.count(prev, -1);
    this.count(w.state, 1);
    const was = ACTIVE_STATES.has(prev);
    const is = ACTIVE_STATES.has(w.state);
    if (was && !is) this.active--;
    else if (!was && is) this.active++;
    // Stopping: an aborted worker's wake does nothing, and every worker passes through 'stopped' on the way out.
    // From one active state to another (pending to running, running to retrying) no dependent's gate changes: each
    // still waits for this one. Woken anyway, the 100,000 dependents of a directory were gone through once when it
    // started running, and the pass that starts them when it converged came after that one.
    // Their ids read one at a time (dependentIds): a directory's 100,000 edges and ids are not all made before its
    // first file can start.
    const graph = this.graph;
    const dependents = this.root.signal.aborted || (was && is) || graph === undefined ? undefined : graph.dependentIds(w.id);
    if (dependents !== undefined && graph !== undefined) {
      if (dependents.length <= WAKE_AT_ONCE) for (let k = 0; k < dependents.length; k++) this.wakeOrStart(dependents.at(k));
      else this.wakeLater({ graph, id: w.id, ids: dependents });
    }
    for (const l of this.listeners) l({ id: w.id, state: w.state, prev });
    this.checkSettled();
  }

  /**
   * Dependents to wake (see WAKE_AT_ONCE), oldest first, and where the next turn starts in the oldest list. Until
   * woken a dependent only stays as it is (pending, or what it was): wake() re-reads the states it depends on, so
   * a late wake sees the latest, and the engine does not count as settled while a dependent is still pending.
   */
  private readonly toWake: WakeList[] = [];
  private toWakeAt = 0;

  private wakeLater(dependents: WakeList): void {
    // Already waiting, not begun (the same vertex changing state again, e.g. running then converged): that turn will
    // wake every one of them with the latest state. Only the list being worked through goes in once more, so the
    // queue stays bounded however often a vertex changes state.
    if (this.toWake.some((l, k) => k >= 1 && l.graph === dependents.graph && l.id === dependents.id)) return;
    this.toWake.push(dependents);
    if (this.toWake.length === 1) this.wakeSlice();
  }

  private wakeSlice(): void {
    const t0 = performance.now();
    let n = 0;
    for (;;) {
      const list = this.toWake[0];
      if (list === undefined || this.root.signal.aborted) {
        this.toWake.length = 0;
        this.toWakeAt = 0;
        return;
      }
      if (this.toWakeAt >= list.ids.length) {
        this.toWake.shift();
        this.toWakeAt = 0;
        continue;
      }
      this.wakeOrStart(list.ids.at(this.toWakeAt++));
      if (++n % START_CLOCK_EVERY === 0 && performance.now() - t0 >= START_SLICE_MS) break;
    }
    setImmediate(() => this.wakeSlice());
  }

  propagateChange(w: Worker): void {
    for (const l of this.changeListeners) l(w.id);
    const graph = this.graph;
    if (graph === undefined) return;
    const reason = `${w.id} changed`;
    for (const e of graph.dependents(w.id)) {
      let d = this.workers.get(e.to);
      // A dependent without a worker starts dirty anyway; only a notify (a refresh its first run owes) needs one now.
      if (d === undefined && e.notify && this.mayStartNow()) {
        const v = graph.vertices.get(e.to);
        if (v !== undefined) d = this.startWorker(v);
      }
      d?.poke(e.notify, reason);
    }
  }

  // --- observation ------------------------------------------------------------------------------------------

  /** True when nothing is pending, running or retrying: every vertex is converged, failed or blocked. */
  get settled(): boolean {
    return this.graph !== undefined && this.active === 0 && this.unstarted === 0 && this.starting === 0;
  }

  private checkSettled(): void {
    const now = this.settled;
    if (now === this.wasSettled) return;
    this.wasSettled = now;
    for (const l of this.settleListeners) l(now);
  }

  onState(l: EngineListener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  /** Called with true each time the engine becomes settled and false when work starts again. */
  onSettledChange(l: (settled: boolean) => void): () => void {
    this.settleListeners.add(l);
    return () => this.settleListeners.delete(l);
  }

  /** Called each time a resource changed something (not in noop mode): a check that found all in place is quiet. */
  onChange(l: (id: ResourceId) => void): () => void {
    this.changeListeners.add(l);
    return () => this.changeListeners.delete(l);
  }

  currentGraph(): Graph | undefined {
    return this.graph;
  }

  status(): VertexStatus[] {
    const g = this.graph;
    if (g === undefined) return [];
    // In the graph's order, every vertex: a worker's own status, or pending (stopped, after stop()) for one without.
    const state: VertexState = this.unstartedStopped > 0 ? 'stopped' : 'pending';
    const out: VertexStatus[] = [];
    for (const id of g.vertices.keys()) out.push(this.workers.get(id)?.status() ?? { id, state, changes: 0, runs: 0 });
    return out;
  }

  private readonly byState = new Map<VertexState, number>();

  private count(state: VertexState, by: number): void {
    this.byState.set(state, (this.byState.get(state) ?? 0) + by);
  }

  /** How many resources there are and how many are converged, failed, blocked: O(1), for progress lines. */
  counts(): { total: number; converged: number; failed: number; blocked: number } {
    const n = (s: VertexState): number => this.byState.get(s) ?? 0;
    return { total: this.workers.size + this.unstarted + this.unstartedStopped, converged: n('converged'), failed: n('failed'), blocked: n('blocked') };
  }

  /** Vertices by kind and state, for backplane_resources (read when metrics are scraped). */
  countStates(): Map<string, Map<VertexState, number>> {
    const out = new Map<string, Map<VertexState, number>>();
    const unstarted: VertexState = this.unstartedStopped > 0 ? 'stopped' : 'pending';
    for (const v of this.graph?.vertices.values() ?? []) {
      const state = this.workers.get(v.id)?.state ?? unstarted;
      let byState = out.get(v.kind);
      if (byState === undefined) out.set(v.kind, (byState = new Map<VertexState, number>()));
      byState.set(state, (byState.get(state) ?? 0) + 1);
    }
    return out;
  }

  /**
   * A status object only for the vertices listed (failed, blocked, noop's would-change), in the graph's order: one per
   * vertex, as status() makes, was ~0.1 s of an agent's exit at 100,000 files (complete() asks for this on SIGTERM).
   * Vertices without a worker are pending or stopped, never listed or counted converged.
   */
  summary(): ConvergeSummary {
    let converged = 0;
    let listed = false;
    for (const w of this.workers.values()) {
      if (w.state === 'converged') converged++;
      else if (w.state === 'failed' || w.state === 'blocked') listed = true;
      if (w.wouldChange) listed = true;
    }
    const failed: VertexStatus[] = [];
    const blocked: VertexStatus[] = [];
    const wouldChange: VertexStatus[] = [];
    const g = this.graph;
    if (listed && g !== undefined) {
      for (const id of g.vertices.keys()) {
        const w = this.workers.get(id);
        if (w === undefined || (w.state !== 'failed' && w.state !== 'blocked' && !w.wouldChange)) continue;
        const st = w.status();
        if (st.state === 'failed') failed.push(st);
        else if (st.state === 'blocked') blocked.push(st);
        if (st.pending !== undefined) wouldChange.push(st);
      }
    }
    return { ok: failed.length === 0 && blocked.length === 0, converged, failed, blocked, wouldChange };
  }

  /** Aborts all in-flight work and watches; resolves when every worker has stopped. */
  async stop(): Promise<void> {
    const reason = new BackplaneError('E_ABORTED', 'agent stopping');
    this.root.abort(reason);
    // Every worker's work and watch abort now, also while a swap is still stopping the ones it replaces.
    for (const w of this.workers.values()) w.abort(reason);
    await this.swapping;
    // Vertices never started never will be: they count as stopped, and no longer keep the engine from settling.
    if (this.unstarted > 0) {
      this.unstartedStopped = this.unstarted;
      this.count('stopped', this.unstarted);
      this.unstarted = 0;
    }
    // Most workers stop on the spot (nothing in flight, no watch, no close: Worker.stopNow); only the rest are waited for.
    const waits: Promise<void>[] = [];
    for (const w of this.workers.values()) {
      const p = w.stopNow('shutdown');
      if (p !== undefined) waits.push(p);
    }
    await Promise.all(waits);
    this.checkSettled();
  }
}

const noRelease = (): void => undefined;

const NO_KEYS: readonly string[] = [];

function edgeKey(edges: readonly { from: ResourceId; notify: boolean }[]): string {
  return edges
    .map((e) => `${e.from}${e.notify ? '!' : ''}`)
    .sort()
    .join('\n');
}
