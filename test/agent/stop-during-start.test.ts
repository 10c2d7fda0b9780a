import assert from 'node:assert/strict';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { withTempDir } from '../helpers/engine.js';
import { startCli } from '../helpers/cli.js';

/**
 * A stop that arrives while the engine is still starting a big graph's workers: the agent used to wait for the last
 * worker to start before it stopped the engine, and meanwhile the workers it kept starting checked and wrote their
 * files. At 100,000 files that ran past the 3 s grace, and the forced exit left the temp files of the writes in
 * flight behind.
 */
describe('a stop during start-up', () => {
  test('SIGTERM while workers are still starting: no new writes after it, no temp files left, a clean exit', async () => {
    await withTempDir(async (dir) => {
      const target = join(dir, 't');
      await mkdir(target);
      const n = 30_000;
      const lines = [`resources:\n  - kind: file\n    name: ${target}\n    type: directory`];
      for (let i = 0; i < n; i++) lines.push(`  - kind: file\n    name: ${target}/f${i}\n    content: "hello ${i}\\n"\n    mode: "0644"`);
      const graph = join(dir, 'graph.yaml');
      await writeFile(graph, lines.join('\n') + '\n');
      const agent = startCli(['run', '--file', graph, '--no-api', '--state-dir', join(dir, 'state')], { timeoutMs: 120_000 });
      // The first write: the engine runs, and a 30,000-worker swap is still starting the rest.
      await agent.waitFor(/: created$/, 60_000);
      const before = (await readdir(target)).length;
      agent.proc.kill('SIGTERM');
      const r = await agent.exited;
      const out = r.stderr;
      assert.equal(r.signal, null, out.slice(-2000));
      // Not the grace period's forced exit (130): the stop finished by itself.
      assert.equal(r.code, 0, out.slice(-2000));
      const at = out.indexOf('SIGTERM: stopping');
      assert.ok(at !== -1, out.slice(-2000));
      const after = out.slice(at);
      // Writes in flight may finish (the file kind's 64 I/O slots), and the signal is seen only at the end of the
      // event loop's turn; nothing new starts after it. ("created" lines are no measure: a file is reported once its
      // directory's group fsync is done, after the signal for files renamed before it.) Before the fix the engine
      // went on starting checks until its last worker had started: thousands of files here.
      const names = await readdir(target);
      assert.ok(names.length - before <= 400, `${names.length - before} files written after SIGTERM (${before} before it)`);
      // Nor does a stopping agent go on to open the cluster store and run for controller.
      assert.doesNotMatch(after, /cluster store: embedded|is the controller now/);
      assert.deepEqual(
        names.filter((f) => f.includes('.bp-tmp-')),
        [],
        'temp files of interrupted writes left behind',
      );
      const files = names.length;
      assert.ok(files < n, `all ${n} files were written: the stop came too late to test anything`);
      // The count is the one at the stop, not the zero every stopped worker reads afterwards.
      const m = /stopped before converging: (\d+) of (\d+) resources converged/.exec(out);
      assert.ok(m !== null, out.slice(-2000));
      assert.equal(Number(m[2]), n + 1);
      assert.ok(Number(m[1]) > 0 && Number(m[1]) <= files + 1, `${m[1]} converged at the stop, ${files} files on disk`);
    });
  });
});
