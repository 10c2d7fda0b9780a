import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { until, withTempDir } from '../helpers/engine.js';
import { startCli } from '../helpers/cli.js';

const exists = (p: string): Promise<boolean> => stat(p).then(() => true, () => false);
const content = (p: string): Promise<string> => readFile(p, 'utf8').catch(() => '<missing>');

/**
 * A purging directory with six files: a graph cut short after any resource still parses, and applying it would
 * remove the rest, and purge would then delete their files. The last file's content is a block scalar of two lines,
 * so a cut between them changes its content instead.
 */
function graphText(dir: string, last: readonly [string, string], count = 6): string[] {
  const chunks = [`resources:\n  - { kind: file, name: ${dir}/d, type: directory, purge: true }\n`];
  for (let i = 1; i < count; i++) chunks.push(`  - { kind: file, name: ${dir}/d/f${i}, content: "v1\\n" }\n`);
  chunks.push(`  - kind: file\n    name: ${dir}/d/f${count}\n    content: |\n      ${last[0]}\n`, `      ${last[1]}\n`);
  return chunks;
}

/** Resolves once `check` has held at every sample (every 10 ms) until `done` resolves; rejects at the first miss. */
async function holdsWhile(done: Promise<unknown>, check: () => Promise<string | undefined>): Promise<void> {
  let finished = false;
  void done.finally(() => (finished = true));
  while (!finished) {
    const problem = await check();
    if (problem !== undefined) throw new Error(problem);
    await sleep(10);
  }
}

describe('graph edits are swapped in only once the file is complete', () => {
  test('an empty file, a slow writer holding the file open, and a writer closing it between chunks apply nothing partial', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      const v1 = graphText(dir, ['one', 'two']);
      await writeFile(graph, v1.join(''));
      const agent = startCli(['run', '--file', graph]);
      const intact = async (): Promise<string | undefined> => {
        for (let i = 1; i <= 6; i++) if (!(await exists(join(dir, 'd', `f${i}`)))) return `f${i} was removed by a partial graph:\n${agent.output()}`;
        const last = await content(join(dir, 'd', 'f6'));
        if (!['one\ntwo\n', 'one\nTWO\n', 'uno\ndos\n'].includes(last)) return `f6 holds "${last}", a partial graph's content:\n${agent.output()}`;
        return undefined;
      };
      try {
        await agent.waitFor(/converged: 7 of 7/);

        // 0 bytes (a `>` redirect before its first write, an editor's truncate): an error, not an empty graph.
        await writeFile(graph, '');
        await agent.waitFor(/graph\.yaml:1:1: the graph file is empty/);
        await rm(join(dir, 'd', 'f1'));
        await until(async () => (await content(join(dir, 'd', 'f1'))) === 'v1\n', 3000, 'f1 still managed');

        // Truncate, then write slowly in chunks with the file held open (a shell redirect, an in-place editor):
        // every prefix parses, and none of them may be applied.
        const fh = await open(graph, 'w');
        const slow = (async () => {
          try {
            for (const chunk of graphText(dir, ['one', 'TWO'])) {
              await fh.write(chunk);
              await sleep(150);
            }
          } finally {
            await fh.close();
          }
        })();
        await holdsWhile(slow, intact);
        await agent.waitFor(/is open for writing by node \(pid \d+\); the edit is read once it is closed/);
        await agent.waitFor(/graph swapped: 0 added, 0 removed, 1 changed, 6 unchanged/);
        await until(async () => (await content(join(dir, 'd', 'f6'))) === 'one\nTWO\n', 3000, 'f6 rewritten');

        // A writer that closes the file between chunks (`>` then `>>` after a pause): /proc shows nobody writing in
        // the gap, so the prefix is read; it removes resources, so it is held until the file is quiet.
        const before = agent.output().length;
        const v3 = graphText(dir, ['uno', 'dos']);
        const cut = v3.slice(0, 3).join('');
        const rest = v3.slice(3).join('');
        const writer = spawn('sh', ['-c', 'printf %s "$1" > "$3"; sleep 0.4; printf %s "$2" >> "$3"', 'sh', cut, rest, graph], { stdio: 'ignore' });
        const written = new Promise((resolve) => writer.on('exit', resolve));
        await holdsWhile(written, intact);
        await until(async () => agent.output().slice(before).includes('graph swapped'), 5000, 'second swap');
        const log = agent.output().slice(before);
        assert.match(log, /the edit of .*graph\.yaml removes 4 resources: applied once the file has been unchanged for 1000ms/);
        assert.doesNotMatch(log, /removed [1-9]/);
        assert.equal(await intact(), undefined);
        await until(async () => (await content(join(dir, 'd', 'f6'))) === 'uno\ndos\n', 3000, 'f6 rewritten');
        assert.doesNotMatch(agent.output(), /graph swapped: \d+ added, [1-9]/);
      } finally {
        agent.proc.kill('SIGTERM');
        await agent.exited;
      }
    });
  });

  test('editors that write in place and that rename are swapped in; a deliberate removal is applied once the file is quiet', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      await writeFile(graph, graphText(dir, ['one', 'two']).join(''));
      const agent = startCli(['run', '--file', graph]);
      try {
        await agent.waitFor(/converged: 7 of 7/);
        // An editor that writes a temp file and renames it over the graph.
        await writeFile(join(dir, '.graph.yaml.swp'), graphText(dir, ['one', 'three']).join(''));
        await rename(join(dir, '.graph.yaml.swp'), graph);
        await agent.waitFor(/graph swapped: 0 added, 0 removed, 1 changed, 6 unchanged/);
        await until(async () => (await content(join(dir, 'd', 'f6'))) === 'one\nthree\n', 3000, 'f6 rewritten');
        // An editor that writes in place, removing f5 and f6 on purpose: applied (after the hold), and purged.
        const t0 = Date.now();
        await writeFile(graph, graphText(dir, ['x', 'y'], 5).slice(0, -2).join(''));
        await agent.waitFor(/graph swapped: 0 added, 2 removed, 0 changed, 5 unchanged/);
        assert.ok(Date.now() - t0 >= 900, `removal applied ${Date.now() - t0}ms after the write, before the file was quiet`);
        await until(async () => !(await exists(join(dir, 'd', 'f5'))) && !(await exists(join(dir, 'd', 'f6'))), 3000, 'f5 and f6 purged');
        assert.equal(await content(join(dir, 'd', 'f4')), 'v1\n');
      } finally {
        agent.proc.kill('SIGTERM');
        await agent.exited;
      }
    });
  });
});
