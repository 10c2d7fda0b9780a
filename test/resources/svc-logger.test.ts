import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readFile, readdir, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, afterEach, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { perlLoggerUsable } from '../../src/resources/svc/logger.js';
import { readStat, signalGroup, spawnProc, type Proc } from '../../src/resources/svc/proc.js';

/**
 * The two loggers between a service and its log files (logger.ts): the Perl one its wrapper starts (every service
 * without a fence) and node's, started by the agent (a fenced service's watchdog, and BACKPLANE_SVC_LOGGER=node).
 * Same input, same files, byte for byte.
 */

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const dirs: string[] = [];
const procs: Proc[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'bp-svclogger-'));
  await chmod(d, 0o700);
  dirs.push(d);
  return d;
}
// The loggers' handles are unref'd (an agent does not wait for them): this keeps the test's event loop up meanwhile.
const keepAlive = setInterval(() => undefined, 1000);
after(async () => {
  clearInterval(keepAlive);
  for (const p of procs) signalGroup(p.pid, 'SIGKILL');
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});
afterEach(() => {
  delete process.env['BACKPLANE_SVC_LOGGER'];
});

type Which = 'perl' | 'node';

async function start(which: Which, dir: string, script: string, log: { maxSize: number; keep: number }, env: NodeJS.ProcessEnv = {}): Promise<Proc> {
  if (which === 'node') process.env['BACKPLANE_SVC_LOGGER'] = 'node';
  else delete process.env['BACKPLANE_SVC_LOGGER'];
  const p = await spawnProc({
    file: 'sh',
    args: ['-c', script],
    cwd: '/',
    env: { PATH: '/usr/bin:/bin', ...env },
    stdoutPath: join(dir, 'out.log'),
    stderrPath: join(dir, 'err.log'),
    logRotation: { ...log, fifoDir: dir },
  });
  procs.push(p);
  return p;
}

/** Runs `script` to its end with its output through `which` logger; the log files and their bytes once it is done. */
async function logged(which: Which, script: string, log: { maxSize: number; keep: number }): Promise<Record<string, string>> {
  const dir = await tempDir();
  const p = await start(which, dir, script, log);
  await p.exited;
  await p.outputDone;
  const files: Record<string, string> = {};
  for (const n of (await readdir(dir)).sort()) if (n.endsWith('.log') || /\.log\.\d+$/.test(n)) files[n] = await readFile(join(dir, n), 'latin1');
  return files;
}

/** Processes whose command line contains `text`. */
async function processesWith(text: string): Promise<number[]> {
  const out: number[] = [];
  for (const n of await readdir('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    const cmd = await readFile(`/proc/${n}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes(text)) out.push(Number(n));
  }
  return out;
}

const PERL_MARK = '# backplane svc logger';
const NODE_MARK = '--max-old-space-size=16';

describe('svc loggers', { skip: perlLoggerUsable() ? false : 'no /usr/bin/perl, setsid or env here' }, () => {
  test('both loggers write the same files: rotation at exactly maxSize on whole lines, keep, a line longer than maxSize cut, keep 0, binary bytes', async () => {
    const cases: [string, string, { maxSize: number; keep: number }][] = [
      // 60 lines of 100 bytes on stdout, 5 on stderr, against 1,000 bytes and 3 kept.
      ['rotation', 'i=0; while [ $i -lt 60 ]; do printf "%099d\\n" $i; i=$((i+1)); done; i=0; while [ $i -lt 5 ]; do echo err-$i >&2; i=$((i+1)); done', { maxSize: 1000, keep: 3 }],
      ['a long line', 'printf "%0350d\\n" 7; echo short; printf "%0250d" 1', { maxSize: 100, keep: 5 }],
      ['keep 0', 'i=0; while [ $i -lt 30 ]; do echo line-$i; i=$((i+1)); done', { maxSize: 64, keep: 0 }],
      ['bytes', 'printf "\\000\\377\\r\\n\\001x"; printf "\\000" >&2', { maxSize: 4096, keep: 1 }],
    ];
    for (const [what, script, log] of cases) {
      const [perl, node] = [await logged('perl', script, log), await logged('node', script, log)];
      assert.deepEqual(perl, node, `${what}: the Perl logger wrote other files than node's`);
      assert.ok(Object.keys(perl).length >= 2, what);
    }
    // The first case, checked for itself: 10 lines fill each 1,000-byte file, the last 10 of 60 are in out.log.
    const files = await logged('perl', cases[0]![1], cases[0]![2]);
    assert.deepEqual(Object.keys(files), ['err.log', 'out.log', 'out.log.1', 'out.log.2', 'out.log.3']);
    assert.equal(files['out.log.1']?.length, 1000);
    assert.equal(files['out.log']?.split('\n').length, 11);
    assert.ok(files['out.log']?.startsWith(`${'0'.repeat(97)}50\n`), 'out.log holds the last ten lines');
    assert.equal(files['err.log'], 'err-0\nerr-1\nerr-2\nerr-3\nerr-4\n');
  });

  test('the Perl logger: started by the wrapper in its own session, outside the service\'s group, with none of the service\'s environment; the service holds none of its fds; output is done only once it has written all', async () => {
    const dir = await tempDir();
    // PERL5OPT in the service's environment would make a perl that honoured it fail at once.
    const p = await start('perl', dir, 'i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done; exec sleep 30', { maxSize: 1 << 20, keep: 1 }, { PERL5OPT: '-Mno_such_module_here', PERLIO: ':crlf' });
    const hexOut = Buffer.from(join(dir, 'out.log')).toString('hex');
    const perlLoggers = async (): Promise<number[]> => (await processesWith(PERL_MARK)).filter((pid) => readFileSafe(`/proc/${pid}/cmdline`).includes(hexOut));
    await waitFor('the Perl logger', async () => (await perlLoggers()).length > 0);
    await sleep(100);
    const loggers = await perlLoggers();
    assert.equal(loggers.length, 1, 'one Perl logger for the start');
    assert.deepEqual(await processesWith(`${NODE_MARK}\u0000-e`).then((l) => l.filter((pid) => readFileSafe(`/proc/${pid}/cmdline`).includes(dir))), [], 'no node logger');
    const logger = loggers[0]!;
    const st = await readStat(logger);
    assert.ok(st !== undefined);
    assert.notEqual(st.pgrp, p.pgid, 'the logger is in the service\'s process group');
    assert.equal(st.pgrp, logger, 'the logger leads its own group (setsid)');
    // Nothing of the service's environment (the shell sets PWD on its own).
    const environ = readFileSafe(`/proc/${logger}/environ`).split('\0').filter((e) => e !== '' && !e.startsWith('PWD='));
    assert.deepEqual(environ, [], 'the logger got the service\'s environment');
    // The service (the shell, still running) holds only the pipes' write ends: no log file, no read end, no fd 3.
    for (const fd of await readdir(`/proc/${p.pid}/fd`)) {
      const target = await readlink(`/proc/${p.pid}/fd/${fd}`).catch(() => '');
      assert.ok(!target.endsWith('.log'), `the service holds fd ${fd}: ${target}`);
      assert.ok(!target.startsWith('socket:'), `the service holds fd ${fd}: ${target}`);
    }
    await waitFor('the output', async () => (await readFile(join(dir, 'out.log'), 'utf8')).includes('line-1999\n'));
    // Still running: the output is not done.
    const early = await Promise.race([p.outputDone.then(() => 'done'), sleep(300).then(() => 'waiting')]);
    assert.equal(early, 'waiting', 'outputDone resolved while the service still held its pipes');
    signalGroup(p.pgid, 'SIGKILL');
    await p.exited;
    await p.outputDone;
    await waitFor('the logger to go', async () => (await readStat(logger)) === undefined || (await readStat(logger))?.state === 'Z');
    assert.equal((await stat(join(dir, 'out.log'))).size > 0, true);
  });

  test('outputDone waits for the Perl logger to have written everything: a service that writes 4 MB and exits', async () => {
    const dir = await tempDir();
    const p = await start('perl', dir, 'head -c 4194304 /dev/zero | tr "\\0" "y"', { maxSize: 64 << 20, keep: 1 });
    await p.exited;
    await p.outputDone;
    // Read at once: everything is there the moment outputDone resolves, not a moment later.
    assert.equal((await stat(join(dir, 'out.log'))).size, 4194304);
  });

  test("the Perl logger's pipes: made by the wrapper, one for a file both streams share, one for a stream alone; the logger unlinks them and makes as many spares; a pipe that cannot be made stops the start, saying why in the log", async () => {
    const script = 'echo out-1; echo err-1 >&2; echo out-2; echo err-2 >&2';
    const run = async (stdoutPath: string, stderrPath: string, fifoDir: string): Promise<Proc> => {
      const p = await spawnProc({ file: 'sh', args: ['-c', script], cwd: '/', env: { PATH: '/usr/bin:/bin' }, stdoutPath, stderrPath, logRotation: { maxSize: 1 << 20, keep: 1, fifoDir } });
      procs.push(p);
      await p.exited;
      await p.outputDone;
      return p;
    };
    // The FIFOs in the directory, and which of them a start's pipes were: the names its logger unlinked.
    const pipesIn = async (dir: string): Promise<string[]> => (await readdir(dir)).filter((n) => n.startsWith('.log-pipe-')).sort();
    // One file for both: one pipe, stderr into stdout's, in the order written; one spare. Then a start on it.
    const both = await tempDir();
    await run(join(both, 'all.log'), join(both, 'all.log'), both);
    assert.equal(await readFile(join(both, 'all.log'), 'utf8'), 'out-1\nerr-1\nout-2\nerr-2\n');
    const spare = await pipesIn(both);
    assert.equal(spare.length, 1);
    await run(join(both, 'all.log'), join(both, 'all.log'), both);
    assert.equal(await readFile(join(both, 'all.log'), 'utf8'), 'out-1\nerr-1\nout-2\nerr-2\n'.repeat(2));
    assert.equal((await pipesIn(both)).length, 1);
    assert.ok(!(await pipesIn(both)).includes(spare[0]!), 'the spare was not taken');
    // stdout alone (stderr to /dev/null), stderr alone: one spare each.
    const outOnly = await tempDir();
    await run(join(outOnly, 'out.log'), '/dev/null', outOnly);
    assert.equal(await readFile(join(outOnly, 'out.log'), 'utf8'), 'out-1\nout-2\n');
    const errOnly = await tempDir();
    await run('/dev/null', join(errOnly, 'err.log'), errOnly);
    assert.equal(await readFile(join(errOnly, 'err.log'), 'utf8'), 'err-1\nerr-2\n');
    assert.equal((await pipesIn(outOnly)).length + (await pipesIn(errOnly)).length, 2);
    // No directory for the pipes: the service never runs; its stderr log says why.
    const logs = await tempDir();
    const failed = await run(join(logs, 'out.log'), join(logs, 'err.log'), join(logs, 'no-such-dir'));
    assert.equal((await failed.exited).code, 70);
    assert.equal(await readFile(join(logs, 'out.log'), 'utf8'), '');
    assert.match(
      await readFile(join(logs, 'err.log'), 'utf8'),
      new RegExp(`mkfifo: .*No such file or directory\\nbackplane: cannot make the log pipes in ${join(logs, 'no-such-dir')}, so the service was not started \\(see the mkfifo error above: .*\\)\\n$`),
    );
  });

  test("the wrapper's mkfifo runs with none of the service's environment", async () => {
    // LD_PRELOAD naming no library: ld.so says so on stderr for each program started with it. The wrapper's shell
    // and the service (a second shell) get it, and say so into the log; mkfifo, whose environment is emptied as
    // the logger's is, must not (a library there would run as root).
    const dir = await tempDir();
    const p = await spawnProc({
      file: 'sh',
      args: ['-c', 'echo ran'],
      cwd: '/',
      env: { PATH: '/usr/bin:/bin', LD_PRELOAD: '/nonexistent-backplane-test.so' },
      stdoutPath: join(dir, 'out.log'),
      stderrPath: join(dir, 'err.log'),
      logRotation: { maxSize: 1 << 20, keep: 1, fifoDir: dir },
    });
    procs.push(p);
    await p.exited;
    await p.outputDone;
    assert.equal(await readFile(join(dir, 'out.log'), 'utf8'), 'ran\n');
    const warnings = (await readFile(join(dir, 'err.log'), 'utf8')).split('\n').filter((l) => l.includes('nonexistent-backplane-test.so'));
    assert.equal(warnings.length, 2, warnings.join('\n'));
  });

  test('the Perl logger makes the spares with a system call: the only mkfifo of two starts is the wrapper\'s, on the first', { skip: canBindMount() ? false : 'needs root and unshare(1) for a private mount namespace' }, async () => {
    // /usr/bin/mkfifo, in a mount namespace of the child's own, is a script that logs each call and runs the real
    // one: so every mkfifo the wrapper or the logger runs, whatever its environment, is seen. The first start has no
    // spares (its wrapper makes the pipes), the second takes the ones the first start's logger made.
    const dir = await tempDir();
    const calls = join(dir, 'calls');
    const real = join(dir, 'mkfifo.real');
    await copyFile('/usr/bin/mkfifo', real);
    await chmod(real, 0o755);
    const fake = join(dir, 'mkfifo');
    await writeFile(fake, `#!/bin/sh\necho "$*" >> '${calls}'\nexec '${real}' "$@"\n`, { mode: 0o755 });
    const pipes = join(dir, 'pipes');
    await mkdir(pipes, { mode: 0o700 });
    const child = join(dir, 'starts.mts');
    await writeFile(
      child,
      `import { spawnProc } from ${JSON.stringify(join(ROOT, 'src/resources/svc/proc.ts'))};
import { readdirSync } from 'node:fs';
const spares = [];
// The logger's handles are unref'd, as for an agent: this keeps the event loop up while it is waited for.
const keepAlive = setInterval(() => undefined, 1000);
for (const round of [1, 2]) {
  const p = await spawnProc({ file: 'sh', args: ['-c', 'echo run-' + round], cwd: '/', env: { PATH: '/usr/bin:/bin' }, stdoutPath: ${JSON.stringify(join(dir, 'out.log'))}, stderrPath: ${JSON.stringify(join(dir, 'err.log'))}, logRotation: { maxSize: 1 << 20, keep: 1, fifoDir: ${JSON.stringify(pipes)} } });
  await p.exited;
  await p.outputDone;
  spares.push(readdirSync(${JSON.stringify(pipes)}).filter((n) => n.startsWith('.log-pipe-')).length);
}
console.log(JSON.stringify(spares));
clearInterval(keepAlive);
`,
    );
    const tsx = pathToFileURL(join(ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href;
    const run = spawnSync('unshare', ['-m', 'sh', '-c', 'mount --bind "$1" /usr/bin/mkfifo && exec "$2" --import "$3" "$4"', 'sh', fake, process.execPath, tsx, child], { encoding: 'utf8', cwd: ROOT, timeout: 60_000 });
    assert.equal(run.status, 0, `the starts failed: ${run.stderr}`);
    const out = run.stdout;
    // Two spares after each start (stdout's and stderr's), the first start's taken by the second.
    assert.deepEqual(JSON.parse(out.trim().split('\n').pop() ?? ''), [2, 2]);
    assert.equal(await readFile(join(dir, 'out.log'), 'utf8'), 'run-1\nrun-2\n');
    const lines = (await readFile(calls, 'utf8')).trim().split('\n');
    assert.equal(lines.length, 1, `mkfifo ran ${lines.length} times:\n${lines.join('\n')}`);
    assert.match(lines[0]!, /^-m 0600 -- \S+\/\.log-pipe-\w+ \S+\/\.log-pipe-\w+$/);
  });

  test('BACKPLANE_SVC_LOGGER=node keeps node\'s logger, started by the agent', async () => {
    const dir = await tempDir();
    const p = await start('node', dir, 'echo hi; exec sleep 30', { maxSize: 1 << 20, keep: 1 });
    await waitFor('the node logger', async () => (await processesWith(NODE_MARK)).some((pid) => readFileSafe(`/proc/${pid}/cmdline`).includes(JSON.stringify(join(dir, 'out.log')))));
    assert.deepEqual((await processesWith(PERL_MARK)).filter((pid) => readFileSafe(`/proc/${pid}/cmdline`).includes(Buffer.from(dir).toString('hex'))), []);
    signalGroup(p.pgid, 'SIGKILL');
    await p.exited;
    await p.outputDone;
    assert.equal(await readFile(join(dir, 'out.log'), 'utf8'), 'hi\n');
  });
});

/** Root, and unshare(1) can make a mount namespace here (a bind mount in it stays in it). */
function canBindMount(): boolean {
  if (process.getuid?.() !== 0) return false;
  try {
    execFileSync('unshare', ['-m', 'true'], { stdio: 'ignore', timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
}

function readFileSafe(path: string): string {
  try {
    return readFileSync(path, 'latin1');
  } catch {
    return '';
  }
}

async function waitFor(what: string, cond: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(20);
  }
}
