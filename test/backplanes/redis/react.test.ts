// The Redis backplane's react, a pure function, over hand-made cluster views: who is promoted when, and never two
// configs saying primary. No processes: member.test.ts and redis-etcd.test.ts run the real thing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { reactRedis, type RedisConfig, type RedisMemberState } from '../../../src/backplanes/redis/react.js';
import redis from '../../../src/backplanes/redis/index.js';
import type { Member, ReactInput, ReactOutput, ServiceView } from '../../../src/backplanes/sdk.js';
import { reactOutputSchema } from '../../../src/backplanes/sdk.js';

const NAME = 'cache';

interface M {
  id: string;
  index: number;
  host?: string;
  version?: string;
  hostAlive?: boolean;
  fenced?: boolean;
  stopping?: boolean;
  state?: RedisMemberState;
  reportAt?: number;
  config?: RedisConfig;
}

function member(m: M): Member {
  return {
    allocId: m.id,
    service: NAME,
    index: m.index,
    version: m.version ?? 'v1',
    host: m.host ?? `h${m.index}`,
    address: `10.0.0.${m.index + 1}`,
    ports: { redis: 20000 + m.index },
    state: 'healthy',
    restarts: 0,
    hostAlive: m.hostAlive ?? true,
    fenced: m.fenced ?? false,
    stopping: m.stopping ?? false,
    ...(m.config === undefined ? {} : { config: m.config as unknown as Record<string, unknown> }),
    ...(m.state === undefined ? {} : { report: { state: m.state as unknown as Record<string, unknown>, at: m.reportAt ?? 1000 } }),
  };
}

function input(now: number, members: M[], memory?: unknown, svc: Partial<ServiceView> = {}): ReactInput<unknown> {
  return {
    now,
    object: { kind: 'redis', name: NAME, params: {} },
    deployedAt: '2026-12-02T00:00:00Z',
    services: [{ name: NAME, count: members.filter((m) => m.stopping !== true).length, version: 'v1', ...svc }],
    members: members.map(member),
    memory,
  };
}

function run(now: number, members: M[], memory?: unknown, svc: Partial<ServiceView> = {}): ReactOutput {
  const out = reactRedis(input(now, members, memory, svc));
  // Whatever it returns must pass the controller's check.
  assert.equal(reactOutputSchema.safeParse(out).success, true, JSON.stringify(reactOutputSchema.safeParse(out).error));
  const primaries = Object.entries(out.config ?? {}).filter(([, c]) => c.role === 'primary');
  assert.ok(primaries.length <= 1, `two configs say primary: ${JSON.stringify(primaries)}`);
  return out;
}

const cfg = (out: ReactOutput, id: string): RedisConfig => out.config?.[id] as unknown as RedisConfig;
const primaryOf = (out: ReactOutput): string | undefined => Object.entries(out.config ?? {}).find(([, c]) => c.role === 'primary')?.[0];
const replica = (epoch: number, runId: string, offset: number, link: 'up' | 'down' = 'up'): RedisMemberState => ({ role: 'replica', epoch, runId, offset, link });
const primary = (epoch: number, runId: string, offset: number): RedisMemberState => ({ role: 'primary', epoch, runId, offset });

/** A settled cluster: a primary at epoch 1 with two linked replicas; returns the members and the memory. */
function settled(): { ms: M[]; memory: unknown } {
  let ms: M[] = [
    { id: 'a', index: 0, state: replica(0, 'ra', 0, 'down') },
    { id: 'b', index: 1, state: replica(0, 'rb', 0, 'down') },
    { id: 'c', index: 2, state: replica(0, 'rc', 0, 'down') },
  ];
  const o1 = run(1000, ms);
  ms = ms.map((m) => ({ ...m, config: cfg(o1, m.id) }));
  ms[0] = { ...ms[0]!, state: primary(1, 'ra', 100), reportAt: 1100 };
  ms[1] = { ...ms[1]!, state: replica(1, 'rb', 100), reportAt: 1100 };
  ms[2] = { ...ms[2]!, state: replica(1, 'rc', 90), reportAt: 1100 };
  const o2 = run(1200, ms, o1.memory);
  ms = ms.map((m) => ({ ...m, config: cfg(o2, m.id) }));
  return { ms, memory: o2.memory };
}

test('first deploy: nothing is promoted before a member reports; then exactly one, the lowest index on equal offsets', () => {
  const none = run(0, [
    { id: 'a', index: 0 },
    { id: 'b', index: 1 },
  ]);
  assert.equal(primaryOf(none), undefined);
  assert.deepEqual(cfg(none, 'a'), { epoch: 0, role: 'replica' });
  assert.deepEqual(none.discovery?.primary, []);
  assert.ok(none.wakeInMs !== undefined);

  const out = run(1000, [
    { id: 'a', index: 0, state: replica(0, 'ra', 0, 'down') },
    { id: 'b', index: 1, state: replica(0, 'rb', 0, 'down') },
  ]);
  assert.equal(primaryOf(out), 'a');
  assert.deepEqual(cfg(out, 'a'), { epoch: 1, role: 'primary', runId: 'ra' });
  assert.deepEqual(cfg(out, 'b'), { epoch: 1, role: 'replica', primary: { allocId: 'a', address: '10.0.0.1', port: 20000 } });
  // Not in discovery until it says it is primary at epoch 1.
  assert.deepEqual(out.discovery?.primary, []);
  assert.match(out.events?.join('\n') ?? '', /a on h0 is told to become primary at epoch 1/);

  const { ms, memory } = settled();
  const o = run(1300, ms, memory);
  assert.deepEqual(o.discovery?.primary, [{ allocId: 'a', port: 'redis' }]);
  assert.deepEqual(o.discovery?.replicas?.map((t) => t.allocId), ['b', 'c']);
  assert.equal(o.status?.fields?.primary, 'a');
  assert.equal(o.status?.fields?.['replicas linked'], 2);
  assert.equal(o.status?.fields?.['max lag (bytes)'], 10);
  assert.match(o.status?.summary ?? '', /primary a on h0 \(epoch 1\); 2\/2 replicas linked/);
  assert.equal(o.events, undefined, 'a settled pass says nothing');
});

test('kill -9: a `down` report or a new run id is a lost primary; the highest offset is promoted, the rest re-pointed', () => {
  for (const lostState of [{ role: 'down', epoch: 1, runId: 'ra' } as RedisMemberState, replica(1, 'ra2', 0, 'down')]) {
    const { ms, memory } = settled();
    ms[0] = { ...ms[0]!, state: lostState, reportAt: 2000 };
    ms[1] = { ...ms[1]!, state: replica(1, 'rb', 150, 'down'), reportAt: 2010 };
    ms[2] = { ...ms[2]!, state: replica(1, 'rc', 160, 'down'), reportAt: 2010 };
    const out = run(2050, ms, memory);
    assert.equal(primaryOf(out), 'c', 'the highest offset wins (160 > 150)');
    assert.deepEqual(cfg(out, 'c'), { epoch: 2, role: 'primary', runId: 'rc' });
    assert.deepEqual(cfg(out, 'b'), { epoch: 2, role: 'replica', primary: { allocId: 'c', address: '10.0.0.3', port: 20002 } });
    assert.deepEqual(cfg(out, 'a'), { epoch: 2, role: 'replica', primary: { allocId: 'c', address: '10.0.0.3', port: 20002 } }, 'the old primary is told to follow');
    assert.deepEqual(out.discovery?.primary, []);
    const f = out.status?.lastFailover;
    assert.equal(f?.from, 'a');
    assert.equal(f?.to, 'c');
    assert.match(f?.reason ?? '', lostState.role === 'down' ? /redis exited/ : /run id ra -> ra2/);
    assert.equal(f?.timeline[0]?.at, 2000, 'the timeline starts at the down report');
  }
});

test('a replica that has not reported since the loss is waited for (its final offset), at most SETTLE_MS', () => {
  const { ms, memory } = settled();
  ms[0] = { ...ms[0]!, state: { role: 'down', epoch: 1, runId: 'ra' }, reportAt: 2000 };
  ms[1] = { ...ms[1]!, state: replica(1, 'rb', 150, 'down'), reportAt: 2010 };
  // c still says link up from before the loss.
  const waiting = run(2050, ms, memory);
  assert.equal(primaryOf(waiting), 'a', 'no successor yet: the old primary keeps its (void) config');
  assert.equal(cfg(waiting, 'b').role, 'replica');
  assert.equal(cfg(waiting, 'c').role, 'replica');
  assert.ok(waiting.wakeInMs !== undefined);
  assert.match(waiting.status?.summary ?? '', /no primary: primary a lost/);
  ms[2] = { ...ms[2]!, state: replica(1, 'rc', 170, 'down'), reportAt: 2080 };
  assert.equal(primaryOf(run(2100, ms, waiting.memory)), 'c');
  // Without c's fresh report, b is promoted once SETTLE_MS has passed.
  ms[2] = { ...ms[2], state: replica(1, 'rc', 90), reportAt: 1100 };
  assert.equal(primaryOf(run(3100, ms, waiting.memory)), 'b');
});

test('host lost but not fenced: no promotion (it may still be writable); fenced: promotion', () => {
  const { ms, memory } = settled();
  ms[0] = { ...ms[0]!, hostAlive: false };
  ms[1] = { ...ms[1]!, state: replica(1, 'rb', 150, 'down'), reportAt: 2010 };
  ms[2] = { ...ms[2]!, state: replica(1, 'rc', 140, 'down'), reportAt: 2010 };
  let mem = memory;
  for (const now of [2100, 5000, 20_000]) {
    const out = run(now, ms, mem);
    assert.equal(primaryOf(out), 'a', `still a at ${now}`);
    assert.deepEqual(cfg(out, 'b').primary?.allocId, 'a');
    assert.match(out.status?.summary ?? '', /not responding: waiting for its fence/);
    assert.ok(out.wakeInMs !== undefined);
    mem = out.memory;
  }
  ms[0] = { ...ms[0], fenced: true };
  const out = run(21_000, ms, mem);
  assert.equal(primaryOf(out), 'b');
  assert.match(out.status?.lastFailover?.reason ?? '', /host h0 is fenced/);
});

test('the alloc gone is a lost primary; a stopping primary is not (it may still run)', () => {
  const { ms, memory } = settled();
  const stopping = run(2000, [{ ...ms[0]!, stopping: true }, ms[1]!, ms[2]!], memory);
  assert.equal(primaryOf(stopping), 'a');
  // The replicas have not reported since: their final offsets are waited for, then b (100 > 90) wins.
  const early = run(2100, [ms[1]!, ms[2]!], stopping.memory);
  assert.equal(primaryOf(early), undefined);
  const gone = run(2100 + 1000, [ms[1]!, ms[2]!], early.memory);
  assert.equal(primaryOf(gone), 'b', 'b: offset 100 > c 90');
  assert.match(gone.status?.lastFailover?.reason ?? '', /instance is gone/);
});

test('the old primary comes back as a replica; the timeline records writable, rejoined and linked', () => {
  const { ms, memory } = settled();
  ms[0] = { ...ms[0]!, state: { role: 'down', epoch: 1, runId: 'ra' }, reportAt: 2000 };
  ms[1] = { ...ms[1]!, state: replica(1, 'rb', 150, 'down'), reportAt: 2010 };
  ms[2] = { ...ms[2]!, state: replica(1, 'rc', 140, 'down'), reportAt: 2010 };
  const o1 = run(2050, ms, memory);
  assert.equal(primaryOf(o1), 'b');
  const withCfg = (o: ReactOutput): M[] => ms.map((m) => ({ ...m, config: cfg(o, m.id) }));
  let cur = withCfg(o1);
  // The old primary restarted read-only (new run id); its stale primary config (epoch 1, run id ra) is not its own.
  cur[0] = { ...cur[0]!, state: replica(1, 'ra2', 0, 'down'), reportAt: 2060 };
  cur[1] = { ...cur[1]!, state: primary(2, 'rb', 150), reportAt: 2070 };
  const o2 = run(2080, cur, o1.memory);
  assert.equal(primaryOf(o2), 'b', 'a restarted old primary never takes the role back while b holds it');
  assert.deepEqual(o2.discovery?.primary, [{ allocId: 'b', port: 'redis' }]);
  assert.match(o2.events?.join('\n') ?? '', /b is primary at epoch 2/);
  cur = cur.map((m) => ({ ...m, config: cfg(o2, m.id) }));
  cur[0] = { ...cur[0]!, state: replica(2, 'ra2', 150), reportAt: 2200 };
  cur[2] = { ...cur[2]!, state: replica(2, 'rc', 150), reportAt: 2200 };
  const o3 = run(2300, cur, o2.memory);
  assert.deepEqual(cfg(o3, 'a'), { epoch: 2, role: 'replica', primary: { allocId: 'b', address: '10.0.0.2', port: 20001 } });
  const tl = o3.status?.lastFailover?.timeline.map((e) => e.message).join('\n') ?? '';
  assert.match(tl, /primary a on h0 lost: its redis exited/);
  assert.match(tl, /promoted b on h1 \(offset 150\) at epoch 2/);
  assert.match(tl, /b reports primary at epoch 2: it accepts writes/);
  assert.match(tl, /old primary a rejoined as a replica of b/);
  assert.match(tl, /2 replicas linked to b/);
  assert.match(o3.events?.join('\n') ?? '', /old primary a rejoined/);
  // Said once.
  assert.equal(run(2400, cur, o3.memory).events, undefined);
});

test('a lone primary that restarted with no replica left is promoted again, with a new epoch and its new run id', () => {
  const ms: M[] = [{ id: 'a', index: 0, state: replica(0, 'ra', 0, 'down') }];
  const o1 = run(1000, ms);
  assert.deepEqual(cfg(o1, 'a'), { epoch: 1, role: 'primary', runId: 'ra' });
  const o2 = run(1100, [{ ...ms[0]!, config: cfg(o1, 'a'), state: primary(1, 'ra', 10) }], o1.memory);
  const o3 = run(2000, [{ ...ms[0]!, config: cfg(o2, 'a'), state: { role: 'down', epoch: 1, runId: 'ra' }, reportAt: 1990 }], o2.memory);
  assert.deepEqual(cfg(o3, 'a'), { epoch: 1, role: 'primary', runId: 'ra' }, 'down, nothing to promote: it keeps its (now void) config');
  assert.deepEqual(o3.discovery?.primary, []);
  const o4 = run(2100, [{ ...ms[0]!, config: cfg(o3, 'a'), state: replica(1, 'ra2', 0, 'down'), reportAt: 2090 }], o3.memory);
  assert.deepEqual(cfg(o4, 'a'), { epoch: 2, role: 'primary', runId: 'ra2' });
});

test('never two configs saying primary, nor two members writable at once, over a random walk of deaths, restarts, partitions and lost memory writes', () => {
  let seed = 7;
  const rnd = (): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  let runs = 0;
  const fresh = (id: string): string => `${id}-${runs++}`;
  let ms: M[] = ['a', 'b', 'c'].map((id, i) => ({ id, index: i }));
  let memory: unknown;
  let promotions = 0;
  for (let step = 0; step < 3000; step++) {
    const now = 1000 + step * 100;
    const out = run(now, ms, memory);
    // Now and then a pass's memory is not saved (its configs are): the next pass runs on the older memory.
    if (rnd() > 0.1) memory = out.memory;
    assert.ok((out.discovery?.primary?.length ?? 0) <= 1);
    // A member behind a partition (host not alive) does not get its new config; a fenced one has been killed.
    ms = ms.map((m) => (m.hostAlive === false ? m : { ...m, config: cfg(out, m.id) }));
    ms = ms.map((m): M => {
      const r = rnd();
      const c = m.config;
      if (m.fenced === true) return r < 0.1 ? { ...m, hostAlive: true, fenced: false, state: replica(c?.epoch ?? 0, fresh(m.id), 0, 'down'), reportAt: now } : { ...m, state: { role: 'down', epoch: 0 } };
      if (m.hostAlive === false) return r < 0.05 ? { ...m, hostAlive: true } : r < 0.15 ? { ...m, fenced: true } : m;
      if (m.state?.role === 'down') return { ...m, state: replica(m.state.epoch, fresh(m.id), 0, 'down'), reportAt: now };
      if (r < 0.02) return { ...m, state: { role: 'down', epoch: m.state?.epoch ?? 0, ...(m.state?.runId === undefined ? {} : { runId: m.state.runId }) }, reportAt: now };
      if (r < 0.03) return { ...m, hostAlive: false };
      const runId = m.state?.runId ?? fresh(m.id);
      // The member's rule: primary only for its own run id (member.ts also never for an epoch it has applied).
      if (c?.role === 'primary' && c.runId === runId) {
        if (m.state?.role !== 'primary') promotions++;
        return { ...m, state: primary(c.epoch, runId, step), reportAt: now };
      }
      return { ...m, state: replica(c?.epoch ?? 0, runId, m.state?.role === 'primary' ? step : step - Math.floor(rnd() * 5), c?.primary === undefined ? 'down' : 'up'), reportAt: now };
    });
    const writable = ms.filter((m) => m.state?.role === 'primary').map((m) => m.id);
    assert.ok(writable.length <= 1, `step ${step}: two writable primaries ${writable.join(', ')}`);
  }
  assert.ok(promotions > 20, `the walk exercised failovers (${promotions} promotions)`);
});

test('rolling upgrade: replicas first, the primary held, then a switchover to an up-to-date replica, then the old primary', () => {
  const { ms, memory } = settled();
  const v2 = { version: 'v2' };
  const o1 = run(2000, ms, memory, v2);
  assert.deepEqual(o1.gates?.[NAME], { order: [1, 2, 0], hold: [0] });
  // Replicas b, c replaced by v2 instances (new allocs), linked to a.
  let cur: M[] = [
    ms[0]!,
    { id: 'b2', index: 1, version: 'v2', state: replica(1, 'rb2', 300), reportAt: 2500 },
    { id: 'c2', index: 2, version: 'v2', state: replica(1, 'rc2', 290), reportAt: 2500 },
  ];
  cur[0] = { ...cur[0]!, state: primary(1, 'ra', 300), reportAt: 2500 };
  const o2 = run(2600, cur, o1.memory, v2);
  assert.deepEqual(o2.gates?.[NAME], { order: [1, 2, 0], hold: [0] });
  assert.deepEqual(cfg(o2, 'a'), { epoch: 2, role: 'replica', primary: { allocId: 'b2', address: '10.0.0.2', port: 20001 }, failover: true });
  assert.deepEqual(cfg(o2, 'b2'), { epoch: 1, role: 'replica', primary: { allocId: 'a', address: '10.0.0.1', port: 20000 } }, 'the target is not told anything yet');
  assert.equal(primaryOf(o2), undefined, 'during the handover no config says primary');
  assert.match(o2.events?.join('\n') ?? '', /switchover from a \(version v1\) to b2/);
  cur = cur.map((m) => ({ ...m, config: cfg(o2, m.id) }));
  // While it is handed over, the others keep epoch 1: the switchover's epoch is not in force before the target is told.
  const during = run(2610, cur, o2.memory, v2);
  assert.deepEqual(cfg(during, 'b2'), cfg(o2, 'b2'));
  assert.deepEqual(cfg(during, 'c2'), cfg(o2, 'c2'));
  // FAILOVER TO done: b2 became master by itself, a is its replica now at epoch 2.
  cur[1] = { ...cur[1]!, state: { role: 'primary', epoch: 1, runId: 'rb2', offset: 310 }, reportAt: 2700 };
  const o3a = run(2650, cur, during.memory, v2);
  assert.equal(primaryOf(o3a), undefined, 'not before the old primary says it is a replica');
  assert.deepEqual(o3a.discovery?.primary, [{ allocId: 'a', port: 'redis' }], 'a is listed until it says it handed over (FAILOVER pauses its writers meanwhile)');
  cur[0] = { ...cur[0]!, state: replica(2, 'ra', 310), reportAt: 2710 };
  const o3 = run(2720, cur, o3a.memory, v2);
  assert.deepEqual(cfg(o3, 'b2'), { epoch: 2, role: 'primary', runId: 'rb2' });
  assert.deepEqual(o3.discovery?.primary, [], 'not listed before b2 reports primary at epoch 2 (it said epoch 1)');
  assert.deepEqual(cfg(o3, 'a'), { epoch: 2, role: 'replica', primary: { allocId: 'b2', address: '10.0.0.2', port: 20001 } });
  // The old primary is now last in the order and no longer held.
  assert.deepEqual(o3.gates?.[NAME], { order: [0, 2, 1] });
  assert.match(o3.status?.lastFailover?.reason ?? '', /switchover/);
});

test('no switchover while another member still runs the old version, nor to a replica that is not linked', () => {
  const { ms, memory } = settled();
  const v2 = { version: 'v2' };
  const cur: M[] = [{ ...ms[0]!, state: primary(1, 'ra', 300) }, { id: 'b2', index: 1, version: 'v2', state: replica(1, 'rb2', 300) }, ms[2]!];
  const o = run(2600, cur, memory, v2);
  assert.equal(primaryOf(o), 'a');
  assert.equal(cfg(o, 'a').role, 'primary');
  const unlinked: M[] = [cur[0]!, cur[1]!, { id: 'c2', index: 2, version: 'v2', state: replica(1, 'rc2', 0, 'down') }];
  unlinked[1] = { ...unlinked[1]!, state: replica(1, 'rb2', 0, 'down') };
  assert.equal(primaryOf(run(2700, unlinked, memory, v2)), 'a');
});

test('a pass whose configs were committed but not its memory: the next pass, on the older memory, keeps the promoted member', () => {
  const { ms, memory } = settled();
  ms[0] = { ...ms[0]!, state: { role: 'down', epoch: 1, runId: 'ra' }, reportAt: 2000 };
  ms[1] = { ...ms[1]!, state: replica(1, 'rb', 150, 'down'), reportAt: 2010 };
  ms[2] = { ...ms[2]!, state: replica(1, 'rc', 140, 'down'), reportAt: 2010 };
  const o1 = run(2050, ms, memory);
  assert.equal(primaryOf(o1), 'b');
  // b applied its promotion and says so; the memory handed back is the one from before (o1's was lost).
  const cur = ms.map((m) => ({ ...m, config: cfg(o1, m.id) }));
  cur[1] = { ...cur[1]!, state: primary(2, 'rb', 150), reportAt: 2100 };
  const o2 = run(2200, cur, memory);
  assert.equal(primaryOf(o2), 'b', 'c (a replica) is not promoted beside b');
  assert.equal(cfg(o2, 'b').epoch, 2);
  assert.deepEqual(o2.discovery?.primary, [{ allocId: 'b', port: 'redis' }]);
});

test('a lost memory is rebuilt from the members configs: the epoch never goes back, the primary is kept', () => {
  const { ms } = settled();
  const out = run(5000, ms, undefined);
  assert.equal(primaryOf(out), 'a');
  assert.equal(cfg(out, 'a').epoch, 1);
  assert.deepEqual(out.discovery?.primary, [{ allocId: 'a', port: 'redis' }]);
  const garbage = run(5000, ms, { epoch: 'x' });
  assert.equal(primaryOf(garbage), 'a');
});

test('expand: one service, one member per host, count = replicas + 1, the member script, clear errors', () => {
  const params = redis.params.parse({ replicas: 2, memory: '64M' });
  const [svc, ...rest] = redis.expand({ kind: 'redis', name: 'cache', params }, { script: (e) => ['/usr/bin/node', `/opt/bp/${e}.mjs`] });
  assert.equal(rest.length, 0);
  assert.equal(svc?.name, 'cache');
  assert.equal(svc?.count, 3);
  assert.deepEqual((svc?.run as { cmd: string[] }).cmd, ['/usr/bin/node', '/opt/bp/member.mjs']);
  assert.deepEqual((svc?.run as { env: Record<string, string> }).env, { REDIS_MAXMEMORY: String(64 * 1024 * 1024), REDIS_MAXMEMORY_POLICY: 'noeviction' });
  assert.deepEqual(svc?.ports, { redis: {} });
  assert.deepEqual(svc?.placement, { distinctHosts: true });
  assert.deepEqual(svc?.update, { strategy: 'rolling', maxParallel: 1, startFirst: false, minHealthy: '2s' });
  assert.equal(svc?.app, undefined, 'deploy sets app itself (a service document as an operator writes it has none)');
  assert.equal((svc?.resources as { memory: number }).memory, (96 + 96) * 1024 * 1024);
  const err = (v: unknown): string => {
    const r = redis.params.safeParse(v);
    assert.equal(r.success, false);
    return r.error?.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('\n') ?? '';
  };
  assert.match(err({ replicas: 2 }), /memory/);
  assert.match(err({ memory: 'lots' }), /"lots" is not a size/);
  assert.match(err({ memory: '1M' }), /too small for redis/);
  assert.match(err({ memory: '64M', replicas: -1 }), /replicas is at least 0/);
  assert.match(err({ memory: '64M', replica: 2 }), /replica/);
  assert.match(err({ memory: '64M', maxmemoryPolicy: 'lru' }), /maxmemoryPolicy/);
  assert.throws(() => redis.expand({ kind: 'redis', name: 'c', params: redis.params.parse({ memory: '64M', settings: { port: 1 } }) }, { script: () => [] }), /port is set by the redis backplane itself/);
});
