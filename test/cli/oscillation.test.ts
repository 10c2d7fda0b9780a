import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { withTempDir } from '../helpers/engine.js';
import { runCli } from '../helpers/cli.js';

test('a resource fought over by another writer is reported as oscillating and held, not rewritten forever', async () => {
  await withTempDir(async (dir) => {
    const target = join(dir, 'f');
    // Another program rewriting what the graph manages, about 50 times a second.
    const fighter = spawn('sh', ['-c', 'while :; do echo b > "$1"; sleep 0.02; done', 'sh', target], { stdio: 'ignore' });
    try {
      const graph = join(dir, 'graph.yaml');
      await writeFile(graph, `resources:\n  - { kind: file, name: ${target}, content: "a\\n" }\n`);
      // Without the hold the resource never stops changing, the graph is never quiet, and the run never ends.
      const r = await runCli(['run', '--file', graph, '--converged-timeout', '1'], { timeoutMs: 20_000 });
      assert.equal(r.signal, null, `the agent was still fighting after 20 s:\n${r.stderr.slice(-2000)}`);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /oscillating: changed 20 times in 2s on nothing but its own watch events; something else keeps changing what it manages/);
      assert.match(r.stderr, /hint: find the other writer .*held for 60s or until the graph changes/);
      const changes = r.stderr.split('\n').filter((l) => l.includes('content changed')).length;
      assert.ok(changes >= 20 && changes <= 40, `${changes} changes: it should stop right after the 20 that showed the fight`);
    } finally {
      fighter.kill('SIGKILL');
    }
  });
});
