import { mkdir, utimes, writeFile } from 'node:fs/promises';
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
import { openAssignRecord, type AssignRecord, type StatusRecord } from '../scheduler/records.js';
import { renderInstance } from '../scheduler/render.js';
import type { InstanceState, ServiceSpec } from '../scheduler/types.js';

/**
 * How often the agent confirms its place in the cluster (and so refreshes its instances' fence). The heartbeat
 * carries the lease's last renewal, which etcd's keep-alives move every third of the TTL: confirming much more often
 * would gain nothing but reads.
 */
const CONFIRM_EVERY_MS = 500;

export interface InstancesOptions {
  readonly store: Store;
  readonly link: ClusterLink;
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
}

type Accepted = AssignRecord & { readonly spec: ServiceSpec };

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
 */
export class Instances {
  private readonly accepted = new Map<string, Accepted>();
  private readonly raw = new Map<string, KeyValue>();
  private readonly maxSeq = new Map<string, number>();
  private readonly logged = new Set<string>();
  private leader: { epoch: number; host: string } | undefined;
  private readonly reported = new Map<string, string>();
  private readonly states = new Map<string, { state: InstanceState; since: number; restarts: number; message?: string }>();
  private readonly ac = new AbortController();
  private lastLeaseId: string | undefined;
  readonly heartbeat: string;

  constructor(private readonly opts: InstancesOptions) {
    this.heartbeat = join(opts.stateDir, 'sched', 'heartbeat');
  }

  async start(): Promise<void> {
    await mkdir(join(this.opts.stateDir, 'sched'), { recursive: true, mode: 0o700 });
    const { store } = this.opts;
    const election = await store.list(keys.election(ELECTION), { signal: this.ac.signal });
    this.onElection({ type: 'resync', kvs: election.kvs, revision: election.revision });
    await store.watch(keys.election(ELECTION), election.revision + 1, (b) => this.onElection(b), this.ac.signal);
    const prefix = keys.assignByHost(this.opts.host);
    const listed = await store.list(prefix, { signal: this.ac.signal });
    this.onAssign({ type: 'resync', kvs: listed.kvs, revision: listed.revision });
    await store.watch(prefix, listed.revision + 1, (b) => this.onAssign(b), this.ac.signal);
    void this.confirmLoop();
  }

  close(): void {
    this.ac.abort();
  }

  /** The graph resources of every accepted alloc. */
  resources(): { resources: RawResource[]; edges: RawEdge[] } {
    const resources: RawResource[] = [];
    const edges: RawEdge[] = [];
    for (const a of this.accepted.values()) {
      try {
        const r = renderInstance(a.spec, { ...a.alloc }, { name: this.opts.host, facts: this.opts.facts, labels: this.opts.labels }, { fence: { heartbeat: this.heartbeat, maxAgeMs: this.opts.fenceMs } });
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
  }

  private async report(allocId: string): Promise<void> {
    const lease = this.opts.link.currentLease;
    const s = this.states.get(allocId);
    const a = this.accepted.get(allocId);
    if (lease === undefined || s === undefined || a === undefined) return;
    const key = keys.status(this.opts.host, allocId);
    const body: StatusRecord = { ...s, version: a.alloc.version };
    const text = JSON.stringify(body);
    if (this.reported.get(key) === text && this.lastLeaseId === lease.id) return;
    this.reported.set(key, text);
    await this.opts.store.put(key, this.opts.link.sign(key, text), { lease, signal: this.ac.signal }).catch((err: unknown) => {
      this.reported.delete(key);
      if (!this.ac.signal.aborted) this.opts.log.debug(`reporting ${allocId} failed: ${errorMessage(err)}`);
    });
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
    let changed = next.size !== this.accepted.size;
    for (const [id, a] of next) {
      const cur = this.accepted.get(id);
      if (cur === undefined || cur.alloc.version !== a.alloc.version || JSON.stringify(cur.alloc.ports) !== JSON.stringify(a.alloc.ports)) changed = true;
    }
    for (const id of this.accepted.keys()) {
      if (!next.has(id)) {
        this.states.delete(id);
        const key = keys.status(this.opts.host, id);
        this.reported.delete(key);
        void this.opts.store.delete(key, { signal: this.ac.signal }).catch(() => undefined);
      }
    }
    this.accepted.clear();
    for (const [id, a] of next) this.accepted.set(id, a);
    if (changed) this.opts.onChange();
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

  /** Confirms membership and assignments, then refreshes the fence heartbeat (see the class comment). */
  private async confirmLoop(): Promise<void> {
    while (!this.ac.signal.aborted) {
      try {
        const renewedAt = await this.confirm();
        if (renewedAt !== undefined) await this.touch(renewedAt);
      } catch (err) {
        if (this.ac.signal.aborted) return;
        this.opts.log.debug(`confirming this host's place in the cluster failed: ${errorMessage(err)}`);
      }
      await sleep(CONFIRM_EVERY_MS, undefined, { signal: this.ac.signal }).catch(() => undefined);
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
      for (const id of this.states.keys()) void this.report(id);
    }
    const listed = await this.opts.store.list(keys.assignByHost(this.opts.host), { signal: this.ac.signal });
    const present = new Set(listed.kvs.map((kv) => parseAllocKey(kv.key)?.alloc));
    const stale = [...this.opts.applied()].filter((id) => !present.has(id));
    if (stale.length === 0) return renewedAt;
    // The watch has not told us yet (it may be resuming after a pause): take the list as it is now, and keep the
    // heartbeat stale until the graph no longer holds the unassigned instances.
    this.onAssign({ type: 'resync', kvs: listed.kvs, revision: listed.revision });
    this.warnOnce(`stale:${stale.join(',')}`, `no longer assigned here: ${stale.join(', ')}; stopping before anything else`);
    return undefined;
  }

  private async touch(at: number): Promise<void> {
    const t = new Date(Math.min(at, Date.now()));
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
