import { readdir, readFile, readlink, stat } from 'node:fs/promises';
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

/**
 * Processes holding the file with this device and inode open for writing. Empty where /proc is missing. Processes
 * that exit while they are looked at, and ones this user may not inspect, are skipped.
 */
export async function openWriters(target: { readonly dev: number; readonly ino: number }): Promise<FileWriter[]> {
  let pids: string[];
  try {
    pids = (await readdir('/proc')).filter((p) => /^\d+$/.test(p));
  } catch {
    return [];
  }
  const found = await Promise.all(pids.map((pid) => writerFds(pid, target)));
  const out: FileWriter[] = [];
  for (const [i, n] of found.entries()) {
    if (n === 0) continue;
    const pid = pids[i] ?? '';
    const command = await readFile(`/proc/${pid}/comm`, 'utf8').then(
      (c) => c.trim(),
      () => '?',
    );
    out.push({ pid: Number(pid), command });
  }
  return out;
}

/** How many of `pid`'s descriptors have the target open for writing. */
async function writerFds(pid: string, target: { readonly dev: number; readonly ino: number }): Promise<number> {
  let fds: string[];
  try {
    fds = await readdir(`/proc/${pid}/fd`);
  } catch {
    return 0;
  }
  let n = 0;
  for (const fd of fds) {
    try {
      // Sockets, pipes and anonymous inodes read as "socket:[…]" and so on: only paths can be our file.
      if (!(await readlink(`/proc/${pid}/fd/${fd}`)).startsWith('/')) continue;
      // stat through the fd link: the open file itself, even if it was renamed or its name replaced meanwhile.
      const st = await stat(`/proc/${pid}/fd/${fd}`);
      if (st.dev !== target.dev || st.ino !== target.ino) continue;
      const info = await readFile(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
      const flags = /^flags:\s*([0-7]+)$/m.exec(info)?.[1];
      // O_ACCMODE is the low two bits: 1 = O_WRONLY, 2 = O_RDWR.
      if (flags !== undefined && (parseInt(flags, 8) & 3) !== 0) n++;
    } catch {
      // closed or gone while we looked: not a writer any more
    }
  }
  return n;
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
