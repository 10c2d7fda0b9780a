import { testWorld } from '../helpers/world.js';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { chmod, lstat, mkdir, mkdtemp, readFile, readdir, readlink, rename, rm, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { BackplaneError } from '../../src/errors.js';
import { resourceId } from '../../src/graph/ids.js';
import { fileKind } from '../../src/resources/file.js';
import type { CheckResult, Resource, ResourceLog, ResourceWorld } from '../../src/resources/types.js';

const log: ResourceLog = { change: () => undefined, info: () => undefined, warn: () => undefined, debug: () => undefined };

function world(...provided: string[]): ResourceWorld {
  return testWorld({ provided });
}

function make(params: Record<string, unknown>, w: ResourceWorld = world()): Resource {
  const path = params['path'];
  assert.equal(typeof path, 'string');
  const parsed = fileKind.schema.parse(params);
  return fileKind.create(resourceId('file', String(path)), parsed, w);
}

function run(res: Resource, apply = true, signal: AbortSignal = new AbortController().signal): Promise<CheckResult> {
  return res.checkApply({ apply, refresh: false, signal, log });
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch {
    return false;
  }
}

async function rejectsWith(p: Promise<unknown>, check: (e: BackplaneError) => void): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof BackplaneError, `expected a BackplaneError, got ${String(err)}`);
    check(err);
    return true;
  });
}

const modeOf = async (p: string): Promise<number> => (await stat(p)).mode & 0o7777;

let root = '';
let n = 0;
/** A fresh directory per test, so tests never see each other's files. */
async function fresh(): Promise<string> {
  const dir = join(root, `t${n++}`);
  await mkdir(dir);
  return dir;
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'bp-file-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('file kind', () => {
  test('path defaults to the name; auto-edges provide the path and want each ancestor', () => {
    assert.deepEqual(fileKind.defaults?.('/etc/motd'), { path: '/etc/motd' });
    const edges = fileKind.autoEdges?.(fileKind.schema.parse({ path: '/a/b/c' }));
    assert.deepEqual(edges?.provides, ['path:/a/b/c']);
    assert.deepEqual(edges?.wants, ['path:/a/b', 'path:/a']);
    assert.deepEqual(fileKind.autoEdges?.(fileKind.schema.parse({ path: '/a/b/' }))?.provides, ['path:/a/b']);
    const withSource = fileKind.autoEdges?.(fileKind.schema.parse({ path: '/x/y', source: '/src/y' }));
    assert.deepEqual(withSource?.wants, ['path:/x', 'path:/src/y']);
    assert.equal(fileKind.refreshable, false);
  });

  test('creates a file with content and mode, then is converged', async () => {
    const dir = await fresh();
    const path = join(dir, 'motd');
    const res = make({ path, content: 'hello\n', mode: '0600' });
    assert.deepEqual(await run(res), { converged: false, changes: ['created'] });
    assert.equal(await readFile(path, 'utf8'), 'hello\n');
    assert.equal(await modeOf(path), 0o600);
    assert.deepEqual(await run(res), { converged: true, changes: [] });
  });

  test('fixes drifted content (same size and different size), mode, and keeps undeclared mode on rewrite', async () => {
    const dir = await fresh();
    const path = join(dir, 'f');
    const res = make({ path, content: 'abc' });
    await run(res);
    await writeFile(path, 'xyz');
    assert.deepEqual((await run(res)).changes, ['content changed']);
    assert.equal(await readFile(path, 'utf8'), 'abc');
    await chmod(path, 0o640);
    await writeFile(path, 'longer content');
    assert.deepEqual((await run(res)).changes, ['content changed']);
    assert.equal(await readFile(path, 'utf8'), 'abc');
    assert.equal(await modeOf(path), 0o640, 'an undeclared mode survives the atomic replace');

    const withMode = make({ path, content: 'abc', mode: 0o644 });
    assert.deepEqual((await run(withMode)).changes, ['mode 0640 -> 0644']);
    assert.equal(await modeOf(path), 0o644);
    assert.equal((await run(withMode)).converged, true);
  });

  test('without content or source only existence and metadata are managed', async () => {
    const dir = await fresh();
    const path = join(dir, 'empty');
    const res = make({ path, mode: '0640' });
    assert.deepEqual((await run(res)).changes, ['created']);
    assert.equal(await readFile(path, 'utf8'), '');
    await writeFile(path, 'someone else wrote this');
    assert.equal((await run(res)).converged, true);
    assert.equal(await readFile(path, 'utf8'), 'someone else wrote this');
  });

  test('noop mode reports changes and a unified diff, and touches nothing', async () => {
    const dir = await fresh();
    const path = join(dir, 'conf');
    await writeFile(path, 'a\nb\nc\n', { mode: 0o600 });
    const before = await stat(path);
    const res = make({ path, content: 'a\nB\nc\n', mode: '0644' });
    const result = await run(res, false);
    assert.equal(result.converged, false);
    assert.deepEqual(result.changes, ['content changed', 'mode 0600 -> 0644']);
    assert.ok(result.diff !== undefined);
    assert.match(result.diff, /^--- /m);
    assert.match(result.diff, /^\+\+\+ /m);
    assert.match(result.diff, /^@@ /m);
    assert.match(result.diff, /^-b$/m);
    assert.match(result.diff, /^\+B$/m);
    const afterSt = await stat(path);
    assert.equal(await readFile(path, 'utf8'), 'a\nb\nc\n');
    assert.equal(afterSt.ino, before.ino);
    assert.equal(afterSt.mtimeMs, before.mtimeMs);
    assert.equal(afterSt.mode & 0o7777, 0o600);

    const missing = join(dir, 'new');
    const create = await run(make({ path: missing, content: 'x\n' }), false);
    assert.deepEqual(create.changes, ['created']);
    assert.match(create.diff ?? '', /^\+x$/m);
    assert.equal(await exists(missing), false);
  });

  test('writes atomically: a new inode replaces the target, no temp files remain, readers never see partial content', async () => {
    const dir = await fresh();
    const path = join(dir, 'big');
    const a = 'a'.repeat(2 << 20);
    const b = 'b'.repeat(3 << 20);
    const resA = make({ path, content: a });
    const resB = make({ path, content: b });
    await run(resA);
    const ino = (await stat(path)).ino;
    await run(resB);
    // Checked right after one rewrite: over several rewrites the filesystem may hand the old inode number out again.
    assert.notEqual((await stat(path)).ino, ino, 'content is replaced by rename, not rewritten in place');
    let stop = false;
    let reads = 0;
    const reader = (async () => {
      while (!stop) {
        const text = await readFile(path, 'utf8');
        assert.ok(text === a || text === b, `partial read of ${text.length} bytes`);
        reads++;
      }
    })();
    for (let i = 0; i < 10; i++) await run(i % 2 === 0 ? resB : resA);
    stop = true;
    await reader;
    assert.ok(reads > 0);
    assert.deepEqual(await readdir(dir), ['big']);
  });

  test('kill -9 during writes leaves the old or the new content, never a mix', async () => {
    const dir = await fresh();
    const path = join(dir, 'target');
    const moduleUrl = new URL('../../src/resources/file.ts', import.meta.url).href;
    // The child rewrites the file between two 4 MiB contents as fast as it can until it is killed.
    const script = `
      const { fileKind } = await import(${JSON.stringify(moduleUrl)});
      const log = { change() {}, info() {}, warn() {}, debug() {} };
      const world = { isProvided: () => false };
      const mk = (c) => fileKind.create('file[t]', fileKind.schema.parse({ path: ${JSON.stringify(path)}, content: c.repeat(4 << 20) }), world);
      const res = [mk('a'), mk('b')];
      const signal = new AbortController().signal;
      for (let i = 0; ; i++) {
        await res[i % 2].checkApply({ apply: true, refresh: false, signal, log });
        if (i === 1) process.stdout.write('running\\n');
      }`;
    const cwd = fileURLToPath(new URL('../..', import.meta.url));
    for (let round = 0; round < 3; round++) {
      const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd, stdio: ['ignore', 'pipe', 'inherit'] });
      await new Promise<void>((resolve, reject) => {
        child.stdout.once('data', () => resolve());
        child.once('exit', (code) => reject(new Error(`child exited early with ${String(code)}`)));
      });
      await sleep(20 + Math.random() * 150);
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGKILL');
      await exited;
      const text = await readFile(path, 'utf8');
      assert.equal(text.length, 4 << 20);
      assert.ok(text === 'a'.repeat(4 << 20) || text === 'b'.repeat(4 << 20), 'target is one whole version');
    }
    // A killed write may leave its temp file behind; it is hidden and named after its target.
    for (const name of await readdir(dir)) assert.ok(name === 'target' || name.startsWith('.target.bp-tmp-'), name);
  });

  test('copies from source; a source edit is drift; a missing source is a clear error', async () => {
    const dir = await fresh();
    const src = join(dir, 'src.txt');
    const path = join(dir, 'copy.txt');
    await writeFile(src, 'from source\n');
    const res = make({ path, source: src, mode: 0o644 });
    assert.deepEqual((await run(res)).changes, ['created']);
    assert.equal(await readFile(path, 'utf8'), 'from source\n');
    assert.equal(await modeOf(path), 0o644);
    assert.equal((await run(res)).converged, true);
    await writeFile(src, 'from SOURCE\n');
    const noop = await run(res, false);
    assert.deepEqual(noop.changes, ['content changed']);
    assert.match(noop.diff ?? '', /^\+from SOURCE$/m);
    assert.deepEqual((await run(res)).changes, ['content changed']);
    assert.equal(await readFile(path, 'utf8'), 'from SOURCE\n');
    // Larger than one comparison chunk, differing only at the end.
    const big = 'x'.repeat(200_000);
    await writeFile(src, big + '1');
    await run(res);
    await writeFile(path, big + '2');
    assert.deepEqual((await run(res)).changes, ['content changed']);
    assert.equal(await readFile(path, 'utf8'), big + '1');
    assert.equal((await run(res)).converged, true);

    const gone = make({ path, source: join(dir, 'nope') });
    await rejectsWith(run(gone), (e) => {
      assert.equal(e.code, 'E_APPLY');
      assert.match(e.message, /source file .*nope does not exist/);
      assert.equal(e.resource, `file[${path}]`);
    });
  });

  test('absent removes a file, a symlink and (declared as one) a directory recursively', async () => {
    const dir = await fresh();
    const path = join(dir, 'gone');
    await writeFile(path, 'x');
    const res = make({ path, state: 'absent' });
    assert.deepEqual(await run(res, false), { converged: false, changes: ['removed'] });
    assert.equal(await exists(path), true);
    assert.deepEqual(await run(res), { converged: false, changes: ['removed'] });
    assert.equal(await exists(path), false);
    assert.deepEqual(await run(res), { converged: true, changes: [] });

    await symlink('/nowhere', path);
    assert.deepEqual((await run(res)).changes, ['removed']);
    assert.equal(await exists(path), false);

    await mkdir(join(path, 'sub'), { recursive: true });
    await writeFile(join(path, 'sub', 'f'), 'x');
    await rejectsWith(run(res), (e) => {
      assert.equal(e.code, 'E_APPLY');
      assert.match(e.hint ?? '', /force: true/);
    });
    assert.equal(await exists(path), true, 'a file declared absent does not delete a directory tree');
    assert.deepEqual((await run(make({ path, state: 'absent', type: 'directory' }))).changes, ['removed']);
    assert.equal(await exists(path), false);
  });

  test('symlink: creates, converges, fixes a wrong target', async () => {
    const dir = await fresh();
    const path = join(dir, 'link');
    const res = make({ path, type: 'symlink', target: '/etc/hostname' });
    assert.deepEqual((await run(res)).changes, ['created']);
    assert.equal(await readlink(path), '/etc/hostname');
    assert.equal((await run(res)).converged, true);
    await unlink(path);
    await symlink('/etc/passwd', path);
    assert.deepEqual((await run(res, false)).changes, ['target /etc/passwd -> /etc/hostname']);
    assert.equal(await readlink(path), '/etc/passwd');
    assert.deepEqual((await run(res)).changes, ['target /etc/passwd -> /etc/hostname']);
    assert.equal(await readlink(path), '/etc/hostname');
    assert.deepEqual(await readdir(dir), ['link']);
  });

  test('directory: creates with mode, fixes mode', async () => {
    const dir = await fresh();
    const path = join(dir, 'd');
    const res = make({ path, type: 'directory', mode: '0750' });
    assert.deepEqual((await run(res)).changes, ['created']);
    assert.ok((await stat(path)).isDirectory());
    assert.equal(await modeOf(path), 0o750);
    assert.equal((await run(res)).converged, true);
    await chmod(path, 0o700);
    assert.deepEqual((await run(res)).changes, ['mode 0700 -> 0750']);
    assert.equal(await modeOf(path), 0o750);
  });

  test('purge removes unmanaged entries and keeps managed ones', async () => {
    const dir = await fresh();
    const path = join(dir, 'conf.d');
    await mkdir(join(path, 'stray-dir', 'deep'), { recursive: true });
    await writeFile(join(path, 'stray-dir', 'deep', 'x'), 'x');
    await writeFile(join(path, 'managed.conf'), 'keep');
    await writeFile(join(path, 'stray.conf'), 'drop');
    await mkdir(join(path, 'managed-dir'));
    // Temp files: one of a write in flight in this process (kept), one a killed earlier process left (purged).
    const inFlight = `.managed.conf.bp-tmp-${process.pid}-0a1b2c3d`;
    const debris = `.managed.conf.bp-tmp-999999999-0a1b2c3d`;
    await writeFile(join(path, inFlight), 'partial');
    await writeFile(join(path, debris), 'partial');
    const w = world(`path:${path}`, `path:${join(path, 'managed.conf')}`, `path:${join(path, 'managed-dir')}`);
    const res = make({ path, type: 'directory', purge: true }, w);
    const noop = await run(res, false);
    assert.deepEqual(
      [...noop.changes].sort(),
      [`purged ${join(path, debris)}`, `purged ${join(path, 'stray-dir')}`, `purged ${join(path, 'stray.conf')}`],
    );
    assert.equal(await exists(join(path, 'stray.conf')), true);
    assert.equal((await run(res)).converged, false);
    assert.deepEqual((await readdir(path)).sort(), [inFlight, 'managed-dir', 'managed.conf']);
    await rm(join(path, inFlight));
    assert.equal((await run(res)).converged, true);
  });

  test('a wrong type at the path is an error unless force: true', async () => {
    const dir = await fresh();
    const path = join(dir, 'x');
    await mkdir(join(path, 'inner'), { recursive: true });
    const res = make({ path, content: 'file now\n' });
    await rejectsWith(run(res), (e) => {
      assert.equal(e.code, 'E_APPLY');
      assert.equal(e.resource, `file[${path}]`);
      assert.match(e.message, /is a directory, but this resource declares a file/);
      assert.match(e.hint ?? '', /force: true/);
    });
    assert.ok((await stat(path)).isDirectory());
    const forced = make({ path, content: 'file now\n', force: true });
    assert.deepEqual((await run(forced, false)).changes, ['replaced directory with file']);
    assert.ok((await stat(path)).isDirectory());
    assert.deepEqual((await run(forced)).changes, ['replaced directory with file']);
    assert.equal(await readFile(path, 'utf8'), 'file now\n');
    assert.equal((await run(forced)).converged, true);

    const asDir = make({ path, type: 'directory' });
    await rejectsWith(run(asDir), (e) => assert.match(e.message, /is a regular file, but this resource declares a directory/));
    assert.deepEqual((await run(make({ path, type: 'directory', force: true }))).changes, ['replaced regular file with directory']);
    assert.ok((await stat(path)).isDirectory());

    const asLink = make({ path, type: 'symlink', target: '/tmp', force: true });
    assert.deepEqual((await run(asLink)).changes, ['replaced directory with symlink']);
    assert.equal(await readlink(path), '/tmp');
  });

  test('a missing parent directory is an error naming the fix', async () => {
    const dir = await fresh();
    const parent = join(dir, 'missing');
    const path = join(parent, 'f');
    const res = make({ path, content: 'x' });
    await rejectsWith(run(res), (e) => {
      assert.equal(e.code, 'E_APPLY');
      assert.equal(e.resource, `file[${path}]`);
      assert.match(e.message, /parent directory .*missing does not exist/);
      assert.match(e.hint ?? '', /type: directory/);
      assert.equal(e.retryable, true);
    });
    assert.equal(await exists(parent), false);
    // In noop mode a parent that the graph manages would have been created first.
    const managed = make({ path, content: 'x' }, world(`path:${parent}`));
    assert.deepEqual((await run(managed, false)).changes, ['created']);
    await rejectsWith(run(managed), (e) => assert.match(e.message, /does not exist/));
    await mkdir(parent);
    assert.deepEqual((await run(res)).changes, ['created']);
  });

  test('owner and group by numeric id and by name', async () => {
    const dir = await fresh();
    const path = join(dir, 'owned');
    const res = make({ path, content: 'x', owner: 1, group: 1 });
    assert.deepEqual((await run(res)).changes, ['created']);
    let st = await stat(path);
    assert.equal(st.uid, 1);
    assert.equal(st.gid, 1);
    assert.equal((await run(res)).converged, true);

    const toRoot = make({ path, owner: 0, group: '0' });
    assert.deepEqual((await run(toRoot)).changes, ['owner 1 -> 0', 'group 1 -> 0']);
    st = await stat(path);
    assert.equal(st.uid, 0);
    assert.equal(st.gid, 0);

    // Names come from /etc/passwd and /etc/group; root is uid/gid 0 everywhere.
    assert.equal((await run(make({ path, owner: 'root', group: 'root' }))).converged, true);
    await rejectsWith(run(make({ path, owner: 'no-such-user-bp' })), (e) => {
      assert.equal(e.code, 'E_APPLY');
      assert.match(e.message, /user "no-such-user-bp" does not exist/);
    });

    // A content rewrite keeps an undeclared owner.
    await run(make({ path, owner: 1 }));
    await run(make({ path, content: 'new' }));
    assert.equal((await stat(path)).uid, 1);
  });

  test('an aborted signal stops before changing anything', async () => {
    const dir = await fresh();
    const path = join(dir, 'f');
    const ac = new AbortController();
    ac.abort();
    await rejectsWith(run(make({ path, content: 'x' }), true, ac.signal), (e) => assert.equal(e.code, 'E_ABORTED'));
    assert.equal(await exists(path), false);
  });
});

describe('file kind on a full disk', () => {
  test('a write that does not fit fails clearly, keeps the old content and leaves no temp file (real ENOSPC)', async (t) => {
    const mnt = await fresh();
    const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mnt], { encoding: 'utf8' });
    if (mounted.status !== 0) {
      t.skip(`cannot mount a tmpfs here (${mounted.stderr.trim() || 'not root'})`);
      return;
    }
    try {
      const path = join(mnt, 'config');
      await run(make({ path, content: 'old content\n' }));
      await rejectsWith(run(make({ path, content: 'x'.repeat(256 * 1024) })), (e) => {
        assert.equal(e.code, 'E_APPLY');
        assert.match(e.format(), /ENOSPC|no space/i);
        assert.match(e.format(), /config/, 'names the file');
        assert.ok((e.hint ?? '').length > 0, 'says what to do');
      });
      assert.equal(await readFile(path, 'utf8'), 'old content\n', 'nothing lost');
      assert.deepEqual(await readdir(mnt), ['config'], 'no temp file left behind');
    } finally {
      spawnSync('umount', [mnt]);
    }
  });
});

describe('file watch', () => {
  // A failed assertion must not leave a watch running: it would keep the test process alive forever.
  const controllers: AbortController[] = [];
  after(() => {
    for (const ac of controllers) ac.abort();
  });

  /** Runs a resource's watch; `expect(action)` resolves once the action produced a change event. */
  async function watching(res: Resource) {
    const ac = new AbortController();
    controllers.push(ac);
    const events: string[] = [];
    let waiter: (() => void) | undefined;
    let readyCalls = 0;
    let onReady: () => void = () => undefined;
    const ready = new Promise<void>((resolve) => (onReady = resolve));
    const done = res.watch?.({
      signal: ac.signal,
      ready: () => {
        readyCalls++;
        onReady();
      },
      changed: (reason) => {
        events.push(reason);
        waiter?.();
      },
      log,
    });
    assert.ok(done !== undefined);
    await ready;
    // Let events of the setup itself drain before each expectation starts counting.
    await sleep(30);
    return {
      ac,
      done,
      readyCalls: () => readyCalls,
      /** `match`: part of the reason that must appear, so a spurious event (e.g. a re-attach) does not count. */
      async expect(what: string, action: () => Promise<unknown>, match?: string): Promise<void> {
        events.length = 0;
        const fired = new Promise<void>((resolve) => {
          const check = (): void => {
            if (events.some((e) => match === undefined || e.includes(match))) resolve();
          };
          waiter = check;
        });
        await action();
        const timeout = sleep(2000).then(() => 'timeout' as const);
        assert.notEqual(await Promise.race([fired.then(() => 'fired' as const), timeout]), 'timeout', `no change event for ${what}`);
        waiter = undefined;
        await sleep(30);
      },
    };
  }

  test('fires on edit, chmod, rename-over and delete of a file; aborts cleanly', async () => {
    const dir = await fresh();
    const path = join(dir, 'watched');
    const res = make({ path, content: 'x' });
    await run(res);
    const w = await watching(res);
    assert.equal(w.readyCalls(), 1);
    await w.expect('content edit', () => writeFile(path, 'edited'), path);
    await w.expect('chmod', () => chmod(path, 0o600), path);
    await w.expect(
      'rename over',
      async () => {
        await writeFile(join(dir, 'other'), 'replacement');
        await rename(join(dir, 'other'), path);
      },
      path,
    );
    // The watch survives the replacement: the new file is watched too.
    await w.expect('edit after replace', () => writeFile(path, 'edited again'), path);
    await w.expect('delete', () => unlink(path), path);
    await w.expect('re-create', () => writeFile(path, 'x'), path);
    w.ac.abort();
    const outcome = await Promise.race([w.done.then(() => 'resolved' as const), sleep(1000).then(() => 'hung' as const)]);
    assert.equal(outcome, 'resolved');
  });

  test('its own write is no event (checked once, not twice); a change by someone else just after it is', async () => {
    const dir = await fresh();
    const path = join(dir, 'echo');
    const res = make({ path, content: 'mine\n', mode: '0644' });
    const events: string[] = [];
    const ac = new AbortController();
    controllers.push(ac);
    let ready: () => void = () => undefined;
    const watching = new Promise<void>((resolve) => (ready = resolve));
    const saw = new Promise<void>((resolve) => {
      void res.watch?.({ signal: ac.signal, ready, changed: (r) => (events.push(r), resolve()), log });
    });
    await watching;
    assert.equal((await run(res)).converged, false, 'the first run writes the file');
    assert.equal(await readFile(path, 'utf8'), 'mine\n');
    // The rename's own inotify event arrives within milliseconds; it must not come through as drift.
    await sleep(300);
    assert.deepEqual(events, [], 'the write of the resource itself woke its watch');
    // Rewritten by someone else at once (same size, inside the echo window): that must still be seen.
    await writeFile(path, 'THEM\n');
    const outcome = await Promise.race([saw.then(() => 'fired' as const), sleep(2000).then(() => 'timeout' as const)]);
    assert.equal(outcome, 'fired', 'a change by another writer right after our write was taken for our echo');
    ac.abort();
  });

  test('fires when a file that must be absent appears, also below a missing directory', async () => {
    const dir = await fresh();
    const path = join(dir, 'must-not-exist');
    const w = await watching(make({ path, state: 'absent' }));
    await w.expect('creation', () => writeFile(path, 'x'), path);
    w.ac.abort();
    await w.done;

    const deep = join(dir, 'later', 'f');
    const w2 = await watching(make({ path: deep, state: 'absent' }));
    await w2.expect('parent created', () => mkdir(join(dir, 'later')));
    await w2.expect('creation inside the new parent', () => writeFile(deep, 'x'), deep);
    w2.ac.abort();
    await w2.done;
  });

  test('a source edit re-triggers; a purged directory notices new entries', async () => {
    const dir = await fresh();
    const src = join(dir, 'src');
    await writeFile(src, 'one');
    const w = await watching(make({ path: join(dir, 'copy'), source: src }));
    await w.expect('source edit', () => writeFile(src, 'two'), src);
    w.ac.abort();
    await w.done;

    const purged = join(dir, 'purged');
    await mkdir(purged);
    const w2 = await watching(make({ path: purged, type: 'directory', purge: true }));
    await w2.expect('new entry', () => writeFile(join(purged, 'stray'), 'x'), join(purged, 'stray'));
    await w2.expect('chmod of the directory', () => chmod(purged, 0o700), purged);
    await w2.expect('directory removed', () => rm(purged, { recursive: true }), purged);
    await w2.expect('directory re-created', () => mkdir(purged), purged);
    await w2.expect('entry in the re-created directory', () => writeFile(join(purged, 'stray2'), 'x'), join(purged, 'stray2'));
    w2.ac.abort();
    await w2.done;
  });

  test('keeps watching a file whose directory is removed and at once re-created', async () => {
    const dir = await fresh();
    const sub = join(dir, 'sub');
    const path = join(sub, 'f');
    await mkdir(sub);
    const w = await watching(make({ path, content: 'x' }));
    // Synchronous, so the new directory exists before the watcher hears of the old one's removal; ext4 then often
    // hands the new directory the old inode number, which a stat-based liveness check cannot tell apart.
    await w.expect('directory replaced', async () => {
      rmSync(sub, { recursive: true });
      mkdirSync(sub);
    });
    await w.expect('creation in the new directory', () => writeFile(path, 'y'), path);
    w.ac.abort();
    await w.done;
  });

  test('aborting before ready still resolves', async () => {
    const ac = new AbortController();
    ac.abort();
    const res = make({ path: join(await fresh(), 'f') });
    await res.watch?.({ signal: ac.signal, ready: () => undefined, changed: () => undefined, log });
  });
});
