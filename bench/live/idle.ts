import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

export interface IdleResult {
  readonly rssMiB: number;
  /** Peak RSS so far (VmHWM), which includes the cost of converging. */
  readonly peakRssMiB: number;
  /** utime + stime over the window, as % of one core. */
  readonly cpuPercent: number;
  readonly windowS: number;
}

function statusKiB(pid: number, field: string): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${field}:`));
  const kib = Number(/(\d+)/.exec(line ?? '')?.[1]);
  if (!Number.isFinite(kib)) throw new Error(`no ${field} in /proc/${pid}/status`);
  return kib;
}

/** utime + stime in clock ticks, all threads of the process included. */
export function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name may contain spaces and parentheses, so fields are counted from the last ")".
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(rest[11]) + Number(rest[12]);
}

export function clockTicksPerSecond(): number {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
}

export async function measureIdle(pid: number, windowS: number): Promise<IdleResult> {
  const hz = clockTicksPerSecond();
  const before = cpuTicks(pid);
  await sleep(windowS * 1000);
  const after = cpuTicks(pid);
  return {
    rssMiB: statusKiB(pid, 'VmRSS') / 1024,
    peakRssMiB: statusKiB(pid, 'VmHWM') / 1024,
    cpuPercent: ((after - before) / hz / windowS) * 100,
    windowS,
  };
}

/**
 * Waits until the process spends at most `maxShare` of one core over a whole second (its work after converging:
 * the cluster store starting, garbage collection), or `maxS` have passed. Returns the seconds waited.
 */
export async function waitQuiet(pid: number, maxShare: number, maxS: number): Promise<number> {
  const hz = clockTicksPerSecond();
  const started = Date.now();
  while (true) {
    const before = cpuTicks(pid);
    await sleep(1000);
    const elapsedS = (Date.now() - started) / 1000;
    if ((cpuTicks(pid) - before) / hz <= maxShare || elapsedS >= maxS) return elapsedS;
  }
}
