import assert from 'node:assert/strict';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { PgConn } from '../../../src/backplanes/postgres/pgwire.js';
import { etcdAvailable, startEtcd, type EtcdCluster } from '../../helpers/etcd.js';
import { deploy, instances, newCluster, startAgent, stopCluster, waitFor, type TestCluster } from '../../helpers/services.js';
import { appOf, openDiscovery, type AppJson } from '../redis/cluster.js';
import { Committer, killPostmaster, missing, pgPrimaryOf, postmasterPid, WritableSampler, type Target } from './cluster.js';

/**
 * The PostgreSQL backplane end to end (#11 Proof): three agents on a real etcd, `{kind: postgres, name: main,
 * replicas: 2, synchronous: true, memory: 128M}` deployed with the operator's CLI; a client commits in a loop through
 * the discovery entry `main.primary` (the agents' own Discovery over the store) and counts the commits the server
 * acknowledged; the primary's postmaster is killed with SIGKILL; every acknowledged commit is on the new primary; every
 * member's writability is sampled every ~20 ms throughout and never two are writable; the old primary comes back as a
 * standby (pg_rewind), streaming, read-only. Then a settings change rolls the three members, standbys first and the
 * primary last after a switchover, under the same client and sampler.
 */

const skip = process.env['CI'] === 'true' ? false : etcdAvailable() ? false : 'etcd is not installed';
const HOSTS = ['h1', 'h2', 'h3'];

describe('postgres on etcd: synchronous failover through discovery, rolling restart', { skip, timeout: 600_000 }, () => {
  let work: string;
  let dataDir: string;
  let etcd: EtcdCluster;
  let c: TestCluster;
  let ids: string[] = [];

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'bp-pg-e2e-'));
    await chmod(work, 0o755); // the members' postgres (user postgres) reaches its data directory through it
    dataDir = join(work, 'pg');
    etcd = await startEtcd({ members: 1 });
    c = await newCluster(join(work, 'c'), etcd.endpoints, 'pg1');
    for (const h of HOSTS) await startAgent(c, h, { capacity: 'cpu=2,memory=1G', labels: { node: h } });
  });

  after(async () => {
    if (c !== undefined) await stopCluster(c);
    // Members stop their postgres on SIGTERM; one a killed agent left would linger.
    for (const id of ids) {
      const pid = postmasterPid(dataDir, id);
      try {
        if (pid !== undefined) process.kill(pid, 'SIGQUIT');
      } catch {
        // gone
      }
    }
    await etcd?.stop();
    if (work !== undefined && process.env.PG_E2E_KEEP === undefined) await rm(work, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
  });

  test('kill -9 of the primary postmaster while a client commits through main.primary: every acknowledged commit kept, never two writable, the old primary rejoins as a standby', async () => {
    const r = await deploy(c, 'main', `kind: postgres\nname: main\nreplicas: 2\nsynchronous: true\nmemory: 128M\ndataDir: ${dataDir}\n`);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const settled = (a: AppJson): boolean => a.fields['standbys streaming'] === 2 && (a.discovery['primary']?.length ?? 0) === 1 && Object.values(a.fields).includes('sync');
    const app = await waitFor('main: a primary and 2 streaming standbys, one synchronous', async () => {
      const a = await appOf(c, 'main');
      return settled(a) ? a : undefined;
    }, 120_000);
    assert.match(app.summary ?? '', /^primary main\.\d\.\w+ on h\d \(epoch 1\); 2\/2 standbys streaming/);
    const members = await instances(c, 'main');
    assert.equal(members.length, 3);
    assert.equal(new Set(members.map((m) => m.host)).size, 3, 'one member per host');
    ids = members.map((m) => m.id);
    const targets: Target[] = members.map((m) => ({ id: m.id, address: '127.0.0.1', port: m.ports['pg'] ?? 0 }));

    const d = await openDiscovery(c);
    try {
      const old = await waitFor('main.primary in discovery', async () => pgPrimaryOf(d.discovery, 'main'));
      const setup = await PgConn.connect({ host: old.address, port: old.port });
      await setup.query('CREATE TABLE t (i bigint PRIMARY KEY)');
      setup.close();
      const sampler = new WritableSampler(() => targets);
      const committer = new Committer(d.discovery, 'main', 't', 1);
      await waitFor('commits acknowledged', async () => committer.acked.length >= 100);
      const killedAt = killPostmaster(dataDir, old.id);
      const first = await waitFor('a commit acknowledged by a new primary', async () => committer.acked.find((w) => w.at > killedAt && w.to !== old.id), 30_000, 20);
      const failoverMs = first.at - killedAt;
      process.stdout.write(`# kill -9 of ${old.id}'s postmaster -> first commit acknowledged by ${first.to} through main.primary: ${failoverMs} ms\n`);

      const oldTarget = targets.find((t) => t.id === old.id);
      assert.ok(oldTarget !== undefined);
      const healed = await waitFor('the old primary streaming as a standby of the new one', async () => {
        const a = await appOf(c, 'main');
        return settled(a) && (a.lastFailover?.timeline.some((e) => /rejoined as a standby/.test(e.message)) ?? false) ? a : undefined;
      }, 60_000);
      const ro = await PgConn.connect({ host: oldTarget.address, port: oldTarget.port });
      assert.equal(await ro.value('SELECT pg_is_in_recovery()'), 't', 'the old primary is read-only');
      await assert.rejects(ro.query('INSERT INTO t VALUES (-1)'), /read-only/);
      ro.close();
      const n = committer.acked.length;
      await waitFor('more commits', async () => committer.acked.length >= n + 50);
      await committer.stop();
      await sampler.stop();

      const newPrimary = targets.find((t) => t.id === first.to);
      assert.ok(newPrimary !== undefined);
      const lost = await missing(newPrimary, 't', committer.acked);
      const byOld = committer.acked.filter((a) => a.to === old.id).length;
      process.stdout.write(`# ${committer.acked.length} commits acknowledged (${byOld} by the old primary), ${lost.length} missing after the failover; ${sampler.samples} writability samples, ${sampler.violations.length} with two writable\n`);
      const f = healed.lastFailover;
      process.stdout.write(`# timeline:\n${(f?.timeline ?? []).map((e) => `#   +${e.at - killedAt} ms ${e.message}`).join('\n')}\n`);
      assert.deepEqual(lost, [], 'every acknowledged commit is on the new primary');
      assert.deepEqual(sampler.violations, [], 'never two writable members');
      assert.ok(sampler.samples >= 50, `sampled ${sampler.samples} times`);
      assert.equal(f?.from, old.id);
      assert.equal(f?.to, first.to);
      assert.match(f?.reason ?? '', /its postgres exited|restarted/);
      assert.match(healed.summary ?? '', /\(epoch 2\); 2\/2 standbys streaming/);
      assert.ok(failoverMs < 10_000, `failover took ${failoverMs} ms`);
    } finally {
      await d.close();
    }
  });
  test('a settings change rolls the members standbys first, the primary switches over last: every acknowledged commit kept, never two writable', async () => {
    const before = await appOf(c, 'main');
    const epoch = Number(before.fields['epoch']);
    const v0 = (await instances(c, 'main'))[0]?.version;
    const d = await openDiscovery(c);
    let targets: Target[] = [];
    const refresh = async (): Promise<void> => {
      targets = (await instances(c, 'main')).map((m) => ({ id: m.id, address: '127.0.0.1', port: m.ports['pg'] ?? 0 }));
      for (const t of targets) if (!ids.includes(t.id)) ids.push(t.id);
    };
    await refresh();
    const sampler = new WritableSampler(() => targets);
    const committer = new Committer(d.discovery, 'main', 't', 1_000_000);
    try {
      await waitFor('commits acknowledged', async () => committer.acked.length >= 50);
      const r = await deploy(c, 'main', `kind: postgres\nname: main\nreplicas: 2\nsynchronous: true\nmemory: 128M\ndataDir: ${dataDir}\nsettings: { work_mem: 8MB }\n`);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      // (On a loaded machine an agent may miss its lease and be fenced: then a failover happens too. It must be as safe.)
      const reasons = new Set<string>();
      const done = await waitFor('all three members replaced, the primary by a switchover', async () => {
        await refresh();
        const ms = await instances(c, 'main');
        const a = await appOf(c, 'main');
        if (a.lastFailover !== undefined) reasons.add(a.lastFailover.reason);
        const rolled = ms.length === 3 && ms.every((m) => m.version !== v0);
        return rolled && a.fields['standbys streaming'] === 2 && Number(a.fields['epoch']) > epoch && (a.discovery['primary']?.length ?? 0) === 1 ? a : undefined;
      }, 240_000, 500);
      const n = committer.acked.length;
      await waitFor('more commits', async () => committer.acked.length >= n + 50);
      await committer.stop();
      await sampler.stop();
      assert.ok([...reasons].some((r) => /switchover/.test(r)), `a switchover: ${[...reasons].join('; ')}`);
      process.stdout.write(`# rolling restart: epoch ${epoch} -> ${String(done.fields['epoch'])}; failovers seen: ${[...reasons].join('; ')}\n`);
      const p = pgPrimaryOf(d.discovery, 'main');
      assert.ok(p !== undefined);
      const lost = await missing(p, 't', committer.acked);
      const conn = await PgConn.connect({ host: p.address, port: p.port });
      assert.equal(await conn.value('SHOW work_mem'), '8MB');
      conn.close();
      process.stdout.write(`# rolling restart: ${committer.acked.length} commits acknowledged, ${lost.length} missing, ${committer.failures} failed attempts; ${sampler.samples} samples, ${sampler.violations.length} with two writable\n`);
      process.stdout.write(`# switchover timeline:\n${(done.lastFailover?.timeline ?? []).map((e) => `#   ${new Date(e.at).toISOString()} ${e.message}`).join('\n')}\n`);
      assert.deepEqual(lost, []);
      assert.deepEqual(sampler.violations, []);
    } finally {
      await committer.stop();
      await sampler.stop();
      await d.close();
    }
  });
});
