import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { open, readFile, rename, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { BackplaneError } from '../errors.js';
import { syncDirectory } from '../util/dirsync.js';
import { ensurePrivateDir } from '../util/private-dir.js';
import { campaign } from './election.js';
import {
  DEFAULT_LIMITS,
  StoreError,
  alreadyApplied,
  compareHolds,
  compareKeys,
  deliver,
  throwIfAborted,
  validateKey,
  validateCompares,
  validateOps,
  type CasResult,
  type KeyValue,
  type Lease,
  type Leadership,
  type OpOptions,
  type Store,
  type StoreLimits,
  type TxnOp,
  type TxnOptions,
  type TxnResult,
  type WatchBatch,
  type WatchEvent,
} from './store.js';

/**
 * The single-host store: the whole key space in memory, made durable by an append-only log of committed writes
 * (JSON lines, one per revision, written and fdatasync'd before the write's promise resolves) and a periodic
 * snapshot after which the log is emptied. Opening loads the snapshot and replays the log; a torn last line (a crash
 * in the middle of an append) is dropped, since its write was never acknowledged. Concurrent writes share one
 * append and one fdatasync (group commit).
 *
 * One process owns a store directory: it holds flock(2) on the file `lock` inside it (see acquireLock). The directory
 * is private (created 0700; an existing one must be owned by the agent's user and writable by nobody else), so no
 * other user can open the lock file, let alone take the lock, and the store opens no socket or port at all.
 *
 * Leases live in memory: a lease granted by this process is alive until revoked, released (then it expires after its
 * TTL) or the store is closed. On open, keys left attached to leases of an earlier run are deleted, as etcd would
 * after their TTL.
 */

export interface EmbeddedStoreOptions {
  /** Directory holding the log, snapshot and lock; created if missing. */
  readonly dir: string;
  /** How many recent events are kept for watches that start in the past; older starts get a resync. */
  readonly historyEvents?: number;
  /** Snapshot (and empty the log) after this many logged writes or this many log bytes, whichever comes first. */
  readonly snapshotEvery?: number;
  readonly snapshotBytes?: number;
  readonly limits?: StoreLimits;
}

interface Entry {
  readonly value: string;
  readonly createRevision: number;
  readonly modRevision: number;
  readonly lease: string | undefined;
}

interface Change {
  readonly key: string;
  readonly entry: Entry | null;
}

type LoggedOp = ['p', string, string] | ['p', string, string, string] | ['d', string];

interface LogRecord {
  readonly r: number;
  readonly o: LoggedOp[];
}

interface Snapshot {
  readonly format: 1;
  readonly revision: number;
  readonly kvs: ([string, string, number, number] | [string, string, number, number, string])[];
}

interface View {
  get(key: string): Entry | undefined;
  keysWithPrefix(prefix: string): string[];
  readonly revision: number;
}

interface Plan<T> {
  readonly changes: readonly Change[];
  /** The result, given the store revision once this write is applied. */
  result(revision: number): T;
}

interface PendingWrite {
  plan(view: View, nextRevision: number): Plan<unknown>;
  resolve(value: unknown): void;
  reject(err: unknown): void;
}

interface Watcher {
  readonly prefix: string;
  readonly onEvent: (batch: WatchBatch) => void;
  readonly queue: WatchBatch[];
  scheduled: boolean;
  closed: boolean;
}

interface LeaseState {
  readonly id: string;
  readonly ttlMs: number;
  readonly keys: Set<string>;
  readonly controller: AbortController;
  timer: NodeJS.Timeout | undefined;
  alive: boolean;
}

const LOG = 'store.log';
const SNAPSHOT = 'snapshot.json';
const LOCK = 'lock';
/** Keys in etcd carry the `/backplane/<cluster>/` prefix; counting it here keeps the size limits the same. */
const NOMINAL_PREFIX_BYTES = 64;

export class EmbeddedStore implements Store {
  readonly kind = 'embedded' as const;
  readonly dir: string;
  private readonly limits: StoreLimits;
  private readonly historyEvents: number;
  private readonly snapshotEvery: number;
  private readonly snapshotBytes: number;

  private readonly state = new Map<string, Entry>();
  private revision = 1;
  private readonly history: { revision: number; events: WatchEvent[] }[] = [];
  private historyCount = 0;
  /** Watches starting at or after this revision can be replayed from `history`. */
  private historyStart = 1;
  private readonly watchers = new Set<Watcher>();
  private readonly leases = new Map<string, LeaseState>();

  private log: FileHandle | undefined;
  private logSize = 0;
  private recordsSinceSnapshot = 0;
  private queue: PendingWrite[] = [];
  private flushing: Promise<void> | undefined;
  private broken: StoreError | undefined;
  private closed = false;
  private closing: Promise<void> | undefined;
  private lock: FileHandle | undefined;

  private constructor(opts: EmbeddedStoreOptions) {
    this.dir = opts.dir;
    this.limits = opts.limits ?? DEFAULT_LIMITS;
    this.historyEvents = opts.historyEvents ?? 10_000;
    this.snapshotEvery = opts.snapshotEvery ?? 10_000;
    this.snapshotBytes = opts.snapshotBytes ?? 64 * 1024 * 1024;
  }

  /** Opens (or creates) the store in `opts.dir`. Rejects with reason 'locked' when another process holds it. */
  static async open(opts: EmbeddedStoreOptions): Promise<EmbeddedStore> {
    const store = new EmbeddedStore(opts);
    try {
      await store.load();
    } catch (err) {
      await store.release();
      throw err;
    }
    return store;
  }

  // ---- opening ----

  private async load(): Promise<void> {
    await ensurePrivateDir(this.dir, 'store directory').catch((err: unknown) => {
      if (err instanceof BackplaneError && err.code === 'E_USAGE') throw new StoreError('invalid', err.message, { ...(err.hint !== undefined ? { hint: err.hint } : {}), cause: err });
      throw ioError(err, `creating the store directory ${this.dir}`);
    });
    this.lock = await acquireLock(this.dir);

    let snapshotRevision = 0;
    const snapText = await readFile(join(this.dir, SNAPSHOT), 'utf8').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw ioError(err, `reading the store snapshot in ${this.dir}`);
    });
    if (snapText !== undefined) {
      let snap: Snapshot;
      try {
        snap = JSON.parse(snapText) as Snapshot;
        if (snap.format !== 1 || !Number.isInteger(snap.revision) || !Array.isArray(snap.kvs)) throw new Error('unexpected shape');
      } catch (err) {
        throw new StoreError('corrupt', `store snapshot ${join(this.dir, SNAPSHOT)} is unreadable: ${(err as Error).message}`, {
          hint: 'the snapshot is replaced atomically, so this means outside damage; restore the directory from a backup',
        });
      }
      for (const [key, value, createRevision, modRevision, lease] of snap.kvs) {
        this.state.set(key, { value, createRevision, modRevision, lease });
      }
      this.revision = snap.revision;
      snapshotRevision = snap.revision;
      this.historyStart = snap.revision + 1;
    }

    const logPath = join(this.dir, LOG);
    const created = !(await readFile(logPath).then(
      () => true,
      () => false,
    ));
    this.log = await open(logPath, 'a+', 0o600).catch((err: unknown) => {
      throw ioError(err, `opening the store log ${logPath}`);
    });
    if (created) await syncDirectory(this.dir);
    const content = await this.log.readFile();
    let pos = 0;
    let lineNo = 0;
    while (pos < content.length) {
      const nl = content.indexOf(0x0a, pos);
      // No newline: the append of this record was cut short; it was never acknowledged, so drop it.
      if (nl === -1) break;
      lineNo++;
      const line = content.subarray(pos, nl).toString('utf8');
      let rec: LogRecord;
      try {
        rec = JSON.parse(line) as LogRecord;
        if (!Number.isInteger(rec.r) || !Array.isArray(rec.o)) throw new Error('unexpected shape');
      } catch (err) {
        // A damaged line followed by more data is not a torn append; refuse rather than silently lose later writes.
        if (nl + 1 >= content.length) break;
        throw new StoreError('corrupt', `store log ${logPath} line ${lineNo} is damaged (${(err as Error).message}) and more records follow it`, {
          hint: `writes after the last snapshot (revision ${snapshotRevision}) are in that log; move it aside to open the store at the snapshot, or restore from a backup`,
        });
      }
      pos = nl + 1;
      // Records up to the snapshot are already in it: a crash between the snapshot's rename and the log's truncation.
      if (rec.r <= this.revision) continue;
      if (rec.r !== this.revision + 1) {
        throw new StoreError('corrupt', `store log ${logPath} line ${lineNo} has revision ${rec.r}, expected ${this.revision + 1}`, {
          hint: 'the log and snapshot do not belong together; restore the directory from a backup',
        });
      }
      this.applyRecord(rec.r, decodeOps(rec.o, this.state, rec.r), false);
      this.recordsSinceSnapshot++;
    }
    if (pos < content.length) {
      await this.log.truncate(pos);
      await this.log.datasync();
    }
    this.logSize = pos;

    // Leases of an earlier run are gone: delete their keys, durably, as etcd does after the TTL.
    const orphans = [...this.state].filter(([, e]) => e.lease !== undefined).map(([k]) => k);
    if (orphans.length > 0) {
      await this.enqueue<void>((view) => ({
        changes: orphans.filter((k) => view.get(k)?.lease !== undefined).map((key) => ({ key, entry: null })),
        result: () => undefined,
      }), true);
    }
  }

  // ---- reads ----

  async get(key: string, opts: OpOptions = {}): Promise<KeyValue | undefined> {
    this.checkOpen(opts.signal, 'get');
    validateKey(key);
    const e = this.state.get(key);
    return e === undefined ? undefined : toKV(key, e);
  }

  async list(prefix: string, opts: OpOptions = {}): Promise<{ kvs: KeyValue[]; revision: number }> {
    this.checkOpen(opts.signal, 'list');
    const kvs: KeyValue[] = [];
    for (const [key, e] of this.state) if (key.startsWith(prefix)) kvs.push(toKV(key, e));
    kvs.sort((a, b) => compareKeys(a.key, b.key));
    return { kvs, revision: this.revision };
  }

  // ---- writes ----

  async put(key: string, value: string, opts: OpOptions & { lease?: Lease } = {}): Promise<{ revision: number }> {
    this.checkOpen(opts.signal, 'put');
    validateOps([opts.lease === undefined ? { put: key, value } : { put: key, value, lease: opts.lease }], this.limits, NOMINAL_PREFIX_BYTES);
    const lease = opts.lease?.id;
    return this.enqueue((view, next) => {
      this.checkLease(lease);
      return { changes: [putChange(view, key, value, lease, next)], result: (revision) => ({ revision }) };
    });
  }

  async delete(key: string, opts: OpOptions & { prefix?: boolean } = {}): Promise<{ deleted: number; revision: number }> {
    this.checkOpen(opts.signal, 'delete');
    if (opts.prefix !== true) validateKey(key);
    return this.enqueue((view) => {
      const doomed = opts.prefix === true ? view.keysWithPrefix(key) : view.get(key) === undefined ? [] : [key];
      return { changes: doomed.map((k) => ({ key: k, entry: null })), result: (revision) => ({ deleted: doomed.length, revision }) };
    });
  }

  async cas(key: string, expectedModRevision: number, value: string | null, opts: OpOptions & { lease?: Lease } = {}): Promise<CasResult> {
    this.checkOpen(opts.signal, 'cas');
    if (value === null) validateKey(key);
    else validateOps([{ put: key, value }], this.limits, NOMINAL_PREFIX_BYTES);
    const lease = opts.lease?.id;
    return this.enqueue<CasResult>((view, next) => {
      const cur = view.get(key);
      if ((cur?.modRevision ?? 0) === expectedModRevision) {
        if (value === null) {
          return { changes: cur === undefined ? [] : [{ key, entry: null }], result: (revision) => ({ ok: true, revision }) };
        }
        this.checkLease(lease);
        return { changes: [putChange(view, key, value, lease, next)], result: (revision) => ({ ok: true, revision }) };
      }
      const already = value === null ? cur === undefined : cur !== undefined && cur.value === value && cur.lease === lease;
      if (already) return { changes: [], result: (revision) => ({ ok: true, revision: cur?.modRevision ?? revision }) };
      return { changes: [], result: () => ({ ok: false, current: cur === undefined ? undefined : toKV(key, cur) }) };
    });
  }

  async txn(ops: readonly TxnOp[], opts: TxnOptions = {}): Promise<TxnResult> {
    this.checkOpen(opts.signal, 'txn');
    validateOps(ops, this.limits, NOMINAL_PREFIX_BYTES);
    const compares = opts.if ?? [];
    validateCompares(compares, ops, this.limits);
    return this.enqueue<TxnResult>((view, next) => {
      // Decided in the commit loop against the view that includes every write queued before this one, so the
      // conditions and the writes happen at one revision, as in etcd.
      const failed = compares.filter((c) => !compareHolds(c, view.get(c.key)));
      if (failed.length > 0) {
        const current = (key: string): KeyValue | undefined => {
          const e = view.get(key);
          return e === undefined ? undefined : toKV(key, e);
        };
        const landed = alreadyApplied(ops, current);
        return {
          changes: [],
          result: (revision): TxnResult => (landed === undefined ? { ok: false, revision, failed } : { ok: true, revision: landed }),
        };
      }
      const changes: Change[] = [];
      for (const op of ops) {
        if ('put' in op) {
          this.checkLease(op.lease?.id);
          changes.push(putChange(view, op.put, op.value, op.lease?.id, next));
        } else if (view.get(op.delete) !== undefined) {
          changes.push({ key: op.delete, entry: null });
        }
      }
      return { changes, result: (revision): TxnResult => ({ ok: true, revision }) };
    });
  }

  async compact(revision: number, opts: OpOptions = {}): Promise<void> {
    this.checkOpen(opts.signal, 'compact');
    if (revision > this.revision) {
      throw new StoreError('invalid', `cannot compact the store at revision ${revision}: it is only at revision ${this.revision}`);
    }
    while (this.history.length > 0 && this.history[0]!.revision < revision) this.dropOldestHistory();
    this.historyStart = Math.max(this.historyStart, revision);
  }

  // ---- watches ----

  async watch(prefix: string, fromRevision: number, onEvent: (batch: WatchBatch) => void, signal: AbortSignal): Promise<void> {
    this.checkOpen(signal, 'watch');
    const w: Watcher = { prefix, onEvent, queue: [], scheduled: false, closed: false };
    const from = fromRevision <= 0 ? this.revision + 1 : fromRevision;
    // Registration and replay happen in one synchronous step, so no write can fall between them.
    if (from < this.historyStart) {
      const kvs: KeyValue[] = [];
      for (const [key, e] of this.state) if (key.startsWith(prefix)) kvs.push(toKV(key, e));
      kvs.sort((a, b) => compareKeys(a.key, b.key));
      this.push(w, { type: 'resync', kvs, revision: this.revision });
    } else {
      for (const h of this.history) {
        if (h.revision < from) continue;
        const events = h.events.filter((ev) => eventKey(ev).startsWith(prefix));
        if (events.length > 0) this.push(w, { type: 'events', events, revision: h.revision });
      }
    }
    this.watchers.add(w);
    signal.addEventListener(
      'abort',
      () => {
        w.closed = true;
        this.watchers.delete(w);
      },
      { once: true },
    );
  }

  private push(w: Watcher, batch: WatchBatch): void {
    w.queue.push(batch);
    if (w.scheduled) return;
    w.scheduled = true;
    // Consumers run outside the commit path, so a slow or re-entrant consumer cannot stall or corrupt a write.
    queueMicrotask(() => {
      w.scheduled = false;
      while (!w.closed) {
        const b = w.queue.shift();
        if (b === undefined) break;
        deliver(w.onEvent, b);
      }
    });
  }

  // ---- leases and elections ----

  async lease(ttlMs: number, opts: OpOptions = {}): Promise<Lease> {
    this.checkOpen(opts.signal, 'lease');
    if (!(ttlMs > 0)) throw new StoreError('invalid', `lease TTL must be positive, got ${ttlMs} ms`);
    const id = BigInt(`0x${randomBytes(8).toString('hex')}`) & 0x7fff_ffff_ffff_ffffn;
    const st: LeaseState = { id: id.toString(), ttlMs, keys: new Set(), controller: new AbortController(), timer: undefined, alive: true };
    this.leases.set(st.id, st);
    return {
      id: st.id,
      ttlMs,
      // Kept alive in this process for as long as it lives: renewed now, until released.
      get renewedAt() {
        return st.alive && st.timer === undefined ? Date.now() : 0;
      },
      lost: st.controller.signal,
      revoke: () => this.endLease(st, new StoreError('lease-lost', `lease ${st.id} was revoked`)),
      release: () => {
        if (!st.alive || st.timer !== undefined) return;
        st.timer = setTimeout(() => {
          void this.endLease(st, new StoreError('lease-lost', `lease ${st.id} expired: it was not renewed for ${ttlMs} ms`)).catch(() => undefined);
        }, ttlMs);
      },
    };
  }

  private async endLease(st: LeaseState, reason: StoreError, internal = false): Promise<void> {
    if (!st.alive) return;
    st.alive = false;
    if (st.timer !== undefined) clearTimeout(st.timer);
    this.leases.delete(st.id);
    st.controller.abort(reason);
    if (this.closed && !internal) return;
    await this.enqueue<void>((view) => ({
      changes: [...st.keys].filter((k) => view.get(k)?.lease === st.id).map((key) => ({ key, entry: null })),
      result: () => undefined,
    }), internal);
  }

  private checkLease(id: string | undefined): void {
    if (id === undefined) return;
    if (this.leases.get(id)?.alive !== true) {
      throw new StoreError('lease-lost', `lease ${id} has expired or was revoked`, { hint: 'grant a new lease and put the key again' });
    }
  }

  async campaign(name: string, value: string, ttlMs: number, signal: AbortSignal): Promise<Leadership> {
    this.checkOpen(signal, 'campaign');
    return campaign(this, name, value, ttlMs, signal);
  }

  // ---- health and lifecycle ----

  async health(): Promise<{ ok: boolean; detail: string }> {
    if (this.closed) return { ok: false, detail: `embedded store ${this.dir} is closed` };
    if (this.broken !== undefined) return { ok: false, detail: this.broken.message };
    return { ok: true, detail: `embedded store ${this.dir}: revision ${this.revision}, ${this.state.size} keys, log ${this.logSize} bytes` };
  }

  async close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    // Leases end with the process that held them; deleting their keys now spares the next open from doing it.
    const live = [...this.leases.values()];
    this.closed = true;
    await Promise.all(live.map((st) => this.endLease(st, new StoreError('closed', `lease ${st.id} ended: the store was closed`), true).catch(() => undefined)));
    await this.flushing;
    for (const w of this.watchers) w.closed = true;
    this.watchers.clear();
    await this.release();
  }

  private async release(): Promise<void> {
    this.closed = true;
    await this.log?.close().catch(() => undefined);
    this.log = undefined;
    if (this.lock !== undefined) {
      const lock = this.lock;
      this.lock = undefined;
      // Never unlink a lock file: a process that opened it just before would lock the unlinked inode while a third
      // creates and locks a new one. Emptying it says nobody holds it; closing the last fd drops the flock.
      await lock.truncate(0).catch(() => undefined);
      await lock.close().catch(() => undefined);
    }
  }

  private checkOpen(signal: AbortSignal | undefined, what: string): void {
    if (this.closed) throw new StoreError('closed', `store ${what}: the embedded store ${this.dir} is closed`);
    throwIfAborted(signal, `store ${what}`);
  }

  // ---- the write path ----

  private enqueue<T>(plan: (view: View, nextRevision: number) => Plan<T>, internal = false): Promise<T> {
    if (this.closed && !internal) return Promise.reject(new StoreError('closed', `the embedded store ${this.dir} is closed`));
    if (this.broken !== undefined) return Promise.reject(this.broken);
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ plan, resolve, reject });
      this.flushing ??= this.flushLoop();
    });
  }

  private async flushLoop(): Promise<void> {
    // Yield once so that writes issued in the same tick share one append and one fdatasync.
    await Promise.resolve();
    try {
      while (this.queue.length > 0) {
        const batch = this.queue;
        this.queue = [];
        await this.commit(batch);
        if (this.recordsSinceSnapshot >= this.snapshotEvery || this.logSize >= this.snapshotBytes) await this.snapshot();
      }
    } finally {
      this.flushing = undefined;
    }
  }

  private async commit(batch: PendingWrite[]): Promise<void> {
    const overlay = new Map<string, Entry | null>();
    const state = this.state;
    let revision = this.revision;
    const view: View = {
      get: (key) => (overlay.has(key) ? (overlay.get(key) ?? undefined) : state.get(key)),
      keysWithPrefix: (prefix) => {
        const out: string[] = [];
        for (const k of state.keys()) if (k.startsWith(prefix) && !overlay.has(k)) out.push(k);
        for (const [k, e] of overlay) if (e !== null && k.startsWith(prefix)) out.push(k);
        return out;
      },
      get revision() {
        return revision;
      },
    };
    const records: { revision: number; changes: readonly Change[] }[] = [];
    const outcomes: ({ w: PendingWrite; ok: true; value: unknown } | { w: PendingWrite; ok: false; err: unknown })[] = [];
    for (const w of batch) {
      try {
        const p = w.plan(view, revision + 1);
        if (p.changes.length > 0) {
          revision++;
          records.push({ revision, changes: p.changes });
          for (const c of p.changes) overlay.set(c.key, c.entry);
        }
        outcomes.push({ w, ok: true, value: p.result(revision) });
      } catch (err) {
        outcomes.push({ w, ok: false, err });
      }
    }
    if (records.length > 0) {
      const text = records.map((r) => JSON.stringify({ r: r.revision, o: encodeOps(r.changes) } satisfies LogRecord)).join('\n') + '\n';
      try {
        await this.append(Buffer.from(text, 'utf8'));
      } catch (err) {
        // Nothing was applied in memory, so the store is exactly as before this batch.
        for (const o of outcomes) o.w.reject(o.ok ? err : o.err);
        return;
      }
      for (const r of records) this.applyRecord(r.revision, r.changes, true);
      this.recordsSinceSnapshot += records.length;
    }
    for (const o of outcomes) {
      if (o.ok) o.w.resolve(o.value);
      else o.w.reject(o.err);
    }
  }

  /** Appends and fdatasyncs; on failure cuts the log back to where it was, so no torn record stays in the middle. */
  private async append(buf: Buffer): Promise<void> {
    const log = this.log;
    if (log === undefined) throw new StoreError('closed', `the embedded store ${this.dir} is closed`);
    try {
      let off = 0;
      while (off < buf.length) {
        const { bytesWritten } = await log.write(buf, off, buf.length - off);
        off += bytesWritten;
      }
      await log.datasync();
      this.logSize += buf.length;
    } catch (err) {
      const failure = ioError(err, `writing the store log in ${this.dir}`);
      try {
        await log.truncate(this.logSize);
        await log.datasync();
      } catch (repairErr) {
        this.broken = new StoreError('io', `the store log in ${this.dir} could not be repaired after a failed write (${(repairErr as Error).message}); the store refuses writes`, {
          hint: 'fix the disk, then restart the agent: reopening drops the torn record',
          cause: failure,
        });
      }
      throw failure;
    }
  }

  private applyRecord(revision: number, changes: readonly Change[], live: boolean): void {
    const events: WatchEvent[] = [];
    for (const { key, entry } of changes) {
      const old = this.state.get(key);
      if (old?.lease !== undefined) this.leases.get(old.lease)?.keys.delete(key);
      if (entry === null) {
        this.state.delete(key);
        events.push({ type: 'delete', key, modRevision: revision });
      } else {
        this.state.set(key, entry);
        if (entry.lease !== undefined) this.leases.get(entry.lease)?.keys.add(key);
        events.push({ type: 'put', kv: toKV(key, entry) });
      }
    }
    this.revision = revision;
    this.history.push({ revision, events });
    this.historyCount += events.length;
    while (this.historyCount > this.historyEvents && this.history.length > 1) this.dropOldestHistory();
    if (!live) return;
    for (const w of this.watchers) {
      const mine = events.filter((ev) => eventKey(ev).startsWith(w.prefix));
      if (mine.length > 0) this.push(w, { type: 'events', events: mine, revision });
    }
  }

  private dropOldestHistory(): void {
    const h = this.history.shift();
    if (h === undefined) return;
    this.historyCount -= h.events.length;
    this.historyStart = h.revision + 1;
  }

  /** Writes the whole state to a new snapshot (temp, fsync, rename, fsync dir), then empties the log. */
  private async snapshot(): Promise<void> {
    const log = this.log;
    if (log === undefined) return;
    const kvs: Snapshot['kvs'] = [];
    for (const [key, e] of this.state) {
      // The lease id is kept so that the next open still knows to delete the key.
      kvs.push(e.lease === undefined ? [key, e.value, e.createRevision, e.modRevision] : [key, e.value, e.createRevision, e.modRevision, e.lease]);
    }
    const snap: Snapshot = { format: 1, revision: this.revision, kvs };
    const tmp = join(this.dir, `${SNAPSHOT}.tmp`);
    try {
      const fh = await open(tmp, 'w', 0o600);
      try {
        await fh.writeFile(JSON.stringify(snap));
        await fh.datasync();
      } finally {
        await fh.close();
      }
      await rename(tmp, join(this.dir, SNAPSHOT));
      await syncDirectory(this.dir);
      await log.truncate(0);
      this.logSize = 0;
      this.recordsSinceSnapshot = 0;
      await log.datasync();
    } catch {
      // A failed snapshot loses nothing: the log still holds every write. Try again after another round of writes.
      await rm(tmp, { force: true }).catch(() => undefined);
      this.recordsSinceSnapshot = 0;
    }
  }
}

function putChange(view: View, key: string, value: string, lease: string | undefined, revision: number): Change {
  const old = view.get(key);
  return { key, entry: { value, createRevision: old?.createRevision ?? revision, modRevision: revision, lease } };
}

function encodeOps(changes: readonly Change[]): LoggedOp[] {
  return changes.map(({ key, entry }): LoggedOp => {
    if (entry === null) return ['d', key];
    return entry.lease === undefined ? ['p', key, entry.value] : ['p', key, entry.value, entry.lease];
  });
}

function decodeOps(ops: LoggedOp[], state: Map<string, Entry>, revision: number): Change[] {
  const changes: Change[] = [];
  const seen = new Map<string, Entry | null>();
  for (const op of ops) {
    const key = op[1];
    if (op[0] === 'd') {
      changes.push({ key, entry: null });
      seen.set(key, null);
    } else {
      const prior = seen.has(key) ? seen.get(key) : state.get(key);
      const entry: Entry = { value: op[2], createRevision: prior?.createRevision ?? revision, modRevision: revision, lease: op[3] };
      changes.push({ key, entry });
      seen.set(key, entry);
    }
  }
  return changes;
}

function toKV(key: string, e: Entry): KeyValue {
  return e.lease === undefined
    ? { key, value: e.value, modRevision: e.modRevision, createRevision: e.createRevision }
    : { key, value: e.value, modRevision: e.modRevision, createRevision: e.createRevision, lease: e.lease };
}

function eventKey(ev: WatchEvent): string {
  return ev.type === 'put' ? ev.kv.key : ev.key;
}

function ioError(err: unknown, doing: string): StoreError {
  if (err instanceof StoreError) return err;
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG') {
    return new StoreError('disk-full', `${doing} failed: ${code === 'EFBIG' ? 'file size limit reached' : 'no space left on the device'}; the write was not applied`, {
      hint: 'free disk space; the store stays consistent and accepts writes again once there is room',
      cause: err,
    });
  }
  return new StoreError('io', `${doing} failed: ${(err as Error).message}`, { cause: err });
}

/** flock(1)'s exit status when the lock is held elsewhere (--conflict-exit-code; 75 is EX_TEMPFAIL). */
const LOCK_CONFLICT = 75;

/**
 * Takes the store's lock: flock(LOCK_EX|LOCK_NB) on `<dir>/lock`, held by this process for as long as it lives.
 *
 * Why not an abstract unix socket (what this was before): its name lives in a namespace every local user shares and
 * can be derived from the directory, so a non-root user who binds it first keeps the root agent from ever opening
 * its store, and anyone may connect to a listening one, thousands of times, until the agent runs out of fds.
 * Why not a pid file: a stale one (kill -9) cannot be broken without a race between two agents starting at once.
 * Why not a path socket in the private directory: private, but a stale one after kill -9 has the same race.
 *
 * flock(2) has none of these problems: the kernel drops it when the last fd of the open file description closes,
 * which includes the holder's death by kill -9, so there is never a stale lock; taking it is atomic, so of two
 * agents starting at once exactly one wins; the file is in the 0700 directory and 0600, so no other user can open
 * it; nothing listens. Node has no flock(), so util-linux's flock(1) (Debian-essential) does the call on our fd,
 * passed as its fd 3: a lock belongs to the open file description, not the process, so it stays held by our fd
 * after flock(1) exits (~5-15 ms for the spawn, paid only when the store is opened). Node opens files O_CLOEXEC, so
 * processes the agent starts later (svc services outlive it) do not inherit the fd and cannot keep the lock.
 */
async function acquireLock(dir: string): Promise<FileHandle> {
  const path = join(dir, LOCK);
  let fh: FileHandle;
  try {
    fh = await open(path, fsc.O_RDWR | fsc.O_CREAT | fsc.O_NOFOLLOW, 0o600);
  } catch (err) {
    throw ioError(err, `opening the store lock ${path}`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile() || st.uid !== (process.geteuid?.() ?? 0) || st.nlink !== 1) {
      throw new StoreError('invalid', `the store lock ${path} is not a plain file of the agent's own (uid ${st.uid}, ${st.nlink} links)`, {
        hint: `remove ${path}; the agent creates a new one`,
      });
    }
    if ((st.mode & 0o077) !== 0) await fh.chmod(0o600);
    const status = await runFlock(fh.fd, path);
    if (status === LOCK_CONFLICT) {
      const buf = Buffer.alloc(200);
      const { bytesRead } = await fh.read(buf, 0, buf.length, 0).catch(() => ({ bytesRead: 0 }));
      const pid = /pid (\d+)/.exec(buf.subarray(0, bytesRead).toString('utf8'))?.[1];
      throw new StoreError('locked', `the store in ${dir} is in use by another process${pid === undefined ? '' : ` (pid ${pid})`}`, {
        hint: 'stop the other agent, or give this one a different --state-dir',
      });
    }
    // Only the holder writes here, so a reader finds either nothing (a moment after the lock was taken) or the holder.
    await fh.truncate(0);
    await fh.write(`pid ${process.pid} since ${new Date().toISOString()}\n`, 0);
    return fh;
  } catch (err) {
    await fh.close().catch(() => undefined);
    throw ioError(err, `locking the store directory ${dir}`);
  }
}

/** Runs `flock --exclusive --nonblock 3` with `fd` as its fd 3; resolves with its exit status (0: locked). */
function runFlock(fd: number, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn('flock', ['--exclusive', '--nonblock', '--conflict-exit-code', String(LOCK_CONFLICT), '3'], { stdio: ['ignore', 'ignore', 'pipe', fd] });
    let stderr = '';
    child.stderr?.on('data', (b: Buffer) => (stderr += b.toString()));
    child.once('error', (err: NodeJS.ErrnoException) => {
      reject(
        err.code === 'ENOENT'
          ? new StoreError('io', 'cannot lock the store: flock(1) is not installed', { hint: 'install util-linux (it provides /usr/bin/flock)', cause: err })
          : err,
      );
    });
    child.once('close', (code, signal) => {
      if (code === 0 || code === LOCK_CONFLICT) resolve(code);
      else reject(new StoreError('io', `flock(1) on ${path} failed (${code === null ? `killed by ${signal ?? 'a signal'}` : `status ${code}`}): ${stderr.trim()}`));
    });
  });
}
