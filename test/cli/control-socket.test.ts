import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { lstat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { runCli, startCli } from '../helpers/cli.js';
import { withTempDir } from '../helpers/engine.js';

const STORE_MODULE = fileURLToPath(new URL('../../src/cluster/embedded-store.ts', import.meta.url));

describe('the CLI while an agent holds the embedded store', () => {
  test('cluster members and status go through the agent’s control socket; a holder without one gets a clear error', { timeout: 90_000 }, async () => {
    await withTempDir(async (dir) => {
      const state = join(dir, 'state');
      const graph = join(dir, 'graph.yaml');
      // An export makes the agent open the (embedded) cluster store, and so serve its control socket.
      await writeFile(graph, `resources:\n  - { kind: file, name: ${dir}/shared, content: "x\\n", export: true }\n`);
      const agent = startCli(['run', '-f', graph, '--state-dir', state, '--hostname', 'solo']);
      try {
        await agent.waitFor(/cluster store: embedded/, 30_000);
        assert.ok((await lstat(join(state, 'control.sock'))).isSocket());
        const members = await runCli(['cluster', 'members', '--state-dir', state, '--json']);
        assert.equal(members.code, 0, members.stderr);
        const list = JSON.parse(members.stdout) as { host: string; verified: boolean }[];
        assert.deepEqual(list.map((m) => [m.host, m.verified]), [['solo', true]], 'the running agent is a verified member');
        const status = await runCli(['cluster', 'status', '--state-dir', state]);
        assert.equal(status.code, 0, status.stderr);
        assert.match(status.stdout, new RegExp(`store: embedded, healthy \\(.*served by agent pid ${agent.proc.pid}.*through ${state}/control.sock`));
        assert.match(status.stdout, /solo: alive, exports 1/);
      } finally {
        agent.proc.kill('SIGTERM');
        await agent.exited;
      }
      // A clean stop removes the socket; the commands open the store directly again.
      await assert.rejects(lstat(join(state, 'control.sock')), /ENOENT/);
      const after = await runCli(['cluster', 'members', '--state-dir', state, '--json']);
      assert.equal(after.code, 0, after.stderr);

      // Something holds the store but serves no socket (an older agent, or one still starting): say both.
      const code = `
        const { EmbeddedStore } = await import(${JSON.stringify(STORE_MODULE)});
        await EmbeddedStore.open({ dir: ${JSON.stringify(join(state, 'store'))} });
        process.stdout.write('open\\n');
        setInterval(() => {}, 1000);
      `;
      const holder = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
      try {
        await once(holder.stdout, 'data');
        const r = await runCli(['cluster', 'members', '--state-dir', state]);
        assert.notEqual(r.code, 0);
        assert.match(r.stderr, new RegExp(`in use by another process \\(pid ${holder.pid}\\), and its control socket ${state}/control.sock is not answering`));
        assert.match(r.stderr, /try again in a moment/);
      } finally {
        holder.kill('SIGKILL');
        await once(holder, 'exit');
      }
    });
  });
});
