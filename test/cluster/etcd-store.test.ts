import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { Etcd3 } from 'etcd3';
import { EtcdStore } from '../../src/cluster/etcd-store.js';
import { keys } from '../../src/cluster/keys.js';
import { etcdAvailable, startEtcd, type EtcdCluster } from '../helpers/etcd.js';
import { Recorder, rejectsWith, storeContract, until } from './store-contract.js';

const skip = etcdAvailable() ? false : 'etcd is not installed (apt-get install etcd-server)';
let cluster: EtcdCluster | undefined;

before(async () => {
  if (skip === false) cluster = await startEtcd({ members: 1 });
});
after(async () => {
  await cluster?.stop();
});

function endpoints(): string[] {
  if (cluster === undefined) throw new Error('etcd did not start');
  return cluster.endpoints;
}

/** Each store gets its own cluster name, hence its own key prefix: tests cannot see each other's keys. */
function openStore(): EtcdStore {
  return new EtcdStore({ endpoints: endpoints(), cluster: `t-${randomBytes(4).toString('hex')}` });
}

describe('etcd store', { skip }, () => {
  storeContract('etcd (1 member)', { open: async () => openStore() });

  test('keys live under /backplane/<cluster>/ and nothing escapes the namespace', async () => {
    const s = openStore();
    const raw = new Etcd3({ hosts: endpoints() });
    try {
      await s.put(keys.node('web/1'), 'up');
      await raw.put('/backplane/outside').value('x');
      const all = await raw.getAll().prefix(s.root).keys();
      assert.deepEqual(all, [`${s.root}nodes/web%2F1`]);
      assert.equal((await s.list('')).kvs.length, 1, 'a prefix list stays inside the namespace');
      await s.delete('', { prefix: true });
      assert.equal(await raw.get('/backplane/outside').string(), 'x', 'a delete of everything stays inside too');
    } finally {
      await raw.delete().key('/backplane/outside');
      raw.close();
      await s.close();
    }
  });

  test('lease TTLs are whole seconds, at least what etcd grants; close revokes what the store granted', async () => {
    const s = openStore();
    const other = openStore();
    try {
      const l = await s.lease(300);
      assert.equal(l.ttlMs, 1000, 'rounded up to etcd\'s 1 s granularity (and minimum, with these timings)');
      const l2 = await s.lease(1500);
      assert.equal(l2.ttlMs, 2000);
      await s.put('held', 'x', { lease: l2 });
      const watcher = new Recorder();
      const ac = new AbortController();
      const probe = new EtcdStore({ endpoints: endpoints(), cluster: s.root.split('/')[2]! });
      await probe.watch('', 0, watcher.onEvent, ac.signal);
      const t0 = Date.now();
      await s.close();
      await until('the leased key to go at close', () => watcher.summary().includes('delete held'), 3000);
      assert.ok(Date.now() - t0 < 1500, 'revoked at close, not left to expire');
      assert.ok(l.lost.aborted && l2.lost.aborted);
      ac.abort();
      await probe.close();
    } finally {
      await s.close();
      await other.close();
    }
  });

  test('an unreachable etcd: operations, watches and leases reject promptly with reason unreachable', async () => {
    // A port on 127.0.0.5 where nothing listens.
    const s = new EtcdStore({ endpoints: ['http://127.0.0.5:1'], cluster: 'nowhere', opTimeoutMs: 2000 });
    try {
      for (const [what, op] of [
        ['get', () => s.get('x')],
        ['put', () => s.put('x', 'y')],
        ['watch', () => s.watch('', 0, () => undefined, new AbortController().signal)],
        ['lease', () => s.lease(1000)],
      ] as const) {
        const t0 = Date.now();
        const err = await rejectsWith(op(), 'unreachable', /store unreachable/);
        assert.ok(Date.now() - t0 < 2600, `${what} took ${Date.now() - t0} ms`);
        assert.ok(err.retryable);
        assert.match(err.message, /127\.0\.0\.5:1/);
      }
      const h = await s.health({ timeoutMs: 500 });
      assert.equal(h.ok, false);
      assert.match(h.detail, /0\/1 etcd endpoints answered/);
    } finally {
      await s.close();
    }
  });
});
