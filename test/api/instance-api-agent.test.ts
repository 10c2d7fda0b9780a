import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { InstanceClient } from '../../src/api/instance-client.js';
import { ROOT } from '../helpers/cli.js';
import { deploy, instances, newCluster, op, startAgent, stopCluster, waitFor, type TestCluster } from '../helpers/services.js';

/**
 * The instance API end to end: a real agent (the CLI in dist/, embedded store), real instances of a fixture that
 * uses the API from its own environment (test/fixtures/api-instance.mjs) and writes down what it saw, with times.
 */

const FIXTURE = join(ROOT, 'test', 'fixtures', 'api-instance.mjs');

interface Note {
  readonly t: number;
  readonly pid: number;
  readonly type: string;
  readonly [k: string]: unknown;
}

describe('instance API with a real agent', { timeout: 300_000 }, () => {
  let work: string;
  let c: TestCluster;
  let out: string;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'bp-inst-api-agent-'));
    c = await newCluster(join(work, 'c'), [], 'default');
    (c.op as string[]).splice(0, c.op.length, '--state-dir', join(c.root, 'state-solo'));
    out = join(c.root, 'out');
    await mkdir(out, { recursive: true });
    await startAgent(c, 'solo', { capacity: 'cpu=4,memory=2G' });
  });

  after(async () => {
    await stopCluster(c);
    await rm(work, { recursive: true, force: true });
  });

  const spec = (name: string, count: number, extra: { env?: string; run?: string; top?: string; memory?: string; health?: boolean } = {}): string => `name: ${name}
count: ${count}
run:
  cmd: ["${process.execPath}", "${FIXTURE}"]
  env: { OUT_DIR: "${out}"${extra.env ?? ''} }
${extra.run ?? ''}resources: { cpu: 0.25, memory: ${extra.memory ?? '128M'} }
ports: { http: {} }
${
  extra.health === false
    ? ''
    : `health:
  http: "http://127.0.0.1:{{ instance.port.http }}/"
  interval: 500ms
  timeout: 1s
  failures: 2
  grace: 10s
`
}${extra.top ?? ''}`;

  async function notes(id: string): Promise<Note[]> {
    const text = await readFile(join(out, `${id}.jsonl`), 'utf8').catch(() => '');
    return text
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as Note);
  }

  /** A client with the instance's own token, read from its process's environment. */
  async function clientOf(id: string): Promise<InstanceClient> {
    const pid = (await notes(id)).find((n) => n.type === 'start')?.pid;
    assert.ok(pid !== undefined, `${id} started`);
    const env = new Map((await readFile(`/proc/${pid}/environ`, 'utf8')).split('\0').map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)] as const));
    return new InstanceClient({ url: env.get('BACKPLANE_API') ?? '', token: env.get('BACKPLANE_TOKEN') ?? '' });
  }

  test('each instance reaches the API from its env: self, peers from discovery, scale bounds; a stop comes stopNotice after the stopping event', async () => {
    const r = await deploy(c, 'apiw', spec('apiw', 2, { run: '  stopNotice: 2s\n', top: 'scale: { min: 1, max: 3 }\n' }), ['--wait', '90s']);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const insts = await instances(c, 'apiw');
    assert.equal(insts.length, 2);
    for (const i of insts) {
      await waitFor(`${i.id} read its self`, async () => (await notes(i.id)).some((n) => n.type === 'self'), 60_000).catch(async (err: unknown) => {
        throw new Error(`${(err as Error).message}; what it wrote: ${JSON.stringify(await notes(i.id)).slice(0, 2000)}`);
      });
      const ns = await notes(i.id);
      const start = ns.find((n) => n.type === 'start');
      assert.match(String(start?.['api']), /^http:\/\/127\.0\.0\.1:\d+$/);
      assert.equal(start?.['token'], 64);
      const self = ns.find((n) => n.type === 'self')?.['self'] as { allocId: string; index: number; scale: unknown; ports: Record<string, number>; config: unknown };
      assert.equal(self.allocId, i.id);
      assert.equal(self.index, i.index);
      assert.deepEqual(self.scale, { min: 1, max: 3 });
      assert.deepEqual(self.ports, i.ports);
      assert.equal(self.config, null);
      assert.ok(ns.some((n) => n.type === 'event:hello'), 'its event stream says hello');
    }
    const [a, b] = insts;
    assert.ok(a !== undefined && b !== undefined);
    const ca = await clientOf(a.id);
    await waitFor('both peers healthy in discovery', async () => (await ca.peers()).length === 2, 20_000);
    assert.deepEqual((await ca.peers()).map((p) => p.allocId).sort(), [a.id, b.id].sort());
    // The instance's stream heard of its peers too.
    await waitFor('a peers event with both', async () => (await notes(a.id)).some((n) => n.type === 'event:peers' && (n['data'] as { peers: unknown[] }).peers.length === 2), 20_000);
    const refused = await ca.scale(9);
    assert.equal(refused.accepted, false);
    assert.match(refused.accepted ? '' : refused.reason, /min 1, max 3/);
    assert.deepEqual(await ca.scale(3, 'test'), { accepted: true, count: 3 });

    // Stopped by the operator: each instance hears `stopping` 2 s before its SIGTERM.
    assert.equal((await op(c, ['remove', 'apiw'])).code, 0);
    for (const i of insts) {
      await waitFor(`${i.id} got SIGTERM`, async () => (await notes(i.id)).some((n) => n.type === 'SIGTERM'), 30_000);
      const ns = await notes(i.id);
      const stopping = ns.find((n) => n.type === 'event:stopping');
      const term = ns.find((n) => n.type === 'SIGTERM');
      assert.ok(stopping !== undefined, `${i.id} was told before`);
      assert.equal((stopping['data'] as { inMs: number }).inMs, 2000);
      const gap = (term?.t ?? 0) - stopping.t;
      // 2000 ms less the event's delivery to the instance (without the notice: a few ms).
      assert.ok(gap >= 1500, `${i.id}: SIGTERM ${gap} ms after the stopping event`);
    }
    // Its token is worthless once it is gone.
    await waitFor('the instances gone', async () => (await instances(c, 'apiw').catch(() => [])).length === 0, 30_000);
    // The cluster's list can empty a moment before the agent's sweep (every 500 ms) lets the alloc go: wait for it.
    await waitFor('its token refused', () => ca.self().then(() => false, (err: Error & { status?: number }) => err.status === 401), 5_000);
  });

  test('ready: false keeps a healthy instance running, not healthy, and out of its peers\' discovery', async () => {
    const r = await deploy(c, 'shy', spec('shy', 1, { env: ', NOT_READY: "1"' }));
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const [i] = await waitFor('placed', async () => {
      const l = await instances(c, 'shy');
      return l.length === 1 ? l : undefined;
    });
    assert.ok(i !== undefined);
    await waitFor('it said not ready', async () => (await notes(i.id)).some((n) => n.type === 'reported' && n['status'] === 204), 30_000);
    await waitFor('running', async () => (await instances(c, 'shy'))[0]?.state === 'running', 30_000);
    // Its health check passes all along: still not healthy, and not a peer of itself.
    const ci = await clientOf(i.id);
    for (let k = 0; k < 6; k++) {
      await sleep(500);
      assert.equal((await instances(c, 'shy'))[0]?.state, 'running');
    }
    assert.deepEqual(await ci.peers(), []);
    await ci.report({ ready: true, urgent: true });
    await waitFor('healthy once ready', async () => (await instances(c, 'shy'))[0]?.state === 'healthy', 30_000);
    await waitFor('a peer of itself', async () => (await ci.peers()).length === 1, 20_000);
    assert.equal((await op(c, ['remove', 'shy'])).code, 0);
  });
});
