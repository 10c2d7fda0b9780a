import { Agent, request, type IncomingMessage } from 'node:http';
import { CONTROL_HEADER, controlSocketPath, fromWire, maxBodyBytes, type ControlOp } from './control-protocol.js';
import {
  DEFAULT_LIMITS,
  StoreError,
  abortedError,
  deliver,
  throwIfAborted,
  validateCompares,
  validateKey,
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
} from './store.js';

/**
 * The embedded store of a running agent, through the agent's control socket (control-server.ts): what the CLI uses
 * when the store is locked by the agent. Reads, writes, fenced transactions, compaction, health and watches go
 * through; leases and elections do not (a lease lives and dies with the process holding it, and the agent cannot
 * keep one alive for a CLI that may vanish), so they reject with reason 'unsupported'.
 *
 * Writes are never retried here: the socket is local, and a write whose answer was lost may have landed.
 */

export interface RemoteStoreOptions {
  /** The socket path; see controlSocketPath(). */
  readonly socketPath: string;
  /** Upper bound for one operation. Default 10 s. */
  readonly timeoutMs?: number;
  readonly limits?: StoreLimits;
}

/** How much of the embedded store's key prefix a key counts for, as in EmbeddedStore (NOMINAL_PREFIX_BYTES). */
const NOMINAL_PREFIX_BYTES = 64;

export class RemoteStore implements Store {
  /** The store behind the socket is the agent's embedded store. */
  readonly kind = 'embedded' as const;
  readonly socketPath: string;
  private readonly timeoutMs: number;
  private readonly limits: StoreLimits;
  private readonly agent = new Agent({ keepAlive: true, maxSockets: 16 });
  private readonly closer = new AbortController();
  private closed = false;

  constructor(opts: RemoteStoreOptions) {
    this.socketPath = opts.socketPath;
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.limits = opts.limits ?? DEFAULT_LIMITS;
  }

  /**
   * The store of the agent that holds the embedded store in `stateDir`, checked to answer. `heldBy`: the 'locked'
   * error that sent us here, so that a failure says both what holds the store and that its socket is silent.
   */
  static async connect(stateDir: string, opts: { heldBy?: StoreError; timeoutMs?: number } = {}): Promise<RemoteStore> {
    const socketPath = controlSocketPath(stateDir);
    const store = new RemoteStore({ socketPath, ...(opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs }) });
    try {
      await store.call('health', { timeoutMs: 2000 });
      return store;
    } catch (err) {
      await store.close();
      if (opts.heldBy === undefined || !(err instanceof StoreError) || (err.reason !== 'unreachable' && err.reason !== 'permission')) throw err;
      throw new StoreError(err.reason, `${opts.heldBy.message}, and its control socket ${socketPath} is not answering: ${err.message}`, {
        hint:
          err.reason === 'permission'
            ? 'run the command as the user the agent runs as (root)'
            : 'the agent serves the socket once it has opened the store; if it is still starting, try again in a moment; an agent of an older version does not serve it: stop it to use the store directly',
        cause: err,
      });
    }
  }

  // ---- reads ----

  async get(key: string, opts: OpOptions = {}): Promise<KeyValue | undefined> {
    validateKey(key);
    return ((await this.call('get', { key }, opts.signal)) as KeyValue | null) ?? undefined;
  }

  async list(prefix: string, opts: OpOptions = {}): Promise<{ kvs: KeyValue[]; revision: number }> {
    return (await this.call('list', { prefix }, opts.signal)) as { kvs: KeyValue[]; revision: number };
  }

  // ---- writes ----

  async put(key: string, value: string, opts: OpOptions & { lease?: Lease } = {}): Promise<{ revision: number }> {
    this.noLease(opts.lease, 'put');
    validateOps([{ put: key, value }], this.limits, NOMINAL_PREFIX_BYTES);
    return (await this.call('put', { key, value }, opts.signal)) as { revision: number };
  }

  async delete(key: string, opts: OpOptions & { prefix?: boolean } = {}): Promise<{ deleted: number; revision: number }> {
    if (opts.prefix !== true) validateKey(key);
    return (await this.call('delete', { key, ...(opts.prefix === undefined ? {} : { prefix: opts.prefix }) }, opts.signal)) as { deleted: number; revision: number };
  }

  async cas(key: string, expectedModRevision: number, value: string | null, opts: OpOptions & { lease?: Lease } = {}): Promise<CasResult> {
    this.noLease(opts.lease, 'cas');
    if (value === null) validateKey(key);
    else validateOps([{ put: key, value }], this.limits, NOMINAL_PREFIX_BYTES);
    const res = (await this.call('cas', { key, expectedModRevision, value }, opts.signal)) as { ok: true; revision: number } | { ok: false; current?: KeyValue | null };
    // JSON has no undefined: an absent current key comes as null or not at all.
    return res.ok ? res : { ok: false, current: res.current ?? undefined };
  }

  async txn(ops: readonly TxnOp[], opts: TxnOptions = {}): Promise<TxnResult> {
    for (const op of ops) if ('put' in op) this.noLease(op.lease, 'txn');
    // Checked here too, so an oversized write fails with the store's own message before it is sent.
    validateOps(ops, this.limits, NOMINAL_PREFIX_BYTES);
    validateCompares(opts.if ?? [], ops, this.limits);
    const wireOps = ops.map((op) => ('put' in op ? { put: op.put, value: op.value } : { delete: op.delete }));
    return (await this.call('txn', { ops: wireOps, ...(opts.if === undefined ? {} : { if: opts.if }) }, opts.signal)) as TxnResult;
  }

  async compact(revision: number, opts: OpOptions = {}): Promise<void> {
    await this.call('compact', { revision }, opts.signal);
  }

  // ---- leases and elections: not through the socket ----

  async lease(): Promise<Lease> {
    throw this.unsupported('a lease');
  }

  async campaign(): Promise<Leadership> {
    throw this.unsupported('a campaign in an election');
  }

  private noLease(lease: Lease | undefined, what: string): void {
    if (lease !== undefined) throw this.unsupported(`a ${what} with a lease`);
  }

  private unsupported(what: string): StoreError {
    return new StoreError('unsupported', `${what} is not available through the agent's control socket ${this.socketPath}`, {
      hint: 'a lease lives and dies with the process that holds it; only the agent that owns the embedded store can hold one',
    });
  }

  // ---- health and lifecycle ----

  async health(opts: OpOptions & { timeoutMs?: number } = {}): Promise<{ ok: boolean; detail: string }> {
    if (this.closed) return { ok: false, detail: `the connection to the control socket ${this.socketPath} is closed` };
    try {
      const h = (await this.call('health', opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs }, opts.signal)) as { ok: boolean; detail: string };
      return { ok: h.ok, detail: `${h.detail}, through ${this.socketPath}` };
    } catch (err) {
      if (err instanceof StoreError && err.reason === 'unreachable') return { ok: false, detail: err.message };
      throw err;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.closer.abort(new StoreError('closed', `the connection to the control socket ${this.socketPath} was closed`));
    this.agent.destroy();
  }

  // ---- watches ----

  /**
   * Resolves once the agent's store has the watch in place. If the connection drops (the agent restarts), it
   * reconnects from the revision after the last batch delivered, as the other stores do across outages; the
   * agent's store replays from there or sends a resync.
   */
  async watch(prefix: string, fromRevision: number, onEvent: (batch: WatchBatch) => void, signal: AbortSignal): Promise<void> {
    this.checkOpen(signal, 'watch');
    const done = AbortSignal.any([signal, this.closer.signal]);
    let next = fromRevision;
    const onBatch = (batch: WatchBatch): void => {
      next = batch.revision + 1;
      deliver(onEvent, batch);
    };
    const first = await this.openWatch(prefix, next, onBatch, done);
    next = first.from;
    void (async () => {
      let ended = first.ended;
      for (let delay = 100; ; delay = Math.min(delay * 2, 2000)) {
        await ended;
        if (done.aborted) return;
        await new Promise((r) => setTimeout(r, delay));
        if (done.aborted) return;
        try {
          const again = await this.openWatch(prefix, next, onBatch, done);
          ended = again.ended;
          delay = 50;
        } catch {
          ended = Promise.resolve();
        }
      }
    })();
  }

  /** One watch stream. Resolves when established with where it starts and a promise that settles when it ends. */
  private openWatch(prefix: string, fromRevision: number, onBatch: (b: WatchBatch) => void, done: AbortSignal): Promise<{ from: number; ended: Promise<void> }> {
    return new Promise((resolve, reject) => {
      const req = this.send('watch', { prefix, fromRevision }, done, { timeoutMs: this.timeoutMs, stream: true });
      req.on('error', (err) => reject(this.transportError(err, 'watch', done)));
      req.on('response', (res) => {
        if (res.statusCode !== 200 || res.headers[CONTROL_HEADER] === undefined) {
          void this.readAnswer(res).then(reject, reject);
          return;
        }
        req.setTimeout(0);
        let buf = '';
        let established = false;
        const ended = new Promise<void>((end) => {
          res.on('close', () => end());
          res.on('error', () => end());
        });
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          buf += chunk;
          for (let nl = buf.indexOf('\n'); nl !== -1; nl = buf.indexOf('\n')) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            if (done.aborted) return;
            let msg: { established?: number; batch?: WatchBatch };
            try {
              msg = JSON.parse(line) as typeof msg;
            } catch {
              res.destroy();
              return;
            }
            if (!established && typeof msg.established === 'number') {
              established = true;
              resolve({ from: msg.established + 1, ended });
            } else if (msg.batch !== undefined) {
              onBatch(msg.batch);
            }
          }
        });
        res.on('close', () => {
          if (!established) reject(new StoreError('unreachable', `the watch through the control socket ${this.socketPath} ended before it was established`));
        });
      });
    });
  }

  // ---- plumbing ----

  private checkOpen(signal: AbortSignal | undefined, what: string): void {
    if (this.closed) throw new StoreError('closed', `store ${what}: the connection to the control socket ${this.socketPath} is closed`);
    throwIfAborted(signal, `store ${what}`);
  }

  /** One request and its answer: the result, or the StoreError the agent's store threw. */
  private call(op: ControlOp, body: object, signal?: AbortSignal): Promise<unknown> {
    this.checkOpen(signal, op);
    const all = signal === undefined ? this.closer.signal : AbortSignal.any([signal, this.closer.signal]);
    return new Promise((resolve, reject) => {
      const req = this.send(op, body, all, { timeoutMs: this.timeoutMs, stream: false });
      req.on('error', (err) => reject(this.transportError(err, op, all)));
      req.on('response', (res) => void this.readAnswer(res).then(resolve, reject));
    });
  }

  private send(op: ControlOp, body: object, signal: AbortSignal, opts: { timeoutMs: number; stream: boolean }) {
    const text = JSON.stringify(body);
    const bytes = Buffer.byteLength(text);
    if (bytes > maxBodyBytes(this.limits)) {
      // Only values full of control characters get here past validateOps (JSON writes each as \u00XX).
      throw new StoreError('too-large', `the ${op} request is ${bytes} bytes once encoded for the control socket; it may carry at most ${maxBodyBytes(this.limits)}`, {
        hint: 'store large or binary content elsewhere and put a reference in the store',
      });
    }
    const req = request({
      socketPath: this.socketPath,
      path: `/v1/${op}`,
      method: 'POST',
      agent: opts.stream ? false : this.agent,
      headers: { 'content-type': 'application/json', 'content-length': bytes },
      signal,
    });
    req.setTimeout(opts.timeoutMs, () => req.destroy(new StoreError('unreachable', `store ${op}: the agent's control socket ${this.socketPath} did not answer within ${opts.timeoutMs} ms`)));
    req.end(text);
    return req;
  }

  private async readAnswer(res: IncomingMessage): Promise<unknown> {
    const chunks: Buffer[] = [];
    for await (const c of res) chunks.push(c as Buffer);
    if (res.headers[CONTROL_HEADER] === undefined) {
      throw new StoreError('unreachable', `${this.socketPath} answered, but not as a Backplane agent's control socket (HTTP ${res.statusCode ?? '?'})`, {
        hint: 'something else is listening on that path; stop it or remove the socket, then restart the agent',
      });
    }
    let msg: { result?: unknown; error?: unknown };
    try {
      msg = JSON.parse(Buffer.concat(chunks).toString('utf8')) as typeof msg;
    } catch (err) {
      throw new StoreError('io', `the control socket ${this.socketPath} sent an answer that is not JSON`, { cause: err });
    }
    if (res.statusCode !== 200 || msg.error !== undefined) throw fromWire(msg.error, this.socketPath);
    return msg.result;
  }

  private transportError(err: Error, op: string, signal: AbortSignal): StoreError {
    if (err instanceof StoreError) return err;
    if (signal.aborted) return abortedError(signal, `store ${op}`);
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM') {
      return new StoreError('permission', `store ${op}: no permission to connect to the agent's control socket ${this.socketPath}`, {
        hint: 'run the command as the user the agent runs as (root)',
        cause: err,
      });
    }
    const why = code === 'ENOENT' ? 'it does not exist' : code === 'ECONNREFUSED' ? 'nothing is listening on it' : err.message;
    return new StoreError('unreachable', `store ${op}: the agent's control socket ${this.socketPath} is not answering (${why})`, {
      hint: 'is the agent running with this --state-dir?',
      cause: err,
    });
  }
}
