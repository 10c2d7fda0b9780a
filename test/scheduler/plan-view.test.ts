import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { PlanPhase, PlanStep, ServicePlan, StepState } from '../../src/scheduler/plan-types.js';
import { clock, human, phaseProgress, renderHistory, renderPlan, stepAllocs, stepWhy, strategyText } from '../../src/scheduler/plan-view.js';

/** 2024-05-01 12:00:00 UTC: every time below is relative to it, and rendered in UTC. */
const T0 = Date.UTC(2024, 4, 1, 12, 0, 0);
const NOW = T0 + 12_000;
const UTC = { utc: true };

function step(index: number, state: StepState, extra: Partial<PlanStep> = {}): PlanStep {
  return { name: `web.${index}`, index, action: 'replace', state, since: T0, ...extra };
}

function plan(over: Partial<ServicePlan> = {}): ServicePlan {
  const ref = { version: 'v2', record: '{}', by: 'h1', deployedAt: '2024-05-01T12:00:00.000Z' };
  return {
    id: 'web-4',
    seq: 4,
    service: 'web',
    kind: 'update',
    fromVersion: 'v1',
    toVersion: 'v2',
    fromCount: 6,
    toCount: 6,
    target: ref,
    trigger: { deployedAt: ref.deployedAt, version: 'v2' },
    strategy: { canary: 1, maxParallel: 2, startFirst: false, autoPromote: false, autoRevert: true, minHealthyMs: 10_000, healthyDeadlineMs: 300_000, progressDeadlineMs: 600_000, maxUnavailable: 2 },
    status: 'running',
    paused: false,
    promote: 'no',
    createdAt: T0,
    updatedAt: T0,
    lastProgressAt: T0,
    phases: [],
    forced: [],
    restarted: {},
    log: [],
    commands: [],
    ...over,
  };
}

const canaryPhase = (s: PlanStep[]): PlanPhase => ({ name: 'canary', strategy: 'canary: waits for promote', steps: s });
const rolloutPhase = (s: PlanStep[]): PlanPhase => ({ name: 'rollout', strategy: '2 at a time, stop first', steps: s });

describe('renderPlan', () => {
  test('the header says what, from and to, the status and since when; then the strategy', () => {
    const lines = renderPlan(plan(), NOW, UTC);
    assert.equal(lines[0], 'plan web-4  update v1 -> v2 (count 6)  running  started 12s ago');
    assert.equal(
      lines[1],
      '  strategy: canary 1 (waits for promote), then 2 at a time, stop first; healthy 10s; deadline 5m; progress deadline 10m; at most 2 down; auto-revert on',
    );
    assert.match(renderPlan(plan({ kind: 'scale', fromVersion: 'v2', fromCount: 3 }), NOW)[0] ?? '', /^plan web-4 {2}scale v2 \(count 3 -> 6\) {2}running/);
    const { fromVersion: _v, fromCount: _c, ...first } = plan({ kind: 'deploy' });
    assert.match(renderPlan(first, NOW)[0] ?? '', /deploy v2 \(count 6\)/);
  });

  test('the canary waiting for promote, and the rest pending: each step with its state, why and what to do', () => {
    const p = plan({
      phases: [
        canaryPhase([step(0, 'waiting-operator', { why: 'canary healthy for 12s; waiting for promote', to: { allocId: 'web.0.5e6f7a8b', host: 'h2' } })]),
        rolloutPhase([1, 2, 3, 4, 5].map((i) => step(i, 'pending', { why: 'waiting for promote', from: { allocId: `web.${i}.0000000${i}`, host: 'h1', version: 'v1' } }))),
      ],
      log: [{ at: T0 + 1000, message: 'started (update v1 -> v2)' }],
    });
    const text = renderPlan(p, NOW, UTC).join('\n');
    assert.match(text, /\n {2}canary {2}\[0 of 1 complete, 1 waiting for operator\] {2}canary: waits for promote\n/);
    assert.match(text, /\n {4}web\.0 {2}replace {2}waiting-operator {2}12s {4}canary healthy for 12s; waiting for promote \(backplane rollout promote web\)\n/);
    assert.match(text, /\n {11}-> web\.0\.5e6f7a8b on h2\n/);
    assert.match(text, /\n {2}rollout {2}\[0 of 5 complete\]/);
    assert.match(text, /\n {4}web\.1 {2}replace {2}pending {18}waiting for promote\n {11}web\.1\.00000001 \(v1\) on h1\n/);
    assert.match(text, /\n {2}log:\n {4}12:00:01 {2}started \(update v1 -> v2\)$/);
  });

  test('every state renders with its why, the controller\'s or a default one', () => {
    const states: StepState[] = ['pending', 'prepared', 'starting', 'waiting-health', 'complete', 'waiting-operator', 'error'];
    const withWhy = plan({ phases: [rolloutPhase(states.map((s, i) => step(i, s, { why: `why-${s}` })))] });
    const text = renderPlan(withWhy, NOW, UTC).join('\n');
    for (const s of states) assert.match(text, new RegExp(`web\\.\\d  replace  ${s} +(\\d+s)? +why-${s}`), s);
    const bare = renderPlan(plan({ phases: [rolloutPhase(states.map((s, i) => step(i, s)))] }), NOW, UTC).join('\n');
    for (const [s, why] of [
      ['pending', 'not started'],
      ['prepared', 'the old instance is being stopped'],
      ['starting', 'the new instance is placed, not up yet'],
      ['waiting-health', 'up, not healthy for long enough yet'],
      ['complete', 'done'],
      ['waiting-operator', 'waiting for the operator'],
      ['error', 'failed'],
    ] as const) {
      assert.match(bare, new RegExp(`${s} +(\\d+s)? +${why}`), s);
    }
    // Time in the state is shown while it matters: not for steps done or not started.
    assert.match(bare, /web\.2 {2}replace {2}starting {10}12s {4}the new/);
    assert.match(bare, /web\.4 {2}replace {2}complete {17}done/);
  });

  test('a failed step shows its hook output indented, and how to restart or force it', () => {
    const p = plan({
      status: 'waiting',
      strategy: { ...plan().strategy, autoRevert: false },
      phases: [rolloutPhase([step(1, 'error', { why: 'after-start hook failed (exit 3)', output: 'migrating...\nERROR: table locked\nexit 3\n', to: { allocId: 'web.1.aaaaaaaa', host: 'h2' } })])],
    });
    const lines = renderPlan(p, NOW, UTC);
    const i = lines.findIndex((l) => l.includes('web.1  replace  error'));
    assert.ok(i > 0, lines.join('\n'));
    assert.match(lines[i] ?? '', /after-start hook failed \(exit 3\) \(backplane plan restart-step web web\.1, or force-complete\)$/);
    assert.deepEqual(lines.slice(i + 1, i + 5), ['           -> web.1.aaaaaaaa on h2', '           | migrating...', '           | ERROR: table locked', '           | exit 3']);
    // Finished plans give no advice: nothing can be done to them.
    const done = renderPlan({ ...p, status: 'failed', finishedAt: NOW }, NOW, UTC).join('\n');
    assert.doesNotMatch(done, /restart-step/);
  });

  test('forced and restarted steps say so; paused, promoting and finished plans say so in the header', () => {
    const p = plan({
      paused: true,
      status: 'paused',
      forced: ['web.1'],
      restarted: { 'web.2': NOW - 5000 },
      phases: [rolloutPhase([step(1, 'complete', { forced: true }), step(2, 'starting')])],
    });
    const text = renderPlan(p, NOW, UTC).join('\n');
    assert.match(text, /^plan web-4 {2}update v1 -> v2 \(count 6\) {2}paused {2}started 12s ago/);
    assert.match(text, /web\.1 {2}replace {2}complete .*done \(force-completed by the operator\)/);
    assert.match(text, /web\.2 .*\n {11}restarted by the operator 5s ago/);
    assert.match(renderPlan(plan({ promote: 'requested' }), NOW)[0] ?? '', /running \(promoting: before-promote hooks run on the canaries\)/);
    const finished = renderPlan(plan({ status: 'rolled-back', why: 'web.2 not healthy within 5m; rolled back to v1', finishedAt: T0 + 10_000, stable: plan().target }), NOW + 60_000, UTC);
    assert.match(finished[0] ?? '', /rolled-back {2}started 1\.2m ago, finished 1m ago after 10s$/);
    assert.equal(finished[1], '  why: web.2 not healthy within 5m; rolled back to v1');
    assert.ok(finished.includes('  rollback target: v2 (the last version that completed healthy)'));
  });

  test('the log shows the newest entries, as many as asked', () => {
    const log = Array.from({ length: 15 }, (_, i) => ({ at: T0 + i * 1000, message: `entry ${i}` }));
    const lines = renderPlan(plan({ log }), NOW, UTC);
    assert.ok(lines.includes('  log (last 10 of 15):'));
    assert.equal(lines.at(-1), '    12:00:14  entry 14');
    assert.ok(!lines.some((l) => l.includes('entry 4')));
    assert.ok(!renderPlan(plan({ log }), NOW, { utc: true, logLines: 0 }).some((l) => l.includes('log')));
  });

  test('phase progress counts every state that is neither pending nor complete', () => {
    assert.equal(phaseProgress(rolloutPhase([step(0, 'complete'), step(1, 'error'), step(2, 'starting'), step(3, 'pending')])), '[1 of 4 complete, 1 error, 1 starting]');
    assert.equal(phaseProgress(rolloutPhase([])), '[0 of 0 complete]');
  });

  test('strategy: one at a time, all at once, start first, no progress deadline, auto-promote', () => {
    const s = plan().strategy;
    assert.match(strategyText({ ...s, canary: 0, maxParallel: 1, startFirst: true }, 1), /^one at a time, start first;/);
    assert.match(strategyText({ ...s, canary: 0, maxParallel: 6 }, 6), /^all at once, stop first;/);
    assert.match(strategyText({ ...s, progressDeadlineMs: 0, autoRevert: false }, 6), /no progress deadline; at most 2 down; auto-revert off$/);
    assert.match(strategyText({ ...s, autoPromote: true }, 6), /^canary 1 \(promoted automatically once healthy\), then/);
  });

  test('from and to: what each step replaces, places or stops, as far as known', () => {
    const from = { allocId: 'web.1.00000001', host: 'h1', version: 'v1' };
    const to = { allocId: 'web.1.00000002', host: 'h2' };
    assert.equal(stepAllocs(step(1, 'pending')), undefined);
    assert.equal(stepAllocs(step(1, 'pending', { from })), 'web.1.00000001 (v1) on h1');
    assert.equal(stepAllocs(step(1, 'prepared', { from })), 'web.1.00000001 (v1) on h1 -> (not placed yet)');
    assert.equal(stepAllocs(step(1, 'starting', { from, to })), 'web.1.00000001 (v1) on h1 -> web.1.00000002 on h2');
    assert.equal(stepAllocs(step(1, 'starting', { action: 'place', to })), '-> web.1.00000002 on h2');
    assert.equal(stepAllocs(step(1, 'prepared', { action: 'stop', from })), 'web.1.00000001 (v1) on h1 stops');
  });

  test('stepWhy leaves out the promote hint once promotion was asked for', () => {
    const ph = canaryPhase([step(0, 'waiting-operator', { why: 'healthy' })]);
    assert.equal(stepWhy(plan(), ph, ph.steps[0]!), 'healthy (backplane rollout promote web)');
    assert.equal(stepWhy(plan({ promote: 'requested' }), ph, ph.steps[0]!), 'healthy');
  });
});

describe('renderHistory', () => {
  test('one line per plan: id, kind, versions, count, status, started, finished, duration, why', () => {
    const a = plan({ id: 'web-3', seq: 3, fromVersion: 'v0', toVersion: 'v1', status: 'complete', createdAt: T0 - 120_000, finishedAt: T0 });
    const b = plan({ id: 'web-4', seq: 4, status: 'rolled-back', why: 'web.2 not healthy within 5m', createdAt: T0 + 60_000, finishedAt: T0 + 360_000 });
    const c = plan({ id: 'web-5', seq: 5, kind: 'scale', fromVersion: 'v1', toVersion: 'v1', fromCount: 6, toCount: 8, status: 'running', createdAt: T0 + 400_000 });
    const lines = renderHistory([a, b, c], T0 + 430_000, UTC);
    assert.deepEqual(lines, [
      'web-3  update  v0 -> v1  count 6       complete     started 11:58:00, finished 12:00:00, took 2m',
      'web-4  update  v1 -> v2  count 6       rolled-back  started 12:01:00, finished 12:06:00, took 5m  web.2 not healthy within 5m',
      'web-5  scale   v1        count 6 -> 8  running      started 12:06:40, 30s so far',
    ]);
  });

  test('times on another day carry their date; durations are human', () => {
    assert.equal(clock(T0, T0 + 86_400_000, UTC), '2024-05-01 12:00:00');
    assert.equal(clock(T0, T0 + 1000, UTC), '12:00:00');
    assert.equal(human(4_200), '4s');
    assert.equal(human(120_000), '2m');
    assert.equal(human(-5), '0s');
  });
});
