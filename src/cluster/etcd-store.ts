import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { rootCertificates } from 'node:tls';
import { ConsecutiveBreaker, ExponentialBackoff, circuitBreaker, handleWhen, isBrokenCircuitError, noop, retry, type IBackoff } from 'cockatiel';
import {
  ClientClosedError,
  Etcd3,
  EtcdAuthenticationFailedError,
  EtcdPermissionDeniedError,
  EtcdLeaseInvalidError,
  GRPCCancelledError,
  isRecoverableError,
  type ICompare,
  type IKeyValue,
  type IOptions,
  type IRequestOp,
  type IWatchResponse,
  type Lease as EtcdLease,
  type Watcher,
} from 'etcd3';
import { campaign } from './election.js';
import { clusterRoot, prefixEnd } from './keys.js';
import {
  DEFAULT_LIMITS,
  StoreError,
  abortedError,
  alreadyApplied,
  compareHolds,
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
 * The store on etcd 3.4+, through etcd3 1.1.2. Every key lives under `/backplane/<cluster>/`.
 *
 * Client settings (after FACTS.md, "etcd3 client settings that survived a partition test"): a 1 s deadline per unary
 * attempt, so a black-holed member costs at most a second per call; with several endpoints a breaker that stops
 * using a host after one connection failure (tried again after 1 s); retries with backoff on other hosts within the
 * overall bound; gRPC keepalive for streams,
 * but no more often than etcd tolerates (see keepaliveMs: the 1 s of FACTS.md gets connections reset by etcd 3.4 at
 * its default --grpc-keepalive-min-time, which with a one-failure breaker blocks healthy members). On top of that every operation has an overall
 * bound (`opTimeoutMs`), so with no member reachable an operation rejects with reason 'unreachable' instead of
 * hanging; watches and leases keep retrying in the background and resume when etcd is back.
 *
 * A retried put or txn whose first attempt did commit (its answer was lost with a dying member) is applied twice:
 * same value, two revisions, two watch events. cas is protected against this (see Store.cas).
 *
 * Lease TTLs are whole seconds in etcd: a TTL is rounded up to seconds, and etcd raises it to its minimum,
 * ceil(1.5 * election timeout) — 2 s at etcd's default timings, 1 s with `--election-timeout 250`. `Lease.ttlMs`
 * reports what etcd granted. A lease counts as lost as soon as no keep-alive has been acknowledged for a whole TTL,
 * measured from when the keep-alive was sent, so we give up no later than etcd does.
 */

export interface EtcdStoreOptions {
  /** Client URLs of the members, e.g. `http://10.0.0.1:2379`. */
  readonly endpoints: readonly string[];
  /** The cluster's name: keys live under `/backplane/<cluster>/`. */
  readonly cluster: string;
  /** Upper bound for one operation, retries included. Default 3000 ms. */
  readonly opTimeoutMs?: number;
  /**
   * gRPC keepalive ping interval, which bounds how long a watch or lease stream to a black-holed member goes
   * unnoticed. Default 6000 ms: etcd closes connections that ping more often than its --grpc-keepalive-min-time
   * (5 s by default) with GOAWAY "too_many_pings", which costs every call in flight on it. Lower it only together
   * with that etcd flag.
   */
  readonly keepaliveMs?: number;
  readonly limits?: StoreLimits;
  /** TLS towards etcd (the endpoints must then be https URLs). See docs/etcd-security.md. */
  readonly tls?: EtcdTlsOptions;
  /** etcd's own users: authenticate as this user (etcd roles then limit which keys it may touch). */
  readonly auth?: EtcdAuthOptions;
}

export interface EtcdTlsOptions {
  /** PEM file of the CA that signed the members' server certificates. Default: the CAs Node trusts. */
  readonly caFile?: string;
  /** PEM client certificate and its key, for etcd's --client-cert-auth (mutual TLS). Both or neither. */
  readonly certFile?: string;
  readonly keyFile?: string;
}

export interface EtcdAuthOptions {
  readonly user: string;
  readonly password: string;
}

/** What TLS and auth settings turn into: etcd3's credentials, and the names error messages use. */
interface Security {
  readonly credentials: IOptions['credentials'];
  readonly auth: EtcdAuthOptions | undefined;
  readonly tls: EtcdTlsOptions | undefined;
  /** Who etcd sees: the user, else the client certificate's CN (etcd's user when no password is given). */
  readonly principal: string | undefined;
}

function readPem(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new StoreError('invalid', `cannot read the etcd ${what} ${file}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

function security(endpoints: readonly string[], tls: EtcdTlsOptions | undefined, auth: EtcdAuthOptions | undefined): Security {
  if (auth !== undefined && (auth.user === '' || auth.password === '')) {
    throw new StoreError('invalid', 'etcd authentication needs a user name and a non-empty password');
  }
  if (tls === undefined || (tls.caFile === undefined && tls.certFile === undefined && tls.keyFile === undefined)) {
    return { credentials: undefined, auth, tls: undefined, principal: auth?.user };
  }
  const plain = endpoints.filter((e) => !e.startsWith('https://'));
  if (plain.length > 0) {
    throw new StoreError('invalid', `etcd TLS options are set, but ${plain.join(', ')} ${plain.length === 1 ? 'is' : 'are'} not an https:// URL`, {
      hint: 'give the etcd client URLs as https://host:port',
    });
  }
  if ((tls.certFile === undefined) !== (tls.keyFile === undefined)) {
    throw new StoreError('invalid', 'an etcd client certificate needs its key, and a key its certificate', { hint: 'pass both --etcd-cert and --etcd-key' });
  }
  const rootCertificate = tls.caFile === undefined ? Buffer.from(rootCertificates.join('\n')) : readPem(tls.caFile, 'CA file');
  let principal = auth?.user;
  let credentials: NonNullable<IOptions['credentials']> = { rootCertificate };
  if (tls.certFile !== undefined && tls.keyFile !== undefined) {
    const certChain = readPem(tls.certFile, 'client certificate');
    credentials = { rootCertificate, certChain, privateKey: readPem(tls.keyFile, 'client key') };
    if (principal === undefined) {
      try {
        const cn = /(?:^|\n)CN=([^\n]*)/.exec(new X509Certificate(certChain).subject)?.[1];
        if (cn !== undefined) principal = `${cn} (the CN of ${tls.certFile})`;
      } catch (err) {
        throw new StoreError('invalid', `the etcd client certificate ${tls.certFile} is not a PEM certificate`, { cause: err });
      }
    }
  }
  return { credentials, auth, tls, principal };
}

/** A failed TLS handshake, as grpc-js reports it (inside an UNAVAILABLE error). Retrying does not fix it. */
function tlsFailure(message: string): boolean {
  return /certificate|SSL routines|ssl3_|tlsv1|alert|handshake|self[- ]signed|CERT_|wrong version number/i.test(message);
}

const ATTEMPT_DEADLINE_MS = 1000;

/**
 * What counts against a host: only failures of the connection to it. Not etcd's own answers ("etcdserver: no
 * leader", "leader changed", "request timed out" during an election are the cluster's state, and every healthy
 * member gives them at once: a one-failure breaker would then lock out the whole cluster for 5 s). Not a stream we
 * cancel ourselves either, which etcd3 reports as a failure of its host when the last watch on a stream ends.
 */
function hostFailure(err: Error): boolean {
  return isRecoverableError(err) && !(err instanceof GRPCCancelledError) && !err.message.includes('etcdserver:');
}

/**
 * `faultTolerant`: retries with backoff, and with several hosts a breaker that skips a host for 1 s after a
 * connection failure, so a black-holed member costs one deadline per second rather than one per call. FACTS.md's
 * 5 s is too long here: when the leader dies, calls on the healthy followers time out too (they were forwarded to
 * the dead leader), and 5 s of every breaker open is 5 s without a store. With a single host the breaker would only
 * turn one failed call into refusals, so it is left out.
 */
function clientOptions(hosts: string[], faultTolerant: boolean, keepaliveMs: number, sec: Security): IOptions {
  return {
    hosts,
    ...(sec.credentials === undefined ? {} : { credentials: sec.credentials }),
    ...(sec.auth === undefined ? {} : { auth: { username: sec.auth.user, password: sec.auth.password } }),
    grpcOptions: {
      'grpc.keepalive_time_ms': keepaliveMs,
      'grpc.keepalive_timeout_ms': 2000,
      // etcd only accepts pings while a stream is open (and no more often than --grpc-keepalive-min-time).
      'grpc.keepalive_permit_without_calls': 0,
      // grpc-js refuses replies over 4 MiB by default, which a large list would exceed.
      'grpc.max_receive_message_length': 256 * 1024 * 1024,
    },
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + ATTEMPT_DEADLINE_MS }),
    faultHandling: faultTolerant
      ? {
          host: () =>
            hosts.length > 1 ? circuitBreaker(handleWhen(hostFailure), { halfOpenAfter: 1000, breaker: new ConsecutiveBreaker(1) }) : noop,
          // Backing off rides through an election (~0.3 s with fast timings, ~1-2.5 s at etcd's defaults) within
          // the overall bound, where immediate retries would all hit "no leader".
          // When every breaker is open (a dying leader makes calls on healthy followers time out too), waiting for
          // the first half-open beats failing at once.
          // A failed TLS handshake comes as a recoverable UNAVAILABLE, but no retry fixes a certificate.
          global: retry(handleWhen((e) => (isRecoverableError(e) && !tlsFailure(e.message)) || isBrokenCircuitError(e)), {
            maxAttempts: 8,
            backoff: new ExponentialBackoff({ initialDelay: 50, maxDelay: 500 }),
          }),
          // etcd3 declares this as a backoff but uses it as a backoff factory (it calls next() for the first delay).
          // The default grows to 30 s, far too slow to resume watches after an outage.
          watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 2000 }) as unknown as IBackoff<unknown>,
        }
      : { host: () => noop, global: noop },
  };
}

export class EtcdStore implements Store {
  readonly kind = 'etcd' as const;
  readonly endpoints: readonly string[];
  readonly root: string;
  private readonly rootBytes: Buffer;
  private readonly client: Etcd3;
  private readonly opTimeoutMs: number;
  private readonly keepaliveMs: number;
  private readonly limits: StoreLimits;
  private readonly leases = new Set<{ end: () => Promise<void> }>();
  private readonly watches = new Set<AbortController>();
  private readonly probes = new Map<string, Etcd3>();
  private readonly security: Security;
  private closed = false;
  private closing: Promise<void> | undefined;

  constructor(opts: EtcdStoreOptions) {
    if (opts.endpoints.length === 0) throw new StoreError('invalid', 'the etcd store needs at least one endpoint');
    this.endpoints = [...opts.endpoints];
    this.root = clusterRoot(opts.cluster);
    this.rootBytes = Buffer.from(this.root);
    this.opTimeoutMs = opts.opTimeoutMs ?? 3000;
    this.limits = opts.limits ?? DEFAULT_LIMITS;
    this.keepaliveMs = opts.keepaliveMs ?? 6000;
    this.security = security(opts.endpoints, opts.tls, opts.auth);
    this.client = this.newClient();
  }

  private newClient(): Etcd3 {
    return new Etcd3(clientOptions([...this.endpoints], true, this.keepaliveMs, this.security));
  }

  private full(key: string): Buffer {
    return Buffer.concat([this.rootBytes, Buffer.from(key)]);
  }

  private kv(raw: IKeyValue): KeyValue {
    const key = raw.key.subarray(this.rootBytes.length).toString('utf8');
    const base = { key, value: raw.value.toString('utf8'), modRevision: Number(raw.mod_revision), createRevision: Number(raw.create_revision) };
    return raw.lease === '0' || raw.lease === '' ? base : { ...base, lease: raw.lease };
  }

  // ---- reads ----

  async get(key: string, opts: OpOptions = {}): Promise<KeyValue | undefined> {
    validateKey(key);
    const res = await this.call('get', opts.signal, () => this.client.kv.range({ key: this.full(key) }), `read key "${key}"`);
    const raw = res.kvs[0];
    return raw === undefined ? undefined : this.kv(raw);
  }

  async list(prefix: string, opts: OpOptions = {}): Promise<{ kvs: KeyValue[]; revision: number }> {
    const key = this.full(prefix);
    const res = await this.call('list', opts.signal, () =>
      this.client.kv.range({ key, range_end: prefixEnd(key), sort_order: 'Ascend', sort_target: 'Key' }),
      `read the keys under "${prefix}"`,
    );
    return { kvs: res.kvs.map((raw) => this.kv(raw)), revision: Number(res.header.revision) };
  }

  // ---- writes ----

  async put(key: string, value: string, opts: OpOptions & { lease?: Lease } = {}): Promise<{ revision: number }> {
    validateOps([{ put: key, value }], this.limits, this.rootBytes.length);
    const res = await this.call('put', opts.signal, () =>
      this.client.kv.put({ key: this.full(key), value: Buffer.from(value), ...(opts.lease === undefined ? {} : { lease: opts.lease.id }) }),
      `write key "${key}"`,
    );
    return { revision: Number(res.header.revision) };
  }

  async delete(key: string, opts: OpOptions & { prefix?: boolean } = {}): Promise<{ deleted: number; revision: number }> {
    if (opts.prefix !== true) validateKey(key);
    const k = this.full(key);
    const res = await this.call('delete', opts.signal, () =>
      this.client.kv.deleteRange(opts.prefix === true ? { key: k, range_end: prefixEnd(k) } : { key: k }),
      opts.prefix === true ? `delete the keys under "${key}"` : `delete key "${key}"`,
    );
    return { deleted: Number(res.deleted), revision: Number(res.header.revision) };
  }

  async cas(key: string, expectedModRevision: number, value: string | null, opts: OpOptions & { lease?: Lease } = {}): Promise<CasResult> {
    if (value === null) validateKey(key);
    else validateOps([{ put: key, value }], this.limits, this.rootBytes.length);
    const k = this.full(key);
    const op: IRequestOp =
      value === null
        ? { request_delete_range: { key: k } }
        : { request_put: { key: k, value: Buffer.from(value), ...(opts.lease === undefined ? {} : { lease: opts.lease.id }) } };
    const res = await this.call('cas', opts.signal, () =>
      this.client.kv.txn({
        compare: [{ key: k, target: 'Mod', result: 'Equal', mod_revision: expectedModRevision }],
        success: [op],
        failure: [{ request_range: { key: k } }],
      }),
      `write key "${key}"`,
    );
    if (res.succeeded) return { ok: true, revision: Number(res.header.revision) };
    const raw = res.responses[0]?.response_range.kvs[0];
    const current = raw === undefined ? undefined : this.kv(raw);
    // A retried attempt whose first try committed fails its comparison; the key holding our value tells it apart.
    const already = value === null ? current === undefined : current !== undefined && current.value === value && current.lease === opts.lease?.id;
    if (already) return { ok: true, revision: current?.modRevision ?? Number(res.header.revision) };
    return { ok: false, current };
  }

  async txn(ops: readonly TxnOp[], opts: TxnOptions = {}): Promise<TxnResult> {
    validateOps(ops, this.limits, this.rootBytes.length);
    const compares = opts.if ?? [];
    validateCompares(compares, ops, this.limits);
    const success: IRequestOp[] = ops.map((op) =>
      'put' in op
        ? { request_put: { key: this.full(op.put), value: Buffer.from(op.value), ...(op.lease === undefined ? {} : { lease: op.lease.id }) } }
        : { request_delete_range: { key: this.full(op.delete) } },
    );
    // etcd compares revisions as given, and an absent key has create and mod revision 0: `absent` is "== 0".
    const compare: ICompare[] = compares.map((c) =>
      'createRevision' in c
        ? { key: this.full(c.key), target: 'Create', result: 'Equal', create_revision: c.createRevision }
        : 'modRevision' in c
          ? { key: this.full(c.key), target: 'Mod', result: 'Equal', mod_revision: c.modRevision }
          : { key: this.full(c.key), target: 'Create', result: 'Equal', create_revision: 0 },
    );
    // When a condition fails, read back the compared and the written keys in the same request: which conditions
    // failed, and whether a retried attempt finds its own first attempt already applied (see Store.txn).
    const readBack = [...new Set([...compares.map((c) => c.key), ...ops.map((op) => ('put' in op ? op.put : op.delete))])];
    const failure: IRequestOp[] = compare.length === 0 ? [] : readBack.map((key) => ({ request_range: { key: this.full(key) } }));
    const names = ops.map((op) => `"${'put' in op ? op.put : op.delete}"`);
    const target = `write ${names.length === 1 ? 'key' : 'keys'} ${names.slice(0, 5).join(', ')}${names.length > 5 ? ` and ${names.length - 5} more` : ''}`;
    const res = await this.call('txn', opts.signal, () => this.client.kv.txn({ compare, success, failure }), target);
    const revision = Number(res.header.revision);
    if (res.succeeded) return { ok: true, revision };
    const current = new Map<string, KeyValue>();
    for (const r of res.responses) {
      const raw = r.response_range?.kvs[0];
      if (raw !== undefined) current.set(this.kv(raw).key, this.kv(raw));
    }
    const landed = alreadyApplied(ops, (key) => current.get(key));
    if (landed !== undefined) return { ok: true, revision: landed };
    return { ok: false, revision, failed: compares.filter((c) => !compareHolds(c, current.get(c.key))) };
  }

  async compact(revision: number, opts: OpOptions = {}): Promise<void> {
    try {
      await this.call('compact', opts.signal, () => this.client.kv.compact({ revision: String(revision), physical: false }));
    } catch (err) {
      // Compacting where etcd already compacted is a no-op, as in the embedded store.
      if (err instanceof StoreError && err.reason === 'compacted') return;
      throw err;
    }
  }

  // ---- watches ----

  async watch(prefix: string, fromRevision: number, onEvent: (batch: WatchBatch) => void, signal: AbortSignal): Promise<void> {
    this.checkOpen(signal, 'watch');
    const stop = new AbortController();
    this.watches.add(stop);
    const done = AbortSignal.any([signal, stop.signal]);
    const keyPrefix = this.full(prefix);
    /** The next revision to deliver; 0 until etcd tells us the current revision. */
    let next = fromRevision > 0 ? fromRevision : 0;
    let current: Watcher | undefined;
    let established: (() => void) | undefined;
    let failEstablish: ((err: StoreError) => void) | undefined;
    /**
     * With etcd users, each watch has a client of its own. etcd checks the auth token of a watch stream when a watch
     * is created on it, and etcd3 opens (and reopens) streams with the token it last got, which expires (simple
     * tokens after --auth-token-ttl, 5 min by default, or when a member restarts): a new or resumed watch on such a
     * stream is cancelled with "invalid auth token", again and again. A fresh client authenticates afresh. Watches
     * already running are not affected by the expiry, and unary calls re-authenticate on their own.
     */
    const ownClient = this.security.auth !== undefined;
    let watchClient = ownClient ? this.newClient() : this.client;

    const cancel = (w: Watcher | undefined): void => {
      if (w !== undefined) void w.cancel().catch(() => undefined);
    };

    const onData = (res: IWatchResponse): void => {
      if (done.aborted || res.events.length === 0) return;
      // One batch per revision, as the embedded store delivers them.
      let batch: WatchEvent[] = [];
      let batchRev = 0;
      for (const ev of res.events) {
        const kv = this.kv(ev.kv);
        if (kv.modRevision !== batchRev && batch.length > 0) {
          deliver(onEvent, { type: 'events', events: batch, revision: batchRev });
          batch = [];
        }
        batchRev = kv.modRevision;
        batch.push(ev.type === 'Put' ? { type: 'put', kv } : { type: 'delete', key: kv.key, modRevision: kv.modRevision });
      }
      if (batch.length > 0) deliver(onEvent, { type: 'events', events: batch, revision: batchRev });
      next = batchRev + 1;
    };

    /**
     * After etcd cancelled the watch: etcd 3.4 gives no reason when the start revision was compacted, so ask with a
     * range read at that revision. Compacted: hand over the current set and carry on after it. Otherwise: watch
     * again from where we are. Retries while etcd is unreachable.
     */
    const recover = async (): Promise<void> => {
      for (let delay = 100; !done.aborted; delay = Math.min(delay * 2, 2000)) {
        try {
          if (next > 0) {
            await this.call(
              'watch',
              done,
              () => watchClient.kv.range({ key: keyPrefix, range_end: prefixEnd(keyPrefix), revision: String(next), limit: 1, keys_only: true }),
              `watch the keys under "${prefix}"`,
            );
          } else {
            await this.call('watch', done, () => watchClient.kv.range({ key: keyPrefix, range_end: prefixEnd(keyPrefix), limit: 1, keys_only: true }), `watch the keys under "${prefix}"`);
          }
        } catch (err) {
          if (err instanceof StoreError && (err.reason === 'permission' || err.reason === 'auth' || err.reason === 'tls') && failEstablish !== undefined) {
            // Still establishing: the caller hears why. (Once running, the watch keeps trying, as for an outage.)
            failEstablish(err);
            return;
          }
          if (err instanceof StoreError && err.reason === 'compacted') {
            try {
              const { kvs, revision } = await this.list(prefix, { signal: done });
              if (done.aborted) return;
              deliver(onEvent, { type: 'resync', kvs, revision });
              next = revision + 1;
            } catch {
              await new Promise((r) => setTimeout(r, delay));
              continue;
            }
          } else if (!(err instanceof StoreError && err.reason === 'invalid')) {
            // ('invalid': a future revision, fine to watch from.) Anything else: etcd unreachable; try again.
            await new Promise((r) => setTimeout(r, delay));
            continue;
          }
        }
        if (!done.aborted) current = start();
        return;
      }
    };

    const start = (): Watcher => {
      const builder = watchClient.watch().prefix(keyPrefix);
      if (next > 0) builder.startRevision(String(next));
      const w = builder.watcher();
      // etcd3 resumes from the revision after the last response header, which on a create response is the current
      // revision even when older events have not arrived yet; resume from what we actually delivered instead.
      // (etcd3 passes w.request, typed as the outer request; set the field on w.request itself.)
      w.on('connecting', () => {
        if (next > 0) w.request.start_revision = String(next);
      });
      w.on('connected', (res) => {
        if (next === 0) next = Number(res.header.revision) + 1;
        established?.();
      });
      w.on('data', onData);
      // A stream that cannot even be opened (TLS refused, credentials refused) is retried by etcd3 without an
      // 'error'; while establishing, such a configuration mistake is the caller's answer.
      w.on('disconnected', (err: Error) => {
        if (failEstablish === undefined) return;
        const mapped = this.mapError(err, 'watch', `watch the keys under "${prefix}"`);
        if (mapped.reason === 'auth' || mapped.reason === 'tls' || mapped.reason === 'permission') failEstablish(mapped);
      });
      w.on('error', (err: Error) => {
        if (w !== current || done.aborted) return;
        current = undefined;
        if (ownClient && /invalid auth token/.test(err.message)) {
          watchClient.close();
          watchClient = this.newClient();
        }
        void recover();
      });
      return w;
    };

    done.addEventListener(
      'abort',
      () => {
        this.watches.delete(stop);
        cancel(current);
        current = undefined;
        if (ownClient) watchClient.close();
      },
      { once: true },
    );

    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(this.unreachable('watch', new Error(`no watch stream within ${this.opTimeoutMs} ms`))),
          this.opTimeoutMs,
        );
        established = () => {
          clearTimeout(timer);
          resolve();
        };
        failEstablish = (err) => {
          clearTimeout(timer);
          reject(err);
        };
        done.addEventListener('abort', () => reject(abortedError(done, 'store watch')), { once: true });
        current = start();
      });
    } catch (err) {
      stop.abort(err);
      throw err;
    } finally {
      established = undefined;
      failEstablish = undefined;
    }
  }

  // ---- leases and elections ----

  async lease(ttlMs: number, opts: OpOptions = {}): Promise<Lease> {
    this.checkOpen(opts.signal, 'lease');
    if (!(ttlMs > 0)) throw new StoreError('invalid', `lease TTL must be positive, got ${ttlMs} ms`);
    const ttlSeconds = Math.max(1, Math.ceil(ttlMs / 1000));
    const inner: EtcdLease = this.client.lease(ttlSeconds, { autoKeepAlive: true });
    const controller = new AbortController();
    let id = '';
    let granted = ttlSeconds * 1000;
    let expiry: NodeJS.Timeout | undefined;
    // Send times of keep-alives not yet acknowledged; the oldest is when etcd last restarted the TTL, at the latest.
    let inFlight: number[] = [];
    let lastRenew = Date.now();
    const tracker = { end: async (): Promise<void> => undefined };

    const lose = (why: string, cause?: unknown): void => {
      if (controller.signal.aborted) return;
      if (expiry !== undefined) clearTimeout(expiry);
      this.leases.delete(tracker);
      inner.release();
      controller.abort(new StoreError('lease-lost', `lease ${id} lost: ${why}`, { cause }));
    };
    const arm = (): void => {
      if (expiry !== undefined) clearTimeout(expiry);
      // A little early, so a late timer on a busy event loop still fires before etcd expires the lease.
      const margin = Math.min(500, granted / 10);
      expiry = setTimeout(() => lose(`no keep-alive acknowledged by etcd for ${granted} ms`), Math.max(0, lastRenew + granted - margin - Date.now()));
    };
    inner.on('keepaliveEstablished', () => {
      inFlight = [];
    });
    inner.on('keepaliveFired', () => inFlight.push(Date.now()));
    inner.on('keepaliveSucceeded', (res) => {
      lastRenew = inFlight.shift() ?? lastRenew;
      // What etcd actually granted (it raises a TTL below its minimum): known from the first keep-alive, sent right
      // after the grant. Until then the TTL asked for stands, which is never longer than the one granted, so the
      // lease is never believed alive longer than etcd keeps it.
      granted = Number(res.TTL) * 1000;
      if (!controller.signal.aborted) arm();
    });
    inner.on('lost', (err) => lose(err.message, err));

    const sentAt = Date.now();
    try {
      id = await this.call('lease grant', opts.signal, () => inner.grant(), 'grant a lease');
      lastRenew = sentAt;
    } catch (err) {
      inner.release();
      throw err;
    }
    // Not waiting for that first keep-alive: it is a round trip (more on a busy machine) before every registration
    // and every election campaign, and nothing needs the granted TTL before it arrives.
    arm();
    tracker.end = async () => {
      if (expiry !== undefined) clearTimeout(expiry);
      controller.abort(new StoreError('lease-lost', `lease ${id} was revoked`));
      this.leases.delete(tracker);
      // Also for a lease we count as lost: etcd may still hold it (and its keys) until its own TTL runs out.
      await this.call('lease revoke', undefined, () => inner.revoke(), `revoke lease ${id} (etcd requires write permission on every key attached to it)`);
    };
    this.leases.add(tracker);
    return {
      id,
      get ttlMs() {
        return granted;
      },
      get renewedAt() {
        return lastRenew;
      },
      lost: controller.signal,
      revoke: () => tracker.end(),
      release: () => {
        // Stop renewing; etcd expires the lease after its TTL and our timer reports the loss at about that time.
        this.leases.delete(tracker);
        inner.release();
      },
    };
  }

  async campaign(name: string, value: string, ttlMs: number, signal: AbortSignal): Promise<Leadership> {
    this.checkOpen(signal, 'campaign');
    return campaign(this, name, value, ttlMs, signal);
  }

  // ---- health and lifecycle ----

  /**
   * Asks every endpoint for its status (each bounded by `timeoutMs`, default 1000). Healthy when more than half of
   * the endpoints answer, one of them knows a leader, and none reports an alarm (such as NOSPACE).
   */
  async health(opts: OpOptions & { timeoutMs?: number } = {}): Promise<{ ok: boolean; detail: string }> {
    this.checkOpen(opts.signal, 'health');
    const timeoutMs = opts.timeoutMs ?? 1000;
    const results = await Promise.all(
      this.endpoints.map(async (ep) => {
        let probe = this.probes.get(ep);
        if (probe === undefined) {
          probe = new Etcd3(clientOptions([ep], false, this.keepaliveMs, this.security));
          this.probes.set(ep, probe);
        }
        const p = probe;
        try {
          const st = await withTimeout(p.maintenance.status({ deadline: Date.now() + timeoutMs }), timeoutMs, opts.signal);
          return { ep, ok: true as const, leader: st.leader, member: st.header.member_id, revision: Number(st.header.revision), version: st.version, errors: st.errors ?? [] };
        } catch (err) {
          return { ep, ok: false as const, error: err instanceof Error ? err.message : String(err) };
        }
      }),
    );
    const up = results.filter((r) => r.ok);
    const withLeader = up.find((r) => r.leader !== '0' && r.leader !== '');
    const alarms = up.flatMap((r) => r.errors.map((e) => `${r.ep}: ${e}`));
    const ok = up.length * 2 > this.endpoints.length && withLeader !== undefined && alarms.length === 0;
    const parts = [`${up.length}/${this.endpoints.length} etcd endpoints answered`];
    if (withLeader !== undefined) parts.push(`leader ${withLeader.leader}, revision ${withLeader.revision}, etcd ${withLeader.version}`);
    else if (up.length > 0) parts.push('no leader');
    for (const r of results) if (!r.ok) parts.push(`${r.ep}: ${r.error}`);
    parts.push(...alarms);
    return { ok, detail: parts.join('; ') };
  }

  async close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    // Revoke first: a clean shutdown hands leadership and membership over at once instead of after the TTL.
    await Promise.all([...this.leases].map((l) => withTimeout(l.end(), 1000, undefined).catch(() => undefined)));
    this.closed = true;
    for (const w of this.watches) w.abort(new StoreError('closed', 'the etcd store was closed'));
    this.watches.clear();
    for (const p of this.probes.values()) p.close();
    this.probes.clear();
    this.client.close();
  }

  // ---- plumbing ----

  private checkOpen(signal: AbortSignal | undefined, what: string): void {
    if (this.closed) throw new StoreError('closed', `store ${what}: the etcd store is closed`);
    throwIfAborted(signal, `store ${what}`);
  }

  /**
   * Runs one etcd call under the overall bound, the caller's signal, and error translation. `target` says what the
   * call does to which keys ("write key \"nodes/a\""), for permission errors.
   */
  private call<T>(what: string, signal: AbortSignal | undefined, fn: () => Promise<T>, target?: string): Promise<T> {
    this.checkOpen(signal, what);
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const finish = (err: StoreError | undefined, value?: T): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        if (err === undefined) resolve(value as T);
        else reject(err);
      };
      const onAbort = (): void => finish(abortedError(signal!, `store ${what}`));
      const timer = setTimeout(() => finish(this.unreachable(what, new Error(`no answer within ${this.opTimeoutMs} ms`))), this.opTimeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      fn().then(
        (v) => finish(undefined, v),
        (err: unknown) => finish(this.mapError(err, what, target)),
      );
    });
  }

  /** Errors of TLS and of etcd's users: configuration mistakes, each said plainly with what to do about it. */
  private securityError(err: unknown, message: string, what: string, target: string | undefined): StoreError | undefined {
    const sec = this.security;
    const who = sec.principal === undefined ? 'this client' : `etcd user "${sec.principal}"`;
    if (err instanceof EtcdPermissionDeniedError || /etcdserver: permission denied/.test(message)) {
      const action = target === undefined ? `${what}` : target;
      return new StoreError('permission', `store ${what}: permission denied: ${who} may not ${action} in ${this.root}`, {
        hint:
          sec.principal === undefined
            ? 'etcd has authentication enabled: pass --etcd-user and a password (--etcd-password-file or BACKPLANE_ETCD_PASSWORD); see docs/etcd-security.md'
            : `a host may only write its own keys; "backplane cluster etcd-roles --host <host>" prints the etcd roles a host needs (docs/etcd-security.md)`,
        cause: err,
      });
    }
    if (err instanceof EtcdAuthenticationFailedError || /authentication failed/.test(message)) {
      return new StoreError('auth', `store ${what}: etcd refused ${who}: wrong user name or password`, {
        hint: 'check --etcd-user and the password (--etcd-password-file or BACKPLANE_ETCD_PASSWORD)',
        cause: err,
      });
    }
    if (/user name is empty|authentication is not enabled|invalid auth token|auth.*(?:revision|mgmt)/i.test(message)) {
      return new StoreError('auth', `store ${what}: etcd did not accept the credentials of ${who} (${message})`, {
        hint:
          sec.auth === undefined
            ? 'etcd has authentication enabled: pass --etcd-user and a password (--etcd-password-file or BACKPLANE_ETCD_PASSWORD), or a client certificate whose CN is an etcd user'
            : 'check --etcd-user and the password, and that etcd has authentication enabled',
        cause: err,
      });
    }
    if (!tlsFailure(message)) return undefined;
    const eps = this.endpoints.join(', ');
    if (/does not match certificate|altnames|Hostname\/IP/i.test(message)) {
      return new StoreError('tls', `store ${what}: the TLS certificate of etcd ${eps} is not valid for that address (${message})`, {
        hint: "give the URLs by a name or IP that is in the etcd server certificate's subjectAltName, or reissue the certificate",
        cause: err,
      });
    }
    if (/verify|self[- ]signed|unknown ca|issuer|UNABLE_TO|CERT_UNTRUSTED/i.test(message)) {
      return new StoreError('tls', `store ${what}: certificate verify failed: the server certificate of etcd ${eps} is not trusted (${message})`, {
        hint:
          sec.tls?.caFile === undefined
            ? "pass the CA that signed the etcd members' certificates with --etcd-ca"
            : `the CA in ${sec.tls.caFile} did not sign the certificate etcd presents; pass the CA named in etcd's --cert-file chain`,
        cause: err,
      });
    }
    if (/bad certificate|certificate required|alert number (?:42|116)|unknown ca|alert/i.test(message)) {
      return new StoreError('tls', `store ${what}: etcd ${eps} refused this client's TLS certificate (${message})`, {
        hint:
          sec.tls?.certFile === undefined
            ? 'etcd requires client certificates (--client-cert-auth): pass --etcd-cert and --etcd-key'
            : `etcd does not trust ${sec.tls.certFile}: it must be signed by the CA in etcd's --trusted-ca-file, and be valid for client authentication`,
        cause: err,
      });
    }
    if (/wrong version number|packet length/i.test(message)) {
      return new StoreError('tls', `store ${what}: etcd ${eps} does not speak TLS on that port (${message})`, {
        hint: 'use http:// URLs for an etcd without TLS, or the https:// client port of a TLS etcd',
        cause: err,
      });
    }
    return new StoreError('tls', `store ${what}: TLS with etcd ${eps} failed (${message})`, { hint: 'see docs/etcd-security.md', cause: err });
  }

  private unreachable(what: string, cause: unknown): StoreError {
    const detail = cause instanceof Error ? cause.message : String(cause);
    return new StoreError('unreachable', `store unreachable: ${what} failed on etcd ${this.endpoints.join(', ')} (${detail})`, {
      hint: 'check that the etcd members are running and reachable from this host; the agent resumes when they are',
      cause,
    });
  }

  private mapError(err: unknown, what: string, target: string | undefined): StoreError {
    if (err instanceof StoreError) return err;
    const message = err instanceof Error ? err.message : String(err);
    const security = this.securityError(err, message, what, target);
    if (security !== undefined) return security;
    if (err instanceof EtcdLeaseInvalidError || /lease not found/.test(message)) {
      return new StoreError('lease-lost', `store ${what}: the lease has expired or was revoked`, { hint: 'grant a new lease and put the key again', cause: err });
    }
    if (err instanceof ClientClosedError) return new StoreError('closed', `store ${what}: the etcd store is closed`, { cause: err });
    if (/request is too large|too many operations|larger than max/i.test(message)) {
      return new StoreError('too-large', `store ${what}: etcd refused the request as too large (${message})`, { cause: err });
    }
    if (/duplicate key/.test(message)) return new StoreError('invalid', `store ${what}: ${message}`, { cause: err });
    if (/required revision has been compacted/.test(message)) return new StoreError('compacted', `store ${what}: ${message}`, { cause: err });
    if (/future revision/.test(message)) return new StoreError('invalid', `store ${what}: ${message}`, { cause: err });
    if (/database space exceeded|NOSPACE/i.test(message)) {
      return new StoreError('disk-full', `store ${what}: etcd is out of space (${message})`, {
        hint: 'compact and defragment etcd, raise --quota-backend-bytes, then disarm the NOSPACE alarm',
        cause: err,
      });
    }
    if (isBrokenCircuitError(err) || (err instanceof Error && isRecoverableError(err)) || /No connection|connect|UNAVAILABLE|deadline/i.test(message)) {
      return this.unreachable(what, err);
    }
    return new StoreError('io', `store ${what} failed on etcd: ${message}`, { cause: err });
  }
}

async function withTimeout<T>(p: Promise<T>, ms: number, signal: AbortSignal | undefined): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
        if (signal !== undefined) {
          onAbort = () => reject(abortedError(signal, 'store health'));
          signal.addEventListener('abort', onAbort, { once: true });
        }
      }),
    ]);
  } finally {
    clearTimeout(timer);
    if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort);
  }
}
