import assert from 'node:assert/strict';
import { chmod, chown, link, lstat, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { prepareLogFile, rotateIfNeeded, tailLines } from '../../src/resources/svc/logfile.js';
import { LogFileError, spawnProc } from '../../src/resources/svc/proc.js';
import { createOtherUser, skipReason, type OtherUser } from '../helpers/other-user.js';

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'bp-svclog-'));
  dirs.push(d);
  return d;
}

const PRECIOUS = 'root:$y$precious:19000:0:99999:7:::\n';

/** A root-owned file outside any graph: what a planted link points at. */
async function victim(): Promise<string> {
  const p = join(await tempDir(), 'shadow');
  await writeFile(p, PRECIOUS, { mode: 0o600 });
  return p;
}

async function unchanged(p: string): Promise<void> {
  assert.equal(await readFile(p, 'utf8'), PRECIOUS, `${p} must not change`);
  assert.equal((await stat(p)).mode & 0o777, 0o600);
}

/** Starts `sh -c script` with its output in `out`; resolves once it has exited. */
async function run(out: string, script = 'echo hello'): Promise<void> {
  const p = await spawnProc({ file: 'sh', args: ['-c', script], cwd: '/', env: { PATH: '/usr/bin:/bin' }, stdoutPath: out, stderrPath: out });
  await p.exited;
}

describe('svc log files cannot be pointed at files the graph never named', { skip: skipReason }, () => {
  let other: OtherUser;
  /** A directory the service's user owns, inside a root-owned one: the usual /var/log/<service>/. */
  let logs: string;
  before(async () => {
    other = createOtherUser();
    const base = await tempDir();
    await chmod(base, 0o755);
    logs = join(base, 'logs');
    await mkdir(logs);
    await chown(logs, other.uid, other.gid);
  });
  after(async () => {
    other.remove();
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  });

  const plant = async (code: string): Promise<void> => {
    const r = await other.node(`import fs from 'node:fs';\n${code}`);
    assert.equal(r.status, 0, r.stderr);
  };

  test('a symlink planted at the log path is refused; its target never changes', async () => {
    const target = await victim();
    const out = join(logs, 'out.log');
    await plant(`fs.symlinkSync(${JSON.stringify(target)}, ${JSON.stringify(out)});`);
    await prepareLogFile(out);
    await assert.rejects(run(out), (err: unknown) => {
      assert.ok(err instanceof LogFileError);
      assert.match(err.message, new RegExp(`cannot open ${out} for the process's output: ${out} is a symlink; refusing to follow it`));
      return true;
    });
    // Rotation does not go through it either (copyFile + truncate by name would have emptied the target).
    await assert.rejects(rotateIfNeeded(out, 1, 3), /is a symlink; refusing to follow it/);
    assert.deepEqual(await tailLines(out, 0, 10), [], 'its lines are not read into the agent log either');
    await unchanged(target);
    await rm(out);
  });

  test('a hard link, a fifo, another user\'s file at the log path are refused; the agent does not hang', async () => {
    const target = await victim();
    const out = join(logs, 'hard.log');
    // protected_hardlinks keeps the other user from linking root's file; root does it here to stand in for a host
    // without that protection.
    await link(target, out);
    await assert.rejects(run(out), /has 2 hard links; refusing to write to it/);
    await rm(out);
    await unchanged(target);

    const fifo = join(logs, 'fifo.log');
    await plant(`(await import('node:child_process')).execFileSync('mkfifo', [${JSON.stringify(fifo)}]);`);
    await assert.rejects(run(fifo), /fifo\.log is not a regular file|ENXIO/);

    const theirs = join(logs, 'theirs.log');
    await plant(`fs.writeFileSync(${JSON.stringify(theirs)}, 'mine\\n');`);
    await assert.rejects(run(theirs), new RegExp(`owned by uid ${other.uid}, neither root nor the service's user`));
    assert.equal(await readFile(theirs, 'utf8'), 'mine\n');
  });

  test('a normal log works: created 0640, /dev/null accepted', async () => {
    const out = join(logs, 'ok.log');
    await prepareLogFile(out);
    await run(out);
    assert.equal(await readFile(out, 'utf8'), 'hello\n');
    assert.equal((await stat(out)).mode & 0o777, 0o640);
    await run('/dev/null');
  });

  test('rotation: symlinks planted at the copy name and at a numbered name are never written through', async () => {
    const target = await victim();
    const target2 = await victim();
    const out = join(logs, 'rot.log');
    await prepareLogFile(out);
    await run(out, 'i=0; while [ $i -lt 200 ]; do echo line-$i; i=$((i+1)); done');
    const before = await readFile(out, 'utf8');
    await plant(`fs.symlinkSync(${JSON.stringify(target)}, ${JSON.stringify(`${out}.rotating`)}); fs.symlinkSync(${JSON.stringify(target2)}, ${JSON.stringify(`${out}.1`)});`);
    assert.equal(await rotateIfNeeded(out, 100, 3), true);
    await unchanged(target);
    await unchanged(target2);
    assert.equal(await readFile(`${out}.1`, 'utf8'), before, 'the copy holds the log');
    assert.ok((await lstat(`${out}.1`)).isFile());
    assert.equal((await stat(out)).size, 0, 'the log was cut');
    const names = (await readdir(logs)).filter((n) => n.startsWith('rot.log')).sort();
    assert.deepEqual(names, ['rot.log', 'rot.log.1'], 'the planted link was removed, not moved along');
    // keep: 0 cuts in place, through the fd it checked.
    await writeFile(out, before);
    assert.equal(await rotateIfNeeded(out, 100, 0), true);
    assert.equal((await stat(out)).size, 0);
  });

  test('a log under a directory another user can swap is refused before anything is written', async () => {
    const target = await victim();
    const base = join(logs, 'sub');
    await plant(`fs.mkdirSync(${JSON.stringify(base)});`);
    await assert.rejects(prepareLogFile(join(base, 'deeper', 'out.log')), new RegExp(`lies in ${logs}, owned by uid ${other.uid}, who could replace it with a symlink`));
    // A symlinked directory of theirs: they choose where it points.
    await plant(`fs.symlinkSync(${JSON.stringify(join(target, '..'))}, ${JSON.stringify(join(logs, 'elsewhere'))});`);
    await assert.rejects(prepareLogFile(join(logs, 'elsewhere', 'shadow')), /is a symlink owned by uid/);
    await unchanged(target);
  });
});
