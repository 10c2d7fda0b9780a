import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, test } from 'node:test';
import { harness } from '../helpers/engine.js';
import { GRAPH_FILE, onlyError, where } from '../helpers/graph.js';
import { ProbeWorld, probeKind } from '../helpers/probe-kind.js';

/**
 * meta.limit/burst: a token bucket on check/apply runs, enforced by the engine for every kind. A probe polled every
 * 10 ms would run ~100 times a second; limited to 5/s with a burst of 2 it may run at most 2 + 5·t times in t seconds.
 */
describe('metaparams limit and burst', () => {
  test('check/apply runs are held to the limit after the burst, with the limit spacing between them', async () => {
    const world = new ProbeWorld();
    const { engine, graph } = harness([probeKind(world)]);
    await engine.setGraph(graph(`resources:\n  - { kind: probe, name: p, watch: false, meta: { poll: 10ms, limit: 5, burst: 2 } }\n`));
    const started = performance.now();
    await sleep(1200);
    const checks = world.of('p', 'check');
    const elapsed = (performance.now() - started) / 1000;
    await engine.stop();
    // Upper bound: the bucket never allows more (a loaded machine only makes fewer runs).
    assert.ok(checks.length <= 2 + Math.ceil(5 * elapsed) + 1, `${checks.length} runs in ${elapsed.toFixed(2)} s`);
    assert.ok(checks.length >= 3, `only ${checks.length} runs: the resource was starved`);
    // In every window of runs, no more than the bucket allows: burst + limit × the window's length.
    for (let i = 0; i < checks.length; i++) {
      for (let j = i + 1; j < checks.length; j++) {
        const span = ((checks[j]?.t ?? 0) - (checks[i]?.t ?? 0)) / 1000;
        // A run's time is taken when its check starts, a moment after its token: on a loaded machine that moment
        // comes later for some runs than for others, so each span may look up to 50 ms shorter than it was.
        assert.ok(j - i + 1 <= 2 + 5 * (span + 0.05), `${j - i + 1} runs within ${(span * 1000).toFixed(0)} ms; limit 5/s, burst 2`);
      }
    }
  });

  test('burst without limit is an error at its line', () => {
    const e = onlyError('resources:\n  - kind: noop\n    name: a\n    meta:\n      burst: 3\n');
    assert.match(e.message, /burst only applies with a limit/);
    assert.equal(where(e), `${GRAPH_FILE}:5:7`);
  });

  test('limit must be a positive number', () => {
    const e = onlyError('resources:\n  - { kind: noop, name: a, meta: { limit: 0 } }\n');
    assert.match(e.format(), /limit/);
  });
});
