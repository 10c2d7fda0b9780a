import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * What a supervisor leaves in the resource's state directory so that the next agent can adopt its process instead
 * of starting a second copy: pid + start time name the process for good (a recycled pid has another start time),
 * and the spec hash says whether it still runs the current definition.
 */
export interface ProcRecord {
  readonly pid: number;
  readonly pgid: number;
  readonly starttime: string;
  readonly startedAt: number;
  readonly specHash: string;
  readonly argv: readonly string[];
}

const FILE = 'process.json';

// The record's reads and writes are synchronous: a few hundred bytes in the private state directory, microseconds.
// Through the thread pool they queued behind the other resources' I/O: a cold start's record write took 10-30 ms,
// and the start is reported only once it is written.

export async function readRecord(stateDir: string): Promise<ProcRecord | undefined> {
  let text: string;
  try {
    text = readFileSync(join(stateDir, FILE), 'utf8');
  } catch {
    return undefined;
  }
  try {
    const r = JSON.parse(text) as Partial<ProcRecord>;
    if (typeof r.pid !== 'number' || typeof r.starttime !== 'string' || typeof r.specHash !== 'string') return undefined;
    return {
      pid: r.pid,
      pgid: typeof r.pgid === 'number' ? r.pgid : r.pid,
      starttime: r.starttime,
      startedAt: typeof r.startedAt === 'number' ? r.startedAt : Date.now(),
      specHash: r.specHash,
      argv: Array.isArray(r.argv) ? r.argv : [],
    };
  } catch {
    // A torn or foreign file: nothing can be adopted from it.
    return undefined;
  }
}

/** Atomic (write + rename): a crash mid-write must not leave a record that names no process or the wrong one. */
export async function writeRecord(stateDir: string, r: ProcRecord): Promise<void> {
  const tmp = join(stateDir, `.${FILE}.tmp-${process.pid}`);
  writeFileSync(tmp, `${JSON.stringify(r)}\n`, { mode: 0o600 });
  renameSync(tmp, join(stateDir, FILE));
}

export async function clearRecord(stateDir: string): Promise<void> {
  rmSync(join(stateDir, FILE), { force: true });
}
