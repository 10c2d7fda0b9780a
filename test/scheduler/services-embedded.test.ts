import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { API_SOCKET } from '../../src/api/server.js';
import { socketRequest } from '../helpers/api.js';
import { deploy, instances, liveWorkloads, newCluster, op, opJson, startAgent, stopCluster, waitFor, workloadSpec, type TestCluster } from '../helpers/services.js';

/**
 * The same service backplane on one machine with the embedded store: one agent owns the store, and every CLI
 * command reaches it through the agent's control socket while it runs.
 */

describe('service backplane on the embedded store', { timeout: 300_000 }, () => {
  let work: string;
  let c: TestCluster;
  let flags: string;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'bp-services-emb-'));
    c = await newCluster(join(work, 'c'), [], 'default');
    // The operator is the agent's own host: the CLI signs with the key in its state dir.
    (c.op as string[]).splice(0, c.op.length, '--state-dir', join(c.root, 'state-solo'));
    flags = join(c.root, 'flags');
    await mkdir(flags, { recursive: true });
    // Two stopped instances' state directories kept per service (default 5), so the scale test sees the rest go.
    await startAgent(c, 'solo', { capacity: 'cpu=4,memory=1G', args: ['--keep-stopped-instances', '2'] });
  });

  /** Writes of the agent (it runs the controller too) to the store so far: its metrics' request counts. */
  async function storeWrites(): Promise<number> {
    const m = await socketRequest(join(c.root, 'state-solo', API_SOCKET), 'GET', '/metrics');
    assert.equal(m.status, 200, m.text);
    let n = 0;
    for (const line of m.text.split('\n')) {
      const hit = /^backplane_store_request_duration_seconds_count\{op="(put|cas|txn|delete)"\} (\d+)/.exec(line);
      if (hit !== null) n += Number(hit[2]);
    }
    return n;
  }

  after(async () => {
    await stopCluster(c);
    await rm(work, { recursive: true, force: true });
  });

  test('a spec with mistakes is refused with file:line and nothing is deployed', async () => {
    const r = await deploy(c, 'bad', 'name: bad\ncount: -1\nrun: { cmd: [x] }\nresources: { cpu: lots }\nbogus: 1\n');
    assert.equal(r.code, 2, r.stdout);
    assert.match(r.stderr, /:2:\d+/);
    assert.match(r.stderr, /:4:\d+/);
    assert.match(r.stderr, /bogus/);
    const list = await opJson<unknown[]>(c, ['services']);
    assert.deepEqual(list, []);
  });

  test('dry run explains what cannot be placed, and changes nothing', async () => {
    const r = await deploy(c, 'huge', workloadSpec('huge', 3, flags).replace('memory: 128M', 'memory: 400M'), ['--dry-run']);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stdout, /1 of 3 instances cannot be placed: memory short on 1 host/);
    assert.match(r.stdout, /dry run: nothing was changed/);
    assert.deepEqual(await opJson<unknown[]>(c, ['services']), []);
  });

  test("deploy, scale 3 -> 5 -> 2 (newest stopped first), remove leaves nothing running and the 2 last stopped instances' directories", async () => {
    const r = await deploy(c, 'web', workloadSpec('web', 3, flags), ['--wait', '60s']);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /all healthy/);
    assert.equal((await op(c, ['scale', 'web', '5'])).code, 0);
    await waitFor('5 healthy', async () => (await instances(c, 'web')).filter((i) => i.state === 'healthy').length === 5, 60_000);
    const five = await instances(c, 'web');
    assert.equal((await op(c, ['scale', 'web', '2'])).code, 0);
    await waitFor('2 left', async () => (await instances(c, 'web')).length === 2);
    const two = await instances(c, 'web');
    assert.deepEqual(two.map((i) => i.id), five.filter((i) => i.index < 2).map((i) => i.id));
    await waitFor('3 processes stopped', async () => [...(await liveWorkloads(c.root)).keys()].length === 2);
    const hosts = await opJson<{ host: string; instances: number; reserved: { cpu: number } }[]>(c, ['hosts']);
    assert.equal(hosts[0]?.instances, 2);
    assert.equal(hosts[0]?.reserved.cpu, 1);
    assert.equal((await op(c, ['remove', 'web'])).code, 0);
    await waitFor('every web process gone', async () => (await liveWorkloads(c.root)).size === 0);
    const svc = await opJson<{ name: string; removed: boolean; placed: number }[]>(c, ['services']);
    assert.deepEqual(svc.map((s) => [s.name, s.removed, s.placed]), [['web', true, 0]]);
    // Of the five instances' state directories (logs included), the two stopped last stay: the scale-down's three go.
    const resources = join(c.root, 'state-solo', 'resources');
    const left = await waitFor('the older stopped instances collected', async () => {
      const names = (await readdir(resources)).filter((n) => n.startsWith('svc_web.'));
      return names.length === 2 ? names : undefined;
    }, 15_000);
    assert.deepEqual(left.map((n) => n.replace(/^svc_(.*)_-[0-9a-f]{12}$/, '$1')).sort(), two.map((i) => i.id).sort());
  });

  test('a crash loop is reported, and a rescheduled instance runs once the fault is gone', async () => {
    const dir = join(c.root, 'crash-flags');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'crash'), '');
    const spec = workloadSpec('crashy', 1, dir, 'restart: { attempts: 1, interval: 1m, delay: 100ms }\nreschedule: { delay: 500ms, maxDelay: 1s }\n');
    assert.equal((await deploy(c, 'crashy', spec)).code, 0);
    await waitFor('a failure and a reschedule in the events', async () => {
      const r = await opJson<{ events: { message: string }[] }>(c, ['service', 'crashy']);
      return r.events.some((e) => /fail/i.test(e.message)) && r.events.some((e) => /reschedul/i.test(e.message));
    }, 60_000);
    await rm(join(dir, 'crash'));
    await waitFor('crashy healthy', async () => (await instances(c, 'crashy')).some((i) => i.state === 'healthy'), 60_000);
    assert.equal((await op(c, ['remove', 'crashy'])).code, 0);
  });

  test('an instance that takes 6 s to stop does not fence the other instances on its host (the fence is 3 s)', async () => {
    const slowFlags = join(c.root, 'slow-flags');
    await mkdir(slowFlags, { recursive: true });
    await writeFile(join(slowFlags, 'slowstop'), '');
    assert.equal((await deploy(c, 'steady', workloadSpec('steady', 1, flags), ['--wait', '60s'])).code, 0);
    const slow = workloadSpec('slow', 1, slowFlags).replace(`env: { FLAG_DIR: "${slowFlags}" }\n`, `env: { FLAG_DIR: "${slowFlags}" }\n  stopTimeout: 20s\n`);
    assert.match(slow, /stopTimeout: 20s/);
    assert.equal((await deploy(c, 'slow', slow, ['--wait', '60s'])).code, 0);
    const before = (await liveWorkloads(c.root)).get('steady.0')?.[0];
    assert.ok(before !== undefined);
    assert.equal((await op(c, ['remove', 'slow'])).code, 0);
    const t0 = Date.now();
    // While the slow one stops (6 s), the steady one keeps its process: its watchdog never fired.
    await waitFor('the slow instance to be gone', async () => !(await liveWorkloads(c.root)).has('slow.0'), 30_000);
    assert.ok(Date.now() - t0 >= 4000, 'the slow instance took its time to stop');
    assert.deepEqual((await liveWorkloads(c.root)).get('steady.0'), [before]);
    const steady = await instances(c, 'steady');
    assert.equal(steady[0]?.state, 'healthy');
    assert.equal((await op(c, ['remove', 'steady'])).code, 0);
  });

  test('a steady cluster is quiet: complete, or waiting for an operator, nothing is rewritten', async () => {
    const v1 = await deploy(c, 'calm', workloadSpec('calm', 1, flags), ['--wait', '60s']);
    assert.equal(v1.code, 0, v1.stderr + v1.stdout);
    const plan = async (): Promise<string> => (await opJson<{ plan: { status: string } }>(c, ['plan', 'calm'])).plan.status;
    await waitFor('the deploy plan complete', async () => (await plan()) === 'complete', 30_000);
    const quiet = async (what: string): Promise<void> => {
      const w0 = await storeWrites();
      await sleep(3000);
      const w1 = await storeWrites();
      // (The controller's spin guard would hold a loop to about one write a second: 3 here. Steady means none.)
      assert.ok(w1 - w0 <= 1, `${w1 - w0} store writes in 3 s while ${what}`);
      assert.doesNotMatch(c.agents.get('solo')?.cli.output() ?? '', /never settles/);
    };
    await quiet('complete');
    // A plan waiting for promote was once rewritten a hundred times a second (compared by its text, whose key order
    // differs once read back).
    const v2 = await deploy(c, 'calm', workloadSpec('calm', 1, flags, 'version: r2\nupdate: { canary: 1, minHealthy: 1s }\n'));
    assert.equal(v2.code, 0, v2.stderr);
    await waitFor('the canary waiting for promote', async () => (await plan()) === 'waiting', 60_000);
    await quiet('waiting for promote');
    assert.equal((await op(c, ['remove', 'calm'])).code, 0);
    await waitFor('calm gone', async () => [...(await liveWorkloads(c.root)).keys()].every((k) => !k.startsWith('calm.')), 30_000);
  });
});
