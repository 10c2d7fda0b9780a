import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { deploy, instances, newCluster, op, opJson, startAgent, stopCluster, waitFor, workloadSpec, type TestCluster } from '../helpers/services.js';

/**
 * Namespaces end to end: one real agent on the embedded store (its controller places, its supervisor runs), the
 * operator's CLI through the agent's API. A quota refuses what would go over it, with the reason where an operator
 * looks (the service's events, its plan), and placement resumes once the quota is raised; a namespace's default
 * update policy is what a service that does not set one rolls with, and a service that sets one keeps its own.
 */

interface NamespaceRow {
  name: string;
  quota?: { cpu?: number; memory?: number; instances?: number };
  defaults?: { update?: Record<string, unknown>; maxUnavailable?: number };
  used: { cpu: number; memory: number; instances: number };
  services: string[];
}

interface PlanJson {
  kind: string;
  strategy: { maxParallel: number; autoRevert: boolean; maxUnavailable: number; canary: number };
  phases: { steps: { index: number; state: string; why?: string }[] }[];
}

describe('namespaces: quotas and defaults (embedded store, one agent)', { timeout: 300_000 }, () => {
  let work: string;
  let c: TestCluster;
  let flags: string;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'bp-namespaces-'));
    c = await newCluster(join(work, 'c'), [], 'default');
    (c.op as string[]).splice(0, c.op.length, '--state-dir', join(c.root, 'state-solo'));
    flags = join(c.root, 'flags');
    await mkdir(flags, { recursive: true });
    await startAgent(c, 'solo', { capacity: 'cpu=8,memory=2G' });
  });

  after(async () => {
    await stopCluster(c);
    await rm(work, { recursive: true, force: true });
  });

  const healthy = async (service: string): Promise<number> => (await instances(c, service)).filter((i) => i.state === 'healthy').length;
  const planOf = async (service: string): Promise<PlanJson> => (await opJson<{ plan: PlanJson }>(c, ['plan', service])).plan;

  test('a deploy over the quota places what fits and says why the rest waits; raising the quota places it', async () => {
    const set = await op(c, ['namespace', 'set', 'team-a', '--instances', '2', '--memory', '1G']);
    assert.equal(set.code, 0, set.stderr + set.stdout);
    assert.match(set.stdout, /namespace team-a: memory 1G, instances 2/);

    const spec = workloadSpec('quoted', 3, flags).replace('count: 3\n', 'count: 3\nnamespace: team-a\n');
    const r = await deploy(c, 'quoted', spec);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    await waitFor('2 healthy', async () => (await healthy('quoted')) === 2, 60_000);
    const reason = /namespace team-a quota: instances 2 of 2 used \(raise it: backplane namespace set team-a --instances 3\)/;
    const events = await waitFor('the quota in the service\'s events', async () => {
      const s = await opJson<{ namespace: string; events: { message: string }[] }>(c, ['service', 'quoted']);
      return s.events.some((e) => reason.test(e.message)) ? s : undefined;
    });
    assert.equal(events.namespace, 'team-a');
    const step = (await planOf('quoted')).phases.flatMap((p) => p.steps).find((s) => s.index === 2);
    assert.match(step?.why ?? '', reason, JSON.stringify(step));
    assert.equal((await instances(c, 'quoted')).length, 2, 'the third is not placed');

    const rows = await opJson<NamespaceRow[]>(c, ['namespaces']);
    const a = rows.find((x) => x.name === 'team-a');
    assert.deepEqual(a?.used, { cpu: 1, memory: 256 * 1024 ** 2, instances: 2 });
    assert.deepEqual(a?.quota, { memory: 1024 ** 3, instances: 2 });
    assert.deepEqual(a?.services, ['quoted']);
    const table = await op(c, ['namespaces']);
    assert.match(table.stdout, /team-a\s+1\/-\s+256M\/1G\s+2\/2\s+1/);
    const list = await opJson<{ name: string; namespace: string }[]>(c, ['services']);
    assert.equal(list.find((s) => s.name === 'quoted')?.namespace, 'team-a');

    const raise = await op(c, ['namespace', 'set', 'team-a', '--instances', '3']);
    assert.equal(raise.code, 0, raise.stderr);
    await waitFor('3 healthy once the quota allows it', async () => (await healthy('quoted')) === 3, 60_000);
    // The rest of the policy stayed as it was.
    const after = await opJson<NamespaceRow>(c, ['namespace', 'show', 'team-a']);
    assert.deepEqual(after.quota, { memory: 1024 ** 3, instances: 3 });
    assert.equal((await op(c, ['remove', 'quoted'])).code, 0);
  });

  test('a default update policy is inherited by a service that does not set one, and overridden by one that does', async () => {
    const set = await op(c, ['namespace', 'set', 'team-b', '--max-parallel', '2', '--no-auto-revert', '--max-unavailable', '2']);
    assert.equal(set.code, 0, set.stderr);
    const inherits = workloadSpec('inherits', 2, flags).replace('count: 2\n', 'count: 2\nnamespace: team-b\n');
    const own = workloadSpec('own', 2, flags).replace('count: 2\n', 'count: 2\nnamespace: team-b\nupdate: { maxParallel: 1 }\n');
    assert.equal((await deploy(c, 'inherits', inherits, ['--wait', '60s'])).code, 0);
    assert.equal((await deploy(c, 'own', own, ['--wait', '60s'])).code, 0);
    // A new version of each: the rollout plan's strategy is the one the controller rolls with.
    const v2 = (s: string): string => s.replace(`FLAG_DIR: "${flags}" }`, `FLAG_DIR: "${flags}", V: "2" }`);
    assert.equal((await deploy(c, 'inherits', v2(inherits), ['--wait', '60s'])).code, 0);
    assert.equal((await deploy(c, 'own', v2(own), ['--wait', '60s'])).code, 0);
    const pi = await planOf('inherits');
    const po = await planOf('own');
    assert.equal(pi.kind, 'update');
    assert.deepEqual([pi.strategy.maxParallel, pi.strategy.autoRevert, pi.strategy.maxUnavailable], [2, false, 2]);
    assert.equal(po.kind, 'update');
    assert.deepEqual([po.strategy.maxParallel, po.strategy.autoRevert, po.strategy.maxUnavailable], [1, false, 2], 'maxParallel is its own; the rest comes from team-b');
    const shown = await op(c, ['service', 'inherits']);
    assert.match(shown.stdout, /namespace team-b; update: 2 at a time \(namespace\), stop first \(built-in\), canary 0 \(built-in\), autoRevert false \(namespace\)/);

    // Without the policy, the built-in defaults apply from the next plan.
    assert.equal((await op(c, ['namespace', 'remove', 'team-b'])).code, 0);
    const v3 = (s: string): string => s.replace(`FLAG_DIR: "${flags}" }`, `FLAG_DIR: "${flags}", V: "3" }`);
    assert.equal((await deploy(c, 'inherits', v3(inherits), ['--wait', '60s'])).code, 0);
    const p3 = await planOf('inherits');
    assert.deepEqual([p3.strategy.maxParallel, p3.strategy.autoRevert, p3.strategy.maxUnavailable], [1, true, 1]);
    for (const s of ['inherits', 'own']) assert.equal((await op(c, ['remove', s])).code, 0);
  });

  test('bad input is refused with what and where, and nothing is written', async () => {
    const bad = await op(c, ['namespace', 'set', 'team-c', '--memory', 'lots']);
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /--memory "lots" is not valid/);
    const name = await op(c, ['namespace', 'set', 'Team_C', '--instances', '1']);
    assert.notEqual(name.code, 0);
    assert.match(name.stderr, /ns: a namespace is 1-63 characters/);
    const missing = await op(c, ['namespace', 'remove', 'team-c']);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /namespace "team-c" has no policy to remove/);
    assert.equal((await opJson<NamespaceRow[]>(c, ['namespaces'])).some((r) => r.name === 'team-c'), false);
  });
});
