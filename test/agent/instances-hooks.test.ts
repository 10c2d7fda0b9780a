import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { Instances, type InstancesOptions } from '../../src/agent/instances.js';
import { EmbeddedStore } from '../../src/cluster/embedded-store.js';
import { keys } from '../../src/cluster/keys.js';
import type { Lease } from '../../src/cluster/store.js';
import { sealRecord } from '../../src/cluster/trust.js';
import { resourceStateDir } from '../../src/state-dir.js';
import { gatherFacts } from '../../src/facts.js';
import { createLogger } from '../../src/log.js';
import { ELECTION } from '../../src/scheduler/controller.js';
import { openStatusRecord, wrapSigned, type AssignRecord, type StatusRecord } from '../../src/scheduler/records.js';
import type { Alloc, HookName, HookSpec, ServiceSpec } from '../../src/scheduler/types.js';
import { until } from '../helpers/engine.js';
import { controllerAndHost } from '../helpers/trusted-hosts.js';

/**
 * The agent's side of hooks and of stopping (instances.ts), against a real embedded store, real signatures and real
 * hook processes; the engine is played by the test (vertex states, and which allocs the running graph holds). The
 * assignments are written as the controller writes them: signed by the elected controller host, carrying the
 * operator-signed spec.
 */

const { pairs, view, since } = controllerAndHost();
const log = createLogger({ level: 'silent' });
const facts = gatherFacts();
let seq = Date.now();

const sh = (script: string): HookSpec => ({ cmd: ['/bin/sh', '-c', script], timeoutMs: 30_000 });

function spec(hooks: Partial<Record<HookName, HookSpec>>): ServiceSpec {
  return {
    name: 'web',
    count: 2,
    version: 'v1',
    task: { cmd: ['/bin/true'], env: { COLOR: 'blue' } },
    resources: { cpu: 0.25, memory: 1 << 20 },
    ports: [{ name: 'http' }],
    placement: { constraints: [], distinctHosts: false, antiAffinity: [], strategy: 'binpack' },
    restart: { attempts: 2, intervalMs: 60_000, delayMs: 1000 },
    reschedule: { attempts: 0, intervalMs: 0, delayMs: 0, maxDelayMs: 0, unlimited: true },
    update: { maxParallel: 1, minHealthyMs: 0, healthyDeadlineMs: 60_000, progressDeadlineMs: 0, canary: 0, autoPromote: false, autoRevert: true },
    files: [],
    hooks,
  };
}

interface Rig {
  readonly dir: string;
  readonly store: EmbeddedStore;
  readonly lease: Lease;
  readonly epoch: number;
  /** The allocs "the running graph" holds. */
  readonly applied: Set<string>;
  /** How often the instances asked for the graph to be re-rendered. */
  changes: number;
  inst: Instances;
}

let rigs: Rig[] = [];

/** An agent's Instances on this rig's store (a new one on the same state dir is the agent restarting). */
async function newInstances(r: Omit<Rig, 'inst'>, extra?: Partial<InstancesOptions>): Promise<Instances> {
  const inst = new Instances({
    store: r.store,
    link: { trust: view, sign: (k, b) => sealRecord(pairs.h1, k, ++seq, b), currentLease: r.lease },
    host: 'h1',
    facts,
    labels: {},
    stateDir: join(r.dir, 'state'),
    log,
    fenceMs: 3000,
    onChange: () => (r.changes += 1),
    applied: () => r.applied,
    ...extra,
  });
  await inst.start();
  return inst;
}

async function setup(prepare?: (store: EmbeddedStore) => Promise<void>, extra?: Partial<InstancesOptions>): Promise<Rig> {
  const dir = await mkdtemp(join(tmpdir(), 'bp-inst-hooks-'));
  const store = await EmbeddedStore.open({ dir: join(dir, 'store') });
  // The host's membership under its lease, and c1 elected controller (its election key's revision is the epoch).
  const lease = await store.lease(60_000);
  await store.put(keys.node('h1'), 'h1', { lease });
  const epoch = (await store.put(`${keys.election(ELECTION)}c1`, 'c1')).revision;
  await prepare?.(store);
  const base = { dir, store, lease, epoch, applied: new Set<string>(), changes: 0 };
  const rig: Rig = Object.assign(base, { inst: await newInstances(base, extra) });
  rigs.push(rig);
  return rig;
}

after(async () => {
  for (const r of rigs) {
    r.inst.close();
    await r.store.close();
    await rm(r.dir, { recursive: true, force: true });
  }
  rigs = [];
});

function allocOf(id: string, hookRequests?: Alloc['hookRequests']): Omit<Alloc, 'status'> {
  const index = Number(id.split('.')[1]);
  return { id, service: 'web', index, version: 'v1', host: 'h1', resources: { cpu: 0.25, memory: 1 << 20 }, ports: { http: 20000 + index }, createdAt: 1, reschedules: [], ...(hookRequests === undefined ? {} : { hookRequests }) };
}

/** Writes the assignment as the elected controller c1 does. */
async function assign(r: Rig, id: string, s: ServiceSpec, hookRequests?: Alloc['hookRequests']): Promise<void> {
  const specRecord = sealRecord(pairs.c1, keys.service(s.name), ++seq, JSON.stringify({ spec: s, source: 'test', deployedAt: since }));
  const body: AssignRecord = { alloc: allocOf(id, hookRequests), epoch: r.epoch, controller: 'c1', specRecord, specBy: 'c1' };
  const key = keys.assign('h1', id);
  await r.store.put(key, wrapSigned('c1', sealRecord(pairs.c1, key, ++seq, JSON.stringify(body))));
}

async function status(r: Rig, id: string): Promise<StatusRecord | undefined> {
  const kv = await r.store.get(keys.status('h1', id));
  if (kv === undefined) return undefined;
  const o = openStatusRecord(view, 'h1', id, kv.value);
  assert.ok(o.ok, o.ok ? '' : o.why);
  return o.value;
}

async function waitStatus(r: Rig, id: string, what: string, cond: (s: StatusRecord) => boolean, timeoutMs = 15_000): Promise<StatusRecord> {
  let last: StatusRecord | undefined;
  try {
    await until(async () => {
      last = await status(r, id);
      return last !== undefined && cond(last);
    }, timeoutMs, what);
  } catch (err) {
    throw new Error(`${(err as Error).message}; last status: ${JSON.stringify(last)}`);
  }
  assert.ok(last !== undefined);
  return last;
}

async function lines(file: string): Promise<string[]> {
  return (await readFile(file, 'utf8').catch(() => '')).split('\n').filter((l) => l !== '');
}

async function alive(pid: number): Promise<boolean> {
  try {
    return !/^\d+ \(.*\) Z/s.test(await readFile(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

let dir0: string;
before(async () => {
  dir0 = await mkdtemp(join(tmpdir(), 'bp-inst-hooks-files-'));
});
after(async () => {
  await rm(dir0, { recursive: true, force: true });
});

test('afterStart runs once per alloc, when it is first up: not for a restart of its process, not after an agent restart', async () => {
  const r = await setup();
  const count = join(dir0, 'after-start.count');
  const go = join(dir0, 'after-start.go');
  const id = 'web.0.0000000a';
  await assign(r, id, spec({ afterStart: sh(`echo "$HOOK $INSTANCE_ID $COLOR $PORT_HTTP" >> ${count}; while [ ! -e ${go} ]; do sleep 0.05; done; echo warmed up`) }));
  await until(() => r.inst.ids().has(id), 10_000, 'the assignment accepted');
  const svc = `svc[${id}]`;

  r.inst.onVertexState(svc, 'running');
  await waitStatus(r, id, 'starting', (s) => s.state === 'starting');
  assert.deepEqual(await lines(count), [], 'not before the instance is up');

  r.inst.onVertexState(svc, 'converged');
  const running = await waitStatus(r, id, 'afterStart running', (s) => s.hooks?.afterStart?.state === 'running');
  assert.equal(running.state, 'running');
  assert.equal(running.hooks?.afterStart?.nonce, 1);
  await writeFile(go, '');
  const ok = await waitStatus(r, id, 'afterStart ok', (s) => s.hooks?.afterStart?.state === 'ok');
  assert.equal(ok.hooks?.afterStart?.nonce, 1);
  assert.equal(ok.hooks?.afterStart?.output, 'warmed up\nexit 0');
  assert.deepEqual(await lines(count), [`afterStart ${id} blue 20000`]);

  // The process dies and comes back: no second run.
  r.inst.onVertexState(svc, 'failed', 'exit 1');
  await waitStatus(r, id, 'failed', (s) => s.state === 'failed');
  r.inst.onVertexState(svc, 'converged');
  await waitStatus(r, id, 'running again', (s) => s.state === 'running');
  await sleep(500);
  assert.deepEqual(await lines(count), [`afterStart ${id} blue 20000`]);

  // A new agent on this host adopts the instance: the hook does not run again, and its result is still reported.
  r.inst.close();
  r.inst = await newInstances(r);
  await until(() => r.inst.ids().has(id), 10_000, 'the assignment accepted again');
  r.inst.onVertexState(svc, 'converged');
  const again = await waitStatus(r, id, 'reported by the new agent', (s) => s.state === 'running' && s.hooks?.afterStart?.state === 'ok' && s.since > ok.since);
  assert.equal(again.hooks?.afterStart?.output, 'warmed up\nexit 0');
  await sleep(500);
  assert.deepEqual(await lines(count), [`afterStart ${id} blue 20000`]);
});

test('beforeStop and beforePromote run when the assignment requests them, once per nonce, without re-rendering the graph', async () => {
  const r = await setup();
  const count = join(dir0, 'before-stop.count');
  const id = 'web.1.0000000b';
  const s = spec({ beforeStop: sh(`echo "$HOOK $INSTANCE_INDEX" >> ${count}; echo drained`) });
  await assign(r, id, s);
  await until(() => r.inst.ids().has(id), 10_000, 'the assignment accepted');
  // Rendered once the fence's heartbeat is confirmed (instances-fence.test.ts), a moment after it is accepted.
  await until(() => r.changes > 0, 10_000, 'the instance rendered');
  const renders = r.changes;

  await assign(r, id, s, { beforeStop: 1, beforePromote: 7 });
  const first = await waitStatus(r, id, 'beforeStop 1 ok', (st) => st.hooks?.beforeStop?.state === 'ok' && st.hooks.beforePromote !== undefined);
  assert.equal(first.hooks?.beforeStop?.nonce, 1);
  assert.equal(first.hooks?.beforeStop?.output, 'drained\nexit 0');
  // The spec has no beforePromote: ok at once, so the controller never waits for it.
  assert.deepEqual({ ...first.hooks?.beforePromote, at: 0 }, { nonce: 7, state: 'ok', output: 'no beforePromote hook', at: 0 });
  // Reported before the engine said anything about the instance.
  assert.equal(first.state, 'pending');

  // The same nonce again (the controller rewrote the assignment, here for another beforePromote): no second run.
  await assign(r, id, s, { beforeStop: 1, beforePromote: 8 });
  const same = await waitStatus(r, id, 'beforePromote 8', (st) => st.hooks?.beforePromote?.nonce === 8);
  assert.deepEqual(same.hooks?.beforeStop, first.hooks?.beforeStop);
  await sleep(300);
  assert.deepEqual(await lines(count), ['beforeStop 1']);
  // A new nonce (restart-step): again.
  await assign(r, id, s, { beforeStop: 2, beforePromote: 8 });
  await waitStatus(r, id, 'beforeStop 2 ok', (st) => st.hooks?.beforeStop?.nonce === 2 && st.hooks.beforeStop.state === 'ok');
  assert.deepEqual(await lines(count), ['beforeStop 1', 'beforeStop 1']);

  // A failing hook (the spec changed its hooks, not its version: the latest spec's hook runs).
  await assign(r, id, spec({ beforeStop: sh('echo "3 sessions left" >&2; exit 3') }), { beforeStop: 3 });
  const failed = await waitStatus(r, id, 'beforeStop 3 failed', (st) => st.hooks?.beforeStop?.nonce === 3 && st.hooks.beforeStop.state !== 'running');
  assert.equal(failed.hooks?.beforeStop?.state, 'failed');
  assert.equal(failed.hooks?.beforeStop?.output, '3 sessions left\nexit 3');
  assert.equal(r.changes, renders, 'hook requests do not re-render the graph');
});

test('an unassigned alloc is reported stopping until the running graph no longer holds it; its running hook is killed', async () => {
  const r = await setup();
  const pidFile = join(dir0, 'stop.pid');
  const id = 'web.3.0000000c';
  await assign(r, id, spec({ beforeStop: sh(`echo $$ > ${pidFile}; exec sleep 100`) }));
  await until(() => r.inst.ids().has(id), 10_000, 'the assignment accepted');
  r.applied.add(id);
  r.inst.onVertexState(`svc[${id}]`, 'converged');
  await waitStatus(r, id, 'running', (s) => s.state === 'running');
  await assign(r, id, spec({ beforeStop: sh(`echo $$ > ${pidFile}; exec sleep 100`) }), { beforeStop: 1 });
  await waitStatus(r, id, 'beforeStop running', (s) => s.hooks?.beforeStop?.state === 'running');
  await until(async () => (await readFile(pidFile, 'utf8').catch(() => '')).trim() !== '', 10_000, 'the hook started');
  const hookPid = Number(await readFile(pidFile, 'utf8'));
  const renders = r.changes;

  await r.store.delete(keys.assign('h1', id));
  const stopping = await waitStatus(r, id, 'stopping', (s) => s.state === 'stopping');
  assert.deepEqual(stopping.stopping, { service: 'web', index: 3, resources: { cpu: 0.25, memory: 1 << 20 }, ports: { http: 20003 } });
  assert.equal(stopping.version, 'v1');
  assert.equal(stopping.hooks, undefined);
  assert.equal(r.changes, renders + 1, 'the graph is re-rendered without it');
  await until(async () => !(await alive(hookPid)), 10_000, 'the hook killed');

  // Several confirm ticks later, still held by the graph: still stopping.
  await sleep(1500);
  assert.equal((await status(r, id))?.state, 'stopping');
  // The graph swap finished (its svc stopped): the status goes, and stays gone.
  r.applied.delete(id);
  await until(async () => (await r.store.get(keys.status('h1', id))) === undefined, 10_000, 'the status deleted');
  await sleep(700);
  assert.equal(await r.store.get(keys.status('h1', id)), undefined);
});

test('closing the agent kills its running hooks', async () => {
  const r = await setup();
  const pidFile = join(dir0, 'close.pid');
  const id = 'web.4.0000000d';
  await assign(r, id, spec({ beforePromote: sh(`echo $$ > ${pidFile}; exec sleep 100`) }), { beforePromote: 1 });
  await until(async () => (await readFile(pidFile, 'utf8').catch(() => '')).trim() !== '', 10_000, 'the hook started');
  const pid = Number(await readFile(pidFile, 'utf8'));
  r.inst.close();
  await until(async () => !(await alive(pid)), 10_000, 'the hook killed');
});

test("at start, this host's status keys of allocs neither assigned nor in the graph are deleted", async () => {
  const statusOf = (id: string): { key: string; value: string } => {
    const key = keys.status('h1', id);
    return { key, value: sealRecord(pairs.h1, key, ++seq, JSON.stringify({ state: 'stopping', restarts: 0, since: 1, stopping: { service: 'web', index: 0, resources: { cpu: 1, memory: 1 }, ports: {} } } satisfies StatusRecord)) };
  };
  const leftover = statusOf('web.5.0000000e');
  const inGraph = statusOf('web.6.0000000f');
  const assigned = statusOf('web.7.00000010');
  const r = await setup(async (store) => {
    for (const kv of [leftover, inGraph, assigned]) await store.put(kv.key, kv.value);
  });
  // (setup started the agent with an empty graph and no assignment: the first two are leftovers.)
  await until(async () => (await r.store.get(leftover.key)) === undefined && (await r.store.get(inGraph.key)) === undefined, 10_000, 'leftovers deleted');

  // Again with one assigned and one the graph still runs: those stay (the latter until the graph drops it).
  for (const kv of [leftover, inGraph, assigned]) await r.store.put(kv.key, kv.value);
  await assign(r, 'web.7.00000010', spec({}));
  r.applied.add('web.6.0000000f');
  r.inst.close();
  r.inst = await newInstances(r);
  await until(async () => (await r.store.get(leftover.key)) === undefined, 10_000, 'the leftover deleted');
  await sleep(1200);
  assert.notEqual(await r.store.get(inGraph.key), undefined, 'kept while the graph holds it');
  assert.notEqual(await r.store.get(assigned.key), undefined, 'an assigned alloc keeps its status');
  r.applied.delete('web.6.0000000f');
  await until(async () => (await r.store.get(inGraph.key)) === undefined, 10_000, 'deleted once the graph no longer holds it');
});

test("stopped instances' state directories: the latest per service stay, the others go once the graph has let them go; a restarted agent collects what is left, never what is assigned", async () => {
  const r = await setup(undefined, { retention: { keep: 1 }, gcFirstMs: 600_000 });
  const state = join(r.dir, 'state');
  const ids = ['web.10.0000001a', 'web.11.0000001b', 'web.12.0000001c'];
  const dirOf = new Map<string, string>();
  const run = async (id: string, ageMs: number): Promise<void> => {
    await assign(r, id, spec({}));
    await until(() => r.inst.ids().has(id), 10_000, `${id} accepted`);
    r.applied.add(id);
    r.inst.onVertexState(`svc[${id}]`, 'converged');
    // What its svc leaves in its state directory.
    const dir = await resourceStateDir(state, `svc[${id}]`);
    await writeFile(join(dir, 'stdout.log'), `output of ${id}\n`);
    const t = (Date.now() - ageMs) / 1000;
    await utimes(join(dir, 'stdout.log'), t, t);
    await utimes(dir, t, t);
    dirOf.set(id, dir);
  };
  for (const [i, id] of ids.entries()) await run(id, (3 - i) * 60_000);
  for (const id of ids) await r.store.delete(keys.assign('h1', id));
  for (const id of ids) await waitStatus(r, id, `${id} stopping`, (s) => s.state === 'stopping');
  // Still in the running graph: nothing goes.
  await sleep(1500);
  for (const id of ids) assert.ok(existsSync(dirOf.get(id)!), `${id}'s directory kept while the graph holds it`);
  for (const id of ids) r.applied.delete(id);
  await until(() => !existsSync(dirOf.get(ids[0]!)!) && !existsSync(dirOf.get(ids[1]!)!), 10_000, 'the two older directories collected');
  assert.equal(await readFile(join(dirOf.get(ids[2]!)!, 'stdout.log'), 'utf8'), `output of ${ids[2]}\n`, 'the latest kept, logs and all');

  // One assigned and running, older than anything: a restarted agent that keeps none takes the stopped one only.
  await run('web.13.0000001d', 3_600_000);
  r.inst.close();
  r.inst = await newInstances(r, { retention: { keep: 0 }, gcFirstMs: 100 });
  await until(() => !existsSync(dirOf.get(ids[2]!)!), 10_000, 'the last stopped one collected after the restart');
  await sleep(300);
  assert.ok(existsSync(dirOf.get('web.13.0000001d')!), 'an assigned instance keeps its directory');
});
