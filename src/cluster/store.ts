import { BackplaneError, type ErrorCode } from '../errors.js';

/**
 * The cluster store: a small, typed key-value interface with revisions, watches, leases and elections, implemented by
 * an embedded single-host store and by etcd. Keys are relative to the store's namespace (one cluster, see keys.ts);
 * a store never hands out or accepts a key outside it. Revisions follow etcd: one counter for the whole store, bumped
 * once per write that changed something; an empty store is at revision 1.
 */

export interface KeyValue {
  readonly key: string;
  readonly value: string;
  /** Revision of the last write to this key. */
  readonly modRevision: number;
  /** Revision at which the key was created (since it last did not exist). */
  readonly createRevision: number;
  /** Id of the lease the key is attached to; the key is deleted when the lease ends. */
  readonly lease?: string;
}

export type WatchEvent =
  | { readonly type: 'put'; readonly kv: KeyValue }
  | { readonly type: 'delete'; readonly key: string; readonly modRevision: number };

/**
 * What a watch delivers, in revision order. `events`: changes under the prefix (each revision's changes together).
 * `resync`: the watch could not replay from the revision asked for (the store compacted past it, or the history
 * ring of the embedded store no longer reaches back that far), so here is the whole current set under the prefix at
 * `revision`; a consumer replaces its view with it (diffing if it cares what changed). Events after a resync have
 * revisions above it.
 */
export type WatchBatch =
  | { readonly type: 'events'; readonly events: readonly WatchEvent[]; readonly revision: number }
  | { readonly type: 'resync'; readonly kvs: readonly KeyValue[]; readonly revision: number };

export interface Lease {
  /** Store-specific id (etcd: the decimal lease id). */
  readonly id: string;
  /** The TTL actually granted, which can be longer than asked for (etcd rounds up to whole seconds and its minimum). */
  readonly ttlMs: number;
  /**
   * Aborted when the lease has ended for any reason: expired (keep-alives failed for longer than its TTL, or it was
   * released), revoked, or the store closed. The reason is a StoreError. Keys put with this lease are gone, or will
   * be within the TTL, once it aborts.
   */
  readonly lost: AbortSignal;
  /**
   * Wall-clock ms no later than the moment the store last restarted the lease's TTL (etcd: when the acknowledged
   * keep-alive was sent). The lease cannot expire before renewedAt + ttlMs, which is what lets an agent's fence kill
   * its instances before the store lets the controller replace them (see src/agent/instances.ts).
   */
  readonly renewedAt: number;
  /** Ends the lease now; its keys are deleted. Resolves also when the lease had already ended. */
  revoke(): Promise<void>;
  /** Stops renewing without revoking, as a crashed holder would: the lease and its keys expire after the TTL. */
  release(): void;
}

export interface Leadership {
  /** The candidate key in the election prefix; its value is the leader's value. */
  readonly key: string;
  readonly lease: Lease;
  /** Aborted when leadership ends: the lease was lost, the key was deleted behind our back, or resign() was called. */
  readonly lost: AbortSignal;
  /**
   * Gives up leadership now (revokes the lease; under a lease shared with other records, deletes the candidate key),
   * so another candidate takes over without waiting for the TTL.
   */
  resign(): Promise<void>;
}

export type TxnOp =
  | { readonly put: string; readonly value: string; readonly lease?: Lease }
  | { readonly delete: string };

export type CasResult =
  | { readonly ok: true; readonly revision: number }
  /** `current` is what the key holds now (undefined: absent), so a read-modify-write loop needs no extra get. */
  | { readonly ok: false; readonly current: KeyValue | undefined };

export interface OpOptions {
  readonly signal?: AbortSignal;
}

/**
 * A condition of a fenced transaction, on one key. Exactly one of:
 * - `createRevision: n`: the key exists and was created at revision n (a lease-held election key keeps its
 *   createRevision for as long as its holder leads, and a new candidate's key gets a new one: the fencing token);
 * - `modRevision: n`: the key exists and was last written at revision n (optimistic concurrency on a record read);
 * - `absent: true`: the key does not exist.
 * A revision of 0 also means "absent", as in etcd and Store.cas.
 */
export type TxnCompare =
  | { readonly key: string; readonly createRevision: number }
  | { readonly key: string; readonly modRevision: number }
  | { readonly key: string; readonly absent: true };

export interface TxnOptions extends OpOptions {
  /** Conditions that must all hold for the operations to be applied; otherwise nothing is written. */
  readonly if?: readonly TxnCompare[];
}

/**
 * `ok: false`: a condition of `if` did not hold and nothing was written; `revision` is the store's revision at which
 * that was decided, `failed` the conditions that did not hold. A transaction without `if` is always `ok: true`.
 */
export type TxnResult =
  | { readonly ok: true; readonly revision: number }
  | { readonly ok: false; readonly revision: number; readonly failed: readonly TxnCompare[] };

export interface Store {
  readonly kind: 'embedded' | 'etcd';
  get(key: string, opts?: OpOptions): Promise<KeyValue | undefined>;
  /** Every key starting with `prefix` ('' = all), sorted by key, and the revision the list was read at. */
  list(prefix: string, opts?: OpOptions): Promise<{ kvs: KeyValue[]; revision: number }>;
  put(key: string, value: string, opts?: OpOptions & { lease?: Lease }): Promise<{ revision: number }>;
  /** Deletes `key`, or every key starting with it when `prefix` is set. */
  delete(key: string, opts?: OpOptions & { prefix?: boolean }): Promise<{ deleted: number; revision: number }>;
  /**
   * Compare-and-swap on the key's modRevision (0 = the key must not exist). `value` null deletes the key. When the
   * comparison fails but the key already holds exactly `value` (or is absent, for a delete), it reports success: a
   * retried request whose first attempt landed must not look like a lost race. Use writer-specific values when a cas
   * decides ownership.
   */
  cas(key: string, expectedModRevision: number, value: string | null, opts?: OpOptions & { lease?: Lease }): Promise<CasResult>;
  /**
   * Several puts and deletes applied atomically at one revision. Limited like etcd's defaults (128 operations,
   * about 1.5 MiB per request, no key twice): over a limit it rejects with a StoreError naming the limit. Use
   * writeInChunks() when atomicity is not needed.
   *
   * With `opts.if` the operations are applied only when every condition holds, decided at the same revision
   * (a fenced write: `if (!(await store.txn(plan, { if: [{ key: leaderKey, createRevision: epoch }] })).ok)` means
   * deposed, and nothing was written). The conditions' keys together with the operations' keys count against the
   * operation limit (a failed transaction reads them back, in the same request). As with cas, when a condition fails
   * but every put key already holds exactly the value (and lease) of this transaction, all at one revision, and every
   * deleted key is absent, it reports success: a retried request whose first attempt landed (etcd) must not look
   * like a lost race. So put writer-specific values (an epoch, a host name) in fenced transactions.
   */
  txn(ops: readonly TxnOp[], opts?: TxnOptions): Promise<TxnResult>;
  /**
   * Watches every key under `prefix`, delivering changes with revision >= `fromRevision` (0 = from now on), so a
   * consumer that listed at revision R and watches from R + 1 misses nothing. Resolves once established; then keeps
   * going across reconnections (resuming after the last revision delivered) until `signal` aborts. When the history
   * is gone it delivers a `resync` batch instead. `onEvent` runs in order, one batch at a time, and must not throw
   * (an exception is re-thrown asynchronously, since swallowing it would hide a consumer bug).
   */
  watch(prefix: string, fromRevision: number, onEvent: (batch: WatchBatch) => void, signal: AbortSignal): Promise<void>;
  /** Grants a lease kept alive until revoked, released, or lost. See Lease. */
  lease(ttlMs: number, opts?: OpOptions): Promise<Lease>;
  /**
   * Campaigns in election `name` (see election.ts): resolves once this candidate is the leader; the oldest candidate
   * wins, the others queue. Rejects with reason 'aborted' when `signal` aborts first (the candidacy is withdrawn).
   */
  campaign(name: string, value: string, ttlMs: number, signal: AbortSignal): Promise<Leadership>;
  /** Discards the history before `revision`: watches from earlier revisions get a resync. */
  compact(revision: number, opts?: OpOptions): Promise<void>;
  health(opts?: OpOptions & { timeoutMs?: number }): Promise<{ ok: boolean; detail: string }>;
  /** Revokes the leases this store granted, ends its watches, and releases its resources. Idempotent. */
  close(): Promise<void>;
}

/** Why a store operation failed; `retryable` tells whether trying again later can help. */
export type StoreErrorReason =
  | 'unreachable'
  | 'too-large'
  | 'invalid'
  | 'locked'
  | 'disk-full'
  | 'io'
  | 'corrupt'
  | 'closed'
  | 'aborted'
  | 'lease-lost'
  | 'compacted'
  /** The store behind this handle cannot do that (a lease or an election through the agent's control socket). */
  | 'unsupported'
  /** etcd refused the credentials: wrong user or password, or no user while etcd has authentication enabled. */
  | 'auth'
  /** The etcd user may not read or write that key (etcd's "permission denied"). */
  | 'permission'
  /** The TLS handshake with etcd failed: an untrusted server certificate, or etcd refused our client certificate. */
  | 'tls';

const CODES: Record<StoreErrorReason, ErrorCode> = {
  unreachable: 'E_TIMEOUT',
  'too-large': 'E_USAGE',
  invalid: 'E_USAGE',
  locked: 'E_USAGE',
  'disk-full': 'E_IO',
  io: 'E_IO',
  corrupt: 'E_IO',
  closed: 'E_ABORTED',
  aborted: 'E_ABORTED',
  'lease-lost': 'E_IO',
  compacted: 'E_IO',
  auth: 'E_USAGE',
  permission: 'E_USAGE',
  tls: 'E_USAGE',
  unsupported: 'E_USAGE',
};

const RETRYABLE: ReadonlySet<StoreErrorReason> = new Set(['unreachable', 'disk-full', 'io', 'lease-lost', 'compacted']);

export class StoreError extends BackplaneError {
  readonly reason: StoreErrorReason;
  constructor(reason: StoreErrorReason, message: string, opts: { hint?: string; cause?: unknown } = {}) {
    super(CODES[reason], message, { hint: opts.hint, cause: opts.cause, retryable: RETRYABLE.has(reason) });
    this.name = 'StoreError';
    this.reason = reason;
  }
}

export function isStoreError(err: unknown, reason?: StoreErrorReason): err is StoreError {
  return err instanceof StoreError && (reason === undefined || err.reason === reason);
}

/** etcd's defaults (`--max-txn-ops 128`, `--max-request-bytes 1.5 MiB`); the embedded store enforces the same. */
export interface StoreLimits {
  readonly maxTxnOps: number;
  readonly maxRequestBytes: number;
}

export const DEFAULT_LIMITS: StoreLimits = { maxTxnOps: 128, maxRequestBytes: 1_572_864 };

/**
 * Room left for the request's framing: etcd measures the encoded protobuf, which adds a few bytes per field; 64 per
 * operation plus 4 KiB for the request is comfortably more than that.
 */
const OP_OVERHEAD = 64;
const REQUEST_OVERHEAD = 4096;

function opBytes(op: TxnOp, keyPrefixBytes: number): number {
  if ('put' in op) return keyPrefixBytes + Buffer.byteLength(op.put) + Buffer.byteLength(op.value) + OP_OVERHEAD;
  return keyPrefixBytes + Buffer.byteLength(op.delete) + OP_OVERHEAD;
}

function opKey(op: TxnOp): string {
  return 'put' in op ? op.put : op.delete;
}

export function validateKey(key: string, what = 'key'): void {
  if (typeof key !== 'string' || key === '') {
    throw new StoreError('invalid', `store ${what} must be a non-empty string`, { hint: 'build keys with the helpers in src/cluster/keys.ts' });
  }
}

/**
 * Checks a write against the limits before it is sent, so an oversized write fails with a message that names the
 * key and the limit instead of etcd's bare "request is too large". `keyPrefixBytes`: the namespace prefix that the
 * backend adds to every key.
 */
export function validateOps(ops: readonly TxnOp[], limits: StoreLimits, keyPrefixBytes: number): void {
  if (ops.length === 0) throw new StoreError('invalid', 'a store transaction needs at least one operation');
  if (ops.length > limits.maxTxnOps) {
    throw new StoreError('too-large', `a store transaction has ${ops.length} operations; the limit is ${limits.maxTxnOps}`, {
      hint: 'split it with writeInChunks() if the writes need not be atomic, or raise etcd --max-txn-ops',
    });
  }
  const seen = new Set<string>();
  let total = REQUEST_OVERHEAD;
  for (const op of ops) {
    const key = opKey(op);
    validateKey(key);
    if (seen.has(key)) {
      throw new StoreError('invalid', `a store transaction touches key "${key}" twice`, { hint: 'etcd refuses duplicate keys in one transaction; merge the operations' });
    }
    seen.add(key);
    const bytes = opBytes(op, keyPrefixBytes);
    if (bytes + REQUEST_OVERHEAD > limits.maxRequestBytes) {
      throw new StoreError('too-large', `value for store key "${key}" is ${bytes - OP_OVERHEAD} bytes; one request may carry at most ${limits.maxRequestBytes - REQUEST_OVERHEAD - OP_OVERHEAD} bytes`, {
        hint: 'store large content elsewhere (a file, an artifact URL) and put a reference in the store',
      });
    }
    total += bytes;
  }
  if (total > limits.maxRequestBytes) {
    throw new StoreError('too-large', `a store transaction of ${ops.length} operations is about ${total} bytes; one request may carry at most ${limits.maxRequestBytes}`, {
      hint: 'split it with writeInChunks() if the writes need not be atomic',
    });
  }
}

/**
 * Checks the conditions of a fenced transaction (see Store.txn): well-formed, and within the operation limit
 * together with the operations' keys. Call after validateOps.
 */
export function validateCompares(compares: readonly TxnCompare[], ops: readonly TxnOp[], limits: StoreLimits): void {
  const keys = new Set(ops.map(opKey));
  for (const c of compares) {
    validateKey(c.key, 'key of a transaction condition');
    const given = (['createRevision', 'modRevision', 'absent'] as const).filter((f) => f in c);
    if (given.length !== 1) {
      throw new StoreError('invalid', `a transaction condition on "${c.key}" must give exactly one of createRevision, modRevision, absent (got ${given.length === 0 ? 'none' : given.join(', ')})`);
    }
    if ('absent' in c && c.absent !== true) throw new StoreError('invalid', `a transaction condition on "${c.key}" has absent: ${String(c.absent)}; only absent: true means anything`);
    const rev = 'createRevision' in c ? c.createRevision : 'modRevision' in c ? c.modRevision : 0;
    if (!Number.isSafeInteger(rev) || rev < 0) {
      throw new StoreError('invalid', `a transaction condition on "${c.key}" compares with revision ${String(rev)}; a revision is a non-negative integer`);
    }
    keys.add(c.key);
  }
  if (keys.size > limits.maxTxnOps) {
    throw new StoreError('too-large', `a fenced store transaction touches ${keys.size} distinct keys in its operations and conditions; the limit is ${limits.maxTxnOps}`, {
      hint: 'a failed fenced transaction reads every one of those keys back in the same request; split the operations into smaller fenced transactions',
    });
  }
}

/** Whether `c` holds for `kv` (undefined: the key is absent). */
export function compareHolds(c: TxnCompare, kv: { createRevision: number; modRevision: number } | undefined): boolean {
  if ('absent' in c) return kv === undefined;
  if ('createRevision' in c) return c.createRevision === 0 ? kv === undefined : kv?.createRevision === c.createRevision;
  return c.modRevision === 0 ? kv === undefined : kv?.modRevision === c.modRevision;
}

/**
 * After a failed condition: whether the store already holds exactly what `ops` write (each put key our value and
 * lease, all at one revision; each deleted key absent), i.e. a retried request whose first attempt landed. A
 * transaction of deletes only cannot be told apart from someone else's delete, so it never counts as landed.
 * Returns that revision, or undefined.
 */
export function alreadyApplied(ops: readonly TxnOp[], current: (key: string) => KeyValue | undefined): number | undefined {
  let revision: number | undefined;
  for (const op of ops) {
    const kv = current(opKey(op));
    if ('delete' in op) {
      if (kv !== undefined) return undefined;
      continue;
    }
    if (kv === undefined || kv.value !== op.value || kv.lease !== op.lease?.id) return undefined;
    if (revision !== undefined && kv.modRevision !== revision) return undefined;
    revision = kv.modRevision;
  }
  return revision;
}

/**
 * Writes many operations as a sequence of transactions that each fit the limits. Not atomic as a whole: a failure
 * part-way leaves the earlier chunks applied (each chunk is atomic). Resolves with the revision of the last chunk.
 */
export async function writeInChunks(
  store: Store,
  ops: readonly TxnOp[],
  opts: OpOptions & { limits?: StoreLimits; keyPrefixBytes?: number } = {},
): Promise<{ revision: number }> {
  const limits = opts.limits ?? DEFAULT_LIMITS;
  const prefixBytes = opts.keyPrefixBytes ?? 256;
  let chunk: TxnOp[] = [];
  let bytes = REQUEST_OVERHEAD;
  let keys = new Set<string>();
  let revision = 0;
  const flush = async (): Promise<void> => {
    if (chunk.length === 0) return;
    const r = await store.txn(chunk, opts.signal === undefined ? {} : { signal: opts.signal });
    revision = r.revision;
    chunk = [];
    bytes = REQUEST_OVERHEAD;
    keys = new Set();
  };
  for (const op of ops) {
    const b = opBytes(op, prefixBytes);
    // A key written twice goes in a later chunk, so the later operation still wins.
    if (chunk.length >= limits.maxTxnOps || bytes + b > limits.maxRequestBytes || keys.has(opKey(op))) await flush();
    chunk.push(op);
    keys.add(opKey(op));
    bytes += b;
  }
  await flush();
  return { revision };
}

export function abortedError(signal: AbortSignal, what: string): StoreError {
  const reason: unknown = signal.reason;
  if (reason instanceof StoreError) return reason;
  return new StoreError('aborted', `${what} was cancelled`, { cause: reason });
}

export function throwIfAborted(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted === true) throw abortedError(signal, what);
}

/** Calls a watch consumer; an exception is re-thrown outside the store's own code paths (see Store.watch). */
export function deliver(onEvent: (batch: WatchBatch) => void, batch: WatchBatch): void {
  try {
    onEvent(batch);
  } catch (err) {
    setImmediate(() => {
      throw err;
    });
  }
}

/** Key order as etcd sorts it: by UTF-8 bytes (string comparison agrees for ASCII, which is what keys.ts produces). */
export function compareKeys(a: string, b: string): number {
  // eslint-disable-next-line no-control-regex
  if (/[^\x00-\x7f]/.test(a) || /[^\x00-\x7f]/.test(b)) return Buffer.compare(Buffer.from(a), Buffer.from(b));
  return a < b ? -1 : a > b ? 1 : 0;
}
