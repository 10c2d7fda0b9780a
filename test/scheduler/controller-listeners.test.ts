import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { withTempDir } from '../helpers/engine.js';
import { startCli } from '../helpers/cli.js';

/**
 * The controller's ten store watches and its wake-up share one abort signal: past Node's default of 10 listeners,
 * every agent that became the controller printed a MaxListenersExceededWarning (a false "memory leak") on stderr.
 */
test('an agent that becomes the controller prints no listener warning', async () => {
  await withTempDir(async (dir) => {
    const graph = join(dir, 'g.yaml');
    await writeFile(graph, 'resources: []\n');
    const agent = startCli(['run', '--file', graph, '--no-api', '--state-dir', join(dir, 'state')], { timeoutMs: 30_000 });
    await agent.waitFor(/this host is the controller now/, 20_000);
    // Warnings are printed on the next turn of the event loop: give them a moment.
    await new Promise((r) => setTimeout(r, 300));
    agent.proc.kill('SIGTERM');
    const r = await agent.exited;
    assert.doesNotMatch(r.stderr, /MaxListenersExceededWarning/);
  });
});
