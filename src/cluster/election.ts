import { keys } from './keys.js';
import { StoreError, abortedError, type KeyValue, type Lease, type Leadership, type Store, type WatchBatch } from './store.js';

/**
 * Leader election on top of any Store, the algorithm of etcd's concurrency package: each candidate puts
 * `election/<name>/<lease id>` attached to its own lease; the candidate whose key has the lowest createRevision is
 * the leader; the others wait until every older key is gone (resigned, or the holder's lease expired). Only one
 * watch per candidate, on the election prefix, so no herd of re-lists when a leader goes.
 */
export async function campaign(store: Store, name: string, value: string, ttlMs: number, signal: AbortSignal, shared?: Lease): Promise<Leadership> {
  if (signal.aborted) throw abortedError(signal, `campaign in election "${name}"`);
  const prefix = keys.election(name);
  // `shared`: a lease the caller keeps alive for more than this (the agent's membership lease), as etcd's own
  // concurrency.Session serves elections and locks alike. Leadership then ends with it, and resigning deletes the
  // candidate key instead of revoking the lease. Campaigning again under the same lease puts the same key: one left
  // over by a failed resign is taken back (as etcd's Campaign does), not waited on for ever.
  const lease = shared ?? (await store.lease(ttlMs, { signal }));
  const key = prefix + lease.id;
  // Ends the watch when leadership ends (or the campaign is withdrawn), and every wait below.
  const stop = new AbortController();
  const keyGone = new AbortController();
  const lost = AbortSignal.any([lease.lost, keyGone.signal, stop.signal]);
  // However leadership ends, the watch that follows the election ends with it.
  lost.addEventListener('abort', () => stop.abort(lost.reason), { once: true });
  const withdraw = async (): Promise<void> => {
    stop.abort(new StoreError('aborted', `left election "${name}"`));
    if (shared === undefined) await lease.revoke().catch(() => undefined);
    else if (!lease.lost.aborted) await store.delete(key).catch(() => undefined);
  };
  try {
    const { revision: myRevision } = await store.put(key, value, { lease, signal });
    const candidates = new Map<string, number>();
    let wake: (() => void) | undefined;
    let sawMine = false;
    const onBatch = (batch: WatchBatch): void => {
      if (batch.type === 'resync') {
        candidates.clear();
        for (const kv of batch.kvs) candidates.set(kv.key, kv.createRevision);
      } else {
        for (const ev of batch.events) {
          if (ev.type === 'put') candidates.set(ev.kv.key, ev.kv.createRevision);
          else candidates.delete(ev.key);
        }
      }
      if (candidates.has(key)) sawMine = true;
      else if (sawMine) keyGone.abort(new StoreError('lease-lost', `our candidate key ${key} in election "${name}" was deleted`));
      wake?.();
    };
    // Our own put is at myRevision, so watching from it includes our key and every older candidate still present
    // (older keys are replayed only if still in the history; the list below fills them in either way).
    const listed = await store.list(prefix, { signal });
    onBatch({ type: 'resync', kvs: listed.kvs, revision: listed.revision });
    await store.watch(prefix, listed.revision + 1, onBatch, stop.signal);
    const everything = AbortSignal.any([signal, lost]);
    everything.addEventListener('abort', () => wake?.(), { once: true });
    for (;;) {
      if (everything.aborted) throw abortedError(everything, `campaign in election "${name}"`);
      const mine = candidates.get(key) ?? myRevision;
      let older = false;
      for (const rev of candidates.values()) if (rev < mine) older = true;
      if (!older) break;
      await new Promise<void>((resolve) => {
        wake = resolve;
        if (everything.aborted) resolve();
      });
      wake = undefined;
    }
    let resigned = false;
    return {
      key,
      lease,
      lost,
      resign: async () => {
        if (resigned) return;
        resigned = true;
        await withdraw();
      },
    };
  } catch (err) {
    await withdraw();
    throw err;
  }
}

/** The current leader of election `name` (the candidate with the lowest createRevision), if any. */
export async function electionLeader(store: Store, name: string, opts: { signal?: AbortSignal } = {}): Promise<KeyValue | undefined> {
  const { kvs } = await store.list(keys.election(name), opts);
  let leader: KeyValue | undefined;
  for (const kv of kvs) if (leader === undefined || kv.createRevision < leader.createRevision) leader = kv;
  return leader;
}
