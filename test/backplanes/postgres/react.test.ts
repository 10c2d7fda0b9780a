/**
 * The PostgreSQL backplane's react over hand-made views: who is told primary, when (never while the old primary may
 * be writable), which standby (highest LSN; in synchronous mode only with the synchronous standby available),
 * discovery only at the current epoch, the switchover of a rolling update, status.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pgName, reactPostgres, SETTLE_MS, type PgConfig, type PgMemberState } from '../../../src/backplanes/postgres/react.js';
import type { Member, ReactInput, ReactOutput } from '../../../src/backplanes/sdk.js';

const T0 = 1_000_000;
const ids = ['main.0.aaaaaaaa', 'main.1.bbbbbbbb', 'main.2.cccccccc'] as const;

interface M {
  i: number;
  state?: Partial<PgMemberState> & { role: PgMemberState['role'] };
  at?: number;
  version?: string;
  hostAlive?: boolean;
  fenced?: boolean;
  stopping?: boolean;
}

function member(m: M, now: number, config: PgConfig | undefined): Member {
  const allocId = ids[m.i] ?? `main.${m.i}.dddddddd`;
  return {
    allocId,
    service: 'main',
    index: m.i,
    version: m.version ?? 'v1',
    host: `h${m.i}`,
    address: `10.0.0.${m.i + 1}`,
    ports: { pg: 5432 },
    state: 'running',
    restarts: 0,
    hostAlive: m.hostAlive ?? true,
    fenced: m.fenced ?? false,
    stopping: m.stopping ?? false,
    ...(config === undefined ? {} : { config: config as unknown as Record<string, unknown> }),
    ...(m.state === undefined ? {} : { report: { state: { epoch: 0, ...m.state }, at: m.at ?? now - 100 } }),
  };
}

class World {
  memory: unknown;
  now = T0;
  /** What each member (by index) was told last. */
  readonly configs = new Map<number, PgConfig>();
  out!: ReactOutput;
  constructor(
    public ms: M[],
    readonly synchronous = false,
    public version = 'v1',
  ) {}

  pass(): ReactOutput {
    const input: ReactInput<unknown> = {
      now: this.now,
      object: { kind: 'postgres', name: 'main', params: { synchronous: this.synchronous, replicas: this.ms.length - 1 } },
      deployedAt: 'd1',
      services: [{ name: 'main', count: this.ms.length, version: this.version }],
      members: this.ms.map((m) => member(m, this.now, this.configs.get(m.i))),
      memory: this.memory,
    };
    this.out = reactPostgres(input);
    this.memory = this.out.memory;
    // The members get what react said.
    for (const m of this.ms) {
      const c = this.out.config?.[ids[m.i] ?? ''];
      if (c !== undefined) this.configs.set(m.i, c as unknown as PgConfig);
    }
    const primaries = Object.values(this.out.config ?? {}).filter((c) => c.role === 'primary');
    assert.ok(primaries.length <= 1, 'at most one member is told primary');
    return this.out;
  }

  cfg(i: number): PgConfig {
    const c = this.out.config?.[ids[i] ?? ''];
    assert.ok(c !== undefined, `member ${i} has a config`);
    return c as unknown as PgConfig;
  }

  primary(): string | undefined {
    return this.out.discovery?.primary?.[0]?.allocId;
  }
}

/** A running cluster: 0 primary (confirmed at epoch 1), 1 and 2 streaming standbys. */
function running(synchronous = false): World {
  const w = new World([{ i: 0, state: { role: 'starting', runId: 'r0-0', hasData: false } }, { i: 1, state: { role: 'starting', runId: 'r1-0', hasData: false } }, { i: 2, state: { role: 'starting', runId: 'r2-0', hasData: false } }], synchronous);
  w.pass();
  w.ms[0] = { ...w.ms[0], i: 0, state: { role: 'primary', epoch: 1, runId: 'r0-0', offset: 5000, hasData: true, standbys: [{ name: pgName(ids[1]), state: 'streaming', sync: synchronous ? 'sync' : 'async', lagBytes: 0 }, { name: pgName(ids[2]), state: 'streaming', sync: synchronous ? 'potential' : 'async', lagBytes: 120 }] } };
  w.ms[1] = { ...w.ms[1], i: 1, state: { role: 'replica', epoch: 1, runId: 'r1-1', offset: 5000, link: 'up', following: ids[0], hasData: true } };
  w.ms[2] = { ...w.ms[2], i: 2, state: { role: 'replica', epoch: 1, runId: 'r2-1', offset: 4880, link: 'up', following: ids[0], hasData: true } };
  w.pass();
  assert.equal(w.primary(), ids[0]);
  return w;
}

test('bootstrap: the lowest index that reported is told primary with its run id; the others follow it; discovery waits for its report', () => {
  const w = new World([{ i: 0 }, { i: 1, state: { role: 'starting', runId: 'r1-0', hasData: false } }, { i: 2, state: { role: 'starting', runId: 'r2-0', hasData: false } }]);
  w.pass();
  assert.equal(w.cfg(1).role, 'primary');
  assert.equal(w.cfg(1).runId, 'r1-0');
  assert.equal(w.cfg(1).epoch, 1);
  assert.equal(w.cfg(2).role, 'replica');
  assert.deepEqual(w.cfg(2).primary, { allocId: ids[1], address: '10.0.0.2', port: 5432 });
  assert.equal(w.cfg(0).primary?.allocId, ids[1]);
  assert.equal(w.primary(), undefined, 'not in discovery before it reports primary');
  assert.equal(w.out.wakeInMs !== undefined, true);
  // It started postgres as a primary: a new run id, reported with role primary at epoch 1.
  w.ms[1] = { i: 1, state: { role: 'primary', epoch: 1, runId: 'r1-1', offset: 100, hasData: true } };
  w.pass();
  assert.equal(w.primary(), ids[1]);
  assert.equal(w.cfg(1).runId, 'r1-1');
  assert.equal(w.cfg(1).sync, undefined, 'no synchronous standbys in async mode');
});

test('synchronous mode: the primary is told FIRST 1 of its standbys by name; status shows each standby lag and sync state', () => {
  const w = running(true);
  assert.deepEqual(w.cfg(0).sync, [pgName(ids[1]), pgName(ids[2])]);
  assert.equal(w.cfg(1).name, 'main_1_bbbbbbbb');
  const st = w.out.status;
  assert.equal(st?.fields?.[`${ids[1]} sync`], 'sync');
  assert.equal(st?.fields?.[`${ids[2]} sync`], 'potential');
  assert.equal(st?.fields?.[`${ids[2]} lag (bytes)`], 120);
  assert.equal(st?.fields?.epoch, 1);
  assert.match(st?.summary ?? '', /primary main\.0\.aaaaaaaa on h0 \(epoch 1\); 2\/2 standbys streaming/);
  assert.deepEqual(w.out.discovery?.replicas, [{ allocId: ids[1], port: 'pg' }, { allocId: ids[2], port: 'pg' }]);
});

test('a host that stops renewing is not enough: no promotion until it is fenced', () => {
  const w = running();
  w.ms[0] = { ...w.ms[0], i: 0, hostAlive: false };
  w.now += 5000;
  w.pass();
  assert.equal(w.cfg(0).role, 'primary');
  assert.equal(w.cfg(0).epoch, 1);
  assert.ok(w.out.wakeInMs !== undefined);
  assert.match(w.out.status?.summary ?? '', /waiting for its fence/);
  w.ms[0] = { ...w.ms[0], i: 0, hostAlive: false, fenced: true };
  w.ms[1] = { ...w.ms[1], i: 1, state: { ...w.ms[1]?.state, role: 'replica', link: 'down', offset: 5000 }, at: w.now };
  w.ms[2] = { ...w.ms[2], i: 2, state: { ...w.ms[2]?.state, role: 'replica', link: 'down', offset: 4880 }, at: w.now };
  w.pass();
  assert.equal(w.cfg(1).role, 'primary');
  assert.equal(w.cfg(1).epoch, 2);
  assert.equal(w.cfg(1).runId, 'r1-1');
  assert.equal(w.cfg(0).role, 'replica');
  assert.equal(w.cfg(0).primary?.allocId, ids[1]);
});

test('the primary reports down (a new run id): the standby with the highest LSN is promoted, once the standbys told their final LSN', () => {
  const w = running();
  w.now += 1000;
  w.ms[0] = { i: 0, state: { role: 'down', epoch: 1, runId: 'r0-1', offset: 5200, hasData: true }, at: w.now };
  // Standby 2 received more than 1 (reports are from before the loss, links still up): wait for their final LSNs.
  w.ms[2] = { ...w.ms[2], i: 2, state: { ...w.ms[2]?.state, role: 'replica', offset: 5100 }, at: w.now - 300 };
  w.pass();
  assert.equal(w.cfg(0).role, 'primary', 'nobody else told primary yet');
  assert.equal(w.cfg(0).epoch, 1);
  assert.equal(w.primary(), undefined, 'the lost primary is out of discovery at once');
  assert.match(w.out.status?.summary ?? '', /final LSNs/);
  w.now += 200;
  w.ms[1] = { ...w.ms[1], i: 1, state: { ...w.ms[1]?.state, role: 'replica', link: 'down', offset: 5150 }, at: w.now };
  w.ms[2] = { ...w.ms[2], i: 2, state: { ...w.ms[2]?.state, role: 'replica', link: 'down', offset: 5190 }, at: w.now };
  w.pass();
  assert.equal(w.cfg(2).role, 'primary', 'highest LSN, not lowest index');
  assert.equal(w.cfg(2).epoch, 2);
  assert.equal(w.cfg(1).primary?.allocId, ids[2]);
  assert.equal(w.cfg(0).primary?.allocId, ids[2], 'the old primary is told to follow the new one');
  const f = w.out.status?.lastFailover;
  assert.equal(f?.from, ids[0]);
  assert.equal(f?.to, ids[2]);
  assert.match(f?.reason ?? '', /postgres exited/);
  // The new primary reports: discovery; the old one rewinds and streams: the timeline says so.
  w.ms[2] = { i: 2, state: { role: 'primary', epoch: 2, runId: 'r2-1', offset: 5300, timeline: 2, hasData: true }, at: w.now };
  w.pass();
  assert.equal(w.primary(), ids[2]);
  w.ms[0] = { i: 0, state: { role: 'replica', epoch: 2, runId: 'r0-2', offset: 5300, link: 'up', following: ids[2], hasData: true }, at: w.now };
  w.ms[1] = { i: 1, state: { role: 'replica', epoch: 2, runId: 'r1-1', offset: 5300, link: 'up', following: ids[2], hasData: true }, at: w.now };
  w.pass();
  const tl = w.out.status?.lastFailover?.timeline.map((e) => e.message) ?? [];
  assert.ok(tl.some((m) => /accepts writes/.test(m)), tl.join('\n'));
  assert.ok(tl.some((m) => /old primary main\.0\.aaaaaaaa rejoined as a standby/.test(m)), tl.join('\n'));
});

test('settling has a limit: a standby that never reports again does not block the failover for ever', () => {
  const w = running();
  w.now += 1000;
  w.ms[0] = { i: 0, state: { role: 'down', epoch: 1, runId: 'r0-1', hasData: true }, at: w.now };
  w.pass();
  assert.equal(w.cfg(0).role, 'primary');
  w.now += SETTLE_MS + 1;
  w.pass();
  assert.equal(w.cfg(1).role, 'primary');
});

test('a primary told to start (run id unchanged, postgres not up yet) is not lost; a changed run id before confirmation is', () => {
  const w = new World([{ i: 0, state: { role: 'down', runId: 'r0-3', hasData: true } }]);
  w.memory = { epoch: 4, primary: { allocId: ids[0], runId: 'r0-3', since: T0, confirmed: false } };
  w.pass();
  assert.equal(w.cfg(0).role, 'primary');
  assert.equal(w.cfg(0).epoch, 4);
  w.ms[0] = { i: 0, state: { role: 'down', runId: 'r0-4', hasData: true } };
  w.pass();
  // Lost; no standby: the old primary itself again, at a new epoch with its new run id.
  assert.equal(w.cfg(0).role, 'primary');
  assert.equal(w.cfg(0).epoch, 5);
  assert.equal(w.cfg(0).runId, 'r0-4');
});

test('synchronous mode: nothing is promoted while the synchronous standby is unavailable (it alone may hold the last acknowledged commits); async mode promotes', () => {
  for (const synchronous of [true, false]) {
    const w = running(synchronous);
    w.now += 1000;
    w.ms[0] = { i: 0, state: { role: 'down', epoch: 1, runId: 'r0-1', hasData: true }, at: w.now };
    w.ms[1] = { i: 1, state: { role: 'down', epoch: 1, runId: 'r1-2', hasData: true }, at: w.now }; // the sync standby
    w.ms[2] = { ...w.ms[2], i: 2, state: { ...w.ms[2]?.state, role: 'replica', link: 'down' }, at: w.now };
    w.pass();
    if (synchronous) {
      // The old primary's member is there with its data (all it acknowledged): it is the primary again.
      assert.equal(w.cfg(2).role, 'replica', 'the potential standby is not promoted');
      assert.equal(w.cfg(0).role, 'primary');
      assert.equal(w.cfg(0).epoch, 2);
      assert.equal(w.cfg(0).runId, 'r0-1');
      // Without it (its alloc gone), nothing is promoted: the summary says what it waits for.
      const v = running(true);
      v.now += 1000;
      v.ms = v.ms.filter((m) => m.i !== 0);
      v.ms[0] = { i: 1, state: { role: 'down', epoch: 1, runId: 'r1-2', hasData: true }, at: v.now };
      v.ms[1] = { ...v.ms[1], i: 2, state: { ...v.ms[1]?.state, role: 'replica', link: 'down' }, at: v.now };
      v.pass();
      assert.equal(v.cfg(2).role, 'replica');
      assert.match(v.out.status?.summary ?? '', /synchronous standby main\.1\.bbbbbbbb/);
      assert.equal(v.primary(), undefined);
    } else {
      assert.equal(w.cfg(2).role, 'primary');
    }
  }
});

test('the primary alloc gone (a host lost and replaced): the best standby is promoted; stopping members are never candidates', () => {
  const w = running();
  w.now += 1000;
  w.ms[1] = { ...w.ms[1], i: 1, stopping: true, state: { ...w.ms[1]?.state, role: 'replica', link: 'down', offset: 9000 }, at: w.now };
  w.ms[2] = { ...w.ms[2], i: 2, state: { ...w.ms[2]?.state, role: 'replica', link: 'down' }, at: w.now };
  w.ms = w.ms.filter((m) => m.i !== 0);
  w.pass();
  assert.equal(w.cfg(2).role, 'primary');
  assert.match(w.out.status?.lastFailover?.reason ?? '', /instance is gone/);
});

test('rolling update: standbys first, the primary held; once it is the last on the old version it steps down for a streaming standby, which is promoted after it reports down', () => {
  const w = running(true);
  w.version = 'v2';
  w.pass();
  assert.deepEqual(w.out.gates?.main, { order: [1, 2, 0], hold: [0] });
  assert.equal(w.cfg(0).role, 'primary', 'no switchover while standbys run the old version');
  // The rollout replaced 1 and 2 (new allocs keep the indexes; here: same ids on v2, streaming from 0).
  w.ms[1] = { ...w.ms[1], i: 1, version: 'v2' };
  w.ms[2] = { ...w.ms[2], i: 2, version: 'v2' };
  w.pass();
  assert.equal(w.cfg(0).role, 'replica', 'the old primary is told to step down');
  assert.equal(w.cfg(0).primary?.allocId, ids[1], 'for the synchronous standby');
  assert.equal(w.cfg(1).role, 'replica', 'the target is not promoted while the old primary may be writable');
  assert.deepEqual(w.out.gates?.main?.hold, [0]);
  w.now += 500;
  w.ms[0] = { i: 0, state: { role: 'down', epoch: 1, runId: 'r0-1', hasData: true }, at: w.now };
  w.ms[1] = { ...w.ms[1], i: 1, version: 'v2', state: { ...w.ms[1]?.state, role: 'replica', link: 'down', offset: 6000 }, at: w.now };
  w.ms[2] = { ...w.ms[2], i: 2, version: 'v2', state: { ...w.ms[2]?.state, role: 'replica', link: 'down', offset: 6000 }, at: w.now };
  w.pass();
  assert.equal(w.cfg(1).role, 'primary');
  assert.equal(w.cfg(1).epoch, 2);
  assert.match(w.out.status?.lastFailover?.reason ?? '', /switchover/);
  assert.equal(w.out.gates?.main?.hold, undefined, 'the old primary is a standby now: the rollout may replace it');
  assert.deepEqual(w.out.gates?.main?.order, [0, 2, 1]);
});

test('discovery: only the member told primary, once it reports primary at the epoch', () => {
  const w = running();
  w.ms[2] = { i: 2, state: { role: 'primary', epoch: 0, runId: 'r2-9', hasData: true } };
  w.pass();
  assert.deepEqual(w.out.discovery?.primary, [{ allocId: ids[0], port: 'pg' }]);
  // The primary alone: it goes down and is told primary again at epoch 2; a late report of its old run is not enough.
  const v = new World([{ i: 0, state: { role: 'down', runId: 'r0-1', hasData: true } }]);
  v.memory = { epoch: 1, primary: { allocId: ids[0], runId: 'r0-0', since: T0, confirmed: true } };
  v.pass();
  assert.equal(v.cfg(0).epoch, 2);
  assert.deepEqual(v.out.discovery?.primary, [], 'told, not yet writable');
  v.ms[0] = { i: 0, state: { role: 'primary', epoch: 2, runId: 'r0-1', hasData: true } };
  v.pass();
  assert.deepEqual(v.out.discovery?.primary, [{ allocId: ids[0], port: 'pg' }]);
});

test('params and expand: one service of replicas + 1 members, one per host, a pg port, heartbeat health, settings allow-listed; it passes the service parser', async () => {
  const { default: pg } = await import('../../../src/backplanes/postgres/index.js');
  const { readExpandedServices } = await import('../../../src/scheduler/spec.js');
  const params = pg.params.parse({ replicas: 2, memory: '128M', synchronous: true, settings: { work_mem: '8MB', max_connections: 80 } });
  assert.equal(params.synchronous, true);
  const docs = pg.expand({ kind: 'postgres', name: 'main', params }, { script: (e) => ['/usr/bin/node', `/opt/bp/${e}.mjs`] });
  assert.equal(docs.length, 1);
  const [svc] = readExpandedServices(docs, { file: 'x.yaml', line: 1, col: 1 }, 'main');
  assert.ok(svc !== undefined);
  assert.equal(svc.name, 'main');
  assert.equal(svc.count, 3);
  assert.deepEqual(svc.task.cmd, ['/usr/bin/node', '/opt/bp/member.mjs']);
  assert.equal(svc.task.env.PG_SETTINGS, JSON.stringify({ work_mem: '8MB', max_connections: 80 }));
  assert.equal(svc.placement.distinctHosts, true);
  assert.equal(svc.resources.memory, 224 * 1024 * 1024);
  assert.equal(pg.params.parse({ memory: '64M' }).replicas, 1);
  assert.equal(pg.params.parse({ memory: '64M' }).synchronous, false);
  assert.throws(() => pg.params.parse({ memory: '64M', settings: { synchronous_commit: 'off' } }), /synchronous_commit is not one the postgres backplane lets you set/);
  assert.throws(() => pg.params.parse({ memory: '64M', settings: { work_mem: "8MB'; x" } }), /a setting value/);
  assert.throws(() => pg.params.parse({ replicas: 1 }), /memory/);
  assert.throws(() => pg.params.parse({ memory: '16M' }), /too small/);
  // A settings change is a new version (a rolling restart); the same params are the same version.
  const again = readExpandedServices(pg.expand({ kind: 'postgres', name: 'main', params }, { script: (e) => ['/usr/bin/node', `/opt/bp/${e}.mjs`] }), { file: 'x.yaml', line: 1, col: 1 }, 'main')[0];
  const changed = readExpandedServices(pg.expand({ kind: 'postgres', name: 'main', params: { ...params, settings: { work_mem: '16MB' } } }, { script: (e) => ['/usr/bin/node', `/opt/bp/${e}.mjs`] }), { file: 'x.yaml', line: 1, col: 1 }, 'main')[0];
  assert.equal(again?.version, svc.version);
  assert.notEqual(changed?.version, svc.version);
});
