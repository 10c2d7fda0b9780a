// The Redis member (src/backplanes/redis/member.ts) as a real process, with real redis-servers, against the real
// instance API server (src/api/instance-api.ts) over a hand-driven backend: the configs react would give are pushed
// by hand, and what the members report is read back. A sampler checks the two redis-servers every 20 ms throughout:
// never two masters at once.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InstanceApi, type InstanceApiBackend, type StateBody } from '../../../src/api/instance-api.js';
import { createLogger } from '../../../src/log.js';
import type { Alloc, ServiceSpec } from '../../../src/scheduler/types.js';
import type { RedisConfig, RedisMemberState } from '../../../src/backplanes/redis/react.js';
import { RedisConnection, parseInfo } from '../../../src/backplanes/redis/resp.js';
import { freePort } from '../../helpers/net.js';
import { RedisLeftovers } from './cluster.js';

const ROOT = new URL('../../..', import.meta.url).pathname;

interface Inst {
  alloc: Omit<Alloc, 'status'>;
  reports: { at: number; body: StateBody }[];
  proc?: ChildProcess;
  exited?: Promise<number | null>;
}

const insts = new Map<string, Inst>();
const spec = { name: 'cache' } as unknown as ServiceSpec;
const backend: InstanceApiBackend = {
  instance: (id) => {
    const i = insts.get(id);
    return i === undefined ? undefined : { alloc: i.alloc, spec };
  },
  ids: () => insts.keys(),
  host: 'h1',
  address: () => '127.0.0.1',
  peers: () => [],
  watchPeers: () => () => undefined,
  report: (id, body) => insts.get(id)?.reports.push({ at: Date.now(), body }),
  scale: async () => undefined,
};

const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function redis(port: number, args: (string | number)[]): Promise<string> {
  let c: RedisConnection;
  try {
    c = await RedisConnection.open(port);
  } catch (err) {
    return `ERR ${err instanceof Error ? err.message : String(err)}`;
  }
  try {
    return String(await c.command(args));
  } catch (err) {
    return err instanceof Error ? `ERR ${err.message}` : String(err);
  } finally {
    c.close();
  }
}

function lastState(i: Inst): RedisMemberState | undefined {
  for (let k = i.reports.length - 1; k >= 0; k--) {
    const s = i.reports[k]?.body.state;
    if (s !== undefined) return s as unknown as RedisMemberState;
  }
  return undefined;
}

async function until<T>(what: string, f: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 15_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('member: read-only at start, promotes only for its own run id, reports down and restarts read-only, follows, hands over with FAILOVER, stops on SIGTERM', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bp-redis-member-'));
  const api = new InstanceApi({ backend, log: createLogger({ level: 'silent' }), stateFile: join(dir, 'api.json') });
  await api.start();
  const leftovers = new RedisLeftovers();
  cleanups.push(async () => {
    // A failed run: members killed outright would leave their redis behind.
    for (const i of insts.values()) i.proc?.kill('SIGKILL');
    leftovers.killAll();
    await api.close();
    await rm(dir, { recursive: true, force: true });
  });

  const mk = async (id: string, index: number): Promise<Inst> => {
    const port = await freePort();
    const alloc = { id, service: 'cache', index, version: 'v1', host: 'h1', ports: { redis: port }, resources: { cpu: 0.25, memory: 256 << 20 }, createdAt: 0 } as unknown as Omit<Alloc, 'status'>;
    const inst: Inst = { alloc, reports: [] };
    insts.set(id, inst);
    const proc = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/backplanes/redis/member.ts')], {
      cwd: ROOT,
      env: { ...process.env, BACKPLANE_API: api.url, BACKPLANE_TOKEN: api.tokenFor(id), REDIS_MAXMEMORY: String(64 << 20) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const debug = process.env.DEBUG_MEMBER !== undefined;
    proc.stdout.on('data', (d: Buffer) => debug && process.stdout.write(`# ${id}: ${d.toString()}`));
    proc.stderr.on('data', (d: Buffer) => debug && process.stdout.write(`# ${id}: ${d.toString()}`));
    inst.proc = proc;
    inst.exited = new Promise((r) => proc.on('exit', (code) => r(code)));
    return inst;
  };
  const setConfig = (i: Inst, c: RedisConfig): void => {
    i.alloc = { ...i.alloc, config: c as unknown as Record<string, unknown> };
    api.configChanged(i.alloc.id, i.alloc.config);
  };
  const port = (i: Inst): number => i.alloc.ports.redis ?? 0;

  const a = await mk('cache.0.aaaaaaaa', 0);
  const b = await mk('cache.1.bbbbbbbb', 1);

  // The sampler: never two masters among the redis-servers that answer.
  const sampler = { stop: false, samples: 0, violations: [] as string[] };
  cleanups.push(async () => {
    sampler.stop = true;
  });
  const sampling = (async () => {
    while (!sampler.stop) {
      const roles = await Promise.all([a, b].map((i) => redis(port(i), ['INFO', 'replication']).then((t) => parseInfo(t).get('role'), () => undefined)));
      sampler.samples++;
      if (roles.filter((r) => r === 'master').length > 1) sampler.violations.push(`${new Date().toISOString()} both masters`);
      await new Promise((r) => setTimeout(r, 20));
    }
  })();

  // 1. Both start read-only (no config yet) and report a run id.
  const ra = await until('a reports', () => lastState(a)?.runId);
  const rb = await until('b reports', () => lastState(b)?.runId);
  await leftovers.record(port(a));
  await leftovers.record(port(b));
  assert.equal(lastState(a)?.role, 'replica');
  assert.match(await redis(port(a), ['SET', 'k', '1']), /READONLY/);
  assert.match(await redis(port(b), ['SET', 'k', '1']), /READONLY/);
  assert.equal(a.reports.at(-1)?.body.ready, true);

  // 2. A promotion for another run id is ignored; for its own, applied; b follows a.
  setConfig(a, { epoch: 1, role: 'primary', runId: 'not-this-redis' });
  await new Promise((r) => setTimeout(r, 500));
  assert.match(await redis(port(a), ['SET', 'k', '1']), /READONLY/, 'a promotion meant for another redis is never applied');
  setConfig(a, { epoch: 2, role: 'primary', runId: ra });
  setConfig(b, { epoch: 2, role: 'replica', primary: { allocId: a.alloc.id, address: '127.0.0.1', port: port(a) } });
  const promotedAt = Date.now();
  await until('a primary at epoch 2', () => lastState(a)?.role === 'primary' && lastState(a)?.epoch === 2);
  const urgent = a.reports.find((r) => (r.body.state as { role?: string } | undefined)?.role === 'primary');
  assert.equal(urgent?.body.urgent, true, 'a role change is reported urgent');
  assert.ok((urgent?.at ?? Infinity) - promotedAt < 1000, `promotion reported within 1 s (${(urgent?.at ?? 0) - promotedAt} ms)`);
  assert.equal(await redis(port(a), ['SET', 'k', 'v1']), 'OK');
  await until('b linked', () => lastState(b)?.link === 'up' && lastState(b)?.epoch === 2);
  await until('b has k', async () => (await redis(port(b), ['GET', 'k'])) === 'v1');

  // 3. kill -9 of a's redis: `down` at once, then a new read-only redis with a new run id; its old config is void.
  const pid = Number(parseInfo(await redis(port(a), ['INFO', 'server'])).get('process_id'));
  const killedAt = Date.now();
  process.kill(pid, 'SIGKILL');
  const down = await until('a reports down', () => a.reports.find((r) => r.at >= killedAt && (r.body.state as { role?: string } | undefined)?.role === 'down'));
  assert.equal(down.body.urgent, true);
  assert.equal(down.body.ready, false);
  assert.equal((down.body.state as { runId?: string }).runId, ra);
  assert.ok(down.at - killedAt < 500, `down reported ${down.at - killedAt} ms after the kill`);
  const ra2 = await until('a restarted', () => (lastState(a)?.runId !== ra && lastState(a)?.role === 'replica' ? lastState(a)?.runId : undefined));
  await leftovers.record(port(a));
  assert.match(await redis(port(a), ['SET', 'k', 'x']), /READONLY/, 'a restarted primary is read-only although its config still says primary at epoch 2');
  await until('b sees the link down', () => lastState(b)?.link === 'down');

  // 4. b promoted (epoch 3), a follows b and gets the data back.
  setConfig(b, { epoch: 3, role: 'primary', runId: rb });
  setConfig(a, { epoch: 3, role: 'replica', primary: { allocId: b.alloc.id, address: '127.0.0.1', port: port(b) } });
  await until('b primary at epoch 3', () => lastState(b)?.role === 'primary' && lastState(b)?.epoch === 3);
  assert.equal(await redis(port(b), ['SET', 'k2', 'v2']), 'OK');
  await until('a linked to b', () => lastState(a)?.link === 'up' && lastState(a)?.epoch === 3);
  await until('a has the data', async () => (await redis(port(a), ['GET', 'k'])) === 'v1' && (await redis(port(a), ['GET', 'k2'])) === 'v2');

  // 5. Switchover b -> a: b hands over with FAILOVER TO (no write lost), then a is confirmed primary at epoch 4.
  for (let n = 0; n < 200; n++) await redis(port(b), ['INCR', 'counter']);
  setConfig(b, { epoch: 4, role: 'replica', primary: { allocId: a.alloc.id, address: '127.0.0.1', port: port(a) }, failover: true });
  await until('b a replica at epoch 4', () => lastState(b)?.role === 'replica' && lastState(b)?.epoch === 4);
  assert.equal(parseInfo(await redis(port(a), ['INFO', 'replication'])).get('role'), 'master', 'FAILOVER TO made a master');
  assert.equal(await redis(port(a), ['GET', 'counter']), '200', 'no write lost in the handover');
  setConfig(a, { epoch: 4, role: 'primary', runId: ra2 });
  await until('a primary at epoch 4', () => lastState(a)?.role === 'primary' && lastState(a)?.epoch === 4);
  assert.match(await redis(port(b), ['SET', 'k', 'x']), /READONLY/);

  // 6. SIGTERM: the member stops its redis and exits.
  a.proc?.kill('SIGTERM');
  const code = await Promise.race([a.exited, new Promise((r) => setTimeout(() => r('timeout'), 8000))]);
  assert.equal(code, 0);
  assert.match(await redis(port(a), ['PING']), /ECONNREFUSED/);

  sampler.stop = true;
  await sampling;
  b.proc?.kill('SIGTERM');
  await b.exited;
  assert.ok(sampler.samples > 50, `${sampler.samples} samples`);
  assert.deepEqual(sampler.violations, []);
});
