import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  agentRssBoundMiB,
  checkScale,
  perResource,
  ratioToSmallest,
  renderScaleMarkdown,
  renderScaleText,
  SCALE_BOUNDS,
  scaleRows,
  type MetricId,
  type ScaleKind,
  type ScalePoint,
  type ScaleResults,
  type ScaleStat,
} from '../../bench/lib/scale.js';

/** The scale bench's normalisation, limits and tables on made-up results (no agent is run here). */

type Values = Partial<Record<MetricId, number>>;

const MiB = 1024;

/**
 * A linear Backplane: the empty graph costs 0.35 s and 60 MiB; every resource adds the same time and memory at
 * every size (file: 1 ms and 8 KiB; noop: 0.3 ms and 4 KiB), so each per-resource figure is the same at each size.
 */
function linear(kind: ScaleKind, n: number): Values {
  const t = kind === 'file' ? 0.001 : 0.0003;
  const k = kind === 'file' ? 8 : 4;
  return {
    'validate.wall': 0.3 + (t / 4) * n,
    'validate.rss': 55 * MiB + (k / 2) * n,
    'cold.wall': 0.35 + t * n,
    'cold.rss': 60 * MiB + k * n,
    'converged.wall': 0.35 + (t / 2) * n,
    'converged.rss': 60 * MiB + k * n,
    'agent.converged': 0.5 + t * n,
    'agent.rss': 62 * MiB + k * n,
    'agent.peak': 62 * MiB + k * n,
    'agent.cpu': 0,
    'agent.stop': 0.2,
    ...(kind === 'file' && n > 0 ? { 'cold.first': 0.3, 'agent.first': 0.45 } : {}),
  };
}

function results(values: (kind: ScaleKind, n: number) => Values, sizes = [1000, 10_000, 100_000], problems: string[] = []): ScaleResults {
  const kinds: ScaleKind[] = ['noop', 'file'];
  const points: ScalePoint[] = kinds.flatMap((kind) =>
    [0, ...sizes].map((size) => ({ kind, size, runs: [{ values: values(kind, size), problems: size === sizes.at(-1) && kind === 'file' ? problems : [] }] })),
  );
  return {
    date: '2026-12-02T10:00:00.000Z',
    machine: { uname: 'Linux', cpu: 'cpu', cores: 2, memoryGiB: 24, node: 'v20.20.2' },
    kinds,
    sizes,
    points,
    idleWindowS: 5,
    notes: ['a note'],
  };
}

const fails = (lines: readonly string[]): string[] => lines.filter((l) => l.includes('FAIL:')).map((l) => l.trim());

describe('scale bench: per-resource figures', () => {
  test('per resource is (m(n) − m(empty)) / n, so start-up does not flatter the big sizes', () => {
    const r = results(linear);
    assert.equal(perResource(r, 'file', 1000, 'cold.wall')?.toFixed(6), '0.001000');
    assert.equal(perResource(r, 'file', 100_000, 'cold.wall')?.toFixed(6), '0.001000');
    assert.equal(perResource(r, 'noop', 10_000, 'agent.rss')?.toFixed(3), '4.000');
    assert.equal(ratioToSmallest(r, 'file', 100_000, 'cold.wall')?.toFixed(3), '1.000');
    // Dividing whole times by n would have given 1.35 ms at 1k and 1.0035 ms at 100k: a fake 0.74x.
  });

  test("each size's figure comes from its runs before subtracting: the fastest by default, or the median", () => {
    const withLoadedRuns = (stat: ScaleStat): ScaleResults => {
      const r = { ...results(linear), stat };
      const p = r.points.find((x) => x.kind === 'file' && x.size === 1000);
      // Two runs slowed down by load (9 s, 1.5 s) beside the undisturbed 1.35 s.
      p?.runs.push({ values: { 'cold.wall': 9 }, problems: [] }, { values: { 'cold.wall': 1.5 }, problems: [] });
      return r;
    };
    assert.equal(perResource(withLoadedRuns('min'), 'file', 1000, 'cold.wall')?.toFixed(6), '0.001000');
    assert.equal(perResource(withLoadedRuns('median'), 'file', 1000, 'cold.wall')?.toFixed(6), '0.001150');
    assert.match(renderScaleText(withLoadedRuns('min')), /figures are the fastest run \(least RSS\) of each size/);
    assert.match(renderScaleText(withLoadedRuns('median')), /figures are the median of each size/);
  });
});

describe('scale bench: limits', () => {
  test('a linear run holds every limit', () => {
    const c = checkScale(results(linear));
    assert.equal(c.failures, 0, c.lines.join('\n'));
    assert.ok(c.lines.some((l) => l.includes('holds: file cold run: wall, 100k÷1k per resource 1.00x (1000 µs vs 1000 µs) (limit ≤ 1.5x)')), c.lines.join('\n'));
    // The four, for each kind and each size past the first: noop has no converged run.
    const linearLines = c.lines.filter((l) => /holds: (noop|file) .*per resource/.test(l));
    assert.equal(linearLines.length, 2 * (6 + 8), c.lines.join('\n'));
  });

  test('worse than linear at 100k fails with the ratio and both per-resource figures', () => {
    const r = results((kind, n) => {
      const v = linear(kind, n);
      // The 100k cold file run takes 1.6 ms per file instead of 1 ms: 1.6x.
      return kind === 'file' && n === 100_000 ? { ...v, 'cold.wall': 0.35 + 0.0016 * n } : v;
    });
    const c = checkScale(r);
    assert.deepEqual(fails(c.lines), ['FAIL: file cold run: wall, 100k÷1k per resource is 1.60x (1600 µs vs 1000 µs); the limit is ≤ 1.5x']);
    assert.equal(c.failures, 1);
  });

  test("a ratio past 1.5x only through the smallest size's noise holds, and says so", () => {
    // 1,000 noops add 1 MiB over the empty graph (GC luck); 100,000 add 200 MiB: 2 KiB vs 1.02 KiB per resource, 1.95x,
    // but 1 MiB + the 4 MiB noise allowance at 1,000 is 5 KiB per resource, and 2 KiB is well under 1.5 × 5.
    const r = results((kind, n) => {
      const v = linear(kind, n);
      if (kind !== 'noop') return v;
      const rss = n === 0 ? 62 * MiB : n === 1000 ? 63 * MiB : 62 * MiB + 2 * n;
      return { ...v, 'agent.rss': rss };
    });
    const c = checkScale(r);
    assert.equal(c.failures, 0, c.lines.join('\n'));
    assert.ok(c.lines.some((l) => l.includes('holds: noop agent: RSS once converged and idle, 100k÷1k per resource 1.95x (2 KiB vs 1.02 KiB), within the noise allowed at 1k')), c.lines.join('\n'));
    // Without the allowance it fails.
    const strict = checkScale(r, { ...SCALE_BOUNDS, noise: { s: 0, KiB: 0 } });
    assert.ok(fails(strict.lines).some((l) => l.startsWith('FAIL: noop agent: RSS once converged and idle, 100k÷1k per resource is 1.95x')), strict.lines.join('\n'));
  });

  test('a smallest size not above the empty graph gives no ratio, said as such, not a pass', () => {
    const r = results((kind, n) => (kind === 'noop' && n === 1000 ? { ...linear(kind, n), 'cold.wall': 0.3 } : linear(kind, n)));
    const c = checkScale(r);
    assert.equal(c.failures, 0);
    assert.ok(c.lines.includes("    noop cold run: wall, 100k÷1k per resource: no ratio, the 1k figure is not above the empty graph's"), c.lines.join('\n'));
    assert.ok(!c.lines.some((l) => l.includes('holds: noop cold run: wall')));
  });

  test('first change past 1 s fails at any size', () => {
    const r = results((kind, n) => (kind === 'file' && n === 100_000 ? { ...linear(kind, n), 'agent.first': 92 } : linear(kind, n)));
    assert.deepEqual(fails(checkScale(r).lines), ['FAIL: file 100k agent: first file in place is 92.0s; the limit is ≤ 1 s']);
  });

  test("the idle agent's memory bounds: 10k files < 150 MiB, 100k < 1 GiB", () => {
    assert.equal(agentRssBoundMiB(SCALE_BOUNDS, 1000), 150);
    assert.equal(agentRssBoundMiB(SCALE_BOUNDS, 10_000), 150);
    assert.equal(agentRssBoundMiB(SCALE_BOUNDS, 50_000), 1024);
    assert.equal(agentRssBoundMiB(SCALE_BOUNDS, 100_000), 1024);
    assert.equal(agentRssBoundMiB(SCALE_BOUNDS, 200_000), undefined);
    // The figures: 285 MiB at 10k and 1.9 GiB at 100k; noop agents are not bounded in memory.
    const r = results((kind, n) => {
      const v = linear(kind, n);
      if (n === 10_000) return { ...v, 'agent.rss': 285 * MiB };
      return n === 100_000 ? { ...v, 'agent.rss': 1946 * MiB } : v;
    });
    const f = fails(checkScale(r, { ...SCALE_BOUNDS, maxRatio: 1000 }).lines);
    assert.deepEqual(f, [
      'FAIL: file 10k agent RSS once converged is 285 MiB; the limit is ≤ 150 MiB',
      'FAIL: file 100k agent RSS once converged is 1946 MiB; the limit is ≤ 1024 MiB',
    ]);
  });

  test('idle CPU past 1% fails; a failed or timed-out run is a FAIL of its own', () => {
    const r = results((kind, n) => (kind === 'noop' && n === 1000 ? { ...linear(kind, n), 'agent.cpu': 3 } : linear(kind, n)), undefined, [
      'cold run: timed out after 460s',
    ]);
    assert.deepEqual(fails(checkScale(r).lines), [
      'FAIL: noop 1k agent CPU while idle is 3.00%; the limit is ≤ 1%',
      'FAIL: file 100k run 1: cold run: timed out after 460s',
    ]);
  });

  test('a build rewritten during the run fails it: the sizes may have measured different code', () => {
    const r = { ...results(linear), buildChanged: true };
    assert.deepEqual(fails(checkScale(r).lines), ['FAIL: dist/ was rebuilt while the bench ran: the figures mix two builds; run it again']);
    assert.equal(checkScale(results(linear)).failures, 0);
  });
});

describe('scale bench: tables', () => {
  test('each cell is the total and the per-resource figure; each size has its ratio to the smallest', () => {
    const rows = scaleRows(results(linear), 'file');
    assert.deepEqual(rows[0], ['file resources', 'empty graph', '1,000', '10,000', '100,000', '10k÷1k', '100k÷1k']);
    const cold = rows.find((r) => r[0] === 'cold run: wall');
    assert.deepEqual(cold, ['cold run: wall', '0.350s', '1.35s = 1000 µs', '10.3s = 1000 µs', '100s = 1000 µs', '1.00x', '1.00x']);
    const rss = rows.find((r) => r[0] === 'agent: RSS once converged and idle');
    assert.deepEqual(rss, ['agent: RSS once converged and idle', '62 MiB', '70 MiB = 8 KiB', '140 MiB = 8 KiB', '843 MiB = 8 KiB', '1.00x', '1.00x']);
    const first = rows.find((r) => r[0] === 'cold run: first file in place');
    assert.deepEqual(first, ['cold run: first file in place', 'n/a', '0.300s', '0.300s', '0.300s', '—', '—']);
  });

  test("noop's table leaves out what noop has not, and the report says why", () => {
    const r = results(linear);
    const titles = scaleRows(r, 'noop').map((row) => row[0]);
    assert.ok(!titles.includes('converged run: wall') && !titles.includes('cold run: first file in place'));
    const md = renderScaleMarkdown(r);
    assert.match(md, /- noop: no "converged run: wall": a noop resource has no state/);
    assert.match(md, /- noop: no "agent: first file in place": a noop resource never changes anything/);
    assert.match(md, /\(m\(n\) − m\(empty graph\)\) \/ n/);
    assert.match(md, /\| file resources \| empty graph \| 1,000 \| 10,000 \| 100,000 \| 10k÷1k \| 100k÷1k \|/);
    assert.match(renderScaleText(r), /Note: a note/);
  });
});
