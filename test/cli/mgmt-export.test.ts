import assert from 'node:assert/strict';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { until, withTempDir } from '../helpers/engine.js';
import { startCli } from '../helpers/cli.js';

/** mgmt's own export/collect (a "@@" name, collect {kind, pattern}) run by a real agent on its embedded store. */
describe('run: mgmt export and collect', () => {
  test('a @@ file is exported, not written at its own path, and collected into the pattern directory', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      await writeFile(
        graph,
        `graph: g
resources:
  file:
  - name: "@@${dir}/src/file1"
    content: "from mgmt\\n"
    state: exists
  - name: ${dir}/in/
    state: exists
collect:
- kind: file
  pattern: ${dir}/in/
`,
      );
      const agent = startCli(['run', '--file', graph, '--state-dir', join(dir, 'state'), '--hostname', 'solo']);
      try {
        await until(async () => (await readFile(join(dir, 'in', 'file1'), 'utf8').catch(() => '')) === 'from mgmt\n', 10_000, 'the export collected');
        await assert.rejects(stat(join(dir, 'src')), 'an exported resource is not managed at its own path');
      } finally {
        agent.proc.kill('SIGTERM');
        await agent.exited;
      }
    });
  });
});
