import { mkdir, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ELECTION } from '../scheduler/controller.js';
import { keys, parseAllocKey } from '../cluster/keys.js';
import type { ClusterLink } from '../cluster/link.js';
import type { KeyValue, Store, WatchBatch } from '../cluster/store.js';
import { errorMessage } from '../errors.js';
import type { VertexState } from '../engine/state.js';
import type { RawEdge, RawResource } from '../graph/raw.js';
import type { Logger } from '../log.js';
import type { HostFacts } from '../resources/types.js';
import { openAssignRecord, type AssignRecord, type ScaleRequest, type StatusRecord } from '../scheduler/records.js';
import { renderInstance, type InstanceApiEnv, type InstanceHost } from '../scheduler/render.js';
import type { ActionResult, AppReport, HookName, HookResult, InstanceState, ServiceSpec } from '../scheduler/types.js';
import { InstanceApi, type ApiInstance, type InstanceApiBackend, type StateBody } from '../api/instance-api.js';
import type { Peer } from '../api/instance-client.js';
import type { Metrics } from '../api/metrics.js';
import { processTreeRss, readProcTable } from '../api/memory.js';
import type { ServiceInstances } from '../resources/types.js';
import { readRecord } from '../resources/svc/record.js';
import { resourceStateDir } from '../state-dir.js';
import { runHook } from './hooks.js';
import { collectInstanceDirs, DEFAULT_RETENTION, type RetentionPolicy } from './instance-gc.js';

/**
 * How often the agent confirms its place in the cluster (and so refreshes its instances' fence) while anything here
 * depends on it (Instances.fenceNeeded). The heartbeat carries the lease's last renewal, which etcd's keep-alives
 * move every third of the TTL: confirming much more often would gain nothing but reads.
 */
const CONFIRM_EVERY_MS = 500;

/** Non-urgent state reports of an instance reach the store at most this often (urgent ones: APP_URGENT_MS). */
export const APP_REPORT_EVERY_MS = 1000;
/** Even urgent reports of one instance are written at most this often (a hostile instance cannot flood the store). */
const APP_URGENT_MS = 100;
/** How often each instance's process tree is measured against its memory limit. */
export const MEMORY_CHECK_MS = 2000;
/** The `memory` event fires when the tree crosses this share of resources.memory, and again after it fell below REARM. */
export const MEMORY_WARN_RATIO = 0.9;
const MEMORY_REARM_RATIO = 0.8;
/**
 * Stopped instances' state directories (instance-gc.ts) are looked over this long after the agent starts (its first
 * render has settled by then), a second after each stop the running graph has seen through, and every GC_EVERY_MS
 * for the ones that aged out.
 */
const GC_FIRST_MS = 60_000;
const GC_AFTER_STOP_MS = 1000;
const GC_EVERY_MS = 10 * 60_000;

export interface InstancesOptions {
  readonly store: Store;
  /** What of the cluster link this needs: its trust, its signature, its lease. */
  readonly link: Pick<ClusterLink, 'trust' | 'sign' | 'currentLease'>;
  readonly host: string;
  readonly facts: HostFacts;
  readonly labels: Readonly<Record<string, string>>;
  readonly stateDir: string;
  readonly log: Logger;
  /** How old the heartbeat may get before the instances' watchdogs kill them (the controller waits as long). */
  readonly fenceMs: number;
  /** The instances changed: re-render the graph. */
  readonly onChange: () => void;
  /** The alloc ids whose resources are in the running graph now. */
  readonly applied: () => ReadonlySet<string>;
  /** Service discovery, for the instance API's peers (none: every instance sees no peers). */
  readonly services?: { current(): ServiceInstances; watch(service: string, onChange: () => void): () => void };
  /** The engine's state directory (where each svc keeps its pid record), for the memory check; default stateDir. */
  readonly engineStateDir?: string;
  /** The agent's metrics: instances by state, restarts. */
  readonly metrics?: Metrics;
  /** How many stopped instances' state directories are kept per service, and for how long (what is not given: DEFAULT_RETENTION). */
  readonly retention?: Partial<RetentionPolicy>;
  /** The first look over them after start (default GC_FIRST_MS; tests). */
  readonly gcFirstMs?: number;
}

type Accepted = AssignRecord & { readonly spec: ServiceSpec };
type HookResults = Partial<Record<HookName, HookResult>>;
type StoppingInfo = NonNullable<StatusRecord['stopping']>;

/** The hooks the controller requests in an alloc's assignment (afterStart is the agent's own doing). */
const REQUESTED_HOOKS = ['beforeStop', 'beforePromote'] as const;

/**
 * The agent's side of the service backplane: it runs what the controller assigned to this host, and only that.
 *
 * Assignments are read from `sched/assign/<this host>/` and believed only when records.ts says so (signed by an
 * approved host acting as controller, running an operator-signed spec) and when they are not older than what this
 * agent already saw: a higher epoch than the current controller's is held back until the election shows it, and
 * for the current epoch the signer must be the current controller. Each accepted alloc becomes graph resources
 * (render.ts), so the engine supervises it like anything else, and the state of its `svc` vertex is reported back
 * under `sched/status/<this host>/<alloc>`.
 *
 * The fence: every CONFIRM_EVERY_MS the agent checks that its membership record is still in the store under its
 * own lease and that every instance in its running graph is still assigned to it; only then does it touch the
 * heartbeat file the instances' watchdogs read. A paused or cut-off agent stops touching it, so its instances die
 * after fenceMs — which is exactly how long the controller waits after the host's lease is gone before it starts
 * replacements. On coming back, the stale instances are dropped from the graph before the heartbeat is fresh
 * again, so their supervisors never restart them.
 *
 * Only the instances read the heartbeat (their watchdogs, and their supervisors before a start), so on a host with
 * none — nothing assigned, stopping or in the running graph — the agent does not confirm at all: the loop parks, and
 * the heartbeat goes stale, which is harmless (a process an earlier agent left behind that no graph holds any more
 * is meant to die of it). Most hosts of a large cluster run no instances, and two store reads a second each were
 * half of an idle agent's CPU. An assignment wakes the loop, and an instance the running graph does not hold yet is
 * rendered only after that first confirmation (fresh): a first instance never starts on a stale heartbeat, and is
 * never reported failed for being fenced on a healthy host.
 *
 * Hooks (hooks.ts): afterStart runs once per alloc, when it is first up (healthy; running, without a health check),
 * never again for a restart of its process; beforeStop and beforePromote run when the alloc's assignment requests them
 * with a nonce this agent has not run yet for it (a new nonce runs the hook again). Each is reported in the status
 * record, `hooks.<name> = {nonce, state: running|ok|failed, output, at}`; a requested hook the spec does not have is
 * ok at once ("no beforeStop hook"), so the controller never waits for nothing. The finished results are also kept in
 * the state directory, so an agent restart (which adopts the running instances) does not run them again.
 *
 * Stopping: an alloc no longer assigned is reported `stopping` (with the service, index, resources and ports it
 * holds) until the running graph no longer has it (the engine's swap returns once its svc has stopped); only then is
 * its status deleted, so the controller never counts its ports and capacity free while the process still runs.
 */
export class Instances {
  private readonly accepted = new Map<string, Accepted>();
  private readonly raw = new Map<string, KeyValue>();
  private readonly maxSeq = new Map<string, number>();
  private readonly logged = new Set<string>();
  private leader: { epoch: number; host: string } | undefined;
  private readonly reported = new Map<string, string>();
  private readonly states = new Map<string, { state: InstanceState; since: number; restarts: number; message?: string }>();
  /** What became of each alloc's hooks (reported in its status); the finished ones are kept in hooksDir too. */
  private readonly hookResults = new Map<string, HookResults>();
  /** Hooks running now, by `alloc/hook`. */
  private readonly hookRuns = new Map<string, { readonly nonce: number; readonly ac: AbortController }>();
  /** The last action each alloc's backplane asked for (alloc.action) and how it went; the run of one in progress. */
  private readonly actionResults = new Map<string, ActionResult>();
  private readonly actionRuns = new Map<string, { readonly id: string; readonly ac: AbortController }>();
  /** Allocs no longer assigned whose svc the running graph still holds: reported 'stopping' until it does not. */
  /**
   * Allocs no longer assigned whose svc the graph still holds. `vouched`: this agent was confirming its place in
   * the cluster when it learned of the unassignment (its heartbeat was fresh), so it stops the instance in good
   * order and may keep vouching for the host's other instances meanwhile — a service that takes 10 s to stop must not
   * fence every instance on the host. An agent that learns of it after a pause or a partition does not vouch until
   * the graph has dropped the instance (the supervisor could otherwise restart it next to its replacement).
   */
  private readonly stopping = new Map<string, { readonly info: StoppingInfo; readonly version: string; readonly since: number; readonly vouched: boolean }>();
  private lastTouchAt = 0;
  /** Wakes the confirm loop while it is parked (fenceNeeded() was false). */
  private wakeConfirm: (() => void) | undefined;
  /**
   * The confirm loop has run since it last woke: the heartbeat is as fresh as this host can vouch for. Until then,
   * allocs the running graph does not hold yet are left out of resources(), and renderHeld asks for the re-render.
   */
  private fresh = false;
  private renderHeld = false;
  /** Allocs whose status key is to be deleted once the running graph does not hold them (retried until it is). */
  private readonly unreport = new Set<string>();
  /** Store writes (and hook files) per key, one after the other: a late put must never land after the delete. */
  private readonly writes = new Map<string, Promise<void>>();
  private readonly ac = new AbortController();
  private lastLeaseId: string | undefined;
  readonly heartbeat: string;
  private readonly hooksDir: string;
  /** The instance API (src/api/instance-api.ts) this host's instances reach through BACKPLANE_API. */
  api: InstanceApi | undefined;
  /** What each instance last reported through the API: relayed as `app` in its status record. */
  private readonly appReports = new Map<string, AppReport>();
  private readonly appWrittenAt = new Map<string, number>();
  /** When each instance's `ready` last changed: a healthy instance that becomes ready is healthy from then on. */
  private readonly readyAt = new Map<string, number>();
  private readonly appTimers = new Map<string, NodeJS.Timeout>();
  /** Allocs no longer assigned whose process still runs (their stop notice, then their stop): the API still serves them. */
  private readonly leaving = new Map<string, Accepted>();
  /** Allocs kept in the graph for their spec's stopNotice after the `stopping` event; the timer lets them go. */
  private readonly notices = new Map<string, NodeJS.Timeout>();
  /** Allocs over MEMORY_WARN_RATIO of their memory at the last check (told once, until they fall below the rearm). */
  private readonly memoryOver = new Set<string>();
  /** The next pass over stopped instances' state directories, and when it is due. */
  private gcTimer: NodeJS.Timeout | undefined;
  private gcDue = Infinity;
  private gcRunning = false;

  constructor(private readonly opts: InstancesOptions) {
    this.heartbeat = join(opts.stateDir, 'sched', 'heartbeat');
    this.hooksDir = join(opts.stateDir, 'sched', 'hooks');
    opts.metrics?.observeInstances(() => this.countStates());
  }

  /** Instances assigned here (and ones stopping) by state, for backplane_instances. */
  private countStates(): Map<string, number> {
    const out = new Map<string, number>();
    for (const id of this.accepted.keys()) {
      if (this.stopping.has(id)) continue;
      const s = this.states.get(id)?.state ?? 'pending';
      out.set(s, (out.get(s) ?? 0) + 1);
    }
    if (this.stopping.size > 0) out.set('stopping', this.stopping.size);
    return out;
  }

  async start(): Promise<void> {
    await mkdir(this.hooksDir, { recursive: true, mode: 0o700 });
    const { store } = this.opts;
    const signal = this.ac.signal;
    const prefix = keys.assignByHost(this.opts.host);
    // Side by side: the agent's first render waits for all this (GraphSource.joinServices), and one after the other
    // it was five store round trips, a fifth of a second for an agent joining a busy cluster. Each watch starts at
    // the revision of its own read, so nothing written in between is missed.
    const api = new InstanceApi({ backend: this.apiBackend(), log: this.opts.log, stateFile: join(this.opts.stateDir, 'sched', 'api.json') });
    const apiUp = api.start();
    const reads = Promise.all([store.list(keys.election(ELECTION), { signal }), store.list(prefix, { signal }), store.list(keys.statusByHost(this.opts.host), { signal }), this.loadHookResults(), apiUp]);
    let got: Awaited<typeof reads>;
    try {
      got = await reads;
    } catch (err) {
      // Nobody holds on to instances that did not start: the API server must not stay behind listening.
      await apiUp.then(() => api.close(), () => undefined).catch(() => undefined);
      throw err;
    }
    const [election, listed, statuses] = got;
    // Before the first assignment is judged: its hooks and its render name the API's URL and the alloc's token.
    this.api = api;
    // The election first, so that assignments are judged against the controller that wrote them.
    this.onElection({ type: 'resync', kvs: election.kvs, revision: election.revision });
    this.onAssign({ type: 'resync', kvs: listed.kvs, revision: listed.revision });
    await Promise.all([
      store.watch(keys.election(ELECTION), election.revision + 1, (b) => this.onElection(b), signal),
      store.watch(prefix, listed.revision + 1, (b) => this.onAssign(b), signal),
    ]);
    await this.forgetLeftovers(statuses.kvs);
    // Instances already assigned (an agent restart adopts them): the first render holds them only once confirmed.
    const ticked = this.fenceNeeded();
    if (ticked) await this.tick();
    void this.confirmLoop(ticked);
    void this.memoryLoop();
    this.scheduleGc(this.opts.gcFirstMs ?? GC_FIRST_MS);
  }

  close(): void {
    this.ac.abort();
    clearTimeout(this.gcTimer);
    for (const t of [...this.appTimers.values(), ...this.notices.values()]) clearTimeout(t);
    this.api?.close().catch(() => undefined);
  }

  /** The graph resources of every accepted alloc. */
  resources(): { resources: RawResource[]; edges: RawEdge[] } {
    const resources: RawResource[] = [];
    const edges: RawEdge[] = [];
    // An alloc in its stop notice stays in the graph (running) until the notice is over.
    const noticed = [...this.notices.keys()].flatMap((id) => this.leaving.get(id) ?? []);
    // Not confirmed since the loop woke: nothing new goes in (what the graph holds already stays, whatever happens).
    const applied = this.fresh ? undefined : this.opts.applied();
    for (const a of [...this.accepted.values(), ...noticed]) {
      if (applied !== undefined && !applied.has(a.alloc.id)) {
        this.renderHeld = true;
        continue;
      }
      try {
        const r = renderInstance(a.spec, { ...a.alloc }, { name: this.opts.host, facts: this.opts.facts, labels: this.opts.labels }, { fence: { heartbeat: this.heartbeat, maxAgeMs: this.opts.fenceMs }, ...this.apiEnv(a.alloc.id) });
        resources.push(...r.resources);
        edges.push(...r.edges);
      } catch (err) {
        this.warnOnce(`render:${a.alloc.id}`, `cannot run ${a.alloc.id}: ${errorMessage(err)}`);
        this.setState(a.alloc.id, 'failed', `cannot render: ${errorMessage(err)}`);
      }
    }
    return { resources, edges };
  }

  /** Alloc ids accepted now. */
  ids(): ReadonlySet<string> {
    return new Set(this.accepted.keys());
  }

  /** The engine's state of a vertex: reported when it is an instance's svc. */
  onVertexState(id: string, state: VertexState, error?: string): void {
    const a = this.allocOf(id);
    if (a === undefined) return;
    const prev = this.states.get(a.alloc.id)?.state;
    let s: InstanceState;
    if (state === 'converged') s = a.spec.health === undefined ? 'running' : 'healthy';
    else if (state === 'failed' || state === 'blocked') s = 'failed';
    else if (state === 'stopped') return;
    // A re-check of an instance that is up (a watch event, a poll) is no restart; a real one shows as a change.
    else if (prev === 'healthy' || prev === 'running') return;
    else s = 'starting';
    this.setState(a.alloc.id, s, s === 'failed' ? error : undefined);
  }

  /** The engine changed something for a vertex: for an instance's svc that was up, that is a restart. */
  onVertexChanged(id: string): void {
    const a = this.allocOf(id);
    if (a === undefined) return;
    const cur = this.states.get(a.alloc.id);
    if (cur === undefined || (cur.state !== 'healthy' && cur.state !== 'running')) return;
    this.states.set(a.alloc.id, { ...cur, restarts: cur.restarts + 1 });
    this.opts.metrics?.instanceRestarted(a.alloc.service);
    void this.report(a.alloc.id);
  }

  private allocOf(vertexId: string): Accepted | undefined {
    const allocId = /^svc\[(.+)\]$/.exec(vertexId)?.[1];
    return allocId === undefined ? undefined : this.accepted.get(allocId);
  }

  private setState(allocId: string, state: InstanceState, message?: string): void {
    const prev = this.states.get(allocId);
    if (prev?.state === state && prev.message === message) return;
    this.states.set(allocId, { state, since: Date.now(), restarts: prev?.restarts ?? 0, ...(message === undefined ? {} : { message: message.slice(0, 1900) }) });
    void this.report(allocId);
    this.afterStart(allocId, state);
  }

  /** What the status record of an alloc says now (undefined: nothing to say yet, or nothing any more). */
  private statusBody(allocId: string): StatusRecord | undefined {
    const s = this.states.get(allocId);
    const st = this.stopping.get(allocId);
    const app = this.appReports.get(allocId);
    const withApp = app === undefined ? {} : { app };
    if (st !== undefined) return { state: 'stopping', restarts: s?.restarts ?? 0, since: st.since, version: st.version, stopping: st.info, ...withApp };
    const a = this.accepted.get(allocId);
    if (s === undefined || a === undefined) return undefined;
    const hooks = this.hookResults.get(allocId);
    const action = this.actionResults.get(allocId);
    // An instance that says it is not ready is up but not healthy: out of discovery and of the rollouts' counts.
    const state = s.state === 'healthy' && app?.ready === false ? 'running' : s.state;
    const since = s.state === 'healthy' ? Math.max(s.since, this.readyAt.get(allocId) ?? 0) : s.since;
    return { ...s, state, since, version: a.alloc.version, ...(hooks === undefined || Object.keys(hooks).length === 0 ? {} : { hooks }), ...withApp, ...(action === undefined ? {} : { action }) };
  }

  private async report(allocId: string): Promise<void> {
    const lease = this.opts.link.currentLease;
    const body = this.statusBody(allocId);
    if (lease === undefined || body === undefined || this.ac.signal.aborted) return;
    const key = keys.status(this.opts.host, allocId);
    const text = JSON.stringify(body);
    if (this.reported.get(key) === text && this.lastLeaseId === lease.id) return;
    this.reported.set(key, text);
    const signed = this.opts.link.sign(key, text);
    await this.serially(key, () => this.opts.store.put(key, signed, { lease, signal: this.ac.signal })).catch((err: unknown) => {
      if (this.reported.get(key) === text) this.reported.delete(key);
      if (!this.ac.signal.aborted) this.opts.log.debug(`reporting ${allocId} failed: ${errorMessage(err)}`);
    });
  }

  /** Runs `op` after every earlier write for `key` has settled. */
  private serially(key: string, op: () => Promise<unknown>): Promise<void> {
    const run = (this.writes.get(key) ?? Promise.resolve()).then(op).then(() => undefined);
    const tail = run.catch(() => undefined);
    this.writes.set(key, tail);
    void tail.then(() => {
      if (this.writes.get(key) === tail) this.writes.delete(key);
    });
    return run;
  }

  // ---- the instance API -------------------------------------------------------------------------------------------

  /** BACKPLANE_API and BACKPLANE_TOKEN for an alloc's svc and hooks. */
  private apiEnv(allocId: string): { api?: InstanceApiEnv } {
    const api = this.api;
    return api === undefined ? {} : { api: { url: api.url, token: api.tokenFor(allocId) } };
  }

  private apiBackend(): InstanceApiBackend {
    return {
      host: this.opts.host,
      instance: (id) => this.apiInstance(id),
      ids: () => new Set([...this.accepted.keys(), ...this.leaving.keys()]),
      address: () => this.opts.facts.ipv4,
      peers: (service) => (this.opts.services?.current()[service] ?? []).map((i): Peer => ({ allocId: i.id, index: i.index, host: i.host, address: i.address, ports: i.ports })),
      watchPeers: (service, cb) => this.opts.services?.watch(service, cb) ?? (() => undefined),
      report: (id, body) => this.relay(id, body),
      scale: (id, count, reason) => this.requestScale(id, count, reason),
    };
  }

  /**
   * Whom a token may act for: an alloc assigned here, or one no longer assigned whose process is still running (its
   * stop notice, its stop: it may still say it is going down). Once its process is gone, nothing.
   */
  private apiInstance(allocId: string): ApiInstance | undefined {
    return this.accepted.get(allocId) ?? this.leaving.get(allocId);
  }

  /**
   * An alloc is no longer assigned here: the instance hears `stopping` and, when its spec has a stopNotice and this
   * agent vouches for the stop (it learned of it in good order, see `stopping`), keeps running that long before the
   * graph drops it (and its svc gets the stop signal). An agent that learns of it late stops it at once.
   */
  private notice(a: Accepted, vouched: boolean): void {
    const id = a.alloc.id;
    const ms = vouched ? (a.spec.task.stopNoticeMs ?? 0) : 0;
    this.api?.stopping(id, ms, 'no longer assigned to this host (a rollout, a drain, a scale-down or a move)');
    if (ms <= 0 || this.notices.has(id)) return;
    this.notices.set(
      id,
      setTimeout(() => {
        if (!this.notices.delete(id)) return;
        this.opts.log.info(`stop notice of ${id} over: stopping it`);
        this.opts.onChange();
      }, ms),
    );
  }

  /** A PUT /v1/state: kept, and written into the status record now (urgent) or coalesced to one write a second. */
  private relay(allocId: string, body: StateBody): void {
    const prev = this.appReports.get(allocId);
    const ready = body.ready ?? prev?.ready;
    if (ready !== prev?.ready) this.readyAt.set(allocId, Date.now());
    const state = body.state ?? prev?.state;
    const message = body.message ?? prev?.message;
    this.appReports.set(allocId, { ...(ready === undefined ? {} : { ready }), ...(state === undefined ? {} : { state }), ...(message === undefined ? {} : { message }), at: Date.now() });
    const urgent = body.urgent === true;
    const wait = (this.appWrittenAt.get(allocId) ?? 0) + (urgent ? APP_URGENT_MS : APP_REPORT_EVERY_MS) - Date.now();
    const pending = this.appTimers.get(allocId);
    if (pending !== undefined) {
      // A write is coming anyway (with this report in it), unless this one may not wait as long.
      if (!urgent) return;
      clearTimeout(pending);
      this.appTimers.delete(allocId);
    }
    if (wait <= 0) {
      this.writeApp(allocId);
      return;
    }
    this.appTimers.set(
      allocId,
      setTimeout(() => {
        this.appTimers.delete(allocId);
        this.writeApp(allocId);
      }, wait),
    );
  }

  private writeApp(allocId: string): void {
    this.appWrittenAt.set(allocId, Date.now());
    void this.report(allocId);
  }

  private forgetApp(allocId: string): void {
    const t = this.appTimers.get(allocId);
    if (t !== undefined) clearTimeout(t);
    this.appTimers.delete(allocId);
    this.appReports.delete(allocId);
    this.appWrittenAt.delete(allocId);
    this.readyAt.delete(allocId);
    this.memoryOver.delete(allocId);
    const n = this.notices.get(allocId);
    if (n !== undefined) clearTimeout(n);
    this.notices.delete(allocId);
    this.leaving.delete(allocId);
    this.api?.revoke(allocId);
  }

  /** An accepted POST /v1/scale (in bounds): written signed by this host, under this host's lease, for the controller. */
  private async requestScale(allocId: string, count: number, reason: string | undefined): Promise<void> {
    const a = this.accepted.get(allocId) ?? this.leaving.get(allocId);
    const lease = this.opts.link.currentLease;
    if (a === undefined) throw new Error(`${allocId} does not run here`);
    if (lease === undefined) throw new Error('this agent has no lease in the cluster store now');
    const key = keys.scaleReq(this.opts.host, allocId);
    const req: ScaleRequest = { allocId, service: a.alloc.service, count, ...(reason === undefined ? {} : { reason }), at: Date.now() };
    const signed = this.opts.link.sign(key, JSON.stringify(req));
    await this.serially(key, () => this.opts.store.put(key, signed, { lease, signal: this.ac.signal }));
    this.opts.log.info(`instance ${allocId} asks for ${count} instances of ${a.alloc.service}${reason === undefined ? '' : `: ${reason}`}`);
  }

  /** Every MEMORY_CHECK_MS: each instance's process tree against its memory; crossing MEMORY_WARN_RATIO is an event. */
  private async memoryLoop(): Promise<void> {
    const root = this.opts.engineStateDir ?? this.opts.stateDir;
    while (!this.ac.signal.aborted) {
      await sleep(MEMORY_CHECK_MS, undefined, { signal: this.ac.signal }).catch(() => undefined);
      if (this.ac.signal.aborted || this.api === undefined) return;
      try {
        const all = [...this.accepted.values(), ...this.leaving.values()];
        if (all.length === 0) continue;
        const table = await readProcTable();
        for (const a of all) {
          const id = a.alloc.id;
          const limit = a.alloc.resources.memory;
          if (!(limit > 0)) continue;
          const rec = await readRecord(await resourceStateDir(root, `svc[${id}]`));
          const rss = rec === undefined ? undefined : await processTreeRss(rec.pid, table);
          if (rss === undefined) continue;
          if (rss >= limit * MEMORY_WARN_RATIO && !this.memoryOver.has(id)) {
            this.memoryOver.add(id);
            this.opts.log.info(`instance ${id} uses ${Math.round((rss / limit) * 100)}% of its memory (${rss} of ${limit} bytes)`);
            this.api.memory(id, rss, limit);
          } else if (rss < limit * MEMORY_REARM_RATIO) this.memoryOver.delete(id);
        }
      } catch (err) {
        if (!this.ac.signal.aborted) this.opts.log.debug(`memory check failed: ${errorMessage(err)}`);
      }
    }
  }

  // ---- hooks ------------------------------------------------------------------------------------------------------

  private hostInfo(): InstanceHost {
    return { name: this.opts.host, facts: this.opts.facts, labels: this.opts.labels };
  }

  /** The alloc is up (healthy; running, without a health check): its afterStart hook runs, once per alloc. */
  private afterStart(allocId: string, state: InstanceState): void {
    const a = this.accepted.get(allocId);
    if (a?.spec.hooks?.afterStart === undefined || state !== (a.spec.health === undefined ? 'running' : 'healthy')) return;
    if (this.hookResults.get(allocId)?.afterStart !== undefined || this.hookRuns.has(`${allocId}/afterStart`)) return;
    this.startHook(a, 'afterStart', 1);
  }

  /** Runs the hooks the assignment requests with a nonce not run yet. */
  private requestedHooks(a: Accepted): void {
    const id = a.alloc.id;
    for (const hook of REQUESTED_HOOKS) {
      const nonce = a.alloc.hookRequests?.[hook];
      if (nonce === undefined) continue;
      const running = this.hookRuns.get(`${id}/${hook}`);
      if (running !== undefined ? running.nonce === nonce : this.hookResults.get(id)?.[hook]?.nonce === nonce) continue;
      if (a.spec.hooks?.[hook] !== undefined) {
        this.startHook(a, hook, nonce);
        continue;
      }
      running?.ac.abort();
      this.hookRuns.delete(`${id}/${hook}`);
      this.setHook(id, hook, { nonce, state: 'ok', output: `no ${hook} hook`, at: Date.now() });
    }
  }

  private startHook(a: Accepted, hook: HookName, nonce: number): void {
    const id = a.alloc.id;
    const runKey = `${id}/${hook}`;
    this.hookRuns.get(runKey)?.ac.abort();
    const run = { nonce, ac: new AbortController() };
    this.hookRuns.set(runKey, run);
    this.setHook(id, hook, { nonce, state: 'running', at: Date.now() });
    const signal = AbortSignal.any([this.ac.signal, run.ac.signal]);
    const ran = runHook({ spec: a.spec, alloc: a.alloc, host: this.hostInfo(), hook, signal, ...this.apiEnv(id) }).catch((err: unknown) => ({ ok: false, output: errorMessage(err).slice(0, 2000), aborted: false }));
    void ran.then((r) => {
      // Superseded by a newer request, or aborted (the alloc is gone, the agent stops): nothing more to say.
      if (this.hookRuns.get(runKey) !== run) return;
      this.hookRuns.delete(runKey);
      if (r.aborted === true || signal.aborted || !this.accepted.has(id)) return;
      const line = r.output.split('\n').at(-1) ?? '';
      if (r.ok) this.opts.log.info(`${hook} hook of ${id} succeeded`);
      else this.opts.log.warn(`${hook} hook of ${id} failed: ${line}`);
      this.setHook(id, hook, { nonce, state: r.ok ? 'ok' : 'failed', output: r.output, at: Date.now() });
    });
  }

  private setHook(allocId: string, hook: HookName, result: HookResult): void {
    this.hookResults.set(allocId, { ...this.hookResults.get(allocId), [hook]: result });
    // A hook may be asked for before the engine said anything about the instance: its status says so much.
    if (!this.states.has(allocId)) this.states.set(allocId, { state: 'pending', since: Date.now(), restarts: 0 });
    void this.report(allocId);
    if (result.state !== 'running') void this.saveHookResults(allocId);
  }

  private abortHooks(allocId: string): void {
    for (const hook of ['afterStart', ...REQUESTED_HOOKS] as const) {
      const k = `${allocId}/${hook}`;
      const run = this.hookRuns.get(k);
      this.hookRuns.delete(k);
      run?.ac.abort();
    }
  }

  /** The finished hooks of an alloc, for the next agent on this host (which adopts the instance). */
  private saveHookResults(allocId: string): Promise<void> {
    const done: HookResults = {};
    for (const [hook, r] of Object.entries(this.hookResults.get(allocId) ?? {})) if (r.state !== 'running') done[hook as HookName] = r;
    const file = join(this.hooksDir, `${allocId}.json`);
    return this.serially(file, () => writeFile(file, JSON.stringify(done), { mode: 0o600 })).catch((err: unknown) => {
      this.opts.log.debug(`cannot keep the hook results of ${allocId}: ${errorMessage(err)}`);
    });
  }

  private async loadHookResults(): Promise<void> {
    for (const name of await readdir(this.hooksDir)) {
      const id = /^(.+)\.json$/.exec(name)?.[1];
      if (id === undefined) continue;
      try {
        const data = JSON.parse(await readFile(join(this.hooksDir, name), 'utf8')) as Record<string, unknown>;
        const results: HookResults = {};
        for (const hook of ['afterStart', ...REQUESTED_HOOKS] as const) {
          const r = data[hook] as Partial<HookResult> | undefined;
          if (typeof r?.nonce === 'number' && (r.state === 'ok' || r.state === 'failed') && typeof r.at === 'number')
            results[hook] = { nonce: r.nonce, state: r.state, at: r.at, ...(typeof r.output === 'string' ? { output: r.output.slice(0, 4900) } : {}) };
        }
        this.hookResults.set(id, results);
      } catch {
        // Unreadable: the hooks run again, as after a first start.
      }
    }
  }

  // ---- stopping ---------------------------------------------------------------------------------------------------

  /**
   * Allocs being stopped (or leftover status keys) that the running graph no longer holds: their status keys go.
   * Called after every re-judgement and on every confirm tick.
   */
  private sweep(): void {
    if (this.stopping.size === 0 && this.unreport.size === 0) return;
    const applied = this.opts.applied();
    for (const id of new Set([...this.stopping.keys(), ...this.unreport])) {
      if (applied.has(id) || this.ac.signal.aborted) continue;
      if (this.stopping.delete(id)) {
        this.scheduleGc(GC_AFTER_STOP_MS);
        this.states.delete(id);
        this.hookResults.delete(id);
        this.actionResults.delete(id);
        this.forgetApp(id);
        const file = join(this.hooksDir, `${id}.json`);
        void this.serially(file, () => rm(file, { force: true })).catch(() => undefined);
      }
      const key = keys.status(this.opts.host, id);
      this.reported.delete(key);
      this.unreport.delete(id);
      void this.serially(key, () => this.opts.store.delete(key, { signal: this.ac.signal })).catch(() => {
        // Tried again on the next tick, unless the alloc came back meanwhile.
        if (!this.accepted.has(id) && !this.stopping.has(id)) {
          this.unreport.add(id);
          this.wakeConfirm?.();
        }
      });
    }
  }

  /** Whether anything here still holds the alloc: assigned, stopping, in its stop notice, or in the running graph. */
  private inUse(id: string): boolean {
    return this.accepted.has(id) || this.stopping.has(id) || this.leaving.has(id) || this.notices.has(id) || this.opts.applied().has(id);
  }

  /** The next pass over stopped instances' state directories in `ms` at the latest (an earlier one stands). */
  private scheduleGc(ms: number): void {
    if (this.ac.signal.aborted) return;
    const due = Date.now() + ms;
    if (this.gcTimer !== undefined && this.gcDue <= due) return;
    clearTimeout(this.gcTimer);
    this.gcDue = due;
    this.gcTimer = setTimeout(() => void this.collect(), ms);
    this.gcTimer.unref();
  }

  private async collect(): Promise<void> {
    this.gcTimer = undefined;
    this.gcDue = Infinity;
    if (this.ac.signal.aborted) return;
    if (this.gcRunning) {
      // One pass at a time; this one follows the pass under way.
      this.scheduleGc(GC_AFTER_STOP_MS);
      return;
    }
    this.gcRunning = true;
    try {
      const policy = { ...DEFAULT_RETENTION, ...this.opts.retention };
      const r = await collectInstanceDirs({ root: this.opts.engineStateDir ?? this.opts.stateDir, inUse: (id) => this.inUse(id), policy, log: this.opts.log });
      if (r.removed.length > 0) {
        const shown = r.removed.slice(0, 5).join(', ');
        this.opts.log.info(
          `removed the state directories (logs included) of ${r.removed.length} stopped instance(s), keeping the ${policy.keep} latest per service: ${shown}${r.removed.length > 5 ? ', ...' : ''}`,
        );
      }
      if (r.busy.length > 0) this.opts.log.debug(`stopped instances with a process still running, left alone: ${r.busy.join(', ')}`);
    } catch (err) {
      this.opts.log.warn(`state directory clean-up failed: ${errorMessage(err)}`);
    } finally {
      this.gcRunning = false;
    }
    this.scheduleGc(GC_EVERY_MS);
  }

  /**
   * At start: status keys of this host about allocs neither assigned here nor in the running graph are what an
   * earlier agent left (a stop it did not finish; its lease may still hold them): they go, as do its hook files.
   */
  private async forgetLeftovers(statuses: readonly KeyValue[]): Promise<void> {
    const assigned = new Set<string>();
    for (const kv of this.raw.values()) {
      const where = parseAllocKey(kv.key);
      if (where !== undefined) assigned.add(where.alloc);
    }
    for (const kv of statuses) {
      const where = parseAllocKey(kv.key);
      if (where === undefined || where.kind !== 'status' || where.host !== this.opts.host) continue;
      if (!assigned.has(where.alloc) && !this.stopping.has(where.alloc)) this.unreport.add(where.alloc);
    }
    for (const id of this.hookResults.keys()) {
      if (assigned.has(id)) continue;
      this.hookResults.delete(id);
      await rm(join(this.hooksDir, `${id}.json`), { force: true });
    }
    this.sweep();
  }

  private onElection(batch: WatchBatch): void {
    // The leader is the candidate with the lowest createRevision (election.ts); its value names its host.
    const cands = new Map<string, KeyValue>();
    if (batch.type === 'resync') for (const kv of batch.kvs) cands.set(kv.key, kv);
    else {
      for (const [k, v] of this.electionKvs) cands.set(k, v);
      for (const e of batch.events) {
        if (e.type === 'put') cands.set(e.kv.key, e.kv);
        else cands.delete(e.key);
      }
    }
    this.electionKvs = cands;
    let best: KeyValue | undefined;
    for (const kv of cands.values()) if (best === undefined || kv.createRevision < best.createRevision) best = kv;
    this.leader = best === undefined ? undefined : { epoch: best.createRevision, host: best.value };
    this.rejudge();
  }

  private electionKvs = new Map<string, KeyValue>();

  private onAssign(batch: WatchBatch): void {
    if (batch.type === 'resync') {
      this.raw.clear();
      for (const kv of batch.kvs) this.raw.set(kv.key, kv);
    } else {
      for (const e of batch.events) {
        if (e.type === 'put') this.raw.set(e.kv.key, e.kv);
        else this.raw.delete(e.key);
      }
    }
    this.rejudge();
  }

  /** Re-decides every assignment; calls onChange when the accepted set or any accepted alloc changed. */
  private rejudge(): void {
    const next = new Map<string, Accepted>();
    for (const kv of this.raw.values()) {
      const where = parseAllocKey(kv.key);
      if (where === undefined || where.kind !== 'assign' || where.host !== this.opts.host) continue;
      const a = this.judge(kv, where.alloc);
      if (a !== undefined) next.set(where.alloc, a);
    }
    // Only what the rendered graph depends on: a new hook request is no reason to re-render.
    let changed = next.size !== this.accepted.size;
    for (const [id, a] of next) {
      const cur = this.accepted.get(id);
      if (cur === undefined || cur.alloc.version !== a.alloc.version || JSON.stringify(cur.alloc.ports) !== JSON.stringify(a.alloc.ports)) changed = true;
    }
    // A new config in a rewritten assignment reaches the instance as an event; it never restarts it (not rendered).
    for (const [id, a] of next) {
      const cur = this.accepted.get(id);
      if (cur !== undefined && JSON.stringify(cur.alloc.config ?? null) !== JSON.stringify(a.alloc.config ?? null)) this.api?.configChanged(id, a.alloc.config);
    }
    const gone: string[] = [];
    for (const [id, cur] of this.accepted) {
      if (next.has(id)) continue;
      // Its hooks stop with it; its status says 'stopping' until its svc is out of the running graph (sweep).
      this.abortHooks(id);
      this.actionRuns.get(id)?.ac.abort();
      this.actionRuns.delete(id);
      const { service, index, resources, ports } = cur.alloc;
      const vouched = Date.now() - this.lastTouchAt < this.opts.fenceMs / 2;
      this.stopping.set(id, { info: { service, index, resources, ports }, version: cur.alloc.version, since: Date.now(), vouched });
      this.leaving.set(id, cur);
      this.notice(cur, vouched);
      gone.push(id);
    }
    const back = [...next.keys()].filter((id) => {
      const t = this.notices.get(id);
      if (t !== undefined) clearTimeout(t);
      this.notices.delete(id);
      this.leaving.delete(id);
      return this.stopping.delete(id) || this.unreport.delete(id);
    });
    this.accepted.clear();
    for (const [id, a] of next) this.accepted.set(id, a);
    // Before the first confirmation since the loop woke, a re-render could only leave the new allocs out (resources());
    // it follows that confirmation instead. The running graph holds no instance then, unless it does: render now.
    if (changed && !this.fresh && this.opts.applied().size === 0) this.renderHeld = true;
    else if (changed) this.opts.onChange();
    if (this.fenceNeeded()) this.wakeConfirm?.();
    this.sweep();
    for (const id of [...gone, ...back]) void this.report(id);
    for (const a of this.accepted.values()) {
      this.requestedHooks(a);
      this.requestedAction(a);
    }
  }

  /**
   * Runs the action the assignment asks for, once per request id: only one of the spec's own `actions` (an
   * operator signed them; the controller only picks one), in the instance's context, like a hook.
   */
  private requestedAction(a: Accepted): void {
    const id = a.alloc.id;
    const want = a.alloc.action;
    if (want === undefined || this.actionRuns.get(id)?.id === want.id || this.actionResults.get(id)?.id === want.id) return;
    this.actionRuns.get(id)?.ac.abort();
    const run = { id: want.id, ac: new AbortController() };
    this.actionRuns.set(id, run);
    this.setAction(id, { name: want.name, id: want.id, state: 'running', at: Date.now() });
    const signal = AbortSignal.any([this.ac.signal, run.ac.signal]);
    void runHook({ spec: a.spec, alloc: a.alloc, host: this.hostInfo(), hook: 'afterStart', action: want, signal, ...this.apiEnv(id) })
      .catch((err: unknown) => ({ ok: false, output: errorMessage(err).slice(0, 2000), aborted: false }))
      .then((r) => {
        if (this.actionRuns.get(id) !== run) return;
        this.actionRuns.delete(id);
        if (r.aborted === true || signal.aborted || !this.accepted.has(id)) return;
        if (r.ok) this.opts.log.info(`action ${want.name} (${want.id}) of ${id} succeeded`);
        else this.opts.log.warn(`action ${want.name} (${want.id}) of ${id} failed: ${r.output.split('\n').at(-1) ?? ''}`);
        this.setAction(id, { name: want.name, id: want.id, state: r.ok ? 'ok' : 'failed', output: r.output, at: Date.now() });
      });
  }

  private setAction(allocId: string, result: ActionResult): void {
    this.actionResults.set(allocId, result);
    if (!this.states.has(allocId)) this.states.set(allocId, { state: 'pending', since: Date.now(), restarts: 0 });
    void this.report(allocId);
  }

  private judge(kv: KeyValue, allocId: string): Accepted | undefined {
    const view = this.opts.link.trust;
    if (view === undefined) return undefined;
    const r = openAssignRecord(view, this.opts.host, allocId, kv.value);
    if (!r.ok) {
      this.warnOnce(`${kv.key}:${r.why}`, `not running ${allocId}: ${r.why}`);
      return undefined;
    }
    const seen = this.maxSeq.get(kv.key);
    if (seen !== undefined && r.seq < seen) {
      this.warnOnce(`${kv.key}:replay`, `not running ${allocId}: an older signed assignment was put back (a replay)`);
      return this.accepted.get(allocId);
    }
    const leader = this.leader;
    // Written by a controller this agent has not seen elected yet (or by someone claiming a future epoch): wait for
    // the election to show it; the watch re-judges then.
    if (leader === undefined || r.value.epoch > leader.epoch) {
      this.warnOnce(`${kv.key}:epoch:${r.value.epoch}`, `holding ${allocId}: its controller epoch ${r.value.epoch} is not the current controller's (${leader?.epoch ?? 'none'})`);
      return this.accepted.get(allocId);
    }
    if (r.value.epoch === leader.epoch && r.signer !== leader.host) {
      this.warnOnce(`${kv.key}:signer`, `not running ${allocId}: signed by ${r.signer ?? '?'}, but the controller of epoch ${leader.epoch} is ${leader.host}`);
      return undefined;
    }
    this.maxSeq.set(kv.key, r.seq);
    return r.value;
  }

  /**
   * Whether anything here depends on the heartbeat: an alloc assigned (about to start, or running), one stopping or in
   * its stop notice, a status key still to delete (the loop's sweep retries it), or an instance in the running graph.
   */
  private fenceNeeded(): boolean {
    return this.accepted.size > 0 || this.stopping.size > 0 || this.unreport.size > 0 || this.leaving.size > 0 || this.notices.size > 0 || this.opts.applied().size > 0;
  }

  /** Confirms membership and assignments, then refreshes the fence heartbeat (see the class comment); parks while nothing needs it. */
  private async confirmLoop(tickedAlready: boolean): Promise<void> {
    if (tickedAlready) await sleep(CONFIRM_EVERY_MS, undefined, { signal: this.ac.signal }).catch(() => undefined);
    while (!this.ac.signal.aborted) {
      if (!this.fenceNeeded()) {
        await this.park();
        continue;
      }
      await this.tick();
      await sleep(CONFIRM_EVERY_MS, undefined, { signal: this.ac.signal }).catch(() => undefined);
    }
  }

  /** Until something needs the heartbeat (wakeConfirm) or the instances close. */
  private park(): Promise<void> {
    this.fresh = false;
    return new Promise<void>((resolve) => {
      const wake = (): void => {
        this.ac.signal.removeEventListener('abort', wake);
        if (this.wakeConfirm === wake) this.wakeConfirm = undefined;
        resolve();
      };
      this.wakeConfirm = wake;
      this.ac.signal.addEventListener('abort', wake, { once: true });
    });
  }

  private async tick(): Promise<void> {
    try {
      this.sweep();
      const renewedAt = await this.confirm();
      if (renewedAt !== undefined) await this.touch(renewedAt);
    } catch (err) {
      if (this.ac.signal.aborted) return;
      this.opts.log.debug(`confirming this host's place in the cluster failed: ${errorMessage(err)}`);
    }
    // Confirmed, or at least tried: a host that cannot vouch renders its instances all the same, and their supervisors
    // hold them fenced (and say so) until it can.
    this.fresh = true;
    if (this.renderHeld && !this.ac.signal.aborted) {
      this.renderHeld = false;
      this.opts.onChange();
    }
  }

  /**
   * The time to give the heartbeat, or undefined when this host cannot vouch for its instances now. Not "now" but
   * the lease's last renewal: the lease cannot expire before renewedAt + TTL, and the instances die at renewedAt +
   * fenceMs, which is earlier — so by the time the controller sees the lease gone, they are dead.
   */
  private async confirm(): Promise<number | undefined> {
    const lease = this.opts.link.currentLease;
    if (lease === undefined || lease.lost.aborted) return undefined;
    const renewedAt = lease.renewedAt;
    const node = await this.opts.store.get(keys.node(this.opts.host), { signal: this.ac.signal });
    if (node === undefined || node.lease !== lease.id) return undefined;
    if (this.lastLeaseId !== lease.id) {
      // A new lease took our statuses with the old one: report everything again.
      this.lastLeaseId = lease.id;
      for (const id of new Set([...this.states.keys(), ...this.stopping.keys()])) void this.report(id);
    }
    const listed = await this.opts.store.list(keys.assignByHost(this.opts.host), { signal: this.ac.signal });
    const present = new Set(listed.kvs.map((kv) => parseAllocKey(kv.key)?.alloc));
    const stale = [...this.opts.applied()].filter((id) => !present.has(id) && this.stopping.get(id)?.vouched !== true);
    if (stale.length === 0) return renewedAt;
    // The watch has not told us yet (it may be resuming after a pause): take the list as it is now, and keep the
    // heartbeat stale until the graph no longer holds the unassigned instances.
    this.onAssign({ type: 'resync', kvs: listed.kvs, revision: listed.revision });
    this.warnOnce(`stale:${stale.join(',')}`, `no longer assigned here: ${stale.join(', ')}; stopping before anything else`);
    return undefined;
  }

  private async touch(at: number): Promise<void> {
    const t = new Date(Math.min(at, Date.now()));
    this.lastTouchAt = Date.now();
    try {
      await utimes(this.heartbeat, t, t);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      await writeFile(this.heartbeat, '', { mode: 0o600 });
      await utimes(this.heartbeat, t, t);
    }
  }

  private warnOnce(tag: string, msg: string): void {
    if (this.logged.has(tag)) return;
    if (this.logged.size > 10_000) this.logged.clear();
    this.logged.add(tag);
    this.opts.log.warn(msg);
  }
}
