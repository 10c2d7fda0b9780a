import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, test } from 'node:test';
import { withTempDir } from '../helpers/engine.js';
import { runCli, startCli } from '../helpers/cli.js';

/** One-shot runs end on their own and say in their exit code what they found (README "Behaviour of run"). */
describe('one-shot runs (real processes)', () => {
  test('--converged-timeout ends although a resource polls more often than the timeout: a poll that finds nothing is quiet', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      await writeFile(graph, `resources:\n  - kind: file\n    name: ${dir}/polled\n    content: "x\\n"\n    meta: { poll: 100ms }\n`);
      const r = await runCli(['run', '--file', graph, '--state-dir', join(dir, 'state'), '--converged-timeout', '1s'], { timeoutMs: 20_000 });
      assert.equal(r.code, 0, `did not end on its own (code ${r.code}, signal ${r.signal}):\n${r.stderr}`);
      assert.ok(r.ms >= 1000, `ended after ${Math.round(r.ms)}ms, before 1s of quiet`);
    });
  });

  test('a repair restarts the quiet time (a bare number is seconds)', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      const target = join(dir, 'motd');
      await writeFile(graph, `resources:\n  - kind: file\n    name: ${target}\n    content: "hello\\n"\n`);
      const cli = startCli(['run', '--file', graph, '--state-dir', join(dir, 'state'), '--converged-timeout', '1.5'], { timeoutMs: 20_000 });
      await cli.waitFor(/converged: 1 of 1/);
      await sleep(700);
      await writeFile(target, 'drifted\n');
      await cli.waitFor(/file\[.*\]: content changed/);
      const repaired = performance.now();
      const r = await cli.exited;
      assert.equal(r.code, 0, r.stderr);
      const quiet = performance.now() - repaired;
      assert.ok(quiet >= 1400, `exited ${Math.round(quiet)}ms after the repair: the repair did not restart the 1.5s of quiet\n${r.stderr}`);
    });
  });

  test('--noop without a timeout checks once, lists what would change and what notify edges would refresh, exits 3', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      await writeFile(
        graph,
        `resources:
  - kind: file
    name: ${dir}/conf
    content: "port 80\\n"
    notify: ["exec[reload]"]
  - kind: exec
    name: reload
    cmd: ["touch", "${dir}/reloaded"]
    refreshOnly: true
    notify: ["exec[announce]"]
  - kind: exec
    name: announce
    cmd: ["touch", "${dir}/announced"]
    refreshOnly: true
  - kind: file
    name: ${dir}/in-place
    content: ""
`,
      );
      await writeFile(join(dir, 'in-place'), '');
      const r = await runCli(['run', '--file', graph, '--state-dir', join(dir, 'state'), '--noop'], { timeoutMs: 20_000 });
      assert.equal(r.code, 3, `expected exit 3 (changes pending), got code ${r.code} signal ${r.signal}:\n${r.stderr}`);
      assert.match(r.stderr, new RegExp(`noop: 1 resource would change: file\\[${dir}/conf\\]\n`));
      assert.match(r.stderr, new RegExp(`noop: exec\\[reload\\] would be refreshed \\(notified by file\\[${dir}/conf\\]\\)`));
      assert.match(r.stderr, /noop: exec\[announce\] would be refreshed \(notified by exec\[reload\]\)/);
      assert.doesNotMatch(r.stderr, /converged: /, 'noop must not claim resources are converged');
      for (const f of ['conf', 'reloaded', 'announced']) assert.equal(existsSync(join(dir, f)), false, `noop created ${f}`);
    });
  });

  test('--noop with everything in place exits 0', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      await writeFile(graph, `resources:\n  - kind: file\n    name: ${dir}/ok\n    content: "fine\\n"\n`);
      await writeFile(join(dir, 'ok'), 'fine\n');
      const r = await runCli(['run', '--file', graph, '--state-dir', join(dir, 'state'), '--noop'], { timeoutMs: 20_000 });
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /noop: 0 resources would change/);
    });
  });
});
