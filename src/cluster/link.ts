import { BackplaneError, errorMessage } from '../errors.js';
import type { ExportEntry } from '../graph/collect.js';
import type { ExportedResource } from '../graph/graph.js';
import type { Logger } from '../log.js';
import type { HostFacts } from '../resources/types.js';
import { fingerprint, type KeyPair } from './identity.js';
import { keys, parseExportedKey, parseJoinKey, parseKvKey, parseNodeKey } from './keys.js';
import { abortedError, isStoreError, writeInChunks, type KeyValue, type Lease, type Store, type TxnOp, type WatchBatch } from './store.js';
import { approve, approveAll, joinMac, openRecord, parseJoinRequest, sealRecord, TrustView, updateHosts, type JoinRequest, type JoinToken, type TrustFiles, type Verified } from './trust.js';

/** What an agent publishes about itself under `nodes/<host>`: its liveness is the key's lease. */
export interface NodeRecord {
  readonly host: string;
  readonly facts: HostFacts;
  readonly labels: Readonly<Record<string, string>>;
  readonly startedAt: string;
  readonly version: string;
  /** Free capacity when the record was written (cpus from the load average, memory in bytes). */
  readonly free: { readonly cpus: number; readonly memory: number };
  /** What this host offers scheduled instances (--capacity, else its cpus and memory less a reserve). */
  readonly capacity?: { readonly cpu: number; readonly memory: number };
  /** The range dynamic ports of instances placed here are picked from (--ports). */
  readonly ports?: { readonly from: number; readonly to: number };
  /**
   * This host's lease TTL and instance fence: its instances die at most fenceMs after the lease's last renewal,
   * so the controller knows how long after the lease is gone they may still run (Controller.graceFor).
   */
  readonly fence?: { readonly ttlMs: number; readonly fenceMs: number };
}

/** This host's part in the cluster's trust: see trust.ts. */
export interface LinkIdentity {
  readonly files: TrustFiles;
  readonly hostKey: KeyPair;
  /** Set on the host that holds the cluster CA: it approves itself and the hosts that join with its tokens. */
  readonly ca?: KeyPair | undefined;
  /** How a host that does not hold the CA learns (and pins) the CA's key the first time. */
  readonly token?: JoinToken | undefined;
  readonly caFingerprint?: string | undefined;
}

export interface ClusterLinkOptions {
  readonly store: Store;
  readonly host: string;
  readonly log: Logger;
  readonly identity: LinkIdentity;
  /** The node record's lease: when the agent dies, its record and its exports disappear after this long. */
  readonly leaseTtlMs?: number;
  readonly record: () => NodeRecord;
  /** Called with the key of one of this host's `kv` values whenever the store's copy changes. */
  readonly onOwnKv?: (key: string) => void;
  /** Called each time the membership lease is lost (before registering again): counted in the agent's metrics. */
  readonly onLeaseLost?: () => void;
}

const DEFAULT_TTL_MS = 3000;

/**
 * A host name ends up in paths (`{host}` in a collect rule's `set`), so it may not hold a `/` or be `.` or `..`:
 * letters, digits, `.`, `_` and `-`, starting with a letter, digit or `_` (what hostnames and Puppet certnames use).
 */
export const HOST_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,252}$/;

/**
 * The one seam between an agent and the cluster store. It registers this host under a lease, publishes the graph's
 * exports under the same lease (so they vanish with the host) and keeps them there (a record someone else changes or
 * deletes is put back), and turns the store's `exported/` tree into a list of ExportEntry for the graph to collect
 * from — each one signed by an approved host, or it is not there. It never throws at the agent for a store that is
 * down: it reports, keeps the last known data, and catches up when the store is back.
 */
export class ClusterLink {
  private lease: Lease | undefined;
  private published = new Map<string, string>();
  /**
   * What the write under way puts (key -> value) or deletes (key -> null). Its watch echo can arrive before the write's
   * own answer, while `published` still holds the older values: without this, every change of an export read as
   * someone else's change and was written a second time (a second event on every host in the cluster).
   */
  private writing: ReadonlyMap<string, string | null> | undefined;
  /** Keys someone else changed while that write was under way: still to put back once it is done. */
  private readonly changedMeanwhile = new Set<string>();
  private wanted = new Map<string, ExportedResource>();
  private wantedSealed = new Map<string, string>();
  /** The `kv` values this host publishes (store key -> sealed), and what the store holds under kv/<host>/. */
  private readonly kvWanted = new Map<string, string>();
  private readonly kvSeen = new Map<string, string>();
  private nodeValue: string | undefined;
  /** Everything under exported/ as read, verified or not: a change of the hosts list re-judges all of it. */
  private readonly raw = new Map<string, KeyValue>();
  private readonly entries = new Map<string, ExportEntry>();
  private readonly verified = new Map<string, { readonly value: string; readonly publicKey: string; readonly body: string; readonly seq: number }>();
  /** Highest signed sequence number accepted per key: an older signed value put back later is a replay. */
  private readonly maxSeq = new Map<string, number>();
  private readonly logged = new Set<string>();
  private readonly ac = new AbortController();
  private syncing: Promise<void> = Promise.resolve();
  private retryTimer: NodeJS.Timeout | undefined;
  private reachable = true;
  private onExports: ((entries: readonly ExportEntry[]) => void) | undefined;
  /** The entries for this host last handed to onExports (key -> verified value); undefined before the first. */
  private emitted: Map<string, string> | undefined;
  private view: TrustView | undefined;
  private seq = Date.now();
  private approved = false;
  private approving: Promise<void> = Promise.resolve();
  /** Writes of the hosts list to the state dir, in order (keepHosts). */
  private saving: Promise<void> = Promise.resolve();
  /** Join requests waiting for the next batch (key -> latest request), and whether that batch is queued. */
  private readonly joinQueue = new Map<string, KeyValue>();
  private joinQueued = false;
  private trustRevision = 0;
  private nodeRevision = 0;
  /** The lease whose membership record is written (sessionLease hands out no other), and who waits for the next. */
  private registered: Lease | undefined;
  private readonly leaseWaiters = new Set<() => void>();

  constructor(private readonly opts: ClusterLinkOptions) {}

  get host(): string {
    return this.opts.host;
  }

  /** The hosts this link believes in (after start). */
  get trust(): TrustView | undefined {
    return this.view;
  }

  /** Registers this host and starts watching exports. Resolves once the first view of the cluster is loaded. */
  async start(onExports: (entries: readonly ExportEntry[]) => void): Promise<void> {
    if (!HOST_NAME.test(this.opts.host)) {
      throw new BackplaneError('E_USAGE', `host name "${this.opts.host}" cannot be used in a cluster`, {
        hint: 'use letters, digits, ".", "_" and "-", starting with a letter, digit or "_"; set it with --hostname',
      });
    }
    this.onExports = onExports;
    const t0 = performance.now();
    const since = (): string => `${Math.round(performance.now() - t0)}ms`;
    const took: string[] = [];
    this.view = await this.establishTrust();
    took.push(`trust ${since()}`);
    // The rest needs only the trust view, not each other: side by side, a joining host waits for one store round
    // trip or two instead of eight in a row. Each watch starts at the revision of its own read, so nothing written
    // in between is missed. The CA's holder approves itself before it looks at anyone else's join request (both
    // rewrite the hosts list).
    await Promise.all([
      this.watchTrust(),
      this.ensureApproved().then(() => (this.opts.identity.ca !== undefined ? this.watchJoins() : undefined)),
      this.register().then(() => {
        took.push(`registered ${since()}`);
        return this.opts.store.watch(keys.node(this.opts.host), this.nodeRevision + 1, (b) => this.onOwnNode(b), this.ac.signal);
      }),
      this.watchExports().then(() => took.push(`exports read ${since()}`)),
      this.watchOwnKv(),
    ]);
    this.opts.log.debug(`cluster link up in ${since()} (${took.join(', ')})`);
  }

  /** The exports addressed to this host (or to all), as last seen. */
  exportsForMe(): ExportEntry[] {
    return [...this.entries.values()].filter((e) => this.isForMe(e));
  }

  /** Makes the store hold exactly these exports for this host (under its lease); retried while the store is down. */
  publish(exports: readonly ExportedResource[]): Promise<void> {
    const next = new Map(exports.map((r) => [keys.exported(this.opts.host, r.kind, r.name), r]));
    const sealed = new Map<string, string>();
    for (const [key, r] of next) {
      const before = this.wanted.get(key);
      // Unchanged exports keep their sealed value (and sequence number): re-signing would only churn the store.
      const old = this.wantedSealed.get(key);
      sealed.set(key, old !== undefined && before !== undefined && JSON.stringify(before) === JSON.stringify(r) ? old : this.seal(key, JSON.stringify(r)));
    }
    this.wanted = next;
    this.wantedSealed = sealed;
    return this.sync();
  }

  async close(): Promise<void> {
    this.ac.abort();
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    await this.syncing;
    await this.approving;
    await this.saving;
    // Leaving on purpose: take the record and exports down now instead of waiting for the lease to expire.
    await this.lease?.revoke().catch(() => undefined);
  }

  private seal(key: string, body: string): string {
    this.seq = Math.max(Date.now(), this.seq + 1);
    return sealRecord(this.opts.identity.hostKey, key, this.seq, body);
  }

  /** A record for `key` signed with this host's key (the scheduler's assignments, statuses and events). */
  sign(key: string, body: string): string {
    return this.seal(key, body);
  }

  /** Whether the store answered this link's last writes (false from a failed sync until one succeeds). */
  get storeReachable(): boolean {
    return this.reachable;
  }

  /** The lease this host's membership lives under (undefined while re-registering). */
  get currentLease(): Lease | undefined {
    return this.lease;
  }

  /**
   * The membership lease once this host is registered under it, for the controller's election to share: waits while
   * the host registers (again, after a lost lease). Rejects when `signal` aborts or the link closes.
   */
  async sessionLease(signal: AbortSignal): Promise<Lease> {
    for (;;) {
      for (const s of [signal, this.ac.signal]) if (s.aborted) throw abortedError(s, 'waiting for the membership lease');
      const lease = this.lease;
      if (lease !== undefined && lease === this.registered && !lease.lost.aborted) return lease;
      await new Promise<void>((resolve) => {
        const done = (): void => {
          signal.removeEventListener('abort', done);
          this.ac.signal.removeEventListener('abort', done);
          this.leaseWaiters.delete(done);
          resolve();
        };
        this.leaseWaiters.add(done);
        signal.addEventListener('abort', done, { once: true });
        this.ac.signal.addEventListener('abort', done, { once: true });
      });
    }
  }

  /** Logs a problem once while it lasts (per tag), so a hostile writer cannot flood the log. */
  private warnOnce(tag: string, msg: string): void {
    if (this.logged.has(tag)) return;
    if (this.logged.size > 10_000) this.logged.clear();
    this.logged.add(tag);
    this.opts.log.warn(msg);
  }

  // ------------------------------------------------------------------------------------------------------------
  // Trust

  /** Which CA to believe, and the newest hosts list known (from the state dir, then the store). */
  private async establishTrust(): Promise<TrustView> {
    const { files, ca, token, caFingerprint } = this.opts.identity;
    const { kvs, revision } = await this.opts.store.list(keys.trustPrefix, { signal: this.ac.signal });
    this.trustRevision = revision;
    const storeCaKey = parseCaValue(kvs.find((kv) => kv.key === keys.trustCa)?.value);
    let caKey: string;
    if (ca !== undefined) {
      caKey = ca.publicKey;
      if (storeCaKey !== ca.publicKey) {
        if (storeCaKey !== undefined) this.opts.log.warn(`the store's trust/ca is not this host's CA (${fingerprint(storeCaKey)}); putting the real one back`);
        await this.opts.store.put(keys.trustCa, JSON.stringify({ publicKey: ca.publicKey }), { signal: this.ac.signal });
      }
      await files.pinCa(caKey);
    } else {
      const pinned = await files.pinnedCa();
      const wantFp = token?.caFingerprint ?? caFingerprint;
      if (pinned !== undefined) {
        caKey = pinned;
        if (wantFp !== undefined && fingerprint(pinned) !== wantFp) {
          throw new BackplaneError('E_USAGE', `this host already trusts the CA ${fingerprint(pinned)}, not ${wantFp}`, {
            hint: `to join another cluster, remove ${files.dir} first (the host then needs approval again)`,
          });
        }
      } else if (wantFp !== undefined) {
        if (storeCaKey === undefined) {
          throw new BackplaneError('E_IO', 'the cluster has no CA yet (no trust/ca in the store)', { retryable: true, hint: 'run `backplane cluster init` on the first host' });
        }
        if (fingerprint(storeCaKey) !== wantFp) {
          throw new BackplaneError('E_IO', `the store's CA key (${fingerprint(storeCaKey)}) is not the one the join token names (${wantFp}); not joining`, {
            retryable: true,
            hint: 'someone else may have written trust/ca; check the token, and the store',
          });
        }
        caKey = storeCaKey;
        await files.pinCa(caKey);
        this.opts.log.info(`pinned the cluster CA ${fingerprint(caKey)}`);
      } else {
        throw new BackplaneError('E_USAGE', `host ${this.opts.host} does not know the cluster's CA, so it cannot tell real cluster data from forged`, {
          hint: 'pass --join-token (made by `backplane hosts token` on the host that holds the CA), or --ca-fingerprint and approve it with `backplane hosts approve`',
        });
      }
    }
    const view = new TrustView(caKey);
    const cached = await files.cachedHosts();
    if (cached !== undefined) {
      const r = view.adopt(cached);
      if (r !== 'newer' && r !== 'same') this.opts.log.warn(`ignoring the cached hosts list in ${files.dir}: ${r}`);
    }
    const kv = kvs.find((x) => x.key === keys.trustHosts);
    if (kv !== undefined) await this.adoptHosts(view, kv.value);
    return view;
  }

  private async adoptHosts(view: TrustView, value: string, modRevision?: number): Promise<boolean> {
    const r = view.adopt(value);
    if (r === 'same') return false;
    if (r !== 'newer' && modRevision !== undefined && modRevision <= view.writtenRevision) return false; // our own past write
    if (r === 'newer') {
      this.keepHosts(value);
      return true;
    }
    this.warnOnce(`hosts:${value.length}:${r}`, `ignoring trust/hosts in the store: ${r}`);
    // Only the CA's holder can repair it; the others keep believing the newest list they have.
    if (this.opts.identity.ca !== undefined && view.sealed !== undefined) {
      await this.opts.store.put(keys.trustHosts, view.sealed, { signal: this.ac.signal }).catch(() => undefined);
    }
    return false;
  }

  private async watchTrust(): Promise<void> {
    await this.opts.store.watch(
      keys.trustPrefix,
      this.trustRevision + 1,
      (batch) => {
        const view = this.view;
        if (view === undefined) return;
        const kvs = batch.type === 'resync' ? batch.kvs : batch.events.flatMap((e) => (e.type === 'put' ? [e.kv] : []));
        const deleted = batch.type === 'events' && batch.events.some((e) => e.type === 'delete' && e.key === keys.trustHosts);
        const hosts = kvs.filter((kv) => kv.key === keys.trustHosts).at(-1);
        const ca = this.opts.identity.ca;
        const caTouched =
          batch.type === 'resync'
            ? parseCaValue(batch.kvs.find((kv) => kv.key === keys.trustCa)?.value) !== ca?.publicKey
            : batch.events.some((e) => (e.type === 'put' ? e.kv.key === keys.trustCa && parseCaValue(e.kv.value) !== ca?.publicKey : e.key === keys.trustCa));
        this.approving = this.approving.then(async () => {
          if (hosts !== undefined && (await this.adoptHosts(view, hosts.value, hosts.modRevision))) {
            this.rejudge();
            await this.ensureApproved();
          }
          // Only the CA's holder knows the real key; for everyone else trust/ca is a hint they never rely on.
          if (caTouched && ca !== undefined) {
            this.opts.log.warn("trust/ca was changed or deleted in the store by someone else; putting this cluster's CA key back");
            await this.opts.store.put(keys.trustCa, JSON.stringify({ publicKey: ca.publicKey }), { signal: this.ac.signal });
          }
          if (deleted && this.opts.identity.ca !== undefined && view.sealed !== undefined) {
            this.opts.log.warn('trust/hosts was deleted from the store; putting it back');
            await this.opts.store.put(keys.trustHosts, view.sealed, { signal: this.ac.signal });
          }
        }).catch((err: unknown) => {
          if (!this.ac.signal.aborted) this.opts.log.warn(`updating the hosts list failed: ${errorMessage(err)}`);
        });
      },
      this.ac.signal,
    );
  }

  /**
   * The CA's holder approves itself. Any other host asks to be approved (with its token's proof when it has one)
   * until the hosts list names its key.
   */
  private async ensureApproved(): Promise<void> {
    const view = this.view;
    if (view === undefined) return;
    const { hostKey, ca, token } = this.opts.identity;
    const mine = view.keyOf(this.opts.host) === hostKey.publicKey;
    if (mine) {
      if (!this.approved) {
        this.approved = true;
        this.opts.log.info(`host ${this.opts.host} is approved in the cluster (key ${fingerprint(hostKey.publicKey)})`);
        // Records written before approval were ignored by readers only while unapproved: no need to write again.
      }
      return;
    }
    if (this.approved) {
      this.approved = false;
      this.opts.log.error(
        view.state(this.opts.host) === 'revoked'
          ? `host ${this.opts.host} has been revoked: the cluster ignores what it publishes`
          : `host ${this.opts.host} is no longer approved with this key: the cluster ignores what it publishes`,
      );
    }
    if (ca !== undefined) {
      await updateHosts(this.opts.store, ca, view, approve(this.opts.host, hostKey.publicKey, true, true), { signal: this.ac.signal });
      await this.afterOwnUpdate();
      return this.ensureApproved();
    }
    if (view.state(this.opts.host) === 'revoked') return;
    const req = {
      host: this.opts.host,
      publicKey: hostKey.publicKey,
      at: new Date().toISOString(),
      ...(token === undefined ? {} : { token: token.id, mac: joinMac(token.secret, this.opts.host, hostKey.publicKey) }),
    };
    await this.opts.store.put(keys.join(this.opts.host), JSON.stringify(req), { signal: this.ac.signal });
    this.warnOnce(
      'pending',
      `host ${this.opts.host} is waiting to be approved (key ${fingerprint(hostKey.publicKey)})${token === undefined ? `: run \`backplane hosts approve ${this.opts.host}\` on the CA's host` : `, with join token ${token.id}`}`,
    );
  }

  /**
   * The CA's holder changed the hosts list itself: its view already holds the new list, so the watch echo will be
   * 'same' — keep it, and re-judge what was refused under the old list now.
   */
  private async afterOwnUpdate(): Promise<void> {
    const sealed = this.view?.sealed;
    if (sealed !== undefined) this.keepHosts(sealed);
    this.rejudge();
    await this.saving;
  }

  /**
   * Keeps a newer hosts list in the state dir (what protects a restarted agent from a rolled-back list). In the
   * background, one write after the other so the last one written is the newest: a host that was just approved is
   * collected by every agent without each of them first waiting for a disk flush. Acting on the list before it is
   * on disk is safe: a crash before the write leaves the older list cached, and the store's newer one is adopted again
   * on start.
   */
  private keepHosts(sealed: string): void {
    this.saving = this.saving
      .then(() => this.opts.identity.files.saveHosts(sealed))
      .catch((err: unknown) => this.opts.log.warn(`cannot keep the hosts list: ${errorMessage(err)}`));
  }

  /**
   * On the CA's holder: approves join requests that prove a valid token; others wait for `hosts approve`. Requests
   * that arrive while one batch is being handled are handled together in the next: one token-file write and one new
   * hosts list for all of them, so thirty hosts starting at once make a handful of hosts lists, not thirty (each one
   * is read, checked and cached by every agent in the cluster).
   */
  private async watchJoins(): Promise<void> {
    const handle = (kv: KeyValue): void => {
      this.joinQueue.set(kv.key, kv);
      if (this.joinQueued) return;
      this.joinQueued = true;
      this.approving = this.approving
        .then(() => {
          this.joinQueued = false;
          const batch = [...this.joinQueue.values()];
          this.joinQueue.clear();
          return this.considerJoins(batch);
        })
        .catch((err: unknown) => {
          if (!this.ac.signal.aborted) this.opts.log.warn(`handling join requests failed: ${errorMessage(err)}`);
        });
    };
    const { kvs, revision } = await this.opts.store.list(keys.joinsPrefix, { signal: this.ac.signal });
    for (const kv of kvs) handle(kv);
    await this.opts.store.watch(
      keys.joinsPrefix,
      revision + 1,
      (batch) => {
        if (batch.type === 'resync') batch.kvs.forEach(handle);
        else for (const e of batch.events) if (e.type === 'put') handle(e.kv);
      },
      this.ac.signal,
    );
  }

  private async considerJoins(kvs: readonly KeyValue[]): Promise<void> {
    const { ca, files } = this.opts.identity;
    const view = this.view;
    if (ca === undefined || view === undefined || kvs.length === 0) return;
    const done: KeyValue[] = [];
    const candidates: { kv: KeyValue; req: JoinRequest & { host: string } }[] = [];
    for (const kv of kvs) {
      const host = parseJoinKey(kv.key);
      const req = parseJoinRequest(kv.value);
      // Per key and message, not per write: a store writer rewriting the same join request in a loop gets one line.
      const say = (msg: string): void => this.warnOnce(`join:${kv.key}:${msg}`, msg);
      if (host === undefined || req === undefined || req.host !== host || !HOST_NAME.test(host)) {
        say(`ignoring the join request at ${kv.key}: it is malformed`);
      } else if (view.keyOf(host) === req.publicKey) {
        done.push(kv);
      } else if (req.token === undefined) {
        say(`host ${host} asks to join (key ${fingerprint(req.publicKey)}); approve it with \`backplane hosts approve ${host}\``);
      } else if (view.state(host) !== 'unknown') {
        say(`not approving ${host} by token: that name is already ${view.state(host)} with another key; \`backplane hosts approve ${host} --replace\` if it was reinstalled`);
      } else if (candidates.some((c) => c.req.host === host)) {
        // Two requests for one name in a batch cannot be: the key is joins/<host>, and the queue keeps the last.
        say(`not approving ${host}: it asked twice at once`);
      } else {
        candidates.push({ kv, req: { ...req, host } });
      }
    }
    const verdicts = await files.redeemAll(candidates.map((c) => c.req));
    const approved: { kv: KeyValue; req: JoinRequest }[] = [];
    for (const [i, c] of candidates.entries()) {
      const ok = verdicts[i];
      if (ok === true) approved.push(c);
      else this.warnOnce(`join:${c.kv.key}:${String(ok)}`, `not approving ${c.req.host}: ${String(ok)}`);
    }
    if (approved.length > 0) {
      // If this fails (the store went away), the requests stay and are handled again; the same host and key do not
      // take a second use of the token (TrustFiles.redeemAll).
      await updateHosts(this.opts.store, ca, view, approveAll(approved.map((a) => ({ host: a.req.host, publicKey: a.req.publicKey }))), { signal: this.ac.signal });
      await this.afterOwnUpdate();
      for (const a of approved) {
        if (view.keyOf(a.req.host) !== a.req.publicKey) continue; // taken meanwhile under another key (hosts approve --replace)
        this.opts.log.info(`approved host ${a.req.host} (key ${fingerprint(a.req.publicKey)}) with join token ${a.req.token ?? '?'}`);
        done.push(a.kv);
      }
    }
    // One at a time: these are housekeeping, and thirty at once would pile listeners on the link's signal.
    for (const kv of done) await this.opts.store.cas(kv.key, kv.modRevision, null, { signal: this.ac.signal });
  }

  // ------------------------------------------------------------------------------------------------------------
  // This host's own records

  private async register(): Promise<void> {
    const lease = await this.opts.store.lease(this.opts.leaseTtlMs ?? DEFAULT_TTL_MS, { signal: this.ac.signal });
    // Watched from the grant on: a lease lost while the record below is still being written (a store slow enough for
    // that is exactly when leases get lost) must still make this host register again. A listener added after the
    // loss would never fire, and every later write would go out under a dead lease, refused, for ever.
    lease.lost.addEventListener('abort', () => this.dropLease(lease, errorMessage(lease.lost.reason)), { once: true });
    this.lease = lease;
    const key = keys.node(this.opts.host);
    this.nodeValue = this.seal(key, JSON.stringify(this.opts.record()));
    try {
      this.nodeRevision = (await this.opts.store.put(key, this.nodeValue, { lease, signal: this.ac.signal })).revision;
      this.registered = lease;
      for (const wake of [...this.leaseWaiters]) wake();
    } catch (err) {
      // Half registered: the next attempt starts over with a new lease rather than write under this one.
      if (this.lease === lease) this.lease = undefined;
      void lease.revoke().catch(() => undefined);
      throw err;
    }
  }

  /**
   * `lease` ended (expired, or etcd refused a write under it): if it is still the one this host lives under, forget
   * it and what was published under it, and register again with a new one.
   */
  private dropLease(lease: Lease, why: string): void {
    if (this.ac.signal.aborted || this.lease !== lease) return;
    this.opts.log.warn(`cluster lease lost (${why}); registering again`);
    this.opts.onLeaseLost?.();
    this.lease = undefined;
    this.published = new Map(); // the lease took our exports with it
    lease.release();
    this.scheduleRetry(0);
  }

  /** Our membership record changed or vanished without us: someone else wrote it. Put ours back. */
  private onOwnNode(batch: WatchBatch): void {
    const key = keys.node(this.opts.host);
    const now = batch.type === 'resync' ? batch.kvs.find((kv) => kv.key === key) : undefined;
    const touched =
      batch.type === 'resync'
        ? now?.value !== this.nodeValue
        : batch.events.some((e) => (e.type === 'put' ? e.kv.key === key && e.kv.value !== this.nodeValue : e.key === key));
    if (!touched || this.lease === undefined || this.nodeValue === undefined || this.ac.signal.aborted) return;
    this.warnOnce(`own-node`, `this host's membership record was changed or deleted in the store by someone else; putting it back`);
    const lease = this.lease;
    const value = this.nodeValue;
    this.opts.store.put(key, value, { lease, signal: this.ac.signal }).catch(() => this.scheduleRetry(1000));
  }

  private sync(): Promise<void> {
    const run = this.syncing.then(() => this.syncOnce());
    this.syncing = run.catch(() => undefined);
    return this.syncing;
  }

  private async syncOnce(): Promise<void> {
    if (this.ac.signal.aborted) return;
    let lease: Lease | undefined;
    try {
      if (this.lease?.lost.aborted === true) this.dropLease(this.lease, errorMessage(this.lease.lost.reason));
      if (this.lease === undefined) await this.register();
      lease = this.lease;
      if (lease === undefined) return;
      const ops: TxnOp[] = [];
      const wanted = new Map([...this.wantedSealed, ...this.kvWanted]);
      for (const [key, value] of wanted) if (this.published.get(key) !== value) ops.push({ put: key, value, lease });
      for (const key of this.published.keys()) if (!wanted.has(key)) ops.push({ delete: key });
      if (ops.length > 0) {
        this.writing = new Map(ops.map((op) => ('put' in op ? [op.put, op.value] : [op.delete, null])));
        await writeInChunks(this.opts.store, ops, { signal: this.ac.signal });
      }
      this.published = wanted;
      for (const key of this.changedMeanwhile) this.published.delete(key);
      this.changedMeanwhile.clear();
      this.writing = undefined;
      this.markReachable(true);
    } catch (err) {
      this.writing = undefined;
      this.changedMeanwhile.clear();
      if (this.ac.signal.aborted) return;
      // etcd says the lease is gone before our keep-alives did (they were acknowledged late, or by a member that had
      // not heard yet): the same as losing it.
      if (isStoreError(err) && err.reason === 'lease-lost' && lease !== undefined) {
        this.dropLease(lease, err.message);
        return;
      }
      this.markReachable(false, err);
      this.scheduleRetry(1000);
    }
  }

  private scheduleRetry(ms: number): void {
    if (this.retryTimer !== undefined || this.ac.signal.aborted) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      void this.sync();
    }, ms);
  }

  private markReachable(ok: boolean, err?: unknown): void {
    if (ok === this.reachable) return;
    this.reachable = ok;
    if (ok) this.opts.log.info('cluster store reachable again; exports re-synchronised');
    else
      this.opts.log.warn(
        `cluster store unreachable (${isStoreError(err) ? err.message : errorMessage(err)}); enforcing the last known graph and retrying`,
      );
  }

  // ------------------------------------------------------------------------------------------------------------
  // This host's values (the `kv` kind): published and kept like exports, under kv/<host>/

  /** This host's value for `key` as the store holds it: a record this host signed for that key, else undefined. */
  kvGet(key: string): string | undefined {
    const storeKey = keys.kv(this.opts.host, key);
    const value = this.kvSeen.get(storeKey);
    if (value === undefined) return undefined;
    const opened = openRecord(this.opts.identity.hostKey.publicKey, storeKey, value);
    if (opened === undefined) return undefined;
    try {
      const v = JSON.parse(opened) as { value?: unknown };
      return typeof v.value === 'string' ? v.value : undefined;
    } catch {
      return undefined;
    }
  }

  /** Publishes (or withdraws, with undefined) this host's value for `key`; resolves once synced (or retried later). */
  kvSet(key: string, value: string | undefined): Promise<void> {
    const storeKey = keys.kv(this.opts.host, key);
    if (value === undefined) this.kvWanted.delete(storeKey);
    else this.kvWanted.set(storeKey, this.seal(storeKey, JSON.stringify({ value })));
    return this.sync();
  }

  private async watchOwnKv(): Promise<void> {
    const prefix = keys.kvByHost(this.opts.host);
    const { kvs, revision } = await this.opts.store.list(prefix, { signal: this.ac.signal });
    for (const kv of kvs) this.kvSeen.set(kv.key, kv.value);
    await this.opts.store.watch(
      prefix,
      revision + 1,
      (batch) => {
        const touched = new Set<string>();
        if (batch.type === 'resync') {
          for (const key of this.kvSeen.keys()) touched.add(key);
          this.kvSeen.clear();
          for (const kv of batch.kvs) {
            this.kvSeen.set(kv.key, kv.value);
            touched.add(kv.key);
          }
        } else {
          for (const e of batch.events) {
            if (e.type === 'put') this.kvSeen.set(e.kv.key, e.kv.value);
            else this.kvSeen.delete(e.key);
            touched.add(e.type === 'put' ? e.kv.key : e.key);
          }
        }
        let restore = false;
        for (const key of touched) {
          if (this.notOurs(key, this.kvSeen.get(key))) restore = this.forget(key) || restore;
          const parsed = parseKvKey(key);
          if (parsed !== undefined) this.opts.onOwnKv?.(parsed.key);
        }
        if (restore) void this.sync();
      },
      this.ac.signal,
    );
  }

  // ------------------------------------------------------------------------------------------------------------
  // Everyone's exports

  private async watchExports(): Promise<void> {
    const { kvs, revision } = await this.opts.store.list(keys.exportedPrefix, { signal: this.ac.signal });
    for (const kv of kvs) this.raw.set(kv.key, kv);
    this.rejudge();
    await this.opts.store.watch(keys.exportedPrefix, revision + 1, (batch) => this.onBatch(batch), this.ac.signal);
  }

  private onBatch(batch: WatchBatch): void {
    let restore = false;
    if (batch.type === 'resync') {
      this.raw.clear();
      this.entries.clear();
      this.verified.clear();
      for (const kv of batch.kvs) this.raw.set(kv.key, kv);
      for (const kv of batch.kvs) this.judge(kv);
      for (const key of this.published.keys()) {
        if (key.startsWith(keys.exportedPrefix) && this.notOurs(key, this.raw.get(key)?.value)) restore = this.forget(key) || restore;
      }
    } else {
      for (const e of batch.events) {
        if (e.type === 'put') {
          this.raw.set(e.kv.key, e.kv);
          if (this.notOurs(e.kv.key, e.kv.value)) restore = this.forget(e.kv.key) || restore;
          this.judge(e.kv);
        } else {
          this.raw.delete(e.key);
          this.entries.delete(e.key);
          this.verified.delete(e.key);
          if (this.notOurs(e.key, undefined)) restore = this.forget(e.key) || restore;
        }
      }
    }
    this.emit();
    if (restore) void this.sync();
  }

  /**
   * The store holds `seen` (undefined: nothing) under a key this host publishes, and that is neither what it published
   * nor what the write under way puts there (or deletes): someone else's doing.
   */
  private notOurs(key: string, seen: string | undefined): boolean {
    const mine = this.published.get(key);
    if (mine === undefined || seen === mine) return false;
    const writing = this.writing?.get(key);
    return writing === undefined || writing !== (seen ?? null);
  }

  /** One of our exports was changed or deleted by someone else: forget we published it, so sync() puts it back. */
  private forget(key: string): boolean {
    if (this.ac.signal.aborted) return false;
    this.published.delete(key);
    // The write under way sets `published` when it is done: that must not make this change look put back already.
    if (this.writing !== undefined) this.changedMeanwhile.add(key);
    this.warnOnce(`own:${key}`, `${key} was changed or deleted in the store by someone else; putting this host's export back`);
    return true;
  }

  private rejudge(): void {
    const before = new Map(this.entries);
    this.entries.clear();
    for (const kv of this.raw.values()) this.judge(kv, before);
    this.emit();
  }

  /**
   * Only exports signed by their approved exporter are believed: the key must name host, kind and name; the value
   * must be a record signed by that host's approved key for exactly that key, no older than one already seen, holding
   * an exported resource whose kind and name match its key. Anything else is logged once and never applied.
   */
  private judge(kv: KeyValue, before: ReadonlyMap<string, ExportEntry> = this.entries): void {
    const where = parseExportedKey(kv.key);
    // Once per key and reason: an attacker rewriting the same junk in a loop gets one line, not one per write.
    const reject = (why: string, tag = `${kv.key}:${why}`): void => {
      this.entries.delete(kv.key);
      this.warnOnce(tag, `ignoring cluster data at ${kv.key}: ${why}`);
    };
    if (where === undefined) return reject('not an exported/<host>/<kind>/<name> key');
    // Otherwise an exporter named "../.." would escape the directory a collect rule puts `{host}-...` files in.
    if (!HOST_NAME.test(where.host)) return reject(`"${where.host}" is not a valid host name`);
    const view = this.view;
    if (view === undefined) return reject('no hosts list yet');
    // A change of the hosts list re-judges everything held; the signature of a value already checked against the
    // same key need not be checked again (verifying is ~0.1 ms, which adds up at thousands of exports).
    const cached = this.verified.get(kv.key);
    const hostKey = view.keyOf(where.host);
    const v: Verified =
      cached !== undefined && cached.value === kv.value && hostKey !== undefined && cached.publicKey === hostKey
        ? { ok: true, body: cached.body, seq: cached.seq }
        : view.verify(where.host, kv.key, kv.value);
    if (v.ok && hostKey !== undefined) this.verified.set(kv.key, { value: kv.value, publicKey: hostKey, body: v.body, seq: v.seq });
    else this.verified.delete(kv.key);
    if (!v.ok) {
      // A whole unapproved host is one line, not one per export.
      if (v.hostLevel) return reject(v.why, `host:${where.host}:${v.why}`);
      return reject(v.why);
    }
    if (where.host === this.opts.host && v.seq > this.seq) this.seq = v.seq; // our own, from an earlier run
    const seen = this.maxSeq.get(kv.key);
    if (seen !== undefined && v.seq < seen) return reject(`it is an older signed value (sequence ${v.seq} < ${seen}) put back: a replay`);
    let value: unknown;
    try {
      value = JSON.parse(v.body);
    } catch {
      return reject('the signed value is not valid JSON');
    }
    if (!isExported(value)) return reject('value is not an exported resource ({kind, name, params, to})');
    if (value.kind !== where.kind || value.name !== where.name) return reject(`value describes ${value.kind}[${value.name}], not what its key names`);
    this.maxSeq.set(kv.key, v.seq);
    // The same verified value as before: the same entry object. The agent's graph source keeps what it made of each
    // entry by the object (collectMemo), so a hosts list that changes (a host joins) or a value written again costs
    // no agent a full re-render of everything it collects on the next change. An entry is a function of its key and
    // its verified value, and `before` holds an entry only while `verified` holds the value it was made from.
    const prior = cached !== undefined && cached.value === kv.value ? before.get(kv.key) : undefined;
    this.entries.set(kv.key, prior ?? { host: where.host, resource: value });
  }

  /**
   * Tells the agent about the exports for this host, but only when they differ from what it was last told: a batch
   * that changes nothing it collects (another host's export for someone else, a refused write, its own export's
   * echo, a hosts list that approves a host with nothing exported yet) must not cost every agent a re-render.
   * An entry is a function of its key and its verified value, so comparing those is comparing what was collected.
   */
  private emit(): void {
    const now = new Map<string, string>();
    for (const [key, e] of this.entries) if (this.isForMe(e)) now.set(key, this.verified.get(key)?.value ?? '');
    const before = this.emitted;
    if (before !== undefined && before.size === now.size && [...now].every(([k, v]) => before.get(k) === v)) return;
    this.emitted = now;
    this.onExports?.(this.exportsForMe());
  }

  private isForMe(e: ExportEntry): boolean {
    return e.resource.to === '*' || e.resource.to.includes(this.opts.host);
  }

  /**
   * Every record under nodes/, each with whether it can be believed: signed by the approved key of the host it
   * names. `trust` undefined: nothing can be verified (no CA pinned here), every member is reported unverified.
   */
  static async members(store: Store, trust: TrustView | undefined, opts: { signal?: AbortSignal } = {}): Promise<Member[]> {
    const { kvs } = await store.list(keys.nodesPrefix, opts);
    const out: Member[] = [];
    for (const kv of kvs) {
      const host = parseNodeKey(kv.key);
      if (host === undefined) continue;
      const lease = kv.lease === undefined ? {} : { lease: kv.lease };
      if (trust === undefined) {
        out.push({ host, record: undefined, verified: false, problem: 'no CA pinned on this host to verify with', ...lease });
        continue;
      }
      const v = trust.verify(host, kv.key, kv.value);
      if (!v.ok) {
        out.push({ host, record: undefined, verified: false, problem: v.why, ...lease });
        continue;
      }
      let record: NodeRecord | undefined;
      try {
        record = JSON.parse(v.body) as NodeRecord;
      } catch {
        record = undefined;
      }
      out.push({ host, record, verified: record !== undefined, ...(record === undefined ? { problem: 'the signed record is not JSON' } : {}), ...lease });
    }
    return out;
  }
}

export interface Member {
  readonly host: string;
  /** Only when verified. */
  readonly record: NodeRecord | undefined;
  readonly verified: boolean;
  readonly problem?: string;
  readonly lease?: string;
}

function parseCaValue(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  try {
    const v = JSON.parse(value) as { publicKey?: unknown };
    return typeof v.publicKey === 'string' && /^[A-Za-z0-9_-]{43}$/.test(v.publicKey) ? v.publicKey : undefined;
  } catch {
    return undefined;
  }
}

function isExported(v: unknown): v is ExportedResource {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  const r = v as Record<string, unknown>;
  const to = r['to'];
  const toOk = to === '*' || (Array.isArray(to) && to.every((h) => typeof h === 'string'));
  return typeof r['kind'] === 'string' && typeof r['name'] === 'string' && r['params'] !== null && typeof r['params'] === 'object' && !Array.isArray(r['params']) && toOk;
}
