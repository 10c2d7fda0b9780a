import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { allSteps } from '../../src/scheduler/commands.js';
import { Sim, spec } from './plan-sim.js';

const complete = (s: Sim): boolean => s.plan().status === 'complete';

/** Deploys v1 and runs it to complete. */
function deployed(over: Parameters<typeof spec>[0] = {}, hosts?: string[]): Sim {
  const s = new Sim(hosts);
  s.deploy(spec(over));
  s.run(complete);
  return s;
}

describe('plans: deploy and update', () => {
  test('a first deploy is a plan of kind deploy that completes once every instance is healthy for min-healthy-time', () => {
    const s = new Sim();
    s.deploy(spec({ count: 3 }));
    s.pass();
    const p = s.plan();
    assert.equal(p.kind, 'deploy');
    assert.equal(p.id, 'web-1');
    assert.deepEqual(
      allSteps(p).map((x) => `${x.name}:${x.state}`),
      ['web.0:starting', 'web.1:starting', 'web.2:starting'],
    );
    s.run(complete);
    assert.equal(s.history.at(-1)?.id, 'web-1');
    assert.equal(s.history.at(-1)?.status, 'complete');
    assert.equal(s.down(), 0);
  });

  test('a rolling update (stop first, max_parallel 2) never has more than 2 instances down, and ends on the new version', () => {
    // A budget larger than maxParallel, so that maxParallel alone is what limits the rollout here.
    const s = deployed({ count: 6, maxUnavailable: 6, update: { maxParallel: 2 } });
    s.deploy(spec({ count: 6, maxUnavailable: 6, version: 'v2', update: { maxParallel: 2 } }));
    let worst = 0;
    s.run(complete, { sample: (x) => (worst = Math.max(worst, x.down())) });
    assert.equal(s.plan().kind, 'update');
    assert.equal(s.plan().fromVersion, 'v1');
    assert.equal(worst, 2, 'two at a time: exactly max_parallel down at the worst moment');
    assert.deepEqual(s.versions(), ['0:v2', '1:v2', '2:v2', '3:v2', '4:v2', '5:v2']);
    assert.equal(s.plan().strategy.startFirst, false);
  });

  test('strategies: serial replaces one at a time, parallel (maxParallel 0) all at once', () => {
    for (const [maxParallel, expected] of [
      [1, 1],
      [0, 5],
    ] as const) {
      const s = deployed({ count: 5, update: { maxParallel } });
      s.deploy(spec({ count: 5, version: 'v2', update: { maxParallel } }));
      let worst = 0;
      s.run(complete, { sample: (x) => (worst = Math.max(worst, x.down())) });
      assert.equal(worst, expected, `maxParallel ${maxParallel}`);
      assert.match(s.plan().phases[0]?.strategy ?? '', maxParallel === 0 ? /^all at once, stop first$/ : /^one at a time, stop first$/);
    }
  });

  test('a lost host\'s instances are replaced under a recover plan once its fence grace has passed', () => {
    const s = deployed({ count: 3 });
    const lost = s.allocs[0]!.host;
    s.hosts = s.hosts.map((h) => (h.name === lost ? { ...h, alive: false, downForMs: 10_000 } : h));
    s.pass();
    const p = s.plan();
    assert.equal(p.kind, 'recover');
    assert.deepEqual(allSteps(p).map((x) => `${x.name}:${x.action}:${x.state}`), [`web.0:move:starting`]);
    s.run(complete);
    assert.ok(s.allocs.every((a) => a.host !== lost || a.index !== 0));
  });

  test('a service of one instance starts the new one before stopping the old (never down)', () => {
    const s = deployed({ count: 1 });
    s.deploy(spec({ count: 1, version: 'v2' }));
    let worst = 0;
    s.run(complete, { sample: (x) => (worst = Math.max(worst, x.down())) });
    assert.equal(worst, 0);
    assert.deepEqual(s.versions(), ['0:v2']);
  });

  test('a canary waits for promote, says why, and the rest rolls after promote', () => {
    const s = deployed({ count: 4 });
    s.deploy(spec({ count: 4, version: 'v2', update: { canary: 1 } }));
    s.run((x) => x.plan().status === 'waiting');
    const p = s.plan();
    assert.deepEqual(p.phases.map((ph) => ph.name), ['canary', 'rollout']);
    const [canary, ...rest] = allSteps(p);
    assert.equal(canary?.state, 'waiting-operator');
    assert.match(canary?.why ?? '', /waiting for promote/);
    for (const r of rest) assert.equal(r.why, 'waiting for the canaries to be promoted');
    assert.deepEqual(s.versions(), ['0:v1', '0:v2', '1:v1', '2:v1', '3:v1'], 'the canary runs next to the old instance');
    // Nothing happens however long it waits.
    for (let i = 0; i < 5; i++) {
      s.agents(60_000);
      s.pass();
    }
    assert.equal(s.plan().status, 'waiting');
    s.command('web', 'promote');
    s.run(complete);
    assert.equal(s.results.at(-1)?.result.ok, true);
    assert.deepEqual(s.versions(), ['0:v2', '1:v2', '2:v2', '3:v2']);
    assert.ok(s.plan().log.some((l) => l.message === 'canaries promoted'));
  });

  test('a plan that did not change is not written again: passes while it waits for health or for promote write nothing', () => {
    const s = deployed({ count: 3 });
    s.deploy(spec({ count: 3, version: 'v2', update: { canary: 1, minHealthyMs: 5_000 } }));
    // Until the canary is healthy for min-healthy-time: passes without time moving change nothing, so write nothing.
    s.run((x) => allSteps(x.plan()).some((st) => st.state === 'waiting-health'));
    for (let i = 0; i < 3; i++) assert.deepEqual(s.pass().write, [], `pass ${i} while waiting for health rewrote the plan`);
    s.run((x) => x.plan().status === 'waiting');
    for (let i = 0; i < 3; i++) {
      s.agents(10_000);
      assert.deepEqual(s.pass().write, [], `pass ${i} while waiting for promote rewrote the plan`);
    }
  });

  test('autoPromote promotes healthy canaries by itself', () => {
    const s = deployed({ count: 3 });
    s.deploy(spec({ count: 3, version: 'v2', update: { canary: 1, autoPromote: true } }));
    s.run(complete);
    assert.deepEqual(s.versions(), ['0:v2', '1:v2', '2:v2']);
  });
});

describe('plans: failure and rollback', () => {
  test('a crashing version is rolled back to the last healthy one at once, without a canary phase, and the plan says why', () => {
    const s = deployed({ count: 4 });
    s.behaviour.set('v2', 'crash');
    s.deploy(spec({ count: 4, version: 'v2', update: { canary: 1 } }));
    s.run((x) => x.plan().kind === 'rollback');
    const failed = s.history.at(-1)!;
    assert.equal(failed.status, 'rolled-back');
    assert.match(failed.why ?? '', /^step web\.0 failed: web\.0\.\w+ failed on h\d: exited 1 three times; rolled back to v1$/);
    const rb = s.plan();
    assert.equal(rb.toVersion, 'v1');
    assert.equal(rb.fromVersion, 'v2');
    assert.deepEqual(rb.phases.map((p) => p.name), ['rollback'], 'no canary phase on the way back');
    s.run(complete);
    assert.deepEqual(s.versions(), ['0:v1', '1:v1', '2:v1', '3:v1']);
  });

  test('an unhealthy version is rolled back once its healthy deadline has passed (not before)', () => {
    const s = deployed({ count: 3 });
    s.behaviour.set('v2', 'sick');
    s.deploy(spec({ count: 3, version: 'v2', update: { healthyDeadlineMs: 20_000 } }));
    const start = s.now;
    s.run((x) => x.plan().kind === 'rollback', { stepMs: 1000 });
    const took = s.now - start;
    assert.ok(took >= 20_000 && took <= 24_000, `rolled back ${took} ms after the update began`);
    assert.match(s.history.at(-1)?.why ?? '', /not healthy within 20s \(unhealthy: HTTP 500\)/);
    s.run(complete);
    assert.deepEqual(s.versions(), ['0:v1', '1:v1', '2:v1']);
  });

  test('without auto-revert a failed step holds the plan for the operator; restart-step retries, force-complete accepts', () => {
    const s = deployed({ count: 3, update: { autoRevert: false } });
    s.behaviour.set('v2', 'crash');
    s.deploy(spec({ count: 3, version: 'v2', update: { autoRevert: false } }));
    s.run((x) => x.plan().failedAt !== undefined);
    const p = s.plan();
    assert.equal(p.status, 'waiting');
    assert.match(p.why ?? '', /auto-revert is off: restart the step, force-complete it, abort, or deploy a fix/);
    // Held: more passes change nothing.
    const before = s.versions();
    for (let i = 0; i < 5; i++) {
      s.agents(5000);
      s.pass();
    }
    assert.deepEqual(s.versions(), before);
    // The fix is in the environment: restart the step and it goes through.
    s.behaviour.set('v2', 'ok');
    s.command('web', 'restart-step', 'web.0');
    s.run(complete);
    assert.deepEqual(s.versions(), ['0:v2', '1:v2', '2:v2']);
  });

  test('a first deploy that crash-loops is rescheduled, not failed at once; its progress deadline fails it, with nothing to roll back to', () => {
    const s = new Sim();
    s.behaviour.set('v1', 'crash');
    s.deploy(spec({ count: 2, update: { progressDeadlineMs: 60_000 } }));
    const start = s.now;
    s.run((x) => x.plan().failedAt !== undefined, { max: 300 });
    assert.ok(s.now - start >= 60_000, 'not before the progress deadline');
    assert.match(s.plan().why ?? '', /no step completed for 1m \(progress deadline\); no earlier healthy version to roll back to/);
  });

  test('a first deploy whose instance crashes once under load still completes (the reschedule heals it)', () => {
    const s = new Sim();
    s.behaviour.set('v1', 'crash');
    s.deploy(spec({ count: 2 }));
    s.run((x) => x.allocs.some((a) => a.status?.state === 'failed'));
    s.behaviour.set('v1', 'ok');
    s.run(complete);
    assert.equal(s.plan().kind, 'deploy');
    assert.equal(s.plan().failedAt, undefined);
  });

  test('abort rolls back to the last healthy version; aborting twice is refused and changes nothing', () => {
    const s = deployed({ count: 3 });
    s.deploy(spec({ count: 3, version: 'v2', update: { canary: 1 } }));
    s.run((x) => x.plan().status === 'waiting');
    const id = s.plan().id;
    s.command('web', 'abort');
    s.pass();
    assert.ok(s.history.some((p) => p.id === id && p.status === 'aborted'));
    // The canary was the only new instance: the rollback stops it and is done in the same pass.
    assert.equal(s.plan().kind, 'rollback');
    assert.deepEqual(s.versions(), ['0:v1', '1:v1', '2:v1']);
    const again = s.command('web', 'abort');
    s.commands = [{ ...again, planId: id }];
    const before = s.plan();
    s.pass();
    const r = s.results.at(-1)!;
    assert.equal(r.result.ok, false);
    assert.match(r.result.message, /not the current plan/);
    const after = s.plan();
    assert.deepEqual([after.id, after.status, after.kind, after.paused, after.toVersion], [before.id, before.status, before.kind, before.paused, before.toVersion]);
    s.run(complete);
    assert.deepEqual(s.versions(), ['0:v1', '1:v1', '2:v1']);
  });
});

describe('plans: steering', () => {
  test('pause holds a rollout; the pause is in the record, so a new controller (fresh engine, same records) keeps it', () => {
    const s = deployed({ count: 4 });
    s.deploy(spec({ count: 4, version: 'v2' }));
    s.pass();
    s.command('web', 'pause');
    s.pass();
    assert.equal(s.plan().status, 'paused');
    // Let whatever was in flight finish; nothing new starts.
    for (let i = 0; i < 10; i++) {
      s.agents(2000);
      s.pass();
    }
    const frozen = s.versions();
    assert.ok(frozen.filter((v) => v.endsWith(':v1')).length >= 2, `still mostly v1: ${frozen.join(' ')}`);
    // "Failover": the engine keeps nothing between passes; only the records (s.plans) carry over.
    const records = new Map(s.plans);
    s.plans = records;
    for (let i = 0; i < 5; i++) {
      s.agents(2000);
      s.pass();
    }
    assert.deepEqual(s.versions(), frozen);
    assert.equal(s.plan().status, 'paused');
    s.command('web', 'resume');
    s.run(complete);
    assert.deepEqual(s.versions(), ['0:v2', '1:v2', '2:v2', '3:v2']);
  });

  test('bad commands get a clear refusal and change nothing', () => {
    const s = deployed({ count: 2 });
    s.deploy(spec({ count: 2, version: 'v2' }));
    s.pass();
    const before = s.plan();
    s.command('web', 'promote');
    s.command('web', 'resume');
    s.command('web', 'force-complete', 'web.9');
    s.command('web', 'restart-step', 'web.1');
    s.pass();
    const msgs = s.results.slice(-4).map((r) => `${r.result.ok}:${r.result.message}`);
    assert.deepEqual(msgs.map((m) => m.split(':')[0]), ['false', 'false', 'false', 'false']);
    assert.match(msgs[0]!, /has no canaries to promote/);
    assert.match(msgs[1]!, /is not paused/);
    assert.match(msgs[2]!, /has no step "web.9"; its steps: web.0, web.1/);
    assert.match(msgs[3]!, /step web.1 has not started: nothing to restart/);
    assert.equal(s.plan().paused, before.paused);
    assert.equal(s.plan().promote, before.promote);
    assert.deepEqual(s.plan().forced, []);
  });

  test('a new spec mid-rollout supersedes the running plan; the rollback target stays the last completed version', () => {
    const s = deployed({ count: 4 });
    s.deploy(spec({ count: 4, version: 'v2' }));
    s.pass();
    s.agents();
    s.pass();
    s.deploy(spec({ count: 4, version: 'v3' }));
    s.pass();
    const superseded = s.history.at(-1)!;
    assert.equal(superseded.status, 'superseded');
    assert.match(superseded.why ?? '', /superseded by web-3 \(update to v3\)/);
    assert.equal(s.plan().stable?.version, 'v1');
    s.run(complete);
    assert.deepEqual(s.versions(), ['0:v3', '1:v3', '2:v3', '3:v3']);
  });
});

describe('plans: hooks', () => {
  test('a failing before-stop hook puts its step into error with the hook output; the plan waits (auto-revert off)', () => {
    const s = deployed({ count: 2, update: { autoRevert: false }, hooks: { beforeStop: { cmd: ['/bin/false'], timeoutMs: 1000 } } });
    s.hooks.set('beforeStop', false);
    s.deploy(spec({ count: 2, version: 'v2', update: { autoRevert: false }, hooks: { beforeStop: { cmd: ['/bin/false'], timeoutMs: 1000 } } }));
    s.run((x) => x.plan().failedAt !== undefined);
    const bad = allSteps(s.plan()).find((x) => x.state === 'error')!;
    assert.match(bad.why ?? '', /before-stop hook of web\.\d \(v1\) on h\d failed/);
    assert.match(bad.output ?? '', /beforeStop said no\nexit 3/);
    assert.deepEqual(s.versions(), ['0:v1', '1:v1'], 'the old instance was not stopped');
    // force-complete skips the hook and moves on.
    s.command('web', 'force-complete', bad.name);
    s.hooks.set('beforeStop', true);
    s.run(complete);
  });

  test('restart-step after a failed before-stop hook asks for the hook again and goes on once it passes', () => {
    const h = { beforeStop: { cmd: ['/bin/false'], timeoutMs: 1000 } };
    const s = deployed({ count: 3, update: { autoRevert: false }, hooks: h });
    s.hooks.set('beforeStop', false);
    s.deploy(spec({ count: 3, version: 'v2', update: { autoRevert: false }, hooks: h }));
    s.run((x) => x.plan().failedAt !== undefined);
    const bad = allSteps(s.plan()).find((x) => x.state === 'error')!;
    s.hooks.set('beforeStop', true);
    s.command('web', 'restart-step', bad.name);
    s.run(complete);
    assert.deepEqual(s.versions(), ['0:v2', '1:v2', '2:v2']);
  });

  test('a before-stop hook that failed in one plan does not block the next plan (a removal stops the instance)', () => {
    const h = { beforeStop: { cmd: ['/bin/false'], timeoutMs: 1000 } };
    const s = deployed({ count: 2, update: { autoRevert: false }, hooks: h });
    s.hooks.set('beforeStop', false);
    s.deploy(spec({ count: 2, version: 'v2', update: { autoRevert: false }, hooks: h }));
    s.run((x) => x.plan().failedAt !== undefined);
    s.hooks.set('beforeStop', true);
    s.remove('web');
    s.run((x) => x.plan().kind === 'remove' && x.plan().status === 'complete');
    assert.deepEqual(s.versions(), []);
  });

  test('force-complete of a step whose before-stop hook failed stops the old instance without the hook and rolls on', () => {
    const h = { beforeStop: { cmd: ['/bin/false'], timeoutMs: 1000 } };
    const s = deployed({ count: 2, update: { autoRevert: false }, hooks: h });
    s.hooks.set('beforeStop', false);
    s.deploy(spec({ count: 2, version: 'v2', update: { autoRevert: false }, hooks: h }));
    s.run((x) => x.plan().failedAt !== undefined);
    const bad = allSteps(s.plan()).find((x) => x.state === 'error')!;
    s.command('web', 'force-complete', bad.name);
    // The hook works again for the other instance's step.
    s.hooks.set('beforeStop', true);
    s.run((x) => complete(x) && x.versions().includes(`${bad.index}:v2`), { max: 60 });
    assert.ok(!s.versions().includes(`${bad.index}:v1`), `the forced step's old instance is gone: ${s.versions().join(' ')}`);
  });

  test('a failing after-start hook fails the step; with auto-revert the version is rolled back', () => {
    const s = deployed({ count: 2 });
    s.hooks.set('afterStart', false);
    s.deploy(spec({ count: 2, version: 'v2', hooks: { afterStart: { cmd: ['/bin/false'], timeoutMs: 1000 } } }));
    s.run((x) => x.plan().kind === 'rollback');
    assert.match(s.history.at(-1)?.why ?? '', /the after-start hook of web\.0\.\w+ on h\d failed/);
  });

  test('before-promote hooks run on each canary before the rest rolls', () => {
    const s = deployed({ count: 3 });
    s.deploy(spec({ count: 3, version: 'v2', update: { canary: 1, autoPromote: true }, hooks: { beforePromote: { cmd: ['/bin/true'], timeoutMs: 1000 } } }));
    let asked = false;
    s.run(complete, { sample: (x) => (asked ||= (x.last?.plan.hookRequests ?? []).some((r) => r.hook === 'beforePromote')) });
    assert.ok(asked, 'a before-promote hook was requested');
  });
});

describe('plans: disruption budget', () => {
  test('two hosts drained at once never take the service below its budget', () => {
    const s = deployed({ count: 4, maxUnavailable: 1, placement: { constraints: [], distinctHosts: true, antiAffinity: [], strategy: 'spread' } }, ['h1', 'h2', 'h3', 'h4', 'h5', 'h6']);
    const on = new Set(s.allocs.map((a) => a.host));
    const [d1, d2] = [...on];
    s.hosts = s.hosts.map((h) => (h.name === d1 || h.name === d2 ? { ...h, draining: true } : h));
    let worst = 0;
    s.run((x) => !x.allocs.some((a) => a.host === d1 || a.host === d2) && x.down() === 0 && x.plan().status === 'complete', { sample: (x) => (worst = Math.max(worst, x.down())) });
    assert.ok(worst <= 1, `at most 1 down, saw ${worst}`);
    assert.ok(s.history.some((p) => p.kind === 'drain'), 'the drain was a plan');
  });

  test('a scale-down stops at most max_unavailable instances at a time', () => {
    const s = deployed({ count: 6, maxUnavailable: 2 });
    s.deploy(spec({ count: 2, maxUnavailable: 2 }));
    let most = 0;
    s.run(complete, { sample: (x) => (most = Math.max(most, x.last?.plan.stop.length ?? 0)) });
    assert.equal(most, 2);
    assert.equal(s.plan().kind, 'scale');
    assert.deepEqual(s.versions(), ['0:v1', '1:v1']);
  });

  test('the progress deadline fails a rollout that stops moving', () => {
    const s = deployed({ count: 3, update: { autoRevert: false, progressDeadlineMs: 15_000, healthyDeadlineMs: 60_000 } });
    s.behaviour.set('v2', 'sick');
    s.deploy(spec({ count: 3, version: 'v2', update: { autoRevert: false, progressDeadlineMs: 15_000, healthyDeadlineMs: 60_000 } }));
    s.run((x) => x.plan().failedAt !== undefined);
    assert.match(s.plan().why ?? '', /no step completed for 15s \(progress deadline\)/);
  });
});

describe('plans: an application backplane steers a rolling update', () => {
  test('replicas first in its order, the primary held until the backplane lets it go (after its switchover)', () => {
    const s = new Sim();
    s.deploy(spec({ count: 3, version: 'v1' }));
    s.run(complete);
    // Member 0 is the primary: update 2, then 1, and hold 0 back.
    s.appGates.set('web', { order: [2, 1, 0], hold: [0] });
    s.deploy(spec({ count: 3, version: 'v2', update: { maxParallel: 1 } }));
    const order: number[] = [];
    const sample = (x: Sim): void => {
      for (const p of x.last?.plan.place ?? []) if (p.reason !== 'new' || p.alloc.version === 'v2') if (!order.includes(p.alloc.index)) order.push(p.alloc.index);
    };
    s.run((x) => x.versions().join(' ') === '0:v1 1:v2 2:v2', { sample });
    assert.deepEqual(order, [2, 1]);
    // Held: passes go by and index 0 stays on v1, with the reason in its step.
    for (let i = 0; i < 5; i++) {
      s.pass();
      s.agents();
    }
    assert.deepEqual(s.versions(), ['0:v1', '1:v2', '2:v2']);
    assert.match(allSteps(s.plan()).find((x) => x.index === 0)?.why ?? '', /application backplane holds web\.0/);
    s.appGates.set('web', { order: [2, 1, 0] });
    s.run(complete, { sample });
    assert.deepEqual(order, [2, 1, 0]);
    assert.deepEqual(s.versions(), ['0:v2', '1:v2', '2:v2']);
  });
});
