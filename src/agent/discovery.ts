import { isIP } from 'node:net';
import type { Store, WatchBatch } from '../cluster/store.js';
import type { TrustView } from '../cluster/trust.js';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import type { ServiceDirectory, ServiceInstance, ServiceInstances } from '../resources/types.js';
// The cluster's key layout and the state reader load when a Discovery starts: DiscoveryHandle is made at every
// start, a Discovery only once a cluster store is open.
import type { SchedState } from '../scheduler/state.js';

export type { ServiceInstance, ServiceInstances };

export interface DiscoveryOptions {
  readonly store: Store;
  /** The link's live view of the hosts list: undefined until a CA is pinned, and then nothing can be believed. */
  readonly trust: () => TrustView | undefined;
  readonly log: Logger;
  /** Coalesces a burst of watch batches (a controller's plan lands as several writes) into one read. */
  readonly debounceMs?: number;
  /** After a failed read (store unreachable), the next attempt. */
  readonly retryMs?: number;
}

/**
 * Service discovery: which instances of each service are healthy now, and where they listen. This is what lets a
 * graph or a template feed an nginx/haproxy upstream list from the scheduler's own records, with the same engine
 * that runs everything else (Nomad needs consul-template for it, Kubernetes kube-proxy).
 *
 * The answer is recomputed from a full, verified read (readSchedState, the one the controller and `backplane
 * service` use), so discovery believes exactly what the scheduler believes and nothing a stranger wrote in the store:
 * an instance is listed only when its assignment verifies (controller-signed, operator-signed spec), its status is
 * signed by the host the instance runs on and says healthy (or running, when the spec has no health check), and
 * that host's membership record verifies (the address comes from its facts).
 *
 * When the store cannot be read the last answer stays: an upstream list that is a few seconds stale is far better
 * than an empty one, which would take the whole proxied service down.
 */
export class Discovery {
  private result: ServiceInstances = {};
  private canonical = '{}';
  private readonly ac = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  /** A read is running; a change meanwhile asks for another one after it instead of a second one beside it. */
  private reading: Promise<void> | undefined;
  private again = false;
  private readonly listeners = new Set<() => void>();
  private firstResolve: (() => void) | undefined;
  /** Resolves once the first read has succeeded: before that, "no instances" would be a guess, not an answer. */
  readonly ready = new Promise<void>((resolve) => (this.firstResolve = resolve));
  private loggedProblems = new Set<string>();

  constructor(private readonly opts: DiscoveryOptions) {}

  /**
   * Watches what an answer depends on, then reads once (watching first, so no change between the read and the
   * watch can be missed: any change after the watch is established triggers another full read). Resolves after the
   * first read, successful or not (a failed one is retried in the background).
   */
  async start(): Promise<void> {
    const { store } = this.opts;
    const { keys } = await import('../cluster/keys.js');
    const onBatch = (batch: WatchBatch): void => {
      // The controller's event log lives under sched/ too; it says nothing about where instances are.
      if (batch.type === 'events' && batch.events.every((e) => (e.type === 'put' ? e.kv.key : e.key).startsWith(keys.eventsPrefix))) return;
      this.schedule();
    };
    const signal = this.ac.signal;
    // trust/hosts: a revoked host's records stop counting at once, an approved one's start to.
    // sched/app/: an application backplane's entries (cache.primary) change without any alloc changing.
    await Promise.all([keys.assignPrefix, keys.statusPrefix, keys.nodesPrefix, keys.trustHosts, keys.appStatePrefix, keys.appsPrefix].map((p) => store.watch(p, 0, onBatch, signal)));
    await this.read();
  }

  /** The healthy instances of every service that has any, by service name; each list sorted by index, then id. */
  current(): ServiceInstances {
    return this.result;
  }

  /** Calls `cb` after each change of current() (never for a re-read that found the same thing). */
  onChange(cb: () => void): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }

  close(): void {
    this.ac.abort();
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private schedule(delay = this.opts.debounceMs ?? 5): void {
    if (this.ac.signal.aborted) return;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.read();
    }, delay);
  }

  private read(): Promise<void> {
    if (this.reading !== undefined) {
      this.again = true;
      return this.reading;
    }
    this.reading = this.readOnce().finally(() => {
      this.reading = undefined;
      if (this.again) {
        this.again = false;
        this.schedule(0);
      }
    });
    return this.reading;
  }

  private async readOnce(): Promise<void> {
    const view = this.opts.trust();
    let next: ServiceInstances;
    if (view === undefined) {
      next = {};
    } else {
      let state: SchedState;
      try {
        const { readSchedState } = await import('../scheduler/state.js');
        state = await readSchedState(this.opts.store, view, { signal: this.ac.signal });
      } catch (err) {
        if (this.ac.signal.aborted) return;
        this.opts.log.debug(`service discovery: cannot read the store (${errorMessage(err)}); keeping the last answer and retrying`);
        this.schedule(this.opts.retryMs ?? 1000);
        return;
      }
      this.logProblems(state.problems);
      next = healthyInstances(state);
    }
    if (this.ac.signal.aborted) return;
    this.firstResolve?.();
    const canonical = JSON.stringify(next);
    if (canonical === this.canonical) return;
    this.canonical = canonical;
    this.result = next;
    for (const cb of [...this.listeners]) {
      try {
        cb();
      } catch (err) {
        this.opts.log.warn(`service discovery listener failed: ${errorMessage(err)}`);
      }
    }
  }

  /** Records that fail a check are refused here as everywhere; each reason is logged once, not on every re-read. */
  private logProblems(problems: readonly string[]): void {
    const now = new Set(problems);
    for (const p of problems) if (!this.loggedProblems.has(p)) this.opts.log.debug(`service discovery ignores ${p}`);
    this.loggedProblems = now;
  }
}

/**
 * What the agent hands resources (ResourceWorld.services) and graph modules (GraphContext.services) before and after
 * the store is open: it exists from the agent's start, and a Discovery is attached to it once the cluster link is
 * up. Watchers are told only about the services whose instances changed, so an upstream file of `api` is not
 * re-rendered because `db` moved.
 *
 * An attached Discovery starts (watches, first read) when something asks for services — a template listing them,
 * an instance's peers, a graph module — or at once when attached eagerly. Until then it costs nothing: a host whose
 * graph never looks at services does not re-read and re-verify the scheduler's records each time a host joins or
 * leaves, which with thirty agents is thirty full reads on every agent for every membership change.
 */
export class DiscoveryHandle implements ServiceDirectory {
  private discovery: Discovery | undefined;
  private last: ServiceInstances = {};
  private readonly watchers = new Map<string, Set<() => void>>();
  private attachedResolve: ((d: Discovery) => void) | undefined;
  private readonly attached = new Promise<Discovery>((resolve) => (this.attachedResolve = resolve));
  /** The start of the attached Discovery, once something asked for it. */
  private starting: { readonly d: Discovery; readonly done: Promise<void> } | undefined;
  /** Something asked for services before a Discovery was attached: start it as soon as one is. */
  private wanted = false;
  private log: Logger | undefined;
  private retryTimer: NodeJS.Timeout | undefined;

  /**
   * Serves from `d`; `onAnyChange` runs after each change, after the watchers. `eager`: start it now (and resolve
   * after its first read), as for a graph module, whose every render reads ctx.services; otherwise it starts when
   * first asked for.
   */
  async attach(d: Discovery, onAnyChange: () => void, opts: { eager?: boolean; log?: Logger } = {}): Promise<void> {
    // A reconnection (the first attempt failed after attaching) replaces the Discovery on the store it closed.
    if (this.discovery !== d) this.discovery?.close();
    // Set first: a module graph re-rendered because of the first read's change must already see its answer.
    this.discovery = d;
    this.log = opts.log;
    d.onChange(() => {
      if (this.discovery === d) this.changed(d.current(), onAnyChange);
    });
    this.attachedResolve?.(d);
    if (opts.eager === true || this.wanted) await this.start();
  }

  /**
   * Starts the attached Discovery if it is not started yet; resolves after its first read (successful or not), at
   * once when none is attached yet (it starts when attached). A failed start (the store went away) is tried again.
   */
  start(): Promise<void> {
    this.wanted = true;
    const d = this.discovery;
    if (d === undefined) return Promise.resolve();
    if (this.starting?.d !== d) {
      const done = d.start().catch((err: unknown) => {
        if (this.starting?.d !== d) return;
        this.starting = undefined;
        this.log?.warn(`service discovery could not start: ${errorMessage(err)}; trying again`);
        this.retryTimer ??= setTimeout(() => {
          this.retryTimer = undefined;
          if (this.discovery === d) void this.start();
        }, 1000);
      });
      this.starting = { d, done };
    }
    return this.starting.done;
  }

  /** Empty until a Discovery is attached (no cluster store open) and has read: a module graph then sees no services. */
  current(): ServiceInstances {
    void this.start();
    return this.discovery?.current() ?? {};
  }

  async get(service: string, signal: AbortSignal): Promise<readonly ServiceInstance[]> {
    this.wanted = true;
    const first = await abortable(this.attached, signal);
    const d = this.discovery ?? first;
    void this.start();
    await abortable(d.ready, signal);
    return d.current()[service] ?? [];
  }

  watch(service: string, onChange: () => void): () => void {
    const set = this.watchers.get(service) ?? new Set();
    set.add(onChange);
    this.watchers.set(service, set);
    void this.start();
    return () => {
      set.delete(onChange);
      if (set.size === 0) this.watchers.delete(service);
    };
  }

  close(): void {
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.discovery?.close();
  }

  private changed(next: ServiceInstances, onAnyChange: () => void): void {
    const prev = this.last;
    this.last = next;
    for (const name of new Set([...Object.keys(prev), ...Object.keys(next)])) {
      if (JSON.stringify(prev[name] ?? []) === JSON.stringify(next[name] ?? [])) continue;
      for (const cb of [...(this.watchers.get(name) ?? [])]) cb();
    }
    onAnyChange();
  }
}

/** `p`, or a rejection as soon as `signal` aborts (the resource waiting for it was stopped). */
function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err instanceof Error ? err : new Error(String(err)));
      },
    );
  });
}

/**
 * The pure part: healthy instances per service from a verified SchedState. Services with no healthy instance are
 * left out (a template sees an empty list for them either way). Keys and lists are sorted, so the same state always
 * gives the same JSON and a no-op rewrite in the store changes nothing downstream.
 */
export function healthyInstances(state: SchedState): ServiceInstances {
  const address = new Map<string, string>();
  for (const m of state.members) {
    const ip: unknown = m.verified ? m.record?.facts.ipv4 : undefined;
    // It ends up in config files root writes (an upstream list): a signed record from a misbehaving host must not
    // smuggle in more than an address ("1.2.3.4;\nserver evil:80").
    if (typeof ip === 'string' && isIP(ip) !== 0) address.set(m.host, ip);
  }
  const out = new Map<string, ServiceInstance[]>();
  for (const a of state.assigns.values()) {
    const { alloc, spec } = a;
    const status = state.statuses.get(alloc.id);
    // The statuses map was keyed by alloc id only: a status under another host's key says nothing about this alloc.
    if (status === undefined || status.host !== alloc.host) continue;
    const up = status.state === 'healthy' || (status.state === 'running' && spec.health === undefined);
    // An instance that said it is not ready is not routed to, health check or not.
    if (!up || status.app?.ready === false) continue;
    // A host without a verified membership record is gone (its lease ended) or unknown: nothing to route to.
    const addr = address.get(alloc.host);
    if (addr === undefined) continue;
    const list = out.get(alloc.service) ?? [];
    list.push({ id: alloc.id, index: alloc.index, host: alloc.host, address: addr, ports: sortedPorts(alloc.ports), version: alloc.version });
    out.set(alloc.service, list);
  }
  // Application backplanes' entries (`cache.primary`): the members a backplane says clients should reach. Only a
  // member of that object's own services, assigned and up on a live host, however the entry was written.
  for (const [app, st] of state.appStates) {
    const rec = state.apps.get(app)?.record;
    if (rec === undefined || 'removed' in rec) continue;
    for (const [entry, targets] of Object.entries(st.discovery)) {
      const list: ServiceInstance[] = [];
      for (const t of targets) {
        const a = state.assigns.get(t.allocId);
        const status = state.statuses.get(t.allocId);
        if (a === undefined || a.spec.app?.name !== app || !rec.services.includes(a.alloc.service) || a.alloc.ports[t.port] === undefined) continue;
        if (status === undefined || status.host !== a.alloc.host || !(status.state === 'healthy' || status.state === 'running')) continue;
        const addr = address.get(a.alloc.host);
        if (addr === undefined) continue;
        list.push({ id: a.alloc.id, index: a.alloc.index, host: a.alloc.host, address: addr, ports: sortedPorts(a.alloc.ports), version: a.alloc.version });
      }
      if (list.length > 0) out.set(`${app}.${entry}`, list);
    }
  }
  const result: Record<string, readonly ServiceInstance[]> = {};
  for (const name of [...out.keys()].sort()) {
    result[name] = (out.get(name) ?? []).sort((x, y) => x.index - y.index || (x.id < y.id ? -1 : x.id > y.id ? 1 : 0));
  }
  return result;
}

function sortedPorts(ports: Readonly<Record<string, number>>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of Object.keys(ports).sort()) out[k] = ports[k] ?? 0;
  return out;
}
