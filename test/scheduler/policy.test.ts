import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { EmbeddedStore } from '../../src/cluster/embedded-store.js';
import { generateKeyPair, type KeyPair } from '../../src/cluster/identity.js';
import { keys } from '../../src/cluster/keys.js';
import { sealHosts, sealRecord, TrustView } from '../../src/cluster/trust.js';
import { expandObjects } from '../../src/backplanes/objects.js';
import { placeInstances, type PlacementRequest } from '../../src/scheduler/placement.js';
import { strategyOf } from '../../src/scheduler/plans.js';
import { defaultsSource, effectiveSpec, namespaceUsage, openPolicyRecord, parsePolicyDocument, putPolicy, readPolicies, removePolicy, type PolicySigner } from '../../src/scheduler/policy.js';
import { wrapSigned } from '../../src/scheduler/records.js';
import { parseServiceText, readDeployFile } from '../../src/scheduler/spec.js';
import { serviceInputs, toSnapshot, type SchedState } from '../../src/scheduler/state.js';
import type { Alloc, NamespacePolicy, ServiceSpec } from '../../src/scheduler/types.js';
import { ValidationErrors } from '../../src/errors.js';
import { writeFile } from 'node:fs/promises';
import { host, Sim, spec as simSpec } from './plan-sim.js';

/**
 * Namespaces (src/scheduler/policy.ts): the policy document and record, defaults a spec inherits for what it does not
 * write, and quotas placement enforces — counted per instance index, so a replacement never needs room it already has.
 */

const G = 1024 ** 3;
const M = 1024 ** 2;

function pol(name: string, over: Partial<NamespacePolicy> = {}): NamespacePolicy {
  return { name, updatedAt: '2026-12-02T00:00:00Z', ...over };
}
const policies = (...ps: NamespacePolicy[]): Map<string, NamespacePolicy> => new Map(ps.map((p) => [p.name, p]));

function yamlSpec(body: string): ServiceSpec {
  const s = parseServiceText('/t/svc.yaml', body)[0];
  if (s === undefined) throw new Error('no spec');
  return s;
}

describe('policy document', () => {
  test('parses units into the record form', () => {
    const r = parsePolicyDocument('team-a', { quota: { cpu: '2500m', memory: '1G', instances: 4 }, defaults: { update: { maxParallel: 2, minHealthyMs: '5s', autoRevert: false }, maxUnavailable: 1 } });
    assert.ok(r.ok, JSON.stringify(r));
    assert.deepEqual(r.value, { name: 'team-a', quota: { cpu: 2.5, memory: G, instances: 4 }, defaults: { update: { maxParallel: 2, minHealthyMs: 5000, autoRevert: false }, maxUnavailable: 1 } });
    // What the record holds parses again to itself (the API validates on both sides).
    const again = parsePolicyDocument('team-a', r.value);
    assert.ok(again.ok);
    assert.deepEqual(again.value, r.value);
  });

  test('every problem is reported with where it is', () => {
    const r = parsePolicyDocument('Team_A', { quota: { memory: 'lots', cpuz: 1 }, defaults: { update: { maxParallel: -1, healthyDeadlineMs: '10m', progressDeadlineMs: '5m' } } });
    assert.ok(!r.ok);
    const text = r.problems.join('\n');
    assert.match(text, /namespace "Team_A": 1-63 characters/);
    assert.match(text, /quota: unknown key "cpuz" \(known here: cpu, memory, instances\)/);
    assert.match(text, /quota\.memory: "lots" is not a size/);
    assert.match(text, /defaults\.update\.maxParallel: maxParallel is a whole number >= 0/);
    assert.match(text, /defaults\.update\.progressDeadlineMs: progressDeadlineMs is shorter than healthyDeadlineMs/);
    const named = parsePolicyDocument('team-a', { name: 'team-b' });
    assert.ok(!named.ok);
    assert.match(named.problems.join(), /for namespace "team-b", not "team-a"/);
  });
});

describe('specs in namespaces', () => {
  test('namespace is optional (default), validated, and not part of the version', () => {
    const a = yamlSpec('name: web\nrun: { cmd: [/bin/true] }\n');
    const b = yamlSpec('name: web\nnamespace: team-a\nrun: { cmd: [/bin/true] }\n');
    const d = yamlSpec('name: web\nnamespace: default\nrun: { cmd: [/bin/true] }\n');
    assert.equal(a.namespace, undefined);
    assert.equal(b.namespace, 'team-a');
    assert.equal(d.namespace, undefined, '"default" is not stored');
    assert.equal(a.version, b.version);
    assert.throws(
      () => parseServiceText('/t/bad.yaml', 'name: web\nnamespace: Team_A\nrun: { cmd: [/bin/true] }\n'),
      (err: unknown) => err instanceof ValidationErrors && /bad\.yaml:2:\d+/.test(err.format()) && /namespace/.test(err.format()),
    );
  });

  test('the fields a spec does not write are the ones it inherits', () => {
    const none = yamlSpec('name: web\nrun: { cmd: [/bin/true] }\n');
    assert.deepEqual(none.inherits, ['maxParallel', 'minHealthyMs', 'healthyDeadlineMs', 'progressDeadlineMs', 'canary', 'autoPromote', 'autoRevert', 'startFirst', 'maxUnavailable']);
    const some = yamlSpec('name: web\nrun: { cmd: [/bin/true] }\nupdate: { strategy: serial, autoRevert: true, healthyDeadline: 1m }\nmaxUnavailable: 2\n');
    assert.deepEqual(some.inherits, ['minHealthyMs', 'progressDeadlineMs', 'canary', 'autoPromote', 'startFirst']);
  });

  test('an application object passes its namespace to every service it expands to', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bp-ns-obj-'));
    try {
      const file = join(dir, 'cache.yaml');
      await writeFile(file, 'kind: redis\nname: cache\nnamespace: team-a\nreplicas: 2\nmemory: 64M\n');
      const objects = await expandObjects((await readDeployFile(file)).objects);
      const services = objects.flatMap((o) => o.services);
      assert.ok(services.length > 0);
      for (const s of services) assert.equal(s.namespace, 'team-a', s.name);
      await writeFile(file, 'kind: redis\nname: cache\nnamespace: "-bad"\nreplicas: 2\nmemory: 64M\n');
      await assert.rejects(async () => expandObjects((await readDeployFile(file)).objects), (err: unknown) => err instanceof ValidationErrors && /"namespace" must be a namespace's name/.test(err.format()));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('defaults: the spec, then its namespace, then the built-ins', () => {
  const team = pol('team-a', { defaults: { update: { maxParallel: 3, autoRevert: false, healthyDeadlineMs: 20 * 60_000 }, maxUnavailable: 2 } });

  test('a field the spec does not write comes from its namespace', () => {
    const s = yamlSpec('name: web\nnamespace: team-a\ncount: 6\nrun: { cmd: [/bin/true] }\n');
    const e = effectiveSpec(s, policies(team));
    assert.equal(e.update.maxParallel, 3);
    assert.equal(e.update.autoRevert, false);
    assert.equal(e.maxUnavailable, 2);
    // Built-in where the namespace says nothing.
    assert.equal(e.update.canary, 0);
    assert.equal(e.update.minHealthyMs, 2000);
    // A progress deadline (built-in 10m) shorter than the inherited healthy deadline (20m) is raised to it.
    assert.equal(e.update.progressDeadlineMs, 20 * 60_000);
    const st = strategyOf(e, 'update');
    assert.equal(st.maxParallel, 3);
    assert.equal(st.maxUnavailable, 2);
    assert.equal(st.autoRevert, false);
    assert.deepEqual(defaultsSource(s, policies(team)), {
      maxParallel: 'namespace', minHealthyMs: 'built-in', healthyDeadlineMs: 'namespace', progressDeadlineMs: 'built-in', canary: 'built-in', autoPromote: 'built-in', autoRevert: 'namespace', startFirst: 'built-in', maxUnavailable: 'namespace',
    });
  });

  test('what the spec writes wins, even when it writes the built-in value', () => {
    const s = yamlSpec('name: web\nnamespace: team-a\ncount: 6\nrun: { cmd: [/bin/true] }\nupdate: { maxParallel: 1, autoRevert: true }\nmaxUnavailable: 1\n');
    const e = effectiveSpec(s, policies(team));
    assert.equal(e.update.maxParallel, 1);
    assert.equal(e.update.autoRevert, true);
    assert.equal(e.maxUnavailable, 1);
    assert.equal(e.update.healthyDeadlineMs, 20 * 60_000, 'what it does not write still comes from the namespace');
  });

  test('another namespace, no policy, or a record from before namespaces: the spec as it is', () => {
    const other = yamlSpec('name: web\nnamespace: team-b\nrun: { cmd: [/bin/true] }\n');
    assert.equal(effectiveSpec(other, policies(team)), other);
    const dflt = yamlSpec('name: web\nrun: { cmd: [/bin/true] }\n');
    assert.equal(effectiveSpec(dflt, policies(team)), dflt);
    assert.equal(effectiveSpec(dflt, policies(pol('default', { defaults: { update: { maxParallel: 4 } } }))).update.maxParallel, 4, 'the default namespace has defaults too');
    const { inherits: _gone, ...old } = yamlSpec('name: web\nnamespace: team-a\nrun: { cmd: [/bin/true] }\n');
    assert.equal(effectiveSpec(old, policies(team)).update.maxParallel, 1);
  });

  test('the controller reads every spec through its namespace (toSnapshot, serviceInputs); a changed default shows at once', () => {
    const inherits = yamlSpec('name: web\nnamespace: team-a\ncount: 6\nrun: { cmd: [/bin/true] }\n');
    const own = yamlSpec('name: api\nnamespace: team-a\ncount: 6\nrun: { cmd: [/bin/true] }\nupdate: { maxParallel: 2 }\n');
    const state = (ps: Map<string, NamespacePolicy>): SchedState => schedState([inherits, own], [], ps);
    const snap = toSnapshot(state(policies(team)), 0, { lastAlive: new Map(), since: 0, fenceGraceMs: 1000 });
    assert.equal(snap.services.find((s) => s.name === 'web')?.update.maxParallel, 3);
    assert.equal(snap.services.find((s) => s.name === 'api')?.update.maxParallel, 2);
    assert.equal(serviceInputs(state(policies(team))).get('web')?.spec?.update.maxParallel, 3);
    const changed = pol('team-a', { defaults: { update: { maxParallel: 5 } } });
    assert.equal(serviceInputs(state(policies(changed))).get('web')?.spec?.update.maxParallel, 5);
    assert.equal(serviceInputs(state(new Map())).get('web')?.spec?.update.maxParallel, 1);
  });
});

// ---- quotas in placement ---------------------------------------------------------------------------------------------

function svc(name: string, over: Partial<ServiceSpec> = {}): ServiceSpec {
  return simSpec({ name, count: 2, resources: { cpu: 0.5, memory: 512 * M }, namespace: 'team-a', ...over });
}
let n = 0;
function alloc(s: ServiceSpec, index: number, over: Partial<Alloc> = {}): Alloc {
  return { id: `${s.name}.${index}.${(n++).toString(16).padStart(8, '0')}`, service: s.name, index, version: s.version, host: 'h1', resources: s.resources, ports: {}, createdAt: 0, reschedules: [], ...over };
}
const ids = (): ((service: string, index: number) => string) => {
  let k = 0;
  return (service, index) => `${service}.${index}.${(k++).toString(16).padStart(8, 'f')}`;
};

describe('quotas in placement', () => {
  const hosts = [host('h1'), host('h2')];
  const news = (s: ServiceSpec, from = 0): PlacementRequest[] => Array.from({ length: s.count - from }, (_, i) => ({ spec: s, index: from + i, reason: 'new' as const }));

  test('a new instance over the memory quota stays unplaced, with the quota as the reason and how to raise it', () => {
    const web = svc('web', { count: 3 });
    const r = placeInstances({ now: 0, hosts, allocs: [], services: [web], policies: policies(pol('team-a', { quota: { memory: G } })) }, news(web), { newAllocId: ids() });
    assert.equal(r.placed.length, 2);
    assert.equal(r.unplaced.length, 1);
    assert.equal(r.infeasible[0]?.message, '1 of 3 instances cannot be placed: namespace team-a quota: memory 1G of 1G used (raise it: backplane namespace set team-a --memory 1536M)');
    assert.equal(r.infeasible[0]?.quota, 'namespace team-a quota: memory 1G of 1G used (raise it: backplane namespace set team-a --memory 1536M)');
  });

  test('instances and cpu count across every service of the namespace, and only that namespace', () => {
    const web = svc('web', { count: 2 });
    const api = svc('api', { count: 3 });
    const other = svc('batch', { count: 2, namespace: 'team-b' });
    const dflt = svc('plain', { count: 2 });
    const { namespace: _ns, ...plainSpec } = dflt;
    const running = [alloc(web, 0), alloc(web, 1), alloc(other, 0), alloc(other, 1), alloc(plainSpec, 0)];
    const ps = policies(pol('team-a', { quota: { instances: 4, cpu: 10 } }), pol('default', { quota: { instances: 1 } }));
    const r = placeInstances({ now: 0, hosts, allocs: running, services: [web, api, other, plainSpec], policies: ps }, [...news(api), ...news(other, 0).map((q) => ({ ...q, index: q.index + 2 })), { spec: plainSpec, index: 1, reason: 'new' }], { newAllocId: ids() });
    assert.deepEqual(r.placed.map((a) => `${a.service}.${a.index}`).sort(), ['api.0', 'api.1', 'batch.2', 'batch.3']);
    const msg = (s: string): string | undefined => r.infeasible.find((i) => i.service === s)?.message;
    assert.equal(msg('api'), '1 of 3 instances cannot be placed: namespace team-a quota: instances 4 of 4 used (raise it: backplane namespace set team-a --instances 5)');
    assert.match(msg('plain') ?? '', /namespace default quota: instances 1 of 1 used/);
    const cpu = placeInstances({ now: 0, hosts, allocs: running, services: [web, api], policies: policies(pol('team-a', { quota: { cpu: 1.5 } })) }, news(api), { newAllocId: ids() });
    assert.equal(cpu.placed.length, 1);
    assert.match(cpu.infeasible[0]?.message ?? '', /^2 of 3 instances cannot be placed: namespace team-a quota: cpu 1\.5 of 1\.5 used \(raise it: backplane namespace set team-a --cpu 2\.5\)$/);
  });

  test('a replacement takes over the share of the instance it replaces: surge, canary, drain move, lost and failed', () => {
    const v1 = svc('web', { count: 2 });
    const v2 = { ...v1, version: 'v2' };
    const old = [alloc(v1, 0), alloc(v1, 1)];
    const ps = policies(pol('team-a', { quota: { instances: 2, memory: G, cpu: 1 } }));
    for (const reason of ['update', 'drain', 'lost', 'failed'] as const) {
      const reqs: PlacementRequest[] = old.map((a) => ({ spec: v2, index: a.index, reason, previous: a.id, ...(reason === 'failed' ? { reuse: a } : {}) }));
      const r = placeInstances({ now: 0, hosts, allocs: old, services: [v2], policies: ps }, reqs, { newAllocId: ids() });
      assert.equal(r.placed.length, 2, `${reason}: ${r.infeasible[0]?.message ?? ''}`);
    }
    // ...but a new version that needs more than the old one only gets what the quota has room for.
    const bigger = { ...v1, version: 'v3', resources: { cpu: 0.5, memory: 768 * M } };
    const r = placeInstances({ now: 0, hosts, allocs: old, services: [bigger], policies: ps }, old.map((a) => ({ spec: bigger, index: a.index, reason: 'update' as const, previous: a.id })), { newAllocId: ids() });
    assert.equal(r.placed.length, 0);
    assert.match(r.infeasible[0]?.message ?? '', /namespace team-a quota: memory 1G of 1G used \(raise it: backplane namespace set team-a --memory 1536M\)/);
    // The second half of a stop-first step: the old alloc is still stopping, so its index keeps its share.
    const stopping = [alloc(v1, 0, { version: '' }), old[1]!];
    const half = placeInstances({ now: 0, hosts, allocs: stopping, services: [v2], policies: ps }, [{ spec: v2, index: 0, reason: 'new' }], { newAllocId: ids() });
    assert.equal(half.placed.length, 1);
  });

  test('a quota lowered below what the namespace uses stops nothing and blocks no replacement; new instances wait', () => {
    const v1 = svc('web', { count: 3 });
    const old = [alloc(v1, 0), alloc(v1, 1), alloc(v1, 2)];
    const ps = policies(pol('team-a', { quota: { instances: 1 } }));
    const v2 = { ...v1, version: 'v2', count: 4 };
    const r = placeInstances({ now: 0, hosts, allocs: old, services: [v2], policies: ps }, [...old.map((a) => ({ spec: v2, index: a.index, reason: 'update' as const, previous: a.id })), { spec: v2, index: 3, reason: 'new' }], { newAllocId: ids() });
    assert.deepEqual(r.placed.map((a) => a.index), [0, 1, 2]);
    assert.match(r.infeasible[0]?.message ?? '', /^1 of 4 instances cannot be placed: namespace team-a quota: instances 3 of 1 used \(raise it: backplane namespace set team-a --instances 4\)$/);
  });

  test('the quota and the hosts can both be short: both are said', () => {
    const web = svc('web', { count: 3, resources: { cpu: 0.5, memory: 12 * G } });
    const r = placeInstances({ now: 0, hosts, allocs: [], services: [web], policies: policies(pol('team-a', { quota: { instances: 2 } })) }, news(web), { newAllocId: ids() });
    assert.equal(r.placed.length, 2);
    assert.equal(r.infeasible[0]?.message, '1 of 3 instances cannot be placed: namespace team-a quota: instances 2 of 2 used (raise it: backplane namespace set team-a --instances 3)');
    // web.1's host is gone and both hosts are full (web.0, and another namespace's): the quota refuses web.2, and
    // web.1's replacement (which needs no room in the quota) finds no host.
    const other = svc('big', { count: 1, namespace: 'team-b', resources: web.resources });
    const running = [alloc(web, 0, { host: 'h1' }), alloc(web, 1, { host: 'gone' }), alloc(other, 0, { host: 'h2' })];
    const r2 = placeInstances({ now: 0, hosts, allocs: running, services: [web, other], policies: policies(pol('team-a', { quota: { instances: 2 } })) }, [{ spec: web, index: 2, reason: 'new' }, { spec: web, index: 1, reason: 'lost', previous: running[1]!.id }], { newAllocId: ids() });
    assert.equal(r2.placed.length, 0);
    assert.equal(r2.infeasible[0]?.message, '2 of 3 instances cannot be placed: namespace team-a quota: instances 2 of 2 used (raise it: backplane namespace set team-a --instances 3); memory short on 2 hosts');
  });

  test('what a namespace uses is counted as the quota counts it', () => {
    const v1 = svc('web', { count: 2 });
    const v2 = { ...v1, version: 'v2' };
    const a0 = alloc(v1, 0);
    const assigns = [a0, alloc(v1, 1), alloc(v2, 0, { previous: a0.id })];
    const state = schedState([v2], assigns, new Map());
    const u = namespaceUsage(state).get('team-a');
    assert.deepEqual(u, { cpu: 1, memory: G, instances: 2, services: ['web'] });
  });
});

describe('quotas and rollouts (the plan engine, pass by pass)', () => {
  class QuotaSim extends Sim {
    policies = policies(pol('team-a', { quota: { instances: 3 } }));
    override snapshot(): ReturnType<Sim['snapshot']> {
      return { ...super.snapshot(), policies: this.policies };
    }
  }
  const web = (over: Parameters<typeof simSpec>[0] = {}): ServiceSpec => simSpec({ namespace: 'team-a', count: 3, ...over });
  const allHealthy = (version: string) => (s: Sim): boolean => s.allocs.length === 3 && s.allocs.every((a) => a.version === version && a.status?.state === 'healthy') && s.plan().status === 'complete';

  for (const [what, update] of [
    ['stop first', {}],
    ['start first (surge)', { startFirst: true }],
    ['2 at a time, start first', { startFirst: true, maxParallel: 2 }],
    ['a canary, promoted by itself', { canary: 1, autoPromote: true }],
  ] as const) {
    test(`a namespace at its quota rolls a new version: ${what}`, () => {
      const s = new QuotaSim();
      s.deploy(web());
      s.run(allHealthy('v1'));
      s.deploy(web({ version: 'v2', update }));
      s.run(allHealthy('v2'));
      assert.ok(s.history.length >= 1);
    });
  }

  test('a scale-up over the quota waits with the quota as its step\'s reason, and goes on once the quota is raised', () => {
    const s = new QuotaSim();
    s.deploy(web());
    s.run(allHealthy('v1'));
    s.deploy(web({ count: 4 }));
    s.pass();
    const step = s.plan().phases.flatMap((p) => p.steps).find((x) => x.index === 3);
    assert.match(step?.why ?? '', /namespace team-a quota: instances 3 of 3 used \(raise it: backplane namespace set team-a --instances 4\)/);
    assert.ok(s.last?.plan.events.some((e) => /namespace team-a quota/.test(e.message)));
    s.policies = policies(pol('team-a', { quota: { instances: 4 } }));
    s.run((x) => x.allocs.length === 4 && x.plan().status === 'complete');
  });
});

// ---- the record ------------------------------------------------------------------------------------------------------

describe('policy records', () => {
  const ca = generateKeyPair();
  const op = generateKeyPair();
  const plain = generateKeyPair();
  let seq = 1;
  const signerOf = (name: string, pair: KeyPair): PolicySigner => ({ name, sign: (key, body) => wrapSigned(name, sealRecord(pair, key, ++seq, body)) });
  function view(): TrustView {
    const v = new TrustView(ca.publicKey);
    const since = new Date().toISOString();
    v.adopt(sealHosts(ca, { serial: 1, issuedAt: since, hosts: { op1: { publicKey: op.publicKey, state: 'approved', since, operator: true }, h2: { publicKey: plain.publicKey, state: 'approved', since } } }));
    return v;
  }

  test('only an operator host\'s signature counts; forged, misplaced and non-operator records are ignored and reported', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bp-policy-'));
    const store = await EmbeddedStore.open({ dir });
    try {
      const v = view();
      await putPolicy(store, signerOf('op1', op), { name: 'team-a', quota: { memory: G } });
      // Signed by an approved host that does not operate.
      await putPolicy(store, signerOf('h2', plain), { name: 'team-b', quota: { memory: G } });
      // Claims op1 but signed with another key (forged).
      await putPolicy(store, signerOf('op1', plain), { name: 'team-c', quota: { memory: G } });
      // op1's genuine record for team-a, moved under team-d's key.
      const moved = (await store.get(keys.namespacePolicy('team-a')))?.value ?? '';
      await store.put(keys.namespacePolicy('team-d'), moved);
      const r = await readPolicies(store, v);
      assert.deepEqual([...r.policies.keys()], ['team-a']);
      assert.equal(r.policies.get('team-a')?.by, 'op1');
      assert.deepEqual(r.policies.get('team-a')?.policy.quota, { memory: G });
      const problems = r.problems.join('\n');
      assert.match(problems, /team-b: host "h2" may not set namespace policy \(not an operator/);
      assert.match(problems, /team-c: the signature is not op1's/);
      assert.match(problems, /team-d: the signature is not op1's \(forged, or moved from another key\)/);
      assert.equal(openPolicyRecord(v, 'team-a', 'not json').ok, false);
      // Removal is a signed tombstone: the namespace then has no policy.
      await removePolicy(store, signerOf('op1', op), 'team-a');
      assert.equal((await readPolicies(store, v)).policies.size, 0);
      assert.ok((await store.get(keys.namespacePolicy('team-a'))) !== undefined, 'the key holds the tombstone');
    } finally {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

function schedState(specs: readonly ServiceSpec[], allocs: readonly Alloc[], ps: ReadonlyMap<string, NamespacePolicy>): SchedState {
  const byName = new Map(specs.map((s) => [s.name, s]));
  return {
    revision: 1,
    members: [],
    services: new Map(specs.map((s) => [s.name, { spec: s, record: 'rec', by: 'op', deployedAt: '2026-12-02T00:00:00Z' }])),
    assigns: new Map(allocs.map((a) => [a.id, { alloc: a, epoch: 1, controller: 'h1', specRecord: 'rec', specBy: 'op', spec: byName.get(a.service) ?? specs[0]!, key: keys.assign(a.host, a.id), modRevision: 1 }])),
    statuses: new Map(),
    drains: new Map(),
    plans: new Map(),
    history: new Map(),
    commands: [],
    badCommands: [],
    apps: new Map(),
    appStates: new Map(),
    scales: new Map(),
    scaleRequests: [],
    badScaleRequests: [],
    policies: ps,
    problems: [],
  };
}
