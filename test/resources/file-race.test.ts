import { createOtherUser, type OtherUser } from '../helpers/other-user.js';
import { testWorld } from '../helpers/world.js';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { constants as C, existsSync } from 'node:fs';
import { chmod, chown, lstat, mkdir, mkdtemp, open, readdir, readFile, rm, stat, symlink, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { BackplaneError } from '../../src/errors.js';
import { resourceId } from '../../src/graph/ids.js';
import { fileKind, tempNameSource } from '../../src/resources/file.js';
import type { CheckResult, Resource, ResourceLog } from '../../src/resources/types.js';

/**
 * Race tests for issue #7: a real unprivileged user who owns the directory of a managed file swaps things for
 * symlinks to root-only files in a tight loop (renameat2 RENAME_EXCHANGE) while the file kind repairs mode,
 * owner and content again and again. No file outside the graph may ever change, and each test also proves the
 * attacker really did win swaps, so a pass is not vacuous.
 */

const log: ResourceLog = { change: () => undefined, info: () => undefined, warn: () => undefined, debug: () => undefined };
const isRoot = process.getuid?.() === 0;
const SKIP = isRoot ? false : 'needs root: creates a real unprivileged user to attack the agent';
/** How long each attacker runs at most; it also stops by itself after this. */
const ATTACK_SECONDS = 3;
const ROUNDS = 400;

/** The attacker: exchanges two names as fast as it can, or swaps each temp file it sees for a symlink. */
const HELPER = String.raw`
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
if hasattr(libc, 'renameat2'):
    def exchange(a, b): return libc.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)
else:
    def exchange(a, b): return libc.syscall(316, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)
mode, seconds, limit = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + seconds
done = 0
print('ready', flush=True)
if mode == 'swap':
    a, b = os.fsencode(sys.argv[4]), os.fsencode(sys.argv[5])
    while done < limit and time.monotonic() < deadline:
        if exchange(a, b) == 0:
            done += 1
elif mode == 'plant':
    d, prefix, victim = sys.argv[4], sys.argv[5], sys.argv[6]
    link = os.path.join(d, '.plant')
    while done < limit and time.monotonic() < deadline:
        for n in os.listdir(d):
            p = os.path.join(d, n)
            if not n.startswith(prefix) or os.path.islink(p):
                continue
            try:
                os.symlink(victim, link)
            except FileExistsError:
                pass
            if exchange(os.fsencode(p), os.fsencode(link)) == 0:
                done += 1
                os.unlink(link)
print('done', done, flush=True)
`;

interface User {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
}

let user: User | undefined;
let root = '';
let n = 0;

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout.trim();
}

let other: OtherUser | undefined;

before(() => {
  if (!isRoot) return;
  other = createOtherUser();
  user = { name: other.name, uid: other.uid, gid: other.gid };
});

after(async () => {
  other?.remove();
  if (root !== '') await rm(root, { recursive: true, force: true });
});

function attacker(): User {
  if (user === undefined) throw new Error('no attacker user');
  return user;
}

interface Scene {
  /** Owned by the attacker: where the managed things live. */
  readonly att: string;
  /** Root-only, outside the graph: must never change. */
  readonly victim: string;
  readonly victimDir: string;
  readonly helper: string;
}

const VICTIM = 'root only, outside the graph\n';

async function scene(): Promise<Scene> {
  if (root === '') {
    // tmpfs when there is one: fsync costs nothing there, so each test fits many more repairs into its seconds.
    root = await mkdtemp(existsSync('/dev/shm') ? '/dev/shm/bp-race-' : '/tmp/bp-race-');
    await chmod(root, 0o755);
  }
  const base = join(root, `s${n++}`);
  await mkdir(base, { mode: 0o755 });
  const victim = join(base, 'victim');
  await writeFile(victim, VICTIM, { mode: 0o600 });
  const victimDir = join(base, 'victimdir');
  await mkdir(victimDir, { mode: 0o700 });
  for (const f of ['f', 'g', 'h']) await writeFile(join(victimDir, f), VICTIM, { mode: 0o600 });
  const att = join(base, 'att');
  await mkdir(att, { mode: 0o755 });
  await chown(att, attacker().uid, attacker().gid);
  const helper = join(base, 'attack.py');
  await writeFile(helper, HELPER, { mode: 0o644 });
  return { att, victim, victimDir, helper };
}

interface Attack {
  readonly child: ChildProcess;
  /** Resolves to how many swaps the attacker made. */
  readonly done: Promise<number>;
  stop(): Promise<number>;
}

/** Starts the helper as the attacker (setpriv: real uid/gid, no supplementary groups) and waits until it runs. */
async function attack(s: Scene, args: string[]): Promise<Attack> {
  const u = attacker();
  const child = spawn(
    'setpriv',
    ['--reuid', String(u.uid), '--regid', String(u.gid), '--clear-groups', '/usr/bin/python3', '-I', s.helper, args[0] ?? '', String(ATTACK_SECONDS), '100000000', ...args.slice(1)],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('ready')) resolve();
    });
    child.once('exit', () => reject(new Error(`attacker exited before starting: ${err}`)));
  });
  const done = new Promise<number>((resolve, reject) => {
    child.once('exit', () => {
      const m = /done (\d+)/.exec(out);
      if (m?.[1] === undefined) reject(new Error(`attacker failed: ${err}`));
      else resolve(Number(m[1]));
    });
  });
  done.catch(() => undefined);
  await ready;
  return {
    child,
    done,
    async stop() {
      // Python turns SIGINT into KeyboardInterrupt; simpler to let it run out: it stops by itself within ATTACK_SECONDS.
      return done;
    },
  };
}

function make(params: Record<string, unknown>): Resource {
  const parsed = fileKind.schema.parse(params);
  return fileKind.create(resourceId('file', String(params['path'])), parsed, testWorld());
}

function run(res: Resource): Promise<CheckResult> {
  return res.checkApply({ apply: true, refresh: false, signal: new AbortController().signal, log });
}

async function assertVictimsIntact(s: Scene): Promise<void> {
  for (const p of [s.victim, join(s.victimDir, 'f'), join(s.victimDir, 'g'), join(s.victimDir, 'h')]) {
    const st = await lstat(p);
    assert.ok(st.isFile(), `${p} is still a regular file`);
    assert.equal((st.mode & 0o7777).toString(8), '600', `${p}: mode changed`);
    assert.equal(st.uid, 0, `${p}: owner changed`);
    assert.equal(st.gid, 0, `${p}: group changed`);
    assert.equal(await readFile(p, 'utf8'), VICTIM, `${p}: content changed`);
  }
  assert.deepEqual((await readdir(s.victimDir)).sort(), ['f', 'g', 'h'], 'nothing was added to or removed from the victim directory');
}

/** Opens whichever of `names` is a regular file now, never following a symlink: the test's own edits are safe too. */
async function openFileAmong(names: string[]): Promise<FileHandle | undefined> {
  for (const name of names) {
    try {
      return await open(name, C.O_RDWR | C.O_NOFOLLOW | C.O_NONBLOCK);
    } catch {
      // a symlink (ELOOP) or gone: try the other name
    }
  }
  return undefined;
}

/** Drifts mode, owner or content of the managed file, in turn, through a descriptor. */
async function drift(fh: FileHandle, i: number): Promise<void> {
  const u = attacker();
  if (i % 3 === 0) await fh.chmod(0o600);
  else if (i % 3 === 1) await fh.chown(u.uid, u.gid);
  else {
    await fh.truncate(0);
    await fh.write('drifted\n', 0);
  }
}

interface Tally {
  repairs: number;
  /** Runs with the attacker's symlink at the managed path just before or just after them. */
  symlinkSeen: number;
  refusals: Map<string, number>;
}

function count(t: Tally, err: unknown): void {
  if (!(err instanceof BackplaneError)) throw err;
  const key = err.message.includes('refusing to follow symlink')
    ? 'refused an unsafe symlink'
    : err.message.includes('is a symlink, but')
      ? 'found the symlink at the path'
      : err.message.includes('changed while') || err.message.includes('kept changing')
        ? 'saw the path change under it'
        : `other: ${err.message}`;
  t.refusals.set(key, (t.refusals.get(key) ?? 0) + 1);
}

function report(t: TestContext, tally: Tally, swaps: number): void {
  t.diagnostic(`attacker swaps: ${swaps}; repairs: ${tally.repairs}; symlink at the path around a run: ${tally.symlinkSeen}; ${[...tally.refusals].map(([k, v]) => `${k}: ${v}`).join('; ')}`);
}

describe('file kind under attack by a user who owns the directory', { skip: SKIP }, () => {
  test('the managed file swapped for a symlink to a root-only file while mode, owner and content are repaired', async (t) => {
    const s = await scene();
    const path = join(s.att, 'f');
    const res = make({ path, content: 'managed\n', mode: '0644', owner: 0, group: 0 });
    assert.equal((await run(res)).converged, false);
    await symlink(s.victim, join(s.att, 'lnk'));
    const a = await attack(s, ['swap', path, join(s.att, 'lnk')]);
    const tally: Tally = { repairs: 0, symlinkSeen: 0, refusals: new Map() };
    const deadline = Date.now() + ATTACK_SECONDS * 1000 - 300;
    for (let i = 0; i < ROUNDS && Date.now() < deadline; i++) {
      const fh = await openFileAmong([path, join(s.att, 'lnk')]);
      if (fh !== undefined) {
        await drift(fh, i);
        await fh.close();
      }
      const before = await lstat(path);
      try {
        if (!(await run(res)).converged) tally.repairs++;
      } catch (err) {
        count(tally, err);
      }
      if (before.isSymbolicLink() || (await lstat(path)).isSymbolicLink()) tally.symlinkSeen++;
    }
    const swaps = await a.stop();
    report(t, tally, swaps);
    await assertVictimsIntact(s);
    assert.ok(swaps > 100, 'the attacker really swapped');
    const won = tally.symlinkSeen + (tally.refusals.get('found the symlink at the path') ?? 0) + (tally.refusals.get('saw the path change under it') ?? 0);
    assert.ok(won > 0, 'the symlink was at the path around some repairs: the attacker won swaps');
    assert.ok(tally.repairs > 10, 'the agent repaired the file many times meanwhile');
    assert.equal([...tally.refusals.keys()].filter((k) => k.startsWith('other')).length, 0, 'no unexpected error');
  });

  test('a directory on the way swapped for a symlink to a root-only directory', async (t) => {
    const s = await scene();
    const sub = join(s.att, 'sub');
    await mkdir(sub, { mode: 0o755 });
    const path = join(sub, 'f');
    const res = make({ path, content: 'managed\n', mode: '0644' });
    await run(res);
    await symlink(s.victimDir, join(s.att, 'evil'));
    const a = await attack(s, ['swap', sub, join(s.att, 'evil')]);
    const tally: Tally = { repairs: 0, symlinkSeen: 0, refusals: new Map() };
    const deadline = Date.now() + ATTACK_SECONDS * 1000 - 300;
    for (let i = 0; i < ROUNDS && Date.now() < deadline; i++) {
      // The real sub directory is under one of the two names; drift its f through descriptors.
      for (const name of [sub, join(s.att, 'evil')]) {
        let dir: FileHandle | undefined;
        try {
          dir = await open(name, C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW);
        } catch {
          continue;
        }
        const fh = await openFileAmong([`/proc/self/fd/${dir.fd}/f`]);
        if (fh !== undefined) {
          await drift(fh, i % 3 === 1 ? 0 : i);
          await fh.close();
        }
        await dir.close();
        break;
      }
      try {
        if (!(await run(res)).converged) tally.repairs++;
      } catch (err) {
        count(tally, err);
      }
    }
    const swaps = await a.stop();
    report(t, tally, swaps);
    await assertVictimsIntact(s);
    assert.ok(swaps > 100, 'the attacker really swapped');
    assert.ok((tally.refusals.get('refused an unsafe symlink') ?? 0) > 0, 'some checks met the symlinked directory: the attacker won swaps');
    assert.ok(tally.repairs > 10, 'the agent repaired the file many times meanwhile');
    assert.equal([...tally.refusals.keys()].filter((k) => k.startsWith('other')).length, 0, 'no unexpected error');
  });

  test('purge of a directory whose unmanaged subdirectory is swapped for a symlink mid-walk', async (t) => {
    const s = await scene();
    const pd = join(s.att, 'pd');
    await mkdir(pd, { mode: 0o755 });
    await chown(pd, attacker().uid, attacker().gid);
    const res = make({ path: pd, type: 'directory', purge: true });
    const junk = join(pd, 'junk');
    const evil = join(pd, 'evil');
    const tally: Tally = { repairs: 0, symlinkSeen: 0, refusals: new Map() };
    const deadline = Date.now() + ATTACK_SECONDS * 1000 - 300;
    const a = await attack(s, ['swap', junk, evil]);
    for (let i = 0; i < ROUNDS && Date.now() < deadline; i++) {
      // Fresh bait each round: an unmanaged directory full of files, and the symlink the attacker swaps it with.
      try {
        await mkdir(junk);
        for (const f of ['f', 'g', 'h']) await writeFile(join(junk, f), 'junk\n');
        await symlink(s.victimDir, evil);
      } catch {
        // the attacker moved something meanwhile; purge cleans up whatever is there
      }
      try {
        if (!(await run(res)).converged) tally.repairs++;
      } catch (err) {
        count(tally, err);
      }
    }
    const swaps = await a.stop();
    report(t, tally, swaps);
    await assertVictimsIntact(s);
    assert.ok(swaps > 100, 'the attacker really swapped');
    assert.ok(tally.repairs > 10, 'purge ran many times meanwhile');
    assert.equal([...tally.refusals.keys()].filter((k) => k.startsWith('other')).length, 0, 'no unexpected error');
  });

  test('symlinks planted at the temp file names are never followed, a fresh name is used', async () => {
    const s = await scene();
    const path = join(s.att, 'f');
    const res = make({ path, content: 'managed\n', mode: '0644', owner: 0, group: 0 });
    const saved = tempNameSource.next;
    let k = 0;
    tempNameSource.next = () => `planted${k++}`;
    try {
      // The attacker guessed the first three names the write will try.
      const planted = [0, 1, 2].map((i) => join(s.att, `.f.bp-tmp-${process.pid}-planted${i}`));
      for (const p of planted) sh('setpriv', ['--reuid', String(attacker().uid), '--regid', String(attacker().gid), '--clear-groups', 'ln', '-s', s.victim, p]);
      const r = await run(res);
      assert.deepEqual(r.changes, ['created']);
      assert.equal(await readFile(path, 'utf8'), 'managed\n');
      assert.equal((await stat(path)).mode & 0o7777, 0o644);
      for (const p of planted) assert.ok((await lstat(p)).isSymbolicLink(), `${p} left alone`);
      // Every name taken: a clear error, and still nothing outside the graph changed.
      k = 0;
      for (let i = 3; i < 8; i++) await symlink(s.victim, join(s.att, `.f.bp-tmp-${process.pid}-planted${i}`));
      await writeFile(path, 'drifted\n');
      await assert.rejects(run(res), (err: unknown) => err instanceof BackplaneError && /cannot create .*planted7.*EEXIST/s.test(err.message));
    } finally {
      tempNameSource.next = saved;
    }
    await assertVictimsIntact(s);
  });

  test('temp files swapped for symlinks to a root-only file while content is rewritten', async (t) => {
    const s = await scene();
    const path = join(s.att, 'f');
    // force: a symlink the attacker got renamed into place is replaced by the next run.
    const res = make({ path, content: 'managed\n', mode: '0644', owner: 0, group: 0, force: true });
    await run(res);
    const a = await attack(s, ['plant', s.att, '.f.bp-tmp-', s.victim]);
    const tally: Tally = { repairs: 0, symlinkSeen: 0, refusals: new Map() };
    const deadline = Date.now() + ATTACK_SECONDS * 1000 - 300;
    for (let i = 0; i < ROUNDS && Date.now() < deadline; i++) {
      const fh = await openFileAmong([path]);
      if (fh !== undefined) {
        await drift(fh, 2);
        await fh.close();
      }
      try {
        if (!(await run(res)).converged) tally.repairs++;
      } catch (err) {
        count(tally, err);
      }
    }
    const swaps = await a.stop();
    report(t, tally, swaps);
    await assertVictimsIntact(s);
    assert.ok(swaps > 0, 'the attacker swapped some temp files for symlinks');
    const noticed = tally.refusals.get('saw the path change under it') ?? 0;
    assert.ok(noticed > 0, 'the agent noticed its temp file was swapped');
    // A swapped write is a rewrite too: it wrote, fsynced, set mode and owner and renamed, then saw the swap.
    assert.ok(tally.repairs + noticed > 20, 'the agent rewrote the file many times meanwhile');
    assert.equal([...tally.refusals.keys()].filter((k) => k.startsWith('other')).length, 0, 'no unexpected error');
  });
});

describe('file kind follows only the symlinks root put there', { skip: SKIP }, () => {
  test('a source behind a symlink the user planted is refused; one in a root-only directory is followed', async () => {
    const s = await scene();
    const dest = join(s.att, 'copy');
    // The user's directory: the source there is a symlink to the root-only victim.
    const planted = join(s.att, 'src');
    await symlink(s.victim, planted);
    await rejectsRefusal(run(make({ path: dest, source: planted, mode: '0644' })), /refusing to follow symlink .*src/);
    await assert.rejects(lstat(dest), 'nothing was written');
    // A directory on the way the user swapped for a symlink: refused the same way.
    await symlink(s.victimDir, join(s.att, 'd'));
    await rejectsRefusal(run(make({ path: dest, source: join(s.att, 'd', 'f'), mode: '0644' })), /refusing to follow symlink .*att\/d /);
    // A symlink root made in a root-only directory is trusted.
    const rootOnly = join(s.victimDir, '..', 'rootlinks');
    await mkdir(rootOnly, { mode: 0o755 });
    await writeFile(join(rootOnly, 'real'), 'public\n');
    await symlink('real', join(rootOnly, 'alias'));
    const r = await run(make({ path: dest, source: join(rootOnly, 'alias'), mode: '0644' }));
    assert.deepEqual(r.changes, ['created']);
    assert.equal(await readFile(dest, 'utf8'), 'public\n');
    await assertVictimsIntact(s);
  });

  test('a declared symlink gets its owner on the link itself, never on its target', async () => {
    const s = await scene();
    const path = join(s.att, 'link');
    const u = attacker();
    const res = make({ path, type: 'symlink', target: s.victim, owner: u.uid, group: u.gid });
    assert.deepEqual((await run(res)).changes, ['created']);
    assert.equal((await lstat(path)).uid, u.uid);
    // Drift the link's owner: the repair goes to the link again.
    sh('chown', ['-h', '0:0', path]);
    assert.deepEqual((await run(res)).changes, [`owner 0 -> ${u.uid}`, `group 0 -> ${u.gid}`]);
    assert.equal((await lstat(path)).uid, u.uid);
    assert.equal((await run(res)).converged, true);
    await assertVictimsIntact(s);
  });
});

async function rejectsRefusal(p: Promise<unknown>, re: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof BackplaneError, String(err));
    assert.match(err.message, re);
    assert.ok(err.resource !== undefined, 'the error names the resource');
    return true;
  });
}
