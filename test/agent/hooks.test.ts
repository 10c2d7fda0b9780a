import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { runHook } from '../../src/agent/hooks.js';
import { gatherFacts } from '../../src/facts.js';
import type { Alloc, HookName, HookSpec, ServiceSpec, TaskSpec } from '../../src/scheduler/types.js';
import { until } from '../helpers/engine.js';
import { createOtherUser, skipReason, type OtherUser } from '../helpers/other-user.js';

/**
 * A service's hooks, run for real: in the instance's context (its env, cwd, user), with their output kept and how
 * they ended said, and with nothing of theirs left running after a timeout or an abort.
 */

const host = { name: 'h1', facts: gatherFacts(), labels: { zone: 'a' } };
const alloc: Omit<Alloc, 'status'> = {
  id: 'web.2.0badcafe',
  service: 'web',
  index: 2,
  version: 'v7',
  host: 'h1',
  resources: { cpu: 0.1, memory: 1 << 20 },
  ports: { http: 20123, admin: 20124 },
  createdAt: 1,
  reschedules: [],
};

function spec(hooks: Partial<Record<HookName, HookSpec>>, task: Partial<TaskSpec> = {}): ServiceSpec {
  return {
    name: 'web',
    count: 3,
    version: 'v7',
    task: { cmd: ['/bin/true'], env: {}, ...task },
    resources: { cpu: 0.1, memory: 1 << 20 },
    ports: [{ name: 'http' }, { name: 'admin' }],
    placement: { constraints: [], distinctHosts: false, antiAffinity: [], strategy: 'binpack' },
    restart: { attempts: 2, intervalMs: 60_000, delayMs: 1000 },
    reschedule: { attempts: 0, intervalMs: 0, delayMs: 0, maxDelayMs: 0, unlimited: true },
    update: { maxParallel: 1, minHealthyMs: 0, healthyDeadlineMs: 60_000, progressDeadlineMs: 0, canary: 0, autoPromote: false, autoRevert: true },
    files: [],
    hooks,
  };
}

const sh = (script: string, timeoutMs = 30_000): HookSpec => ({ cmd: ['/bin/sh', '-c', script], timeoutMs });

/** Whether `pid` is still a live process (a zombie waiting for its reaper is dead). */
async function alive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) Z/s.test(stat);
  } catch {
    return false;
  }
}

describe('runHook', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bp-hooks-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('a hook that succeeds: ok, with its output (stdout and stderr) and "exit 0"', async () => {
    const r = await runHook({ spec: spec({ afterStart: sh('echo to-out; echo to-err >&2') }), alloc, host, hook: 'afterStart' });
    assert.equal(r.ok, true, r.output);
    assert.match(r.output, /to-out/);
    assert.match(r.output, /to-err/);
    assert.match(r.output, /\nexit 0$/);
  });

  test('a hook that fails: not ok, its output and its exit status', async () => {
    const r = await runHook({ spec: spec({ beforeStop: sh('echo "cannot drain: 3 sessions left" >&2; exit 3') }), alloc, host, hook: 'beforeStop' });
    assert.equal(r.ok, false);
    assert.equal(r.output, 'cannot drain: 3 sessions left\nexit 3');
    const killed = await runHook({ spec: spec({ beforeStop: sh('kill -SEGV $$') }), alloc, host, hook: 'beforeStop' });
    assert.equal(killed.ok, false);
    assert.match(killed.output, /killed by SIGSEGV$/);
  });

  test('only the last 4 KiB of the output is kept', async () => {
    const r = await runHook({ spec: spec({ afterStart: sh('head -c 20000 /dev/zero | tr "\\0" x; echo; echo THE-END') }), alloc, host, hook: 'afterStart' });
    assert.equal(r.ok, true);
    assert.match(r.output, /x\nTHE-END\nexit 0$/);
    assert.ok(r.output.length <= 4096 + '\nexit 0'.length, `output is ${r.output.length} chars`);
    assert.ok(r.output.length > 4000);
  });

  test("the hook sees the instance's env, ports and cwd, and HOOK", async () => {
    const cwd = join(dir, 'work-2');
    await mkdir(cwd);
    const s = spec(
      { beforePromote: sh('echo "$GREETING|$INSTANCE_INDEX|$INSTANCE_ID|$SERVICE_NAME|$SERVICE_VERSION|$PORT_HTTP|$PORT_ADMIN|$HOOK|$(pwd)"') },
      { env: { GREETING: 'hello {{ instance.index }} in {{ host.labels.zone }}' }, cwd: join(dir, 'work-{{ instance.index }}') },
    );
    const r = await runHook({ spec: s, alloc, host, hook: 'beforePromote' });
    assert.equal(r.ok, true, r.output);
    assert.equal(r.output.split('\n')[0], `hello 2 in a|2|web.2.0badcafe|web|v7|20123|20124|beforePromote|${cwd}`);
  });

  test('at its timeout the whole process group goes: SIGTERM, then SIGKILL after the grace', async () => {
    const pidFile = join(dir, 'child.pid');
    // Both the hook and its child ignore SIGTERM: only the SIGKILL after the grace ends them.
    const s = spec({ beforeStop: sh(`trap "" TERM; sleep 100 & echo $! > ${pidFile}; echo waiting; wait; wait`, 500) });
    const t0 = Date.now();
    const r = await runHook({ spec: s, alloc, host, hook: 'beforeStop' });
    const took = Date.now() - t0;
    assert.equal(r.ok, false);
    assert.equal(r.output, 'waiting\ntimed out after 500ms');
    assert.ok(took >= 2000, `SIGKILL only after the 2s grace (took ${took}ms)`);
    const child = Number(await readFile(pidFile, 'utf8'));
    assert.ok(child > 0);
    assert.equal(await alive(child), false, `the hook's child ${child} is gone`);
  });

  test('a timeout in whole seconds reads as such, and a hook that obeys SIGTERM ends without the grace', async () => {
    const pidFile = join(dir, 'child2.pid');
    const t0 = Date.now();
    const r = await runHook({ spec: spec({ beforeStop: sh(`sleep 100 & echo $! > ${pidFile}; wait`, 1000) }), alloc, host, hook: 'beforeStop' });
    const took = Date.now() - t0;
    assert.ok(took < 2800, `SIGTERM ended it: no SIGKILL grace to wait out (took ${took}ms)`);
    assert.equal(r.ok, false);
    assert.equal(r.output, 'timed out after 1s');
    assert.equal(await alive(Number(await readFile(pidFile, 'utf8'))), false);
  });

  test('what a successful hook leaves running in its group is killed (and does not hold the run open)', async () => {
    const pidFile = join(dir, 'left.pid');
    const r = await runHook({ spec: spec({ afterStart: sh(`sleep 100 & echo $! > ${pidFile}; echo bye`) }), alloc, host, hook: 'afterStart' });
    assert.equal(r.ok, true, r.output);
    assert.equal(r.output, 'bye\nexit 0');
    assert.equal(await alive(Number(await readFile(pidFile, 'utf8'))), false);
  });

  test('aborted: the group is killed at once and the result says so', async () => {
    const pidFile = join(dir, 'abort.pid');
    const ac = new AbortController();
    const running = runHook({ spec: spec({ beforeStop: sh(`echo $$ > ${pidFile}; exec sleep 100`) }), alloc, host, hook: 'beforeStop', signal: ac.signal });
    await until(async () => (await readFile(pidFile, 'utf8').catch(() => '')).trim() !== '', 10_000, 'the hook to start');
    const pid = Number(await readFile(pidFile, 'utf8'));
    ac.abort();
    const r = await running;
    assert.equal(r.ok, false);
    assert.equal(r.aborted, true);
    assert.equal(await alive(pid), false);
  });

  test('a program that does not exist, a cwd that does not, a user that does not: failed results saying why', async () => {
    const missing = await runHook({ spec: spec({ afterStart: { cmd: ['/nonexistent/hook-program', 'x'], timeoutMs: 5000 } }), alloc, host, hook: 'afterStart' });
    assert.equal(missing.ok, false);
    assert.match(missing.output, /cannot start \/nonexistent\/hook-program: .*ENOENT/);
    const onPath = await runHook({ spec: spec({ afterStart: { cmd: ['no-such-hook-program-here'], timeoutMs: 5000 } }), alloc, host, hook: 'afterStart' });
    assert.equal(onPath.ok, false);
    assert.match(onPath.output, /ENOENT/);
    const noCwd = await runHook({ spec: spec({ afterStart: sh('true') }, { cwd: join(dir, 'nope') }), alloc, host, hook: 'afterStart' });
    assert.equal(noCwd.ok, false);
    assert.match(noCwd.output, /cwd .*nope is not a directory/);
    const noUser = await runHook({ spec: spec({ afterStart: sh('true') }, { user: 'no-such-user-bp' }), alloc, host, hook: 'afterStart' });
    assert.equal(noUser.ok, false);
    assert.match(noUser.output, /there is no user no-such-user-bp/);
  });

  test('a hook the spec does not have is ok at once', async () => {
    assert.deepEqual(await runHook({ spec: spec({}), alloc, host, hook: 'beforePromote' }), { ok: true, output: 'no beforePromote hook' });
  });

  describe('as the task user', { skip: skipReason }, () => {
    let other: OtherUser;
    before(() => {
      other = createOtherUser();
    });
    after(() => other.remove());

    test("runs as the task's user and group, with its USER, in the instance's cwd", async () => {
      const cwd = join(dir, 'owned');
      await mkdir(cwd);
      await chmod(dir, 0o755);
      const s = spec({ beforeStop: sh('echo "$(id -u):$(id -g):$USER:$(pwd)"; touch mine') }, { user: other.name, cwd });
      const denied = await runHook({ spec: s, alloc, host, hook: 'beforeStop' });
      // The user may not write into root's directory: proof it does not run as root.
      assert.equal(denied.ok, false, denied.output);
      assert.match(denied.output, new RegExp(`^${other.uid}:${other.gid}:${other.name}:${cwd}\n.*Permission denied`, 's'));
      const ok = await runHook({ spec: spec({ beforeStop: sh('id -u') }, { user: other.name, group: 0 }), alloc, host, hook: 'beforeStop' });
      assert.equal(ok.output, `${other.uid}\nexit 0`);
    });
  });
});

describe('actions (an application backplane\'s exec): only what the spec names runs', () => {
  test('a declared action runs in the instance context with ACTION and ACTION_ID; anything else is refused, not run', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bp-action-'));
    try {
      const out = join(dir, 'out');
      const s: ServiceSpec = { ...spec({}), actions: { mark: { cmd: ['/bin/sh', '-c', `echo "$ACTION $ACTION_ID $INSTANCE_ID" > ${out}`], timeoutMs: 5000 } } };
      const ok = await runHook({ spec: s, alloc, host, hook: 'afterStart', action: { name: 'mark', id: 'a1' } });
      assert.equal(ok.ok, true, ok.output);
      assert.equal((await readFile(out, 'utf8')).trim(), 'mark a1 web.2.0badcafe');
      // A controller that is not an operator could name any command: only the spec's own actions can run.
      const refused = await runHook({ spec: s, alloc, host, hook: 'afterStart', action: { name: 'wipe', id: 'a2' } });
      assert.equal(refused.ok, false);
      assert.match(refused.output, /has no action "wipe"/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
