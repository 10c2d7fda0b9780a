import type { Store } from '../cluster/store.js';
import type { Metrics, StoreOp } from './metrics.js';

/**
 * The store with each request timed into backplane_store_request_duration_seconds{op}. Watches and campaigns are
 * long-lived and passed through untimed; so is close.
 */
export function timedStore(store: Store, metrics: Metrics): Store {
  const timed =
    <A extends unknown[], R>(op: StoreOp, fn: (...args: A) => Promise<R>) =>
    async (...args: A): Promise<R> => {
      const t0 = performance.now();
      try {
        const r = await fn(...args);
        metrics.storeRequest(op, (performance.now() - t0) / 1000);
        return r;
      } catch (err) {
        metrics.storeRequest(op, (performance.now() - t0) / 1000, err);
        throw err;
      }
    };
  return {
    kind: store.kind,
    get: timed('get', (key, opts) => store.get(key, opts)),
    list: timed('list', (prefix, opts) => store.list(prefix, opts)),
    put: timed('put', (key, value, opts) => store.put(key, value, opts)),
    delete: timed('delete', (key, opts) => store.delete(key, opts)),
    cas: timed('cas', (key, rev, value, opts) => store.cas(key, rev, value, opts)),
    txn: timed('txn', (ops, opts) => store.txn(ops, opts)),
    lease: timed('lease', (ttlMs, opts) => store.lease(ttlMs, opts)),
    compact: timed('compact', (revision, opts) => store.compact(revision, opts)),
    health: timed('health', (opts) => store.health(opts)),
    watch: (prefix, from, onEvent, signal) => store.watch(prefix, from, onEvent, signal),
    campaign: (name, value, ttlMs, signal) => store.campaign(name, value, ttlMs, signal),
    close: () => store.close(),
  };
}
