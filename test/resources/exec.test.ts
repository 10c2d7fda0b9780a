import { testWorld } from '../helpers/world.js';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, test } from 'node:test';
import { resourceId } from '../../src/graph/ids.js';
import { execKind } from '../../src/resources/exec.js';
import type { CheckResult, Resource, ResourceLog } from '../../src/resources/types.js';
import { rejection } from '../helpers/assert.js';

const ID = resourceId('exec', 'test');

interface LogEntry {
  readonly level: 'change' | 'info' | 'warn' | 'debug';
  readonly message: string;
  readonly fields: Record<string, unknown> | undefined;
}

class RecordingLog implements ResourceLog {
  readonly entries: LogEntry[] = [];
  change(message: string): void {
    this.entries.push({ level: 'change', message, fields: undefined });
  }
  info(message: string, fields?: Record<string, unknown>): void {
    this.entries.push({ level: 'info', message, fields });
  }
  warn(message: string, fields?: Record<string, unknown>): void {
    this.entries.push({ level: 'warn', message, fields });
  }
  debug(message: string, fields?: Record<string, unknown>): void {
    this.entries.push({ level: 'debug', message, fields });
  }
  /** Pids of processes the resource reported starting, in order. */
  pids(): number[] {
    return this.entries.flatMap((e) => (typeof e.fields?.['pid'] === 'number' ? [e.fields['pid']] : []));
  }
}

function make(params: Record<string, unknown>): Resource {
  return execKind.create(ID, execKind.schema.parse(params), testWorld());
}

function run(
  res: Resource,
  opts: { apply?: boolean; refresh?: boolean; signal?: AbortSignal; log?: RecordingLog } = {},
): Promise<CheckResult> {
  return res.checkApply({
    apply: opts.apply ?? true,
    refresh: opts.refresh ?? false,
    signal: opts.signal ?? new AbortController().signal,
    log: opts.log ?? new RecordingLog(),
  });
}

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'bp-exec-'));
  dirs.push(d);
  return d;
}
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

/** Gone or a zombie: `kill -0` would still say alive for a dead orphan (FACTS.md fact 5). */
async function processGone(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
}


describe('exec: running commands', () => {
  test('an argv command runs without a shell and reports what it ran', async () => {
    const dir = await tempDir();
    const marker = join(dir, 'marker file');
    const result = await run(make({ cmd: ['touch', marker] }));
    assert.equal(result.converged, false);
    assert.equal(result.changes.length, 1);
    assert.match(result.changes[0] ?? '', /^ran touch '.*marker file' \(\d.*(ms|s)\)$/);
    assert.ok(existsSync(marker));
  });

  test('argv elements are not interpreted by a shell', async () => {
    const dir = await tempDir();
    const out = join(dir, 'out');
    await run(make({ cmd: ['sh', '-c', 'printf "%s" "$1" > "$2"', 'x', '$HOME; *', out] }));
    assert.equal(await readFile(out, 'utf8'), '$HOME; *');
  });

  test('a string runs in /bin/sh with shell: true', async () => {
    const dir = await tempDir();
    const out = join(dir, 'out');
    await run(make({ cmd: `for w in a b; do echo $w; done > '${out}'`, shell: true }));
    assert.equal(await readFile(out, 'utf8'), 'a\nb\n');
  });

  test('a string runs in the shell at the given path', async () => {
    const dir = await tempDir();
    const out = join(dir, 'out');
    await run(make({ cmd: `echo "$BASH_VERSION" > '${out}'`, shell: '/bin/bash' }));
    assert.match(await readFile(out, 'utf8'), /^\d+\.\d+/);
  });

  test('cwd is used and env is merged over the environment', async () => {
    const dir = await tempDir();
    // `sh` is found through PATH, which only works when env is merged rather than replacing process.env.
    await run(make({ cmd: ['sh', '-c', 'pwd > out; echo "$FOO" >> out'], cwd: dir, env: { FOO: 'bar baz' } }));
    assert.equal(await readFile(join(dir, 'out'), 'utf8'), `${dir}\nbar baz\n`);
  });

  test('output is logged at debug, line by line', async () => {
    const log = new RecordingLog();
    await run(make({ cmd: 'echo out1; echo err1 >&2; printf partial', shell: true }), { log });
    const debug = log.entries.filter((e) => e.level === 'debug').map((e) => e.message);
    assert.ok(debug.includes('stdout: out1'));
    assert.ok(debug.includes('stderr: err1'));
    assert.ok(debug.includes('stdout: partial'));
  });

  test('a command that backgrounds a daemon does not hang the run', async () => {
    const dir = await tempDir();
    const pidFile = join(dir, 'pid');
    const started = Date.now();
    // The daemon inherits stdout and keeps the pipe open after the shell exits.
    await run(make({ cmd: `sleep 30 & echo $! > '${pidFile}'`, shell: true }));
    assert.ok(Date.now() - started < 1500, `took ${Date.now() - started} ms`);
    const pid = Number(await readFile(pidFile, 'utf8'));
    process.kill(pid, 'SIGKILL');
  });
});

describe('exec: guards', () => {
  test('creates: an existing path means converged, a missing one runs the command', async () => {
    const dir = await tempDir();
    const marker = join(dir, 'marker');
    const existing = join(dir, 'existing');
    await writeFile(existing, '');
    assert.deepEqual(await run(make({ cmd: ['touch', marker], creates: existing })), { converged: true, changes: [] });
    assert.ok(!existsSync(marker));
    const r = await run(make({ cmd: ['touch', marker], creates: marker }));
    assert.equal(r.converged, false);
    assert.ok(existsSync(marker));
    assert.equal((await run(make({ cmd: ['touch', marker], creates: marker }))).converged, true);
  });

  test('onlyif: a failing guard means converged, a succeeding one runs the command', async () => {
    const dir = await tempDir();
    const marker = join(dir, 'marker');
    assert.equal((await run(make({ cmd: ['touch', marker], onlyif: ['false'] }))).converged, true);
    assert.equal((await run(make({ cmd: ['touch', marker], onlyif: `test -e '${marker}'` }))).converged, true);
    assert.ok(!existsSync(marker));
    assert.equal((await run(make({ cmd: ['touch', marker], onlyif: ['true'] }))).converged, false);
    assert.ok(existsSync(marker));
  });

  test('unless: a succeeding guard means converged, a failing one runs the command', async () => {
    const dir = await tempDir();
    const marker = join(dir, 'marker');
    const res = make({ cmd: ['touch', marker], unless: `test -e '${marker}'` });
    assert.equal((await run(make({ cmd: ['touch', marker], unless: ['true'] }))).converged, true);
    assert.ok(!existsSync(marker));
    assert.equal((await run(res)).converged, false);
    assert.ok(existsSync(marker));
    assert.equal((await run(res)).converged, true, 'the second run sees the marker and is idempotent');
  });

  test('guards see cwd and env', async () => {
    const dir = await tempDir();
    const marker = join(dir, 'marker');
    await writeFile(join(dir, 'flag'), '');
    const r = await run(make({ cmd: ['touch', marker], cwd: dir, env: { WANT: 'yes' }, onlyif: 'test -e flag && test "$WANT" = yes', shell: true }));
    assert.equal(r.converged, false);
    assert.ok(existsSync(marker));
  });

  test('refreshOnly runs only when refreshed', async () => {
    const dir = await tempDir();
    const marker = join(dir, 'marker');
    const res = make({ cmd: ['touch', marker], refreshOnly: true });
    assert.deepEqual(await run(res), { converged: true, changes: [] });
    assert.ok(!existsSync(marker));
    const r = await run(res, { refresh: true });
    assert.equal(r.converged, false);
    assert.ok(existsSync(marker));
  });

  test('a guard that cannot start is an error, not a silent skip', async () => {
    const err = await rejection(run(make({ cmd: ['true'], unless: ['/nonexistent/check'] })));
    assert.equal(err.code, 'E_APPLY');
    assert.match(err.message, /unless command could not start/);
  });
});

describe('exec: noop mode', () => {
  test('reports what would run without running it, but does run the guards', async () => {
    const dir = await tempDir();
    const marker = join(dir, 'marker');
    const guardRan = join(dir, 'guard-ran');
    const r = await run(make({ cmd: ['touch', marker], unless: ['sh', '-c', `touch '${guardRan}'; exit 1`] }), { apply: false });
    assert.equal(r.converged, false);
    assert.deepEqual(r.changes, [`would run touch ${marker}`]);
    assert.ok(!existsSync(marker));
    assert.ok(existsSync(guardRan));
  });

  test('a converged exec is converged in noop mode too', async () => {
    assert.deepEqual(await run(make({ cmd: ['false'], onlyif: ['false'] }), { apply: false }), { converged: true, changes: [] });
  });
});

describe('exec: failures', () => {
  test('a non-zero exit is E_APPLY with the exit code and the stderr tail', async () => {
    const err = await rejection(
      run(make({ cmd: 'for i in $(seq 1 30); do echo "err line $i" >&2; echo "out line $i"; done; exit 3', shell: true })),
    );
    assert.equal(err.code, 'E_APPLY');
    assert.equal(err.resource, ID);
    assert.ok(err.hint !== undefined);
    assert.match(err.message, /exited with code 3/);
    assert.match(err.message, /err line 30/);
    assert.match(err.message, /err line 11\n/);
    assert.doesNotMatch(err.message, /err line 10\n/);
    assert.doesNotMatch(err.message, /out line/);
    assert.match(err.format(), /^exec\[test\]: .*\n[\s\S]*hint: /);
  });

  test('a command killed by a signal says so', async () => {
    const err = await rejection(run(make({ cmd: ['sh', '-c', 'kill -USR1 $$'] })));
    assert.equal(err.code, 'E_APPLY');
    assert.match(err.message, /killed by signal SIGUSR1/);
  });

  test('stdout is shown when stderr was empty', async () => {
    const err = await rejection(run(make({ cmd: ['sh', '-c', 'echo only-stdout; exit 1'] })));
    assert.match(err.message, /stdout.*\n.*only-stdout/);
  });

  test('an endless line is cut, so the error stays small', async () => {
    const err = await rejection(run(make({ cmd: "head -c 1000000 /dev/zero | tr '\\0' a >&2; exit 1", shell: true })));
    assert.ok(err.message.length < 10_000, `message is ${err.message.length} chars`);
  });

  test('a missing program is E_APPLY with a hint', async () => {
    const err = await rejection(run(make({ cmd: ['/nonexistent/program', 'x'] })));
    assert.equal(err.code, 'E_APPLY');
    assert.match(err.hint ?? '', /\/nonexistent\/program/);
  });

  test('a timeout terminates the command and says so', async () => {
    const log = new RecordingLog();
    const started = Date.now();
    const err = await rejection(run(make({ cmd: ['sleep', '30'], timeout: '300ms' }), { log }));
    assert.equal(err.code, 'E_TIMEOUT');
    assert.match(err.message, /timed out after 300ms/);
    assert.ok(Date.now() - started < 1500, `took ${Date.now() - started} ms`);
    const [pid] = log.pids();
    assert.ok(pid !== undefined);
    assert.ok(await processGone(pid));
  });

  test('a timeout escalates to SIGKILL when SIGTERM is ignored', async () => {
    const log = new RecordingLog();
    const started = Date.now();
    const err = await rejection(run(make({ cmd: 'trap "" TERM; sleep 30', shell: true, timeout: '200ms' }), { log }));
    assert.equal(err.code, 'E_TIMEOUT');
    const took = Date.now() - started;
    assert.ok(took >= 2000 && took < 3500, `took ${took} ms`);
    const [pid] = log.pids();
    assert.ok(pid !== undefined && (await processGone(pid)));
  });
});

describe('exec: cancellation', () => {
  test('abort kills a running child promptly', async () => {
    const log = new RecordingLog();
    const ac = new AbortController();
    const p = run(make({ cmd: ['sleep', '30'] }), { signal: ac.signal, log });
    await waitFor('the child to start', () => log.pids().length > 0);
    const [pid] = log.pids();
    assert.ok(pid !== undefined);
    assert.equal(await processGone(pid), false);
    const aborted = Date.now();
    ac.abort();
    const err = await rejection(p);
    assert.ok(Date.now() - aborted < 1500, `took ${Date.now() - aborted} ms`);
    assert.equal(err.code, 'E_ABORTED');
    assert.ok(await processGone(pid), `pid ${pid} is still running`);
  });

  test('abort kills the whole process tree, with SIGKILL when SIGTERM is ignored', async () => {
    const dir = await tempDir();
    const pidFile = join(dir, 'pid');
    const log = new RecordingLog();
    const ac = new AbortController();
    const p = run(make({ cmd: `trap "" TERM; sleep 30 & echo $! > '${pidFile}'; wait`, shell: true }), { signal: ac.signal, log });
    await waitFor('the grandchild to start', async () => (await readFile(pidFile, 'utf8').catch(() => '')).endsWith('\n'));
    const grandchild = Number(await readFile(pidFile, 'utf8'));
    const [shellPid] = log.pids();
    assert.ok(shellPid !== undefined);
    const aborted = Date.now();
    ac.abort();
    const err = await rejection(p);
    assert.ok(Date.now() - aborted < 1500, `took ${Date.now() - aborted} ms`);
    assert.equal(err.code, 'E_ABORTED');
    assert.ok(await processGone(shellPid), 'the shell is still running');
    assert.ok(await processGone(grandchild), 'the grandchild is still running');
  });

  test('abort during a guard kills the guard', async () => {
    const log = new RecordingLog();
    const ac = new AbortController();
    const dir = await tempDir();
    const marker = join(dir, 'marker');
    const p = run(make({ cmd: ['touch', marker], onlyif: ['sleep', '30'] }), { signal: ac.signal, log });
    await waitFor('the guard to start', () => log.pids().length > 0);
    ac.abort();
    const err = await rejection(p);
    assert.equal(err.code, 'E_ABORTED');
    const [pid] = log.pids();
    assert.ok(pid !== undefined && (await processGone(pid)));
    assert.ok(!existsSync(marker));
  });

  test('children do not outlive a crash of this process', async () => {
    const execUrl = new URL('../../src/resources/exec.ts', import.meta.url).href;
    const script = `
      import { execKind } from ${JSON.stringify(execUrl)};
      const log = { change() {}, info() {}, warn() {}, debug(_m, f) {
        if (typeof f?.pid === 'number') { console.log(f.pid); setTimeout(() => { throw new Error('crash'); }, 20); }
      } };
      const res = execKind.create('exec[x]', execKind.schema.parse({ cmd: ['sleep', '30'] }), { isProvided: () => false });
      void res.checkApply({ apply: true, refresh: false, signal: new AbortController().signal, log });
    `;
    const node = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    node.stdout.on('data', (b: Buffer) => (out += b.toString()));
    const [code] = (await once(node, 'close')) as [number | null];
    assert.equal(code, 1, 'the script should have crashed');
    const pid = Number(out.trim());
    assert.ok(pid > 0, `no pid printed: ${JSON.stringify(out)}`);
    await waitFor(`pid ${pid} to die`, () => processGone(pid), 1000);
  });

  test('an already aborted signal runs nothing', async () => {
    const dir = await tempDir();
    const marker = join(dir, 'marker');
    const err = await rejection(run(make({ cmd: ['touch', marker] }), { signal: AbortSignal.abort() }));
    assert.equal(err.code, 'E_ABORTED');
    assert.ok(!existsSync(marker));
  });
});

describe('exec: watch', () => {
  function watchCtx(ac: AbortController, log = new RecordingLog()) {
    const reasons: string[] = [];
    let readyCount = 0;
    return {
      reasons,
      log,
      readyCount: () => readyCount,
      ctx: { signal: ac.signal, ready: () => void readyCount++, changed: (r: string) => void reasons.push(r), log },
    };
  }

  test('each line printed by watch.cmd triggers a change; abort kills it', async () => {
    const ac = new AbortController();
    const w = watchCtx(ac);
    const res = make({ cmd: ['true'], shell: true, watch: { cmd: 'for i in 1 2 3; do echo tick$i; done; sleep 30' } });
    const done = res.watch?.(w.ctx);
    assert.ok(done !== undefined);
    await waitFor('three lines', () => w.reasons.length >= 3);
    assert.deepEqual(w.reasons, ['watch: tick1', 'watch: tick2', 'watch: tick3']);
    assert.equal(w.readyCount(), 1);
    const [pid] = w.log.pids();
    assert.ok(pid !== undefined);
    const aborted = Date.now();
    ac.abort();
    await done;
    assert.ok(Date.now() - aborted < 1500);
    assert.ok(await processGone(pid));
  });

  test('a watch.cmd that exits is restarted after a backoff', async () => {
    const ac = new AbortController();
    const w = watchCtx(ac);
    const res = make({ cmd: ['true'], watch: { cmd: ['echo', 'hello'] } });
    const done = res.watch?.(w.ctx);
    await waitFor('a restart', () => w.reasons.filter((r) => r === 'watch: hello').length >= 2, 4000);
    assert.ok(w.reasons.includes('watch command restarted'));
    assert.ok(w.log.entries.some((e) => e.level === 'warn' && /exited with code 0; restarting in 1\.00s/.test(e.message)));
    assert.equal(w.readyCount(), 1);
    ac.abort();
    await done;
  });

  test('a watch.cmd that cannot start still lets the resource become ready', async () => {
    const ac = new AbortController();
    const w = watchCtx(ac);
    const done = make({ cmd: ['true'], watch: { cmd: ['/nonexistent/watcher'] } }).watch?.(w.ctx);
    await waitFor('ready', () => w.readyCount() === 1);
    await waitFor('a warning', () => w.log.entries.some((e) => e.level === 'warn' && /could not start/.test(e.message)));
    ac.abort();
    await done;
  });

  test('watch.files triggers a change when a file is edited', async () => {
    const dir = await tempDir();
    const file = join(dir, 'conf');
    await writeFile(file, 'a');
    const ac = new AbortController();
    const w = watchCtx(ac);
    const done = make({ cmd: ['true'], watch: { files: [file] } }).watch?.(w.ctx);
    await waitFor('ready', () => w.readyCount() === 1);
    await writeFile(file, 'b');
    await waitFor('a change', () => w.reasons.length > 0);
    assert.ok(w.reasons.some((r) => r.includes(file)));
    ac.abort();
    await done;
  });

  test('with nothing to watch it is ready at once and returns on abort', async () => {
    const ac = new AbortController();
    const w = watchCtx(ac);
    const done = make({ cmd: ['true'] }).watch?.(w.ctx);
    await waitFor('ready', () => w.readyCount() === 1);
    ac.abort();
    await done;
    assert.deepEqual(w.reasons, []);
  });
});

describe('exec: schema', () => {
  test('a string cmd without shell is rejected with a hint', () => {
    const r = execKind.schema.safeParse({ cmd: 'sleep 2' });
    assert.equal(r.success, false);
    assert.deepEqual(r.error?.issues[0]?.path, ['cmd']);
    assert.match(r.error?.issues[0]?.message ?? '', /shell: true/);
  });

  test('defaults', () => {
    assert.deepEqual(execKind.schema.parse({ cmd: ['true'] }), { cmd: ['true'], shell: false, env: {}, timeout: 0, refreshOnly: false });
    assert.equal(execKind.refreshable, true);
  });
});
