import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, test } from 'node:test';
import { electionLeader } from '../../src/cluster/election.js';
import { keys } from '../../src/cluster/keys.js';
import { isStoreError, StoreError, writeInChunks, type KeyValue, type Store, type TxnCompare, type TxnOp, type WatchBatch, type WatchEvent } from '../../src/cluster/store.js';

/**
 * One behavioural contract for every Store backend. Each test gets a fresh, empty store from the factory (its own
 * directory or etcd namespace) and closes it at the end.
 */
export interface StoreFactory {
  open(): Promise<Store>;
  /** false: the store cannot grant leases (the agent's control socket); lease and election tests are skipped. */
  readonly leases?: boolean;
}

/** Polls `fn` until it returns something other than undefined/false, or fails after `timeoutMs`. */
export async function until<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** Collects watch batches; `events()` flattens them. */
export class Recorder {
  readonly batches: WatchBatch[] = [];
  readonly onEvent = (b: WatchBatch): void => {
    this.batches.push(b);
  };
  events(): WatchEvent[] {
    return this.batches.flatMap((b) => (b.type === 'events' ? b.events : []));
  }
  /** `put k=v` / `delete k`, for readable assertions. */
  summary(): string[] {
    return this.events().map((e) => (e.type === 'put' ? `put ${e.kv.key}=${e.kv.value}` : `delete ${e.key}`));
  }
}

export async function rejectsWith(p: Promise<unknown>, reason: StoreError['reason'], message?: RegExp): Promise<StoreError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof StoreError, `expected a StoreError, got ${String(err)}`);
    assert.equal(err.reason, reason, `expected reason ${reason}, got ${err.reason}: ${err.message}`);
    if (message !== undefined) assert.match(err.message, message);
    return err;
  }
  assert.fail(`expected a rejection with reason ${reason}`);
}

export function storeContract(label: string, factory: StoreFactory): void {
  const withStore = (fn: (store: Store) => Promise<void>) => async (): Promise<void> => {
    const store = await factory.open();
    try {
      await fn(store);
    } finally {
      await store.close();
    }
  };

  describe(`store contract: ${label}`, () => {
    test(
      'put, get, list, delete and prefix delete, with revisions',
      withStore(async (s) => {
        assert.equal(await s.get('a/1'), undefined);
        const r1 = (await s.put('a/1', 'one')).revision;
        assert.ok(r1 > 1, 'a write moves the revision past the empty store');
        const kv1 = await s.get('a/1');
        assert.deepEqual(kv1, { key: 'a/1', value: 'one', modRevision: r1, createRevision: r1 });
        const r2 = (await s.put('a/1', 'uno')).revision;
        assert.equal(r2, r1 + 1);
        assert.deepEqual(await s.get('a/1'), { key: 'a/1', value: 'uno', modRevision: r2, createRevision: r1 });

        await s.put('a/2', 'two');
        await s.put('a/10', 'ten');
        await s.put('ab', 'not under a/');
        const unicode = 'ü/ß';
        await s.put(unicode, 'x');
        const listed = await s.list('a/');
        assert.deepEqual(listed.kvs.map((k) => k.key), ['a/1', 'a/10', 'a/2'], 'sorted by key bytes');
        assert.equal(listed.revision, (await s.put('z', 'z')).revision - 1);
        assert.equal((await s.list('')).kvs.length, 6);

        const before = (await s.list('')).revision;
        assert.deepEqual(await s.delete('nope'), { deleted: 0, revision: before }, 'deleting nothing makes no revision');
        const del = await s.delete('a/2');
        assert.deepEqual(del, { deleted: 1, revision: before + 1 });
        const pd = await s.delete('a/', { prefix: true });
        assert.equal(pd.deleted, 2);
        assert.deepEqual((await s.list('')).kvs.map((k) => k.key), ['ab', 'z', unicode]);
        await rejectsWith(s.put('', 'x'), 'invalid');
      }),
    );

    test(
      'cas: create-if-absent, compare on modRevision, delete, and idempotent retries',
      withStore(async (s) => {
        const created = await s.cas('lock', 0, 'A');
        assert.ok(created.ok);
        const again = await s.cas('lock', 0, 'B');
        assert.equal(again.ok, false);
        assert.equal(again.ok ? undefined : again.current?.value, 'A', 'a failed cas returns the current value');
        const rev = (await s.get('lock'))!.modRevision;
        assert.equal(created.ok && created.revision, rev);

        const swapped = await s.cas('lock', rev, 'B');
        assert.ok(swapped.ok && swapped.revision > rev);
        const stale = await s.cas('lock', rev, 'C');
        assert.equal(stale.ok, false, 'stale revision');
        // The key already holds what we asked for: a retry of a request that landed must not look like a lost race.
        assert.ok((await s.cas('lock', rev, 'B')).ok);

        const cur = (await s.get('lock'))!;
        const gone = await s.cas('lock', cur.modRevision, null);
        assert.ok(gone.ok);
        assert.equal(await s.get('lock'), undefined);
        assert.ok((await s.cas('lock', 12345, null)).ok, 'deleting an absent key is already done');
        assert.ok((await s.cas('never', 0, null)).ok);
      }),
    );

    test(
      'txn is atomic: one revision, one watch batch; limits are enforced before anything is written',
      withStore(async (s) => {
        await s.put('t/old', 'x');
        const start = (await s.list('')).revision;
        const rec = new Recorder();
        const ac = new AbortController();
        await s.watch('t/', start + 1, rec.onEvent, ac.signal);
        const { revision } = await s.txn([{ put: 't/a', value: '1' }, { put: 't/b', value: '2' }, { delete: 't/old' }, { delete: 't/absent' }]);
        assert.equal(revision, start + 1);
        const { kvs } = await s.list('t/');
        assert.deepEqual(kvs.map((k) => [k.key, k.modRevision]), [['t/a', revision], ['t/b', revision]]);
        await until('the txn batch', () => rec.events().length >= 3);
        assert.equal(rec.batches.length, 1, 'one batch for the whole transaction');
        assert.deepEqual(rec.summary(), ['put t/a=1', 'put t/b=2', 'delete t/old']);
        ac.abort();

        const many: TxnOp[] = Array.from({ length: 129 }, (_, i) => ({ put: `t/many/${i}`, value: 'v' }));
        await rejectsWith(s.txn(many), 'too-large', /129 operations; the limit is 128/);
        await rejectsWith(s.txn([{ put: 't/d', value: '1' }, { delete: 't/d' }]), 'invalid', /twice/);
        const big = 'x'.repeat(1_600_000);
        await rejectsWith(s.put('t/big', big), 'too-large', /t\/big/);
        await rejectsWith(s.cas('t/big', 0, big), 'too-large');
        const half = 'y'.repeat(500_000);
        await rejectsWith(s.txn([0, 1, 2, 3].map((i) => ({ put: `t/h${i}`, value: half }))), 'too-large', /transaction/);
        assert.deepEqual((await s.list('t/')).kvs.map((k) => k.key), ['t/a', 't/b'], 'nothing of the refused writes landed');

        // Non-atomic bulk writes are split to fit.
        const res = await writeInChunks(s, [...many, ...[0, 1, 2, 3].map((i) => ({ put: `t/h${i}`, value: half }))]);
        assert.equal((await s.list('t/many/')).kvs.length, 129);
        assert.equal((await s.list('t/h')).kvs.length, 4);
        assert.equal(res.revision, (await s.list('')).revision);
      }),
    );

    test(
      'fenced txn: commits while the election key holds; after it is deleted and re-created it fails and writes nothing',
      withStore(async (s) => {
        const ac = new AbortController();
        // Without leases (the control socket), the election key is put as the election would put it.
        const lead = factory.leases === false ? undefined : await s.campaign('ctl', 'A', 2000, ac.signal);
        const leadKey = lead?.key ?? `${keys.election('ctl')}1234`;
        if (lead === undefined) await s.put(leadKey, 'A');
        const epoch = (await s.get(leadKey))!.createRevision;
        const fence = [{ key: leadKey, createRevision: epoch }] as const;

        const first = await s.txn([{ put: 'f/assign/1', value: 'e1' }, { delete: 'f/none' }], { if: fence });
        assert.ok(first.ok, 'the leader commits');
        assert.equal((await s.get('f/assign/1'))?.modRevision, first.revision);
        // Rewriting the leader key (same lease) changes its modRevision, not its createRevision: still the same term.
        await s.put(leadKey, 'A again', lead === undefined ? {} : { lease: lead.lease });
        assert.ok((await s.txn([{ put: 'f/assign/2', value: 'e1' }], { if: fence })).ok, 'a rewrite of the key keeps the term');

        // The key is deleted and created again (a new term at a new createRevision): the old term's writes fail.
        await s.delete(leadKey);
        const rec = await s.put(leadKey, 'B');
        const before = (await s.list('')).revision;
        const stale = await s.txn([{ put: 'f/assign/1', value: 'deposed' }, { delete: 'f/assign/2' }], { if: fence });
        assert.equal(stale.ok, false, 'a deposed leader cannot commit');
        assert.ok(!stale.ok);
        assert.deepEqual(stale.failed, fence);
        assert.equal(stale.revision, before, 'the refusal is reported at the current revision');
        assert.equal((await s.list('')).revision, before, 'a failed txn makes no revision');
        assert.equal((await s.get('f/assign/1'))?.value, 'e1', 'nothing was written');
        assert.equal((await s.get('f/assign/2'))?.value, 'e1');
        assert.ok((await s.txn([{ put: 'f/assign/1', value: 'e2' }], { if: [{ key: leadKey, createRevision: rec.revision }] })).ok, 'the new term commits');

        // Gone altogether (resigned): fails too.
        await s.delete(leadKey);
        const gone = await s.txn([{ put: 'f/assign/3', value: 'e1' }], { if: fence });
        assert.equal(gone.ok, false);
        assert.equal(await s.get('f/assign/3'), undefined);
        await lead?.resign();
        ac.abort();
      }),
    );

    test(
      'fenced txn: mixed conditions are all decided at one revision; retries of a landed txn report success; limits',
      withStore(async (s) => {
        const a = await s.put('m/a', '1');
        await s.put('m/b', '1');
        const b = await s.put('m/b', '2');
        const conds = [
          { key: 'm/a', createRevision: a.revision },
          { key: 'm/b', modRevision: b.revision },
          { key: 'm/c', absent: true },
          { key: 'm/d', modRevision: 0 },
        ] as const;
        const ok = await s.txn([{ put: 'm/c', value: 'mine' }, { put: 'm/x', value: 'x1' }], { if: conds });
        assert.ok(ok.ok);
        assert.equal((await s.get('m/c'))?.modRevision, ok.revision);

        // The same request again (as etcd's client retries one whose answer was lost): m/c exists now, but it holds
        // exactly what this txn wrote, at one revision, so this is the retry of a landed write, not a lost race.
        const retry = await s.txn([{ put: 'm/c', value: 'mine' }, { put: 'm/x', value: 'x1' }], { if: conds });
        assert.deepEqual(retry, { ok: true, revision: ok.revision });
        const rival = await s.txn([{ put: 'm/c', value: 'theirs' }, { put: 'm/x', value: 'x1' }], { if: conds });
        assert.equal(rival.ok, false, 'another writer with other values loses');
        assert.ok(!rival.ok);
        assert.deepEqual(rival.failed, [{ key: 'm/c', absent: true }], 'only the condition that failed is reported');
        assert.equal((await s.get('m/c'))?.value, 'mine');

        await s.put('m/b', '3');
        const mixed = await s.txn([{ put: 'm/y', value: 'y' }], { if: [{ key: 'm/a', createRevision: a.revision }, { key: 'm/b', modRevision: b.revision }, { key: 'm/zz', absent: true }] });
        assert.ok(!mixed.ok);
        assert.deepEqual(mixed.failed, [{ key: 'm/b', modRevision: b.revision }]);
        assert.equal(await s.get('m/y'), undefined);
        // A txn of deletes only cannot tell its own landed retry from someone else's delete: a failure stays a failure.
        const del = await s.txn([{ delete: 'm/a' }], { if: [{ key: 'm/never', createRevision: 5 }] });
        assert.equal(del.ok, false);
        assert.ok((await s.get('m/a')) !== undefined);
        assert.deepEqual(await s.txn([{ put: 'm/plain', value: 'p' }], { if: [] }), { ok: true, revision: (await s.list('')).revision });

        // Conditions are checked before anything is sent, and count against the operation limit with the writes.
        const full: TxnOp[] = Array.from({ length: 128 }, (_, i) => ({ put: `m/many/${i}`, value: 'v' }));
        await rejectsWith(s.txn(full, { if: [{ key: 'm/a', createRevision: a.revision }] }), 'too-large', /129 distinct keys/);
        assert.ok((await s.txn(full, { if: [{ key: 'm/many/0', absent: true }] })).ok, 'a condition on a written key adds no key');
        await rejectsWith(s.txn([...full, { put: 'm/one-more', value: 'v' }], { if: [{ key: 'm/a', absent: true }] }), 'too-large', /129 operations/);
        await rejectsWith(s.txn([{ put: 'm/q', value: 'v' }], { if: [{ key: '', absent: true }] }), 'invalid');
        await rejectsWith(s.txn([{ put: 'm/q', value: 'v' }], { if: [{ key: 'm/a', modRevision: -1 }] }), 'invalid', /non-negative/);
        await rejectsWith(s.txn([{ put: 'm/q', value: 'v' }], { if: [{ key: 'm/a', modRevision: 1, absent: true } as unknown as TxnCompare] }), 'invalid', /exactly one/);
        await rejectsWith(s.txn([{ put: 'm/q', value: 'v' }], { if: [{ key: 'm/a' } as unknown as TxnCompare] }), 'invalid', /exactly one/);
        await rejectsWith(s.txn([{ put: 'm/q', value: 'x'.repeat(1_600_000) }], { if: [{ key: 'm/a', absent: true }] }), 'too-large');
        assert.equal(await s.get('m/q'), undefined);
      }),
    );

    test(
      'watch from a revision replays earlier events in order, then follows live, within its prefix',
      withStore(async (s) => {
        const r0 = (await s.put('w/a', '1')).revision;
        await s.put('w/b', '2');
        await s.put('other', 'x');
        await s.delete('w/a');
        const rec = new Recorder();
        const live = new Recorder();
        const ac = new AbortController();
        await s.watch('w/', r0, rec.onEvent, ac.signal);
        await s.watch('w/', 0, live.onEvent, ac.signal);
        await s.put('w/c', '3');
        await until('the live event', () => rec.events().length >= 4 && live.events().length >= 1);
        assert.deepEqual(rec.summary(), ['put w/a=1', 'put w/b=2', 'delete w/a', 'put w/c=3']);
        assert.deepEqual(live.summary(), ['put w/c=3'], 'fromRevision 0 starts now');
        const revs = rec.batches.map((b) => b.revision);
        assert.deepEqual(revs, [...revs].sort((a, b) => a - b));
        const put = rec.events()[1];
        assert.ok(put?.type === 'put' && put.kv.createRevision === put.kv.modRevision);

        ac.abort();
        await s.put('w/d', '4');
        await sleep(100);
        assert.equal(rec.events().length, 4, 'no events after the signal aborted');
      }),
    );

    test(
      'watching from a compacted revision delivers a resync with the current set, then live events',
      withStore(async (s) => {
        const r0 = (await s.put('c/a', '1')).revision;
        await s.put('c/b', '2');
        await s.delete('c/a');
        const now = (await s.put('c/c', '3')).revision;
        await s.compact(now);
        await s.compact(now); // compacting again is harmless
        await rejectsWith(s.compact(now + 100), 'invalid');
        const rec = new Recorder();
        const ac = new AbortController();
        await s.watch('c/', r0, rec.onEvent, ac.signal);
        await until('the resync', () => rec.batches.length >= 1);
        const first = rec.batches[0]!;
        assert.equal(first.type, 'resync');
        assert.ok(first.type === 'resync');
        assert.deepEqual(first.kvs.map((k: KeyValue) => `${k.key}=${k.value}`), ['c/b=2', 'c/c=3']);
        assert.equal(first.revision, now);
        await s.put('c/d', '4');
        await until('a live event after the resync', () => rec.summary().includes('put c/d=4'));
        ac.abort();
      }),
    );

    if (factory.leases === false) {
      // A store without leases says so clearly, rather than leaving a caller to find out some other way.
      test(
        'leases and elections are refused with reason unsupported',
        withStore(async (s) => {
          await assert.rejects(s.lease(1000), (err: unknown) => isStoreError(err, 'unsupported'));
          await assert.rejects(s.campaign('x', 'v', 1000, new AbortController().signal), (err: unknown) => isStoreError(err, 'unsupported'));
        }),
      );
    }

    if (factory.leases !== false) test(
      'leases: keys go with a revoked lease, and with a released one after its TTL',
      withStore(async (s) => {
        const lease = await s.lease(1000);
        assert.ok(lease.ttlMs >= 1000);
        await s.put('l/held', 'x', { lease });
        const kv = await s.get('l/held');
        assert.equal(kv?.lease, lease.id);
        await lease.revoke();
        assert.ok(lease.lost.aborted);
        assert.ok(lease.lost.reason instanceof StoreError);
        assert.equal(await s.get('l/held'), undefined);
        await rejectsWith(s.put('l/late', 'x', { lease }), 'lease-lost');
        await lease.revoke(); // again: no-op

        const crashed = await s.lease(1000);
        await s.put('l/a', 'x', { lease: crashed });
        await s.txn([{ put: 'l/b', value: 'y', lease: crashed }, { put: 'l/plain', value: 'z' }]);
        const t0 = Date.now();
        crashed.release(); // as if the holder died
        await until('keys of the released lease to expire', async () => (await s.list('l/')).kvs.length === 1, crashed.ttlMs + 5000);
        const took = Date.now() - t0;
        assert.ok(took >= crashed.ttlMs * 0.5, `expired after ${took} ms, TTL ${crashed.ttlMs} ms`);
        await until('lost to abort', () => crashed.lost.aborted, 3000);
        assert.deepEqual((await s.list('l/')).kvs.map((k) => k.key), ['l/plain']);
      }),
    );

    if (factory.leases !== false) test(
      'campaign: one leader at a time; resign hands over at once; a dead leader is replaced after its TTL',
      withStore(async (s) => {
        const ac = new AbortController();
        const a = await s.campaign('lead', 'A', 1000, ac.signal);
        assert.equal((await electionLeader(s, 'lead'))?.value, 'A');
        assert.ok(a.key.startsWith(keys.election('lead')));

        let bLeader = false;
        const bP = s.campaign('lead', 'B', 1000, ac.signal).then((l) => {
          bLeader = true;
          return l;
        });
        const cAbort = new AbortController();
        const cP = s.campaign('lead', 'C', 1000, cAbort.signal);
        await until('three candidates', async () => (await s.list(keys.election('lead'))).kvs.length === 3);
        await sleep(100);
        assert.equal(bLeader, false, 'B waits while A leads');

        cAbort.abort();
        await rejectsWith(cP, 'aborted');
        await until('C to withdraw', async () => (await s.list(keys.election('lead'))).kvs.length === 2);

        const t0 = Date.now();
        await a.resign();
        assert.ok(a.lost.aborted, 'resigning ends leadership');
        const b = await bP;
        const handover = Date.now() - t0;
        assert.ok(handover < 900, `resign hands over quickly (took ${handover} ms)`);
        assert.equal((await electionLeader(s, 'lead'))?.value, 'B');

        // A candidate whose holder dies (its lease stops being renewed) is replaced after the TTL.
        const dP = s.campaign('lead', 'D', 1000, ac.signal);
        await until('D to queue', async () => (await s.list(keys.election('lead'))).kvs.length === 2);
        const t1 = Date.now();
        b.lease.release();
        const d = await dP;
        const failover = Date.now() - t1;
        assert.ok(failover < b.lease.ttlMs + 4000, `failover took ${failover} ms`);
        await until('B to learn it lost', () => b.lost.aborted, 3000);
        assert.equal((await electionLeader(s, 'lead'))?.value, 'D');
        await d.resign();
        assert.equal(await electionLeader(s, 'lead'), undefined);
      }),
    );

    test(
      'health, and every operation refused after close',
      withStore(async (s) => {
        const h = await s.health();
        assert.ok(h.ok, h.detail);
        const other = await factory.open();
        await other.close();
        await other.close(); // idempotent
        await rejectsWith(other.get('x'), 'closed');
        await rejectsWith(other.put('x', 'y'), 'closed');
        assert.equal((await other.health().catch(() => ({ ok: false, detail: 'closed' }))).ok, false);
        const ac = new AbortController();
        ac.abort();
        await rejectsWith(s.get('x', { signal: ac.signal }), 'aborted');
      }),
    );
  });
}
