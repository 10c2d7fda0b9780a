import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { errorMessage } from '../errors.js';
import { Engine, type SwapSummary } from '../engine/engine.js';
import type { Metrics } from '../api/metrics.js';
import type { ApiServer, TlsListen } from '../api/server.js';
import { agentView } from './agent-view.js';
import type { ConvergeSummary } from '../engine/state.js';
import { toDot } from '../graph/dot.js';
import type { ResourceId } from '../graph/ids.js';
import type { Logger } from '../log.js';
import { createRegistry } from '../resources/registry.js';
import { defaultStateDir, ensureStateDir } from '../state-dir.js';
import { VERSION } from '../version.js';
import { GraphSource, type ChangeCause, type ClusterOptions } from './graph-source.js';
import { QuietWatch, waitUntilWritten } from './graph-file.js';
import { idleCompaction } from './idle-compaction.js';
import type { Graph } from '../graph/graph.js';
import { setTimeout as sleepFor } from 'node:timers/promises';
import { ALLOC_ID_SOURCE } from '../scheduler/alloc-id.js';

/** A scheduled instance's svc vertex: named after its alloc id. */
const INSTANCE_SVC = new RegExp(`^svc\\[(${ALLOC_ID_SOURCE})\\]$`);

/**
 * An edit that removes resources is applied only once the graph file has been unchanged this long. Removal is what a
 * file cut short does (the resources after the cut disappear) and what cannot be undone (a removed svc is stopped, a
 * purging directory deletes the removed files), so it waits out writers that /proc cannot show or that close the
 * file between chunks. Additions and changes do not wait: they are applied again correctly once the rest arrives.
 */
const REMOVAL_QUIET_MS = 1000;
/** A run that checks once serves the API from this long after its start (see deferApi). */
const ONE_SHOT_API_AFTER_MS = 1000;

export interface AgentOptions {
  readonly file: string;
  readonly log: Logger;
  readonly noop?: boolean;
  readonly parallel?: number;
  /**
   * Seconds of quiet after which the agent finishes; -1 runs until stopped. Quiet: the graph is settled and nothing
   * has changed, newly failed or been swapped in since it settled. Ignored in noop mode, which checks once and ends.
   */
  readonly convergedTimeout?: number;
  /** Where to keep a Graphviz picture of the graph and its states up to date. */
  readonly graphviz?: string | undefined;
  /** Re-load the graph file when it changes (default true). */
  readonly watchGraph?: boolean;
  /** The agent's state directory (default: /var/lib/backplane as root, else ~/.local/state/backplane). */
  readonly stateDir?: string | undefined;
  /** This host's name in the cluster (default: the machine's hostname). */
  readonly hostname?: string | undefined;
  readonly cluster?: ClusterOptions;
  /** The operator API: always on the state dir's Unix socket (root only); on TCP with TLS when `tls` is set. `false`: no API. */
  readonly api?: { readonly tls?: TlsListen | undefined } | false;
  /** Where to count (`new Metrics()` from src/api/metrics.ts, loaded by the caller only when it serves them). */
  readonly metrics?: Metrics | undefined;
}

export interface AgentResult {
  readonly reason: 'converged' | 'stopped';
  readonly summary: ConvergeSummary;
  /** noop mode: resources a notify edge would refresh if the changes were made, each with the resource notifying it. */
  readonly wouldRefresh: readonly { readonly id: ResourceId; readonly by: ResourceId }[];
}

/**
 * `backplane run`: load the graph, hand it to the engine, swap in edits of the graph file, and finish once
 * converged and quiet for --converged-timeout seconds (in noop mode: once everything has been checked). Throws ValidationErrors before touching anything when the
 * first graph is invalid; later broken edits are reported and the running graph is kept.
 */
export class Agent {
  readonly engine: Engine;
  /**
   * This agent's Prometheus metrics (its own registry), served by the API at GET /metrics; none when nothing could
   * scrape them (no API: a one-shot run), so such a run does not load prom-client at all.
   */
  readonly metrics: Metrics | undefined;
  private readonly ac = new AbortController();
  /** Cancels the pending quiet check (afterQuiet). */
  private quietTimer: (() => void) | undefined;
  /** When the graph last settled with nothing happening since; undefined while there is news to wait out. */
  private quietSince: number | undefined;
  /** Each vertex's last settled state: a vertex that settles as it was before (a poll found all well) is no news. */
  private readonly settledAs = new Map<ResourceId, string>();
  private finish: ((r: AgentResult) => void) | undefined;
  private dotTimer: NodeJS.Timeout | undefined;
  private reloadTimer: NodeJS.Timeout | undefined;
  /** A reload is reading or swapping; another edit meanwhile sets reloadAgain instead of running beside it. */
  private reloading = false;
  private reloadAgain = false;
  private readonly registry = createRegistry();
  private readonly stateDir: string;
  readonly source: GraphSource;
  private readonly warned = new Set<string>();
  private api: ApiServer | undefined;
  private view: ReturnType<typeof agentView> | undefined;

  constructor(private readonly opts: AgentOptions) {
    this.metrics = opts.metrics;
    const stateDir = opts.stateDir ?? defaultStateDir();
    this.stateDir = stateDir;
    this.source = new GraphSource({
      file: resolve(opts.file),
      // gatherFacts().hostname without gathering the rest here: GraphSource gathers the facts once, when first asked
      // for them, and a second gathering (network interfaces, /proc/meminfo twice) was ~0.25 ms of every run's start-up.
      host: opts.hostname ?? shortHostname(),
      registry: this.registry,
      log: opts.log,
      stateDir,
      cluster: opts.cluster ?? { etcd: [], cluster: 'default', labels: {} },
      version: VERSION,
      applied: () => this.appliedInstances(),
      pinFile: opts.watchGraph === false,
      ...(this.metrics === undefined ? {} : { metrics: this.metrics }),
    });
    this.engine = new Engine({
      registry: this.registry,
      log: opts.log,
      stateDir,
      facts: () => this.source.facts,
      cluster: this.source.values,
      services: this.source.services,
      ...(this.metrics === undefined ? {} : { metrics: this.metrics }),
      ...(opts.noop !== undefined ? { noop: opts.noop } : {}),
      ...(opts.parallel !== undefined ? { parallel: opts.parallel } : {}),
      watch: !this.checksOnce(),
    });
  }

  /**
   * The run ends at its first settle (noop, or --converged-timeout 0): every resource is checked once, and neither
   * the resources nor the graph file are watched — a change seen after that point could not be acted on anyway.
   */
  private checksOnce(): boolean {
    return this.opts.noop === true || this.opts.convergedTimeout === 0;
  }

  /** Loads and starts the graph; resolves when the agent is done (converged-timeout reached, or stop()). */
  async run(): Promise<AgentResult> {
    // Before anything reads or writes state: created 0700, or refused when another user could have planted files in it.
    // A signal while loading (a slow module, an etcd that does not answer) must stop the agent now, not once loading
    // ends: whatever is still pending is abandoned, and the process exits with nothing applied.
    const graph = await abortable(this.ac.signal, async () => {
      await ensureStateDir(this.stateDir);
      if (this.deferApi()) {
        this.apiTimer = setTimeout(() => {
          this.apiTimer = undefined;
          this.apiStarting = this.startApi().catch((err: unknown) => this.opts.log.warn(`not serving the API: ${errorMessage(err)}`));
        }, ONE_SHOT_API_AFTER_MS);
        this.apiTimer.unref();
      } else {
        await this.startApi();
      }
      if ((this.opts.cluster?.etcd.length ?? 0) > 0) {
        await this.source.watch((cause) => this.scheduleReload(cause), this.ac.signal, { file: this.opts.watchGraph !== false });
      }
      return this.source.render(this.ac.signal);
    });
    if (graph === undefined) {
      this.opts.log.info('stopped while loading the graph; nothing was applied');
      return { reason: 'stopped', summary: this.engine.summary(), wouldRefresh: [] };
    }
    const started = performance.now();
    const done = new Promise<AgentResult>((resolve) => (this.finish = resolve));
    const noop = this.opts.noop === true;
    let firstSettle = true;
    // Start-up garbage is given back once the agent has gone idle (idle-compaction.ts says why and what it costs).
    // A run that checks once ends at its first settle: it never idles (and need not load perf_hooks to find out).
    if (!this.checksOnce()) this.engine.onSettledChange(() => idleCompaction.poke((m) => this.opts.log.info(m)));
    this.engine.onSettledChange((settled) => {
      if (settled && firstSettle) {
        firstSettle = false;
        // The engine's running counts, not summary(): that builds a status object per resource (~1 ms at 1,000 in a
        // process this young), and complete() builds the one the run returns anyway.
        const s = this.engine.counts();
        const n = this.engine.currentGraph()?.vertices.size ?? graph.vertices.size;
        const ms = Math.round(performance.now() - started);
        if (noop) {
          // "converged" would be a lie about resources noop only looked at; the summary says what would change.
          this.opts.log.info(`checked ${n} resources in ${ms}ms`);
        } else if (this.ac.signal.aborted) {
          // Stopping settles the graph too; "converged: 0 of N" would read as success. The count is the one at the
          // stop: by the time stopping settles the graph every worker reads 'stopped'.
          this.opts.log.info(`stopped before converging: ${this.convergedAtStop ?? s.converged} of ${n} resources converged in ${ms}ms`);
        } else {
          this.opts.log.info(
            `${s.failed === 0 && s.blocked === 0 ? 'converged' : 'settled with problems'}: ${s.converged} of ${n} resources in ${ms}ms` +
              (s.failed > 0 ? `, ${s.failed} failed` : '') +
              (s.blocked > 0 ? `, ${s.blocked} blocked` : ''),
          );
        }
      }
      // noop checks once: nothing it finds will be fixed, so waiting longer could only repeat the same answer.
      if (settled && noop) {
        this.quietTimer ??= afterQuiet(() => this.complete('converged'), 0);
        return;
      }
      this.considerQuiet();
    });
    // What breaks the quiet: a change made, a vertex settling differently than before (newly failed, blocked or
    // repaired), a graph swap. A re-check that finds everything in place (a poll tick, a spurious watch event) does not,
    // or a resource polling more often than the timeout would keep the agent up for ever.
    this.engine.onChange(() => this.news());
    this.engine.onState(({ id, state }) => {
      // retrying is active (the graph is not settled meanwhile); what counts is how the vertex settles after it.
      if (state === 'pending' || state === 'running' || state === 'retrying' || state === 'stopped') return;
      if (this.settledAs.get(id) === state) return;
      this.settledAs.set(id, state);
      this.news();
    });
    if (this.opts.graphviz !== undefined) this.engine.onState(() => this.scheduleDot());
    this.engine.onState(({ id, state }) => {
      const inst = this.source.instances;
      if (inst === undefined) return;
      const error = state === 'failed' || state === 'blocked' ? this.engine.status().find((s) => s.id === id)?.error : undefined;
      inst.onVertexState(id, state, error);
    });
    this.engine.onChange((id) => this.source.instances?.onVertexChanged(id));
    this.warn(graph);
    this.opts.log.info(`running ${graph.vertices.size} resources from ${graph.source}${this.opts.noop === true ? ' (noop: nothing will be changed)' : ''}`);
    // The graph's cache entry is encoded and hashed on the main thread (~0.1 s at 10,000 resources, ~1 s at 100,000):
    // started once setGraph had looked at every vertex, a few milliseconds in at 10,000, it held the event loop
    // before the first file was written (0.4 s under load). It starts once the engine has made its first change or
    // settled instead. Exports are published at once: the cluster must not wait for this host's first change. A graph
    // replaced meanwhile (a reload) is not published late over its successor.
    const running = graph.exports.length > 0 ? Promise.resolve() : this.firstChangeOrSettle();
    // A stop while the swap still starts workers (100,000 of them take a second or more) must not wait for the last
    // one: run() returns at once, close() stops the engine, and the swap ends at its next slice. Waiting here let
    // the swap go on starting checks and writes after the signal, past the grace period at 100,000 files.
    await abortable(this.ac.signal, () => this.engine.setGraph(graph));
    // Ended (stopped, or done) while starting: nothing to publish, watch or join — close() comes next.
    if (this.ac.signal.aborted) return done;
    void running.then(() => {
      if (this.engine.currentGraph() === graph) this.source.publish(graph);
    });
    // Collected data re-renders the graph even with --no-watch-graph: the flag is about the file, not the cluster.
    if ((this.opts.cluster?.etcd.length ?? 0) === 0 && !this.checksOnce()) {
      await this.source.watch((cause) => this.scheduleReload(cause), this.ac.signal, { file: this.opts.watchGraph !== false });
    }
    this.scheduleDot();
    if (this.opts.cluster?.services === true && !noop) this.source.startServices();
    return done;
  }

  /** Resolves when the engine first changes something or first settles, whichever comes first. */
  private firstChangeOrSettle(): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        offChange();
        offSettle();
        resolve();
      };
      const offChange = this.engine.onChange(done);
      const offSettle = this.engine.onSettledChange((settled) => {
        if (settled) done();
      });
    });
  }

  /** The scheduled instances in the running graph: their svc vertices are named after their alloc ids. */
  private appliedInstances(): ReadonlySet<string> {
    const g = this.engine.currentGraph();
    if (g === undefined) return new Set<string>();
    // Asked twice a second (the fence heartbeat): worked out once per graph, not by matching every id each time —
    // at 100,000 resources that was 4% of a core while idle.
    if (this.instanceIds?.graph === g) return this.instanceIds.ids;
    const ids = new Set<string>();
    for (const id of g.vertices.keys()) {
      if (!id.startsWith('svc[')) continue;
      const m = INSTANCE_SVC.exec(id);
      if (m?.[1] !== undefined) ids.add(m[1]);
    }
    this.instanceIds = { graph: g, ids };
    return ids;
  }

  private instanceIds: { readonly graph: Graph; readonly ids: ReadonlySet<string> } | undefined;
  /** How many resources were converged when the run was asked to end (complete): what "stopped before converging" says. */
  private convergedAtStop: number | undefined;

  /** Something happened: the quiet time starts again from the next time the graph is settled. */
  private news(): void {
    this.quietSince = undefined;
    this.considerQuiet();
  }

  /**
   * Finishes once the graph has been quiet for --converged-timeout. The clock is not stopped while a check runs (the
   * graph is unsettled during a poll's re-check): the agent finishes at the first settled moment after the time is up.
   */
  private considerQuiet(): void {
    const timeout = this.opts.convergedTimeout ?? -1;
    if (timeout < 0 || this.opts.noop === true || this.finish === undefined) return;
    this.quietTimer?.();
    this.quietTimer = undefined;
    if (!this.engine.settled) return;
    const now = performance.now();
    this.quietSince ??= now;
    const left = this.quietSince + timeout * 1000 - now;
    this.quietTimer = afterQuiet(() => {
      this.quietTimer = undefined;
      if (left <= 0) this.complete('converged');
      else this.considerQuiet();
    }, left);
  }

  /** Stops watching and working; in-flight applies are aborted. Resolves the run() promise. */
  async stop(): Promise<void> {
    // Before run() has a graph there is nothing to complete: aborting ends the loading.
    if (this.finish === undefined) this.ac.abort();
    this.complete('stopped');
  }

  private complete(reason: AgentResult['reason']): void {
    const finish = this.finish;
    if (finish === undefined) return;
    this.finish = undefined;
    this.quietTimer?.();
    this.quietTimer = undefined;
    if (this.reloadTimer !== undefined) clearTimeout(this.reloadTimer);
    this.convergedAtStop = this.engine.counts().converged;
    this.ac.abort();
    const summary = this.engine.summary();
    finish({ reason, summary, wouldRefresh: this.opts.noop === true ? this.wouldRefresh(summary) : [] });
  }

  /**
   * noop cannot run a notify target (it changes nothing, so nothing notifies), but the operator needs to know that
   * applying these changes would also restart a service or re-run a command: every resource reachable over notify
   * edges from one that would change (a refreshed resource changes in turn, so its own notify edges count too).
   */
  private wouldRefresh(summary: ConvergeSummary): { id: ResourceId; by: ResourceId }[] {
    const g = this.engine.currentGraph();
    if (g === undefined) return [];
    const out: { id: ResourceId; by: ResourceId }[] = [];
    const seen = new Set<ResourceId>(summary.wouldChange.map((s) => s.id));
    const queue = [...seen];
    for (let i = 0; i < queue.length; i++) {
      const from = queue[i];
      if (from === undefined) continue;
      for (const e of g.dependents(from)) {
        if (!e.notify || seen.has(e.to)) continue;
        seen.add(e.to);
        out.push({ id: e.to, by: from });
        queue.push(e.to);
      }
    }
    return out;
  }

  /** Release everything: call after run() resolved. */
  async close(): Promise<void> {
    this.ac.abort();
    if (this.apiTimer !== undefined) clearTimeout(this.apiTimer);
    this.apiTimer = undefined;
    await this.apiStarting;
    if (this.dotTimer !== undefined) {
      clearTimeout(this.dotTimer);
      this.dotTimer = undefined;
    }
    // The picture shows where the graph ended up, not the 'stopped' every vertex passes through on the way out.
    if (this.opts.graphviz !== undefined) await this.writeDot().catch((err: unknown) => this.opts.log.warn(`cannot write graphviz file: ${errorMessage(err)}`));
    await this.api?.close().catch(() => undefined);
    this.view?.close();
    await this.engine.stop();
    await this.source.close();
  }

  /**
   * A run that checks once opens its API socket only if it is still running a second later: most such runs are over
   * by then, nobody could have asked them anything, and loading and opening the API was ~15 ms of each. A listener on
   * TCP the operator asked for opens at once, since failing to have it is an error.
   */
  private deferApi(): boolean {
    const api = this.opts.api;
    return this.checksOnce() && api !== false && api?.tls === undefined;
  }

  private apiTimer: NodeJS.Timeout | undefined;
  private apiStarting: Promise<void> | undefined;

  /**
   * The operator API, before the graph loads: `backplane status` answers while the agent converges. Its Unix socket
   * failing (a state dir open to others) is a warning, as the control socket's is; a TCP listener the operator
   * asked for and cannot have is an error.
   */
  private async startApi(): Promise<void> {
    const api = this.opts.api;
    if (api === false) return;
    const { serveApi } = await import('../api/server.js');
    const view = agentView({
      host: this.source.host,
      stateDir: this.stateDir,
      graphFile: resolve(this.opts.file),
      engine: this.engine,
      cluster: () => this.source.clusterStatus(),
    });
    this.view = view;
    const { serveWebAsset } = await import('../api/web-assets.js');
    const metrics = this.metrics;
    try {
      this.api = await serveApi({
        host: this.source.host,
        stateDir: this.stateDir,
        log: this.opts.log,
        agent: view,
        cluster: () => this.source.clusterAccess(),
        metrics: metrics === undefined ? undefined : async () => ({ text: await metrics.text(), contentType: metrics.contentType }),
        web: (req, res) => serveWebAsset(req, res),
        tls: api?.tls,
      });
    } catch (err) {
      if (api?.tls !== undefined) throw err;
      this.opts.log.warn(`not serving the API socket: ${errorMessage(err)}; \`backplane status\` and the CLI cannot reach this agent`);
    }
  }

  private scheduleReload(cause: ChangeCause): void {
    // Editors write in several steps (truncate, write, rename): wait for the burst to end. Cluster data arrives in
    // whole watch batches, so a tick is enough to coalesce several of them; a longer wait would only add latency
    // to every exported change.
    const delay = cause === 'file' ? 50 : 2;
    if (this.reloadTimer !== undefined) clearTimeout(this.reloadTimer);
    this.reloadTimer = setTimeout(() => {
      this.reloadTimer = undefined;
      this.reload().catch((err: unknown) => this.opts.log.error(`graph reload failed: ${errorMessage(err)}`));
    }, delay);
  }

  private async reload(): Promise<void> {
    // One at a time: a second reload waiting for the same slow writer would swap the same edit in twice, or an older
    // read in after a newer one.
    if (this.reloading) {
      this.reloadAgain = true;
      return;
    }
    this.reloading = true;
    try {
      await this.reloadOnce();
    } finally {
      this.reloading = false;
    }
    if (this.reloadAgain) {
      this.reloadAgain = false;
      await this.reload();
    }
  }

  /**
   * The edited graph, read once the file is complete (graph-file.ts); an edit that removes resources is held until
   * the file has been quiet for REMOVAL_QUIET_MS and read again. undefined once the agent stops.
   */
  private async renderWhenWritten(): Promise<Graph | undefined> {
    const file = resolve(this.opts.file);
    const quiet = new QuietWatch();
    for (let held = false; ; ) {
      if (!(await waitUntilWritten(file, this.ac.signal, this.opts.log))) return undefined;
      const next = await this.source.render();
      const cur = this.engine.currentGraph();
      const removes = cur === undefined ? 0 : [...cur.vertices.keys()].filter((id) => !next.vertices.has(id)).length;
      const wait = removes === 0 ? 0 : await quiet.msUntilQuiet(file, REMOVAL_QUIET_MS);
      if (wait <= 0) return next;
      if (!held) {
        held = true;
        this.opts.log.info(`the edit of ${file} removes ${removes} resource${removes === 1 ? '' : 's'}: applied once the file has been unchanged for ${REMOVAL_QUIET_MS}ms`);
      }
      try {
        await sleepFor(wait, undefined, { signal: this.ac.signal });
      } catch {
        return undefined;
      }
    }
  }

  private async reloadOnce(): Promise<void> {
    if (this.ac.signal.aborted) return;
    let next;
    try {
      next = await this.renderWhenWritten();
      if (next === undefined) return;
    } catch (err) {
      this.metrics?.graphReloadFailed();
      this.opts.log.error(`graph changed but is not valid; keeping the running graph:\n${errorMessage(err)}`);
      return;
    }
    const cur = this.engine.currentGraph();
    this.warn(next);
    this.source.publish(next);
    if (cur !== undefined && sameGraph(cur, next)) return;
    const s: SwapSummary = await this.engine.setGraph(next);
    this.news();
    this.opts.log.info(`graph swapped: ${s.added.length} added, ${s.removed.length} removed, ${s.changed.length} changed, ${s.unchanged} unchanged`);
  }

  /** Validation warnings (a collect rule that takes a power parameter), once per distinct text. */
  private warn(graph: { warnings: readonly { format(): string }[] }): void {
    for (const w of graph.warnings) {
      const text = w.format();
      if (this.warned.has(text)) continue;
      this.warned.add(text);
      this.opts.log.warn(text);
    }
  }

  private scheduleDot(): void {
    if (this.opts.graphviz === undefined || this.dotTimer !== undefined) return;
    this.dotTimer = setTimeout(() => {
      this.dotTimer = undefined;
      this.writeDot().catch((err: unknown) => this.opts.log.warn(`cannot write graphviz file: ${errorMessage(err)}`));
    }, 100);
  }

  private async writeDot(): Promise<void> {
    const path = this.opts.graphviz;
    const g = this.engine.currentGraph();
    if (path === undefined || g === undefined) return;
    const states = new Map<ResourceId, string>(this.engine.status().map((s) => [s.id, s.state]));
    const dot = toDot(g, states);
    // The picture's directory may be writable by others (/tmp): a predictable temp name written with writeFile would
    // follow a symlink planted there and have root overwrite its target. A random name, created O_EXCL|O_NOFOLLOW.
    let tmp = '';
    let fh: FileHandle | undefined;
    for (let attempt = 0; fh === undefined; attempt++) {
      tmp = join(dirname(path), `.${basename(path)}.tmp-${randomBytes(6).toString('hex')}`);
      try {
        fh = await open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o644);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= 5) throw err;
      }
    }
    try {
      await fh.writeFile(dot);
    } catch (err) {
      await fh.close().catch(() => undefined);
      await rm(tmp, { force: true });
      throw err;
    }
    await fh.close();
    // rename replaces whatever name is at `path` (a symlink too) and never writes through it.
    await rename(tmp, path).catch(async (err: unknown) => {
      await rm(tmp, { force: true });
      throw err;
    });
  }
}

function sameGraph(a: { vertices: ReadonlyMap<string, { fingerprint: string }>; edges: readonly { from: string; to: string; notify: boolean }[] }, b: typeof a): boolean {
  if (a.vertices.size !== b.vertices.size || a.edges.length !== b.edges.length) return false;
  for (const [id, v] of a.vertices) if (b.vertices.get(id)?.fingerprint !== v.fingerprint) return false;
  const ek = (e: { from: string; to: string; notify: boolean }): string => `${e.from}>${e.to}${e.notify ? '!' : ''}`;
  const ea = new Set(a.edges.map(ek));
  return b.edges.every((e) => ea.has(ek(e)));
}

/** The machine's host name up to its first dot: what gatherFacts() (facts.ts) calls `hostname`. */
function shortHostname(): string {
  const host = hostname();
  return host.split('.')[0] ?? host;
}

/**
 * Calls `fn` once `ms` have passed, or on the loop's next turn when none are left; returns what cancels it. The next
 * turn is setImmediate, not setTimeout(fn, 0): Node makes that 1 ms, which a one-shot run (--converged-timeout 0,
 * noop) spent idle in epoll between its last write and its exit. Either way fn runs after the callbacks already
 * due, so news arriving with the settle still cancels it.
 */
function afterQuiet(fn: () => void, ms: number): () => void {
  if (ms > 0) {
    const t = setTimeout(fn, ms);
    return () => clearTimeout(t);
  }
  const i = setImmediate(fn);
  return () => clearImmediate(i);
}

/** Runs `fn`; undefined as soon as `signal` aborts (even if `fn` is still pending, or fails because of the abort). */
async function abortable<T>(signal: AbortSignal, fn: () => Promise<T>): Promise<T | undefined> {
  if (signal.aborted) return undefined;
  let onAbort: (() => void) | undefined;
  const stopped = new Promise<undefined>((resolve) => {
    onAbort = () => resolve(undefined);
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([fn(), stopped]);
  } catch (err) {
    if (signal.aborted) return undefined;
    throw err;
  } finally {
    if (onAbort !== undefined) signal.removeEventListener('abort', onAbort);
  }
}
