import assert from 'node:assert/strict';
import { createHook } from 'node:async_hooks';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { chmod, chown, lstat, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, posix } from 'node:path';
import { after, test } from 'node:test';
import { resourceId } from '../../src/graph/ids.js';
import { fileKind, ioSlotsWaiting, tempNameSource } from '../../src/resources/file.js';
import type { CheckResult, Resource, ResourceLog } from '../../src/resources/types.js';
import { testWorld } from '../helpers/world.js';

/**
 * The converged check of a file on a local filesystem runs on the main thread (four system calls), not through the
 * thread pool: what made a 1,000-file check pass slower than CFEngine's. Counted here are the thread-pool requests
 * (and file handles) a check creates; everything that is not plainly in place must still take the full path.
 */

const log: ResourceLog = { change: () => undefined, info: () => undefined, warn: () => undefined, debug: () => undefined };
const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

function make(params: Record<string, unknown>): Resource {
  return fileKind.create(resourceId('file', String(params['path'])), fileKind.schema.parse(params), testWorld());
}

/** Runs one check and counts the asynchronous filesystem requests it made. */
async function counted(res: Resource, apply = true): Promise<{ result: CheckResult; fsRequests: number }> {
  let fsRequests = 0;
  const hook = createHook({
    init(_id, type) {
      if (type === 'FSREQCALLBACK' || type === 'FSREQPROMISE' || type === 'FILEHANDLE' || type === 'STATWATCHER') fsRequests++;
    },
  });
  hook.enable();
  try {
    const result = await res.checkApply({ apply, refresh: false, signal: new AbortController().signal, log });
    return { result, fsRequests };
  } finally {
    hook.disable();
  }
}

test('a converged file or directory is checked without the thread pool; drift still takes the full path', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bp-file-fast-'));
  dirs.push(dir);
  const path = join(dir, 'f');
  const file = make({ path, content: 'hello\n', mode: '0640' });
  const sub = make({ path: join(dir, 'sub'), type: 'directory', mode: '0750' });

  // The first runs create them (and learn that the directory is trusted and local).
  assert.equal((await counted(file)).result.converged, false);
  assert.equal((await counted(sub)).result.converged, false);

  // Creating a directory makes the trusted-directory cache start over (forgetTrustedDirs): one look to refill it.
  for (const res of [file, sub]) assert.equal((await counted(res)).result.converged, true);
  for (const res of [file, sub]) {
    const { result, fsRequests } = await counted(res);
    assert.equal(result.converged, true);
    assert.equal(fsRequests, 0, 'a converged check went through the thread pool');
  }

  // Same size, other bytes: the fast check must not call that converged, and the full path repairs it.
  await writeFile(path, 'HELLO\n');
  const drifted = await counted(file);
  assert.deepEqual(drifted.result.changes, ['content changed']);
  assert.ok(drifted.fsRequests > 0);
  assert.equal(await readFile(path, 'utf8'), 'hello\n');

  // Mode drift on the file and on the directory.
  await chmod(path, 0o644);
  assert.deepEqual((await counted(file)).result.changes, ['mode 0644 -> 0640']);
  await chmod(join(dir, 'sub'), 0o755);
  assert.deepEqual((await counted(sub)).result.changes, ['mode 0755 -> 0750']);

  // Noop mode: the same answer, nothing changed.
  await writeFile(path, 'hello, longer\n');
  const noop = await counted(file, false);
  assert.equal(noop.result.converged, false);
  assert.equal(await readFile(path, 'utf8'), 'hello, longer\n');
});

test('what the fast check cannot judge takes the full path: a source, a purged directory, a named owner', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bp-file-fast-'));
  dirs.push(dir);
  const src = join(dir, 'src');
  await writeFile(src, 'copied\n');
  const cases = [
    make({ path: join(dir, 'copy'), source: src }),
    make({ path: join(dir, 'purged'), type: 'directory', purge: true }),
    make({ path: join(dir, 'owned'), content: 'x', owner: 'root' }),
  ];
  for (const res of cases) {
    assert.equal((await counted(res)).result.converged, false);
    const again = await counted(res);
    assert.equal(again.result.converged, true);
    assert.ok(again.fsRequests > 0, 'a check the fast path cannot judge was answered by it');
  }
});

/**
 * A cold run's create in a directory only root can change, on a local filesystem: the small calls on the main
 * thread, only the fsyncs through the thread pool (the same write through FileHandles was seven round trips per file).
 */
test('an absent file in a trusted local directory is created with only its fsyncs in the thread pool', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bp-file-fast-'));
  dirs.push(dir);
  // Learn the directory (trusted, local) first, as the run's earlier files do.
  assert.equal((await counted(make({ path: join(dir, 'first'), content: 'x' }))).result.converged, false);

  const path = join(dir, 'secret');
  const { result, fsRequests } = await counted(make({ path, content: 'hush\n', mode: '0640', owner: 0, group: 0 }));
  assert.deepEqual(result.changes, ['created']);
  // The file's fsync, and the directory's (open, fsync, close, its file handle).
  assert.ok(fsRequests <= 5, `the create made ${fsRequests} thread-pool requests`);
  assert.equal(await readFile(path, 'utf8'), 'hush\n');
  const st = await lstat(path);
  assert.equal(st.mode & 0o7777, 0o640);
  assert.equal(st.uid, 0);
  assert.deepEqual((await readdir(dir)).filter((n) => n.includes('.bp-tmp-')), [], 'a temp file was left behind');

  // A name planted at the temp file's first name (by root: nobody else can write here) is never opened: the next is used.
  const saved = tempNameSource.next;
  let k = 0;
  tempNameSource.next = () => `planted${k++}`;
  try {
    await symlink('/etc/passwd', join(dir, `.other.bp-tmp-${process.pid}-planted0`));
    const other = await counted(make({ path: join(dir, 'other'), content: 'mine\n' }));
    assert.deepEqual(other.result.changes, ['created']);
    assert.equal(await readFile(join(dir, 'other'), 'utf8'), 'mine\n');
    assert.ok((await lstat(join(dir, `.other.bp-tmp-${process.pid}-planted0`))).isSymbolicLink());
  } finally {
    tempNameSource.next = saved;
  }
});

test('a create in a directory others can write takes the full path', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bp-file-fast-'));
  dirs.push(dir);
  await chmod(dir, 0o777);
  assert.equal((await counted(make({ path: join(dir, 'first'), content: 'x' }))).result.converged, false);
  const { result, fsRequests } = await counted(make({ path: join(dir, 'f'), content: 'shared\n', mode: '0644' }));
  assert.deepEqual(result.changes, ['created']);
  assert.ok(fsRequests > 5, `a create in a shared directory made only ${fsRequests} thread-pool requests`);
  assert.equal(await readFile(join(dir, 'f'), 'utf8'), 'shared\n');
});

/**
 * Once its directory is known (trusted, local, its temp files listed), a converged check is answered at once: no
 * promise of its own and no look at the signal, for which the worker would have to make an AbortController.
 */
test('a converged check in a known directory makes no promise and never asks for its signal', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bp-file-fast-'));
  dirs.push(dir);
  const path = join(dir, 'f');
  const file = make({ path, content: 'hello\n', mode: '0640' });
  let asked = 0;
  const ctx = {
    apply: true,
    refresh: false,
    log,
    get signal(): AbortSignal {
      asked++;
      return new AbortController().signal;
    },
  };
  assert.deepEqual((await file.checkApply(ctx)).changes, ['created']);
  assert.equal((await file.checkApply(ctx)).converged, true);
  // A fresh resource (a one-shot run's) in the same directory, on its first, applying check: nothing to sweep either.
  const fresh = make({ path, content: 'hello\n', mode: '0640' });
  for (const res of [file, fresh]) {
    asked = 0;
    let promises = 0;
    const hook = createHook({
      init(_id, type) {
        if (type === 'PROMISE') promises++;
      },
    });
    hook.enable();
    let pending: Promise<CheckResult>;
    try {
      pending = res.checkApply(ctx);
    } finally {
      hook.disable();
    }
    assert.equal((await pending).converged, true);
    assert.equal(promises, 0, 'a converged check made promises');
    assert.equal(asked, 0, 'a converged check asked for its signal');
  }
  // Drift still takes the full path, which does use the signal.
  await writeFile(path, 'HELLO\n');
  assert.deepEqual((await fresh.checkApply(ctx)).changes, ['content changed']);
  assert.ok(asked > 0);
});

test('the fast check opens a present file without an lstat first, and still tells missing, symlink and fifo apart', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bp-file-fast-'));
  dirs.push(dir);
  const names = ['a', 'b', 'c', 'd'];
  const files = names.map((n) => make({ path: join(dir, n), content: `${n}\n` }));
  for (const f of files) assert.deepEqual((await counted(f)).result.changes, ['created']);
  // Missing after present, present after missing: each is seen for what it is.
  await rm(join(dir, 'b'));
  const again = [];
  for (const f of files) again.push((await counted(f)).result.changes);
  assert.deepEqual(again, [[], ['created'], [], []]);
  // A symlink to a file with the same content is not "converged": it is not followed, and not replaced unforced.
  await writeFile(join(dir, 'target'), 'c\n');
  await rm(join(dir, 'c'));
  await symlink(join(dir, 'target'), join(dir, 'c'));
  await assert.rejects(files[2]?.checkApply({ apply: true, refresh: false, signal: new AbortController().signal, log }) ?? Promise.resolve(), /symlink/);
  assert.ok((await lstat(join(dir, 'c'))).isSymbolicLink());

  if (spawnSync('strace', ['-V'], { stdio: 'ignore' }).status !== 0) return;
  // Converged files checked by a fresh process under strace: an open per file, no lstat (nor stat) of it.
  const script = `
    import { fileKind } from ${JSON.stringify(new URL('../../src/resources/file.ts', import.meta.url).href)};
    import { testWorld } from ${JSON.stringify(new URL('../helpers/world.ts', import.meta.url).href)};
    const log = { change() {}, info() {}, warn() {}, debug() {} };
    for (const n of ['a', 'b', 'd']) {
      const path = ${JSON.stringify(dir)} + '/' + n;
      const res = fileKind.create('file[' + path + ']', fileKind.schema.parse({ path, content: n + '\\n' }), testWorld());
      const r = await res.checkApply({ apply: true, refresh: false, signal: new AbortController().signal, log });
      if (!r.converged) throw new Error(path + ' not converged');
    }`;
  const trace = join(dir, 'trace');
  const run = spawnSync('strace', ['-f', '-qq', '-o', trace, '-e', 'trace=%stat,%file', process.execPath, '--import', 'tsx', '--input-type=module', '-e', script], {
    encoding: 'utf8',
  });
  assert.equal(run.status, 0, run.stderr);
  const calls = (await readFile(trace, 'utf8')).split('\n').filter((l) => /"[^"]*\/[abd]"/.test(l) && l.includes(dir));
  const stats = calls.filter((l) => /\b(lstat|stat|newfstatat|statx|fstatat64)\(/.test(l));
  assert.deepEqual(stats, [], `the converged checks stat'ed the files by name:\n${calls.join('\n')}`);
  assert.ok(calls.filter((l) => /\bopen(at)?\(/.test(l)).length >= 3, calls.join('\n'));
});

/**
 * A repair of content drift in a directory only root can change takes the create's path (only the fsyncs in the
 * thread pool), and keeps the mode and owner nobody declared, as the full path does; metadata drift still takes
 * the full path, which changes it in place.
 */
test('a drifted file in a trusted local directory is rewritten with only its fsyncs in the thread pool', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bp-file-fast-'));
  dirs.push(dir);
  const path = join(dir, 'f');
  const file = make({ path, content: 'hello\n' });
  assert.deepEqual((await counted(file)).result.changes, ['created']);
  await writeFile(path, 'altered, longer\n');
  await chmod(path, 0o600);
  await chown(path, 1234, 1235);
  const { result, fsRequests } = await counted(file);
  assert.deepEqual(result.changes, ['content changed']);
  assert.ok(fsRequests <= 5, `the rewrite made ${fsRequests} thread-pool requests`);
  assert.equal(await readFile(path, 'utf8'), 'hello\n');
  const st = await lstat(path);
  assert.deepEqual([st.mode & 0o7777, st.uid, st.gid], [0o600, 1234, 1235], 'undeclared mode or owner not carried over');
  assert.deepEqual((await readdir(dir)).filter((n) => n.includes('.bp-tmp-')), [], 'a temp file was left behind');

  // Declared mode drifted as well: the full path reports both.
  const moded = make({ path: join(dir, 'm'), content: 'm\n', mode: '0644' });
  assert.deepEqual((await counted(moded)).result.changes, ['created']);
  await writeFile(join(dir, 'm'), 'M\n');
  await chmod(join(dir, 'm'), 0o600);
  const both = await counted(moded);
  assert.deepEqual(both.result.changes, ['content changed', 'mode 0600 -> 0644']);
  assert.ok(both.fsRequests > 5);
  assert.equal(await readFile(join(dir, 'm'), 'utf8'), 'm\n');
  assert.equal((await lstat(join(dir, 'm'))).mode & 0o7777, 0o644);
});

test('paths already normal skip posix.normalize and every other path is normalized exactly as before', () => {
  const cases = ['/a', '/a/b', '/a//b', '//a', '/a/./b', '/a/../b', '/a/b/', '/a/b/.', '/a/b/..', '/', '/.', '/..', '/a/.b', '/a/..b', '/a/b.', '/a/...', '/a/.../b', '/.a', '/..a', '/a/b..', '/a/./', '/a/../', '/a/.b/./c'];
  for (const path of cases) {
    const n = posix.normalize(path);
    const want = n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
    const edges = fileKind.autoEdges?.({ ...fileKind.schema.parse({ path: '/x', content: 'x' }), path });
    assert.deepEqual(edges?.provides, [`path:${want}`], path);
  }
});

/** Promises made while `fn` runs synchronously (a check answered at once makes none). */
function promisesMadeBy<T>(fn: () => T): { value: T; promises: number } {
  let promises = 0;
  const hook = createHook({
    init(_id, type) {
      if (type === 'PROMISE') promises++;
    },
  });
  hook.enable();
  try {
    return { value: fn(), promises };
  } finally {
    hook.disable();
  }
}

const CTX = (apply: boolean) => ({ apply, refresh: false, signal: new AbortController().signal, log });

test("the temp-file listing leaves out this process's own writes: a file with one in flight keeps its fast check", async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bp-file-fast-'));
  dirs.push(dir);
  const path = join(dir, 'f');
  await writeFile(path, 'hello\n');
  await chmod(path, 0o644);
  // A write of this process in flight (the listing runs beside writes now): never swept, and not a reason to look.
  const own = `.f.bp-tmp-${process.pid}-0badc0de`;
  await writeFile(join(dir, own), 'half');
  // Another file of the directory lists the temp files first.
  assert.deepEqual((await make({ path: join(dir, 'g'), content: 'g\n' }).checkApply(CTX(true))).changes, ['created']);
  const fresh = make({ path, content: 'hello\n', mode: '0644' });
  const { value, promises } = promisesMadeBy(() => fresh.checkApply(CTX(true)));
  assert.equal((await value).converged, true);
  assert.equal(promises, 0, 'the check took the slow path: the listing named this process’s own temp file');
  assert.ok((await readdir(dir)).includes(own), 'a live writer’s (our own) temp file was removed');
});

test('a directory that was missing when first asked about is asked again once it exists (its statfs is not kept)', async () => {
  const dir = join(await mkdtemp(join(tmpdir(), 'bp-file-fast-')), 'later');
  dirs.push(dirname(dir));
  const path = join(dir, 'f');
  // Checked before the directory exists: its statfs (sent beside the trust check) fails.
  await make({ path, content: 'x\n' })
    .checkApply(CTX(false))
    .catch(() => undefined);
  // Made by a resource, as a graph would (which also drops what the trust cache knew of the missing directory).
  assert.deepEqual((await make({ path: dir, type: 'directory' }).checkApply(CTX(true))).changes, ['created']);
  await writeFile(path, 'x\n');
  const file = make({ path, content: 'x\n' });
  assert.equal((await file.checkApply(CTX(false))).converged, true);
  const { value, promises } = promisesMadeBy(() => file.checkApply(CTX(false)));
  assert.equal((await value).converged, true);
  assert.equal(promises, 0, 'the directory was taken for not local after a failed statfs');
});

test('a check waits for an I/O slot before it looks: of 100 started at once, 64 go ahead and 36 wait untouched', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bp-file-fast-'));
  dirs.push(dir);
  // A directory nothing is known about yet: every check takes the full, asynchronous path.
  const files = Array.from({ length: 100 }, (_, i) => make({ path: join(dir, `f${i}`), content: `${i}\n` }));
  assert.equal(ioSlotsWaiting(), 0);
  const runs = files.map((f) => f.checkApply(CTX(false)));
  assert.equal(ioSlotsWaiting(), 36, 'checks started without waiting for a slot: thousands then move through the same awaits at once');
  const results = await Promise.all(runs);
  assert.ok(results.every((r) => !r.converged && r.changes.join() === 'created'));
  assert.equal(ioSlotsWaiting(), 0);
});

test('creates on the main thread take a bounded share of each event-loop turn (fsync completions go between them)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bp-file-fast-'));
  dirs.push(dir);
  // The directory's answers known first, so the 64 creates below all take the main-thread path at once.
  await make({ path: join(dir, 'first'), content: 'x\n' }).checkApply(CTX(true));
  const files = Array.from({ length: 64 }, (_, i) => make({ path: join(dir, `f${i}`), content: `${i}\n`, mode: '0644' }));
  let turn = 0;
  let ticking = true;
  const tick = (): void => {
    turn++;
    if (ticking) setImmediate(tick);
  };
  setImmediate(tick);
  const perTurn = new Map<number, number>();
  const real = fs.openSync;
  // Each temp-file create made to take 0.5 ms (a loaded VM's ext4 takes ~0.3 ms): 64 in one turn would be 32 ms.
  fs.openSync = ((...args: Parameters<typeof real>) => {
    if (String(args[0]).includes('.bp-tmp-')) {
      perTurn.set(turn, (perTurn.get(turn) ?? 0) + 1);
      const until = performance.now() + 0.5;
      while (performance.now() < until);
    }
    return real(...args);
  });
  syncBuiltinESMExports();
  try {
    const results = await Promise.all(files.map((f) => f.checkApply(CTX(true))));
    assert.ok(results.every((r) => r.changes.join() === 'created'));
  } finally {
    fs.openSync = real;
    syncBuiltinESMExports();
    ticking = false;
  }
  const counts = [...perTurn.values()];
  assert.equal(
    counts.reduce((a, b) => a + b, 0),
    64,
  );
  assert.ok(Math.max(...counts) <= 8, `up to ${Math.max(...counts)} creates in one turn`);
});

test('checks that waited for a turn go before checks that arrive in it', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bp-file-fast-'));
  dirs.push(dir);
  const names = Array.from({ length: 40 }, (_, i) => `f${i}`);
  for (const n of names) await writeFile(join(dir, n), `${n}\n`);
  // The directory's answers known, so each check below runs on the main thread.
  assert.equal((await make({ path: join(dir, 'f0'), content: 'f0\n' }).checkApply(CTX(false))).converged, true);
  const order: string[] = [];
  const real = fs.openSync;
  // Each look made to take 1 ms: 20 checks do not fit in one turn's share.
  fs.openSync = ((...args: Parameters<typeof real>) => {
    const path = String(args[0]);
    if (path.startsWith(dir)) {
      order.push(path.slice(dir.length + 1));
      const until = performance.now() + 1;
      while (performance.now() < until);
    }
    return real(...args);
  });
  syncBuiltinESMExports();
  try {
    // Arrives in the next turn, before the checks that waited for it are resumed.
    const later = new Promise<CheckResult[]>((resolve) =>
      setImmediate(() => resolve(Promise.all(names.slice(20).map((n) => make({ path: join(dir, n), content: `${n}\n` }).checkApply(CTX(false)))))),
    );
    const first = await Promise.all(names.slice(0, 20).map((n) => make({ path: join(dir, n), content: `${n}\n` }).checkApply(CTX(false))));
    assert.ok([...first, ...(await later)].every((r) => r.converged));
  } finally {
    fs.openSync = real;
    syncBuiltinESMExports();
  }
  const lastOfFirst = Math.max(...names.slice(0, 20).map((n) => order.indexOf(n)));
  const firstOfLater = Math.min(...names.slice(20).map((n) => order.indexOf(n)));
  assert.ok(lastOfFirst < firstOfLater, `checks that arrived later went first: ${order.join(' ')}`);
});
