import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { checkLimits, limitsFrom, LIMITS, RATIO_BOUNDS, ratioLimit, TIME_BOUNDS, type RatioBound } from '../../bench/lib/limits.js';
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

/** The README's figures of 2026-11-22 (Backplane, Puppet, Ansible, CFEngine), every workload with a limit. */
const README = (): WorkloadResult[] => [
  workload('startup', { backplane: 0.162, puppet: 2.4, ansible: 0.507, cfengine: 0.0457 }),
  workload('files-cold', { backplane: 1.0, puppet: 5.1, ansible: 297, cfengine: 0.495 }),
  workload('files-converged', { backplane: 0.572, puppet: 3.92, ansible: 295, cfengine: 0.347 }),
  workload('files-repair', { backplane: 0.707, puppet: 4.49, ansible: 324, cfengine: 0.35 }),
  workload('exec-chain', { backplane: 6.29, puppet: 11.3, ansible: 10.1, cfengine: 8.14 }),
  workload('exec-parallel', { backplane: 0.776, puppet: 14, ansible: 15.4, cfengine: 10.2 }),
  workload('nginx-stack', { backplane: 0.353, puppet: 4.51, ansible: 4.73, cfengine: 0.105 }),
];

/**
 * The goal of #13: the README's figures with Backplane faster than CFEngine on start-up and the 1,000-file runs, and
 * the nginx stack a little behind (0.95x: the machine's slow phases gave 0.97x on 2026-12-04), above its floor.
 */
const GOAL = (): WorkloadResult[] =>
  README().map((w) => {
    const cf = w.results.cfengine?.medianS;
    // Backplane's time as a share of CFEngine's: a little faster where the floor is below 1, clearly faster where it is above.
    const share = ({ startup: 0.9, 'files-cold': 0.9, 'files-converged': 0.7, 'files-repair': 0.8, 'nginx-stack': 1.05 } as Record<string, number>)[w.id];
    return share !== undefined && cf !== undefined ? { ...w, results: { ...w.results, backplane: tool(cf * share) } } : w;
  });

const fails = (lines: readonly string[]): string[] => lines.filter((l) => l.includes('FAIL:')).map((l) => l.trim());

describe('bench speed limits', () => {
  test('the goal of #13 holds every limit; CFEngine a little faster on the nginx stack is no failure above its floor', () => {
    const r = checkLimits(results(GOAL(), { drift: DRIFT, idle: IDLE }));
    assert.equal(r.failures, 0, r.lines.join('\n'));
    assert.deepEqual(fails(r.lines), []);
    assert.ok(r.lines.some((l) => /holds: exec-chain: Ansible ÷ Backplane 1\.61x \(limit > 1x\)/.test(l)), r.lines.join('\n'));
    assert.ok(r.lines.some((l) => /holds: files-cold: CFEngine ÷ Backplane 1\.11x \(limit > 0\.8x\)/.test(l)), r.lines.join('\n'));
    assert.ok(r.lines.some((l) => /holds: nginx-stack: CFEngine ÷ Backplane 0\.952x \(limit > 0\.9x\)/.test(l)), r.lines.join('\n'));
  });

  test("the figures of 2026-11-22 fail the CFEngine floors where they were further behind than today, and the time ceilings", () => {
    const r = checkLimits(results(README(), { drift: DRIFT, idle: IDLE }));
    assert.deepEqual(fails(r.lines), [
      'FAIL: startup: CFEngine ÷ Backplane is 0.282x; the limit is > 0.95x',
      'FAIL: files-cold: CFEngine ÷ Backplane is 0.495x; the limit is > 0.8x',
      'FAIL: files-converged: CFEngine ÷ Backplane is 0.607x; the limit is > 1.2x',
      'FAIL: files-repair: CFEngine ÷ Backplane is 0.495x; the limit is > 1.05x',
      'FAIL: nginx-stack: CFEngine ÷ Backplane is 0.297x; the limit is > 0.9x',
    ]);
    assert.equal(r.failures, 5);
  });

  test('Backplane slower than a peer on one shared workload fails, naming the workload and the ratio', () => {
    const w = GOAL();
    w[0] = workload('startup', { backplane: 0.3, puppet: 2.4, ansible: 0.25 });
    const r = checkLimits(results(w));
    assert.equal(r.failures, 1);
    assert.deepEqual(fails(r.lines), ['FAIL: startup: Ansible ÷ Backplane is 0.833x; the limit is > 1x']);
  });

  test('each time limit fails past its bound', () => {
    const w = [
      workload('startup', { backplane: 0.6 }),
      workload('files-cold', { backplane: 3 }),
      workload('files-converged', { backplane: 1.9 }),
      workload('files-repair', { backplane: 2 }),
      workload('exec-chain', { backplane: 8 }),
      workload('exec-parallel', { backplane: 2.5 }),
    ];
    const r = checkLimits(results(w, { drift: { ...DRIFT, medianMs: 11, p99Ms: 60, unrepaired: 1 }, idle: { ...IDLE, cpuPercent: 1.5 } }));
    assert.deepEqual(fails(r.lines), [
      'FAIL: startup: Backplane wall time is 0.600 s; the limit is ≤ 0.35 s',
      'FAIL: files-cold: Backplane wall time is 3 s; the limit is ≤ 1.5 s',
      'FAIL: files-converged: Backplane wall time is 1.90 s; the limit is ≤ 0.85 s',
      'FAIL: files-repair: Backplane wall time is 2 s; the limit is ≤ 1.1 s',
      'FAIL: exec-chain: Backplane wall time is 8 s; the limit is ≤ 7.5 s',
      'FAIL: exec-parallel: Backplane wall time is 2.50 s; the limit is ≤ 2 s',
      'FAIL: drift repair: not repaired is 1; the limit is ≤ 0',
      'FAIL: drift repair: median is 11 ms; the limit is ≤ 10 ms',
      'FAIL: drift repair: p99 is 60 ms; the limit is ≤ 50 ms',
      'FAIL: idle: CPU % of one core is 1.5%; the limit is ≤ 1%',
    ]);
    assert.equal(r.failures, 10);
  });

  test('a figure the run did not measure is reported as such, not as a pass or a failure', () => {
    const r = checkLimits(results([workload('startup', { backplane: 0.2 })]));
    assert.equal(r.failures, 0);
    assert.equal(r.lines.filter((l) => l.includes('not measured in this run')).length, LIMITS.length - 1, r.lines.join('\n'));
    assert.ok(!r.lines.some((l) => l.includes('holds: exec')));
    assert.ok(!r.lines.some((l) => l.includes('CFEngine ÷')), 'no CFEngine figure without CFEngine');
  });

  test('the bounds are data: a CFEngine margin of 1.2 fails a run 1.11x faster, and the printed limit says 1.2', () => {
    const strict: RatioBound[] = RATIO_BOUNDS.map((b) => (b.peer === 'cfengine' ? { ...b, min: { startup: 1.2, 'files-cold': 1 } } : b));
    const r = checkLimits(results(GOAL()), limitsFrom(strict, TIME_BOUNDS));
    assert.deepEqual(fails(r.lines), ['FAIL: startup: CFEngine ÷ Backplane is 1.11x; the limit is > 1.2x']);
    assert.ok(r.lines.includes('  CFEngine time ÷ Backplane time > 1.2 on startup; > 1 on files-cold — ' + strict[2]?.why), r.lines.join('\n'));
    // files-converged is no longer in the bound, so it is not checked at all.
    assert.ok(!r.lines.some((l) => l.includes('files-converged: CFEngine')));
  });

  test("a '*' bound covers every workload both ran, and a workload's own bound wins over it", () => {
    const limit = ratioLimit({ peer: 'puppet', label: 'Puppet', min: { '*': 1, 'exec-chain': 2 }, why: 'test' });
    assert.equal(limit.text, 'Puppet time ÷ Backplane time > 2 on exec-chain; > 1 on every other workload both ran');
    const figures = limit.figures(results(README()));
    assert.equal(figures.length, 7);
    const chain = figures.find((f) => f.name.startsWith('exec-chain'));
    assert.equal(chain?.ok, false, 'Puppet 11.3 s ÷ 6.29 s = 1.8x is under the 2x bound');
    assert.equal(chain?.bound, '> 2');
    assert.ok(figures.filter((f) => f !== chain).every((f) => f.ok && f.bound === '> 1'));
  });

  test('every TIME_BOUNDS workload and every named RATIO_BOUNDS workload is one the bench runs', async () => {
    const { WORKLOADS } = await import('../../bench/lib/workloads.js');
    const ids = new Set(WORKLOADS.map((w) => w.id));
    for (const b of TIME_BOUNDS) assert.ok(ids.has(b.workload), `TIME_BOUNDS names ${b.workload}`);
    for (const b of RATIO_BOUNDS) for (const w of Object.keys(b.min)) assert.ok(w === '*' || ids.has(w), `RATIO_BOUNDS names ${w}`);
  });
});
