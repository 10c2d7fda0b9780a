import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { mkdtemp, readdir, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, describe, test } from 'node:test';
import { collectInstanceDirs, parseInstanceDirName, pickCollectable, type InstanceDir } from '../../src/agent/instance-gc.js';
import { createLogger } from '../../src/log.js';
import { cgroupName, detectHierarchy, removeCgroup } from '../../src/resources/svc/cgroup.js';
import { parseStat } from '../../src/resources/svc/proc.js';
import { resourceStateDir } from '../../src/state-dir.js';

/**
 * The collection of stopped instances' state directories (src/agent/instance-gc.ts): which names it takes for an
 * instance's, which of those it keeps, and a pass over a real state directory, with real processes and real cgroups
 * (this machine's hierarchy; the test runs as root, as the agent does).
 */

const log = createLogger({ level: 'silent' });
const dirs: string[] = [];
const children: ChildProcess[] = [];
const cgroups: string[] = [];
after(async () => {
  for (const c of children) c.kill('SIGKILL');
  await removeCgroup({ dirs: cgroups }, 3000);
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

async function stateRoot(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'bp-instance-gc-'));
  dirs.push(d);
  const root = join(d, 'state');
  mkdirSync(root, { mode: 0o700 });
  return root;
}

/** An instance's directory as its svc leaves it: logs and a pid record; written `ageMs` ago. */
async function instanceDir(root: string, allocId: string, ageMs: number, record?: { pid: number; starttime: string }): Promise<string> {
  const dir = await resourceStateDir(root, `svc[${allocId}]`);
  writeFileSync(join(dir, 'stdout.log'), `output of ${allocId}\n`);
  writeFileSync(join(dir, 'stderr.log'), '');
  if (record !== undefined) writeFileSync(join(dir, 'process.json'), JSON.stringify({ ...record, pgid: record.pid, startedAt: 1, specHash: 'h', argv: [] }));
  const t = (Date.now() - ageMs) / 1000;
  for (const f of await readdir(dir)) utimesSync(join(dir, f), t, t);
  utimesSync(dir, t, t);
  return dir;
}

const names = async (root: string): Promise<string[]> => (await readdir(join(root, 'resources'))).sort();
const HOUR = 3_600_000;

describe('instance directory names', () => {
  test("an instance's directory gives back its alloc id, checked against the name's hash", async () => {
    const root = await stateRoot();
    for (const id of ['web.0.0000abcd', 'a.123456.ffffffff', `${'s'.repeat(63)}.12.01234567`]) {
      const dir = await resourceStateDir(root, `svc[${id}]`);
      assert.deepEqual(parseInstanceDirName(basename(dir)), { allocId: id, service: id.split('.')[0] });
    }
  });

  test('anything else is not an instance: another kind, a hand-written svc, a wrong hash, a name cut short', async () => {
    const root = await stateRoot();
    const good = basename(await resourceStateDir(root, 'svc[web.0.0000abcd]'));
    const others = [
      basename(await resourceStateDir(root, 'file[/etc/web.0.0000abcd]')),
      basename(await resourceStateDir(root, 'svc[web]')),
      basename(await resourceStateDir(root, 'svc[Web.0.0000abcd]')),
      basename(await resourceStateDir(root, 'exec[web.0.0000abcd]')),
      // An index of 7 digits: no assignment record can carry it (records.ts), so no instance has it.
      basename(await resourceStateDir(root, 'svc[web.1234567.0000abcd]')),
      // 63 characters of name and a 3-digit index: resourceStateDir cut the name at 80, so no id can be checked.
      basename(await resourceStateDir(root, `svc[${'s'.repeat(63)}.123.01234567]`)),
      good.replace(/-[0-9a-f]{12}$/, '-000000000000'),
      good.replace('0000abcd', '0000abce'),
      `.gc-${good}`,
    ];
    for (const n of others) assert.equal(parseInstanceDirName(n), undefined, n);
  });
});

describe('which stopped instances are kept', () => {
  const d = (service: string, n: number, lastUsed: number): InstanceDir => ({ allocId: `${service}.${n}.0000000${n}`, service, name: `svc_${service}.${n}`, lastUsed });
  const now = 100 * HOUR;

  test('per service the `keep` most recently used stay; the rest go', () => {
    const dirs = [d('web', 1, now - 5000), d('web', 2, now - 1000), d('web', 3, now - 3000), d('api', 1, now - 9000), d('web', 4, now - 4000)];
    const gone = pickCollectable(dirs, { keep: 2, maxAgeMs: HOUR }, now).map((x) => x.allocId);
    assert.deepEqual(gone.sort(), ['web.1.00000001', 'web.4.00000004']);
    assert.deepEqual(pickCollectable(dirs, { keep: 0, maxAgeMs: HOUR }, now).length, 5, 'keep 0: every one goes');
  });

  test('one not written for maxAgeMs goes even among the kept; ties are broken by name, the same every pass', () => {
    const dirs = [d('web', 1, now - 2 * HOUR), d('web', 2, now - 1000), d('db', 1, now - HOUR - 1), d('db', 2, now - HOUR)];
    assert.deepEqual(pickCollectable(dirs, { keep: 5, maxAgeMs: HOUR }, now).map((x) => x.allocId).sort(), ['db.1.00000001', 'web.1.00000001']);
    const tied = [d('web', 2, now), d('web', 1, now), d('web', 3, now)];
    assert.deepEqual(pickCollectable(tied, { keep: 1, maxAgeMs: HOUR }, now).map((x) => x.allocId), ['web.2.00000002', 'web.3.00000003']);
    assert.deepEqual(pickCollectable([...tied].reverse(), { keep: 1, maxAgeMs: HOUR }, now).map((x) => x.allocId), ['web.2.00000002', 'web.3.00000003']);
  });
});

describe('a pass over a state directory', () => {
  test('stopped instances beyond the kept ones go with their logs; others, and what is in use, stay', async () => {
    const root = await stateRoot();
    const old = await instanceDir(root, 'web.0.00000000', 3 * HOUR);
    const newer = await instanceDir(root, 'web.1.00000001', 2 * HOUR);
    const newest = await instanceDir(root, 'web.2.00000002', HOUR);
    const inUse = await instanceDir(root, 'web.3.00000003', 10 * HOUR);
    const other = await instanceDir(root, 'api.0.0000000a', 5 * HOUR);
    const handWritten = await resourceStateDir(root, 'svc[web]');
    writeFileSync(join(handWritten, 'stdout.log'), 'kept\n');
    const fileRes = await resourceStateDir(root, 'file[/etc/x]');
    const r = await collectInstanceDirs({ root, inUse: (id) => id === 'web.3.00000003', policy: { keep: 2, maxAgeMs: 24 * HOUR }, log });
    assert.deepEqual(r.removed, [basename(old)]);
    assert.deepEqual(await names(root), [newer, newest, inUse, other, handWritten, fileRes].map((x) => basename(x)).sort());
    assert.equal(readFileSync(join(handWritten, 'stdout.log'), 'utf8'), 'kept\n');
    // The age limit, then: the api instance (5 h) and the web ones over 1.5 h go; the one in use stays, however old.
    const r2 = await collectInstanceDirs({ root, inUse: (id) => id === 'web.3.00000003', policy: { keep: 2, maxAgeMs: 1.5 * HOUR }, log });
    assert.deepEqual(r2.removed.sort(), [basename(other), basename(newer)].sort());
    assert.deepEqual(await names(root), [newest, inUse, handWritten, fileRes].map((x) => basename(x)).sort());
  });

  test('an instance whose process still runs, or whose cgroup holds a process, is left alone; an empty cgroup goes', async () => {
    const root = await stateRoot();
    const h = await detectHierarchy();
    const cgRoots = [...new Set(h.v1.values()), ...(h.v2 === undefined ? [] : [h.v2])];
    assert.ok(cgRoots.length > 0, 'this machine has a cgroup hierarchy');
    const sleeper = (): { child: ChildProcess; starttime: string } => {
      const child = spawn('/bin/sleep', ['60'], { stdio: 'ignore' });
      children.push(child);
      const st = parseStat(readFileSync(`/proc/${child.pid}/stat`, 'utf8'));
      assert.ok(st !== undefined && child.pid !== undefined);
      return { child, starttime: st.starttime };
    };
    // Its recorded process alive, with the recorded start time.
    const a = sleeper();
    const running = await instanceDir(root, 'web.0.00000000', 3 * HOUR, { pid: a.child.pid!, starttime: a.starttime });
    // The pid alive but another start time: a reused pid, not the instance.
    const reused = await instanceDir(root, 'web.1.00000001', 3 * HOUR, { pid: a.child.pid!, starttime: String(Number(a.starttime) + 1) });
    // No live record, but a process in its cgroup (a child that left the service's process group).
    const b = sleeper();
    const inCgroup = await instanceDir(root, 'web.2.00000002', 3 * HOUR);
    const busyCg = cgroupName('svc[web.2.00000002]', inCgroup);
    // Dead, with empty cgroups left (an instance killed by its fence).
    const fenced = await instanceDir(root, 'web.3.00000003', 3 * HOUR);
    const emptyCg = cgroupName('svc[web.3.00000003]', fenced);
    for (const r of cgRoots) {
      for (const cg of [busyCg, emptyCg]) {
        mkdirSync(join(r, cg), { recursive: true });
        cgroups.push(join(r, cg));
      }
    }
    for (const r of cgRoots) writeFileSync(join(r, busyCg, 'cgroup.procs'), String(b.child.pid));
    const r = await collectInstanceDirs({ root, inUse: () => false, policy: { keep: 0, maxAgeMs: HOUR }, log });
    assert.deepEqual(r.removed.sort(), [basename(reused), basename(fenced)].sort());
    assert.deepEqual(r.busy.sort(), [basename(running), basename(inCgroup)].sort());
    assert.equal(r.cgroups, cgRoots.length, 'the empty cgroups went, in every hierarchy');
    for (const cgr of cgRoots) assert.ok(!existsSync(join(cgr, emptyCg)), `${join(cgr, emptyCg)} removed`);
    for (const cgr of cgRoots) assert.ok(existsSync(join(cgr, busyCg)), 'the cgroups with a process stay');
    assert.deepEqual(await names(root), [running, inCgroup].map((x) => basename(x)).sort());
    assert.equal(a.child.exitCode, null, 'nothing was killed');
    assert.equal(b.child.exitCode, null, 'nothing was killed');
  });

  test('a symlink named like an instance is not followed; a leftover .gc- directory goes; an alloc assigned back during the pass keeps its directory', async () => {
    const root = await stateRoot();
    const target = await mkdtemp(join(tmpdir(), 'bp-instance-gc-target-'));
    dirs.push(target);
    writeFileSync(join(target, 'precious'), 'x');
    const name = basename(await resourceStateDir(root, 'svc[web.9.00000009]'));
    await rm(join(root, 'resources', name), { recursive: true });
    await symlink(target, join(root, 'resources', name));
    mkdirSync(join(root, 'resources', '.gc-svc_web.8.00000008_-0123456789ab', 'deep'), { recursive: true });
    // Asked once while the pass looks the directory over, then again just before it would go: assigned back by then.
    const back = await instanceDir(root, 'web.7.00000007', 3 * HOUR);
    let asked = 0;
    const r = await collectInstanceDirs({ root, inUse: (id) => id === 'web.7.00000007' && ++asked > 1, policy: { keep: 0, maxAgeMs: HOUR }, log });
    assert.equal(asked, 2);
    assert.deepEqual(r.removed, []);
    assert.deepEqual(await names(root), [name, basename(back)].sort());
    assert.equal(readFileSync(join(target, 'precious'), 'utf8'), 'x');
  });

  test('no resources directory yet: nothing to do, no error', async () => {
    const root = await stateRoot();
    assert.deepEqual(await collectInstanceDirs({ root, inUse: () => false, policy: { keep: 0, maxAgeMs: 0 }, log }), { removed: [], cgroups: 0, busy: [] });
  });
});
