import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { EtcdStore } from '../../src/cluster/etcd-store.js';
import { electionLeader } from '../../src/cluster/election.js';
import { etcdAvailable, startEtcd, type EtcdCluster } from '../helpers/etcd.js';
import { Recorder, rejectsWith, until } from './store-contract.js';

/**
 * Faults against a real 3-member etcd on 127.0.0.2-4: members killed with SIGKILL and restarted on their data dirs.
 * The cluster is shared by the tests in order; each test leaves all three members running.
 */

const skip = etcdAvailable() ? false : 'etcd is not installed (apt-get install etcd-server)';
let cluster: EtcdCluster | undefined;
const stores: EtcdStore[] = [];

before(async () => {
  if (skip === false) cluster = await startEtcd({ members: 3 });
});
after(async () => {
  await Promise.all(stores.map((s) => s.close()));
  await cluster?.stop();
});

function etcd(): EtcdCluster {
  if (cluster === undefined) throw new Error('etcd did not start');
  return cluster;
}

function store(name: string, endpoints = etcd().endpoints): EtcdStore {
  const s = new EtcdStore({ endpoints, cluster: name });
  stores.push(s);
  return s;
}

function freshName(): string {
  return `f-${randomBytes(4).toString('hex')}`;
}

/** Puts `prefix<n>` one after another until stopped, recording what was acknowledged and what failed. */
function writer(s: EtcdStore, prefix: string) {
  const acked: { key: string; revision: number }[] = [];
  const failures: string[] = [];
  let worstMs = 0;
  let running = true;
  const done = (async () => {
    for (let i = 0; running; i++) {
      const t0 = Date.now();
      try {
        const { revision } = await s.put(`${prefix}${i}`, String(i));
        acked.push({ key: `${prefix}${i}`, revision });
      } catch (err) {
        failures.push((err as Error).message);
      }
      worstMs = Math.max(worstMs, Date.now() - t0);
      await sleep(5);
    }
  })();
  return {
    acked,
    failures,
    worst: () => worstMs,
    stop: async () => {
      running = false;
      await done;
    },
  };
}

describe('etcd store under faults (3 members)', { skip }, () => {
  test('kill -9 of each member in turn: writes go on, one watch sees every write exactly once, members catch up', async (t) => {
    const name = freshName();
    const s = store(name);
    const watching = store(name);
    const rec = new Recorder();
    const ac = new AbortController();
    await watching.watch('w/', 0, rec.onEvent, ac.signal);
    const w = writer(s, 'w/');
    // Whichever member serves the watch stream and whichever leads, each is killed once.
    for (let i = 0; i < 3; i++) {
      await until('writes before the kill', () => w.acked.length >= (i + 1) * 20);
      await etcd().kill(i);
      const during = w.acked.length;
      await until(`writes while member ${i} is down`, () => w.acked.length >= during + 20, 15_000);
      await etcd().restart(i);
    }
    await w.stop();
    const expected = w.acked.map((a) => a.key);
    await until('the watch to see every acknowledged write', () => expected.every((k) => rec.summary().some((e) => e.startsWith(`put ${k}=`))), 15_000);
    const puts = rec.events().filter((e) => e.type === 'put');
    const revisions = puts.map((e) => (e.type === 'put' ? e.kv.modRevision : 0));
    assert.deepEqual(revisions, [...new Set(revisions)].sort((a, b) => a - b), 'in order, no duplicates');
    ac.abort();
    t.diagnostic(`${w.acked.length} writes, ${w.failures.length} failed, slowest ${w.worst()} ms; watch batches ${rec.batches.length}`);
    assert.ok(w.failures.length <= 3, `too many failed writes: ${w.failures.join('; ')}`);

    // Every member, asked alone, has every acknowledged key (the restarted ones caught up from the others).
    for (const ep of etcd().endpoints) {
      const alone = store(name, [ep]);
      await until(`member ${ep} to have every key`, async () => {
        const { kvs } = await alone.list('w/');
        const have = new Set(kvs.map((k) => k.key));
        return expected.every((k) => have.has(k));
      });
    }
  });

  test('a watch on a member that dies resumes from its last revision; past a compaction it gets a resync', async () => {
    const name = freshName();
    const pinned = store(name, [etcd().endpoints[0]!]);
    const other = store(name, etcd().endpoints.slice(1));
    const rec = new Recorder();
    const ac = new AbortController();
    // From the revision after r/before, not "from now": member 0 may not have applied r/before yet when the watch
    // starts there, and "now" on a lagging member is before it.
    const before = await other.put('r/before', 'x');
    await pinned.watch('r/', before.revision + 1, rec.onEvent, ac.signal);
    await other.put('r/a', '1');
    await until('the first event', () => rec.summary().includes('put r/a=1'));

    // Down and back with no compaction: plain resumption, nothing lost, nothing repeated.
    await etcd().kill(0);
    await other.put('r/b', '2');
    await other.delete('r/a');
    await etcd().restart(0);
    await until('events from the outage', () => rec.summary().includes('delete r/a'), 15_000);
    assert.deepEqual(rec.summary(), ['put r/a=1', 'put r/b=2', 'delete r/a']);

    // Down again, and the history it would resume from is compacted meanwhile.
    await etcd().kill(0);
    await other.put('r/c', '3');
    const { revision } = await other.put('r/d', '4');
    await other.compact(revision);
    await etcd().restart(0);
    await until('the resync', () => rec.batches.some((b) => b.type === 'resync'), 15_000);
    const resync = rec.batches.find((b) => b.type === 'resync');
    assert.ok(resync?.type === 'resync');
    assert.deepEqual(resync.kvs.map((k) => k.key), ['r/b', 'r/before', 'r/c', 'r/d']);
    await other.put('r/e', '5');
    await until('live events after the resync', () => rec.summary().includes('put r/e=5'));
    ac.abort();
  });

  test('a leader cut off from etcd learns it lost within the TTL; a candidate elsewhere takes over', async (t) => {
    const name = freshName();
    const cutOff = store(name, [etcd().endpoints[0]!]);
    const rest = store(name, etcd().endpoints.slice(1));
    const ac = new AbortController();
    const a = await cutOff.campaign('sched', 'A', 1000, ac.signal);
    const bP = rest.campaign('sched', 'B', 1000, ac.signal);
    await until('B to queue', async () => (await rest.list('election/')).kvs.length === 2);
    const t0 = Date.now();
    await etcd().kill(0);
    await until('A to learn it lost', () => a.lost.aborted, 5000);
    const lostAfter = Date.now() - t0;
    await bP;
    const takeover = Date.now() - t0;
    t.diagnostic(`leader lost after ${lostAfter} ms, takeover after ${takeover} ms (TTL ${a.lease.ttlMs} ms)`);
    assert.ok(lostAfter <= a.lease.ttlMs + 500, `A noticed after ${lostAfter} ms`);
    // A stops considering itself leader no later than etcd expires its lease, so at most one leader at any time.
    assert.ok(lostAfter <= takeover + 50, `A lost at ${lostAfter} ms, B took over at ${takeover} ms`);
    assert.equal((await electionLeader(rest, 'sched'))?.value, 'B');
    await etcd().restart(0);
  });

  test('all members down: operations reject as unreachable within a bounded time, and recover when etcd is back', async (t) => {
    const name = freshName();
    const s = store(name);
    const rec = new Recorder();
    const ac = new AbortController();
    await s.put('d/0', 'x');
    await s.watch('d/', 0, rec.onEvent, ac.signal);
    await Promise.all([0, 1, 2].map((i) => etcd().kill(i)));

    const ops = [
      ['put', () => s.put('d/1', 'x')],
      ['get', () => s.get('d/0')],
      ['list', () => s.list('d/')],
      ['lease', () => s.lease(1000)],
      ['watch', () => s.watch('d/', 0, () => undefined, ac.signal)],
    ] as const;
    await Promise.all(
      ops.map(async ([what, op]) => {
        const t0 = Date.now();
        await rejectsWith(op(), 'unreachable', /store unreachable/);
        const took = Date.now() - t0;
        t.diagnostic(`${what} rejected after ${took} ms`);
        assert.ok(took < 3500, `${what} took ${took} ms to reject`);
      }),
    );
    const h = await s.health({ timeoutMs: 500 });
    assert.equal(h.ok, false);
    assert.match(h.detail, /0\/3 etcd endpoints answered/);

    const t0 = Date.now();
    for (let i = 0; i < 3; i++) await etcd().restart(i, { wait: false });
    await Promise.all([0, 1, 2].map((i) => etcd().waitHealthy(i)));
    await until('a put to succeed again', async () => s.put('d/2', 'back').then(() => true, () => false), 20_000);
    t.diagnostic(`writes recovered ${Date.now() - t0} ms after restarting the members`);
    assert.equal((await s.get('d/0'))?.value, 'x', 'data survived the full outage');
    await until('the watch to resume', () => rec.summary().includes('put d/2=back'), 15_000);
    assert.ok(!rec.summary().includes('put d/1=x'), 'the refused write did not happen');
    assert.ok((await s.health()).ok);
    ac.abort();
  });
});
