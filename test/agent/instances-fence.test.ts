import assert from 'node:assert/strict';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, test } from 'node:test';
import { Instances } from '../../src/agent/instances.js';
import { EmbeddedStore } from '../../src/cluster/embedded-store.js';
import { keys } from '../../src/cluster/keys.js';
import type { Lease, Store } from '../../src/cluster/store.js';
import { sealRecord } from '../../src/cluster/trust.js';
import { gatherFacts } from '../../src/facts.js';
import { createLogger } from '../../src/log.js';
import { heartbeatAge } from '../../src/resources/svc/fence.js';
import { ELECTION } from '../../src/scheduler/controller.js';
import { wrapSigned, type AssignRecord } from '../../src/scheduler/records.js';
import type { Alloc, ServiceSpec } from '../../src/scheduler/types.js';
import { until } from '../helpers/engine.js';
import { controllerAndHost } from '../helpers/trusted-hosts.js';

/**
 * The fence as the agent keeps it (instances.ts): the heartbeat is confirmed only while something on the host needs
 * it, never touched without the store confirming membership, and fresh before a first instance is rendered. Against
 * a real embedded store with real signatures; the engine is played by the test (which allocs the running graph
 * holds), and the store is wrapped to count the confirm loop's reads and to hold them back on demand.
 */

const { pairs, view, since } = controllerAndHost();
const log = createLogger({ level: 'silent' });
const facts = gatherFacts();
let seq = Date.now();
const FENCE_MS = 3000;

const spec: ServiceSpec = {
  name: 'web',
  count: 1,
  version: 'v1',
  task: { cmd: ['/bin/true'], env: {} },
  resources: { cpu: 0.25, memory: 1 << 20 },
  ports: [],
  placement: { constraints: [], distinctHosts: false, antiAffinity: [], strategy: 'binpack' },
  restart: { attempts: 2, intervalMs: 60_000, delayMs: 1000 },
  reschedule: { attempts: 0, intervalMs: 0, delayMs: 0, maxDelayMs: 0, unlimited: true },
  update: { maxParallel: 1, minHealthyMs: 0, healthyDeadlineMs: 60_000, progressDeadlineMs: 0, canary: 0, autoPromote: false, autoRevert: true },
  files: [],
};

/** The store as the instances see it: reads counted, and `get` held at a gate while one is set. */
class Probe {
  reads = 0;
  held = 0;
  private gate: Promise<void> | undefined;
  private open: (() => void) | undefined;
  constructor(readonly inner: EmbeddedStore) {}

  store(): Store {
    return new Proxy(this.inner, {
      get: (target, prop) => {
        const v: unknown = Reflect.get(target, prop, target);
        if (typeof v !== 'function') return v;
        const fn = v as (...args: unknown[]) => unknown;
        if (prop === 'get' || prop === 'list') {
          return async (...args: unknown[]) => {
            this.reads++;
            if (prop === 'get' && this.gate !== undefined) {
              this.held++;
              await this.gate;
            }
            return fn.apply(target, args);
          };
        }
        return fn.bind(target);
      },
    });
  }

  hold(): void {
    this.gate = new Promise((resolve) => (this.open = resolve));
  }

  release(): void {
    this.gate = undefined;
    this.open?.();
  }
}

interface Rig {
  readonly dir: string;
  readonly probe: Probe;
  readonly lease: Lease;
  readonly epoch: number;
  readonly applied: Set<string>;
  /** At each onChange: whether resources() held the instance then, and the heartbeat's age. */
  readonly renders: { hasSvc: boolean; age: number }[];
  inst: Instances;
}

const rigs: Rig[] = [];
after(async () => {
  for (const r of rigs) {
    r.inst.close();
    r.probe.release();
    await r.probe.inner.close();
    await rm(r.dir, { recursive: true, force: true });
  }
});

const ID = 'web.0.0000000a';
const hasSvc = (inst: Instances, id = ID): boolean => inst.resources().resources.some((res) => res.kind === 'svc' && res.name === id);

async function newInstances(r: Omit<Rig, 'inst'>): Promise<Instances> {
  const inst: Instances = new Instances({
    store: r.probe.store(),
    link: { trust: view, sign: (k, b) => sealRecord(pairs.h1, k, ++seq, b), currentLease: r.lease },
    host: 'h1',
    facts,
    labels: {},
    stateDir: join(r.dir, 'state'),
    log,
    fenceMs: FENCE_MS,
    onChange: () => r.renders.push({ hasSvc: hasSvc(inst), age: heartbeatAge(inst.heartbeat) }),
    applied: () => r.applied,
  });
  await inst.start();
  return inst;
}

async function setup(prepare?: (store: EmbeddedStore, epoch: number) => Promise<void>): Promise<Rig> {
  const dir = await mkdtemp(join(tmpdir(), 'bp-inst-fence-'));
  const store = await EmbeddedStore.open({ dir: join(dir, 'store') });
  const lease = await store.lease(60_000);
  await store.put(keys.node('h1'), 'h1', { lease });
  const epoch = (await store.put(`${keys.election(ELECTION)}c1`, 'c1')).revision;
  await prepare?.(store, epoch);
  const base = { dir, probe: new Probe(store), lease, epoch, applied: new Set<string>(), renders: [] as Rig['renders'] };
  const rig: Rig = Object.assign(base, { inst: await newInstances(base) });
  rigs.push(rig);
  return rig;
}

/** Writes the assignment as the elected controller c1 does. */
async function assign(store: EmbeddedStore, epoch: number, id: string): Promise<void> {
  const specRecord = sealRecord(pairs.c1, keys.service(spec.name), ++seq, JSON.stringify({ spec, source: 'test', deployedAt: since }));
  const alloc: Omit<Alloc, 'status'> = { id, service: 'web', index: Number(id.split('.')[1]), version: 'v1', host: 'h1', resources: spec.resources, ports: {}, createdAt: 1, reschedules: [] };
  const body: AssignRecord = { alloc, epoch, controller: 'c1', specRecord, specBy: 'c1' };
  const key = keys.assign('h1', id);
  await store.put(key, wrapSigned('c1', sealRecord(pairs.c1, key, ++seq, JSON.stringify(body))));
}

async function mtime(file: string): Promise<number | undefined> {
  return (await stat(file).catch(() => undefined))?.mtimeMs;
}

/** The confirm loop's reads over `ms` (it confirms every 500 ms while it runs). */
async function readsOver(r: Rig, ms: number): Promise<number> {
  const before = r.probe.reads;
  await sleep(ms);
  return r.probe.reads - before;
}

test('with nothing assigned or running here the fence costs no store reads; an assignment wakes it, and the instance is rendered only once the heartbeat is fresh', async () => {
  const r = await setup();
  assert.equal(await readsOver(r, 1200), 0, 'no confirmation while nothing needs the heartbeat');
  assert.equal(await mtime(r.inst.heartbeat), undefined, 'and no heartbeat');

  // The assignment arrives while the confirmation it wakes cannot answer yet: nothing renders the instance meanwhile.
  r.probe.hold();
  await assign(r.probe.inner, r.epoch, ID);
  await until(() => r.inst.ids().has(ID) && r.probe.held > 0, 10_000, 'the assignment accepted and the loop awake');
  await sleep(100);
  assert.equal(hasSvc(r.inst), false, 'not in a render before the heartbeat is fresh');
  assert.equal(r.renders.length, 0, 'no re-render asked for yet');
  assert.equal(await mtime(r.inst.heartbeat), undefined);

  r.probe.release();
  await until(() => r.renders.length > 0, 10_000, 'the re-render');
  assert.ok(r.renders.every((x) => !x.hasSvc || x.age <= FENCE_MS), `rendered with a stale heartbeat: ${JSON.stringify(r.renders)}`);
  assert.equal(r.renders.at(-1)?.hasSvc, true);
  assert.ok(heartbeatAge(r.inst.heartbeat) < FENCE_MS);
});

test('while an instance is assigned and running the heartbeat is kept fresh; with nothing left the loop parks again; without its membership record or lease the host never touches it', async () => {
  const r = await setup();
  await assign(r.probe.inner, r.epoch, ID);
  await until(() => r.renders.some((x) => x.hasSvc), 10_000, 'the instance rendered');
  r.applied.add(ID);
  // Held fresh for as long as it runs: well past the fence (its watchdog would kill it otherwise).
  const first = await mtime(r.inst.heartbeat);
  await sleep(FENCE_MS + 500);
  const later = await mtime(r.inst.heartbeat);
  assert.ok(first !== undefined && later !== undefined && later > first, 'the heartbeat moves on');
  assert.ok(heartbeatAge(r.inst.heartbeat) < FENCE_MS);

  // Unassigned and dropped from the graph: the fence has nothing left to protect, and stops reading.
  await r.probe.inner.delete(keys.assign('h1', ID));
  await until(() => !r.inst.ids().has(ID), 10_000, 'the unassignment seen');
  r.applied.delete(ID);
  await until(async () => (await r.probe.inner.get(keys.status('h1', ID))) === undefined, 10_000, 'the stopped instance forgotten');
  await sleep(600);
  assert.equal(await readsOver(r, 1200), 0, 'parked again');

  // A second instance later, and then the host's lease is gone: the heartbeat is never touched again.
  await assign(r.probe.inner, r.epoch, 'web.1.0000000b');
  await until(() => r.renders.some((x) => hasSvc(r.inst, 'web.1.0000000b') && x.age <= FENCE_MS), 10_000, 'the second instance rendered');
  r.applied.add('web.1.0000000b');
  // The membership record is gone while this agent still believes in its lease (etcd expired it during a pause):
  // the store says so, and the heartbeat stops.
  await r.probe.inner.delete(keys.node('h1'));
  await sleep(600);
  let frozen = await mtime(r.inst.heartbeat);
  await sleep(1200);
  assert.equal(await mtime(r.inst.heartbeat), frozen, 'not touched without the membership record');
  await r.probe.inner.put(keys.node('h1'), 'h1', { lease: r.lease });
  await until(async () => (await mtime(r.inst.heartbeat)) !== frozen, 10_000, 'touched again once the record is back');
  // The lease itself is lost.
  await r.lease.revoke();
  await sleep(600);
  frozen = await mtime(r.inst.heartbeat);
  await sleep(1200);
  assert.equal(await mtime(r.inst.heartbeat), frozen, 'not touched without the lease');
});

test('an agent that starts with instances assigned confirms before its first render holds them', async () => {
  const r = await setup(async (store, epoch) => assign(store, epoch, ID));
  // start() has returned: the instance is in resources() and the heartbeat is already fresh.
  assert.equal(hasSvc(r.inst), true);
  assert.ok(heartbeatAge(r.inst.heartbeat) < FENCE_MS, 'fresh before the first render');
});
