import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, chown, link, mkdir, mkdtemp, readFile, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { BackplaneError } from '../../src/errors.js';
import { resourceId } from '../../src/graph/ids.js';
import { pkgKind } from '../../src/resources/pkg.js';
import { AptBatcher, aptStats } from '../../src/resources/pkg/batcher.js';
import { databaseSignature, LOOKUP_FILE, readLookup, writeLookup } from '../../src/resources/pkg/lookup-cache.js';
import { watchPackage } from '../../src/resources/pkg/monitor.js';
import { isSharedDirectory, ownedDirectories, packageDirectories } from '../../src/resources/pkg/owned-dirs.js';
import { DpkgDb, hasArchNativeFile, hasTraces, isInstalled, nativeArch, nativeArchAsync, parseStatus, readDpkgStatus, statusParseCount } from '../../src/resources/pkg/status.js';
import type { CheckResult, Resource, ResourceLog, ResourceWorld } from '../../src/resources/types.js';
import { DebRepo, dpkg } from '../helpers/deb.js';
import { harness, until } from '../helpers/engine.js';
import { testWorld } from '../helpers/world.js';
import { rejection } from '../helpers/assert.js';

class RecordingLog implements ResourceLog {
  readonly lines: string[] = [];
  change(m: string): void {
    this.lines.push(`change: ${m}`);
  }
  info(m: string): void {
    this.lines.push(`info: ${m}`);
  }
  warn(m: string): void {
    this.lines.push(`warn: ${m}`);
  }
  debug(m: string): void {
    this.lines.push(`debug: ${m}`);
  }
}

const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

let repo: DebRepo;

let world: ResourceWorld;

function make(suffix: string, params: Record<string, unknown> = {}): Resource {
  const name = repo.pkg(suffix);
  return pkgKind.create(resourceId('pkg', name), pkgKind.schema.parse({ name, aptOptions: repo.aptOptions, ...params }), world);
}

function check(res: Resource, opts: { apply?: boolean; signal?: AbortSignal; log?: ResourceLog } = {}): Promise<CheckResult> {
  return res.checkApply({ apply: opts.apply ?? true, refresh: false, signal: opts.signal ?? new AbortController().signal, log: opts.log ?? new RecordingLog() });
}

async function entry(suffix: string): Promise<ReturnType<Awaited<ReturnType<typeof readDpkgStatus>>['get']>> {
  return (await readDpkgStatus()).get(repo.pkg(suffix));
}


async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

const temps: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'bp-pkg-'));
  temps.push(d);
  return d;
}

before(async () => {
  // One world whose state directory is cleaned up with the rest (testWorld() alone would leave one in /tmp per call).
  world = testWorld({ stateRoot: await tempDir() });
  repo = await DebRepo.create();
  const p = repo.prefix;
  await repo.add({ name: 'a', version: '1.0', files: { [`/opt/${p}-a/sub/file.txt`]: 'a\n' } });
  for (const n of ['g1', 'g2', 'g3', 'ok1', 'ok2', 'noop', 'e2', 'e3', 'e4', 'lk', 'lk2']) await repo.add({ name: n, version: '1.0' });
  await repo.add({ name: 'e1', version: '1.0', files: { [`/opt/${p}-e1/conf.d/README`]: 'drop-ins here\n' } });
  await repo.add({ name: 'v', version: '1.0' });
  await repo.add({ name: 'v', version: '2.0' });
  await repo.add({ name: 'conf', version: '1.0', files: { [`/etc/${p}-conf/conf`]: 'x=1\n' }, conffiles: [`/etc/${p}-conf/conf`] });
  await repo.add({ name: 'broken', version: '1.0', depends: repo.pkg('missing') });
  await repo.add({ name: 'provider', version: '1.0', provides: repo.pkg('virtual') });
  await repo.publish();
});

after(async () => {
  await repo.cleanup();
  assert.deepEqual(await repo.installed(), [], 'every test package was purged');
  for (const d of temps) await rm(d, { recursive: true, force: true });
});

describe('pkg: the dpkg status parser', () => {
  const STATUS = [
    'Package: ok-pkg\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.2-3\nDescription: x\n multi\n line\n',
    'Package: held\nStatus: hold ok installed\nArchitecture: all\nVersion: 2.0\n',
    'Package: conf-only\nStatus: deinstall ok config-files\nArchitecture: all\nVersion: 0.9\n',
    'Package: half\nStatus: install reinstreq half-installed\nArchitecture: amd64\nVersion: 1.0\n',
    'Package: unpacked\nStatus: install ok unpacked\nArchitecture: amd64\nVersion: 1.0\n',
    'Package: trig\nStatus: install ok triggers-pending\nArchitecture: amd64\nVersion: 3\n',
    'Package: gone\nStatus: purge ok not-installed\nArchitecture: amd64\n',
    'Package: lib\nStatus: install ok installed\nArchitecture: amd64\nMulti-Arch: same\nVersion: 5\n',
    'Package: lib\nStatus: install ok installed\nArchitecture: i386\nMulti-Arch: same\nVersion: 4\n',
    'Package: foreign-only\nStatus: install ok installed\nArchitecture: i386\nVersion: 1\n',
  ].join('\n');

  test('dpkg states: only configured packages are installed', () => {
    const entries = parseStatus(STATUS);
    const db = new DpkgDb(entries);
    assert.equal(entries.length, 10);
    assert.equal(isInstalled(db.get('ok-pkg', 'amd64')), true);
    assert.equal(db.get('ok-pkg', 'amd64')?.version, '1.2-3');
    assert.equal(isInstalled(db.get('held', 'amd64')), true, 'a held package is installed');
    assert.equal(isInstalled(db.get('conf-only', 'amd64')), false, 'config-files is not installed');
    assert.equal(hasTraces(db.get('conf-only', 'amd64'), false), false, 'config-files needs no remove');
    assert.equal(hasTraces(db.get('conf-only', 'amd64'), true), true, 'config-files needs a purge');
    assert.equal(isInstalled(db.get('half', 'amd64')), false, 'half-installed is not installed');
    assert.equal(hasTraces(db.get('half', 'amd64'), false), true, 'half-installed must be removed for absent');
    assert.equal(isInstalled(db.get('unpacked', 'amd64')), false, 'unpacked (not configured) is not installed');
    assert.equal(isInstalled(db.get('trig', 'amd64')), true, 'a package waiting on triggers is installed');
    assert.equal(isInstalled(db.get('gone', 'amd64')), false);
    assert.equal(hasTraces(db.get('gone', 'amd64'), true), false);
  });

  test('readDpkgStatus: injectable admin dir, arch qualification, journal, cache', async () => {
    const admin = await tempDir();
    await mkdir(join(admin, 'updates'));
    await writeFile(join(admin, 'status'), STATUS);
    const db = await readDpkgStatus(admin);
    assert.equal(db.get('half')?.state, 'half-installed');
    assert.equal(db.get('lib', 'amd64')?.version, '5', 'a bare name means the native arch');
    assert.equal(db.get('lib:i386', 'amd64')?.version, '4');
    assert.equal(db.get('foreign-only', 'amd64'), undefined, 'a foreign-only install does not satisfy a bare name');
    assert.equal(db.get('foreign-only:i386', 'amd64')?.version, '1');
    assert.equal(db.get('held:amd64', 'amd64')?.version, '2.0', 'an arch: all package matches the native arch');

    // Unchanged files are not parsed again, however many resources ask.
    const parsed = statusParseCount();
    const again = await Promise.all(Array.from({ length: 100 }, () => readDpkgStatus(admin)));
    assert.equal(statusParseCount(), parsed);
    assert.ok(again.every((d) => d === again[0]));

    // A dpkg that was killed leaves its last word in the journal: it overrides status.
    await writeFile(join(admin, 'updates', '0000'), 'Package: half\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0\n');
    assert.equal(isInstalled((await readDpkgStatus(admin)).get('half', 'amd64')), true);
    await rm(join(admin, 'updates', '0000'));

    // dpkg replaces status by rename: a new file is seen at once.
    await writeFile(join(admin, 'status.new'), STATUS.replace('install reinstreq half-installed', 'install ok installed'));
    await rename(join(admin, 'status.new'), join(admin, 'status'));
    assert.equal(isInstalled((await readDpkgStatus(admin)).get('half', 'amd64')), true);
  });

  test('a lookup parses only its own stanzas, and finds exactly what the whole parse finds', async () => {
    const real = await readFile('/var/lib/dpkg/status');
    const variants: [string, Buffer][] = [
      ['the test status', Buffer.from(STATUS)],
      ['CRLF, blank lines first, a Package line that is not first or not last, no space, a tab, no final newline', Buffer.from(
        '\n\r\nPackage: first\r\nStatus: install ok installed\r\nArchitecture: amd64\r\nVersion: 1\r\n\r\n' +
          'Status: install ok installed\nArchitecture: all\nPackage:late\nVersion: 2\nDescription: ünïcode\n Package: not-a-key\n\n\n' +
          'Package: renamed\nStatus: install ok installed\nPackage: other\nArchitecture: all\nVersion: 3\n\n' +
          'Package:\ttabbed  \nStatus: install ok unpacked\nArchitecture: amd64\nVersion: 4\n\n' +
          'Package: lib\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5\n\r\nPackage: lib\nArchitecture: i386\nStatus: install ok installed\nVersion: 6',
      )],
      ['this host', real],
    ];
    for (const [what, raw] of variants) {
      const whole = new DpkgDb(parseStatus(raw.toString('utf8')));
      // Besides every name: names found inside the key itself, inside other fields and everywhere, and none at all.
      const odd = ['not-a-key', 'missing', 'renamed', 'age', 'Package', 'Package:', 'e', 'install ok', 'dpkg', '', ' lib'];
      const names = [...new Set([...parseStatus(raw.toString('utf8')).map((e) => e.name), ...odd])];
      for (const [i, name] of names.entries()) {
        const lazy = DpkgDb.fromStatus(raw);
        for (const arch of ['amd64', 'i386']) assert.deepEqual(lazy.get(name, arch), whole.get(name, arch), `${what}: ${name} (${arch})`);
        assert.equal(lazy.parsedWhole, false, `${what}: looking up ${name} parsed the whole file`);
        // A second name parses the rest (a few times: it is the whole parse); both still as the whole parse has them.
        if (i >= 8) continue;
        const other = name === 'lib' ? 'held' : 'lib';
        for (const arch of ['amd64', 'i386']) {
          assert.deepEqual(lazy.get(other, arch), whole.get(other, arch), `${what}: ${other} after ${name}`);
          assert.deepEqual(lazy.get(name, arch), whole.get(name, arch), `${what}: ${name} again`);
        }
        assert.equal(lazy.parsedWhole, true);
      }
    }
  });

  test("nativeArch: the installed dpkg's architecture, as dpkg prints it; nothing where the file does not say it plainly", async () => {
    const printed = execFileSync('dpkg', ['--print-architecture'], { encoding: 'utf8' }).trim();
    const real = await readFile('/var/lib/dpkg/status');
    assert.equal(DpkgDb.fromStatus(real).nativeArch(), printed, 'this host, lazily parsed');
    assert.equal(new DpkgDb(parseStatus(real.toString('utf8'))).nativeArch(), printed, 'this host, wholly parsed');
    const stanza = (arch: string, status = 'install ok installed'): string => `Package: dpkg\nStatus: ${status}\nArchitecture: ${arch}\nVersion: 1.21\n`;
    const cases: [string, string[], string | undefined][] = [
      ['the usual', [stanza('arm64'), STATUS], 'arm64'],
      ['no dpkg entry', [STATUS], undefined],
      ['two dpkg (a crossgrade half done)', [stanza('amd64'), stanza('i386', 'install ok unpacked')], undefined],
      ['a purged leftover beside it does not count', [stanza('amd64'), stanza('i386', 'purge ok not-installed')], 'amd64'],
      ['not configured', [stanza('amd64', 'install ok unpacked')], undefined],
      ['all', [stanza('all')], undefined],
      ['no architecture', ['Package: dpkg\nStatus: install ok installed\nVersion: 1\n'], undefined],
      ['not a name dpkg accepts', [stanza('AMD64 x')], undefined],
    ];
    for (const [what, stanzas, want] of cases) {
      const raw = Buffer.from(stanzas.join('\n'));
      assert.equal(DpkgDb.fromStatus(raw).nativeArch(), want, what);
      assert.equal(new DpkgDb(parseStatus(raw.toString('utf8'))).nativeArch(), want, `${what} (whole parse)`);
    }
    // A newer dpkg takes its native architecture from <admin>/arch-native where it exists: dpkg is asked then.
    const admin = await tempDir();
    assert.equal(await hasArchNativeFile(admin), false);
    await writeFile(join(admin, 'arch-native'), 'riscv64\n');
    assert.equal(await hasArchNativeFile(admin), true);
    assert.equal(await hasArchNativeFile(), existsSync('/var/lib/dpkg/arch-native'));
  });

  test('a check on this host runs no dpkg process for the architecture', () => {
    // A child process: this one may have asked dpkg already (the answer is kept for the process's life).
    const code = [
      "import { pkgKind } from './src/resources/pkg.ts';",
      "import { dpkgArchProcesses } from './src/resources/pkg/status.ts';",
      "import { resourceId } from './src/graph/ids.ts';",
      "import { testWorld } from './test/helpers/world.ts';",
      "const r = pkgKind.create(resourceId('pkg', 'dpkg'), pkgKind.schema.parse({ name: 'dpkg' }), testWorld());",
      "const log = { change() {}, info() {}, warn() {}, debug() {} };",
      "const out = await r.checkApply({ apply: false, refresh: false, signal: new AbortController().signal, log });",
      "console.log(JSON.stringify({ converged: out.converged, asked: dpkgArchProcesses() }));",
    ].join('\n');
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { cwd: REPO_ROOT, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout.trim().split('\n').at(-1) ?? ''), { converged: true, asked: 0 });
  });

  test('the real database parses quickly', async () => {
    const t0 = performance.now();
    const admin = await tempDir();
    await writeFile(join(admin, 'status'), await readFile('/var/lib/dpkg/status'));
    const db = await readDpkgStatus(admin);
    const ms = performance.now() - t0;
    assert.ok(db.size > 10, `parsed ${db.size} entries`);
    assert.ok(isInstalled(db.get('dpkg')), 'dpkg itself is installed');
    assert.ok(ms < 1000, `took ${ms.toFixed(0)} ms`);
  });
});

describe('pkg: auto-edges', () => {
  test('owned directories leave out shared ones', () => {
    const list = ['/.', '/etc', '/etc/nginx', '/etc/nginx/conf.d', '/etc/nginx/conf.d/x.conf', '/etc/nginx/nginx.conf', '/etc/logrotate.d',
      '/etc/logrotate.d/nginx', '/usr', '/usr/share', '/usr/share/nginx', '/usr/share/nginx/html', '/usr/share/nginx/html/index.html',
      '/usr/share/doc', '/usr/share/doc/nginx', '/usr/share/doc/nginx/copyright', '/usr/share/man', '/usr/share/man/man8',
      '/usr/share/man/man8/nginx.8.gz', '/usr/lib', '/usr/lib/x86_64-linux-gnu', '/usr/lib/x86_64-linux-gnu/libx.so', '/lib/systemd/system',
      '/lib/systemd/system/nginx.service'].join('\n');
    assert.deepEqual(ownedDirectories(list), ['/etc/nginx', '/usr/share/doc/nginx', '/usr/share/nginx', '/usr/share/nginx/html']);
    for (const d of ['/', '/etc', '/opt', '/usr/share', '/usr/lib', '/etc/default', '/etc/cron.d', '/var/lib', '/usr/share/man/man1', '/lib/systemd/system'])
      assert.ok(isSharedDirectory(d), d);
    for (const d of ['/etc/nginx', '/usr/share/nginx', '/var/lib/nginx', '/opt/app', '/etc/nginx/sites-available']) assert.ok(!isSharedDirectory(d), d);
    assert.ok(isSharedDirectory('/etc/apt/apt.conf.d'), 'drop-in directories belong to everybody');
  });

  test("a package's list is <name>.list, else <name>:<native arch>.list; dpkg is asked for the arch only then", async () => {
    const admin = await tempDir();
    await mkdir(join(admin, 'info'));
    await writeFile(join(admin, 'info', 'plain.list'), '/.\n/opt\n/opt/plain\n/opt/plain/bin\n/opt/plain/bin/x\n');
    await writeFile(join(admin, 'info', 'same:amd64.list'), '/.\n/opt\n/opt/same\n/opt/same/lib\n');
    const never = (): string => assert.fail('asked dpkg for the native architecture although plain.list exists');
    assert.deepEqual(packageDirectories('plain', admin, never), ['/opt/plain', '/opt/plain/bin']);
    let asked = 0;
    const amd64 = (): string => (asked++, 'amd64');
    assert.deepEqual(packageDirectories('same', admin, amd64), ['/opt/same']);
    assert.equal(asked, 1);
    assert.deepEqual(packageDirectories('same:amd64', admin, never), ['/opt/same']);
    assert.deepEqual(packageDirectories('missing', admin, amd64), []);
  });

  test('nativeArchAsync is what nativeArch says', async () => {
    assert.equal(await nativeArchAsync(), nativeArch());
  });
});

describe('pkg: installing and removing real packages', () => {
  test('install: noop reports, apply installs, a second check is converged', async () => {
    const res = make('a');
    const noop = await check(res, { apply: false });
    assert.deepEqual(noop, { converged: false, changes: ['would install'] });
    assert.equal(await entry('a'), undefined, 'noop changed nothing');
    // Not installed: the package provides only its own key.
    assert.deepEqual(pkgKind.autoEdges?.(pkgKind.schema.parse({ name: repo.pkg('a') })).provides, [`pkg:${repo.pkg('a')}`]);

    const first = await check(res);
    assert.deepEqual(first, { converged: false, changes: ['installed 1.0'] });
    assert.ok(isInstalled(await entry('a')));
    assert.ok(existsSync(`/opt/${repo.pkg('a')}/sub/file.txt`));
    assert.deepEqual(await check(res), { converged: true, changes: [] });

    // Installed: a file under its own directories gets an edge to it; /opt (shared) is not claimed.
    const provides = pkgKind.autoEdges?.(pkgKind.schema.parse({ name: repo.pkg('a') })).provides ?? [];
    assert.deepEqual([...provides].sort(), [`path:/opt/${repo.pkg('a')}`, `path:/opt/${repo.pkg('a')}/sub`, `pkg:${repo.pkg('a')}`]);
  });

  test('noop leaves a missing package alone and reports a version change', async () => {
    assert.deepEqual(await check(make('noop', { state: '1.0' }), { apply: false }), { converged: false, changes: ['would install 1.0'] });
    assert.deepEqual(await check(make('noop', { state: 'absent' }), { apply: false }), { converged: true, changes: [] });
    assert.equal(await entry('noop'), undefined);
  });

  test('version pin: installs, downgrades, upgrades exact versions', async () => {
    assert.deepEqual(await check(make('v', { state: '2.0' })), { converged: false, changes: ['installed 2.0'] });
    assert.deepEqual(await check(make('v', { state: 'installed' })), { converged: true, changes: [] });
    assert.deepEqual(await check(make('v', { state: '1.0' }), { apply: false }), { converged: false, changes: ['would change version 2.0 -> 1.0'] });
    assert.deepEqual(await check(make('v', { state: '1.0' })), { converged: false, changes: ['version 2.0 -> 1.0'] });
    assert.equal((await entry('v'))?.version, '1.0');
    assert.deepEqual(await check(make('v', { state: '1.0' })), { converged: true, changes: [] });
    const err = await rejection(check(make('v', { state: '9.9' })));
    assert.equal(err.code, 'E_APPLY');
    assert.match(err.message, /could not install version 9\.9 of bp-test-\w+-v/);
    assert.match(err.message, /Version '9\.9' for '.*-v' was not found/);
    assert.match(err.hint ?? '', /apt-cache policy/);
  });

  test('absent removes; purge removes configuration files too; config-files counts as not installed', async () => {
    await check(make('conf'));
    assert.ok(existsSync(`/etc/${repo.pkg('conf')}/conf`));
    assert.deepEqual(await check(make('conf', { state: 'absent' })), { converged: false, changes: ['removed 1.0'] });
    assert.equal((await entry('conf'))?.state, 'config-files');
    assert.ok(existsSync(`/etc/${repo.pkg('conf')}/conf`), 'remove keeps conffiles');
    assert.deepEqual(await check(make('conf', { state: 'absent' })), { converged: true, changes: [] });
    assert.deepEqual(await check(make('conf', { state: 'installed' }), { apply: false }), { converged: false, changes: ['would install (now config-files 1.0)'] });
    assert.deepEqual(await check(make('conf', { state: 'absent', purge: true }), { apply: false }), { converged: false, changes: ['would purge configuration files'] });
    assert.deepEqual(await check(make('conf', { state: 'absent', purge: true })), { converged: false, changes: ['purged configuration files'] });
    assert.ok(!existsSync(`/etc/${repo.pkg('conf')}/conf`));
    assert.deepEqual(await check(make('conf', { state: 'absent', purge: true })), { converged: true, changes: [] });
  });

  test('resources checked at the same moment share one apt-get call', async () => {
    const before = aptStats.invocations;
    const results = await Promise.all(['g1', 'g2', 'g3'].map((n) => check(make(n))));
    assert.equal(aptStats.invocations - before, 1, 'exactly one apt-get invocation');
    assert.deepEqual(aptStats.calls.at(-1)?.specs, ['g1', 'g2', 'g3'].map((n) => repo.pkg(n)));
    for (const r of results) assert.deepEqual(r, { converged: false, changes: ['installed 1.0'] });
    // Removal and purge batch too: purges and installs share the --purge call, plain removals get their own.
    const b2 = aptStats.invocations;
    const mixed = await Promise.all([
      check(make('g1', { state: 'absent' })),
      check(make('g2', { state: 'absent', purge: true })),
      check(make('g3', { state: 'absent', purge: true })),
    ]);
    assert.equal(aptStats.invocations - b2, 2);
    assert.deepEqual(mixed.map((r) => r.changes), [['removed 1.0'], ['purged 1.0'], ['purged 1.0']]);
  });

  test('an uninstallable package fails alone, naming itself; its batch-mates install', async () => {
    const before = aptStats.invocations;
    const [bad, ok1, ok2] = await Promise.allSettled([check(make('broken')), check(make('ok1')), check(make('ok2'))]);
    assert.equal(ok1.status, 'fulfilled');
    assert.equal(ok2.status, 'fulfilled');
    assert.ok(isInstalled(await entry('ok1')));
    assert.ok(isInstalled(await entry('ok2')));
    assert.equal(bad.status, 'rejected');
    const err = bad.reason as BackplaneError;
    assert.ok(err instanceof BackplaneError);
    assert.equal(err.code, 'E_APPLY');
    assert.equal(err.resource, `pkg[${repo.pkg('broken')}]`);
    assert.match(err.message, new RegExp(`could not install ${repo.pkg('broken')}: \`apt-get install ${repo.pkg('broken')}\` failed`));
    assert.match(err.message, new RegExp(`${repo.pkg('broken')} : Depends: ${repo.pkg('missing')}`));
    assert.doesNotMatch(err.message, new RegExp(repo.pkg('ok1')));
    assert.match(err.hint ?? '', /dependencies/);
    // The combined call, the rest together, the suspect alone.
    assert.equal(aptStats.invocations - before, 3);
    assert.equal(await entry('broken'), undefined);
  });

  test('an unknown package says so and suggests apt-get update', async () => {
    const err = await rejection(check(make('does-not-exist')));
    assert.match(err.message, /Unable to locate package bp-test-\w+-does-not-exist/);
    assert.match(err.hint ?? '', /apt-get update/);
  });

  test('a virtual package is an error, not a change repeated forever', async () => {
    const err = await rejection(check(make('virtual')));
    assert.match(err.message, /apt-get succeeded, but dpkg has no package .*-virtual installed: it is probably a virtual package/);
    assert.ok(isInstalled(await entry('provider')), 'apt installed the provider');
  });
});

describe('pkg: watching the dpkg database', () => {
  test('a hand-made dpkg -r is noticed within a second; other packages do not wake it', async () => {
    const a = make('a');
    await Promise.all([check(a), check(make('ok1'))]);
    assert.ok(isInstalled(await entry('a')));
    assert.ok(isInstalled(await entry('ok1')));
    const reasons: string[] = [];
    const other: string[] = [];
    const ac = new AbortController();
    let ready = false;
    const watching = a.watch?.({ signal: ac.signal, ready: () => (ready = true), changed: (r) => reasons.push(r), log: new RecordingLog() });
    await watchPackage(repo.pkg('ok1'), (r) => other.push(r), ac.signal);
    try {
      await waitFor('ready', () => ready);
      await dpkg(['-r', repo.pkg('ok1')]);
      await waitFor('the change to another package', () => other.length > 0, 5000);
      assert.deepEqual(reasons, [], 'a change to another package is not reported');

      const t0 = performance.now();
      await dpkg(['-r', repo.pkg('a')]);
      // dpkg marks the package for removal first, then removes it: both are reported, the last within a second.
      const gone = new RegExp(`dpkg status of ${repo.pkg('a')} is now (absent|\\S+ ok not-installed)`);
      await waitFor('the watch to notice dpkg -r', () => reasons.some((r) => gone.test(r)), 1000 + (performance.now() - t0));
      assert.deepEqual(await check(a, { apply: false }), { converged: false, changes: ['would install'] });
    } finally {
      ac.abort();
      await watching;
    }
  });
});

describe('pkg: the lookup kept for the next run', () => {
  const SIG = 'sig-1';
  const STATUS = 'Package: half\nStatus: install reinstreq half-installed\nArchitecture: amd64\nVersion: 1.0\n\n';
  const ENTRY = { name: 'web', arch: 'amd64', version: '1.0', want: 'install', flag: 'ok', state: 'installed' };

  test('the database signature: a replaced status file (same bytes), an edit in place with its mtime set back, a journal, an arch-native file', async () => {
    const admin = await tempDir();
    await writeFile(join(admin, 'status'), STATUS);
    const first = databaseSignature(admin);
    assert.ok(first !== undefined);
    assert.equal(databaseSignature(admin), first, 'the same file, the same signature');
    // dpkg's way: a new file renamed over the old one, here with the very same bytes.
    await writeFile(join(admin, 'status.new'), STATUS);
    await rename(join(admin, 'status.new'), join(admin, 'status'));
    const renamed = databaseSignature(admin);
    assert.ok(renamed !== undefined && renamed !== first);
    // An edit in place, of the same size, with its times set back: ctime still moves.
    execFileSync('cp', ['-p', join(admin, 'status'), join(admin, 'times')]);
    await writeFile(join(admin, 'status'), STATUS.replace('half-installed', 'half-INSTALLED'));
    // To the nanosecond (cp -p and touch -r use utimensat): only the inode's change time tells the edit.
    execFileSync('touch', ['-m', '-r', join(admin, 'times'), join(admin, 'status')]);
    assert.equal((await stat(join(admin, 'status'), { bigint: true })).mtimeNs, (await stat(join(admin, 'times'), { bigint: true })).mtimeNs);
    assert.notEqual(databaseSignature(admin), renamed);
    // A journal or an arch-native file: no lookup is kept or taken.
    await mkdir(join(admin, 'updates'));
    assert.ok(databaseSignature(admin) !== undefined, 'an empty journal is no journal');
    await writeFile(join(admin, 'updates', '0001'), 'Package: half\n');
    assert.equal(databaseSignature(admin), undefined);
    await rm(join(admin, 'updates', '0001'));
    await writeFile(join(admin, 'arch-native'), 'amd64\n');
    assert.equal(databaseSignature(admin), undefined);
    await rm(join(admin, 'arch-native'));
    await rm(join(admin, 'status'));
    assert.equal(databaseSignature(admin), undefined);
  });

  test('kept and read back only for the same name and database; a file of another shape, owner, mode or link count is a miss', async () => {
    const dir = await tempDir();
    await chmod(dir, 0o700);
    const file = join(dir, LOOKUP_FILE);
    assert.equal(readLookup(dir, 'web', SIG), undefined, 'nothing kept yet');
    writeLookup(dir, 'web', SIG, { native: 'amd64', entries: [ENTRY] });
    assert.deepEqual(readLookup(dir, 'web', SIG), { native: 'amd64', entries: [ENTRY] });
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    assert.equal(readLookup(dir, 'web', 'sig-2'), undefined, 'another database');
    assert.equal(readLookup(dir, 'web:i386', SIG), undefined, 'another name');
    // Not writable by others, one link, a regular file, not a symlink.
    await chmod(file, 0o620);
    assert.equal(readLookup(dir, 'web', SIG), undefined, 'group-writable');
    await chmod(file, 0o600);
    await link(file, join(dir, 'second-link'));
    assert.equal(readLookup(dir, 'web', SIG), undefined, 'two links');
    await rm(join(dir, 'second-link'));
    await rename(file, join(dir, 'real'));
    await symlink(join(dir, 'real'), file);
    assert.equal(readLookup(dir, 'web', SIG), undefined, 'a symlink');
    await rm(file);
    await rename(join(dir, 'real'), file);
    assert.ok(readLookup(dir, 'web', SIG) !== undefined);
    // Owned by someone else.
    await chown(file, 65534, 65534);
    assert.equal(readLookup(dir, 'web', SIG), undefined, 'not this user\'s');
    await chown(file, 0, 0);
    // Of another shape: every one a miss, never a partial answer.
    const good = { format: 1, signature: SIG, name: 'web', native: 'amd64', entries: [ENTRY] };
    const shapes: unknown[] = [
      { ...good, format: 2 },
      { ...good, native: 'AMD 64' },
      { ...good, entries: [{ ...ENTRY, name: 'other' }] },
      { ...good, entries: [{ ...ENTRY, version: 1 }] },
      { ...good, entries: [{ ...ENTRY, extra: 'x' }] },
      { ...good, entries: {} },
      [good],
      null,
    ];
    for (const shape of shapes) {
      await writeFile(file, JSON.stringify(shape), { mode: 0o600 });
      assert.equal(readLookup(dir, 'web', SIG), undefined, JSON.stringify(shape));
    }
    await writeFile(file, JSON.stringify(good).slice(0, -3));
    assert.equal(readLookup(dir, 'web', SIG), undefined, 'cut short');
    await writeFile(file, JSON.stringify(good));
    assert.deepEqual(readLookup(dir, 'web', SIG), { native: 'amd64', entries: [ENTRY] });
  });

  test("a check takes the kept lookup while dpkg's database is unchanged, and reads the database again once it changed", async () => {
    const w = testWorld({ stateRoot: await tempDir() });
    const name = repo.pkg('lk');
    const res = (): Resource => pkgKind.create(resourceId('pkg', name), pkgKind.schema.parse({ name, state: 'absent', aptOptions: repo.aptOptions }), w);
    // Not installed: converged, and the answer kept.
    assert.deepEqual(await check(res(), { apply: false }), { converged: true, changes: [] });
    const dir = await w.stateDir(resourceId('pkg', name));
    const file = join(dir, LOOKUP_FILE);
    const kept = JSON.parse(await readFile(file, 'utf8')) as { signature: string; entries: unknown[] };
    assert.deepEqual(kept.entries, []);
    // Planted with the same signature, a lookup that says it is installed is what the next check goes by: proof
    // that a hit reads nothing else.
    await writeFile(file, JSON.stringify({ ...kept, entries: [{ name, arch: 'all', version: '1.0', want: 'install', flag: 'ok', state: 'installed' }] }), { mode: 0o600 });
    assert.deepEqual(await check(res(), { apply: false }), { converged: false, changes: ['would remove 1.0'] });
    // Any change of the database (another package installed) and the plant is not taken: the real answer again.
    try {
      assert.deepEqual(await check(make('lk2')), { converged: false, changes: ['installed 1.0'] });
      assert.deepEqual(await check(res(), { apply: false }), { converged: true, changes: [] });
      assert.deepEqual((JSON.parse(await readFile(file, 'utf8')) as { entries: unknown[] }).entries, [], 'kept anew');
    } finally {
      await dpkg(['--purge', repo.pkg('lk2')]);
    }
  });
});

describe('pkg: in the engine', () => {
  test('a graph installs its packages in one transaction, orders files after them and repairs drift', async () => {
    const h = harness([pkgKind]);
    const p = repo.prefix;
    const conf = `/opt/${p}-e1/conf.d/local.conf`;
    const yaml = (explicit: boolean) => `
resources:
${['e1', 'e2', 'e3', 'e4'].map((n) => `  - { kind: pkg, name: ${p}-${n}, aptOptions: ${JSON.stringify(repo.aptOptions)} }`).join('\n')}
  - kind: file
    name: ${conf}
    content: "x\\n"
${explicit ? `    require: ["pkg:${p}-e1"]` : ''}
`;
    const calls = aptStats.invocations;
    try {
      // Not installed yet: the file needs its explicit require on the first run.
      await h.engine.setGraph(h.graph(yaml(true)));
      await h.settled(60_000);
      assert.equal(h.engine.summary().ok, true, JSON.stringify(h.engine.summary()));
      assert.equal(aptStats.invocations - calls, 1, 'four packages, one apt-get call');
      assert.equal(await readFile(conf, 'utf8'), 'x\n');

      // Installed now: the same edge comes from the package's own directories.
      const g = h.graph(yaml(false));
      const deps = g.dependencies(resourceId('file', conf));
      assert.ok(deps.some((e) => e.from === resourceId('pkg', `${p}-e1`) && e.auto), JSON.stringify(deps));

      // Someone removes a package by hand: the engine puts it back.
      await dpkg(['-r', repo.pkg('e2')]);
      await until(async () => isInstalled(await entry('e2')), 30_000, 'e2 reinstalled by the engine');
      await h.settled(60_000);
      assert.equal(h.engine.summary().ok, true);
    } finally {
      await h.engine.stop();
    }
  });
});

describe('pkg: a dpkg lock held by someone else', () => {
  /**
   * Holds an fcntl lock the way apt and dpkg take theirs (flock(1) would not conflict with them). perl-base is
   * essential on Debian. The lock is on a private copy of the dpkg admin directory, so the machine's apt is never
   * blocked by this test, nor this test by the machine's apt.
   */
  async function holdLock(file: string): Promise<ChildProcess> {
    const script = [
      'use Fcntl qw(F_SETLKW F_WRLCK SEEK_SET O_RDWR O_CREAT);',
      'sysopen(my $fh, $ARGV[0], O_RDWR|O_CREAT, 0640) or die "open: $!";',
      "my $s = pack('s s x4 q q i x4', F_WRLCK, SEEK_SET, 0, 0, 0); fcntl($fh, F_SETLKW, $s) or die \"lock: $!\";",
      '$| = 1; print "locked\\n"; sleep 60;',
    ].join(' ');
    const child = spawn('perl', ['-e', script, file], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      child.stdout.once('data', () => resolve());
      child.once('exit', (code) => reject(new Error(`perl exited with ${code} before taking the lock`)));
    });
    return child;
  }

  test('apt-get gives up after the configured wait, and the error states the wait it really had', async () => {
    const admin = await tempDir();
    await writeFile(join(admin, 'status'), await readFile('/var/lib/dpkg/status'));
    const holder = await holdLock(join(admin, 'lock-frontend'));
    try {
      // Later -o options win: this wait replaces the product's 60 s and the helper's 300 s.
      const res = make('lock1', { aptOptions: [...repo.aptOptions, '-o', `Dir::State::status=${join(admin, 'status')}`, '-o', 'DPkg::Lock::Timeout=2'] });
      const t0 = performance.now();
      const err = await rejection(check(res));
      const waited = (performance.now() - t0) / 1000;
      assert.ok(err instanceof BackplaneError, String(err));
      assert.match(err.message, /lock-frontend/);
      const m = /apt-get gave up after (\d+\.\d) s/.exec(err.hint ?? '');
      assert.ok(m !== null, `hint: ${err.hint ?? '(none)'}`);
      const said = Number(m[1]);
      assert.ok(said >= 2 && said <= waited + 0.1, `the hint says ${said} s; apt waited 2 s and the call took ${waited.toFixed(1)} s`);
      assert.doesNotMatch(err.hint ?? '', /60 s/);
      assert.equal(err.retryable, true);
    } finally {
      holder.kill('SIGKILL');
    }
  });
});

describe('pkg: cancellation in the batcher', () => {
  /** A stand-in apt-get that takes its time, so that aborts land while it runs; it leaves dpkg alone. */
  async function slowApt(): Promise<{ bin: string; pidFile: string }> {
    const dir = await tempDir();
    const bin = join(dir, 'apt-get');
    const pidFile = join(dir, 'pids');
    await writeFile(bin, `#!/bin/sh\necho $$ >> '${pidFile}'\nsleep "\${SLOW_APT_SECONDS:-3}"\necho done\n`);
    await chmod(bin, 0o755);
    return { bin, pidFile };
  }

  test('one waiter giving up does not stop the call its batch-mates wait for', async () => {
    const { bin } = await slowApt();
    const b = new AptBatcher({ aptGet: bin, windowMs: 10 });
    const quitter = new AbortController();
    const t0 = performance.now();
    const p1 = b.submit({ name: 'x1', action: 'install', aptOptions: [] }, quitter.signal);
    const p2 = b.submit({ name: 'x2', action: 'install', aptOptions: [] }, new AbortController().signal);
    await sleep(300);
    quitter.abort();
    assert.deepEqual(await p1, { kind: 'aborted' });
    assert.ok(performance.now() - t0 < 2000, 'the aborted waiter returned at once');
    const o2 = await p2;
    assert.equal(o2.kind, 'done');
    assert.equal(b.stats.invocations, 1);
    assert.equal(b.stats.calls[0]?.result, 'ok');
  });

  test('when every waiter gives up, apt-get is killed', async () => {
    const { bin, pidFile } = await slowApt();
    process.env['SLOW_APT_SECONDS'] = '30';
    try {
      const b = new AptBatcher({ aptGet: bin, windowMs: 10 });
      const ac = [new AbortController(), new AbortController()];
      const ps = ac.map((c, i) => b.submit({ name: `y${i}`, action: 'remove', aptOptions: [] }, c.signal));
      await waitFor('apt-get to start', () => existsSync(pidFile));
      const pid = Number((await readFile(pidFile, 'utf8')).trim());
      for (const c of ac) c.abort();
      for (const p of ps) assert.deepEqual(await p, { kind: 'aborted' });
      await waitFor('the call to be recorded as aborted', () => b.stats.calls[0]?.result === 'aborted', 10_000);
      await waitFor('the process to be gone', async () => {
        try {
          const st = await readFile(`/proc/${pid}/stat`, 'utf8');
          return st.slice(st.lastIndexOf(')') + 2).startsWith('Z');
        } catch {
          return true;
        }
      });
    } finally {
      delete process.env['SLOW_APT_SECONDS'];
    }
  });
});
