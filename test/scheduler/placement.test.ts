import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { constraintHolds, placeInstances, randomAllocId, type PlacementInput, type PlacementRequest } from '../../src/scheduler/placement.js';
import type { Alloc, HostSnapshot, PlacementPolicy, PortSpec, Resources, ServiceSpec } from '../../src/scheduler/types.js';
import { seededRandom } from '../../bench/lib/stats.js';

/** Placement as a pure function: unit cases, then properties over thousands of random clusters. */

function host(name: string, over: Partial<HostSnapshot> = {}): HostSnapshot {
  return {
    name,
    alive: true,
    downForMs: 0,
    draining: false,
    labels: {},
    capacity: { cpu: 4, memory: 8 },
    reservedPorts: [],
    dynamicPorts: { from: 20000, to: 20009 },
    ...over,
  };
}

function spec(name: string, over: Partial<Omit<ServiceSpec, 'placement'>> & { placement?: Partial<PlacementPolicy> } = {}): ServiceSpec {
  const { placement, ...rest } = over;
  return {
    name,
    count: 3,
    version: 'v1',
    task: { cmd: ['/bin/true'], env: {} },
    resources: { cpu: 1, memory: 1 },
    ports: [],
    placement: { constraints: [], distinctHosts: false, antiAffinity: [], strategy: 'binpack', ...placement },
    restart: { attempts: 2, intervalMs: 60_000, delayMs: 1000 },
    reschedule: { attempts: 0, intervalMs: 3_600_000, delayMs: 5000, maxDelayMs: 3_600_000, unlimited: true },
    update: { maxParallel: 1, minHealthyMs: 2000, healthyDeadlineMs: 300_000, progressDeadlineMs: 0, canary: 0, autoPromote: false, autoRevert: false },
    files: [],
    ...rest,
  };
}

let seq = 0;
function alloc(service: string, index: number, hostName: string, over: Partial<Alloc> = {}): Alloc {
  return {
    id: `${service}.${index}.old${seq++}`,
    service,
    index,
    version: 'v1',
    host: hostName,
    resources: { cpu: 1, memory: 1 },
    ports: {},
    createdAt: 0,
    reschedules: [],
    ...over,
  };
}

const ids = (): ((service: string, index: number) => string) => {
  let n = 0;
  return (service, index) => `${service}.${index}.${(n++).toString(16).padStart(8, '0')}`;
};

function place(input: Partial<PlacementInput> & Pick<PlacementInput, 'hosts'>, specs: readonly ServiceSpec[], extra: Partial<PlacementRequest> = {}) {
  const requests: PlacementRequest[] = specs.flatMap((s) => Array.from({ length: s.count }, (_, index) => ({ spec: s, index, reason: 'new' as const, ...extra })));
  return placeInstances({ now: 1000, allocs: [], ...input }, requests, { newAllocId: ids() });
}

const hostsOf = (r: { placed: readonly Alloc[] }): string[] => r.placed.map((a) => a.host);

describe('placement: ranking', () => {
  test('binpack fills the fullest host that fits; spread takes the emptiest; ties go to the first name', () => {
    const hosts = [host('h2'), host('h1'), host('h3')];
    const allocs = [alloc('other', 0, 'h3', { resources: { cpu: 2, memory: 4 } })];
    assert.deepEqual(hostsOf(place({ hosts, allocs }, [spec('web', { count: 1 })])), ['h3']);
    assert.deepEqual(hostsOf(place({ hosts, allocs }, [spec('web', { count: 1, placement: { strategy: 'spread' } })])), ['h1']);
    assert.deepEqual(hostsOf(place({ hosts }, [spec('web', { count: 1 })])), ['h1']);
  });

  test('instances of one service are spread a little even when bin-packing (Nomad job anti-affinity), big ones still pack', () => {
    const hosts = [host('h1', { capacity: { cpu: 16, memory: 16 } }), host('h2', { capacity: { cpu: 16, memory: 16 } })];
    // 1/16 of a host per instance is less than the 1/count penalty of sharing: alternate.
    assert.deepEqual(hostsOf(place({ hosts }, [spec('small', { count: 4 })])), ['h1', 'h2', 'h1', 'h2']);
    // half a host per instance outweighs it: pack.
    assert.deepEqual(hostsOf(place({ hosts }, [spec('big', { count: 2, resources: { cpu: 8, memory: 8 } })])), ['h1', 'h1']);
  });

  test('spread over a label: the value with the fewest instances first; hosts without the label last', () => {
    const hosts = [
      host('a1', { labels: { zone: 'a' } }),
      host('a2', { labels: { zone: 'a' } }),
      host('b1', { labels: { zone: 'b' } }),
      host('c1', { labels: { zone: 'c' } }),
      host('n1'),
    ];
    const allocs = [alloc('web', 9, 'c1')];
    const r = place({ hosts, allocs }, [spec('web', { count: 5, placement: { spread: 'zone' } })]);
    const zones = r.placed.map((a) => hosts.find((h) => h.name === a.host)!.labels.zone ?? '-');
    // c already has one: a and b get one each, then a, b, c round again.
    assert.deepEqual(zones, ['a', 'b', 'a', 'b', 'c']);
    assert.ok(!hostsOf(r).includes('n1'));
  });

  test('the avoided host (where the instance just failed) is ranked last but used when it is the only one', () => {
    const two = [host('h1'), host('h2')];
    assert.deepEqual(hostsOf(place({ hosts: two }, [spec('web', { count: 1 })], { avoidHost: 'h1' })), ['h2']);
    assert.deepEqual(hostsOf(place({ hosts: [host('h1')] }, [spec('web', { count: 1 })], { avoidHost: 'h1' })), ['h1']);
  });
});

describe('placement: checkers and why', () => {
  test('never over-commits: counts existing allocs and its own placements; explains the rest', () => {
    const hosts = [host('h1', { capacity: { cpu: 2, memory: 8 } }), host('h2', { capacity: { cpu: 2, memory: 8 } }), host('h3', { capacity: { cpu: 3, memory: 8 } })];
    const allocs = [alloc('db', 0, 'h3')];
    const r = place({ hosts, allocs }, [spec('web', { count: 7 })]);
    assert.equal(r.placed.length, 6);
    assert.equal(r.unplaced.length, 1);
    assert.deepEqual(r.infeasible, [{ service: 'web', wanted: 7, unplaced: 1, hostsFiltered: { 'cpu short': 3 }, message: '1 of 7 instances cannot be placed: cpu short on 3 hosts' }]);
  });

  test('every filtered host is counted under its first reason, in one line', () => {
    const hosts = [
      host('m1', { labels: { zone: 'a' }, capacity: { cpu: 8, memory: 1 } }),
      host('m2', { labels: { zone: 'a' }, capacity: { cpu: 8, memory: 1 } }),
      host('m3', { labels: { zone: 'a' }, capacity: { cpu: 8, memory: 1 } }),
      host('m4', { labels: { zone: 'a' }, capacity: { cpu: 8, memory: 1 } }),
      host('c1', { labels: { zone: 'a' }, capacity: { cpu: 1, memory: 64 } }),
      host('d1', { labels: { zone: 'a' }, draining: true }),
      host('x1', { labels: { zone: 'c' } }),
      host('dead', { alive: false, downForMs: 5000 }),
    ];
    const r = place({ hosts }, [spec('web', { count: 6, resources: { cpu: 2, memory: 2 }, placement: { constraints: [{ label: 'zone', op: 'in', values: ['a', 'b'] }] } })]);
    assert.equal(r.placed.length, 0);
    assert.deepEqual(r.infeasible[0]!.hostsFiltered, { 'memory short': 4, 'cpu short': 1, draining: 1, down: 1, 'label zone in (a, b)': 1 });
    assert.equal(r.infeasible[0]!.message, '6 of 6 instances cannot be placed: memory short on 4 hosts, cpu short on 1 host, 1 host down, 1 host draining, label zone in (a, b) rules out 1 host');
  });

  test('label constraints eq / in / not_in; a value no host has, and a label no host has (a warning)', () => {
    const hosts = [host('a', { labels: { zone: 'a', disk: 'ssd' } }), host('b', { labels: { zone: 'b' } }), host('c', { labels: { zone: 'c' } })];
    const one = (placement: Partial<PlacementPolicy>) => place({ hosts }, [spec('web', { count: 1, placement })]);
    assert.deepEqual(hostsOf(one({ constraints: [{ label: 'zone', op: 'eq', values: ['b'] }] })), ['b']);
    assert.deepEqual(hostsOf(one({ constraints: [{ label: 'zone', op: 'in', values: ['c', 'x'] }] })), ['c']);
    assert.deepEqual(hostsOf(one({ constraints: [{ label: 'disk', op: 'not_in', values: ['ssd'] }] })), ['b']);
    const none = one({ constraints: [{ label: 'zone', op: 'eq', values: ['x'] }] });
    assert.equal(none.infeasible[0]!.message, '1 of 1 instance cannot be placed: label zone=x matches no host');
    assert.deepEqual(none.warnings, []);
    const noLabel = one({ constraints: [{ label: 'rack', op: 'eq', values: ['r1'] }] });
    assert.deepEqual(noLabel.warnings, ['service web: constraint on label "rack", which no host has']);
    assert.equal(noLabel.infeasible[0]!.message, '1 of 1 instance cannot be placed: label rack=r1 matches no host');
    assert.equal(constraintHolds({ label: 'rack', op: 'not_in', values: ['r1'] }, undefined), true);
  });

  test('distinct_hosts and max_per_host', () => {
    const hosts = [host('h1', { capacity: { cpu: 16, memory: 16 } }), host('h2', { capacity: { cpu: 16, memory: 16 } })];
    const big = { cpu: 4, memory: 4 };
    const d = place({ hosts }, [spec('web', { count: 3, resources: big, placement: { distinctHosts: true } })]);
    assert.deepEqual(hostsOf(d), ['h1', 'h2']);
    assert.equal(d.infeasible[0]!.message, '1 of 3 instances cannot be placed: distinct_hosts on 2 hosts');
    const m = place({ hosts }, [spec('web', { count: 5, resources: big, placement: { maxPerHost: 2 } })]);
    assert.deepEqual(hostsOf(m).sort(), ['h1', 'h1', 'h2', 'h2']);
    assert.equal(m.infeasible[0]!.message, '1 of 5 instances cannot be placed: max_per_host 2 on 2 hosts');
  });

  test('anti-affinity holds both ways', () => {
    const hosts = [host('h1'), host('h2'), host('h3')];
    const allocs = [alloc('db', 0, 'h1'), alloc('cache', 0, 'h2')];
    const web = spec('web', { count: 2, placement: { antiAffinity: ['db'], distinctHosts: true } });
    // cache says "never next to web": web must keep off h2 although web itself never named cache.
    const cache = spec('cache', { count: 1, placement: { antiAffinity: ['web'] } });
    const r = place({ hosts, allocs, services: [web, cache] }, [web]);
    assert.deepEqual(hostsOf(r), ['h3']);
    assert.deepEqual(r.infeasible[0]!.hostsFiltered, { 'anti_affinity with cache': 1, 'anti_affinity with db': 1, distinct_hosts: 1 });
    assert.equal(r.infeasible[0]!.message, '1 of 2 instances cannot be placed: anti_affinity with cache on 1 host, anti_affinity with db on 1 host, distinct_hosts on 1 host');
  });

  test('static ports: reserved or held by an alloc rule the host out; dynamic ports: lowest free, never twice, never reserved', () => {
    const hosts = [host('h1', { reservedPorts: [80, 20000] }), host('h2', { dynamicPorts: { from: 20000, to: 20002 } }), host('h3')];
    const allocs = [alloc('x', 0, 'h2', { ports: { http: 80, a: 20001 } })];
    const r = place({ hosts, allocs }, [spec('web', { count: 3, resources: { cpu: 0, memory: 0 }, ports: [{ name: 'http', static: 80 }, { name: 'admin' }] })]);
    assert.deepEqual(
      r.placed.map((a) => [a.host, a.ports]),
      [['h3', { http: 80, admin: 20000 }]],
    );
    assert.equal(r.infeasible[0]!.message, '2 of 3 instances cannot be placed: port 80 in use on 3 hosts');

    const dyn: PortSpec[] = [{ name: 'a' }, { name: 'b' }];
    const d = place({ hosts: [hosts[0]!, hosts[1]!], allocs }, [spec('api', { count: 4, resources: { cpu: 0, memory: 0 }, ports: dyn })]);
    const onH1 = d.placed.filter((a) => a.host === 'h1').map((a) => a.ports);
    const onH2 = d.placed.filter((a) => a.host === 'h2').map((a) => a.ports);
    assert.deepEqual(onH1[0], { a: 20001, b: 20002 }); // 20000 is reserved
    assert.deepEqual(onH2, [{ a: 20000, b: 20002 }]); // 20001 is held; then the range is used up
    assert.ok(d.infeasible.length === 0 || /no free dynamic port/.test(d.infeasible[0]!.message));
  });

  test('a failed alloc its replacement reuses: its reservation is taken over on its own host, kept elsewhere', () => {
    const only = [host('h1', { capacity: { cpu: 1, memory: 1 } })];
    const failed = alloc('web', 0, 'h1', { ports: { http: 80 }, status: { state: 'failed', restarts: 3, since: 500 } });
    const s = spec('web', { count: 1, ports: [{ name: 'http', static: 80 }], placement: { distinctHosts: true } });
    const req: PlacementRequest = { spec: s, index: 0, reason: 'failed', previous: failed.id, reuse: failed, reschedules: [1000] };
    const r = placeInstances({ now: 1000, hosts: only, allocs: [failed] }, [req], { newAllocId: ids() });
    assert.deepEqual(r.placed.map((a) => [a.host, a.ports, a.previous, a.reschedules]), [['h1', { http: 80 }, failed.id, [1000]]]);
    // Without the reuse the host is full.
    const plain = placeInstances({ now: 1000, hosts: only, allocs: [failed] }, [{ spec: s, index: 0, reason: 'new' }], { newAllocId: ids() });
    assert.equal(plain.placed.length, 0);
  });

  test('alloc ids: <service>.<index>.<8 hex> by default; the injected generator otherwise; never one in use', () => {
    assert.match(randomAllocId('web', 3), /^web\.3\.[0-9a-f]{8}$/);
    const r = placeInstances({ now: 1, hosts: [host('h1')], allocs: [] }, [{ spec: spec('web'), index: 0, reason: 'new' }]);
    assert.match(r.placed[0]!.id, /^web\.0\.[0-9a-f]{8}$/);
    let n = 0;
    const clash = placeInstances({ now: 1, hosts: [host('h1')], allocs: [alloc('web', 1, 'h1', { id: 'fixed0' })] }, [{ spec: spec('web'), index: 0, reason: 'new' }], {
      newAllocId: () => `fixed${n++}`,
    });
    assert.equal(clash.placed[0]!.id, 'fixed1');
  });
});

// ------------------------------------------------------------------------------------------------------------------
// Properties

/** mulberry32 (bench/lib/stats.ts): the same cases on every run, so a failure names its seed. */
const prng = seededRandom;

interface Case {
  readonly hosts: HostSnapshot[];
  readonly allocs: Alloc[];
  readonly specs: ServiceSpec[];
  readonly requests: PlacementRequest[];
}

const SVC = ['s0', 's1', 's2', 's3'];

function randomCase(seed: number): Case {
  const r = prng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const hosts: HostSnapshot[] = Array.from({ length: Math.floor(r() * 9) }, (_, i) => {
    const labels: Record<string, string> = {};
    if (r() < 0.8) labels.zone = pick(['a', 'b', 'c']);
    if (r() < 0.5) labels.class = pick(['x', 'y']);
    const from = 20000;
    return host(`h${i}`, {
      alive: r() < 0.9,
      draining: r() < 0.1,
      labels,
      capacity: { cpu: pick([0, 1, 2, 3, 4.5]), memory: pick([0, 2, 4, 8]) },
      reservedPorts: r() < 0.3 ? [pick([80, 20000, 20001])] : [],
      dynamicPorts: { from, to: from + Math.floor(r() * 4) },
    });
  });
  const specs: ServiceSpec[] = SVC.slice(0, 1 + Math.floor(r() * 4)).map((name) => {
    const ports: PortSpec[] = [];
    if (r() < 0.3) ports.push({ name: 'http', static: pick([80, 8080, 20001]) });
    if (r() < 0.5) ports.push({ name: 'dyn' });
    if (r() < 0.2) ports.push({ name: 'dyn2' });
    const constraints: PlacementPolicy['constraints'] =
      r() < 0.3 ? [{ label: pick(['zone', 'class', 'rack']), op: pick(['eq', 'in', 'not_in'] as const), values: r() < 0.5 ? [pick(['a', 'b', 'x'])] : ['a', 'y'] }] : [];
    return spec(name, {
      count: Math.floor(r() * 7),
      resources: { cpu: pick([0, 0.1, 0.2, 0.5, 1, 1.5]), memory: pick([0, 1, 2, 3]) } satisfies Resources,
      ports,
      placement: {
        constraints,
        distinctHosts: r() < 0.3,
        ...(r() < 0.3 ? { spread: 'zone' } : {}),
        ...(r() < 0.2 ? { maxPerHost: 1 + Math.floor(r() * 2) } : {}),
        antiAffinity: r() < 0.3 ? [pick(SVC)] : [],
        strategy: r() < 0.5 ? 'binpack' : 'spread',
      },
    });
  });
  const allocs: Alloc[] = [];
  for (let i = Math.floor(r() * 6); i > 0 && hosts.length > 0; i--) {
    const h = pick(hosts);
    allocs.push(alloc(pick(SVC), 100 + i, h.name, { resources: { cpu: pick([0, 0.5, 1]), memory: pick([0, 1, 2]) }, ports: r() < 0.3 ? { p: pick([80, 20000, 20002]) } : {} }));
  }
  let requests: PlacementRequest[] = specs.flatMap((s) =>
    Array.from({ length: s.count }, (_, index): PlacementRequest => ({ spec: s, index, reason: 'new', ...(r() < 0.1 && hosts.length > 0 ? { avoidHost: pick(hosts).name } : {}) })),
  );
  // Sometimes interleave the services, so the fast path's per-service heaps are rebuilt between requests.
  if (r() < 0.5) requests = requests.map((q) => [r(), q] as const).sort((x, y) => x[0] - y[0]).map(([, q]) => q);
  return { hosts, allocs, specs, requests };
}

/** A second, naive implementation of "can this spec go on this host now", written from the spec, not the code. */
function feasibleNaive(h: HostSnapshot, s: ServiceSpec, all: readonly Alloc[], specs: readonly ServiceSpec[]): boolean {
  if (!h.alive || h.draining) return false;
  if (!s.placement.constraints.every((c) => constraintHolds(c, h.labels[c.label]))) return false;
  const on = all.filter((a) => a.host === h.name);
  const cpu = on.reduce((x, a) => x + a.resources.cpu, 0) + s.resources.cpu;
  const mem = on.reduce((x, a) => x + a.resources.memory, 0) + s.resources.memory;
  if (cpu > h.capacity.cpu + 1e-9 || mem > h.capacity.memory + 1e-6) return false;
  const mine = on.filter((a) => a.service === s.name).length;
  if (s.placement.distinctHosts && mine >= 1) return false;
  if (s.placement.maxPerHost !== undefined && mine >= s.placement.maxPerHost) return false;
  const antiOthers = specs.filter((o) => o.placement.antiAffinity.includes(s.name)).map((o) => o.name);
  if (on.some((a) => a.service !== s.name && (s.placement.antiAffinity.includes(a.service) || antiOthers.includes(a.service)))) return false;
  const used = new Set([...h.reservedPorts, ...on.flatMap((a) => Object.values(a.ports))]);
  const statics = s.ports.flatMap((p) => (p.static === undefined ? [] : [p.static]));
  if (new Set(statics).size !== statics.length || statics.some((p) => used.has(p))) return false;
  for (const p of statics) used.add(p);
  let free = 0;
  for (let p = h.dynamicPorts.from; p <= h.dynamicPorts.to; p++) if (!used.has(p)) free++;
  return free >= s.ports.length - statics.length;
}

/** Every invariant of one placement run; returns the first one broken, or undefined. */
function violation(c: Case, res: ReturnType<typeof placeInstances>): string | undefined {
  const byName = new Map(c.hosts.map((h) => [h.name, h]));
  const specOf = new Map(c.specs.map((s) => [s.name, s]));
  const all = [...c.allocs, ...res.placed];
  if (res.placed.length + res.unplaced.length !== c.requests.length) return 'placed + unplaced != requests';
  const touched = new Set(res.placed.map((a) => a.host));
  for (const name of touched) {
    const h = byName.get(name)!;
    const on = all.filter((a) => a.host === name);
    const cpu = on.reduce((x, a) => x + a.resources.cpu, 0);
    const mem = on.reduce((x, a) => x + a.resources.memory, 0);
    if (cpu > h.capacity.cpu + 1e-9) return `cpu over-committed on ${name}: ${cpu} > ${h.capacity.cpu}`;
    if (mem > h.capacity.memory + 1e-6) return `memory over-committed on ${name}: ${mem} > ${h.capacity.memory}`;
    const ports = [...h.reservedPorts, ...on.flatMap((a) => Object.values(a.ports))];
    const newPorts = res.placed.filter((a) => a.host === name).flatMap((a) => Object.values(a.ports));
    for (const p of newPorts) if (ports.filter((q) => q === p).length > 1) return `port ${p} used twice on ${name}`;
  }
  for (const a of res.placed) {
    const h = byName.get(a.host)!;
    const s = specOf.get(a.service)!;
    if (!h.alive || h.draining) return `${a.id} on a host that is down or draining`;
    for (const con of s.placement.constraints) if (!constraintHolds(con, h.labels[con.label])) return `${a.id} breaks a label constraint on ${h.name}`;
    const mine = all.filter((b) => b.host === a.host && b.service === a.service).length;
    if (s.placement.distinctHosts && mine > 1) return `${a.service} twice on ${a.host} (distinct_hosts)`;
    if (s.placement.maxPerHost !== undefined && mine > s.placement.maxPerHost) return `${a.service} ${mine} times on ${a.host} (max_per_host)`;
    for (const b of all) {
      if (b.host !== a.host || b.service === a.service) continue;
      const other = specOf.get(b.service);
      if (s.placement.antiAffinity.includes(b.service) || other?.placement.antiAffinity.includes(a.service)) return `${a.service} next to ${b.service} on ${a.host} (anti_affinity)`;
    }
    for (const p of s.ports) {
      const got = a.ports[p.name];
      if (got === undefined) return `${a.id} has no port ${p.name}`;
      if (p.static !== undefined ? got !== p.static : got < h.dynamicPorts.from || got > h.dynamicPorts.to) return `${a.id} port ${p.name}=${got} is wrong`;
    }
  }
  for (const s of c.specs) {
    const unplaced = res.unplaced.filter((q) => q.spec.name === s.name).length;
    const inf = res.infeasible.find((i) => i.service === s.name);
    if (unplaced === 0) {
      if (inf !== undefined) return `infeasible reported for ${s.name} with nothing unplaced`;
      continue;
    }
    if (inf === undefined || inf.unplaced !== unplaced) return `infeasible count for ${s.name} is ${inf?.unplaced} but ${unplaced} are unplaced`;
    const filtered = Object.values(inf.hostsFiltered).reduce((x, n) => x + n, 0);
    if (filtered !== c.hosts.length) return `${s.name}: ${filtered} hosts filtered, ${c.hosts.length} hosts`;
    if (Object.keys(inf.hostsFiltered).includes('not ranked')) return `${s.name}: a host was neither feasible nor rejected`;
    // Usage only grows, so a host that could take the instance now could have taken it when it was refused.
    const fits = c.hosts.filter((h) => feasibleNaive(h, s, all, c.specs));
    if (fits.length > 0) return `${s.name} left unplaced although ${fits.map((h) => h.name).join(', ')} can take it`;
  }
  return undefined;
}

describe('placement: properties over random clusters', () => {
  const CASES = 3000;

  test(`${CASES} random clusters: no over-commit, every constraint holds, no port twice, infeasibility explained`, () => {
    let placed = 0;
    let unplaced = 0;
    for (let seed = 1; seed <= CASES; seed++) {
      const c = randomCase(seed);
      const res = placeInstances({ now: 1, hosts: c.hosts, allocs: c.allocs, services: c.specs }, c.requests, { newAllocId: ids() });
      const bad = violation(c, res);
      assert.equal(bad, undefined, `seed ${seed}: ${bad}`);
      placed += res.placed.length;
      unplaced += res.unplaced.length;
    }
    // The generator must exercise both outcomes, or the properties above prove little.
    assert.ok(placed > CASES && unplaced > CASES / 3, `placed ${placed}, unplaced ${unplaced}`);
  });

  test(`${CASES} random clusters: the per-service heaps place exactly as a full pass over the hosts does`, () => {
    for (let seed = 1; seed <= CASES; seed++) {
      const c = randomCase(seed);
      const input = { now: 1, hosts: c.hosts, allocs: c.allocs, services: c.specs };
      const fast = placeInstances(input, c.requests, { newAllocId: ids() });
      const slow = placeInstances(input, c.requests, { newAllocId: ids(), exhaustive: true });
      assert.deepEqual(fast, slow, `seed ${seed}`);
    }
  });

  test('the same input gives the same plan', () => {
    const c = randomCase(42);
    const input = { now: 1, hosts: c.hosts, allocs: c.allocs, services: c.specs };
    assert.deepEqual(placeInstances(input, c.requests, { newAllocId: ids() }), placeInstances({ ...input, hosts: [...c.hosts].reverse() }, c.requests, { newAllocId: ids() }));
  });
});
