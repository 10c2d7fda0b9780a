import assert from 'node:assert/strict';
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { benchEnv, envNote, timedRun } from '../../bench/lib/proc.js';
import { renderMarkdown, renderText } from '../../bench/lib/report.js';
import type { BenchResults, ToolResult, WorkloadResult } from '../../bench/lib/results.js';
import type { ToolId } from '../../bench/tools/types.js';

/** The main bench's tables (pure renderers on made-up results) and the environment its processes get (real spawns). */

const tool = (medianS: number, rssMiB: number): ToolResult => ({ runs: [{ wallS: medianS }], medianS, medianRssMiB: rssMiB });

function workload(id: string, title: string, times: Partial<Record<ToolId, [number, number]>>): WorkloadResult {
  const results: Partial<Record<ToolId, ToolResult>> = {};
  for (const [t, [s, rss]] of Object.entries(times) as [ToolId, [number, number]][]) results[t] = tool(s, rss);
  return { id, title, results };
}

const ALL_TOOLS: BenchResults['tools'] = [
  { id: 'backplane', label: 'Backplane', version: '0.1.0' },
  { id: 'puppet', label: 'Puppet', version: '7.23.0' },
  { id: 'ansible', label: 'Ansible', version: '2.14.18' },
  { id: 'cfengine', label: 'CFEngine', version: '3.21.0' },
];

const NODE_REF = { id: 'node', title: 'bare Node start-up (`node -e 0`), the floor under Backplane', result: tool(0.068, 41) };

function results(tools = ALL_TOOLS): BenchResults {
  const startup = workload('startup', 'start-up on empty input', {
    backplane: [0.162, 59],
    puppet: [2.4, 94],
    ansible: [0.507, 56],
    cfengine: [0.0457, 22],
  });
  return {
    date: '2026-12-02T10:00:00.000Z',
    machine: { uname: 'Linux', cpu: 'cpu', cores: 2, memoryGiB: 24, node: 'v20.20.2' },
    tools,
    runs: 1,
    slowRuns: 1,
    workloads: [
      { ...startup, references: [NODE_REF] },
      workload('files-cold', '1,000 files, cold', { backplane: [1, 112], puppet: [5.1, 130], ansible: [297, 79], cfengine: [0.495, 24] }),
    ],
    live: { errors: [] },
    notes: [envNote(['NODE_EXTRA_CA_CERTS'])],
  };
}

/** Markdown table rows as arrays of cells. */
function mdRows(md: string): string[][] {
  return md
    .split('\n')
    .filter((l) => l.startsWith('| ') && !l.startsWith('| ---'))
    .map((l) =>
      l
        .slice(2, -2)
        .split(' | ')
        .map((c) => c.trim()),
    );
}

describe('bench report', () => {
  test("every Backplane figure has each peer's ratio beside it, from the same run, in time and in memory", () => {
    const md = renderMarkdown(results());
    const rows = mdRows(md);
    const startup = rows.filter((r) => r[0] === 'start-up on empty input');
    assert.equal(startup.length, 2, md);
    assert.deepEqual(startup[0], ['start-up on empty input', '0.162s', '2.40s (14.8x)', '0.507s (3.1x)', '0.0457s (0.28x)']);
    assert.deepEqual(startup[1], ['start-up on empty input', '59 MiB', '94 MiB (1.6x)', '56 MiB (0.95x)', '22 MiB (0.37x)']);
    const cold = rows.filter((r) => r[0] === '1,000 files, cold');
    assert.deepEqual(cold[0], ['1,000 files, cold', '1.00s', '5.10s (5.1x)', '297s (297x)', '0.495s (0.49x)']);
    for (const row of [...startup, ...cold]) {
      for (const cell of row.slice(2)) assert.match(cell, /\(\d[\d.]*x\)$/, `a peer cell without its ratio: ${row.join(' | ')}`);
    }
    const text = renderText(results());
    assert.match(text, /start-up on empty input\s+0\.162s\s+2\.40s \(14\.8x\)\s+0\.507s \(3\.1x\)\s+0\.0457s \(0\.28x\)/);
    assert.match(text, /peer RSS \/ Backplane RSS/);
  });

  test('the bare Node row follows start-up, in the Backplane column, with no peer ratios, and is explained', () => {
    const md = renderMarkdown(results());
    const rows = mdRows(md);
    const i = rows.findIndex((r) => r[0] === 'start-up on empty input');
    assert.deepEqual(rows[i + 1], ['bare Node start-up (`node -e 0`), the floor under Backplane', '0.0680s', '—', '—', '—']);
    assert.ok(rows.some((r) => r[0]?.startsWith('bare Node') && r[1] === '41 MiB'), 'the memory table has the row too');
    assert.match(md, /Reference rows \(bare Node start-up .*\) are no tool/);
    const text = renderText(results());
    assert.match(text, /bare Node start-up \(`node -e 0`\), the floor under Backplane\s+0\.0680s\s+—\s+—\s+—/);
  });

  test('without a Backplane column the reference figure goes into its row title', () => {
    const md = renderMarkdown(results(ALL_TOOLS.filter((t) => t.id !== 'backplane')));
    assert.ok(mdRows(md).some((r) => r[0] === 'bare Node start-up (`node -e 0`), the floor under Backplane: 0.0680s'), md);
  });

  test('the notes say the tools ran without NODE_EXTRA_CA_CERTS', () => {
    assert.match(renderMarkdown(results()), /- Every tool ran with NODE_EXTRA_CA_CERTS unset: this shell sets NODE_EXTRA_CA_CERTS/);
    assert.match(renderText(results()), /Note: Every tool ran with NODE_EXTRA_CA_CERTS unset/);
    assert.equal(envNote([]), 'Every tool ran with NODE_EXTRA_CA_CERTS unset (it was not set here either).');
  });
});

describe('bench environment', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'bench-env-test-'));
  after(() => rmSync(tmp, { recursive: true, force: true }));

  test('benchEnv drops NODE_EXTRA_CA_CERTS and keeps the rest and the extras', () => {
    const saved = process.env['NODE_EXTRA_CA_CERTS'];
    process.env['NODE_EXTRA_CA_CERTS'] = '/nonexistent/bundle.pem';
    try {
      const env = benchEnv({ EXTRA: '1' });
      assert.equal(env['NODE_EXTRA_CA_CERTS'], undefined);
      assert.equal(env['EXTRA'], '1');
      assert.equal(env['PATH'], process.env['PATH']);
    } finally {
      if (saved === undefined) delete process.env['NODE_EXTRA_CA_CERTS'];
      else process.env['NODE_EXTRA_CA_CERTS'] = saved;
    }
  });

  test('a timed run does not see NODE_EXTRA_CA_CERTS, even when the bench has it set', async () => {
    const saved = process.env['NODE_EXTRA_CA_CERTS'];
    process.env['NODE_EXTRA_CA_CERTS'] = '/nonexistent/bundle.pem';
    try {
      const log = join(tmp, 'env.log');
      const script = "process.stdout.write('NODE_EXTRA_CA_CERTS=' + String(process.env.NODE_EXTRA_CA_CERTS))";
      const r = await timedRun({ argv: [process.execPath, '-e', script], okCodes: [0] }, log, 30_000);
      assert.equal(r.exitCode, 0);
      assert.match(readFileSync(log, 'utf8'), /NODE_EXTRA_CA_CERTS=undefined/);
      assert.ok(r.wallS > 0);
    } finally {
      if (saved === undefined) delete process.env['NODE_EXTRA_CA_CERTS'];
      else process.env['NODE_EXTRA_CA_CERTS'] = saved;
    }
  });
});
