import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { reconcile } from '../../src/scheduler/reconcile.js';
import type { Alloc, AllocStatus, ClusterSnapshot, HostSnapshot, Plan, ServiceSpec } from '../../src/scheduler/types.js';

/** The reconciler as a pure function: one snapshot in, one plan out, for each situation issue #9 names. */

const NOW = 100_000;
const GRACE = 3000;

function host(name: string, over: Partial<HostSnapshot> = {}): HostSnapshot {
  return {
    name,
    alive: true,
    downForMs: 0,
    draining: false,
    labels: {},
    capacity: { cpu: 4, memory: 8 },
    reservedPorts: [],
    dynamicPorts: { from: 20000, to: 20099 },
    ...over,
  };
}

function spec(over: Partial<ServiceSpec> = {}): ServiceSpec {
  return {
    name: 'web',
    count: 3,
    version: 'v1',
    task: { cmd: ['/bin/true'], env: {} },
    resources: { cpu: 1, memory: 1 },
    ports: [],
    placement: { constraints: [], distinctHosts: false, antiAffinity: [], strategy: 'binpack' },
    restart: { attempts: 2, intervalMs: 60_000, delayMs: 1000 },
    reschedule: { attempts: 0, intervalMs: 3_600_000, delayMs: 5000, maxDelayMs: 60_000, unlimited: true },
    update: { maxParallel: 1, minHealthyMs: 2000, healthyDeadlineMs: 300_000, progressDeadlineMs: 0, canary: 0, autoPromote: false, autoRevert: false },
    files: [],
    ...over,
  };
}

const healthy = (since = 0): AllocStatus => ({ state: 'healthy', restarts: 0, since });

function alloc(index: number, hostName: string, over: Partial<Alloc> = {}): Alloc {
  return {
    id: `web.${index}.${hostName}${over.version ?? 'v1'}`,
    service: 'web',
    index,
    version: 'v1',
    host: hostName,
    resources: { cpu: 1, memory: 1 },
    ports: {},
    createdAt: 0,
    reschedules: [],
    status: healthy(),
    ...over,
  };
}

function snap(over: Partial<ClusterSnapshot> = {}): ClusterSnapshot {
  return { now: NOW, hosts: [host('h1'), host('h2'), host('h3')], services: [spec()], allocs: [], fenceGraceMs: GRACE, ...over };
}

const ids = (): ((service: string, index: number) => string) => {
  let n = 0;
  return (service, index) => `${service}.${index}.new${n++}`;
};

const plan = (s: ClusterSnapshot): Plan => reconcile(s, { newAllocId: ids() });
const placed = (p: Plan): string[] => p.place.map((x) => `${x.alloc.service}.${x.alloc.index}@${x.alloc.host}:${x.reason}`);
const stopped = (p: Plan): string[] => p.stop.map((x) => `${x.allocId}`);
const said = (p: Plan): string[] => p.events.map((e) => e.message);

describe('reconcile: count', () => {
  test('first deploy places every index, one event each', () => {
    const p = plan(snap());
    assert.deepEqual(placed(p), ['web.0@h1:new', 'web.1@h2:new', 'web.2@h3:new']);
    assert.deepEqual(p.stop, []);
    assert.deepEqual(said(p), ['placed web.0 on h1', 'placed web.1 on h2', 'placed web.2 on h3']);
    assert.equal(p.wakeAt, undefined);
  });

  test('a converged service gets an empty plan', () => {
    const p = plan(snap({ allocs: [alloc(0, 'h1'), alloc(1, 'h2'), alloc(2, 'h3')] }));
    assert.deepEqual(p, { place: [], stop: [], infeasible: [], events: [], warnings: [] });
  });

  test('scale up places the missing indexes; scale down stops the highest indexes first', () => {
    const five = [0, 1, 2, 3, 4].map((i) => alloc(i, `h${(i % 3) + 1}`));
    const up = plan(snap({ services: [spec({ count: 5 })], allocs: five.slice(0, 3) }));
    assert.deepEqual(placed(up).map((s) => s.split('@')[0]), ['web.3', 'web.4']);
    const down = plan(snap({ services: [spec({ count: 2, maxUnavailable: 3 })], allocs: five }));
    assert.deepEqual(stopped(down), ['web.4.h2v1', 'web.3.h1v1', 'web.2.h3v1']);
    assert.deepEqual(down.place, []);
    assert.equal(said(down)[0], 'stopped web.4 on h2 (scale down to 2)');
  });

  test('removal (count 0) stops everything, on down hosts too', () => {
    const hosts = [host('h1'), host('h2', { alive: false, downForMs: 100 })];
    const p = plan(snap({ hosts, services: [spec({ count: 0 })], allocs: [alloc(0, 'h1'), alloc(1, 'h2')] }));
    assert.deepEqual(stopped(p), ['web.1.h2v1', 'web.0.h1v1']);
    assert.deepEqual(p.place, []);
  });

  test('allocs of a service without a spec are left alone, with one warning', () => {
    const orphan = (i: number): Alloc => ({ ...alloc(i, 'h1'), id: `old.${i}`, service: 'old' });
    const p = plan(snap({ services: [], allocs: [orphan(0), orphan(1)] }));
    assert.deepEqual(p, { place: [], stop: [], infeasible: [], events: [], warnings: ['2 allocs of service old, which has no spec: left alone'] });
  });

  test('two live allocs of one index and version: the healthy (then oldest) one stays, the other is stopped', () => {
    const a = alloc(0, 'h1', { id: 'a', createdAt: 10, status: { state: 'unhealthy', restarts: 0, since: 10 } });
    const b = alloc(0, 'h2', { id: 'b', createdAt: 20 });
    const c = alloc(0, 'h3', { id: 'c', createdAt: 5, status: { state: 'starting', restarts: 0, since: 5 } });
    const p = plan(snap({ services: [spec({ count: 1 })], allocs: [a, b, c] }));
    assert.deepEqual(stopped(p).sort(), ['a', 'c']);
    assert.deepEqual(said(p), ['stopped duplicate web.0 on h3 (keeping b on h2)', 'stopped duplicate web.0 on h1 (keeping b on h2)']);
  });

  test('placement counts the plan’s own placements across services: the last slot goes once', () => {
    const hosts = [host('h1', { capacity: { cpu: 1, memory: 8 } })];
    const p = plan(snap({ hosts, services: [spec({ count: 1 }), spec({ name: 'api', count: 1 })] }));
    assert.deepEqual(placed(p), ['api.0@h1:new']);
    assert.deepEqual(p.infeasible.map((i) => i.message), ['1 of 1 instance cannot be placed: cpu short on 1 host']);
  });
});

describe('reconcile: lost hosts', () => {
  test('within the fence grace: wait (its instance may still run), wake when the grace ends', () => {
    const hosts = [host('h1'), host('h2'), host('h4', { alive: false, downForMs: 1000 })];
    const p = plan(snap({ hosts, services: [spec({ count: 1 })], allocs: [alloc(0, 'h4')] }));
    assert.deepEqual(p.place, []);
    assert.deepEqual(p.stop, []);
    assert.equal(p.wakeAt, NOW + 2000);
    assert.deepEqual(said(p), ['web.0 on h4: host down; replaced once it has been gone 3s (fence grace)']);
  });

  test('past the grace: replaced elsewhere (same index, previous = the old id) and the old one stopped', () => {
    const hosts = [host('h1'), host('h2'), host('h4', { alive: false, downForMs: 3100 })];
    const old = alloc(1, 'h4', { reschedules: [5] });
    const p = plan(snap({ hosts, services: [spec({ count: 2 })], allocs: [alloc(0, 'h1'), old] }));
    assert.deepEqual(placed(p), ['web.1@h2:lost']);
    assert.equal(p.place[0]!.alloc.previous, old.id);
    assert.deepEqual(p.place[0]!.alloc.reschedules, [5]);
    assert.deepEqual(p.stop, [{ allocId: old.id, host: 'h4', service: 'web', index: 1, reason: 'lost; replaced by web.1.new0' }]);
    assert.deepEqual(said(p), ['web.1 on h4 lost (host down 3.1s); replacing on h2']);
  });

  test('past the grace with no room elsewhere: infeasible, and the old assignment is kept for the next pass', () => {
    const hosts = [host('h1', { capacity: { cpu: 1, memory: 1 } }), host('h4', { alive: false, downForMs: 9000 })];
    const p = plan(snap({ hosts, services: [spec({ count: 2 })], allocs: [alloc(0, 'h1'), alloc(1, 'h4')] }));
    assert.deepEqual(p.place, []);
    assert.deepEqual(p.stop, []);
    assert.equal(p.infeasible[0]!.message, '1 of 2 instances cannot be placed: cpu short on 1 host, 1 host down');
  });
});

describe('reconcile: crash loops', () => {
  const failedAt = NOW - 4000;
  const failed = (over: Partial<Alloc> = {}): Alloc => alloc(0, 'h1', { status: { state: 'failed', restarts: 3, since: failedAt }, ...over });

  test('before the backoff delay: wait and say when; the delay doubles per reschedule so far', () => {
    const p = plan(snap({ services: [spec({ count: 1 })], allocs: [failed({ reschedules: [NOW - 60_000] })] }));
    assert.deepEqual(p.place, []);
    assert.deepEqual(said(p), ['web.0 failed on h1 (crash loop); rescheduling in 10s (attempt 2)']);
    assert.equal(p.wakeAt, failedAt + 10_000);
  });

  test('after the delay: rescheduled on another host, the attempt recorded, the failed alloc stopped', () => {
    const f = failed({ status: { state: 'failed', restarts: 3, since: NOW - 5000 } });
    const p = plan(snap({ services: [spec({ count: 1 })], allocs: [f] }));
    assert.deepEqual(placed(p), ['web.0@h2:failed']);
    assert.deepEqual(p.place[0]!.alloc.reschedules, [NOW]);
    assert.equal(p.place[0]!.alloc.previous, f.id);
    assert.deepEqual(stopped(p), [f.id]);
    assert.deepEqual(said(p), ['web.0 failed on h1 (crash loop); rescheduled on h2 (attempt 1)']);
  });

  test('the failed host is used when it is the only one, taking over the failed alloc’s static port', () => {
    const s = spec({ count: 1, ports: [{ name: 'http', static: 80 }] });
    const hosts = [host('h1', { capacity: { cpu: 1, memory: 1 } }), host('h2', { draining: true })];
    const p = plan(snap({ hosts, services: [s], allocs: [failed({ ports: { http: 80 }, status: { state: 'failed', restarts: 3, since: NOW - 5000 } })] }));
    assert.deepEqual(placed(p), ['web.0@h1:failed']);
    assert.deepEqual(p.place[0]!.alloc.ports, { http: 80 });
  });

  test('attempts used up within the interval: left failed, and said so; never rescheduled with attempts 0', () => {
    const limited = spec({ count: 1, reschedule: { attempts: 2, intervalMs: 600_000, delayMs: 1000, maxDelayMs: 60_000, unlimited: false } });
    const p = plan(snap({ services: [limited], allocs: [failed({ reschedules: [NOW - 50_000, NOW - 20_000] })] }));
    assert.deepEqual(p.place, []);
    assert.deepEqual(p.stop, []);
    assert.deepEqual(said(p), ['web.0 failed on h1 (crash loop); not rescheduled: 2 attempts in 10m used']);
    assert.equal(p.wakeAt, NOW - 50_000 + 600_000);
    const never = spec({ count: 1, reschedule: { attempts: 0, intervalMs: 600_000, delayMs: 1000, maxDelayMs: 60_000, unlimited: false } });
    assert.deepEqual(said(plan(snap({ services: [never], allocs: [failed()] }))), ['web.0 failed on h1 (crash loop); not rescheduled (reschedule policy: no attempts)']);
  });
});

describe('reconcile: rolling update (surge)', () => {
  const v2 = spec({ version: 'v2', update: { maxParallel: 1, minHealthyMs: 2000, healthyDeadlineMs: 300_000, progressDeadlineMs: 0, canary: 0, autoPromote: false, autoRevert: false, startFirst: true } });
  const olds = [alloc(0, 'h1'), alloc(1, 'h2'), alloc(2, 'h3')];

  test('starts at most maxParallel new allocs, stops nothing yet', () => {
    const p = plan(snap({ services: [v2], allocs: olds }));
    assert.deepEqual(placed(p), ['web.0@h1:update']);
    assert.equal(p.place[0]!.alloc.version, 'v2');
    assert.equal(p.place[0]!.alloc.previous, olds[0]!.id);
    assert.deepEqual(p.stop, []);
    const two = plan(snap({ services: [{ ...v2, update: { ...v2.update, maxParallel: 2 } }], allocs: olds }));
    assert.equal(two.place.length, 2);
  });

  test('a new alloc healthy for less than minHealthyMs holds the next step; then its old one goes and the next starts', () => {
    const fresh = alloc(0, 'h2', { version: 'v2', status: healthy(NOW - 500) });
    const waiting = plan(snap({ services: [v2], allocs: [...olds, fresh] }));
    assert.deepEqual(waiting.place, []);
    assert.deepEqual(waiting.stop, []);
    assert.equal(waiting.wakeAt, NOW + 1500);
    const settled = alloc(0, 'h2', { version: 'v2', status: healthy(NOW - 2000) });
    const next = plan(snap({ services: [v2], allocs: [...olds, settled] }));
    assert.deepEqual(stopped(next), [olds[0]!.id]);
    assert.deepEqual(placed(next).map((s) => s.split('@')[0]), ['web.1']);
    assert.equal(said(next)[0], `stopped web.0 (v1) on h1: replaced by version v2; ${settled.id} healthy on h2`);
  });

  test('no capacity for the surge instance: infeasible, the old instance keeps running', () => {
    const full = [host('h1', { capacity: { cpu: 1, memory: 8 } }), host('h2', { capacity: { cpu: 1, memory: 8 } }), host('h3', { capacity: { cpu: 1, memory: 8 } })];
    const p = plan(snap({ hosts: full, services: [v2], allocs: olds }));
    assert.deepEqual(p.place, []);
    assert.deepEqual(p.stop, []);
    assert.equal(p.infeasible[0]!.message, '1 of 3 instances cannot be placed: cpu short on 3 hosts');
  });

  test('a new alloc crash-looping is rescheduled with backoff while the old one keeps serving', () => {
    const bad = alloc(0, 'h2', { version: 'v2', status: { state: 'failed', restarts: 3, since: NOW - 1000 } });
    const p = plan(snap({ services: [v2], allocs: [...olds, bad] }));
    assert.deepEqual(p.place, []);
    assert.deepEqual(p.stop, []);
    assert.deepEqual(said(p), ['web.0 failed on h2 (crash loop); rescheduling in 5s (attempt 1)']);
  });
});

describe('reconcile: drain', () => {
  const drainSpec = spec({ count: 3, maxUnavailable: 1 });
  const hosts = (over: Partial<HostSnapshot> = {}): HostSnapshot[] => [host('h1', { draining: true, ...over }), host('h2'), host('h3'), host('h4')];
  const allocs = [alloc(0, 'h1'), alloc(1, 'h1'), alloc(2, 'h2')];

  test('moves one at a time (maxParallel), new first; the old one goes once the new one is healthy', () => {
    const p = plan(snap({ hosts: hosts(), services: [drainSpec], allocs }));
    assert.deepEqual(placed(p), ['web.0@h3:drain']);
    assert.deepEqual(p.stop, []);
    assert.deepEqual(said(p), ['moving web.0 off draining h1 to h3']);
    const moved = alloc(0, 'h3', { id: 'web.0.moved', status: healthy(NOW - 5000) });
    const next = plan(snap({ hosts: hosts(), services: [drainSpec], allocs: [...allocs, moved] }));
    assert.deepEqual(stopped(next), [allocs[0]!.id]);
    assert.deepEqual(placed(next).map((s) => s.split('@')[0]), ['web.1']);
  });

  test('waits while the service has as many instances down as its disruption budget allows', () => {
    const sick = [alloc(0, 'h1'), alloc(1, 'h1', { status: { state: 'unhealthy', restarts: 1, since: 0 } }), alloc(2, 'h2', { status: { state: 'starting', restarts: 0, since: 0 } })];
    // maxParallel 3: the budget, not the pace, is what holds the move.
    const p = plan(snap({ hosts: hosts(), services: [{ ...drainSpec, update: { ...drainSpec.update, maxParallel: 3 } }], allocs: sick }));
    assert.deepEqual(p.place, []);
    assert.deepEqual(said(p), ['drain waits: 2 of 1 instances may be down at once (disruption budget)']);
  });

  test('past the deadline the remaining instances are stopped at once and replaced', () => {
    const p = plan(snap({ hosts: hosts({ drainDeadline: NOW - 1 }), services: [drainSpec], allocs }));
    assert.deepEqual(stopped(p), [allocs[0]!.id, allocs[1]!.id]);
    assert.deepEqual(placed(p).map((s) => s.split(':')[1]), ['drain', 'drain']);
    assert.match(said(p)[0]!, /^stopped web.0 on h1: drain deadline passed/);
  });

  test('before the deadline, the plan wakes at it', () => {
    const p = plan(snap({ hosts: hosts({ drainDeadline: NOW + 60_000 }), services: [drainSpec], allocs }));
    assert.equal(p.wakeAt, NOW + 60_000);
  });
});

describe('reconcile: purity', () => {
  test('the same snapshot gives the same plan; ids come from the injected generator', () => {
    const s = snap({ allocs: [alloc(0, 'h1', { status: { state: 'failed', restarts: 3, since: 0 } })], services: [spec({ count: 5, version: 'v2' })] });
    assert.deepEqual(plan(s), plan(s));
    assert.ok(plan(s).place.every((x) => /^web\.\d\.new\d+$/.test(x.alloc.id)));
    assert.ok(reconcile(s).place.every((x) => /^web\.\d\.[0-9a-f]{8}$/.test(x.alloc.id)));
  });
});
