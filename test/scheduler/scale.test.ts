import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { countText } from '../../src/cli/services.js';
import { serviceRows } from '../../src/api/ops/services.js';
import { keys } from '../../src/cluster/keys.js';
import type { ScaleRecord, ScaleRequest } from '../../src/scheduler/records.js';
import { effectiveCount, scalePass, type ScaleAsk } from '../../src/scheduler/scale.js';
import { serviceInputs, specInForce, toSnapshot, type SchedState } from '../../src/scheduler/state.js';
import type { Alloc, ServiceSpec } from '../../src/scheduler/types.js';
import { Sim, spec as simSpec } from './plan-sim.js';

/** Pure tests of scaling within the operator's bounds: hand-made state in, records, deletions and events out. */

const DEPLOYED = '2026-12-01T10:00:00.000Z';
const DEPLOYED_MS = Date.parse(DEPLOYED);
const NOW = DEPLOYED_MS + 60_000;

function workerSpec(over: Partial<ServiceSpec> = {}): ServiceSpec {
  return simSpec({ name: 'worker', count: 2, scale: { min: 1, max: 5 }, ...over });
}

function alloc(service: string, index: number, host: string, id = `${service}.${index}.0000000${index}`): Alloc {
  return { id, service, index, version: 'v1', host, resources: { cpu: 0.1, memory: 1024 }, ports: {}, createdAt: 0, reschedules: [] };
}

type Req = ScaleRequest & { host: string; key: string };

function request(a: Alloc, count: number, over: Partial<Req> = {}): Req {
  return { allocId: a.id, service: a.service, count, at: NOW - 1000, host: a.host, key: keys.scaleReq(over.host ?? a.host, a.id), reason: `queue length ${count * 10}`, ...over };
}

function state(o: { spec?: ServiceSpec; removed?: boolean; deployedAt?: string; allocs?: Alloc[]; scales?: ScaleRecord[]; requests?: Req[]; bad?: string[] } = {}): SchedState {
  const spec = o.spec ?? workerSpec();
  const deployedAt = o.deployedAt ?? DEPLOYED;
  const assigns = new Map((o.allocs ?? []).map((a) => [a.id, { alloc: a, epoch: 1, controller: 'h1', specRecord: 'rec', specBy: 'op', spec, key: keys.assign(a.host, a.id), modRevision: 1 }]));
  return {
    revision: 1,
    members: [],
    services: new Map([[spec.name, o.removed === true ? { removed: true, record: 'rm', by: 'op', deployedAt } : { spec, record: 'rec', by: 'op', deployedAt }]]),
    assigns,
    statuses: new Map(),
    drains: new Map(),
    plans: new Map(),
    history: new Map(),
    commands: [],
    badCommands: [],
    apps: new Map(),
    appStates: new Map(),
    scales: new Map((o.scales ?? []).map((s) => [s.service, s])),
    scaleRequests: o.requests ?? [],
    badScaleRequests: o.bad ?? [],
    problems: [],
  };
}

const w0 = alloc('worker', 0, 'h1', 'worker.0.1a2b3c4d');
const w1 = alloc('worker', 1, 'h2', 'worker.1.5e6f7a8b');

describe('effectiveCount', () => {
  const rec = (count: number, deployedAt = DEPLOYED): ScaleRecord => ({ service: 'worker', count, deployedAt, by: 'instance worker.0.1a2b3c4d', at: NOW });
  test('the scale record for this deploy, within bounds, is the count in force', () => {
    assert.equal(effectiveCount(workerSpec(), DEPLOYED, rec(4)), 4);
  });
  test('no record: the operator\'s count', () => {
    assert.equal(effectiveCount(workerSpec(), DEPLOYED), 2);
  });
  test('a record of another deploy is ignored: a new deploy puts the operator\'s count back', () => {
    assert.equal(effectiveCount(workerSpec(), DEPLOYED, rec(4, '2026-12-01T09:00:00.000Z')), 2);
  });
  test('a record outside the current bounds is ignored', () => {
    assert.equal(effectiveCount(workerSpec({ scale: { min: 1, max: 3 } }), DEPLOYED, rec(4)), 2);
    assert.equal(effectiveCount(workerSpec({ scale: { min: 3, max: 5 }, count: 3 }), DEPLOYED, rec(2)), 3);
  });
  test('without bounds only the operator\'s count counts', () => {
    const { scale: _none, ...plain } = workerSpec();
    assert.equal(effectiveCount(plain, DEPLOYED, rec(4)), 2);
  });
});

describe('scalePass: instances\' requests', () => {
  test('a live instance on the host that signed its request scales its service within bounds', () => {
    const r = request(w0, 4, { reason: 'queue length 40' });
    const out = scalePass({ state: state({ allocs: [w0, w1], requests: [r] }), now: NOW });
    assert.deepEqual(out.put, [{ service: 'worker', count: 4, deployedAt: DEPLOYED, by: 'instance worker.0.1a2b3c4d', reason: 'queue length 40', at: NOW }]);
    assert.deepEqual(out.deleteKeys, [r.key]);
    assert.equal(out.events.length, 1);
    assert.equal(out.events[0]?.message, 'worker scaled 2 → 4 by instance worker.0.1a2b3c4d (queue length 40)');
    assert.equal(out.events[0]?.allocId, w0.id);
  });

  test('above the max: refused with the bound, deleted, nothing written', () => {
    const r = request(w0, 9);
    const out = scalePass({ state: state({ allocs: [w0], requests: [r] }), now: NOW });
    assert.deepEqual(out.put, []);
    assert.deepEqual(out.deleteKeys, [r.key]);
    assert.match(out.events[0]?.message ?? '', /^scale request from instance worker\.0\.1a2b3c4d on h1 refused: 9 is above the operator's max 5$/);
  });

  test('below the min: refused with the bound', () => {
    const out = scalePass({ state: state({ spec: workerSpec({ scale: { min: 2, max: 5 } }), allocs: [w0], requests: [request(w0, 1)] }), now: NOW });
    assert.deepEqual(out.put, []);
    assert.match(out.events[0]?.message ?? '', /refused: 1 is below the operator's min 2$/);
  });

  test('a service without bounds: refused, only the operator changes its count', () => {
    const { scale: _none, ...plain } = workerSpec();
    const out = scalePass({ state: state({ spec: plain, allocs: [w0], requests: [request(w0, 3)] }), now: NOW });
    assert.deepEqual(out.put, []);
    assert.match(out.events[0]?.message ?? '', /refused: the operator set no scale bounds for worker/);
  });

  test('a host cannot speak for an instance it does not run', () => {
    // h2 signed a request naming w0, which runs on h1 (openScaleRequest checked h2's signature, nothing more).
    const r = request(w0, 4, { host: 'h2' });
    const out = scalePass({ state: state({ allocs: [w0, w1], requests: [r] }), now: NOW });
    assert.deepEqual(out.put, []);
    assert.deepEqual(out.deleteKeys, [keys.scaleReq('h2', w0.id)]);
    assert.match(out.events[0]?.message ?? '', /refused: worker\.0\.1a2b3c4d is not a live instance of worker on h2$/);
  });

  test('an instance of another service cannot scale this one', () => {
    const other = alloc('web', 0, 'h1', 'web.0.00000001');
    const out = scalePass({ state: state({ allocs: [w0, other], requests: [request(other, 4, { service: 'worker' })] }), now: NOW });
    assert.deepEqual(out.put, []);
    assert.match(out.events[0]?.message ?? '', /refused: web\.0\.00000001 is not a live instance of worker on h1/);
  });

  test('an alloc that is no longer assigned (stopped) cannot ask', () => {
    const out = scalePass({ state: state({ allocs: [w1], requests: [request(w0, 4)] }), now: NOW });
    assert.deepEqual(out.put, []);
    assert.match(out.events[0]?.message ?? '', /is not a live instance/);
  });

  test('a request made before the operator\'s latest deploy is refused: the deploy reset the count', () => {
    const out = scalePass({ state: state({ allocs: [w0], requests: [request(w0, 4, { at: DEPLOYED_MS - 5000 })] }), now: NOW });
    assert.deepEqual(out.put, []);
    assert.match(out.events[0]?.message ?? '', /refused: it was made before the operator's deploy/);
  });

  test('a removed service cannot be scaled', () => {
    const out = scalePass({ state: state({ removed: true, allocs: [w0], requests: [request(w0, 3)] }), now: NOW });
    assert.deepEqual(out.put, []);
    assert.match(out.events[0]?.message ?? '', /refused: worker has been removed/);
  });

  test('oldest first: the newest accepted request wins, each gets its event', () => {
    const a = request(w0, 4, { at: NOW - 3000 });
    const b = request(w1, 3, { at: NOW - 2000 });
    const out = scalePass({ state: state({ allocs: [w0, w1], requests: [b, a] }), now: NOW });
    assert.equal(out.put.length, 1);
    assert.equal(out.put[0]?.count, 3);
    assert.deepEqual(out.events.map((e) => e.message.replace(/ \(.*\)$/, '')), ['worker scaled 2 → 4 by instance worker.0.1a2b3c4d', 'worker scaled 4 → 3 by instance worker.1.5e6f7a8b']);
    assert.deepEqual([...out.deleteKeys].sort(), [a.key, b.key].sort());
  });

  test('asking for the count in force writes nothing and says so', () => {
    const scales: ScaleRecord[] = [{ service: 'worker', count: 4, deployedAt: DEPLOYED, by: 'instance worker.0.1a2b3c4d', at: NOW - 5000 }];
    const out = scalePass({ state: state({ allocs: [w0], scales, requests: [request(w0, 4)] }), now: NOW });
    assert.deepEqual(out.put, []);
    assert.match(out.events[0]?.message ?? '', /^worker stays at 4: asked by instance worker\.0\.1a2b3c4d/);
  });

  test('requests that failed their signature checks are deleted', () => {
    const bad = keys.scaleReq('h9', 'worker.0.deadbeef');
    const out = scalePass({ state: state({ bad: [bad] }), now: NOW });
    assert.deepEqual(out.deleteKeys, [bad]);
    assert.deepEqual(out.events, []);
  });

  test('a scale record from an earlier deploy is deleted', () => {
    const scales: ScaleRecord[] = [{ service: 'worker', count: 4, deployedAt: '2026-12-01T09:00:00.000Z', by: 'x', at: 1 }];
    const out = scalePass({ state: state({ scales }), now: NOW });
    assert.deepEqual(out.deleteKeys, [keys.scale('worker')]);
  });
});

describe('scalePass: backplanes\' asks', () => {
  const ask = (count: number): ScaleAsk => ({ service: 'worker', count, by: 'backplane redis', reason: 'replicas: 3' });
  test('within bounds: written, with an event', () => {
    const out = scalePass({ state: state(), now: NOW, asks: [ask(3)] });
    assert.equal(out.put[0]?.count, 3);
    assert.equal(out.put[0]?.by, 'backplane redis');
    assert.equal(out.events[0]?.message, 'worker scaled 2 → 3 by backplane redis (replicas: 3)');
  });
  test('repeated every pass: no event once in force', () => {
    const scales: ScaleRecord[] = [{ service: 'worker', count: 3, deployedAt: DEPLOYED, by: 'backplane redis', at: NOW - 1 }];
    const out = scalePass({ state: state({ scales }), now: NOW, asks: [ask(3)] });
    assert.deepEqual(out, { put: [], deleteKeys: [], events: [] });
  });
  test('outside bounds: refused', () => {
    const out = scalePass({ state: state(), now: NOW, asks: [ask(6)] });
    assert.deepEqual(out.put, []);
    assert.equal(out.events[0]?.message, 'scale request from backplane redis refused: 6 is above the operator\'s max 5');
  });
});

describe('the count in force reaches the plan engine', () => {
  test('serviceInputs and toSnapshot carry the scaled count, a new trigger and the same version', () => {
    const scales: ScaleRecord[] = [{ service: 'worker', count: 4, deployedAt: DEPLOYED, by: 'instance worker.0.1a2b3c4d', at: NOW }];
    const st = state({ allocs: [w0, w1], scales });
    const input = serviceInputs(st).get('worker');
    assert.equal(input?.spec?.count, 4);
    assert.equal(input?.spec?.version, workerSpec().version);
    assert.equal(input?.ref.deployedAt, `${DEPLOYED}+scale@${NOW}`);
    assert.equal(specInForce(st, 'worker')?.spec.count, 4);
    const snap = toSnapshot(st, NOW, { lastAlive: new Map(), since: 0, fenceGraceMs: 1000 });
    assert.equal(snap.services.find((s) => s.name === 'worker')?.count, 4);
    // A stale record changes nothing.
    const stale = state({ allocs: [w0, w1], scales, deployedAt: '2026-12-01T11:00:00.000Z' });
    assert.equal(serviceInputs(stale).get('worker')?.spec?.count, 2);
    assert.equal(serviceInputs(stale).get('worker')?.ref.deployedAt, '2026-12-01T11:00:00.000Z');
  });

  test('a request applied makes a scale plan (up, then down), the version unchanged', () => {
    const sim = new Sim(['h1', 'h2']);
    const sp = simSpec({ name: 'worker', count: 1, scale: { min: 1, max: 4 } });
    const ref = sim.deploy(sp);
    sim.run((s) => s.plan('worker').status === 'complete');
    let scales: ScaleRecord[] = [];
    // The controller's loop as it will run: scalePass, commit, read again, plan.
    const ask = (count: number): void => {
      const a = sim.allocs.find((x) => x.service === 'worker' && x.index === 0);
      assert.ok(a !== undefined);
      const st: SchedState = {
        ...state({ spec: sp, deployedAt: ref.deployedAt, allocs: sim.allocs, scales, requests: [request(a, count, { at: sim.now })] }),
        services: new Map([['worker', { spec: sp, record: ref.record, by: ref.by, deployedAt: ref.deployedAt }]]),
      };
      const out = scalePass({ state: st, now: sim.now });
      assert.equal(out.put.length, 1, out.events.map((e) => e.message).join('\n'));
      scales = [...out.put];
      sim.records = serviceInputs({ ...st, scales: new Map(scales.map((s) => [s.service, s])) });
    };
    ask(4);
    sim.run((s) => s.plan('worker').status === 'complete' && s.allocs.filter((a) => a.status?.state === 'healthy').length === 4);
    assert.equal(sim.plan('worker').kind, 'scale');
    assert.equal(sim.plan('worker').toCount, 4);
    assert.deepEqual(sim.versions('worker'), ['0:v1', '1:v1', '2:v1', '3:v1']);
    ask(1);
    sim.run((s) => s.plan('worker').status === 'complete' && s.allocs.length === 1);
    assert.equal(sim.plan('worker').kind, 'scale');
    assert.deepEqual(sim.versions('worker'), ['0:v1']);
  });
});

describe('status shows the count in force and where it came from', () => {
  test('scaled by an instance', () => {
    const scales: ScaleRecord[] = [{ service: 'worker', count: 4, deployedAt: DEPLOYED, by: 'instance worker.0.1a2b3c4d', reason: 'queue length 40', at: NOW }];
    const [row] = serviceRows(state({ allocs: [w0, w1], scales }));
    assert.equal(row?.count, 4);
    assert.ok(row !== undefined);
    assert.equal(countText(row), "count 4 (scaled by instance worker.0.1a2b3c4d: queue length 40; bounds 1..5; operator's count 2)");
  });
  test('the operator\'s count, after a new deploy', () => {
    const scales: ScaleRecord[] = [{ service: 'worker', count: 4, deployedAt: '2026-12-01T09:00:00.000Z', by: 'instance worker.0.1a2b3c4d', at: NOW }];
    const [row] = serviceRows(state({ allocs: [w0, w1], scales }));
    assert.ok(row !== undefined);
    assert.equal(row.count, 2);
    assert.equal(countText(row), "count 2 (the operator's; bounds 1..5)");
  });
});
