import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { runWorkload } from '../../bench/lib/runner.js';
import type { Workload } from '../../bench/lib/workloads.js';
import type { Tool, ToolId } from '../../bench/tools/types.js';

/**
 * The main bench's rounds with real (tiny) processes: a reference such as bare `node -e 0` runs in the same rounds
 * as the tools, so it is measured under the same load as the figures it is the floor of.
 */

describe('bench runner', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'bench-runner-test-'));
  after(() => rmSync(tmp, { recursive: true, force: true }));
  const order = join(tmp, 'order');
  const append = (word: string): string[] => ['sh', '-c', `echo ${word} >> ${order}`];

  const fakeTool = (id: ToolId): Tool => ({
    id,
    label: id,
    version: '0',
    prepare: () => ({ argv: append(id), okCodes: [0] }),
  });

  test('references run interleaved with the tools, round by round, and come back as rows of their own', async () => {
    const w: Workload = {
      id: 'startup',
      title: 'start-up',
      manyFiles: false,
      backplaneOnly: false,
      references: [{ id: 'floor', title: 'the floor', argv: append('floor') }],
      desired: () => ({ files: [], execs: [] }),
      setup: () => undefined,
      check: () => undefined,
    };
    const result = await runWorkload(w, [fakeTool('backplane'), fakeTool('cfengine')], { runs: 2, slowRuns: 0, tmp, keep: false });
    assert.deepEqual(readFileSync(order, 'utf8').trim().split('\n'), ['backplane', 'cfengine', 'floor', 'backplane', 'cfengine', 'floor']);
    const ref = result.references?.[0];
    assert.equal(ref?.title, 'the floor');
    assert.equal(ref?.result.runs.length, 2);
    assert.ok(ref?.result.runs.every((r) => r.problem === undefined));
    assert.ok((ref?.result.medianS ?? 0) > 0);
    assert.equal(result.results.backplane?.runs.length, 2);
  });

  test('a failing reference is recorded as a failed run, not a figure', async () => {
    const w: Workload = {
      id: 'startup',
      title: 'start-up',
      manyFiles: false,
      backplaneOnly: false,
      references: [{ id: 'broken', title: 'broken', argv: ['sh', '-c', 'exit 3'] }],
      desired: () => ({ files: [], execs: [] }),
      setup: () => undefined,
      check: () => undefined,
    };
    const result = await runWorkload(w, [], { runs: 1, slowRuns: 0, tmp, keep: false });
    const run = result.references?.[0]?.result.runs[0];
    assert.match(run?.problem ?? '', /^exit 3/);
    assert.equal(result.references?.[0]?.result.medianS, undefined);
  });
});
