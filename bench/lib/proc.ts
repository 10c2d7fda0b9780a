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
 * Runs an invocation once and times it from spawn to exit. Output goes to logPath rather than a pipe, so the
 * bench never slows a chatty tool down and the log is there to read when a run fails.
 */
export async function timedRun(inv: Invocation, logPath: string, timeoutMs: number): Promise<RunResult> {
  const useTime = hasGnuTime();
  const rssPath = `${logPath}.rss`;
  const argv = useTime ? [GNU_TIME, '-f', '%M', '-o', rssPath, ...inv.argv] : [...inv.argv];
  const [cmd, ...args] = argv;
  if (cmd === undefined) throw new Error('empty argv');
  const logFd = openSync(logPath, 'w');
  try {
    const started = performance.now();
    const child = spawn(cmd, args, {
      stdio: ['ignore', logFd, logFd],
      env: { ...process.env, ...inv.env },
      detached: true,
    });
    track(child);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child, 'SIGKILL');
    }, timeoutMs);
    const [exitCode, signal] = await exited(child);
    const wallS = (performance.now() - started) / 1000;
    clearTimeout(timer);
    return { wallS, maxRssKiB: useTime ? readRss(rssPath) : undefined, exitCode, signal, timedOut };
  } finally {
    closeSync(logFd);
  }
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
