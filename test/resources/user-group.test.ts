import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, test } from 'node:test';
import { ValidationErrors } from '../../src/errors.js';
import { resourceId } from '../../src/graph/ids.js';
import { parseGroup, parsePasswd, readAccounts, watchAccounts } from '../../src/resources/accounts.js';
import { groupKind } from '../../src/resources/group.js';
import type { CheckResult, Resource, ResourceKind, ResourceLog } from '../../src/resources/types.js';
import { userKind } from '../../src/resources/user.js';
import { harness, until } from '../helpers/engine.js';
import { testWorld } from '../helpers/world.js';
import { rejection } from '../helpers/assert.js';

/** Every account a run creates starts with this, so cleanup can find them all and parallel runs cannot collide. */
const P = `bptest${randomBytes(3).toString('hex')}`;
const TOOLS_PATH = `/usr/sbin:/usr/bin:/sbin:/bin:${process.env['PATH'] ?? ''}`;

const quiet: ResourceLog = { change() {}, info() {}, warn() {}, debug() {} };

function sh(...argv: [string, ...string[]]): string {
  const [file, ...args] = argv;
  return execFileSync(file, args, { encoding: 'utf8', env: { ...process.env, PATH: TOOLS_PATH, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] });
}

function make<P>(kind: ResourceKind<P>, name: string, params: Record<string, unknown> = {}, provided: readonly string[] = []): Resource {
  const parsed = kind.schema.parse({ ...kind.defaults?.(name), ...params });
  return kind.create(resourceId(kind.kind, name), parsed, testWorld({ provided }));
}

function run(res: Resource, apply = true): Promise<CheckResult> {
  return res.checkApply({ apply, refresh: false, signal: new AbortController().signal, log: quiet });
}


async function passwdLine(name: string): Promise<string | undefined> {
  return (await readAccounts()).users.get(name)?.line;
}

async function memberOf(user: string): Promise<string[]> {
  return (await readAccounts()).groupsOf(user).map((g) => g.name);
}

/** Ids nothing on this host uses, so tests can ask for specific ones. */
async function freeIds(n: number): Promise<number[]> {
  const s = await readAccounts();
  const used = new Set([...[...s.users.values()].map((u) => u.uid), ...[...s.groups.values()].map((g) => g.gid)]);
  const out: number[] = [];
  for (let id = 42_000 + Math.floor(Math.random() * 5000); out.length < n; id++) if (!used.has(id)) out.push(id);
  return out;
}

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'bp-accounts-'));
  dirs.push(d);
  return d;
}

after(async () => {
  // Users first: a group cannot be removed while it is someone's primary group.
  const s = await readAccounts();
  for (const u of s.users.keys()) if (u.startsWith(P)) spawnSync('userdel', ['-r', u], { env: { ...process.env, PATH: TOOLS_PATH }, stdio: 'ignore' });
  for (const g of (await readAccounts()).groups.keys())
    if (g.startsWith(P)) spawnSync('groupdel', [g], { env: { ...process.env, PATH: TOOLS_PATH }, stdio: 'ignore' });
  for (const d of dirs) await rm(d, { recursive: true, force: true });
  const left = [...(await readAccounts()).users.keys(), ...(await readAccounts()).groups.keys()].filter((n) => n.startsWith(P));
  assert.deepEqual(left, [], 'test accounts left behind');
});

describe('account files: parsing and watching', () => {
  test('passwd and group parse like getpwnam: comments, NIS and malformed lines skipped, first entry wins', () => {
    const users = parsePasswd(
      [
        '# comment',
        'root:x:0:0:root:/root:/bin/bash',
        '+nisuser::::::',
        'broken:x:1:1',
        'nonnum:x:a:1::/:/bin/sh',
        'alice:x:1000:1000:Alice A,,,:/home/alice:/bin/bash',
        'alice:x:2000:2000::/x:/bin/sh',
        '',
      ].join('\n'),
    );
    assert.deepEqual([...users.keys()], ['root', 'alice']);
    assert.deepEqual(users.get('alice'), {
      name: 'alice',
      uid: 1000,
      gid: 1000,
      gecos: 'Alice A,,,',
      home: '/home/alice',
      shell: '/bin/bash',
      line: 'alice:x:1000:1000:Alice A,,,:/home/alice:/bin/bash',
    });
    const groups = parseGroup('root:x:0:\nsudo:x:27:alice,bob\n-nis:x::\nempty:x:30:,\nbad:x:y:\n');
    assert.deepEqual([...groups.keys()], ['root', 'sudo', 'empty']);
    assert.deepEqual(groups.get('sudo')?.members, ['alice', 'bob']);
    assert.deepEqual(groups.get('empty')?.members, []);
  });

  test('a snapshot answers by uid, gid and membership; missing files count as empty', async () => {
    const root = await tempDir();
    await mkdir(join(root, 'etc'));
    assert.equal((await readAccounts(root)).users.size, 0);
    await writeFile(join(root, 'etc/passwd'), 'a:x:10:20::/h:/bin/sh\nb:x:11:21::/h:/bin/sh\n');
    await writeFile(join(root, 'etc/group'), 'ga:x:20:b\ngb:x:21:a,b\n');
    const s = await readAccounts(root);
    assert.equal(s.userByUid(11)?.name, 'b');
    assert.equal(s.groupByGid(21)?.name, 'gb');
    assert.deepEqual(
      s.groupsOf('b').map((g) => g.name),
      ['ga', 'gb'],
    );
    assert.deepEqual(
      s.usersWithGid(20).map((u) => u.name),
      ['a'],
    );
    assert.equal(s.describeGid(99), '99');
  });

  test('the watch reports a replaced file only when the watched entry changed', async () => {
    const root = await tempDir();
    await mkdir(join(root, 'etc'));
    const passwd = join(root, 'etc/passwd');
    const write = async (text: string): Promise<void> => {
      // Replaced by rename, as the shadow tools do.
      await writeFile(`${passwd}+`, text);
      await rename(`${passwd}+`, passwd);
    };
    await write('alice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\n');
    const ac = new AbortController();
    const reasons: string[] = [];
    await watchAccounts(['passwd'], (s) => s.users.get('alice')?.line ?? '-', { signal: ac.signal, changed: (r) => reasons.push(r), log: quiet }, root);
    try {
      await write('alice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/bash\n');
      await write('alice:x:1000:1000::/home/alice:/bin/bash\nbob:x:1001:1001::/home/bob:/bin/bash\n');
      await until(() => reasons.length > 0, 5000, 'a change of alice to be reported');
      // Reads are serialized: by the time alice's change is seen, bob's edit has been compared and dropped.
      await sleep(100);
      assert.equal(reasons.length, 1, `expected one report, got ${JSON.stringify(reasons)}`);
      assert.match(reasons[0] ?? '', /passwd/);
      await write('bob:x:1001:1001::/home/bob:/bin/bash\n');
      await until(() => reasons.length === 2, 5000, 'the removal of alice to be reported');
    } finally {
      ac.abort();
    }
  });
});

describe('group', () => {
  test('created with a gid, idempotent, gid changed, removed; noop changes nothing', async () => {
    const name = `${P}g1`;
    const [gid1, gid2] = await freeIds(2);
    assert.ok(gid1 !== undefined && gid2 !== undefined);

    const noop = await run(make(groupKind, name, { gid: gid1 }), false);
    assert.deepEqual(noop, { converged: false, changes: [`created (gid ${gid1})`] });
    assert.equal((await readAccounts()).groups.has(name), false);

    assert.deepEqual(await run(make(groupKind, name, { gid: gid1 })), { converged: false, changes: [`created (gid ${gid1})`] });
    assert.equal((await readAccounts()).groups.get(name)?.gid, gid1);
    assert.deepEqual(await run(make(groupKind, name, { gid: gid1 })), { converged: true, changes: [] });
    // Without a gid, an existing group is left with its own.
    assert.deepEqual(await run(make(groupKind, name)), { converged: true, changes: [] });

    assert.deepEqual(await run(make(groupKind, name, { gid: gid2 }), false), { converged: false, changes: [`gid ${gid1} -> ${gid2}`] });
    assert.equal((await readAccounts()).groups.get(name)?.gid, gid1);
    assert.deepEqual(await run(make(groupKind, name, { gid: gid2 })), { converged: false, changes: [`gid ${gid1} -> ${gid2}`] });
    assert.equal((await readAccounts()).groups.get(name)?.gid, gid2);

    assert.deepEqual(await run(make(groupKind, name, { state: 'absent' }), false), { converged: false, changes: ['removed'] });
    assert.ok((await readAccounts()).groups.has(name));
    assert.deepEqual(await run(make(groupKind, name, { state: 'absent' })), { converged: false, changes: ['removed'] });
    assert.equal((await readAccounts()).groups.has(name), false);
    assert.deepEqual(await run(make(groupKind, name, { state: 'absent' })), { converged: true, changes: [] });
  });

  test('a system group gets a gid below 1000', async () => {
    const name = `${P}sys`;
    const result = await run(make(groupKind, name, { system: true }));
    const gid = (await readAccounts()).groups.get(name)?.gid ?? NaN;
    assert.deepEqual(result.changes, [`created (gid ${gid})`]);
    assert.ok(gid < 1000, `system gid ${gid}`);
  });

  test('a gid used by another group, and removing a primary group, are clear errors', async () => {
    const taken = (await readAccounts()).groups.get('root');
    assert.equal(taken?.gid, 0);
    const err = await rejection(run(make(groupKind, `${P}dup`, { gid: 0 })));
    assert.equal(err.code, 'E_APPLY');
    assert.match(err.message, /gid 0 is already used by group "root"/);
    assert.match(err.hint ?? '', /choose another gid/);
    assert.equal((await readAccounts()).groups.has(`${P}dup`), false);

    const user = `${P}prim`;
    sh('useradd', '-M', '-U', user);
    const busy = await rejection(run(make(groupKind, user, { state: 'absent' })));
    assert.equal(busy.code, 'E_APPLY');
    assert.match(busy.message, /primary group of user .*prim/);
    assert.equal(busy.retryable, true);
    // In noop mode, a user declared absent would have freed it first.
    assert.deepEqual(await run(make(groupKind, user, { state: 'absent' }, [`group-unused:${user}`]), false), { converged: false, changes: ['removed'] });
    sh('userdel', user);
  });

  test('members are set exactly; unknown members are an error; declared ones are added once they exist', async () => {
    const g = `${P}team`;
    const [a, b, c] = [`${P}ma`, `${P}mb`, `${P}mc`];
    for (const u of [a, b]) sh('useradd', '-M', u);
    const created = await run(make(groupKind, g, { members: [a, b] }));
    assert.equal(created.changes.length, 2);
    assert.match(created.changes[0] ?? '', /^created \(gid \d+\)$/);
    assert.equal(created.changes[1], `added members ${a}, ${b}`);
    assert.deepEqual((await readAccounts()).groups.get(g)?.members, [a, b]);
    assert.deepEqual(await run(make(groupKind, g, { members: [b, a] })), { converged: true, changes: [] });
    assert.deepEqual(await run(make(groupKind, g, { members: [b] })), { converged: false, changes: [`removed members ${a}`] });
    assert.deepEqual((await readAccounts()).groups.get(g)?.members, [b]);

    const missing = await rejection(run(make(groupKind, g, { members: [b, c] })));
    assert.match(missing.message, new RegExp(`member ${c} of group ${g} does not exist`));
    assert.match(missing.hint ?? '', /declare them as user resources/);

    // c is declared in the graph: noop reports it, a real run waits for the user and then adds it.
    assert.deepEqual(await run(make(groupKind, g, { members: [b, c] }, [`user:${c}`]), false), { converged: false, changes: [`added members ${c}`] });
    assert.deepEqual(await run(make(groupKind, g, { members: [b, c] }, [`user:${c}`])), { converged: true, changes: [] });
    sh('useradd', '-M', c);
    assert.deepEqual(await run(make(groupKind, g, { members: [b, c] }, [`user:${c}`])), { converged: false, changes: [`added members ${c}`] });
    assert.deepEqual(await run(make(groupKind, g, { members: [] })), { converged: false, changes: [`removed members ${b}, ${c}`] });
    assert.deepEqual((await readAccounts()).groups.get(g)?.members, []);
  });
});

describe('user', () => {
  test('created with uid, shell, groups, home and comment; idempotent; noop creates nothing', async () => {
    const dir = await tempDir();
    const [g1, g2, u] = [`${P}ua`, `${P}ub`, `${P}u1`];
    sh('groupadd', g1);
    sh('groupadd', g2);
    const [uid] = await freeIds(1);
    assert.ok(uid !== undefined);
    const home = join(dir, 'home');
    const params = { uid, shell: '/bin/bash', groups: [g1, g2], home, comment: 'Test User' };

    assert.deepEqual(await run(make(userKind, u, params), false), { converged: false, changes: [`created (uid ${uid})`] });
    assert.equal(await passwdLine(u), undefined);

    assert.deepEqual(await run(make(userKind, u, params)), { converged: false, changes: [`created (uid ${uid})`] });
    const s = await readAccounts();
    const entry = s.users.get(u);
    assert.equal(entry?.line, `${u}:x:${uid}:${s.groups.get(u)?.gid}:Test User:${home}:/bin/bash`, 'a group of its own name is the primary group');
    assert.deepEqual(await memberOf(u), [g1, g2]);
    assert.ok(existsSync(join(home, '.bashrc')), 'home created from /etc/skel');
    assert.deepEqual(await run(make(userKind, u, params)), { converged: true, changes: [] });
    assert.deepEqual(await run(make(userKind, u)), { converged: true, changes: [] });
  });

  test('shell, home, comment, uid and primary group are changed; groups minimum only adds, exact also removes', async () => {
    const [g1, g2, g3, prim, u] = [`${P}ga`, `${P}gb`, `${P}gc`, `${P}gp`, `${P}u2`];
    for (const g of [g1, g2, g3, prim]) sh('groupadd', g);
    sh('useradd', '-M', '-s', '/bin/sh', '-G', g1, u);
    const before = (await readAccounts()).users.get(u);
    assert.ok(before !== undefined);
    const [uid] = await freeIds(1);
    assert.ok(uid !== undefined);

    const changed = await run(make(userKind, u, { shell: '/bin/bash', comment: 'X', group: prim, uid, home: '/nonexistent-bp' }));
    assert.deepEqual(changed, {
      converged: false,
      changes: [`uid ${before.uid} -> ${uid}`, `group ${u} -> ${prim}`, 'shell /bin/sh -> /bin/bash', `home ${before.home} -> /nonexistent-bp`, 'comment "" -> "X"'],
    });
    const after = (await readAccounts()).users.get(u);
    assert.equal(after?.line, `${u}:x:${uid}:${(await readAccounts()).groups.get(prim)?.gid}:X:/nonexistent-bp:/bin/bash`);

    assert.deepEqual(await run(make(userKind, u, { groups: [g2, g3] })), { converged: false, changes: [`added to groups ${g2}, ${g3}`] });
    assert.deepEqual(await memberOf(u), [g1, g2, g3]);
    assert.deepEqual(await run(make(userKind, u, { groups: [g2] })), { converged: true, changes: [] });

    const exact = make(userKind, u, { groups: [g2], groupsMode: 'exact' });
    assert.deepEqual(await run(exact, false), { converged: false, changes: [`removed from groups ${g1}, ${g3}`] });
    assert.deepEqual(await memberOf(u), [g1, g2, g3]);
    assert.deepEqual(await run(exact), { converged: false, changes: [`removed from groups ${g1}, ${g3}`] });
    assert.deepEqual(await memberOf(u), [g2]);
    assert.deepEqual(await run(make(userKind, u, { groups: [g1, g2], groupsMode: 'exact' })), { converged: false, changes: [`added to groups ${g1}`] });
    assert.deepEqual(await run(make(userKind, u, { groups: [], groupsMode: 'exact' })), { converged: false, changes: [`removed from groups ${g1}, ${g2}`] });
    assert.deepEqual(await memberOf(u), []);
  });

  test('moveHome moves the home directory; without it only the entry changes', async () => {
    const dir = await tempDir();
    const u = `${P}mv`;
    const [h1, h2, h3] = [join(dir, 'h1'), join(dir, 'h2'), join(dir, 'h3')];
    await run(make(userKind, u, { home: h1 }));
    await writeFile(join(h1, 'marker'), 'x');
    assert.deepEqual(await run(make(userKind, u, { home: h2, moveHome: true })), { converged: false, changes: [`home ${h1} -> ${h2} (moved)`] });
    assert.equal(await readFile(join(h2, 'marker'), 'utf8'), 'x');
    assert.equal(existsSync(h1), false);
    assert.deepEqual(await run(make(userKind, u, { home: h3 })), { converged: false, changes: [`home ${h2} -> ${h3}`] });
    assert.ok(existsSync(h2));
    assert.equal(existsSync(h3), false);
  });

  test('an existing group of the user\'s name is adopted as its primary group; system users get no home by default', async () => {
    const u = `${P}own`;
    sh('groupadd', u);
    await run(make(userKind, u, { system: true, home: `/nonexistent-${u}` }));
    const s = await readAccounts();
    assert.equal(s.users.get(u)?.gid, s.groups.get(u)?.gid);
    assert.ok((s.users.get(u)?.uid ?? NaN) < 1000);
    assert.equal(existsSync(`/nonexistent-${u}`), false);
  });

  test('removed (optionally with its home); noop removes nothing', async () => {
    const dir = await tempDir();
    const [u1, u2] = [`${P}r1`, `${P}r2`];
    const home = join(dir, 'home2');
    sh('useradd', '-M', u1);
    sh('useradd', '-m', '-d', home, u2);
    assert.deepEqual(await run(make(userKind, u1, { state: 'absent' }), false), { converged: false, changes: ['removed'] });
    assert.ok((await passwdLine(u1)) !== undefined);
    assert.deepEqual(await run(make(userKind, u1, { state: 'absent' })), { converged: false, changes: ['removed'] });
    assert.equal(await passwdLine(u1), undefined);
    assert.equal((await readAccounts()).groups.has(u1), false, 'its private group goes with it');
    assert.deepEqual(await run(make(userKind, u1, { state: 'absent' })), { converged: true, changes: [] });

    assert.deepEqual(await run(make(userKind, u2, { state: 'absent', removeHome: true })), { converged: false, changes: [`removed (with home ${home})`] });
    assert.equal(existsSync(home), false);
  });

  test('a taken uid and a missing group are clear errors; a group declared in the graph is fine in noop mode', async () => {
    const u = `${P}err`;
    const taken = await rejection(run(make(userKind, u, { uid: 0 })));
    assert.equal(taken.code, 'E_APPLY');
    assert.match(taken.message, /uid 0 is already used by user "root"/);
    assert.match(taken.hint ?? '', /choose another uid/);

    const g = `${P}nogroup`;
    for (const params of [{ group: g }, { groups: [g] }]) {
      const missing = await rejection(run(make(userKind, u, params)));
      assert.equal(missing.code, 'E_APPLY');
      assert.match(missing.message, new RegExp(`group "${g}" does not exist`));
      assert.match(missing.hint ?? '', /declare it as a group resource/);
      assert.equal(missing.retryable, true);
    }
    assert.deepEqual(await run(make(userKind, u, { group: g, groups: [g] }, [`group:${g}`]), false), { converged: false, changes: ['created'] });
    const gid = await rejection(run(make(userKind, u, { gid: 4_000_000_000 })));
    assert.match(gid.message, /no group has gid 4000000000/);
    assert.equal(await passwdLine(u), undefined);
  });

  test('a hand edit wakes the watch (and unrelated ones do not); the next check repairs it', async () => {
    const [u, other] = [`${P}w1`, `${P}w2`];
    const shared = `${P}ws`;
    sh('groupadd', shared);
    sh('useradd', '-M', '-s', '/bin/bash', '-G', shared, u);
    sh('useradd', '-M', other);
    const res = make(userKind, u, { shell: '/bin/bash', groups: [shared] });
    const ac = new AbortController();
    const reasons: string[] = [];
    let ready = false;
    const watching = res.watch?.({ signal: ac.signal, ready: () => (ready = true), changed: (r) => reasons.push(r), log: quiet });
    try {
      await until(() => ready, 5000, 'the watch to be ready');
      // Another user's shell, and another member joining a group this user is in, do not concern it.
      sh('usermod', '-s', '/bin/dash', other);
      sh('gpasswd', '-a', other, shared);
      sh('usermod', '-s', '/bin/sh', u);
      await until(() => reasons.length > 0, 5000, 'the hand edit to be noticed');
      await sleep(200);
      assert.equal(reasons.length, 1, `one report expected, got ${JSON.stringify(reasons)}`);
      assert.deepEqual(await run(res), { converged: false, changes: ['shell /bin/sh -> /bin/bash'] });
      assert.match((await passwdLine(u)) ?? '', /:\/bin\/bash$/);
      // Joining a group by hand concerns this user too.
      sh('groupadd', `${P}w3`);
      const n = reasons.length;
      sh('gpasswd', '-a', u, `${P}w3`);
      await until(() => reasons.length > n, 5000, 'a group membership change to be noticed');
    } finally {
      ac.abort();
      await watching;
    }
  });
});

describe('user and group: schema and auto-edges', () => {
  test('names are validated', () => {
    const bad = ['Root', '1abc', 'a b', 'a:b', `a${'b'.repeat(32)}`, '-x', 'x$y'];
    for (const name of bad) {
      for (const kind of [userKind, groupKind] as const) {
        const r = kind.schema.safeParse({ name });
        assert.equal(r.success, false, `${kind.kind} name ${name} accepted`);
        assert.deepEqual(r.error?.issues[0]?.path, ['name']);
      }
    }
    for (const name of ['www-data', '_apt', 'a1', 'host$', 'x'.repeat(32)]) assert.ok(userKind.schema.safeParse({ name }).success, name);
    assert.match(userKind.schema.safeParse({ name: 'ok', groups: ['Admins'] }).error?.issues[0]?.message ?? '', /account name/);
    assert.match(userKind.schema.safeParse({ name: 'ok', gid: 1, group: 'x' }).error?.issues[0]?.message ?? '', /either gid or group/);
    assert.match(userKind.schema.safeParse({ name: 'ok', removeHome: true }).error?.issues[0]?.message ?? '', /only for state: absent/);
    assert.match(userKind.schema.safeParse({ name: 'ok', comment: 'a:b' }).error?.issues[0]?.message ?? '', /must not contain ":"/);
    assert.equal(userKind.schema.parse({ name: 'ok', group: '100' }).group, 100);
  });

  test('a bad name in a graph is reported at its line', () => {
    const h = harness([userKind, groupKind]);
    try {
      h.graph('resources:\n  - kind: group\n    name: ok\n  - kind: user\n    name: Alice\n');
      assert.fail('graph accepted');
    } catch (err) {
      assert.ok(err instanceof ValidationErrors, String(err));
      assert.equal(err.errors.length, 1);
      assert.match(err.errors[0]?.format() ?? '', /^\/test\/graph\.yaml:5:\d+: user\[Alice\]: parameter "name": must be an account name/);
    }
  });

  test('users want the groups they name and provide themselves; groups provide themselves', () => {
    const edges = (kind: typeof userKind | typeof groupKind, params: Record<string, unknown>) =>
      kind.autoEdges?.(kind.schema.parse({ ...kind.defaults?.('alice'), ...params }) as never);
    assert.deepEqual(edges(userKind, { group: 'staff', groups: ['a', 'b', 'a'] }), { provides: ['user:alice'], wants: ['group:staff', 'group:a', 'group:b'] });
    assert.deepEqual(edges(userKind, {}), { provides: ['user:alice'], wants: ['group:alice'] });
    assert.deepEqual(edges(userKind, { gid: 100 }), { provides: ['user:alice'], wants: [] });
    assert.deepEqual(edges(userKind, { state: 'absent', group: 'staff' }), { provides: ['group-unused:alice', 'group-unused:staff'] });
    assert.deepEqual(edges(groupKind, {}), { provides: ['group:alice'] });
    assert.deepEqual(edges(groupKind, { state: 'absent' }), { wants: ['group-unused:alice'] });
  });
});

describe('user and group in the engine', () => {
  test('a user declared before its groups is created after them, and a hand edit is repaired', async () => {
    const [u, g1, g2] = [`${P}e1`, `${P}eg1`, `${P}eg2`];
    const h = harness([userKind, groupKind]);
    await h.engine.setGraph(
      h.graph(`
resources:
  - { kind: user, name: ${u}, group: ${g1}, groups: [${g2}], shell: /bin/bash, createHome: false }
  - { kind: group, name: ${g1} }
  - { kind: group, name: ${g2} }
`),
    );
    try {
      await h.settled(20_000);
      assert.equal(h.engine.summary().ok, true, JSON.stringify(h.engine.status()));
      const s = await readAccounts();
      assert.equal(s.users.get(u)?.gid, s.groups.get(g1)?.gid);
      assert.deepEqual(await memberOf(u), [g2]);
      sh('usermod', '-s', '/bin/sh', '-G', '', u);
      await until(async () => (await passwdLine(u))?.endsWith(':/bin/bash') === true && (await memberOf(u)).length === 1, 10_000, 'the engine to repair the user');
    } finally {
      await h.engine.stop();
    }
  });

  test('a group with members declared in the same graph gets them once they exist; absent users go before their group', async () => {
    const [g, a, b] = [`${P}dev`, `${P}da`, `${P}db`];
    const h = harness([userKind, groupKind]);
    try {
      await h.engine.setGraph(
        h.graph(`
resources:
  - { kind: group, name: ${g}, members: [${a}, ${b}] }
  - { kind: user, name: ${a}, createHome: false }
  - { kind: user, name: ${b}, createHome: false }
`),
      );
      await h.settled(20_000);
      await until(async () => (await readAccounts()).groups.get(g)?.members.length === 2, 10_000, 'both members to be added');
      await h.settled(20_000);
      assert.equal(h.engine.summary().ok, true, JSON.stringify(h.engine.status()));

      // The group declared first still waits for the user whose primary group it is.
      await h.engine.setGraph(
        h.graph(`
resources:
  - { kind: group, name: ${a}, state: absent }
  - { kind: user, name: ${a}, state: absent }
`),
      );
      await h.settled(20_000);
      assert.equal(h.engine.summary().ok, true, JSON.stringify(h.engine.status()));
      const s = await readAccounts();
      assert.equal(s.users.has(a), false);
      assert.equal(s.groups.has(a), false);
    } finally {
      await h.engine.stop();
    }
  });
});
