import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { readFile, rm, rmdir, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, afterEach, describe, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { resourceId, type ResourceId } from '../../src/graph/ids.js';
import { svcKind } from '../../src/resources/svc.js';
import { cgroupName, detectHierarchy, existingCgroup, removeCgroup, setupCgroup, type SvcCgroup } from '../../src/resources/svc/cgroup.js';
import { readStat, spawnProc } from '../../src/resources/svc/proc.js';
import { clearRecord, readRecord } from '../../src/resources/svc/record.js';
import type { CheckResult, Resource, ResourceLog, ResourceWorld } from '../../src/resources/types.js';
import { ROOT } from '../helpers/cli.js';
import { testWorld } from '../helpers/world.js';

/** Services that must leave nothing behind: daemons that fork away, groups of the user, bounded logs. */

const QUIET: ResourceLog = { change: () => undefined, info: () => undefined, warn: () => undefined, debug: () => undefined };
const dirs: string[] = [];
const made: { res: Resource; id: ResourceId; world: ResourceWorld }[] = [];
/** Every pid a test saw: killed afterwards, so that a failing test leaves nothing either. */
const seen = new Set<number>();
const cleanupCgroups: SvcCgroup[] = [];

afterEach(async () => {
  for (const s of made.splice(0)) {
    await s.res.close?.('removed');
    await removeCgroup(await existingCgroup(s.id, await s.world.stateDir(s.id)));
  }
  for (const pid of seen) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  seen.clear();
  for (const cg of cleanupCgroups.splice(0)) await removeCgroup(cg);
});
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
  const h = await detectHierarchy();
  for (const root of [...h.v1.values(), ...(h.v2 !== undefined ? [h.v2] : [])]) await rmdir(join(root, 'backplane')).catch(() => undefined);
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'bp-svc-clean-'));
  dirs.push(d);
  return d;
}

let counter = 0;

function make(params: Record<string, unknown>, opts: { world?: ResourceWorld; name?: string } = {}): { res: Resource; world: ResourceWorld; run(refresh?: boolean): Promise<CheckResult> } {
  const id = resourceId('svc', opts.name ?? `c${++counter}`);
  const world = opts.world ?? testWorld({ stateRoot: tempDir() });
  const res = svcKind.create(id, svcKind.schema.parse(params), world);
  made.push({ res, id, world });
  return { res, world, run: (refresh = false) => res.checkApply({ apply: true, refresh, signal: new AbortController().signal, log: QUIET }) };
}

/** Dead or a zombie (a dead orphan stays a zombie until PID 1 reaps it: FACTS.md fact 5). */
async function alive(pid: number): Promise<boolean> {
  const st = await readStat(pid);
  return st !== undefined && st.state !== 'Z';
}

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/**
 * A service that, first thing, double-forks a daemon into its own session (out of the process group) that ignores
 * SIGTERM, and appends the daemon's pid to `pids`. Then it stays in the foreground, or exits 1 with `crash`.
 */
function daemonizing(pids: string, crash = false): Record<string, unknown> {
  // The cgroup the service is in when its first command runs: the agent moving it in afterwards is too late.
  const script = `cat /proc/$$/cgroup > ${pids}.cgroup; ( setsid sh -c 'trap "" TERM; sleep 300 & echo $! >> ${pids}' & ); ${crash ? 'sleep 0.05; exit 1' : 'exec sleep 300'}`;
  return { cmd: ['sh', '-c', script], stopTimeout: '300ms', backoff: { initial: '10ms' } };
}

async function daemonPids(file: string, n: number): Promise<number[]> {
  await waitFor(`${n} daemon pid(s) in ${file}`, () => existsSync(file) && readFileSync(file, 'utf8').split('\n').filter((l) => l !== '').length >= n);
  const pids = (await readFile(file, 'utf8')).split('\n').filter((l) => l !== '').map(Number);
  for (const p of pids) seen.add(p);
  return pids;
}

async function allDead(pids: readonly number[], when: string): Promise<void> {
  for (const p of pids) assert.equal(await alive(p), false, `daemon pid ${p} outlived ${when}`);
}

describe('svc: a daemonizing service leaves no process behind', () => {
  test('the process is in its cgroup before its first instruction (no later move by the agent)', async (t) => {
    const h = await detectHierarchy();
    if (h.v2 === undefined) return t.skip('no cgroup v2 tree on this host');
    const dir = tempDir();
    const id = `svc[first-${randomBytes(3).toString('hex')}]`;
    const cg = await setupCgroup(id, dir, undefined, QUIET);
    cleanupCgroups.push(cg);
    const out = join(dir, 'out');
    // spawnProc alone: nothing else moves the process, so only the wrapper can have put it there.
    const proc = await spawnProc({ file: 'cat', args: ['/proc/self/cgroup'], cwd: '/', env: process.env, stdoutPath: out, stderrPath: out, cgroupProcs: cg.dirs.map((d) => join(d, 'cgroup.procs')) });
    assert.equal((await proc.exited).code, 0);
    assert.match(await readFile(out, 'utf8'), new RegExp(`^0::/${cgroupName(id, dir).replace(/[.[\]]/g, '\\$&')}$`, 'm'));
  });

  test('stop, restart and removal end the daemon it forked away at once', async () => {
    const dir = tempDir();
    const pids = join(dir, 'pids');
    const params = daemonizing(pids);
    const s = make(params, { name: 'forky' });
    await s.run();
    const [first] = await daemonPids(pids, 1);
    assert.ok(first !== undefined && (await alive(first)), 'the daemon runs');
    if ((await detectHierarchy()).v2 !== undefined) assert.match(await readFile(`${pids}.cgroup`, 'utf8'), /^0::\/backplane\/svc_forky_-/m, 'in its cgroup before it runs');

    // restart (a notify without reload)
    await s.run(true);
    const [, second] = await daemonPids(pids, 2);
    await allDead([first], 'a restart');
    assert.ok(second !== undefined && (await alive(second)));

    // state: stopped, here without cmd
    await s.res.close?.('replaced');
    const stopper = make({ state: 'stopped', stopTimeout: '300ms' }, { world: s.world, name: 'forky' });
    await stopper.run();
    await allDead([second], 'a stop');
    await stopper.res.close?.('replaced');

    // removal from the graph
    const again = make(params, { world: s.world, name: 'forky' });
    await again.run();
    const [, , third] = await daemonPids(pids, 3);
    assert.ok(third !== undefined && (await alive(third)));
    await again.res.close?.('removed');
    await allDead([third], 'removal');
  });

  test('a start first kills what an earlier run left in the cgroup (an agent that died before it could clean up)', async () => {
    const dir = tempDir();
    const pids = join(dir, 'pids');
    const params = daemonizing(pids);
    const s = make(params, { name: 'strays' });
    await s.run();
    const [daemon] = await daemonPids(pids, 1);
    assert.ok(daemon !== undefined);
    // The agent dies leaving the service; then its main process dies and its record is lost: nothing names the daemon.
    await s.res.close?.('shutdown');
    const stateDir = await s.world.stateDir(resourceId('svc', 'strays'));
    const main = (await readRecord(stateDir))?.pid;
    assert.ok(main !== undefined);
    seen.add(main);
    await clearRecord(stateDir);
    process.kill(main, 'SIGKILL');
    await waitFor('the main process to die', async () => !(await alive(main)));
    assert.ok(await alive(daemon), 'the daemon outlived its main process');
    const next = make(params, { world: s.world, name: 'strays' });
    await next.run();
    assert.equal(await alive(daemon), false, 'the stray daemon was killed before the new start');
    await daemonPids(pids, 2);
  });

  test('a crash loop ends what each crashed process left (no orphan keeps its port)', async () => {
    const dir = tempDir();
    const pids = join(dir, 'pids');
    const s = make({ ...daemonizing(pids, true), crashLoop: { failures: 3, window: '1m' } });
    await waitFor('the crash loop', async () => /crash-loop/.test(await s.run().then(() => '', (e: Error) => e.message)), 10_000);
    const all = await daemonPids(pids, 3);
    await waitFor('every daemon to be ended', async () => (await Promise.all(all.map(alive))).every((a) => !a));
  });
});

describe('svc: user', () => {
  test("runs with the user's supplementary groups, as login would", async (t) => {
    if (process.getuid?.() !== 0) return t.skip('needs root: creates a user and a group');
    const name = `bpu${randomBytes(3).toString('hex')}`;
    const extra = `bpg${randomBytes(3).toString('hex')}`;
    const sh = (cmd: string, args: string[]): string => {
      const r = spawnSync(cmd, args, { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
      return r.stdout.trim();
    };
    sh('groupadd', ['-r', extra]);
    t.after(() => {
      spawnSync('userdel', [name]);
      spawnSync('groupdel', [extra]);
    });
    sh('useradd', ['-M', '-r', '-s', '/usr/sbin/nologin', '-G', extra, name]);
    const extraGid = sh('getent', ['group', extra]).split(':')[2];
    const dir = tempDir();
    const out = join(dir, 'id');
    await make({ cmd: ['sh', '-c', 'echo "$(id -u) $(id -G)"; exec sleep 30'], user: name, log: { stdout: out } }).run();
    await waitFor('output', () => existsSync(out) && readFileSync(out, 'utf8').endsWith('\n'));
    const [uid, ...groups] = (await readFile(out, 'utf8')).trim().split(' ');
    assert.equal(uid, sh('id', ['-u', name]));
    assert.deepEqual(new Set(groups), new Set(sh('id', ['-G', name]).split(' ')), 'the groups `id -G` gives the user');
    assert.ok(groups.includes(extraGid ?? '?'), `supplementary group ${extra} (${extraGid ?? '?'}) is there`);
    assert.ok(!groups.includes('0'), "root's group is not kept");
  });
});

describe('svc: logs', () => {
  test('a fast writer stays within maxSize × (keep + 1): every write goes through the rotating logger', async () => {
    const dir = tempDir();
    const log = join(dir, 'out.log');
    const maxSize = 64 * 1024;
    const keep = 2;
    // As fast as it can, for as long as the test looks: a 1 s size check let such a writer fill gigabytes.
    const s = make({ cmd: ['sh', '-c', 'exec yes "0123456789abcdefghijklmnopqrstuvwxyz"'], log: { stdout: log, maxSize, keep } });
    await s.run();
    let peak = 0;
    let rotations = 0;
    let last = 0;
    const deadline = Date.now() + 1500;
    while (Date.now() < deadline) {
      let total = 0;
      for (const name of ['out.log', 'out.log.1', 'out.log.2', 'out.log.3']) {
        try {
          const size = (await stat(join(dir, name))).size;
          total += size;
          if (name === 'out.log') {
            if (size < last) rotations++;
            last = size;
            assert.ok(size <= maxSize, `out.log has ${size} bytes, more than maxSize`);
          }
        } catch {
          // not there (yet)
        }
      }
      peak = Math.max(peak, total);
      await sleep(5);
    }
    assert.ok(peak <= maxSize * (keep + 1), `${peak} bytes on disk, more than ${maxSize * (keep + 1)}`);
    assert.ok(rotations >= 3, `it wrote fast enough to rotate several times (${rotations})`);
    assert.equal(existsSync(join(dir, 'out.log.3')), false, 'no more than keep rotated files');
    // Stopped, and its logger done (sizes settle), so that no rotation runs while the files are read.
    await s.res.close?.('removed');
    let sizes = '';
    await waitFor('the logger to finish', async () => {
      const now = (await Promise.all(['out.log', 'out.log.1'].map((n) => stat(join(dir, n)).then((st) => st.size, () => -1)))).join();
      const settled = now === sizes && !now.includes('-1');
      sizes = now;
      await sleep(100);
      return settled;
    });
    const line = '0123456789abcdefghijklmnopqrstuvwxyz\n';
    const rotated = await readFile(`${log}.1`, 'utf8');
    assert.equal(rotated.length, Math.floor(maxSize / line.length) * line.length, 'rotated at the last whole line within maxSize');
    assert.equal(rotated.replaceAll(line, ''), '', 'nothing lost or torn inside a file');
  });
});

describe('svc: logs across agent restarts', () => {
  test('the logger outlives a kill -9 of the agent: output keeps reaching the log, and the next agent adopts', async () => {
    const dir = tempDir();
    const stateRoot = join(dir, 'state');
    const log = join(dir, 'tick.log');
    const params = { cmd: ['sh', '-c', 'while :; do echo tick; sleep 0.02; done'], log: { stdout: log, maxSize: '1M', keep: 1 } };
    const src = (p: string): string => JSON.stringify(pathToFileURL(join(ROOT, p)).href);
    // A real agent process: the supervisor in its own node, killed with SIGKILL.
    const agent = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        '--input-type=module',
        '-e',
        [
          `const { svcKind } = await import(${src('src/resources/svc.ts')});`,
          `const { resourceStateDir } = await import(${src('src/state-dir.ts')});`,
          `const world = { isProvided: () => false, stateDir: (id) => resourceStateDir(${JSON.stringify(stateRoot)}, id), facts: () => ({}) };`,
          `const res = svcKind.create('svc[tick]', svcKind.schema.parse(${JSON.stringify(params)}), world);`,
          `const q = () => undefined;`,
          `await res.checkApply({ apply: true, refresh: false, signal: new AbortController().signal, log: { change: q, info: q, warn: q, debug: q } });`,
          `console.log('up');`,
          `setInterval(() => {}, 1 << 30);`,
        ].join('\n'),
      ],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] },
    );
    await new Promise<void>((resolve, reject) => {
      agent.stdout.once('data', () => resolve());
      agent.once('exit', (code) => reject(new Error(`the agent exited with ${String(code)}`)));
    });
    agent.kill('SIGKILL');
    await new Promise((r) => agent.once('exit', r));
    const before = (await stat(log)).size;
    await waitFor('output after the agent died', async () => (await stat(log)).size > before + 50);
    // The next agent (here: this process) adopts the service and, removing it, stops it and ends its logger.
    const next = make(params, { world: testWorld({ stateRoot }), name: 'tick' });
    await next.run();
    await next.res.close?.('removed');
    let last = -1;
    await waitFor('the output to stop', async () => {
      const now = (await stat(log)).size;
      const same = now === last;
      last = now;
      await sleep(100);
      return same;
    });
  });
});
