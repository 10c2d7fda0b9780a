import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { EtcdStore } from '../../src/cluster/etcd-store.js';
import { keys } from '../../src/cluster/keys.js';
import type { PlanStep, ServicePlan } from '../../src/scheduler/plan-types.js';
import type { CliResult } from '../helpers/cli.js';
import { etcdAvailable, startEtcd, type EtcdCluster } from '../helpers/etcd.js';
import {
  deploy,
  instances,
  liveWorkloadDetails,
  newCluster,
  op,
  opJson,
  servingIndexes,
  startAgent,
  stopAgent,
  stopCluster,
  waitFor,
  workloadScanner,
  workloadSpec,
  type TestAgent,
  type TestCluster,
} from '../helpers/services.js';

/**
 * Safe change (#10) end to end: every change is a plan, on a real 3-member etcd with six `backplane run` agents,
 * driven with the operator's CLI (`deploy`, `plan`, `rollout ...`) and checked against /proc and the workloads' own
 * health endpoints — what a load balancer would see — wherever availability is the point: a rolling update never
 * has more instances down than it may, a canary waits for promote, a version that fails health rolls back by
 * itself, a pause survives a controller failover, a failing hook stops its step, two drains at once keep to the
 * disruption budget, and bad operator input changes nothing. test/scheduler/plans.test.ts runs the same scenarios
 * on the pure plan engine; these are the proof on a real cluster.
 */

const HOSTS = ['h1', 'h2', 'h3', 'h4', 'h5', 'h6'];

const skip = process.env['CI'] === 'true' ? false : etcdAvailable() ? false : 'etcd is not installed';

interface PlanDoc {
  readonly plan: ServicePlan;
  readonly history?: readonly ServicePlan[];
}

function steps(plan: ServicePlan): PlanStep[] {
  return plan.phases.flatMap((p) => p.steps);
}

function stateOf(plan: ServicePlan): string {
  return `${plan.id} ${plan.kind} ${plan.status}: ${steps(plan).map((s) => `${s.name}=${s.state}`).join(' ')}${plan.why === undefined ? '' : ` (${plan.why})`}`;
}

function versionOf(r: CliResult): string {
  const v = /deployed version (\S+),/.exec(r.stdout)?.[1];
  assert.ok(v !== undefined, `deploy: ${r.stdout}${r.stderr}`);
  return v;
}

function controllerOf(c: TestCluster): TestAgent | undefined {
  let best: { agent: TestAgent; epoch: number } | undefined;
  for (const a of c.agents.values()) {
    if (a.cli.proc.exitCode !== null || a.cli.proc.signalCode !== null) continue;
    for (const m of a.cli.output().matchAll(/this host is the controller now \(epoch (\d+)\)/g)) {
      const epoch = Number(m[1]);
      if (best === undefined || epoch > best.epoch) best = { agent: a, epoch };
    }
  }
  return best?.agent;
}

/**
 * Samples, 50 ms apart until stopped, how many of `count` instances of `service` do not serve (no live process whose
 * /health answers 200): the worst sample, how often it sampled (a scan and the probes take 150-300 ms on a loaded
 * 2-core machine; an instance stopped for a rollout step is down for seconds), and when the number changed.
 */
function downWatch(root: string, service: string, count: number): { stop: () => Promise<{ worst: number; samples: number; everyMs: number; timeline: string[] }> } {
  let running = true;
  let worst = 0;
  let samples = 0;
  let last = -1;
  const t0 = Date.now();
  const timeline: string[] = [];
  const scan = workloadScanner(root);
  const loop = (async () => {
    while (running) {
      const serving = await servingIndexes(root, service, { scan });
      const down = count - [...serving].filter((i) => i >= 0 && i < count).length;
      samples++;
      worst = Math.max(worst, down);
      if (down !== last) timeline.push(`+${Date.now() - t0}ms: ${down} down`);
      last = down;
      await sleep(50);
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return { worst, samples, everyMs: Math.round((Date.now() - t0) / Math.max(1, samples)), timeline };
    },
  };
}

describe('rollouts on etcd: every change is a plan', { skip, timeout: 600_000 }, () => {
  let etcd: EtcdCluster;
  let work: string;
  let c: TestCluster;
  let store: EtcdStore;
  const flags = (): string => join(c.root, 'flags');
  const sickFlags = (): string => join(c.root, 'flags-sick');

  /** The fixture's workload at `release` (RELEASE env and version label), its health steered by `flagDir`. */
  const spec = (name: string, count: number, release: string, extra: string, flagDir = flags()): string =>
    workloadSpec(name, count, flagDir, `version: ${release}\n${extra}`).replace('env: { FLAG_DIR', `env: { RELEASE: "${release}", FLAG_DIR`);

  const planOf = (name: string, history = false): Promise<PlanDoc> => opJson<PlanDoc>(c, ['plan', name, ...(history ? ['--history'] : [])]);

  /** Waits for the plan of `name` to satisfy `ok`; on timeout, says where it was. */
  const planUntil = async (what: string, name: string, ok: (p: ServicePlan) => boolean, timeoutMs = 120_000, history = false): Promise<PlanDoc> => {
    let last: ServicePlan | undefined;
    try {
      return await waitFor(
        what,
        async () => {
          const d = await planOf(name, history);
          last = d.plan;
          return ok(d.plan) ? d : undefined;
        },
        timeoutMs,
        300,
      );
    } catch (err) {
      const ctl = controllerOf(c);
      process.stderr.write(`# last plan: ${last === undefined ? '-' : stateOf(last)}\n${(await op(c, ['plan', name])).stdout}\n${ctl?.host ?? '?'}:\n${ctl?.cli.output().slice(-4000) ?? ''}\n`);
      throw err;
    }
  };

  /** Every index of `service` healthy in the store at `version`, and exactly one live process per index serving it. */
  const settledAt = async (service: string, count: number, release: string): Promise<boolean> => {
    const list = await instances(c, service);
    if (list.length !== count || list.some((i) => i.state !== 'healthy' || !i.version.startsWith(`${release}+`))) return false;
    const procs = (await liveWorkloadDetails(c.root)).filter((p) => p.service === service);
    if (procs.length !== count || procs.some((p) => p.release !== release)) return false;
    return (await servingIndexes(c.root, service)).size === count;
  };

  const removeService = async (name: string): Promise<void> => {
    assert.equal((await op(c, ['remove', name])).code, 0);
    await waitFor(`${name} gone`, async () => (await liveWorkloadDetails(c.root)).every((p) => p.service !== name), 60_000);
  };

  /** An operator command that must succeed; when it does not, what the controller said about it. */
  const opOk = async (args: string[]): Promise<CliResult> => {
    const r = await op(c, args);
    if (r.code !== 0) {
      const ctl = controllerOf(c);
      const svc = args.find((a, i) => i > 0 && !a.includes('.') && !['pause', 'resume', 'promote', 'abort', 'restart-step', 'force-complete'].includes(a)) ?? '';
      process.stderr.write(`# ${args.join(' ')}: exit ${r.code}\n${r.stdout}${r.stderr}\n${(await op(c, ['plan', svc, '--json'])).stdout}\n${ctl?.host ?? '?'}:\n${ctl?.cli.output().slice(-8000) ?? ''}\n`);
    }
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}${r.stdout}`);
    return r;
  };

  /** After a test, whatever it leaves behind when it fails halfway: its services go (hooks let them), agents come back. */
  const cleanup = async (...names: string[]): Promise<void> => {
    await rm(join(flags(), 'hook-fails'), { force: true });
    for (const n of names) await op(c, ['remove', n]);
    await waitFor('leftovers gone', async () => (await liveWorkloadDetails(c.root)).every((p) => !names.includes(p.service)), 60_000).catch(() => undefined);
    for (const h of HOSTS) {
      const a = c.agents.get(h);
      if (a !== undefined && (a.cli.proc.exitCode !== null || a.cli.proc.signalCode !== null)) await startAgent(c, h, agentOpts(h));
    }
  };

  const agentOpts = (h: string): { capacity: string; labels: Record<string, string> } => ({ capacity: 'cpu=2,memory=1G', labels: { node: h } });

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'bp-rollouts-'));
    etcd = await startEtcd({ members: 3 });
    c = await newCluster(join(work, 'c'), etcd.endpoints, 'roll1');
    await mkdir(flags(), { recursive: true });
    await mkdir(sickFlags(), { recursive: true });
    await writeFile(join(sickFlags(), 'sick'), '');
    for (const h of HOSTS) await startAgent(c, h, agentOpts(h));
    store = new EtcdStore({ endpoints: etcd.endpoints, cluster: c.name });
  });

  after(async () => {
    await store?.close();
    if (c !== undefined) await stopCluster(c);
    await etcd?.stop();
    if (work !== undefined) await rm(work, { recursive: true, force: true });
  });

  test('a rolling update (6 instances, maxParallel 2, stop first) never has more than 2 down; the plan shows its 6 steps complete', async () => {
    const policy = 'update: { maxParallel: 2, minHealthy: 1s }\n';
    const r1 = await deploy(c, 'web', spec('web', 6, 'r1', policy), ['--wait', '90s']);
    assert.equal(r1.code, 0, r1.stderr + r1.stdout);
    await waitFor('6 r1 instances serving', () => settledAt('web', 6, 'r1'), 60_000);

    const watch = downWatch(c.root, 'web', 6);
    const t0 = Date.now();
    let plan: ServicePlan;
    let v2: string;
    try {
      const r2 = await deploy(c, 'web', spec('web', 6, 'r2', policy));
      assert.equal(r2.code, 0, r2.stderr);
      v2 = versionOf(r2);
      const want = v2;
      plan = (await planUntil('the update plan complete', 'web', (p) => p.kind === 'update' && p.toVersion === want && p.status === 'complete')).plan;
      await waitFor('all 6 on r2, serving', () => settledAt('web', 6, 'r2'), 60_000);
    } finally {
      await watch.stop();
    }
    const took = Date.now() - t0;
    const seen = await watch.stop();
    process.stderr.write(`# rolling update of 6 (maxParallel 2): ${took}ms, worst ${seen.worst} down over ${seen.samples} samples (one per ${seen.everyMs}ms): ${seen.timeline.join(', ')}\n`);
    assert.ok(seen.everyMs <= 400, `a sample only every ${seen.everyMs}ms`);
    // Stop first: the sampler saw instances go down (it watched the rollout), never more than maxParallel at once.
    assert.ok(seen.worst >= 1, `the sampler never saw an instance down: ${seen.timeline.join(', ')}`);
    assert.ok(seen.worst <= 2, `${seen.worst} instances down at once: ${seen.timeline.join(', ')}`);

    // The plan, as the operator reads it.
    assert.equal(plan.strategy.maxParallel, 2);
    assert.equal(plan.strategy.startFirst, false);
    assert.deepEqual(steps(plan).map((s) => `${s.name}:${s.state}`), [0, 1, 2, 3, 4, 5].map((i) => `web.${i}:complete`));
    assert.match(plan.phases[0]?.strategy ?? '', /2 at a time, stop first/);
    const text = await op(c, ['plan', 'web']);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, new RegExp(`plan ${plan.id}  update \\S+ -> ${v2.replace(/[+]/g, '\\+')} \\(count 6\\)  complete`));
    assert.match(text.stdout, /rollout {2}\[6 of 6 complete\]/);
    for (let i = 0; i < 6; i++) assert.match(text.stdout, new RegExp(`web\\.${i} +replace +complete`));
  });

  test('a canary waits for promote; nothing else rolls until then; promote finishes the rollout and the canary index\'s old instance goes', async () => {
    const r3 = await deploy(c, 'web', spec('web', 6, 'r3', 'update: { canary: 1, maxParallel: 3, minHealthy: 1s }\n'));
    assert.equal(r3.code, 0, r3.stderr);
    const v3 = versionOf(r3);
    const { plan } = await planUntil('the canary waiting for promote', 'web', (p) => p.toVersion === v3 && p.status === 'waiting', 90_000);
    const canary = plan.phases.find((p) => p.name === 'canary');
    assert.ok(canary !== undefined, stateOf(plan));
    assert.deepEqual(canary.steps.map((s) => `${s.name}:${s.state}`), ['web.0:waiting-operator']);
    assert.match(canary.steps[0]?.why ?? '', /promote/);
    assert.match(plan.why ?? '', /backplane rollout promote web/);
    const rest = plan.phases.find((p) => p.name === 'rollout');
    assert.deepEqual(rest?.steps.map((s) => `${s.name}:${s.state}`), [1, 2, 3, 4, 5].map((i) => `web.${i}:pending`));
    const canaryId = canary.steps[0]?.to?.allocId;
    const oldId = canary.steps[0]?.from?.allocId;
    assert.ok(canaryId !== undefined && oldId !== undefined, stateOf(plan));

    // A few seconds on, nothing else changed: the old web.0 still runs next to its canary, the other five are old.
    const olds = async (): Promise<string> => {
      const procs = (await liveWorkloadDetails(c.root)).filter((p) => p.service === 'web');
      return procs.map((p) => `${p.index}:${p.release}`).sort().join(' ');
    };
    const expected = '0:r2 0:r3 1:r2 2:r2 3:r2 4:r2 5:r2';
    assert.equal(await olds(), expected);
    // ... and the waiting plan is not rewritten meanwhile (it once was, about a hundred times a second).
    let planWrites = 0;
    const quiet = new AbortController();
    await store.watch(keys.plan('web'), 0, (b) => void (planWrites += b.type === 'events' ? b.events.length : 1), quiet.signal);
    await sleep(4000);
    quiet.abort();
    assert.ok(planWrites <= 1, `the waiting plan was written ${planWrites} times in 4 s`);
    assert.equal(await olds(), expected);
    const still = (await planOf('web')).plan;
    assert.equal(still.id, plan.id);
    assert.equal(still.status, 'waiting');
    assert.deepEqual(steps(still).map((s) => s.state), ['waiting-operator', 'pending', 'pending', 'pending', 'pending', 'pending']);
    assert.equal((await instances(c, 'web')).filter((i) => i.version === v3).length, 1);

    const promote = await opOk(['rollout', 'promote', 'web']);
    assert.equal(promote.code, 0, promote.stderr + promote.stdout);
    assert.match(promote.stdout, /promote/);
    const done = (await planUntil('the rollout complete', 'web', (p) => p.id === plan.id && p.status === 'complete')).plan;
    assert.equal(done.promote, 'done');
    await waitFor('all 6 on r3, serving', () => settledAt('web', 6, 'r3'), 60_000);
    // The canary itself stayed (same alloc); the old instance of its index is gone, from the store and from /proc.
    const list = await instances(c, 'web');
    assert.ok(list.some((i) => i.id === canaryId), 'the canary kept serving web.0');
    assert.ok(!list.some((i) => i.id === oldId), 'the old web.0 is gone');
    const procs = (await liveWorkloadDetails(c.root)).filter((p) => p.service === 'web' && p.index === 0);
    assert.deepEqual(procs.map((p) => p.id), [canaryId]);
  });

  test('a version that fails health is rolled back by itself at its healthy deadline; the history says why', async () => {
    const stable = (await planOf('web')).plan.target.version;
    const t0 = Date.now();
    const r4 = await deploy(c, 'web', spec('web', 6, 'r4', 'update: { maxParallel: 2, minHealthy: 1s, healthyDeadline: 10s }\n', sickFlags()));
    assert.equal(r4.code, 0, r4.stderr);
    const v4 = versionOf(r4);
    const doc = await planUntil('the rollback plan complete', 'web', (p) => p.kind === 'rollback' && p.status === 'complete' && p.fromVersion === v4, 120_000, true);
    await waitFor('all 6 back on r3, serving', () => settledAt('web', 6, 'r3'), 60_000);
    const took = Date.now() - t0;

    const failed = doc.history?.find((p) => p.toVersion === v4);
    assert.ok(failed !== undefined, JSON.stringify(doc.history?.map((p) => `${p.id} ${p.status}`)));
    assert.equal(failed.status, 'rolled-back');
    assert.match(failed.why ?? '', /step web\.[0-5] failed: .*not healthy within 10s/);
    assert.match(failed.why ?? '', new RegExp(`rolled back to ${stable.replace(/[+]/g, '\\+')}`));
    const failedAfter = (failed.finishedAt ?? 0) - failed.createdAt;
    // It waited for the deadline (not less), and acted on it promptly (not a whole deadline more).
    assert.ok(failedAfter >= 10_000 && failedAfter < 25_000, `the update failed ${failedAfter}ms after it started`);
    const rb = doc.plan;
    assert.equal(rb.toVersion, stable);
    assert.equal(rb.phases.some((p) => p.name === 'canary'), false);
    assert.ok(steps(rb).every((s) => s.state === 'complete'), stateOf(rb));
    const list = await instances(c, 'web');
    assert.deepEqual(list.map((i) => `${i.index}:${i.version === stable ? 'stable' : i.version}:${i.state}`).sort(), [0, 1, 2, 3, 4, 5].map((i) => `${i}:stable:healthy`));
    assert.ok((await liveWorkloadDetails(c.root)).every((p) => p.flagDir !== sickFlags()), 'no process of the bad version is left');
    process.stderr.write(`# unhealthy version (healthyDeadline 10s): failed ${failedAfter}ms after its plan started; deploy -> rolled back and all 6 healthy on the old version: ${took}ms\n`);
  });

  test('a paused rollout stays paused when the controller is killed; resume finishes it', async (t) => {
    t.after(() => cleanup('pz'));
    const ctl = controllerOf(c);
    assert.ok(ctl !== undefined, 'a controller');
    // Its instances are kept off the controller's host: killing it must not look like healing to the paused plan.
    const extra = `update: { maxParallel: 1, minHealthy: 1s }\nplacement: { constraints: [{ label: node, notIn: [${ctl.host}] }] }\n`;
    const r1 = await deploy(c, 'pz', spec('pz', 4, 'r1', extra), ['--wait', '90s']);
    assert.equal(r1.code, 0, r1.stderr + r1.stdout);
    const r2 = await deploy(c, 'pz', spec('pz', 4, 'r2', extra));
    const v2 = versionOf(r2);
    await planUntil('the update plan', 'pz', (p) => p.kind === 'update' && p.toVersion === v2, 30_000);
    const pause = await opOk(['rollout', 'pause', 'pz']);
    assert.equal(pause.code, 0, pause.stderr + pause.stdout);
    assert.match(pause.stdout, /paused/);
    // Steps in flight finish; none starts.
    const quiet = (p: ServicePlan): boolean => p.status === 'paused' && steps(p).every((s) => s.state === 'complete' || s.state === 'pending');
    const paused = (await planUntil('the paused plan quiet', 'pz', quiet, 60_000)).plan;
    const pending = steps(paused).filter((s) => s.state === 'pending').map((s) => s.name);
    assert.ok(pending.length >= 1, stateOf(paused));
    const before = (await instances(c, 'pz')).map((i) => `${i.id}:${i.state}`).sort();

    await stopAgent(ctl, 'SIGKILL');
    const next = await waitFor('another controller', async () => {
      const n = controllerOf(c);
      return n !== undefined && n !== ctl ? n : undefined;
    }, 60_000);
    const tookOver = Date.now();
    await sleep(6000);
    const still = (await planOf('pz')).plan;
    assert.equal(still.id, paused.id);
    assert.equal(still.status, 'paused', stateOf(still));
    assert.equal(still.paused, true);
    assert.deepEqual(steps(still).filter((s) => s.state === 'pending').map((s) => s.name), pending, stateOf(still));
    assert.ok(steps(still).every((s) => s.state === 'complete' || s.state === 'pending'), stateOf(still));
    assert.deepEqual((await instances(c, 'pz')).map((i) => `${i.id}:${i.state}`).sort(), before);
    process.stderr.write(`# paused plan: no step started in ${Date.now() - tookOver}ms under the new controller ${next.host} (old: ${ctl.host})\n`);

    const resume = await opOk(['rollout', 'resume', 'pz']);
    assert.equal(resume.code, 0, resume.stderr + resume.stdout);
    await planUntil('the resumed plan complete', 'pz', (p) => p.id === paused.id && p.status === 'complete', 90_000);
    await waitFor('all 4 on r2, serving', () => settledAt('pz', 4, 'r2'), 60_000);
    await removeService('pz');
  });

  test('a failing before-stop hook puts its step into error with the hook\'s output; nothing rolls until the operator acts', async (t) => {
    t.after(() => rm(join(flags(), 'hook-fails'), { force: true }));
    const hooked = (release: string): string =>
      spec(
        'hk',
        3,
        release,
        `update: { maxParallel: 1, minHealthy: 1s, autoRevert: false }
hooks:
  beforeStop:
    cmd: [/bin/sh, -c, 'if [ -e "$FLAG_DIR/hook-fails" ]; then echo no way; exit 3; fi; echo fine']
    timeout: 5s
`,
      );
    const r1 = await deploy(c, 'hk', hooked('r1'), ['--wait', '90s']);
    assert.equal(r1.code, 0, r1.stderr + r1.stdout);
    await writeFile(join(flags(), 'hook-fails'), '');
    const v2 = versionOf(await deploy(c, 'hk', hooked('r2')));
    const errorStep = (p: ServicePlan): PlanStep | undefined => steps(p).find((s) => s.state === 'error');
    const failed = (await planUntil('a step in error', 'hk', (p) => p.toVersion === v2 && p.status === 'waiting' && errorStep(p) !== undefined, 60_000)).plan;
    const bad = errorStep(failed);
    assert.ok(bad !== undefined);
    assert.equal(bad.name, 'hk.0');
    assert.match(bad.why ?? '', /before-stop hook of hk\.0 \(r1\+\w+\) on h\d failed/);
    assert.match(bad.output ?? '', /no way/);
    assert.match(bad.output ?? '', /exit 3/);
    assert.match(failed.why ?? '', /step hk\.0 failed: .*auto-revert is off/);
    assert.deepEqual(steps(failed).map((s) => s.state), ['error', 'pending', 'pending']);
    const text = await op(c, ['plan', 'hk']);
    assert.match(text.stdout, /waiting/);
    assert.match(text.stdout, /\| no way/);
    assert.match(text.stdout, /\| exit 3/);
    assert.match(text.stdout, /backplane plan restart-step hk hk\.0, or force-complete/);

    // Nothing rolls: the old instances all stay (the one whose hook failed too), in the store and in /proc.
    const olds = async (): Promise<string> => (await liveWorkloadDetails(c.root)).filter((p) => p.service === 'hk').map((p) => `${p.id}:${p.release}`).sort().join(' ');
    const before = await olds();
    assert.equal(before.split(' ').filter((x) => x.endsWith(':r1')).length, 3, before);
    await sleep(4000);
    assert.equal(await olds(), before);
    assert.deepEqual(steps((await planOf('hk')).plan).map((s) => s.state), ['error', 'pending', 'pending']);

    // Fixed, and the failed step force-completed by the operator: the plan goes on, the next steps' hooks pass, and
    // the rest rolls. (A force-completed step that had not placed its new instance leaves its index as it is.)
    await rm(join(flags(), 'hook-fails'));
    await opOk(['plan', 'force-complete', 'hk', 'hk.0']);
    const done = (await planUntil('the rollout complete', 'hk', (p) => p.id === failed.id && p.status === 'complete', 90_000)).plan;
    assert.deepEqual(steps(done).map((s) => `${s.name}:${s.state}${s.forced === true ? ' (forced)' : ''}`), ['hk.0:complete (forced)', 'hk.1:complete', 'hk.2:complete']);
    await waitFor('hk.1 and hk.2 on r2, serving', async () => {
      const list = await instances(c, 'hk');
      const procs = (await liveWorkloadDetails(c.root)).filter((p) => p.service === 'hk' && p.index > 0);
      return list.filter((i) => i.index > 0 && i.version === v2 && i.state === 'healthy').length === 2 && procs.length === 2 && procs.every((p) => p.release === 'r2');
    }, 30_000);
  });

  test('bad operator input is refused with a clear message and exit 1, and writes no command', async (t) => {
    t.after(() => cleanup('bad'));
    // A service whose first deploy never gets healthy: its plan stays running, so there is something to abort.
    const r = await deploy(c, 'bad', spec('bad', 2, 'r1', '', sickFlags()));
    assert.equal(r.code, 0, r.stderr);
    await planUntil('the deploy plan of bad', 'bad', (p) => p.kind === 'deploy' && p.status === 'running', 30_000);

    const refused = async (args: string[], message: RegExp): Promise<void> => {
      const { revision } = await store.list(keys.cmdPrefix);
      const res = await op(c, args);
      assert.equal(res.code, 1, `${args.join(' ')}: exit ${res.code}\n${res.stdout}${res.stderr}`);
      assert.match(res.stderr, message, args.join(' '));
      // Nothing was written under sched/cmd/ meanwhile (not even briefly): a watch from before replays every change.
      const seen: string[] = [];
      const ac = new AbortController();
      await store.watch(keys.cmdPrefix, revision + 1, (b) => {
        if (b.type === 'events') for (const e of b.events) seen.push(e.type === 'put' ? e.kv.key : e.key);
        else seen.push(...b.kvs.map((kv) => kv.key));
      }, ac.signal);
      await sleep(300);
      ac.abort();
      assert.deepEqual(seen, [], `${args.join(' ')} wrote a command`);
      assert.deepEqual((await store.list(keys.cmdPrefix)).kvs, []);
    };

    await refused(['plan', 'restart-step', 'bad', 'nosuch'], /has no step "nosuch"; its steps: bad\.0, bad\.1/);
    await refused(['rollout', 'promote', 'bad'], /\(deploy\) has no canaries to promote/);
    await refused(['rollout', 'promote', 'web'], /web-\d+ is complete: nothing to promote/);
    await refused(['plan', 'restart-step', 'web', 'nosuch'], /is complete: its steps can no longer be changed/);
    await refused(['rollout', 'pause', 'nosuchservice'], /nosuchservice has no plan yet/);

    const abort = await opOk(['rollout', 'abort', 'bad']);
    assert.equal(abort.code, 0, abort.stderr + abort.stdout);
    assert.match(abort.stdout, /aborted/);
    await planUntil('the plan aborted', 'bad', (p) => p.status === 'aborted', 30_000);
    await refused(['rollout', 'abort', 'bad'], /was already aborted/);
    await removeService('bad');
  });

  test('two hosts drained at once never take a service below its disruption budget; everything moves off', async (t) => {
    t.after(() => cleanup('dr'));
    // Room for the moves: the earlier tests' service goes (the drained hosts' other instances would compete for it).
    await op(c, ['remove', 'web']);
    await waitFor('web gone', async () => (await liveWorkloadDetails(c.root)).every((p) => p.service !== 'web'), 60_000);
    const extra = 'resources: { cpu: 0.25, memory: 64M }\nmaxUnavailable: 1\nupdate: { minHealthy: 1s }\nplacement: { distinctHosts: true }\n';
    const r = await deploy(c, 'dr', workloadSpec('dr', 4, flags(), extra).replace('resources: { cpu: 0.5, memory: 128M }\n', ''), ['--wait', '90s']);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    await waitFor('4 dr serving', async () => (await servingIndexes(c.root, 'dr')).size === 4, 60_000);
    const placed = await instances(c, 'dr');
    assert.equal(new Set(placed.map((i) => i.host)).size, 4, 'distinct hosts');
    // Two hosts that each run one of them.
    const victims = [...new Set(placed.map((i) => i.host))].sort().slice(0, 2);
    assert.equal(victims.length, 2);

    const watch = downWatch(c.root, 'dr', 4);
    const t0 = Date.now();
    try {
      const drains = await Promise.all(victims.map((h) => op(c, ['drain', h])));
      for (const d of drains) assert.equal(d.code, 0, d.stderr);
      await waitFor(
        'every dr instance off the drained hosts, 4 serving on distinct hosts',
        async () => {
          const list = await instances(c, 'dr');
          return list.length === 4 && list.every((i) => i.state === 'healthy' && !victims.includes(i.host)) && new Set(list.map((i) => i.host)).size === 4 && (await servingIndexes(c.root, 'dr')).size === 4 && (await liveWorkloadDetails(c.root)).filter((p) => p.service === 'dr').length === 4;
        },
        120_000,
      );
    } catch (err) {
      process.stderr.write(`${(await op(c, ['plan', 'dr'])).stdout}\n${(await op(c, ['hosts'])).stdout}\n${(await op(c, ['service', 'dr'])).stdout}\n`);
      throw err;
    } finally {
      await watch.stop();
    }
    const took = Date.now() - t0;
    const seen = await watch.stop();
    process.stderr.write(`# drain of ${victims.join(' and ')} at once: dr moved off in ${took}ms, worst ${seen.worst} of 4 down (budget 1) over ${seen.samples} samples (one per ${seen.everyMs}ms): ${seen.timeline.join(', ')}\n`);
    assert.ok(seen.everyMs <= 400, `a sample only every ${seen.everyMs}ms`);
    assert.ok(seen.worst <= 1, `${seen.worst} of 4 down at once (never below 3 serving): ${seen.timeline.join(', ')}`);
    const rows = await opJson<{ host: string; draining: boolean }[]>(c, ['hosts']);
    for (const h of victims) assert.equal(rows.find((x) => x.host === h)?.draining, true, h);
    const plan = (await planOf('dr')).plan;
    assert.equal(plan.kind, 'drain', stateOf(plan));
    for (const h of victims) assert.equal((await op(c, ['undrain', h])).code, 0);
  });
});
