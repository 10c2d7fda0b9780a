import { constants as fsc, closeSync, openSync, readFileSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { BackplaneError } from '../../errors.js';
import type { ResourceId } from '../../graph/ids.js';
import { watchPath } from '../../util/dirwatch.js';
import { formatDuration } from '../../util/duration.js';

/**
 * The fence: a scheduled instance must never run twice. When an agent is partitioned from the store or frozen
 * (SIGSTOP, a VM pause), the controller replaces its instances elsewhere once the host has been silent for maxAge;
 * by then the old copy must be dead, although its agent cannot do anything about it. So the agent touches a
 * heartbeat file while it can confirm its place in the cluster, and two things act on that file's age:
 *
 * - a watchdog OUTSIDE the agent (the service's logger process, see logger.ts and FENCE_WATCHDOG_JS below) kills
 *   the service's processes once the heartbeat is older than maxAge. It does not need the agent to run at all.
 * - the supervisor does not start or restart the process while the heartbeat is stale, and treats the watchdog's
 *   kill as "fenced", not as a crash.
 *
 * Ages are wall-clock (Date.now() - mtime): the heartbeat is shared between processes, which have no common
 * monotonic clock through a file. A clock step forward makes every heartbeat look stale at once (the services are
 * killed and started again when it is touched next); a step back makes it look fresh for longer (by the step).
 */

export interface Fence {
  /** Absolute path of the heartbeat file the agent touches. */
  readonly heartbeat: string;
  /** Milliseconds. */
  readonly maxAge: number;
}

/** How often the watchdog looks at the heartbeat: a stat, cheap; bounds the kill latency past maxAge. */
export const WATCHDOG_POLL_MS = 100;
/** While fenced, the supervisor re-checks on every change of the heartbeat (a directory watch) and, as a net, this often. */
const FRESH_POLL_MS = 1000;
/** Written by the watchdog into the resource's state directory before it kills, so that the exit reads as fenced. */
const MARKER = 'fenced.json';

export function fenceMarkerPath(stateDir: string): string {
  return join(stateDir, MARKER);
}

/** Milliseconds since the heartbeat was touched; Infinity when it is missing (never confirmed counts as stale). */
export function heartbeatAge(heartbeat: string, now = Date.now()): number {
  let mtime: number;
  try {
    mtime = statSync(heartbeat).mtimeMs;
  } catch {
    return Infinity;
  }
  // An mtime in the future (a clock stepped back) is as fresh as it gets.
  return Math.max(0, now - mtime);
}

/** The heartbeat's age when it is stale, else undefined. */
export function staleAge(fence: Fence | undefined): number | undefined {
  if (fence === undefined) return undefined;
  const age = heartbeatAge(fence.heartbeat);
  return age > fence.maxAge ? age : undefined;
}

export function describeStale(fence: Fence, age: number): string {
  const how = age === Infinity ? 'does not exist' : `is ${formatDuration(age)} old`;
  return `fenced: the heartbeat ${fence.heartbeat} ${how} (max ${formatDuration(fence.maxAge)}); the agent has not confirmed its place in the cluster`;
}

export function fencedError(id: ResourceId, fence: Fence, age: number): BackplaneError {
  return new BackplaneError('E_APPLY', describeStale(fence, age), {
    resource: id,
    hint: 'the process starts again by itself once the agent touches the heartbeat (it does while it can reach the cluster store); nothing to do here',
    retryable: true,
  });
}

export interface FenceMarker {
  readonly pid: number | undefined;
  readonly starttime: string | undefined;
  readonly at: number;
  readonly ageMs: number | null;
}

/** Reads and removes the watchdog's marker (sync: it is read from the exit event, which must not interleave). */
export function takeFenceMarker(stateDir: string): FenceMarker | undefined {
  const path = fenceMarkerPath(stateDir);
  let text: string;
  try {
    const fd = openSync(path, fsc.O_RDONLY | fsc.O_NOFOLLOW);
    try {
      text = readFileSync(fd, 'utf8');
    } finally {
      closeSync(fd);
    }
  } catch {
    return undefined;
  }
  clearFenceMarker(stateDir);
  try {
    const m = JSON.parse(text) as Partial<FenceMarker>;
    if (typeof m.at !== 'number') return undefined;
    return {
      pid: typeof m.pid === 'number' ? m.pid : undefined,
      starttime: typeof m.starttime === 'string' ? m.starttime : undefined,
      at: m.at,
      ageMs: typeof m.ageMs === 'number' ? m.ageMs : null,
    };
  } catch {
    return undefined;
  }
}

export function clearFenceMarker(stateDir: string): void {
  try {
    unlinkSync(fenceMarkerPath(stateDir));
  } catch {
    // none
  }
}

/**
 * Calls `onFresh` once, as soon as the heartbeat is fresh again, or never if `signal` aborts first. A directory
 * watch (dirwatch.ts: fs.watch on the file itself dies when the agent replaces it) sees the touch within a
 * millisecond; the poll is a net for a watch that could not be set up.
 */
export function whenFresh(fence: Fence, signal: AbortSignal, onFresh: () => void): void {
  let done = false;
  const check = (): void => {
    if (done || signal.aborted) return;
    if (heartbeatAge(fence.heartbeat) > fence.maxAge) return;
    done = true;
    clearInterval(timer);
    onFresh();
  };
  const timer = setInterval(check, FRESH_POLL_MS);
  signal.addEventListener('abort', () => clearInterval(timer), { once: true });
  watchPath(fence.heartbeat, check, signal).then(check, () => undefined);
}

/** What the logger's watchdog is given (JSON in its argv). */
export interface WatchdogConfig {
  readonly heartbeat: string;
  readonly maxAgeMs: number;
  readonly pollMs: number;
  /** The service's v2 cgroup directory, when it has one: cgroup.kill there ends the whole tree, forks included. */
  readonly cgroup: string | undefined;
  /** Where to say "I killed it" before killing (the supervisor reads it from the exit event). */
  readonly marker: string;
}

/** The service as the agent tells the watchdog right after the spawn (on the watchdog's stdin). */
export interface ServiceIdentity {
  readonly pid: number;
  readonly pgid: number;
  /** Field 22 of /proc/PID/stat: with the pid it names one process for good (a reused pid has another). */
  readonly starttime: string;
}

/**
 * Plain JavaScript, appended to the logger's program (no import: it runs the same from sources and the bundle).
 * `startFence(cfg, pipeFds)` returns `{ streamsEnded() }`; the logger calls it once every output pipe is at end of
 * file, and from then on the watchdog exits as soon as the service is gone.
 *
 * What it kills, and why each is safe against pid reuse:
 * - the v2 cgroup (cgroup.kill): only this service's processes are ever in it (the next start of the same service
 *   included, which must die too while the heartbeat is stale);
 * - the process group, only while its leader is the very process the agent started (pid and start time checked
 *   right before): a group id cannot be reused while its leader lives;
 * - every process that holds the service's output pipe as stdout or stderr (compared by device and inode, not by
 *   pid): the service and whatever it forked, also a daemon that left the process group, without a cgroup.
 *
 * Its lifetime: while an output pipe is open (a service process holds it), and after that while the service's main
 * process lives (a service that closed its stdout and stderr). It never outlives the service by more than one poll.
 */
export const FENCE_WATCHDOG_JS = String.raw`
function startFence(f, pipeFds) {
  const fs = require('fs');
  const C = fs.constants;
  const pipes = pipeFds.map((fd) => { const s = fs.fstatSync(fd); return s.dev + ':' + s.ino; });
  let svc;
  let told = false;
  let streamsEnded = false;
  let fired = false;
  let text = '';
  const statOf = (pid) => {
    try {
      const t = fs.readFileSync('/proc/' + pid + '/stat', 'utf8');
      const r = t.slice(t.lastIndexOf(')') + 2).split(' ');
      if (r[0] === 'Z' || r[0] === 'X') return undefined;
      return { start: r[19], pgrp: Number(r[2]) };
    } catch { return undefined; }
  };
  const leaderAlive = () => {
    if (svc === undefined) return false;
    const s = statOf(svc.pid);
    return s !== undefined && s.start === svc.starttime;
  };
  const cgroupPids = () => {
    if (!f.cgroup) return [];
    try { return fs.readFileSync(f.cgroup + '/cgroup.procs', 'utf8').split('\n').filter((l) => l !== '').map(Number); } catch { return []; }
  };
  const holders = () => {
    const out = [];
    if (pipes.length === 0) return out;
    let names;
    try { names = fs.readdirSync('/proc'); } catch { return out; }
    for (const n of names) {
      if (!/^\d+$/.test(n) || Number(n) === process.pid) continue;
      for (const fd of [1, 2]) {
        try {
          const s = fs.statSync('/proc/' + n + '/fd/' + fd);
          if (pipes.includes(s.dev + ':' + s.ino)) { out.push(Number(n)); break; }
        } catch {}
      }
    }
    return out;
  };
  const age = () => {
    try { return Math.max(0, Date.now() - fs.statSync(f.heartbeat).mtimeMs); } catch { return Infinity; }
  };
  const alive = () => {
    if (svc !== undefined) return leaderAlive();
    if (!told) return true;
    return cgroupPids().length > 0;
  };
  const sig = (pid) => { try { process.kill(pid, 'SIGKILL'); } catch {} };
  const kill = (a) => {
    const leader = leaderAlive();
    const cg = cgroupPids();
    const hs = streamsEnded ? [] : holders();
    if (!leader && cg.length === 0 && hs.length === 0) return;
    if (!fired) {
      fired = true;
      try {
        const fd = fs.openSync(f.marker, C.O_WRONLY | C.O_CREAT | C.O_TRUNC | C.O_NOFOLLOW, 0o600);
        fs.writeSync(fd, JSON.stringify({ pid: svc && svc.pid, starttime: svc && svc.starttime, at: Date.now(), ageMs: a === Infinity ? null : Math.round(a) }));
        fs.closeSync(fd);
      } catch {}
    }
    if (leader) { sig(-svc.pgid); sig(svc.pid); }
    if (cg.length > 0) {
      try { fs.writeFileSync(f.cgroup + '/cgroup.kill', '1'); } catch { cg.forEach(sig); }
    }
    hs.forEach(sig);
  };
  const check = () => {
    const a = age();
    if (a > f.maxAgeMs) kill(a);
    if (streamsEnded && !alive()) process.exit(0);
  };
  const heard = () => {
    if (told) return;
    told = true;
    try { const m = JSON.parse(text); if (m && typeof m.pid === 'number') svc = m; } catch {}
    check();
  };
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (d) => { text += d; });
  process.stdin.on('end', heard);
  process.stdin.on('error', heard);
  setInterval(check, f.pollMs);
  check();
  return { streamsEnded: () => { streamsEnded = true; check(); } };
}
`;
