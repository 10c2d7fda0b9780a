import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../log.js';

/**
 * When a graph file is "written": an edit must be swapped in only once the file is complete. Parsing cannot tell: a
 * file cut short after its fourth resource is valid YAML with four resources, and applying it removes the rest (a
 * purging directory then deletes their files). So the agent waits, before it reads an edited graph, until
 *
 *  - no process holds the file open for writing. On Linux this is exact for the writers that matter: a shell
 *    redirect or a slow generator (`gen > graph.yaml`), an editor that writes in place (truncate, then write), a
 *    copy in progress. It is read from /proc: each process's fd links give the file's device and inode, and the fd's
 *    fdinfo flags say whether it was opened O_WRONLY or O_RDWR. As root every process is visible; as another user,
 *    only that user's own — the usual writer of a file the agent reads.
 *  - and the file has not changed for QUIET_MS, for writers /proc cannot show (another host over NFS, another user's
 *    process for a non-root agent, a platform without /proc), and for the gap between a truncate and the next write.
 *
 * An editor that writes a temporary file and renames it over the graph is atomic already: the name only ever points
 * at a complete file. What neither check catches is a writer that closes the file between chunks (`>` then `>>`
 * after a pause): the agent guards against the damage such a prefix does (removals) separately, see Agent.reload.
 */
export const QUIET_MS = 100;
/** The stat signature of each graph file when it was last found complete. */
const complete = new Map<string, string>();
const POLL_MIN_MS = 50;
const POLL_MAX_MS = 500;

export interface FileWriter {
  readonly pid: number;
  readonly command: string;
}

/** How long a scan of /proc runs on the event loop before it lets other work in (see openWriters). */
const SCAN_SLICE_MS = 1;

/**
 * Processes holding the file with this device and inode open for writing. Empty where /proc is missing. Processes
 * that exit while they are looked at, and ones this user may not inspect, are skipped.
 *
 * The calls are synchronous, in slices of about SCAN_SLICE_MS with the event loop let in between: procfs answers
 * from memory, and a thread-pool round trip per descriptor (readlink, stat) made the scan cost five times the CPU:
 * median 53.7 against 9.7 ms over 30 interleaved scans of ~90 processes and ~700 descriptors, load average 8.5.
 */
export async function openWriters(target: { readonly dev: number; readonly ino: number }): Promise<FileWriter[]> {
  let pids: string[];
  try {
    pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p));
  } catch {
    return [];
  }
  const out: FileWriter[] = [];
  let sliceStart = performance.now();
  // Checked between descriptors too, not only between processes: one process may hold tens of thousands.
  const yieldIfDue = async (): Promise<void> => {
    if (performance.now() - sliceStart <= SCAN_SLICE_MS) return;
    await new Promise((res) => setImmediate(res));
    sliceStart = performance.now();
  };
  for (const pid of pids) {
    await yieldIfDue();
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    let writes = false;
    for (let i = 0; i < fds.length && !writes; i++) {
      if (i % 64 === 63) await yieldIfDue();
      writes = writesTo(pid, fds[i] as string, target);
    }
    if (!writes) continue;
    let command = '?';
    try {
      command = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    } catch {
      // gone meanwhile
    }
    out.push({ pid: Number(pid), command });
  }
  return out;
}

/** Whether descriptor `fd` of `pid` has the target open for writing (false also when it closed or went meanwhile). */
function writesTo(pid: string, fd: string, target: { readonly dev: number; readonly ino: number }): boolean {
  try {
    // Sockets, pipes and anonymous inodes read as "socket:[…]" and so on: only paths can be our file.
    if (!readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('/')) return false;
    // stat through the fd link: the open file itself, even if it was renamed or its name replaced meanwhile.
    const st = statSync(`/proc/${pid}/fd/${fd}`, { throwIfNoEntry: false });
    if (st === undefined || st.dev !== target.dev || st.ino !== target.ino) return false;
    const info = readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
    const flags = /^flags:\s*([0-7]+)$/m.exec(info)?.[1];
    // O_ACCMODE is the low two bits: 1 = O_WRONLY, 2 = O_RDWR.
    return flags !== undefined && (parseInt(flags, 8) & 3) !== 0;
  } catch {
    return false;
  }
}

/**
 * Resolves true once nobody holds `file` open for writing and it has not changed for QUIET_MS; false if `signal`
 * aborted first. A missing file resolves at once: reading it reports that properly.
 *
 * /proc is scanned only once the file has been quiet for QUIET_MS, not on the first look at a fresh edit: the scan
 * costs tens of milliseconds of CPU with many processes (half of what an exporting host spent per edit with 30
 * agents on one machine), and a file still changing needs no scan to know it is not finished. After a scan that
 * found no writer the file is looked at again: an edit made while /proc was read starts the wait over.
 */
export async function waitUntilWritten(file: string, signal: AbortSignal, log: Logger, scan: (target: { readonly dev: number; readonly ino: number }) => Promise<FileWriter[]> = openWriters): Promise<boolean> {
  let told = false;
  let poll = POLL_MIN_MS;
  const quiet = new QuietWatch();
  while (!signal.aborted) {
    let st;
    try {
      st = await stat(file);
    } catch {
      return true;
    }
    // Unchanged since it was last found complete (a re-render for collected data, not an edit): no /proc scan,
    // which costs tens of milliseconds that every exported change would otherwise pay.
    const signature = signatureOf(st);
    if (complete.get(file) === signature) return true;
    let wait = quiet.msUntilQuietStat(st, QUIET_MS);
    if (wait <= 0) {
      const writers = await scan(st);
      if (writers.length === 0) {
        if ((await stat(file).then(signatureOf, () => undefined)) !== signature) continue;
        complete.set(file, signature);
        return true;
      }
      if (!told) {
        told = true;
        log.info(`graph file ${file} is open for writing by ${writers.map((w) => `${w.command} (pid ${w.pid})`).join(', ')}; the edit is read once it is closed`);
      }
      wait = poll;
      poll = Math.min(poll * 2, POLL_MAX_MS);
    }
    try {
      await sleep(wait, undefined, { signal });
    } catch {
      return false;
    }
  }
  return false;
}

function signatureOf(st: { readonly dev: number; readonly ino: number; readonly size: number; readonly mtimeMs: number; readonly ctimeMs: number }): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
}

/**
 * How long until a file will have been unchanged for a while: by its mtime, or by having watched it stay the same
 * (for a file whose mtime is in the future, which would otherwise hold it until the clock reaches that time). One
 * per wait: it remembers the file as it first saw it.
 */
export class QuietWatch {
  private seen: string | undefined;
  private seenAt = 0;

  /** Milliseconds until `file` will have been unchanged for `quietMs` (0 or less: it already has; also when missing). */
  async msUntilQuiet(file: string, quietMs: number): Promise<number> {
    let st;
    try {
      st = await stat(file);
    } catch {
      return 0;
    }
    return this.msUntilQuietStat(st, quietMs);
  }

  /** The same for a stat just taken. */
  msUntilQuietStat(st: Parameters<typeof signatureOf>[0], quietMs: number): number {
    const signature = signatureOf(st);
    const now = Date.now();
    if (signature !== this.seen) {
      this.seen = signature;
      this.seenAt = now;
    }
    return Math.min(quietMs - (now - st.mtimeMs), quietMs - (now - this.seenAt));
  }
}
