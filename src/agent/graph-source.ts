import { loadavg, freemem } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { join, resolve } from 'node:path';
// The cluster side (link, trust, discovery, the service backplane's instances and controller, the API's state cache)
// is loaded when the agent first connects to a store, not at every start: a run of a local graph never needs it, and
// the CLI's launcher can then leave it out of the code it reads and compiles (scripts/build.mjs).
import type { ClusterLink, LinkIdentity, NodeRecord } from '../cluster/link.js';
import type { ControlServer } from '../cluster/control-server.js';
import type { EtcdAuthOptions, EtcdTlsOptions } from '../cluster/etcd-store.js';
import type { Store } from '../cluster/store.js';
import type { Metrics } from '../api/metrics.js';
import { BackplaneError, errorMessage } from '../errors.js';
import { gatherFacts } from '../facts.js';
import { parseGraphText, readGraphSource } from '../frontends/load.js';
import { readGraphText } from '../frontends/limits.js';
import { buildGraph, vertexReuse, type KindRegistry } from '../graph/build.js';
import { isBuiltinRegistry, kindsOf } from '../resources/registry.js';
import { CACHE_MIN_BYTES, readCachedGraph, runningBuild, writeCachedGraph } from './graph-cache.js';
import { collectMemo, collectResources, type CollectedResource, type ExportEntry } from '../graph/collect.js';
import type { Graph } from '../graph/graph.js';
import { resourceId } from '../graph/ids.js';
import { metaSchema } from '../graph/meta.js';
import type { RawGraph, RawResource } from '../graph/raw.js';
import type { Logger } from '../log.js';
import type { ClusterValues, HostFacts } from '../resources/types.js';
import { watchPath } from '../util/dirwatch.js';
import { isModuleGraph } from '../frontends/typescript.js';
import { DiscoveryHandle } from './discovery.js';
import type { Controller } from '../scheduler/controller.js';
import { defaultCapacity } from '../scheduler/capacity.js';
import type { Instances } from './instances.js';
import type { RetentionPolicy } from './instance-gc.js';
import type { ClusterAccess } from '../api/ops.js';
import type { StateCache } from '../api/state-cache.js';

/** What made a re-render necessary: an edit of the graph file, or new data collected from the cluster. */
export type ChangeCause = 'file' | 'cluster';

export interface ClusterOptions {
  /** etcd client URLs; empty = the embedded store in the state directory. */
  readonly etcd: readonly string[];
  /** TLS and etcd user for the etcd endpoints (docs/etcd-security.md). */
  readonly etcdTls?: EtcdTlsOptions;
  readonly etcdAuth?: EtcdAuthOptions;
  readonly cluster: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly leaseTtlMs?: number;
  /** A join token from `backplane hosts token` (pins the CA and proves the host may join). */
  readonly joinToken?: string | undefined;
  /** The CA's fingerprint, for a host approved by hand with `backplane hosts approve`. */
  readonly caFingerprint?: string | undefined;
  /** What this host offers scheduled instances (--capacity); default: its cpus and memory less a reserve. */
  readonly capacity?: { readonly cpu: number; readonly memory: number } | undefined;
  /** Dynamic ports for instances placed here (--ports); default 20000-32767. */
  readonly ports?: { readonly from: number; readonly to: number } | undefined;
  /**
   * Take part in the service backplane: be a controller candidate and run the instances assigned here. Set for an
   * agent that runs until stopped; a one-shot run has no business holding instances.
   */
  readonly services?: boolean;
  /** How long an instance outlives its agent's last confirmed place in the cluster (the fence); default TTL / 2. */
  readonly fenceMs?: number | undefined;
  /** Stopped instances' state directories kept per service and for how long (instance-gc.ts); default DEFAULT_RETENTION. */
  readonly retention?: Partial<RetentionPolicy> | undefined;
}

export interface GraphSourceOptions {
  readonly file: string;
  readonly host: string;
  readonly registry: KindRegistry;
  readonly log: Logger;
  readonly stateDir: string;
  readonly cluster: ClusterOptions;
  readonly version: string;
  /** The alloc ids whose instances are in the running graph (the engine's), for the fence (instances.ts). */
  readonly applied?: () => ReadonlySet<string>;
  /**
   * --no-watch-graph: the graph file is read once. Re-renders for cluster data (collected exports, assigned
   * instances) reuse what was read then, so an edit of the file is not picked up through them either. A graph
   * module is a function of the cluster data and is evaluated again (its file is read again with it).
   */
  readonly pinFile?: boolean;
  /** The agent's metrics: store requests timed, lease and link state, instances, the controller. */
  readonly metrics?: Metrics;
  /**
   * The build id the validated-graph cache is keyed on (graph-cache.ts); default: the running CLI's, none when run
   * from source. false: no cache.
   */
  readonly cacheBuild?: string | false;
}

/**
 * Where the running graph comes from: the graph file (YAML or a module), rendered for this host with what it
 * collects from the cluster. It re-renders when the file changes or when collected data changes, and publishes the
 * graph's exports. The cluster store is opened only when needed: with --etcd, or once a graph exports or collects.
 */
export class GraphSource {
  private link: ClusterLink | undefined;
  private store: Store | undefined;
  /** The store as the link, discovery, instances and controller use it: timed when the agent has metrics. */
  private clusterStore: Store | undefined;
  /** The control socket serving the embedded store to the CLI (control-server.ts); not with etcd. */
  private control: ControlServer | undefined;
  private connecting: Promise<void> | undefined;
  private collected: readonly ExportEntry[] = [];
  private readonly rejected = new Set<string>();
  private changeListener: ((cause: ChangeCause) => void) | undefined;
  private gathered: HostFacts | undefined;
  /**
   * This host's facts, gathered at the first ask: a module graph's context, a template, the cluster's node record.
   * A YAML graph's render does not read them (the YAML frontends read nothing but the text), so a run of an empty
   * graph or of files never gathers them (network interfaces, /proc/meminfo twice: ~0.5 ms of start-up).
   */
  get facts(): HostFacts {
    return (this.gathered ??= gatherFacts());
  }
  private readonly closing = new AbortController();

  private readonly kvWatchers = new Map<string, Set<() => void>>();
  /** Service discovery (ResourceWorld.services, GraphContext.services); fed once the store is open. */
  readonly services = new DiscoveryHandle();
  /** The service backplane's agent side and controller candidate, once connected (ClusterOptions.services). */
  instances: Instances | undefined;
  controller: Controller | undefined;
  private linkReady: (() => void) | undefined;
  private readonly linked = new Promise<void>((resolve) => (this.linkReady = resolve));

  /**
   * The `kv` kind's handle on this host's values in the store (ResourceWorld.cluster). Using it opens the store if
   * the graph did not already (the embedded one, or etcd once reachable); until then its calls wait.
   */
  readonly values: ClusterValues = {
    get: async (key, signal) => (await this.linkFor(signal)).kvGet(key),
    set: async (key, value, signal) => (await this.linkFor(signal)).kvSet(key, value),
    watch: (key, onChange) => {
      const set = this.kvWatchers.get(key) ?? new Set();
      set.add(onChange);
      this.kvWatchers.set(key, set);
      return () => {
        set.delete(onChange);
        if (set.size === 0) this.kvWatchers.delete(key);
      };
    },
  };

  constructor(private readonly opts: GraphSourceOptions) {
    // The cache holds what the built-in kinds' schemas made of a graph: with any other registry (a test's) it is off.
    this.cacheBuild = opts.cacheBuild === false || !isBuiltinRegistry(opts.registry) ? undefined : (opts.cacheBuild ?? runningBuild());
  }

  private async linkFor(signal: AbortSignal): Promise<ClusterLink> {
    await this.connect();
    if (this.link === undefined) {
      // etcd unreachable: connect() retries in the background; wait for it (or for the resource to be stopped).
      await new Promise<void>((resolve, reject) => {
        const onAbort = (): void => reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
        signal.addEventListener('abort', onAbort, { once: true });
        void this.linked.then(() => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        });
      });
    }
    const link = this.link;
    if (link === undefined) throw new BackplaneError('E_IO', 'not connected to the cluster store', { retryable: true });
    return link;
  }

  /** Calls `cb` when a re-render may give a different graph (the file or collected data changed). */
  async watch(cb: (cause: ChangeCause) => void, signal: AbortSignal, opts: { file: boolean } = { file: true }): Promise<void> {
    this.changeListener = cb;
    if (this.opts.cluster.etcd.length > 0) await this.connect();
    if (opts.file) await watchPath(this.opts.file, () => cb('file'), signal);
  }

  /** `signal` stops a graph module's evaluation (its worker is terminated). */
  async render(signal?: AbortSignal): Promise<Graph> {
    const cached = await this.fromCache();
    if (cached.graph !== undefined) {
      // The engine creates each vertex's resource from its kind: those kinds are loaded before the graph is handed on.
      await this.opts.registry.prepare(cached.kinds ?? []);
      this.nextValidation();
      return cached.graph;
    }
    let raw = await this.readRaw(signal, cached.text);
    if (this.link === undefined && (this.opts.cluster.etcd.length > 0 || needsCluster(raw))) {
      await this.connect();
      raw = await this.readRaw(signal);
    }
    // The kinds the graph names, loaded before anything below validates a resource (every step after is synchronous).
    await this.opts.registry.prepare(kindsOf(raw));
    this.nextValidation();
    // An exported resource is not managed here, so collecting it back (a rule whose `from` includes this host)
    // is no clash: the collected copy is the one this host manages.
    // Only a graph that collects needs this: validating every local resource a second time (and keeping a key per
    // resource for the next render) was a tenth of a 1,000-file run and megabytes at 100,000.
    const rules = raw.collect ?? [];
    const local = new Set<string>();
    if (rules.length > 0) {
      const localRes = raw.resources.filter((r) => r.export === undefined);
      for (const r of localRes) local.add(resourceId(r.kind, r.name));
      // What the local resources manage too: a collected file on a path a local file already manages would fail the
      // whole build (E_OVERLAP), and another host's export must never break this host's graph.
      for (const r of localRes) {
        const thing = this.manages(r);
        if (thing !== undefined) local.add(thing);
      }
    }
    const collected = rules.length === 0 ? [] : this.admit(collectResources(this.opts.host, rules, this.collected, this.opts.registry, this.collectMemo), local);
    // The instances the controller assigned here: resources of the same graph, so the engine supervises them.
    const inst = this.instances?.resources() ?? { resources: [], edges: [] };
    if (inst.resources.length > 0) await this.opts.registry.prepare(kindsOf(inst));
    // An instance may ask the agent for its peers as soon as it runs: discovery has read once before any does.
    if (inst.resources.length > 0) await this.services.start();
    // Only a graph that takes from the cluster is rendered again and again with mostly the same resources; keeping
    // what a 100,000-file graph built once would only cost memory.
    const reuse = rules.length > 0 || inst.resources.length > 0 ? this.reuse : undefined;
    const graph = buildGraph({ ...raw, resources: [...raw.resources, ...collected, ...inst.resources], edges: [...raw.edges, ...inst.edges] }, this.opts.registry, reuse);
    if (collected.length === 0 && inst.resources.length === 0) this.offerToCache(raw, graph);
    return graph;
  }

  /** The build id the validated-graph cache is keyed on; undefined: no cache (run from source, or a test's registry). */
  private readonly cacheBuild: string | undefined;
  /** The text whose graph the cache holds (written or read by this process): not written again. */
  private cachedText: string | undefined;
  /** The cache write under way, awaited by close() so a one-shot run does not exit in the middle of it. */
  private cacheWrite: Promise<void> | undefined;

  /**
   * The graph from the validated-graph cache (graph-cache.ts) when the graph file's text is the one it was made from;
   * otherwise the text read for the check, so the parse does not read the file again. Only a YAML graph that takes
   * nothing from the cluster is ever cached, so a hit needs nothing but the file: no collected data, no instances.
   */
  private async fromCache(): Promise<{ graph?: Graph; kinds?: readonly string[]; text?: string }> {
    const build = this.cacheBuild;
    if (build === undefined || this.pinned !== undefined || isModuleGraph(this.opts.file)) return {};
    // What render() does before reading: with etcd the store is opened first (a cached graph collects nothing from
    // it, but the agent joins the cluster all the same).
    if (this.link === undefined && this.opts.cluster.etcd.length > 0) await this.connect();
    if ((this.instances?.resources().resources.length ?? 0) > 0) return {};
    const file = resolve(this.opts.file);
    const text = this.pinnedText ?? (await readGraphText(file));
    // Parsed already by this process (a re-render for cluster data): that path knows what it has.
    if (this.parsed?.text === text || text.length < CACHE_MIN_BYTES) return { text };
    const t0 = performance.now();
    const got = await readCachedGraph({ stateDir: this.opts.stateDir, file, text, build });
    if ('miss' in got) {
      this.opts.log.debug(`graph cache: not used for ${file}: ${got.miss}`);
      return { text };
    }
    this.opts.log.debug(`graph cache: ${got.graph.vertices.size} validated resources of ${file} in ${(performance.now() - t0).toFixed(1)}ms`);
    this.cachedText = text;
    if (this.opts.pinFile === true) this.pinnedText = text;
    return { graph: got.graph, kinds: got.kinds };
  }

  /**
   * Offers a graph that built without errors to be kept for the next run (graph-cache.ts), written in the background
   * once the engine runs it (keepCached): what a hit needs is only what the file says, so a graph that collects,
   * exports or uses the cluster store is not kept. Failing to write it costs the next run a parse, nothing else.
   */
  private offerToCache(raw: RawGraph, graph: Graph): void {
    const build = this.cacheBuild;
    const parsed = this.parsed;
    if (build === undefined || parsed === undefined || parsed.raw !== raw || this.cachedText === parsed.text || parsed.text.length < CACHE_MIN_BYTES) return;
    if ((raw.collect?.length ?? 0) > 0 || needsCluster(raw) || graph.exports.length > 0 || graph.warnings.length > 0) return;
    const key = { stateDir: this.opts.stateDir, file: resolve(this.opts.file), text: parsed.text, build };
    this.toCache = { graph, text: parsed.text, write: () => writeCachedGraph(key, raw, graph) };
  }

  /**
   * Starts the cache write offered for `graph` (offerToCache). Only once the engine runs it (publish): encoding and
   * hashing an entry is synchronous work (about a second at 100,000 resources), and done while the engine started
   * its first workers it delayed the first change by as much. A graph rendered but never run is not kept.
   */
  private keepCached(graph: Graph): void {
    const pending = this.toCache;
    if (pending === undefined || pending.graph !== graph) return;
    this.toCache = undefined;
    this.cachedText = pending.text;
    const file = resolve(this.opts.file);
    const prior = this.cacheWrite ?? Promise.resolve();
    this.cacheWrite = prior
      .then(() => new Promise((done) => setImmediate(done)))
      .then(pending.write)
      .then(
        (why) => this.opts.log.debug(why === undefined ? `graph cache: kept ${graph.vertices.size} validated resources of ${file}` : `graph cache: not kept for ${file}: ${why}`),
        (err: unknown) => this.opts.log.debug(`graph cache: not kept for ${file}: ${errorMessage(err)}`),
      );
  }

  /** The cache write offered for the last graph rendered, started once the engine runs that graph (keepCached). */
  private toCache: { readonly graph: Graph; readonly text: string; readonly write: () => Promise<string | undefined> } | undefined;

  private pinned: RawGraph | undefined;
  /**
   * From one render to the next, unchanged resources stay the very same objects: the collected resource of an export
   * entry the link hands over again, and the vertex of a raw resource seen before (the parsed file's, a collected
   * one). A render for one changed export then validates that export's resource, not every resource in the graph.
   */
  private readonly collectMemo = collectMemo();
  private readonly reuse = vertexReuse();
  private readonly validatedByObject = new WeakMap<RawResource, { readonly key: string; readonly v: Validated }>();
  private validatedBefore = new Map<string, Validated>();
  private validatedNow = new Map<string, Validated>();
  /** The last YAML graph parsed and the text it was parsed from. */
  private parsed: { readonly text: string; readonly raw: RawGraph } | undefined;

  /** With --no-watch-graph, the text a cache hit was made from: what later renders parse, not the file as it is now. */
  private pinnedText: string | undefined;

  /** `text`: the graph file's text when the caller has just read it. */
  private async readRaw(signal?: AbortSignal, text0?: string): Promise<RawGraph> {
    if (this.pinned !== undefined) return this.pinned;
    let raw: RawGraph;
    if (isModuleGraph(this.opts.file)) {
      raw = await readGraphSource(this.opts.file, this.context(), signal);
    } else {
      // A YAML graph is a function of its text alone, and every export another host changes re-renders this one:
      // the file is read each time (an edit is never missed), but parsed again only when its text changed.
      const file = resolve(this.opts.file);
      const text = text0 ?? this.pinnedText ?? (await readGraphText(file));
      if (this.parsed?.text === text) {
        raw = this.parsed.raw;
      } else {
        const t0 = performance.now();
        raw = parseGraphText(file, text);
        this.opts.log.debug(`parsed ${file} in ${(performance.now() - t0).toFixed(1)}ms`);
      }
      this.parsed = { text, raw };
    }
    if (this.opts.pinFile === true && !isModuleGraph(this.opts.file) && raw.errors.length === 0) this.pinned = raw;
    return raw;
  }

  /**
   * The engine runs `graph` now: publishes what it exports (retried in the background while the store is down) and
   * keeps it in the validated-graph cache if it was offered for that.
   */
  publish(graph: Graph): void {
    this.keepCached(graph);
    if (this.link === undefined) return;
    this.link.publish(graph.exports).catch((err: unknown) => this.opts.log.warn(`publishing exports failed: ${errorMessage(err)}`));
  }

  /** Joins the service backplane in the background (opening the store if nothing did yet). */
  startServices(): void {
    this.connect().catch((err: unknown) => this.opts.log.error(`cannot join the service backplane: ${errorMessage(err)}`));
  }

  async close(): Promise<void> {
    this.closing.abort();
    this.instances?.close();
    this.services.close();
    await this.connecting?.catch(() => undefined);
    await this.cacheWrite;
    this.stateCache?.cache.close();
    await this.link?.close().catch(() => undefined);
    await this.control?.close().catch(() => undefined);
    await this.store?.close().catch(() => undefined);
  }

  get host(): string {
    return this.opts.host;
  }

  /**
   * The cluster as this agent sees it, for its operator API; undefined while it has no store connection. Operator
   * records are signed with this host's key, so only an operator host's API can make changes (others answer 403).
   */
  clusterAccess(): ClusterAccess | undefined {
    const store = this.store;
    const link = this.link;
    const view = link?.trust;
    if (store === undefined || link === undefined || view === undefined) return undefined;
    const host = this.opts.host;
    return {
      store,
      view,
      host,
      readState: async () => (await this.stateCacheFor(store)).read(view),
      signer: async () => {
        const [{ ApiError }, { wrapSigned }] = await Promise.all([import('../api/ops.js'), import('../scheduler/records.js')]);
        if (!view.mayOperate(host)) {
          throw new ApiError(403, `host ${host} may not sign operator records (it is not an operator host), so its API cannot make changes`, {
            hint: `send the request to an operator host's API, or on the CA's host: backplane hosts approve ${host} --operator`,
          });
        }
        return { name: host, sign: (key: string, body: string) => wrapSigned(host, link.sign(key, body)) };
      },
    };
  }

  private stateCache: { store: Store; cache: StateCache } | undefined;

  /** One state cache per store connection (the API's reads share it). */
  private async stateCacheFor(store: Store): Promise<StateCache> {
    const { StateCache } = await import('../api/state-cache.js');
    // Checked and made after the import, in one go: concurrent first reads still share one cache.
    if (this.stateCache?.store !== store) {
      this.stateCache?.cache.close();
      this.stateCache = { store, cache: new StateCache(store, this.opts.log) };
    }
    return this.stateCache.cache;
  }

  /** What `backplane status` shows of the cluster link. */
  clusterStatus(): { connected: boolean; store?: string; leader: boolean; services: boolean } {
    const store = this.store;
    return {
      connected: store !== undefined && this.link?.trust !== undefined,
      ...(store === undefined ? {} : { store: this.opts.cluster.etcd.length > 0 ? `etcd ${this.opts.cluster.etcd.join(',')}` : 'the embedded store' }),
      leader: this.controller?.isLeader === true,
      services: this.opts.cluster.services === true,
    };
  }

  private context() {
    // Only a module graph reads ctx.services; asking discovery for it would start discovery for nothing.
    // The facts as a getter: read by a module graph (and copied for its worker), not by a YAML render.
    const facts = (): HostFacts => this.facts;
    return {
      host: this.opts.host,
      get facts(): HostFacts {
        return facts();
      },
      collected: this.collected,
      services: isModuleGraph(this.opts.file) ? this.services.current() : {},
    };
  }

  private connect(): Promise<void> {
    this.connecting ??= this.connectOrRetry();
    return this.connecting;
  }

  /**
   * An unreachable etcd must not keep a host from enforcing its own graph: the agent starts on its local resources
   * and joins in the background once etcd answers. Configuration mistakes (an embedded store locked by another
   * agent, an unusable hostname) stay fatal: retrying cannot fix them.
   */
  private async connectOrRetry(): Promise<void> {
    try {
      await this.doConnect();
    } catch (err) {
      if (this.opts.cluster.etcd.length === 0 || (err instanceof BackplaneError && err.code === 'E_USAGE')) throw err;
      this.opts.log.warn(`cannot reach the cluster store (${err instanceof Error ? err.message : String(err)}); running the local graph and retrying in the background`);
      void this.retryConnect();
    }
  }

  private async retryConnect(): Promise<void> {
    let delay = 1000;
    while (!this.closing.signal.aborted) {
      try {
        await sleep(delay, undefined, { signal: this.closing.signal });
      } catch {
        return;
      }
      delay = Math.min(delay * 2, 10_000);
      try {
        await this.doConnect();
        this.changeListener?.('cluster');
        return;
      } catch (err) {
        this.opts.log.debug(`cluster store still unreachable: ${errorMessage(err)}`);
      }
    }
  }

  private async doConnect(): Promise<void> {
    try {
      await this.connectOnce();
    } catch (err) {
      // A half-made connection (a store client, a lease) must not linger into the next attempt.
      const store = this.store;
      this.store = undefined;
      const control = this.control;
      this.control = undefined;
      await control?.close().catch(() => undefined);
      await store?.close().catch(() => undefined);
      throw err;
    }
  }

  private async connectOnce(): Promise<void> {
    const { cluster } = this.opts;
    const t0 = performance.now();
    const took: string[] = [];
    const mark = (what: string): void => void took.push(`${what} ${Math.round(performance.now() - t0)}ms`);
    // The etcd client is a few hundred milliseconds of loading (grpc, protobuf, etcd's .proto files): under way
    // while the host's keys are read or made (disk flushes), not after.
    const etcdModule = cluster.etcd.length > 0 ? import('../cluster/etcd-store.js') : undefined;
    etcdModule?.catch(() => undefined);
    const clusterModules = Promise.all([import('../cluster/link.js'), import('../api/timed-store.js'), import('./discovery.js')]);
    clusterModules.catch(() => undefined);
    // Before the store: a host that cannot tell real cluster data from forged must not start pretending it can.
    const identity = await this.identity();
    mark('identity');
    const metrics = this.opts.metrics;
    const storeKind = cluster.etcd.length > 0 ? 'etcd' : 'embedded';
    metrics?.observeLink(() => ({ store: storeKind, reachable: this.link?.storeReachable ?? false, lease: this.link?.currentLease }));
    if (etcdModule !== undefined) {
      const { EtcdStore } = await etcdModule;
      this.store = new EtcdStore({
        endpoints: cluster.etcd,
        cluster: cluster.cluster,
        ...(cluster.etcdTls === undefined ? {} : { tls: cluster.etcdTls }),
        ...(cluster.etcdAuth === undefined ? {} : { auth: cluster.etcdAuth }),
      });
    } else {
      const { EmbeddedStore } = await import('../cluster/embedded-store.js');
      this.store = await EmbeddedStore.open({ dir: join(this.opts.stateDir, 'store') });
      // Only this process can open the embedded store; the CLI reaches it through the agent while the agent runs.
      const { serveControl } = await import('../cluster/control-server.js');
      this.control = await serveControl(this.store, this.opts.stateDir, this.opts.log).catch((err: unknown) => {
        this.opts.log.warn(`not serving the control socket: ${errorMessage(err)}; CLI commands cannot reach the store while this agent runs`);
        return undefined;
      });
    }
    mark('store client');
    const [{ ClusterLink }, { timedStore }, { Discovery }] = await clusterModules;
    const store = metrics === undefined ? this.store : timedStore(this.store, metrics);
    this.clusterStore = store;
    const startedAt = new Date().toISOString();
    const record = (): NodeRecord => ({
      host: this.opts.host,
      facts: this.facts,
      labels: cluster.labels,
      startedAt,
      version: this.opts.version,
      free: { cpus: Math.max(0, this.facts.cpus - (loadavg()[0] ?? 0)), memory: freemem() },
      capacity: cluster.capacity ?? defaultCapacity(this.facts.cpus, this.facts.memory.total),
      ...(cluster.ports === undefined ? {} : { ports: cluster.ports }),
      ...(cluster.services === true ? { fence: { ttlMs: cluster.leaseTtlMs ?? 3000, fenceMs: this.fenceMs() } } : {}),
    });
    const link = new ClusterLink({
      store,
      host: this.opts.host,
      log: this.opts.log,
      record,
      identity,
      onOwnKv: (key) => {
        for (const cb of this.kvWatchers.get(key) ?? []) cb();
      },
      ...(cluster.leaseTtlMs === undefined ? {} : { leaseTtlMs: cluster.leaseTtlMs }),
      ...(metrics === undefined ? {} : { onLeaseLost: () => metrics.leaseLost() }),
    });
    try {
      await link.start((entries) => {
        this.collected = entries;
        this.changeListener?.('cluster');
      });
    } catch (err) {
      // The next attempt makes a new link on a new store: this one's watches, retries and lease must stop now, not
      // go on failing against the closed store (or keep a second membership alive).
      await link.close().catch(() => undefined);
      throw err;
    }
    mark('link');
    this.link = link;
    this.linkReady?.();
    // Service discovery: a module graph is a function of ctx.services, so it re-renders; a YAML graph is not (its
    // templates watch the services they list themselves).
    const discovery = new Discovery({ store, trust: () => link.trust, log: this.opts.log });
    const moduleGraph = isModuleGraph(this.opts.file);
    await this.services.attach(
      discovery,
      () => {
        if (moduleGraph) this.changeListener?.('cluster');
      },
      { eager: moduleGraph, log: this.opts.log },
    );
    if (cluster.services === true) await this.joinServices(link);
    mark('services');
    this.opts.log.debug(`connected: ${took.join(', ')}`);
    this.opts.log.info(
      cluster.etcd.length > 0
        ? `joined cluster "${cluster.cluster}" as ${this.opts.host} through etcd ${cluster.etcd.join(',')}`
        : `cluster store: embedded (${join(this.opts.stateDir, 'store')})`,
    );
  }

  /**
   * How long this host's instances outlive the last renewal of its lease: the TTL by default. Keep-alives go out
   * every third of the TTL, so a renewal can be late by more than a TTL's half before the instances are killed,
   * and the controller waits only the watchdog's slack after the lease is gone before it replaces them
   * (Controller: fence + slack - TTL).
   */
  private fenceMs(): number {
    return this.opts.cluster.fenceMs ?? this.opts.cluster.leaseTtlMs ?? 3000;
  }

  private async joinServices(link: ClusterLink): Promise<void> {
    const store = this.clusterStore;
    if (store === undefined) return;
    const ttl = this.opts.cluster.leaseTtlMs ?? 3000;
    const fenceMs = this.fenceMs();
    const [{ Instances }, { Controller }] = await Promise.all([import('./instances.js'), import('../scheduler/controller.js')]);
    const instances = new Instances({
      store,
      link,
      host: this.opts.host,
      facts: this.facts,
      labels: this.opts.cluster.labels,
      stateDir: this.opts.stateDir,
      log: this.opts.log,
      fenceMs,
      ...(this.opts.cluster.retention === undefined ? {} : { retention: this.opts.cluster.retention }),
      onChange: () => this.changeListener?.('cluster'),
      applied: this.opts.applied ?? (() => new Set()),
      // The instance API's peers are service discovery's answer.
      services: this.services,
      ...(this.opts.metrics === undefined ? {} : { metrics: this.opts.metrics }),
    });
    await instances.start();
    this.instances = instances;
    const controller = new Controller({
      store,
      host: this.opts.host,
      log: this.opts.log,
      ttlMs: ttl,
      fenceMs,
      trust: () => link.trust,
      sign: (k, b) => link.sign(k, b),
      lease: (signal) => link.sessionLease(signal),
      ...(this.opts.metrics === undefined ? {} : { metrics: this.opts.metrics }),
    });
    this.controller = controller;
    void controller.run(this.closing.signal);
    if (this.instances.ids().size > 0) this.changeListener?.('cluster');
  }

  /**
   * This host's keys and how it trusts the cluster's CA. On the embedded store the agent is the whole cluster: it
   * holds its own CA and approves itself, so nothing changes for a user on one machine. In an etcd cluster the CA is
   * held by the host where `backplane cluster init` ran; any other host needs a join token or the CA's fingerprint
   * the first time (it pins the CA then).
   */
  private async identity(): Promise<LinkIdentity> {
    const { cluster } = this.opts;
    const etcd = cluster.etcd.length > 0;
    const { parseToken, TrustFiles, trustScope } = await import('../cluster/trust.js');
    const files = await TrustFiles.open(this.opts.stateDir, trustScope(etcd, cluster.cluster));
    const token = cluster.joinToken === undefined ? undefined : parseToken(cluster.joinToken);
    const caFingerprint = cluster.caFingerprint;
    if (caFingerprint !== undefined && !/^sha256:[A-Za-z0-9_-]{43}$/.test(caFingerprint)) {
      throw new BackplaneError('E_USAGE', `--ca-fingerprint "${caFingerprint}" is not a CA fingerprint`, { hint: 'copy it from `backplane cluster init` or `backplane hosts list` on the CA host: sha256:...' });
    }
    const hostKey = await files.hostKey();
    const ca = etcd ? await files.caKey() : await files.createCaKey();
    if (ca === undefined && token === undefined && caFingerprint === undefined && (await files.pinnedCa()) === undefined) {
      throw new BackplaneError('E_USAGE', `host ${this.opts.host} does not know cluster "${cluster.cluster}"'s CA, so it could not tell real cluster data from forged`, {
        hint: 'on the first host run `backplane cluster init`; on the others pass --join-token (from `backplane hosts token` there)',
      });
    }
    return { files, hostKey, ca, token, caFingerprint };
  }

  /**
   * Collected resources come from other hosts: one that is invalid here (unknown kind, bad parameters) or that
   * would clash with a local resource is logged once and left out, never allowed to break this host's graph.
   */
  private admit(resources: readonly CollectedResource[], local: ReadonlySet<string>): RawResource[] {
    const out: RawResource[] = [];
    const seen = new Set<string>();
    for (const r of resources) {
      const id = resourceId(r.kind, r.name);
      const problem = this.problem(r, id, local, seen);
      if (problem !== undefined) {
        const tag = `${r.origin ?? '?'}:${id}:${JSON.stringify(r.params)}`;
        if (!this.rejected.has(tag)) {
          this.rejected.add(tag);
          // Named as the exporter named it: that is what its operator can find and fix.
          const exported = resourceId(r.kind, r.exportedAs);
          const here = exported === id ? '' : ` (here it would be ${id})`;
          this.opts.log.warn(`not collecting ${exported} exported by ${r.origin ?? 'an unknown host'}: ${problem}${here}`);
        }
        continue;
      }
      seen.add(id);
      const thing = this.manages(r);
      if (thing !== undefined) seen.add(thing);
      out.push(r);
    }
    return out;
  }

  private problem(r: CollectedResource, id: string, local: ReadonlySet<string>, seen: ReadonlySet<string>): string | undefined {
    if (r.refused !== undefined) return r.refused;
    if (local.has(id)) return 'this host declares a resource with the same id';
    if (seen.has(id)) return 'another host exports a resource with the same id';
    const v = this.validated(r);
    if (v.problem !== undefined) return v.problem;
    const thing = v.manages;
    if (thing !== undefined && local.has(thing)) return `it manages ${thing}, which a resource of this host manages`;
    if (thing !== undefined && seen.has(thing)) return `it manages ${thing}, which another host's export manages`;
    return undefined;
  }

  /** What a raw resource manages (a file's path), or undefined when it does not validate (the build reports that). */
  private manages(r: RawResource): string | undefined {
    return this.validated(r).manages;
  }

  /**
   * Kind, parameters and meta checked against this host's kinds, and what the resource manages: a function of the
   * resource alone, so kept from one render to the next (every collected export is looked at on every re-render,
   * and a re-render follows every change any host makes). Only what the last render and this one looked at is kept.
   */
  private validated(r: RawResource): Validated {
    // The same object again (collectMemo, the parsed file's): its key is not made again, but it is kept in this
    // generation all the same, for an equal resource that comes as a new object (an edit of the file parses anew).
    const same = this.validatedByObject.get(r);
    if (same !== undefined) {
      this.validatedNow.set(same.key, same.v);
      return same.v;
    }
    const key = JSON.stringify([r.kind, r.name, r.params, r.meta ?? null]);
    let v = this.validatedNow.get(key) ?? this.validatedBefore.get(key);
    if (v === undefined) {
      const kind = this.opts.registry.get(r.kind);
      if (kind === undefined) {
        v = { problem: `unknown kind "${r.kind}"`, manages: undefined };
      } else {
        const params = kind.schema.safeParse(kind.defaults === undefined ? r.params : { ...kind.defaults(r.name), ...r.params });
        const meta = params.success ? metaSchema().safeParse(r.meta) : undefined;
        const manages = params.success ? kind.manages?.(params.data) : undefined;
        if (!params.success) v = { problem: params.error.issues.map((i) => `${i.path.join('.') || 'parameters'}: ${i.message}`).join('; '), manages };
        else if (meta?.success === false) v = { problem: `meta: ${meta.error.issues.map((i) => i.message).join('; ')}`, manages };
        else v = { problem: undefined, manages };
      }
    }
    this.validatedNow.set(key, v);
    this.validatedByObject.set(r, { key, v });
    return v;
  }

  /** Starts a render's generation of validated(): what the previous render looked at stays available, nothing older. */
  private nextValidation(): void {
    this.validatedBefore = this.validatedNow;
    this.validatedNow = new Map();
  }
}

interface Validated {
  readonly problem: string | undefined;
  readonly manages: string | undefined;
}

function needsCluster(raw: RawGraph): boolean {
  return (raw.collect?.length ?? 0) > 0 || raw.resources.some((r) => r.export !== undefined || r.kind === 'kv' || usesServices(r));
}

/** A template that lists services reads service discovery, which lives in the store. */
function usesServices(r: RawResource): boolean {
  const s = r.params['services'];
  return r.kind === 'template' && Array.isArray(s) && s.length > 0;
}

export function parseLabels(items: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of items) {
    const i = item.indexOf('=');
    if (i <= 0) throw new BackplaneError('E_USAGE', `label "${item}" is not key=value`, { hint: 'e.g. --label zone=a' });
    out[item.slice(0, i)] = item.slice(i + 1);
  }
  return out;
}
