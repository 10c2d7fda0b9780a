import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { convergenceLine, Progress } from '../../src/cli/progress.js';
import { runCli } from '../helpers/cli.js';

/**
 * The progress line of long waits: rewritten in place on a terminal (checked here without a pty: the module takes
 * isTTY and a writer), plain lines only when they change and at most one a second otherwise (checked on the real
 * CLI, whose stderr is a pipe).
 */

function collect(isTTY: boolean, clock?: { t: number }): { p: Progress; out: string[] } {
  const out: string[] = [];
  const p = new Progress({ isTTY, write: (t) => out.push(t), ...(clock === undefined ? {} : { now: () => clock.t }) });
  return { p, out };
}

describe('progress', () => {
  test('terminal: the line is rewritten in place on each change, other output goes above it, and it is erased when done', () => {
    const { p, out } = collect(true);
    p.update('resources 1/3 converged');
    p.update('resources 1/3 converged');
    p.update('resources 2/3 converged, 1 failed');
    p.log('a log line\n');
    p.done();
    p.update('resources 3/3 converged');
    const blank = (n: number): string => `\r${' '.repeat(n)}\r`;
    assert.deepEqual(out, [
      '\rresources 1/3 converged',
      `${blank(23)}resources 2/3 converged, 1 failed`,
      `${blank(33)}a log line\nresources 2/3 converged, 1 failed`,
      blank(33),
    ]);
    assert.ok(!out.join('').includes('\x1b'), 'no escape sequences');
  });

  test('terminal: escape sequences in the text are not passed through', () => {
    const { p, out } = collect(true);
    p.update('web\x1b[31m 1/2');
    assert.ok(!(out[0] ?? '').includes('\x1b'), JSON.stringify(out));
  });

  test('not a terminal: a line only when the numbers change, at most one a second, the last one at the end', () => {
    const clock = { t: 0 };
    const { p, out } = collect(false, clock);
    p.update('instances 0/5 healthy of wanted');
    clock.t = 100;
    p.update('instances 0/5 healthy of wanted');
    p.update('instances 1/5 healthy of wanted');
    clock.t = 300;
    p.update('instances 2/5 healthy of wanted');
    clock.t = 1100;
    p.update('instances 3/5 healthy of wanted');
    clock.t = 1200;
    p.update('instances 3/5 healthy of wanted');
    p.update('instances 5/5 healthy of wanted');
    p.done();
    assert.deepEqual(out, ['instances 0/5 healthy of wanted\n', 'instances 3/5 healthy of wanted\n', 'instances 5/5 healthy of wanted\n']);
    assert.ok(out.every((l) => !l.includes('\r')));
  });

  test('convergenceLine counts converged of all, and failed or blocked when there are some', () => {
    assert.equal(convergenceLine([{ state: 'converged' }, { state: 'running' }]), 'resources 1/2 converged');
    assert.equal(convergenceLine([{ state: 'converged' }, { state: 'failed' }, { state: 'blocked' }]), 'resources 1/3 converged, 1 failed, 1 blocked');
  });

  describe('run --converged-timeout, not on a terminal', () => {
    let dir: string;
    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'bp-progress-'));
    });
    after(async () => rm(dir, { recursive: true, force: true }));

    test('prints plain progress lines on stderr, the last with every resource counted, and no carriage returns', async () => {
      const graph = join(dir, 'g.yaml');
      const files = Array.from({ length: 5 }, (_, i) => `  - kind: file\n    name: ${join(dir, `f${i}`)}\n    content: "${i}"\n`).join('');
      await writeFile(graph, `resources:\n${files}  - kind: file\n    name: /nonexistent-bp-progress/x\n    content: no\n`);
      const r = await runCli(['run', '-f', graph, '--converged-timeout', '0', '--state-dir', join(dir, 'state')]);
      assert.equal(r.code, 1, r.stderr);
      const lines = r.stderr.split('\n').filter((l) => l.startsWith('resources '));
      assert.ok(lines.length >= 1, r.stderr);
      assert.equal(lines.at(-1), 'resources 5/6 converged, 1 failed');
      for (let i = 1; i < lines.length; i++) assert.notEqual(lines[i], lines[i - 1], 'a line repeated');
      assert.doesNotMatch(r.stderr, /\r/);
    });

    test('--output json prints the summary on stdout, and no progress with --log-format json', async () => {
      const graph = join(dir, 'ok.yaml');
      await writeFile(graph, `resources:\n  - kind: file\n    name: ${join(dir, 'ok')}\n    content: ok\n`);
      const r = await runCli(['run', '-f', graph, '--converged-timeout', '0', '--state-dir', join(dir, 'state2'), '--output', 'json', '--log-format', 'json']);
      assert.equal(r.code, 0, r.stderr);
      const s = JSON.parse(r.stdout) as { ok: boolean; converged: number; failed: unknown[] };
      assert.equal(s.ok, true);
      assert.equal(s.converged, 1);
      assert.doesNotMatch(r.stderr, /^resources /m);
    });
  });
});
