import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, closeSync, constants as fsConstants, fstatSync, readFileSync, statSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import type { Readable } from 'node:stream';
import { openLogForAppend } from './logfile.js';
import type { WatchdogConfig } from './fence.js';
import { startLogger, type Logger, type WrapperLogger } from './logger.js';

/**
 * Processes as the supervisor sees them: one it spawned (its 'exit' event is exact and immediate) or one it adopted
 * from a previous agent (not its child: only /proc can tell when it is gone, and `kill -0` cannot, because a dead
 * orphan stays a zombie until PID 1 reaps it — FACTS.md fact 5).
 */

export interface ExitInfo {
  /** null when killed by a signal, or when the process was adopted and its status cannot be known. */
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  /** false for an adopted process: only its parent (PID 1 by then) learns the exit status. */
  readonly known: boolean;
  readonly at: number;
}

export interface Proc {
  readonly pid: number;
  /** The child leads its own process group (setsid), so pgid = pid; kept apart for clarity in kills. */
  readonly pgid: number;
  /** Field 22 of /proc/PID/stat (clock ticks since boot): with the pid, it names one process for good. */
  readonly starttime: string;
  /** Wall clock (ms) when it started, for "ran for" and backoff decisions. */
  readonly startedAt: number;
  readonly adopted: boolean;
  /** Never rejects. */
  readonly exited: Promise<ExitInfo>;
  /** Resolves when the logger has written all output and exited (at once for an adopted process). Never rejects. */
  readonly outputDone: Promise<void>;
  /**
   * Stop watching: the process itself is left alone. Until then it keeps the agent's event loop alive (a child
   * handle, or the /proc poll for an adopted process), as any supervision in progress should.
   */
  release(): void;
}

export interface ProcStat {
  readonly state: string;
  readonly ppid: number;
  readonly pgrp: number;
  readonly starttime: string;
}

/** /proc/PID/stat, or undefined when there is no such process. */
export async function readStat(pid: number): Promise<ProcStat | undefined> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  return parseStat(text);
}

/** readStat, synchronously: for a process of our own, at once after its spawn. */
function readStatSync(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  return parseStat(text);
}

/** Fields after the command name, which is in parentheses and may itself contain spaces and parentheses. */
export function parseStat(text: string): ProcStat | undefined {
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state), so field N is rest[N - 3].
  const state = rest[0];
  const ppid = Number(rest[1]);
  const pgrp = Number(rest[2]);
  const starttime = rest[19];
  if (state === undefined || starttime === undefined || !Number.isInteger(pgrp)) return undefined;
  return { state, ppid, pgrp, starttime };
}

/** Alive = exists and is not a zombie (a zombie has exited; it only waits for its parent to reap it). */
export function isAlive(st: ProcStat | undefined): st is ProcStat {
  return st !== undefined && st.state !== 'Z' && st.state !== 'X';
}

/** Live (non-zombie) members of a process group. Scans /proc: used only while stopping, never per tick. */
export async function groupMembers(pgid: number): Promise<number[]> {
  let names: string[];
  try {
    names = await readdir('/proc');
  } catch {
    return [];
  }
  const members: number[] = [];
  await Promise.all(
    names.map(async (n) => {
      if (!/^\d+$/.test(n)) return;
      const st = await readStat(Number(n));
      if (isAlive(st) && st.pgrp === pgid) members.push(Number(n));
    }),
  );
  return members;
}

export function signalGroup(pgid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pgid, sig);
  } catch {
    // ESRCH: the group is gone already
  }
}

export function signalPid(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // gone already
  }
}

export interface SpawnSpec {
  readonly file: string;
  readonly args: readonly string[];
  readonly cwd: string;
  readonly env: NodeJS.ProcessEnv;
  readonly uid?: number | undefined;
  readonly gid?: number | undefined;
  /** The user's name when uid has a passwd entry: its supplementary groups are set up as login would. */
  readonly userName?: string | undefined;
  /** cgroup.procs files the process writes its own pid into before the program runs. */
  readonly cgroupProcs?: readonly string[] | undefined;
  readonly stdoutPath: string;
  readonly stderrPath: string;
  /** Output to regular files goes through a logger that rotates at exactly maxSize; its pipes are made in fifoDir. */
  readonly logRotation?: { readonly maxSize: number; readonly keep: number; readonly fifoDir: string } | undefined;
  /** A fence watchdog in the logger (fence.ts); needs logRotation for its directory. Starts a logger even without log files. */
  readonly fence?: WatchdogConfig | undefined;
}

/**
 * The process joins its cgroups itself, as root, before any of the service's code runs: a program that forks or
 * daemonizes (setsid, double fork) in its first microseconds would otherwise leave children outside the cgroup
 * that no stop could find (the agent moving it in after the spawn comes 10-30 ms late). Then it drops to the
 * service's user with setpriv, which, unlike spawn's uid/gid (they clear the supplementary groups), gives the user
 * its groups as login would. exec keeps the pid, so the pid and start time read at the spawn name the service.
 * A cgroup it cannot join is said on stderr and the program runs anyway; the supervisor checks and warns.
 */
const WRAPPER = [
  // The Perl logger (logger.ts), started before the cgroups are joined and then in a session of its own (it calls
  // setsid): outside the service's cgroup and process group, so no stop or kill of the service reaches it before it
  // has written everything. Its environment is emptied first ($3: every name in the service's): PERL5OPT, PERL5LIB
  // or PERLIO meant for the service must not reach code that runs as root; mkfifo's too (LD_PRELOAD).
  // Its pipes are FIFOs in the private state directory, by absolute path ($4: stdout's, $5: stderr's, either ''
  // when that stream is not logged; $6 set when stderr goes into stdout's): spares the previous start's logger made,
  // or, without them ($7 set), made here. Made by the agent, they were a fork of its main thread and an exec on the
  // way to a first start (~10 ms of a ~170 ms cold run on 2 cores); here they are one exec beside the service's.
  // The logger opens the read ends (8, 9) and the shell the write ends, in the same order: each open waits for the
  // other side, so neither can run ahead. The logger unlinks the names first thing, then makes the next start's
  // spares. A pipe that cannot be made stops the start (exit 70, said in the stderr log).
  // Then the fds that were the logger's (3: the agent's end-of-output pipe; the log files) are closed: the service
  // must hold none, or the logger would never see end of file nor the agent the logger's end.
  'k=$1; shift',
  'if [ "$k" -gt 0 ]; then',
  '  a=$4 b=$5',
  '  [ -z "$7" ] || ( unset $3; exec /usr/bin/mkfifo -m 0600 -- ${a:+"$a"} ${b:+"$b"} ) || { p=${a:-$b}; echo "backplane: cannot make the log pipes in ${p%/*}, so the service was not started (see the mkfifo error above: no space or inodes left there, or a read-only file system?)" >&2; exit 70; }',
  '  if [ -z "$b" ]; then ( unset $3; exec /usr/bin/perl -e "$1" -- "$2" ) 8<"$a" </dev/null >/dev/null 2>&1 &',
  '  elif [ -z "$a" ]; then ( unset $3; exec /usr/bin/perl -e "$1" -- "$2" ) 9<"$b" </dev/null >/dev/null 2>&1 &',
  '  else ( unset $3; exec /usr/bin/perl -e "$1" -- "$2" ) 8<"$a" 9<"$b" </dev/null >/dev/null 2>&1 &',
  '  fi',
  '  s=$6',
  '  shift 7',
  '  i=3',
  '  while [ "$i" -lt $((k + 3)) ]; do eval "exec $i>&-"; i=$((i + 1)); done',
  '  [ -z "$a" ] || exec 1>"$a"',
  '  if [ -n "$s" ]; then exec 2>&1; elif [ -n "$b" ]; then exec 2>"$b"; fi',
  'fi',
  'n=$1; shift',
  'while [ "$n" -gt 0 ]; do',
  '  echo $$ 2>/dev/null >"$1" || echo "backplane: cannot join cgroup ${1%/cgroup.procs}" >&2',
  '  shift; n=$((n-1))',
  'done',
  'exec "$@"',
].join('\n');

/**
 * Loads what a spawn needs ahead of it: node:child_process is a lazy built-in of the CLI (scripts/build.mjs), and its
 * first spawn with a pipe loads it with node:net and Node's stream modules, ~30 modules compiled on the main thread
 * (7-12 ms of a cold run on 2 cores, with a scavenge). Called while a svc's dependencies are applied (prepareStart),
 * so that cost falls beside their I/O rather than between the config file being written and the service's start.
 * True when it is loaded (always; the value keeps the read from being dropped as dead code).
 */
export function loadSpawn(): boolean {
  return typeof spawn === 'function';
}

/**
 * The argv that runs the program through WRAPPER: sh, the logger it starts (with the number of fds from 3 on that
 * are the logger's), the cgroup files, then setpriv when it changes user.
 */
export function wrappedArgv(program: string, spec: SpawnSpec, logger?: WrapperLogger): string[] {
  const procs = spec.cgroupProcs ?? [];
  const own = logger === undefined ? ['0'] : [String(1 + logger.fds.length), ...logger.args, Object.keys(spec.env).filter(unsettable).join(' '), ...logger.pipes];
  const argv = ['-c', WRAPPER, 'backplane-svc', ...own, String(procs.length), ...procs];
  if (spec.uid !== undefined) {
    // No passwd entry means no groups to look up: none but the primary one (the schema insists on a group then).
    const groups = spec.userName !== undefined ? '--init-groups' : '--clear-groups';
    argv.push('setpriv', `--reuid=${spec.uid}`, `--regid=${spec.gid ?? spec.uid}`, groups, '--');
  }
  argv.push(program, ...spec.args);
  return argv;
}

/**
 * Names the wrapper's `unset` takes: shell identifiers (a shell drops other names from what it passes on, and Perl
 * reads none), not the ones bash keeps read-only (unset would fail on them, ending the subshell before the logger).
 */
const BASH_READONLY = new Set(['BASHOPTS', 'BASH_VERSINFO', 'EUID', 'PPID', 'SHELLOPTS', 'UID']);
function unsettable(name: string): boolean {
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(name) && !BASH_READONLY.has(name);
}

/**
 * Where exec would find `file` (PATH of the service's environment for a bare name), checked here because, behind
 * the wrapper, a missing program would only show as exit 127 and a crash loop instead of a clear spawn error.
 * Synchronous: a few access/stat calls of microseconds, between the service's config being written and its spawn.
 */
export function resolveProgram(file: string, env: NodeJS.ProcessEnv, cwd: string): string {
  const enoent = (): NodeJS.ErrnoException => Object.assign(new Error(`spawn ${file} ENOENT`), { code: 'ENOENT', errno: -2, syscall: `spawn ${file}`, path: file });
  if (file.includes('/')) {
    const abs = isAbsolute(file) ? file : join(cwd, file);
    try {
      accessSync(abs, fsConstants.X_OK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') throw enoent();
      throw Object.assign(new Error(`spawn ${file} ${code ?? 'EACCES'}`), { code: code ?? 'EACCES', path: file });
    }
    return abs;
  }
  for (const dir of (env['PATH'] ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin').split(':')) {
    if (dir === '') continue;
    const candidate = join(isAbsolute(dir) ? dir : join(cwd, dir), file);
    try {
      accessSync(candidate, fsConstants.X_OK);
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  throw enoent();
}

/**
 * Children this process spawned and that are still running, by pid. A supervisor object that replaces another in
 * the same agent (a graph swap) adopts through here and so keeps the exact, immediate exit event.
 */
const ownChildren = new Map<
  number,
  { readonly starttime: string; readonly startedAt: number; readonly exited: Promise<ExitInfo>; readonly outputDone: Promise<void>; readonly child: ChildProcess }
>();

/** Where a process's stdout and stderr go, set up before its spawn: the log files, and the logger in between. */
export interface PreparedOutput {
  /** The fds the process gets as stdout and stderr: a logger's pipe, or the file itself (a character device). */
  readonly out: number;
  readonly err: number;
  /** The log files the agent holds, closed once the process or its logger has its copies (or by disposeOutput). */
  readonly files: readonly number[];
  readonly logger: Logger | undefined;
}

/**
 * Opens the log files (openLogForAppend's checks) and starts the logger between them and the process: regular
 * files get it (see logger.ts), a character device (/dev/null) is written directly; a fence starts one anyway.
 */
export async function prepareOutput(spec: Pick<SpawnSpec, 'stdoutPath' | 'stderrPath' | 'uid' | 'logRotation' | 'fence'>): Promise<PreparedOutput> {
  const out = openLog(spec.stdoutPath, spec.uid);
  let err: number;
  try {
    err = spec.stderrPath === spec.stdoutPath ? out : openLog(spec.stderrPath, spec.uid);
  } catch (e) {
    closeSync(out);
    throw e;
  }
  const files = [out, err];
  try {
    const rot = spec.logRotation;
    const regular = [...new Set([out, err])].filter((fd) => fstatSync(fd).isFile());
    if (rot === undefined || (regular.length === 0 && spec.fence === undefined)) return { out, err, files, logger: undefined };
    const logger = await startLogger(
      regular.map((fd) => ({
        fd,
        std: fd === out ? (fd === err ? [1, 2] : [1]) : [2],
        path: fd === out ? spec.stdoutPath : spec.stderrPath,
        maxSize: rot.maxSize,
        keep: rot.keep,
      })),
      rot.fifoDir,
      spec.fence,
    );
    const pipeOf = (fd: number): number => logger.inputs[regular.indexOf(fd)] ?? fd;
    return { out: pipeOf(out), err: pipeOf(err), files, logger };
  } catch (e) {
    for (const fd of new Set(files)) closeSync(fd);
    throw e;
  }
}

/** Output prepared for a process that will not be started: its logger sees end of file and exits. */
export function disposeOutput(o: PreparedOutput): void {
  o.logger?.announce(undefined);
  for (const fd of new Set([...o.files, ...(o.logger?.inputs ?? [])])) closeSync(fd);
}

/**
 * Starts a process in its own session and process group with stdout/stderr appended straight to files: no pipe
 * through the agent, so the process outlives the agent (an agent upgrade must not take services down) and a
 * restarted agent can adopt it. Rejects with the spawn error (ENOENT, EACCES, EPERM…) when it cannot start. With
 * `prepared` (prepareOutput's, made ahead), that output is used, and disposed of when the spawn fails.
 */
export async function spawnProc(spec: SpawnSpec, prepared?: PreparedOutput): Promise<Proc> {
  let program: string;
  try {
    program = resolveProgram(spec.file, spec.env, spec.cwd);
  } catch (e) {
    if (prepared !== undefined) disposeOutput(prepared);
    throw e;
  }
  const output = prepared ?? (await prepareOutput(spec));
  const { logger } = output;
  const outputDone = logger?.done ?? Promise.resolve();
  // A logger the wrapper starts gets fd 3, a pipe whose end here tells when it exits, and its own fds after it.
  const via = logger?.viaWrapper;
  let child;
  try {
    child = spawn('/bin/sh', wrappedArgv(program, spec, via), {
      cwd: spec.cwd,
      env: spec.env,
      detached: true,
      stdio: ['ignore', output.out, output.err, ...(via === undefined ? [] : ['pipe' as const, ...via.fds])],
      // With a user, setpriv changes uid and gid after the cgroups are joined; a group alone is set here.
      ...(spec.uid === undefined && spec.gid !== undefined ? { gid: spec.gid } : {}),
    });
  } catch (e) {
    // No service: the watchdog must not wait for one.
    via?.spawned(undefined);
    disposeOutput(output);
    throw e;
  }
  via?.spawned(child.stdio[3] as Readable | null | undefined);
  // The service has its own copies now (spawn forks synchronously): the logger's pipe must see end of file once the
  // service's processes are gone, so no copy of a write end may stay here.
  for (const fd of logger?.inputs ?? []) closeSync(fd);
  // Listened to at once: both are emitted from the next tick on.
  const exited = new Promise<ExitInfo>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal, known: true, at: Date.now() }));
  });
  const spawned = new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', reject);
  });
  // Not unhandled while the logger is launched: awaited below.
  spawned.catch(() => undefined);
  const startedAt = Date.now();
  // Read at once: the child cannot have been reaped yet unless it already exited, and then there is nothing to adopt.
  // Synchronously: a /proc read takes microseconds, where the thread pool's turn took 8-60 ms of a cold start on a
  // busy 2-core host, and the health checks begin only after it.
  const st = child.pid === undefined ? undefined : readStatSync(child.pid);
  try {
    if (child.pid !== undefined && logger !== undefined && via === undefined) {
      // The logger starts after the service (see startLogger), and after the I/O callbacks already due: its spawn
      // blocks this thread for 6-15 ms, and the other resources' file operations waiting for their next step here
      // went on only after it. What the service writes meanwhile waits in the pipe.
      await new Promise((resolve) => setImmediate(resolve));
      logger.launch();
    }
  } catch (e) {
    // Output with no reader would reach the service as SIGPIPE: it must not run. (Only reached with a pid: a group
    // of 0 would be the agent's own.)
    if (child.pid !== undefined) signalGroup(child.pid, 'SIGKILL');
    logger?.announce(undefined);
    throw Object.assign(new Error(`cannot start the logger of its output: ${(e as Error).message}`), { code: (e as NodeJS.ErrnoException).code });
  } finally {
    // The log files: the logger has its copies (or the service, for a character device), or none is needed.
    for (const fd of new Set(output.files)) closeSync(fd);
  }
  try {
    await spawned;
  } catch (e) {
    logger?.announce(undefined);
    throw e;
  }
  child.on('error', () => undefined);
  const pid = child.pid;
  if (pid === undefined) {
    logger?.announce(undefined);
    throw new Error('spawned process has no pid');
  }
  const starttime = st?.starttime ?? '';
  // The watchdog kills the process group only while this very process leads it (pid and start time).
  logger?.announce({ pid, pgid: pid, starttime });
  ownChildren.set(pid, { starttime, startedAt, exited, outputDone, child });
  void exited.then(() => ownChildren.delete(pid));
  // Released, the handle no longer keeps the agent up: it can exit while its services keep running.
  return { pid, pgid: pid, starttime, startedAt, adopted: false, exited, outputDone, release: () => child.unref() };
}

/** A log file that cannot be opened: not a spawn failure, and reported as such. */
export class LogFileError extends Error {
  constructor(
    readonly path: string,
    cause: unknown,
  ) {
    super(`cannot open ${path} for the process's output: ${(cause as Error).message}`, { cause });
  }
}

function openLog(path: string, serviceUid: number | undefined): number {
  try {
    return openLogForAppend(path, serviceUid);
  } catch (err) {
    throw new LogFileError(path, err);
  }
}

const ADOPT_POLL_MS = 100;

/**
 * Takes over a process that a previous agent (or an earlier supervisor object in this agent) started, if it is
 * still that very process: same pid and same start time. Returns undefined when it is gone.
 */
export async function adoptProc(pid: number, starttime: string, startedAt: number): Promise<Proc | undefined> {
  const own = ownChildren.get(pid);
  if (own !== undefined && own.starttime === starttime) {
    own.child.ref();
    return { pid, pgid: pid, starttime, startedAt: own.startedAt, adopted: false, exited: own.exited, outputDone: own.outputDone, release: () => own.child.unref() };
  }
  // Synchronous, as at the spawn: an agent's first look at its services, before any of them can start.
  const st = readStatSync(pid);
  if (!isAlive(st) || st.starttime !== starttime) return undefined;
  let timer: NodeJS.Timeout | undefined;
  let polling = false;
  const exited = new Promise<ExitInfo>((resolve) => {
    timer = setInterval(() => {
      if (polling) return;
      polling = true;
      readStat(pid)
        .then((now) => {
          if (isAlive(now) && now.starttime === starttime) return;
          clearInterval(timer);
          resolve({ code: null, signal: null, known: false, at: Date.now() });
        })
        .catch(() => undefined)
        .finally(() => (polling = false));
    }, ADOPT_POLL_MS);
  });
  return { pid, pgid: st.pgrp, starttime, startedAt, adopted: true, exited, outputDone: Promise.resolve(), release: () => clearInterval(timer) };
}

export function describeExit(e: ExitInfo): string {
  if (!e.known) return 'exited (status unknown: the process was adopted from an earlier agent)';
  if (e.code !== null) return `exited with code ${e.code}`;
  return `was killed by ${e.signal ?? 'a signal'}`;
}

/** A failure for restart: on-failure purposes. An adopted process's status is unknown: assume the worst. */
export function isFailure(e: ExitInfo): boolean {
  return !e.known || e.code !== 0;
}
