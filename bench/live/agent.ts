import { spawn, type ChildProcess } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { checkFile, hasContent } from '../lib/fileset.js';
import { benchEnv, exited, killGroup, track } from '../lib/proc.js';
import { BACKPLANE_BIN } from '../tools/backplane.js';
import type { FileSpec } from '../tools/types.js';

/** A Backplane agent left running (no --converged-timeout), as it would run on a host. */
export interface Agent {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly startedAt: number;
  /** Recent stderr lines, for error messages; the agent logs one line per change. */
  readonly recent: string[];
  sawConverged: boolean;
  /**
   * performance.now() when the agent's "converged: X of N resources" line arrived, with X and N; undefined until then.
   * A line saying it settled with problems or stopped before converging does not count.
   */
  convergedAt: number | undefined;
  convergedCounts: readonly [number, number] | undefined;
  /** performance.now() when the agent said it compacted its heap once idle (src/agent/idle-compaction.ts). */
  compactedAt: number | undefined;
}

const CONVERGED_LINE = /\bconverged: (\d+) of (\d+) resources\b/;
const COMPACTED_LINE = /\bidle: heap compacted once idle\b/;

/**
 * `args` follow `run --file graphPath` (e.g. --state-dir, so a bench never writes the machine's /var/lib/backplane).
 * The environment is the bench's without NODE_EXTRA_CA_CERTS (benchEnv), as for every measured process.
 */
export function startAgent(graphPath: string, args: readonly string[] = []): Agent {
  // Spawned as `node bin/backplane.js` directly, so the PID is the agent itself and /proc/PID is its own usage.
  // The clock starts before spawn, as for a timed run, so times "from start" include creating the process.
  const startedAt = performance.now();
  const child = spawn(process.execPath, [BACKPLANE_BIN, 'run', '--file', graphPath, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: benchEnv(),
    detached: true,
  });
  track(child);
  if (child.pid === undefined) throw new Error('could not start the Backplane agent');
  const agent: Agent = {
    child,
    pid: child.pid,
    startedAt,
    recent: [],
    sawConverged: false,
    convergedAt: undefined,
    convergedCounts: undefined,
    compactedAt: undefined,
  };
  let partial = '';
  // Keep reading stderr: a full pipe would block the agent's logging and so its repairs.
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      if (/converged/i.test(line)) agent.sawConverged = true;
      const m = agent.convergedAt === undefined ? CONVERGED_LINE.exec(line) : null;
      if (m !== null) {
        agent.convergedAt = performance.now();
        agent.convergedCounts = [Number(m[1]), Number(m[2])];
      }
      if (agent.compactedAt === undefined && COMPACTED_LINE.test(line)) agent.compactedAt = performance.now();
      agent.recent.push(line);
    }
    if (agent.recent.length > 50) agent.recent.splice(0, agent.recent.length - 50);
  });
  return agent;
}

function assertRunning(agent: Agent): void {
  if (agent.child.exitCode !== null || agent.child.signalCode !== null) {
    throw new Error(`the agent exited early (${agent.child.exitCode ?? agent.child.signalCode}):\n${agent.recent.join('\n')}`);
  }
}

/**
 * Waits until every file is right and the agent has said "converged" (or 5 s more have passed without it, for a
 * CLI that words it differently). Returns the seconds from spawn until the files were right.
 */
export async function waitConverged(agent: Agent, files: readonly FileSpec[], timeoutMs: number): Promise<number> {
  const deadline = performance.now() + timeoutMs;
  // Files found right stay counted, so polling 10,000 files costs one pass, not one pass per poll.
  let next = 0;
  while (true) {
    assertRunning(agent);
    if (performance.now() > deadline) throw new Error(`not converged after ${timeoutMs} ms:\n${agent.recent.join('\n')}`);
    while (next < files.length && hasContent(files[next]?.path ?? '', files[next]?.content ?? '')) next++;
    if (next === files.length) {
      const wrong = files.find((f) => checkFile(f) !== undefined);
      if (wrong === undefined) break;
      next = 0;
    }
    await sleep(10);
  }
  const convergedS = (performance.now() - agent.startedAt) / 1000;
  const wordDeadline = performance.now() + 5000;
  while (!agent.sawConverged && performance.now() < wordDeadline) await sleep(10);
  return convergedS;
}

/** SIGTERM, then SIGKILL after 10 s; returns the seconds the agent took to exit. */
export async function stopAgent(agent: Agent): Promise<number> {
  const started = performance.now();
  killGroup(agent.child, 'SIGTERM');
  const timer = setTimeout(() => killGroup(agent.child, 'SIGKILL'), 10_000);
  await exited(agent.child);
  clearTimeout(timer);
  return (performance.now() - started) / 1000;
}
