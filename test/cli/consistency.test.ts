import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { withTempDir } from '../helpers/engine.js';
import { BIN, ensureBuilt, runCli } from '../helpers/cli.js';
import { createOtherUser, skipReason } from '../helpers/other-user.js';

const ESC = '\u001b';

/** The CLI's small promises (README "Commands" and "Behaviour of run"), each against the built CLI. */
describe('CLI consistency (real processes)', () => {
  test('validate and graph take the file as an argument as well as with -f', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'g.yaml');
      await writeFile(graph, `resources:\n  - kind: noop\n    name: a\n`);
      for (const args of [['validate', graph], ['validate', '-f', graph]]) {
        const r = await runCli(args);
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stdout, /^ok: 1 resources/);
      }
      const g = await runCli(['graph', graph, '--format', 'json']);
      assert.equal(g.code, 0, g.stderr);
      assert.deepEqual((JSON.parse(g.stdout) as { order: string[] }).order, ['noop[a]']);
      const none = await runCli(['validate']);
      assert.equal(none.code, 2);
      assert.match(none.stderr, /no graph file given/);
    });
  });

  test('bad flags are refused at start with exit 2 and what is wrong, before anything is applied', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'g.yaml');
      const marker = join(dir, 'marker');
      await writeFile(graph, `resources:\n  - kind: file\n    name: ${marker}\n    content: ""\n`);
      const aFile = join(dir, 'a-file');
      await writeFile(aFile, '');
      const cases: [string[], RegExp][] = [
        [['--parallel', '-5'], /--parallel must be at least 0, got -5/],
        [['--etcd', 'not-a-url'], /--etcd "not-a-url" is not an etcd client URL/],
        [['--state-dir', aFile], new RegExp(`state directory ${aFile} exists and is not a directory`)],
        [['--graphviz', join(dir, 'missing', 'g.dot')], new RegExp(`--graphviz ${dir}/missing/g.dot cannot be written: the directory ${dir}/missing does not exist`)],
        [['--converged-timeout', '5x'], /--converged-timeout "5x" is not a duration/],
      ];
      for (const [flags, message] of cases) {
        const r = await runCli(['run', '--file', graph, '--state-dir', join(dir, 'state'), '--converged-timeout', '0', ...flags], { timeoutMs: 20_000 });
        assert.equal(r.code, 2, `${flags.join(' ')}: code ${r.code}\n${r.stderr}`);
        assert.match(r.stderr, message, flags.join(' '));
        assert.doesNotMatch(r.stderr, /^\s+at /m, `${flags.join(' ')}: a stack trace`);
        assert.equal(existsSync(marker), false, `${flags.join(' ')}: the graph was applied`);
      }
    });
  });

  test('`backplane schema | head -1` exits quietly', () => {
    ensureBuilt();
    // The schema is far larger than a pipe's buffer, so writing it fails with EPIPE once head has exited.
    const r = spawnSync('bash', ['-c', 'set -o pipefail; "$0" "$1" schema | head -1 >/dev/null', process.execPath, BIN], { encoding: 'utf8', timeout: 20_000 });
    assert.equal(r.stderr, '');
    assert.equal(r.status, 0);
  });

  test('read-only commands create no state dir or files', { skip: skipReason }, async () => {
    ensureBuilt();
    await withTempDir(async (dir) => {
      // A non-root user, whose state dir would be $XDG_STATE_HOME/backplane, in a fresh home of its own.
      const user = createOtherUser();
      try {
        await chmod(dir, 0o755);
        const home = join(dir, 'home');
        await mkdir(home);
        await chmod(home, 0o777);
        const graph = join(dir, 'g.yaml');
        await writeFile(graph, `resources:\n  - kind: noop\n    name: a\n`);
        for (const args of [['validate', graph], ['graph', graph], ['graph', graph, '--format', 'json'], ['schema'], ['kinds']]) {
          const r = spawnSync(process.execPath, [BIN, ...args], {
            uid: user.uid,
            gid: user.gid,
            cwd: home,
            env: { PATH: '/usr/bin:/bin', HOME: home, XDG_STATE_HOME: join(home, 'state') },
            encoding: 'utf8',
            timeout: 20_000,
          });
          assert.equal(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
          assert.deepEqual(await readdir(home), [], `${args.join(' ')} created files in a fresh home`);
        }
      } finally {
        user.remove();
      }
    });
  });

  test('a failure line names the resource once; colour only on a terminal and without NO_COLOR', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'g.yaml');
      await writeFile(graph, `resources:\n  - kind: exec\n    name: broken\n    cmd: ["false"]\n`);
      const args = ['run', '--file', graph, '--state-dir', join(dir, 'state'), '--converged-timeout', '0'];
      const piped = await runCli(args, { timeoutMs: 20_000 });
      assert.equal(piped.code, 1, piped.stderr);
      assert.match(piped.stderr, /ERROR exec\[broken\]: failed: `false` exited with code 1/);
      assert.match(piped.stderr, /ERROR exec\[broken\] failed: `false` exited with code 1/);
      assert.doesNotMatch(piped.stderr, /exec\[broken\]:? failed: exec\[broken\]/);
      assert.ok(!piped.stderr.includes(`${ESC}[`), 'escape codes in a pipe');

      // script(1) gives the CLI a real terminal.
      const onTty = (noColor: string | undefined): string => {
        const cmd = [process.execPath, BIN, ...args].map((a) => `'${a}'`).join(' ');
        const env: NodeJS.ProcessEnv = { ...process.env };
        delete env['NO_COLOR'];
        if (noColor !== undefined) env['NO_COLOR'] = noColor;
        const r = spawnSync('script', ['-qec', cmd, '/dev/null'], { encoding: 'utf8', env, timeout: 20_000 });
        assert.equal(r.status, 1, r.stdout);
        return r.stdout;
      };
      const coloured = onTty(undefined);
      assert.ok(coloured.includes(`${ESC}[31mERROR${ESC}[0m ${ESC}[1mexec[broken]${ESC}[0m: failed`), coloured);
      assert.ok(!onTty('1').includes(`${ESC}[`), 'escape codes with NO_COLOR=1');
    });
  });
});
