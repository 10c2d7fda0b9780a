import { BackplaneError, errorMessage } from '../errors.js';
import type { ExportEntry } from '../graph/collect.js';
import type { ExportedResource } from '../graph/graph.js';
import type { Logger } from '../log.js';
import type { HostFacts } from '../resources/types.js';
import { keys, parseExportedKey, parseNodeKey } from './keys.js';
import { isStoreError, writeInChunks, type KeyValue, type Lease, type Store, type TxnOp, type WatchBatch } from './store.js';

/** What an agent publishes about itself under `nodes/<host>`: its liveness is the key's lease. */
export interface NodeRecord {
  readonly host: string;
  readonly facts: HostFacts;
  readonly labels: Readonly<Record<string, string>>;
  readonly startedAt: string;
  readonly version: string;
  /** Free capacity when the record was written (cpus from the load average, memory in bytes). */
  readonly free: { readonly cpus: number; readonly memory: number };
}

export interface ClusterLinkOptions {
  readonly store: Store;
  readonly host: string;
  readonly log: Logger;
  /** The node record's lease: when the agent dies, its record and its exports disappear after this long. */
  readonly leaseTtlMs?: number;
  readonly record: () => NodeRecord;
}

const DEFAULT_TTL_MS = 3000;

/**
 * A host name ends up in paths (`{host}` in a collect rule's `set`), so it may not hold a `/` or be `.` or `..`:
 * letters, digits, `.`, `_` and `-`, starting with a letter, digit or `_` (what hostnames and Puppet certnames use).
 */
const HOST_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,252}$/;

/**
 * The one seam between an agent and the cluster store. It registers this host under a lease, publishes the graph's
 * exports under the same lease (so they vanish with the host), and turns the store's `exported/` tree into a
 * validated list of ExportEntry for the graph to collect from. It never throws at the agent for a store that is
 * down: it reports, keeps the last known data, and catches up when the store is back.
 */
export class ClusterLink {
  private lease: Lease | undefined;
  private published = new Map<string, string>();
  private wanted = new Map<string, string>();
  private readonly entries = new Map<string, ExportEntry>();
  private readonly rejected = new Set<string>();
  private readonly ac = new AbortController();
  private syncing: Promise<void> = Promise.resolve();
  private retryTimer: NodeJS.Timeout | undefined;
  private reachable = true;
  private onExports: ((entries: readonly ExportEntry[]) => void) | undefined;

  constructor(private readonly opts: ClusterLinkOptions) {}

  get host(): string {
    return this.opts.host;
  }

  /** Registers this host and starts watching exports. Resolves once the first view of the cluster is loaded. */
  async start(onExports: (entries: readonly ExportEntry[]) => void): Promise<void> {
    if (!HOST_NAME.test(this.opts.host)) {
      throw new BackplaneError('E_USAGE', `host name "${this.opts.host}" cannot be used in a cluster`, {
        hint: 'use letters, digits, ".", "_" and "-", starting with a letter, digit or "_"; set it with --hostname',
      });
    }
    this.onExports = onExports;
    await this.register();
    await this.watchExports();
  }

  /** The exports addressed to this host (or to all), as last seen. */
  exportsForMe(): ExportEntry[] {
    return [...this.entries.values()].filter((e) => e.resource.to === '*' || e.resource.to.includes(this.opts.host));
  }

  /** Makes the store hold exactly these exports for this host (under its lease); retried while the store is down. */
  publish(exports: readonly ExportedResource[]): Promise<void> {
    this.wanted = new Map(exports.map((r) => [keys.exported(this.opts.host, r.kind, r.name), JSON.stringify(r)]));
    return this.sync();
  }

  async close(): Promise<void> {
    this.ac.abort();
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    await this.syncing;
    // Leaving on purpose: take the record and exports down now instead of waiting for the lease to expire.
    await this.lease?.revoke().catch(() => undefined);
  }

  private async register(): Promise<void> {
    const lease = await this.opts.store.lease(this.opts.leaseTtlMs ?? DEFAULT_TTL_MS, { signal: this.ac.signal });
    this.lease = lease;
    await this.opts.store.put(keys.node(this.opts.host), JSON.stringify(this.opts.record()), { lease, signal: this.ac.signal });
    lease.lost.addEventListener(
      'abort',
      () => {
        if (this.ac.signal.aborted) return;
        this.opts.log.warn(`cluster lease lost (${errorMessage(lease.lost.reason)}); registering again`);
        this.lease = undefined;
        this.published = new Map(); // the lease took our exports with it
        this.scheduleRetry(0);
      },
      { once: true },
    );
  }

  private sync(): Promise<void> {
    const run = this.syncing.then(() => this.syncOnce());
    this.syncing = run.catch(() => undefined);
    return this.syncing;
  }

  private async syncOnce(): Promise<void> {
    if (this.ac.signal.aborted) return;
    try {
      if (this.lease === undefined) await this.register();
      const lease = this.lease;
      if (lease === undefined) return;
      const ops: TxnOp[] = [];
      for (const [key, value] of this.wanted) if (this.published.get(key) !== value) ops.push({ put: key, value, lease });
      for (const key of this.published.keys()) if (!this.wanted.has(key)) ops.push({ delete: key });
      if (ops.length > 0) await writeInChunks(this.opts.store, ops, { signal: this.ac.signal });
      this.published = new Map(this.wanted);
      this.markReachable(true);
    } catch (err) {
      if (this.ac.signal.aborted) return;
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

  private async watchExports(): Promise<void> {
    const { kvs, revision } = await this.opts.store.list(keys.exportedPrefix, { signal: this.ac.signal });
    for (const kv of kvs) this.accept(kv);
    this.emit();
    await this.opts.store.watch(keys.exportedPrefix, revision + 1, (batch) => this.onBatch(batch), this.ac.signal);
  }

  private onBatch(batch: WatchBatch): void {
    if (batch.type === 'resync') {
      this.entries.clear();
      for (const kv of batch.kvs) this.accept(kv);
    } else {
      for (const e of batch.events) {
        if (e.type === 'put') this.accept(e.kv);
        else this.entries.delete(e.key);
      }
    }
    this.emit();
  }

  /**
   * Only well-formed exports are believed: the key must name host, kind and name, the value must be JSON of an
   * exported resource whose kind and name match its key. Anything else is logged once and ignored — a foreign or
   * hostile writer under the cluster prefix cannot get it applied.
   */
  private accept(kv: KeyValue): void {
    const where = parseExportedKey(kv.key);
    const reject = (why: string): void => {
      this.entries.delete(kv.key);
      const tag = `${kv.key}@${kv.modRevision}`;
      if (this.rejected.has(tag)) return;
      this.rejected.add(tag);
      this.opts.log.warn(`ignoring cluster data at ${kv.key}: ${why}`);
    };
    if (where === undefined) return reject('not an exported/<host>/<kind>/<name> key');
    // Otherwise an exporter named "../.." would escape the directory a collect rule puts `{host}-...` files in.
    if (!HOST_NAME.test(where.host)) return reject(`"${where.host}" is not a valid host name`);
    let value: unknown;
    try {
      value = JSON.parse(kv.value);
    } catch {
      return reject('value is not valid JSON');
    }
    if (!isExported(value)) return reject('value is not an exported resource ({kind, name, params, to})');
    if (value.kind !== where.kind || value.name !== where.name) return reject(`value describes ${value.kind}[${value.name}], not what its key names`);
    this.entries.set(kv.key, { host: where.host, resource: value });
  }

  private emit(): void {
    this.onExports?.(this.exportsForMe());
  }

  /** Every registered host, from the store (throws when the store is unreachable). */
  static async members(store: Store, opts: { signal?: AbortSignal } = {}): Promise<{ host: string; record: NodeRecord | undefined; lease?: string }[]> {
    const { kvs } = await store.list(keys.nodesPrefix, opts);
    const out: { host: string; record: NodeRecord | undefined; lease?: string }[] = [];
    for (const kv of kvs) {
      const host = parseNodeKey(kv.key);
      if (host === undefined) continue;
      let record: NodeRecord | undefined;
      try {
        record = JSON.parse(kv.value) as NodeRecord;
      } catch {
        record = undefined;
      }
      out.push({ host, record, ...(kv.lease === undefined ? {} : { lease: kv.lease }) });
    }
    return out;
  }
}

function isExported(v: unknown): v is ExportedResource {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  const r = v as Record<string, unknown>;
  const to = r['to'];
  const toOk = to === '*' || (Array.isArray(to) && to.every((h) => typeof h === 'string'));
  return typeof r['kind'] === 'string' && typeof r['name'] === 'string' && r['params'] !== null && typeof r['params'] === 'object' && !Array.isArray(r['params']) && toOk;
}
