import assert from 'node:assert/strict';
import { chmod, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { until, withTempDir } from '../helpers/engine.js';
import { runCli, startCli } from '../helpers/cli.js';

const exists = (p: string): Promise<boolean> => stat(p).then(() => true, () => false);
const content = (p: string): Promise<string> => readFile(p, 'utf8').catch(() => '<missing>');

/** mgmt's second announcement example in mgmt's YAML: f1..f3 with content, f4 absent, f1 -> f2 -> f3. */
function mgmtFiles(dir: string): string {
  const file = (n: number, state: string) => `  - name: file${n}
    path: "${dir}/f${n}"
    content: |
      i am f${n}
    state: ${state}`;
  return `---
graph: mygraph
resources:
  file:
${[file(1, 'exists'), file(2, 'exists'), file(3, 'exists'), file(4, 'absent')].join('\n')}
edges:
- name: e1
  from: {kind: file, name: file1}
  to: {kind: file, name: file2}
- name: e2
  from: {kind: file, name: file2}
  to: {kind: file, name: file3}
`;
}

describe('drift is repaired while run keeps going (real files)', () => {
  test('mgmt example 2: deleting f2, writing junk into f2 and creating f4 are all repaired', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      await writeFile(graph, mgmtFiles(dir));
      const agent = startCli(['run', '--file', graph]);
      try {
        await agent.waitFor(/converged: 4 of 4/);
        assert.equal(await content(join(dir, 'f2')), 'i am f2\n');
        assert.equal(await exists(join(dir, 'f4')), false);

        await rm(join(dir, 'f2'));
        await until(async () => (await content(join(dir, 'f2'))) === 'i am f2\n', 3000, 'f2 restored after delete');

        await writeFile(join(dir, 'f2'), 'junk junk junk\n');
        await until(async () => (await content(join(dir, 'f2'))) === 'i am f2\n', 3000, 'f2 restored after junk');

        await writeFile(join(dir, 'f4'), 'i should not be here\n');
        await until(async () => !(await exists(join(dir, 'f4'))), 3000, 'f4 removed again');

        assert.equal(agent.proc.exitCode, null, 'run is still going');
        // The line is written once the change is done, so it can land a moment after the file is gone.
        await agent.waitFor(/file\[file2\]: (created|content changed)/, 3000);
        await agent.waitFor(/file\[file4\]: removed/, 3000);
      } finally {
        agent.proc.kill('SIGTERM');
        await agent.exited;
      }
    });
  });

  test('mode drift and a file replaced by a rename are repaired', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      await writeFile(graph, `resources:\n  - { kind: file, name: ${dir}/motd, content: "hello\\n", mode: "0644" }\n`);
      const agent = startCli(['run', '--file', graph]);
      try {
        await agent.waitFor(/converged: 1 of 1/);
        await chmod(join(dir, 'motd'), 0o600);
        await until(async () => ((await stat(join(dir, 'motd'))).mode & 0o777) === 0o644, 3000, 'mode repaired');
        await writeFile(join(dir, 'other'), 'replacement\n');
        await rename(join(dir, 'other'), join(dir, 'motd'));
        await until(async () => (await content(join(dir, 'motd'))) === 'hello\n', 3000, 'content restored after rename-over');
        assert.match(agent.output(), /file\[.*motd\]: mode 0600 -> 0644/);
      } finally {
        agent.proc.kill('SIGTERM');
        await agent.exited;
      }
    });
  });

  test('editing the graph file swaps the new graph in; a broken edit is reported and the old graph keeps running', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      const g1 = `resources:
  - { kind: file, name: ${dir}/keep, content: "keep\\n" }
  - { kind: file, name: ${dir}/change, content: "v1\\n" }
  - { kind: exec, name: after-change, cmd: ["sh", "-c", "echo ran >> ${dir}/after.log"], require: "file[${dir}/change]" }
  - { kind: file, name: ${dir}/dropped, content: "bye\\n" }
`;
      await writeFile(graph, g1);
      const agent = startCli(['run', '--file', graph]);
      try {
        await agent.waitFor(/converged: 4 of 4/);
        assert.equal(await content(join(dir, 'after.log')), 'ran\n');

        // A broken edit: reported with its line, nothing changes.
        await writeFile(graph, `${g1}  - { kind: file, name: relative/path }\n`);
        await agent.waitFor(/not valid; keeping the running graph/);
        await agent.waitFor(/graph\.yaml:6:\d+: file\[relative\/path\]: parameter "path": must be an absolute path/);
        await rm(join(dir, 'keep'));
        await until(async () => (await content(join(dir, 'keep'))) === 'keep\n', 3000, 'old graph still enforced');

        // A good edit: change one file, drop one resource. (The whole `content: "v1` is replaced: the temp
        // dir's random name can itself contain "v1", as it did once in CI.)
        await writeFile(graph, g1.replace('content: "v1', 'content: "v2').replace(/.*dropped.*\n/, ''));
        await agent.waitFor(/graph swapped: 0 added, 1 removed, 1 changed, 2 unchanged/);
        await until(async () => (await content(join(dir, 'change'))) === 'v2\n', 3000, 'changed file rewritten');
        await until(async () => (await content(join(dir, 'after.log'))) === 'ran\nran\n', 3000, 'dependent re-ran');
        // The dropped file is no longer managed: deleting it is not repaired.
        await rm(join(dir, 'dropped'));
        await new Promise((r) => setTimeout(r, 200));
        assert.equal(await exists(join(dir, 'dropped')), false);
      } finally {
        agent.proc.kill('SIGTERM');
        await agent.exited;
      }
    });
  });

  test('--noop changes nothing and prints a unified diff of content changes', async () => {
    await withTempDir(async (dir) => {
      await writeFile(join(dir, 'motd'), 'old line\n');
      const graph = join(dir, 'graph.yaml');
      await writeFile(graph, `resources:\n  - { kind: file, name: ${dir}/motd, content: "new line\\n" }\n  - { kind: file, name: ${dir}/absent-one, content: "x" }\n`);
      const r = await runCli(['run', '--file', graph, '--noop', '--converged-timeout', '0']);
      assert.equal(r.code, 3, r.stderr); // noop found changes pending
      assert.match(r.stderr, /-old line/);
      assert.match(r.stderr, /\+new line/);
      assert.match(r.stderr, /noop: 2 resources would change/);
      assert.equal(await content(join(dir, 'motd')), 'old line\n');
      assert.equal(await exists(join(dir, 'absent-one')), false);
    });
  });
});
