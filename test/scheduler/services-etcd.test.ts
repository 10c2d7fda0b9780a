import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { EtcdStore } from '../../src/cluster/etcd-store.js';
import { keys } from '../../src/cluster/keys.js';
import { etcdAvailable, startEtcd, type EtcdCluster } from '../helpers/etcd.js';
import {
  deploy,
  healthyIndexes,
  instances,
  liveWorkloads,
  newCluster,
  op,
  opJson,
  startAgent,
  stopAgent,
  stopCluster,
  waitFor,
  workloadSpec,
  type TestAgent,
  type TestCluster,
} from '../helpers/services.js';

/**
 * The service backplane end to end: a real 3-member etcd, five `backplane run` agents as separate processes with
 * declared capacity, the operator's CLI, and a tiny HTTP workload whose health and crashes the test steers. What the
 * store says is checked against /proc: a duplicate instance would show up there whatever the agents believe.
 */

const HOSTS = ['h1', 'h2', 'h3', 'h4', 'h5'];
const LEASE_TTL_MS = 3000;

let etcd: EtcdCluster;
let work: string;

const skip = process.env['CI'] === 'true' ? false : etcdAvailable() ? false : 'etcd is not installed';

interface HostRow {
  host: string;
  alive: boolean;
  capacity: { cpu: number; memory: number };
  reserved: { cpu: number; memory: number };
  instances: number;
}

/** Never more than one live process per service instance index, sampled until stopped. */
function duplicateWatch(root: string): { stop: () => Promise<string[]> } {
  const seen: string[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      for (const [key, pids] of await liveWorkloads(root)) if (pids.length > 1) seen.push(`${key}: pids ${pids.join(',')} at ${new Date().toISOString()}`);
      await sleep(100);
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return seen;
    },
  };
}

function controllerOf(c: TestCluster): TestAgent | undefined {
  let best: { agent: TestAgent; epoch: number } | undefined;
  for (const a of c.agents.values()) {
    if (a.cli.proc.exitCode !== null || a.cli.proc.signalCode !== null) continue;
    for (const m of a.cli.output().matchAll(/this host is the controller now \(epoch (\d+)\)/g)) {
      const epoch = Number(m[1]);
      if (best === undefined || epoch > best.epoch) best = { agent: a, epoch };
    }
  }
  return best?.agent;
}

async function assertNoOvercommit(c: TestCluster): Promise<void> {
  const rows = await opJson<HostRow[]>(c, ['hosts']);
  for (const r of rows) {
    if (!r.alive) continue;
    assert.ok(r.reserved.cpu <= r.capacity.cpu + 1e-9, `${r.host}: cpu ${r.reserved.cpu} reserved of ${r.capacity.cpu}`);
    assert.ok(r.reserved.memory <= r.capacity.memory, `${r.host}: memory ${r.reserved.memory} reserved of ${r.capacity.memory}`);
  }
}

/** All `count` indexes healthy at `version` (any when undefined), each on a live host; returns the instances. */
async function allHealthy(c: TestCluster, service: string, count: number, version?: string): Promise<boolean> {
  const list = await instances(c, service);
  const ok = list.filter((i) => i.state === 'healthy' && (version === undefined || i.version === version));
  return new Set(ok.map((i) => i.index)).size === count;
}

describe('service backplane on etcd', { skip, timeout: 600_000 }, () => {
  let c: TestCluster;
  const flags = (): string => join(c.root, 'flags');

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'bp-services-'));
    etcd = await startEtcd({ members: 3 });
    c = await newCluster(join(work, 'c'), etcd.endpoints, 'svc1');
    await mkdir(flags(), { recursive: true });
    // h2 runs a proxy-style graph whose upstream list is fed by service discovery.
    const upstreamGraph = `resources:
  - kind: template
    name: ${join(c.root, 'upstreams.conf')}
    services: [web]
    template: "{% for i in services.web %}server {{ i.address }}:{{ i.ports.http }}; # {{ i.id }}\\n{% endfor %}"
`;
    for (const h of HOSTS) await startAgent(c, h, { capacity: 'cpu=2,memory=1G', labels: { zone: Number(h.slice(1)) % 2 === 0 ? 'a' : 'b' }, ...(h === 'h2' ? { graph: upstreamGraph } : {}) });
  });

  after(async () => {
    await stopCluster(c);
    await etcd?.stop();
    await rm(work, { recursive: true, force: true });
  });

  test('a deploy places every instance within capacity; a killed agent\'s instances are healthy elsewhere within the TTL plus a few seconds; a discovery-fed upstream file follows', async () => {
    const r = await deploy(c, 'web', workloadSpec('web', 6, flags()), ['--wait', '60s']);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    await assertNoOvercommit(c);
    const live = await liveWorkloads(c.root);
    assert.deepEqual([...live.keys()].filter((k) => k.startsWith('web.')).sort(), ['web.0', 'web.1', 'web.2', 'web.3', 'web.4', 'web.5']);
    for (const pids of live.values()) assert.equal(pids.length, 1);

    const upstreams = async (): Promise<string[]> => ((await readFile(join(c.root, 'upstreams.conf'), 'utf8').catch(() => '')).match(/# (\S+)/g) ?? []).map((m) => m.slice(2)).sort();
    const healthyIds = async (): Promise<string[]> => (await instances(c, 'web')).filter((i) => i.state === 'healthy').map((i) => i.id).sort();
    await waitFor('the upstream file to list the six healthy instances', async () => {
      const u = await upstreams();
      return u.length === 6 && JSON.stringify(u) === JSON.stringify(await healthyIds());
    });

    // Kill -9 the agent with the most instances (never h2, whose upstream file we follow).
    const before = await instances(c, 'web');
    const perHost = new Map<string, number>();
    for (const i of before) if (i.host !== 'h2') perHost.set(i.host, (perHost.get(i.host) ?? 0) + 1);
    const victimHost = [...perHost.entries()].sort((a, b) => b[1] - a[1])[0]?.[0];
    assert.ok(victimHost !== undefined);
    const victim = c.agents.get(victimHost);
    assert.ok(victim !== undefined);
    const dups = duplicateWatch(c.root);
    const t0 = Date.now();
    await stopAgent(victim, 'SIGKILL');
    await waitFor('every web instance healthy on a live host', async () => {
      const list = await instances(c, 'web');
      return new Set(list.filter((i) => i.state === 'healthy' && i.host !== victimHost).map((i) => i.index)).size === 6;
    }, 60_000);
    const took = Date.now() - t0;
    assert.ok(took < LEASE_TTL_MS + 10_000, `healed in ${took}ms`);
    process.stderr.write(`# kill -9 of ${victimHost}: all 6 healthy elsewhere after ${took}ms\n`);
    await waitFor('the upstream file to follow', async () => {
      const u = await upstreams();
      return u.length === 6 && JSON.stringify(u) === JSON.stringify(await healthyIds());
    });
    assert.deepEqual(await dups.stop(), [], 'no instance ran twice');
    await assertNoOvercommit(c);
    // Replaced as soon as the host's published fence allows: fence (3s) + 400ms slack - TTL (3s), not a whole fence
    // more. The events name how long the host had been gone when each replacement was placed.
    const events = await opJson<{ events: { message: string }[] }>(c, ['service', 'web', '--events', '100']);
    const downs = events.events.flatMap((e) => {
      const m = new RegExp(`on ${victimHost} lost \\(host down ([\\d.]+)(ms|s)\\)`).exec(e.message);
      return m === null ? [] : [Number(m[1]) * (m[2] === 's' ? 1000 : 1)];
    });
    assert.ok(downs.length > 0, JSON.stringify(events.events.map((e) => e.message)));
    assert.ok(Math.min(...downs) < 2000, `replaced ${Math.min(...downs)}ms after the host was gone`);
    // Its instances were killed by their fence, not left behind.
    const after = await liveWorkloads(c.root);
    for (const [k, pids] of after) assert.equal(pids.length, 1, k);
    // The killed agent comes back (same state dir): it runs nothing it is no longer assigned.
    await startAgent(c, victimHost, { capacity: 'cpu=2,memory=1G', labels: { zone: Number(victimHost.slice(1)) % 2 === 0 ? 'a' : 'b' } });
  });

  test('SIGSTOP an agent past its TTL, SIGCONT it: its instances move, and there is never a duplicate', async () => {
    const list = await instances(c, 'web');
    const host = list.find((i) => i.host !== 'h2' && i.host !== controllerOf(c)?.host)?.host ?? list[0]?.host;
    assert.ok(host !== undefined);
    const agent = c.agents.get(host);
    assert.ok(agent !== undefined);
    const dups = duplicateWatch(c.root);
    agent.cli.proc.kill('SIGSTOP');
    await waitFor('every web instance healthy off the stopped host', async () => {
      const l = await instances(c, 'web');
      return new Set(l.filter((i) => i.state === 'healthy' && i.host !== host).map((i) => i.index)).size === 6;
    }, 60_000);
    agent.cli.proc.kill('SIGCONT');
    // Long enough for the resumed agent to act on what it finds (and to start something, if it were going to).
    await sleep(4000);
    assert.deepEqual(await dups.stop(), [], 'no instance ran twice');
    const live = await liveWorkloads(c.root);
    assert.equal([...live.keys()].filter((k) => k.startsWith('web.')).length, 6);
    for (const [k, pids] of live) assert.equal(pids.length, 1, k);
    assert.match(agent.cli.output(), /no longer assigned here|not running|fenced/);
    await assertNoOvercommit(c);
  });

  test('drain: every instance moves off, and the healthy count never drops below the minimum', async () => {
    const list = await instances(c, 'web');
    const counts = new Map<string, number>();
    for (const i of list) counts.set(i.host, (counts.get(i.host) ?? 0) + 1);
    const host = [...counts.entries()].sort((a, b) => b[1] - a[1])[0]?.[0];
    assert.ok(host !== undefined);
    let low = 6;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const n = (await healthyIndexes(c, 'web')).size;
        low = Math.min(low, n);
        await sleep(50);
      }
    })();
    const r = await op(c, ['drain', host]);
    assert.equal(r.code, 0, r.stderr);
    await waitFor(`${host} to hold no instance`, async () => (await instances(c, 'web')).every((i) => i.host !== host) && (await allHealthy(c, 'web', 6)), 90_000).catch(async (err: unknown) => {
      // What the operator would look at: the service, the hosts, and the controller's log.
      const ctl = controllerOf(c);
      process.stderr.write(`${(await op(c, ['service', 'web'])).stdout}\n${(await op(c, ['hosts'])).stdout}\n${ctl?.host ?? '?'}:\n${ctl?.cli.output().slice(-6000) ?? ''}\n`);
      throw err;
    });
    sampling = false;
    await sampler;
    // The disruption budget (maxUnavailable) defaults to update.maxParallel = 1: never fewer than 5 of 6 healthy.
    assert.ok(low >= 5, `healthy count fell to ${low}`);
    const hosts = await opJson<{ host: string; draining: boolean; instances: number }[]>(c, ['hosts']);
    assert.deepEqual(hosts.find((h) => h.host === host), { ...hosts.find((h) => h.host === host), draining: true, instances: 0 });
    assert.equal((await op(c, ['undrain', host])).code, 0);
  });

  test('kill the controller in the middle of a rolling update: the next one finishes it', async () => {
    const v2 = workloadSpec('web', 6, flags(), 'update: { maxParallel: 1, minHealthy: 1s }\n').replace('env: { FLAG_DIR', 'env: { RELEASE: "2", FLAG_DIR');
    const r = await deploy(c, 'web', v2);
    assert.equal(r.code, 0, r.stderr);
    const version = /deployed version (\S+),/.exec(r.stdout)?.[1];
    assert.ok(version !== undefined, r.stdout);
    await waitFor('the first new-version instance to be healthy', async () => (await healthyIndexes(c, 'web', version)).size >= 1, 60_000);
    const ctl = controllerOf(c);
    assert.ok(ctl !== undefined);
    assert.ok((await healthyIndexes(c, 'web', version)).size < 6, 'the update was still in progress');
    await stopAgent(ctl, 'SIGKILL');
    await waitFor('every instance at the new version, healthy', () => allHealthy(c, 'web', 6, version), 120_000);
    await waitFor('no instance of the old version left', async () => (await instances(c, 'web')).every((i) => i.version === version), 60_000);
    const next = controllerOf(c);
    assert.ok(next !== undefined && next !== ctl, 'another agent took over');
    await startAgent(c, ctl.host, { capacity: 'cpu=2,memory=1G', labels: { zone: Number(ctl.host.slice(1)) % 2 === 0 ? 'a' : 'b' } });
    await assertNoOvercommit(c);
  });

  test('scale 3 -> 6 -> 2 stops the newest instances first', async () => {
    assert.equal((await deploy(c, 'sc', workloadSpec('sc', 3, flags()), ['--wait', '60s'])).code, 0);
    assert.equal((await op(c, ['scale', 'sc', '6'])).code, 0);
    await waitFor('6 healthy', () => allHealthy(c, 'sc', 6), 60_000);
    const six = await instances(c, 'sc');
    assert.equal((await op(c, ['scale', 'sc', '2'])).code, 0);
    await waitFor('2 left', async () => (await instances(c, 'sc')).length === 2, 30_000);
    const two = await instances(c, 'sc');
    assert.deepEqual(two.map((i) => i.index), [0, 1]);
    // The two that stayed are the oldest ones, untouched (same alloc ids).
    assert.deepEqual(two.map((i) => i.id), six.filter((i) => i.index < 2).map((i) => i.id));
    await waitFor('the stopped processes gone', async () => [...(await liveWorkloads(c.root)).keys()].filter((k) => k.startsWith('sc.')).length === 2, 30_000);
    assert.equal((await op(c, ['remove', 'sc'])).code, 0);
    await waitFor('sc gone', async () => [...(await liveWorkloads(c.root)).keys()].every((k) => !k.startsWith('sc.')), 30_000);
  });

  test('a crash-looping instance is rescheduled elsewhere and reported', async () => {
    const dir = join(c.root, 'crash-flags');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'crash'), '');
    const spec = workloadSpec('crashy', 1, dir, 'restart: { attempts: 1, interval: 1m, delay: 100ms }\nreschedule: { delay: 1s, maxDelay: 2s }\n');
    assert.equal((await deploy(c, 'crashy', spec)).code, 0);
    const info = await waitFor('a reschedule event', async () => {
      const r = await opJson<{ events: { message: string }[]; instances: { host: string; state: string }[] }>(c, ['service', 'crashy']);
      return r.events.some((e) => /reschedul/i.test(e.message)) && r.events.some((e) => /fail/i.test(e.message)) ? r : undefined;
    }, 60_000);
    assert.ok(info.events.length >= 2);
    const text = await op(c, ['service', 'crashy']);
    assert.match(text.stdout, /crash|fail/i);
    // Fixed: the next placement runs it.
    await rm(join(dir, 'crash'));
    await waitFor('crashy healthy', () => allHealthy(c, 'crashy', 1), 60_000);
    assert.equal((await op(c, ['remove', 'crashy'])).code, 0);
  });

  test('records nobody signed are refused: a forged assignment runs nothing, a spec from a non-operator host is ignored', async () => {
    const store = new EtcdStore({ endpoints: etcd.endpoints, cluster: c.name });
    try {
      const forged = JSON.stringify({ by: 'h1', record: JSON.stringify({ v: 1, seq: Date.now(), body: '{}', sig: 'AAAA' }) });
      await store.put(keys.assign('h3', 'evil.0.deadbeef'), forged);
      await store.put(keys.service('evil'), forged);
      await c.agents.get('h3')?.cli.waitFor(/not running evil\.0\.deadbeef/, 10_000);
      await sleep(1000);
      assert.ok(![...(await liveWorkloads()).keys()].some((k) => k.startsWith('evil')));
      const services = await op(c, ['services']);
      assert.match(services.stdout, /failed verification/);
      assert.doesNotMatch(services.stdout, /^evil /m);
    } finally {
      await store.delete(keys.assign('h3', 'evil.0.deadbeef')).catch(() => undefined);
      await store.delete(keys.service('evil')).catch(() => undefined);
      await store.close();
    }
  });
});
