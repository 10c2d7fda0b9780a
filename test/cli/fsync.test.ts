import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { withTempDir } from '../helpers/engine.js';
import { BIN, ensureBuilt } from '../helpers/cli.js';

/**
 * Durability is invisible to every other test: without fsync, files still have the right content until the power
 * fails. So this counts the calls: the agent runs under strace, which names each fsync'd descriptor's path (-y).
 * A file's content must be fsync'd before it is renamed into place, and a directory after an entry is created in it
 * or renamed into it; otherwise a crash can leave an empty file or no file at all.
 */

const haveStrace = spawnSync('strace', ['-V'], { stdio: 'ignore' }).status === 0;

/** Runs `backplane run --converged-timeout 0` under strace; returns how many fsync/fdatasync calls each path got. */
async function fsyncsOf(dir: string, graph: string): Promise<Map<string, number>> {
  ensureBuilt();
  const trace = join(dir, 'trace');
  const args = ['-f', '-qq', '-y', '-e', 'trace=fsync,fdatasync', '-o', trace, process.execPath, BIN, 'run', '--file', graph, '--converged-timeout', '0', '--state-dir', join(dir, 'state')];
  const proc = spawn('strace', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number | null>((resolve) => proc.on('close', resolve));
  assert.equal(code, 0, stderr);
  const counts = new Map<string, number>();
  // `123 fsync(19</path>) = 0`, or `fsync(19</path> <unfinished ...>` when another thread interleaves.
  for (const m of (await readFile(trace, 'utf8')).matchAll(/\b(?:fsync|fdatasync)\(\d+<([^>]*)>/g)) {
    const path = m[1] ?? '';
    counts.set(path, (counts.get(path) ?? 0) + 1);
  }
  return counts;
}

describe('file: what is fsync\'d (strace)', { skip: !haveStrace && 'strace is not installed' }, () => {
  test('each new file is fsync\'d before its rename, and each directory after an entry appears in it', async () => {
    await withTempDir(async (dir) => {
      const out = join(dir, 'out');
      const graph = join(dir, 'graph.yaml');
      await writeFile(
        graph,
        `resources:
  - { kind: file, name: ${out}, type: directory }
  - { kind: file, name: ${out}/a, content: "a\\n" }
  - { kind: file, name: ${out}/b, content: "b\\n" }
`,
      );
      const first = await fsyncsOf(dir, graph);
      const shown = JSON.stringify([...first]);
      for (const f of ['a', 'b']) {
        // The temp file the content is written to, then renamed over `f`.
        const temps = [...first].filter(([p]) => p.startsWith(`${out}/.${f}.`)).reduce((n, [, c]) => n + c, 0);
        assert.ok(temps >= 1, `${f}'s content was never fsync'd: ${shown}`);
      }
      assert.ok((first.get(out) ?? 0) >= 1, `${out} was not fsync'd after a and b were renamed into it: ${shown}`);
      assert.ok((first.get(dir) ?? 0) >= 1, `${dir} was not fsync'd after ${out} was created in it: ${shown}`);

      // Already converged: nothing is written, so nothing needs syncing.
      const second = await fsyncsOf(dir, graph);
      const touched = [...second.keys()].filter((p) => p === dir || p.startsWith(out));
      assert.deepEqual(touched, [], `a converged run synced ${JSON.stringify([...second])}`);
    });
  });
});
