import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parseInfo } from '../../../src/backplanes/redis/resp.js';
import { etcdAvailable, startEtcd, type EtcdCluster } from '../../helpers/etcd.js';
import { deploy, instances, newCluster, startAgent, stopCluster, waitFor, type TestCluster } from '../../helpers/services.js';
import { appOf, killRedis, openDiscovery, primaryOf, redisCmd, RoleSampler, Writer, type AppJson } from './cluster.js';

/**
 * The Redis backplane end to end (#11 Proof): three agents on a real etcd, `{kind: redis, name: cache, replicas: 2,
 * memory: 64M}` deployed with the operator's CLI; a client writes in a loop through the discovery entry
 * `cache.primary` (read from the store by the agents' own Discovery); the primary's redis-server is killed with
 * SIGKILL; writes are accepted again through discovery on the promoted replica; every member's role is sampled every
 * ~20 ms throughout, and there is never a sample with two masters; the old primary comes back as a replica.
 */

const skip = process.env['CI'] === 'true' ? false : etcdAvailable() ? false : 'etcd is not installed';
const HOSTS = ['h1', 'h2', 'h3'];

describe('redis on etcd: failover through discovery', { skip, timeout: 300_000 }, () => {
  let work: string;
  let etcd: EtcdCluster;
  let c: TestCluster;
  const redisPids = new Set<number>();

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'bp-redis-e2e-'));
    etcd = await startEtcd({ members: 1 });
    c = await newCluster(join(work, 'c'), etcd.endpoints, 'redis1');
    for (const h of HOSTS) await startAgent(c, h, { capacity: 'cpu=2,memory=1G', labels: { node: h } });
  });

  after(async () => {
    if (c !== undefined) await stopCluster(c);
    // Members stop their redis on SIGTERM; a killed agent's would linger.
    for (const pid of redisPids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    await etcd?.stop();
    if (work !== undefined) await rm(work, { recursive: true, force: true });
  });

  test('kill -9 of the primary while a client writes through cache.primary: writes resume on the best replica, never two masters, the old primary rejoins as a replica', async () => {
    const r = await deploy(c, 'cache', 'kind: redis\nname: cache\nreplicas: 2\nmemory: 64M\n');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const settled = (a: AppJson): boolean => a.fields['replicas linked'] === 2 && (a.discovery['primary']?.length ?? 0) === 1;
    let last: AppJson | undefined;
    const app = await waitFor('cache: a primary and 2 linked replicas', async () => {
      last = await appOf(c);
      return settled(last) ? last : undefined;
    }, 60_000).catch((err: unknown) => {
      const logs = [...c.agents.values()].map((a) => `--- ${a.host}\n${a.cli.output().split('\n').slice(-40).join('\n')}`).join('\n');
      throw new Error(`${err instanceof Error ? err.message : String(err)}\n${JSON.stringify(last, null, 1)}\n${logs}`);
    });
    assert.match(app.summary ?? '', /^primary cache\.\d\.\w+ on h\d \(epoch 1\); 2\/2 replicas linked/);
    const members = await instances(c, 'cache');
    assert.equal(members.length, 3);
    assert.equal(new Set(members.map((m) => m.host)).size, 3, 'one member per host');
    const ports = members.map((m) => ({ id: m.id, port: m.ports['redis'] ?? 0 }));
    for (const m of ports) redisPids.add(Number(parseInfo(await redisCmd(m.port, ['INFO', 'server'])).get('process_id')));

    const d = await openDiscovery(c);
    try {
      const old = await waitFor('cache.primary in discovery', async () => primaryOf(d.discovery));
      const sampler = new RoleSampler(() => ports);
      const writer = new Writer(d.discovery);
      await waitFor('writes accepted', async () => writer.accepted.length >= 30);
      // Let the replicas catch up, so the loss window of asynchronous replication is what it is in steady state.
      const killedAt = await killRedis(old.port);
      const first = await waitFor('a write accepted on a new primary', async () => writer.accepted.find((w) => w.at > killedAt && w.to !== old.id), 30_000, 20);
      const failoverMs = first.at - killedAt;
      process.stdout.write(`# kill -9 of ${old.id}'s redis -> first write accepted on ${first.to} through cache.primary: ${failoverMs} ms\n`);

      // The old primary: restarted read-only by its member, then a replica of the new primary.
      const oldPort = ports.find((p) => p.id === old.id)?.port ?? 0;
      await waitFor('the old primary linked as a replica', async () => {
        const info = parseInfo(await redisCmd(oldPort, ['INFO', 'replication']));
        return info.get('role') === 'slave' && info.get('master_link_status') === 'up' && info.get('master_port') === String(ports.find((p) => p.id === first.to)?.port);
      }, 30_000);
      assert.match(await redisCmd(oldPort, ['SET', 'x', '1']), /READONLY/);
      const after = await waitFor('the app settled again with the old primary rejoined', async () => {
        const a = await appOf(c);
        return settled(a) && (a.lastFailover?.timeline.some((e) => /rejoined/.test(e.message)) ?? false) ? a : undefined;
      }, 30_000);
      for (const p of ports) redisPids.add(Number(parseInfo(await redisCmd(p.port, ['INFO', 'server'])).get('process_id')));
      await waitFor('more writes', async () => writer.accepted.length > writer.accepted.indexOf(first) + 30);
      await writer.stop();
      await sampler.stop();

      assert.deepEqual(sampler.violations, [], 'never two masters');
      assert.ok(sampler.samples >= 50, `sampled ${sampler.samples} times`);
      const f = after.lastFailover;
      assert.equal(f?.from, old.id);
      assert.equal(f?.to, first.to);
      assert.match(f?.reason ?? '', /its redis (exited|restarted)/);
      assert.match(after.summary ?? '', /\(epoch 2\); 2\/2 replicas linked/);
      process.stdout.write(`# timeline:\n${(f?.timeline ?? []).map((e) => `#   +${e.at - killedAt} ms ${e.message}`).join('\n')}\n`);
      // Asynchronous replication: writes acknowledged by the old primary in its last moments may be lost. Count them.
      const acked = writer.accepted.filter((w) => w.to === old.id);
      const newPort = ports.find((p) => p.id === first.to)?.port ?? 0;
      let lost = 0;
      for (const w of acked.slice(-50)) if ((await redisCmd(newPort, ['GET', `w:${w.n}`])) !== String(w.n)) lost++;
      process.stdout.write(`# ${acked.length} writes acknowledged by the old primary; of its last 50, ${lost} missing on the new one (asynchronous replication)\n`);
      assert.ok(failoverMs < 10_000, `failover took ${failoverMs} ms`);
    } finally {
      await d.close();
    }
  });
});
