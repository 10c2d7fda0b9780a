import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { accessSync, constants, closeSync, openSync, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Invocation } from '../tools/types.js';

/** GNU time gives the peak RSS of the measured process tree's largest process (wait4's ru_maxrss). */
export const GNU_TIME = '/usr/bin/time';

export function which(cmd: string): string | undefined {
  for (const dir of (process.env['PATH'] ?? '').split(delimiter)) {
    const candidate = join(dir, cmd);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this PATH entry
    }
  }
  return undefined;
}

/** First line of a command's output, or undefined when it fails; used for versions and machine facts. */
export function firstLine(argv: readonly string[]): string | undefined {
  const [cmd, ...args] = argv;
  if (cmd === undefined) return undefined;
  try {
    const out = execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 30_000 });
    return out.split('\n')[0]?.trim();
  } catch {
    return undefined;
  }
}

export interface RunResult {
  readonly wallS: number;
  /** Peak RSS in KiB, when GNU time is installed. */
  readonly maxRssKiB: number | undefined;
  readonly exitCode: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly timedOut: boolean;
}

/** Children still running, so an interrupted bench can kill them instead of leaving them behind. */
const live = new Set<ChildProcess>();

/** What else a workload started that outlives its tool's run (the nginx stack's daemons), to end on the way out. */
const cleanups = new Set<() => void>();

export function atCleanup(fn: () => void): void {
  cleanups.add(fn);
}

export function killAllChildren(): void {
  for (const child of live) killGroup(child, 'SIGKILL');
  for (const fn of cleanups) {
    try {
      fn();
    } catch {
      // best effort on the way out; the others must still run
    }
  }
}

/** Each child leads its own process group, so a timeout also ends what it spawned (Ansible's workers, execs). */
export function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // already gone
  }
}

export function track(child: ChildProcess): void {
  live.add(child);
  child.once('exit', () => live.delete(child));
}

/**
 * Variables no measured process gets. NODE_EXTRA_CA_CERTS makes every Node process parse the named bundle (3,600
 * lines of certificates in this sandbox, ~40 ms) before any JavaScript runs; only Node reads it, and an agent host has
 * no reason to set it, so the bench measures every tool without it and says so in its notes. (Puppet, Ansible and
 * CFEngine do not read it: dropping it changes nothing for them.)
 */
export const DROPPED_ENV: readonly string[] = ['NODE_EXTRA_CA_CERTS'];

/** The environment of a measured process: the bench's own, without DROPPED_ENV, plus the tool's extras. */
export function benchEnv(extra: Readonly<Record<string, string>> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  for (const name of DROPPED_ENV) delete env[name];
  return env;
}

/** The DROPPED_ENV variables the bench's own environment had set, for the report's notes. */
export function droppedEnv(): string[] {
  return DROPPED_ENV.filter((name) => process.env[name] !== undefined);
}

/** Every measured process runs without DROPPED_ENV (see proc.ts); the report says so, and whether it mattered here. */
export function envNote(dropped: readonly string[]): string {
  const unset = `Every tool ran with ${DROPPED_ENV.join(', ')} unset`;
  if (dropped.length === 0) return `${unset} (it was not set here either).`;
  return (
    `${unset}: this shell sets ${dropped.join(', ')}, which makes every Node process parse a certificate bundle ` +
    'before any JavaScript runs (`node -e 0`: 106 ms with it, 68 ms without, on the 2-core machine of 2026-12-02); ' +
    'only Node reads it, and an agent host has no reason to set it.'
  );
}

/** A run in progress: its clock started just before spawn, so a watcher can time events against it. */
export interface TimedChild {
  readonly child: ChildProcess;
  /** performance.now() just before spawn. */
  readonly startedAt: number;
  readonly done: Promise<RunResult>;
}

/**
 * Starts an invocation and times it from spawn to exit. Output goes to logPath rather than a pipe, so the bench never
 * slows a chatty tool down and the log is there to read when a run fails. With GNU time installed the peak RSS comes
 * from it (the measured process is then time's child; the group is killed on timeout either way).
 */
export function spawnTimed(inv: Invocation, logPath: string, timeoutMs: number): TimedChild {
  const useTime = hasGnuTime();
  const rssPath = `${logPath}.rss`;
  const argv = useTime ? [GNU_TIME, '-f', '%M', '-o', rssPath, ...inv.argv] : [...inv.argv];
  const [cmd, ...args] = argv;
  if (cmd === undefined) throw new Error('empty argv');
  const logFd = openSync(logPath, 'w');
  const startedAt = performance.now();
  let child: ChildProcess;
  try {
    child = spawn(cmd, args, { stdio: ['ignore', logFd, logFd], env: benchEnv(inv.env), detached: true });
  } catch (e) {
    closeSync(logFd);
    throw e;
  }
  track(child);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup(child, 'SIGKILL');
  }, timeoutMs);
  const done = exited(child)
    .then(([exitCode, signal]): RunResult => {
      const wallS = (performance.now() - startedAt) / 1000;
      return { wallS, maxRssKiB: useTime ? readRss(rssPath) : undefined, exitCode, signal, timedOut };
    })
    .finally(() => {
      clearTimeout(timer);
      closeSync(logFd);
    });
  return { child, startedAt, done };
}

/** Runs an invocation once and times it from spawn to exit (see spawnTimed). */
export async function timedRun(inv: Invocation, logPath: string, timeoutMs: number): Promise<RunResult> {
  return spawnTimed(inv, logPath, timeoutMs).done;
}

export function exited(child: ChildProcess): Promise<[number | null, NodeJS.Signals | null]> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve([child.exitCode, child.signalCode]);
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => resolve([code, signal]));
  });
}

let gnuTime: boolean | undefined;
function hasGnuTime(): boolean {
  if (gnuTime === undefined) {
    try {
      accessSync(GNU_TIME, constants.X_OK);
      gnuTime = true;
    } catch {
      gnuTime = false;
    }
  }
  return gnuTime;
}

/** GNU time writes "Command exited with non-zero status N" before the format line; the number is the last line. */
function readRss(path: string): number | undefined {
  try {
    const lines = readFileSync(path, 'utf8').trim().split('\n');
    const value = Number(lines[lines.length - 1]);
    return Number.isFinite(value) ? value : undefined;
  } catch {
    return undefined;
  }
}

/** Last lines of a log, to show why a run failed. */
export function tail(path: string, lines: number): string {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}
