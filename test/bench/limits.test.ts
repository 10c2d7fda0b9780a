import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { checkLimits } from '../../bench/lib/limits.js';
import type { BenchResults, ToolResult, WorkloadResult } from '../../bench/lib/results.js';
import type { ToolId } from '../../bench/tools/types.js';

/** The bench's speed limits on made-up results: each regression is a FAIL line with its figure, value and bound. */

const tool = (medianS: number): ToolResult => ({ runs: [{ wallS: medianS }], medianS });

function workload(id: string, times: Partial<Record<ToolId, number>>): WorkloadResult {
  const results: Partial<Record<ToolId, ToolResult>> = {};
  for (const [t, s] of Object.entries(times) as [ToolId, number][]) results[t] = tool(s);
  return { id, title: id, results };
}

const DRIFT = { files: 1000, convergedS: 1, samples: 200, medianMs: 2.1, p99Ms: 5.3, maxMs: 18, medianDeleteMs: 2, medianOverwriteMs: 2.2, unrepaired: 0 };
const IDLE = { files: 10_000, convergedS: 5, stopS: 0.5, rssMiB: 286, peakRssMiB: 286, cpuPercent: 0, windowS: 10 };

function results(workloads: WorkloadResult[], live: Partial<BenchResults['live']> = {}): BenchResults {
  return {
    date: '2026-12-01T00:00:00.000Z',
    machine: { uname: 'Linux', cpu: 'cpu', cores: 2, memoryGiB: 24, node: 'v20' },
    tools: [],
    runs: 1,
    slowRuns: 0,
    workloads,
    live: { errors: [], ...live },
    notes: [],
  };
}

/** Figures as the README measured them on 2026-11-22: every limit holds. */
const GOOD = (): WorkloadResult[] => [
  workload('startup', { backplane: 0.162, puppet: 2.4, ansible: 0.507, cfengine: 0.0457 }),
  workload('exec-chain', { backplane: 6.29, puppet: 11.3, ansible: 10.1 }),
  workload('exec-parallel', { backplane: 0.776, puppet: 14, ansible: 15.4 }),
];

const fails = (lines: readonly string[]): string[] => lines.filter((l) => l.includes('FAIL:')).map((l) => l.trim());

describe('bench speed limits', () => {
  test("the README's figures hold every limit; CFEngine being faster is no failure", () => {
    const r = checkLimits(results(GOOD(), { drift: DRIFT, idle: IDLE }));
    assert.equal(r.failures, 0, r.lines.join('\n'));
    assert.deepEqual(fails(r.lines), []);
    assert.ok(r.lines.some((l) => /holds: exec-chain: Ansible ÷ Backplane 1\.61x \(limit > 1x\)/.test(l)), r.lines.join('\n'));
    assert.ok(!r.lines.some((l) => /CFEngine/.test(l)));
  });

  test('Backplane slower than a peer on one shared workload fails, naming the workload and the ratio', () => {
    const w = GOOD();
    w[0] = workload('startup', { backplane: 0.4, puppet: 2.4, ansible: 0.3 });
    const r = checkLimits(results(w));
    assert.equal(r.failures, 1);
    assert.deepEqual(fails(r.lines), ['FAIL: startup: Ansible ÷ Backplane is 0.750x; the limit is > 1x']);
  });

  test('each time limit fails past its bound', () => {
    const w = [workload('startup', { backplane: 0.6 }), workload('exec-chain', { backplane: 8 }), workload('exec-parallel', { backplane: 2.5 })];
    const r = checkLimits(results(w, { drift: { ...DRIFT, medianMs: 11, p99Ms: 60, unrepaired: 1 }, idle: { ...IDLE, cpuPercent: 1.5 } }));
    assert.deepEqual(fails(r.lines), [
      'FAIL: startup: Backplane wall time is 0.600 s; the limit is ≤ 0.5 s',
      'FAIL: exec-chain: Backplane wall time is 8 s; the limit is ≤ 7.5 s',
      'FAIL: exec-parallel: Backplane wall time is 2.50 s; the limit is ≤ 2 s',
      'FAIL: drift repair: not repaired is 1; the limit is ≤ 0',
      'FAIL: drift repair: median is 11 ms; the limit is ≤ 10 ms',
      'FAIL: drift repair: p99 is 60 ms; the limit is ≤ 50 ms',
      'FAIL: idle: CPU % of one core is 1.5%; the limit is ≤ 1%',
    ]);
    assert.equal(r.failures, 7);
  });

  test('a figure the run did not measure is reported as such, not as a pass or a failure', () => {
    const r = checkLimits(results([workload('startup', { backplane: 0.2 })]));
    assert.equal(r.failures, 0);
    assert.equal(r.lines.filter((l) => l.includes('not measured in this run')).length, 6, r.lines.join('\n'));
    assert.ok(!r.lines.some((l) => l.includes('holds: exec')));
  });
});
