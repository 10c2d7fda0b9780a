/**
 * How fast is placement?
 *
 *   node --import tsx bench/placement.ts [--services 100] [--instances 100] [--hosts 1000] [--runs 5] [--max-ms 1000]
 *
 * 100 services × 100 instances = 10,000 placements over 1,000 simulated hosts with labels (zone, rack, class) and
 * declared capacity. The services mix what a real cluster asks for: label constraints, distinct_hosts, spread over
 * zones, max_per_host, anti-affinity, static and dynamic ports, bin-packing and spread. Two figures, each the median
 * of --runs runs (after one warm-up run that is not counted):
 *   place      placeInstances() on an empty cluster, all 10,000 requests at once (the scheduler core alone)
 *   reconcile  reconcile() of the same snapshot: the whole first deploy, events and all (what the controller runs)
 * Issue #9 asks for 10,000 placements in under 1 s; the bench fails loudly (a FAIL line, exit 1) when either median
 * passes --max-ms. The last line printed is JSON.
 */
import { placeInstances, type PlacementRequest } from '../src/scheduler/placement.js';
import { reconcile } from '../src/scheduler/reconcile.js';
import type { ClusterSnapshot, HostSnapshot, ServiceSpec } from '../src/scheduler/types.js';
import { median, seededRandom } from './lib/stats.js';
import { machineInfo } from './lib/sysinfo.js';

interface Options {
  readonly services: number;
  readonly instances: number;
  readonly hosts: number;
  readonly runs: number;
  readonly maxMs: number;
}

function parseArgs(argv: readonly string[]): Options {
  if (argv.includes('--help')) {
    process.stdout.write('usage: node --import tsx bench/placement.ts [--services 100] [--instances 100] [--hosts 1000] [--runs 5] [--max-ms 1000]\n');
    process.exit(0);
  }
  const num = (flag: string, dflt: number): number => {
    const i = argv.indexOf(`--${flag}`);
    const v = i === -1 ? dflt : Number(argv[i + 1]);
    if (!Number.isFinite(v) || v <= 0) throw new Error(`--${flag} takes a positive number`);
    return v;
  };
  return { services: num('services', 100), instances: num('instances', 100), hosts: num('hosts', 1000), runs: num('runs', 5), maxMs: num('max-ms', 1000) };
}

const GiB = 1024 ** 3;
const ZONES = ['a', 'b', 'c', 'd', 'e'];

function makeHosts(n: number, rnd: () => number): HostSnapshot[] {
  return Array.from({ length: n }, (_, i) => ({
    name: `h${String(i).padStart(4, '0')}`,
    alive: true,
    downForMs: 0,
    draining: false,
    labels: { zone: ZONES[i % ZONES.length]!, rack: `r${Math.floor(i / 20)}`, class: rnd() < 0.3 ? 'big' : 'small' },
    capacity: rnd() < 0.3 ? { cpu: 32, memory: 128 * GiB } : { cpu: 16, memory: 64 * GiB },
    reservedPorts: [22, 8080],
    dynamicPorts: { from: 20000, to: 32767 },
  }));
}

function makeServices(n: number, count: number, rnd: () => number): ServiceSpec[] {
  return Array.from({ length: n }, (_, i): ServiceSpec => {
    const kind = i % 10;
    return {
      name: `svc${String(i).padStart(3, '0')}`,
      count,
      version: 'v1',
      task: { cmd: ['/bin/true'], env: {} },
      resources: { cpu: [0.1, 0.25, 0.5, 1][i % 4]!, memory: [128, 256, 512, 1024][Math.floor(rnd() * 4)]! * 1024 * 1024 },
      // Every fifth service has a static port (with distinct hosts, or two would collide), the rest dynamic ones.
      ports: kind === 0 ? [{ name: 'http', static: 9000 + i }] : [{ name: 'http' }, { name: 'admin' }],
      placement: {
        constraints: kind === 1 ? [{ label: 'class', op: 'eq', values: ['big'] }] : kind === 2 ? [{ label: 'zone', op: 'not_in', values: ['e'] }] : [],
        distinctHosts: kind === 0,
        ...(kind === 3 ? { spread: 'zone' } : {}),
        ...(kind === 4 ? { maxPerHost: 2 } : {}),
        antiAffinity: kind === 5 ? [`svc${String(i - 1).padStart(3, '0')}`] : [],
        strategy: kind === 6 ? 'spread' : 'binpack',
      },
      restart: { attempts: 2, intervalMs: 1_800_000, delayMs: 1000 },
      reschedule: { attempts: 0, intervalMs: 3_600_000, delayMs: 5000, maxDelayMs: 3_600_000, unlimited: true },
      update: { maxParallel: 1, minHealthyMs: 2000, healthyDeadlineMs: 300_000, progressDeadlineMs: 0, canary: 0, autoPromote: false, autoRevert: false },
      files: [],
    };
  });
}

/** Sequential ids: the bench measures placement, not the crypto RNG, and the plan is the same on every run. */
function idGenerator(): (service: string, index: number) => string {
  let n = 0;
  return (service, index) => `${service}.${index}.${(n++).toString(16).padStart(8, '0')}`;
}

function main(): void {
  const o = parseArgs(process.argv.slice(2));
  const rnd = seededRandom(9);
  const hosts = makeHosts(o.hosts, rnd);
  const services = makeServices(o.services, o.instances, rnd);
  const snapshot: ClusterSnapshot = { now: 1_000_000, hosts, services, allocs: [], fenceGraceMs: 3000 };
  const requests: PlacementRequest[] = services.flatMap((spec) => Array.from({ length: spec.count }, (_, index) => ({ spec, index, reason: 'new' as const })));
  const total = requests.length;

  const placeMs: number[] = [];
  const reconcileMs: number[] = [];
  let placed = 0;
  let unplaced = 0;
  let stopped = 0;
  for (let run = 0; run <= o.runs; run++) {
    let t0 = performance.now();
    const res = placeInstances({ now: snapshot.now, hosts, allocs: [], services }, requests, { newAllocId: idGenerator() });
    const p = performance.now() - t0;
    t0 = performance.now();
    const plan = reconcile(snapshot, { newAllocId: idGenerator() });
    const r = performance.now() - t0;
    if (run === 0) continue; // warm-up: the JIT compiles the hot loop
    placeMs.push(p);
    reconcileMs.push(r);
    placed = res.placed.length;
    unplaced = res.unplaced.length;
    stopped = plan.stop.length;
    if (plan.place.length !== placed) throw new Error(`reconcile placed ${plan.place.length}, placeInstances ${placed}: they should agree`);
  }
  const place = median(placeMs)!;
  const rec = median(reconcileMs)!;
  const m = machineInfo();
  const lines = [
    `Placement of ${total.toLocaleString('en')} instances (${o.services} services × ${o.instances}) over ${o.hosts.toLocaleString('en')} hosts — ${m.cpu}, ${m.cores} cores, node ${m.node}`,
    `  placed ${placed}, unplaced ${unplaced}, stops ${stopped}; median of ${o.runs} runs after a warm-up`,
    `  placeInstances: ${place.toFixed(0)} ms  (${Math.round(total / (place / 1000)).toLocaleString('en')} decisions/s; runs ${placeMs.map((x) => x.toFixed(0)).join(', ')} ms)`,
    `  reconcile:      ${rec.toFixed(0)} ms  (${Math.round(total / (rec / 1000)).toLocaleString('en')} decisions/s; runs ${reconcileMs.map((x) => x.toFixed(0)).join(', ')} ms)`,
    `  reference: issue #9 asks for 10,000 placements in under 1 s`,
  ];
  let failures = 0;
  for (const [what, ms] of [
    ['placeInstances', place],
    ['reconcile', rec],
  ] as const) {
    if (ms > o.maxMs) {
      failures++;
      lines.push(`FAIL: ${what} median is ${ms.toFixed(0)} ms; the limit is ≤ ${o.maxMs} ms`);
    } else lines.push(`holds: ${what} median ${ms.toFixed(0)} ms (limit ≤ ${o.maxMs} ms)`);
  }
  if (unplaced > 0) lines.push(`note: ${unplaced} instances found no host (the simulated cluster is too small for this mix)`);
  process.stdout.write(`${lines.join('\n')}\n`);
  process.stdout.write(`${JSON.stringify({ instances: total, hosts: o.hosts, placed, unplaced, placeMs: place, reconcileMs: rec, decisionsPerS: Math.round(total / (place / 1000)) })}\n`);
  if (failures > 0) process.exitCode = 1;
}

main();
