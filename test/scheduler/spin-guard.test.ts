import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SpinGuard } from '../../src/scheduler/spin-guard.js';

/** The controller's brake on passes that keep asking for the next one (a plan that never settles). */

test('a few passes in a row run at once; more than the limit a second are slowed, with one warning', () => {
  const g = new SpinGuard(20, 1000, 1000, 60_000);
  let t = 0;
  for (let i = 0; i < 20; i++) assert.deepEqual(g.selfRerun((t += 5)), { waitMs: 0, warn: false }, `pass ${i}`);
  assert.deepEqual(g.selfRerun((t += 5)), { waitMs: 1000, warn: true }, 'the 21st within a second');
  assert.deepEqual(g.selfRerun((t += 5)), { waitMs: 1000, warn: false }, 'warned once');
  // Slowed passes are a second apart, so the window empties: it stays slowed until a pass settles.
  for (let i = 0; i < 5; i++) assert.equal(g.selfRerun((t += 1000)).waitMs, 1000, `slowed pass ${i}`);
  g.settled();
  assert.equal(g.selfRerun((t += 5)).waitMs, 0, 'settled: back to full speed');
});

test('the same number spread out is never slowed: a long rollout whose passes each move it on', () => {
  const g = new SpinGuard(20, 1000);
  for (let i = 0; i < 500; i++) assert.equal(g.selfRerun(i * 100).waitMs, 0, `pass ${i}`);
});

test('a loop that comes back after a quiet minute is warned about again', () => {
  const g = new SpinGuard(2, 1000, 1000, 60_000);
  const burst = (at: number): boolean[] => [0, 1, 2, 3].map((i) => g.selfRerun(at + i).warn);
  assert.deepEqual(burst(0), [false, false, true, false]);
  g.settled();
  assert.deepEqual(burst(30_000), [false, false, false, false], 'within the minute: slowed, not warned');
  g.settled();
  assert.deepEqual(burst(120_000), [false, false, true, false]);
});
