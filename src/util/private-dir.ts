import { lstatSync, mkdirSync, realpathSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { BackplaneError } from '../errors.js';

/**
 * The agent runs as root and keeps its state (the store, its lock, svc pid records) in a directory it trusts. A
 * directory another user could write into, replace or point elsewhere would let that user plant files the agent then
 * believes, take its lock, or aim its writes at files the graph never named. So the state directory is created 0700
 * and an existing one is used only when it is a real directory (not a symlink), owned by the agent's user, not
 * writable by group or others, and each directory above it is owned by root or the agent's user and is not writable
 * by others unless sticky (as /tmp: others cannot rename or delete what they do not own there). Anything else is
 * refused with what to fix, never repaired silently: a foreign-owned directory may hold files planted on purpose.
 *
 * Checked once per directory per process (thousands of resources ask for their state directory): after the check
 * only the agent's user (root) could change any of it.
 *
 * The check is synchronous: a handful of metadata syscalls on local directories, microseconds each. Done with
 * fs/promises it was six sequential round trips through libuv's thread pool before anything else in a run could
 * begin. The window shrank from 6-8 ms to ~1.2 ms, but only ~1 ms of that is saved: the pool's start and the scavenge
 * V8 had scheduled for the first turn of the event loop now happen at the graph file's read instead. The checks,
 * their order and their errors are the same.
 */
const checked = new Set<string>();

export function ensurePrivateDir(dir: string, what = 'state directory'): Promise<void> {
  if (!checked.has(dir)) {
    try {
      check(dir, what);
    } catch (err) {
      // Not remembered: the next caller checks again (the operator may have fixed it meanwhile).
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    checked.add(dir);
  }
  return Promise.resolve();
}

function refuse(message: string, hint: string): BackplaneError {
  return new BackplaneError('E_USAGE', message, { hint });
}

function octal(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, '0');
}

function check(dir: string, what: string): void {
  const me = process.geteuid?.() ?? 0;
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    // EEXIST: something that is not a directory (or a dangling symlink) is there; the lstat below says which.
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
      throw new BackplaneError('E_IO', `cannot create the ${what} ${dir}: ${(err as Error).message}`, { cause: err });
    }
  }
  const st = lstatSync(dir);
  if (st.isSymbolicLink()) {
    throw refuse(`the ${what} ${dir} is a symlink; refusing to follow it (another user may have planted it)`, `remove the symlink and let the agent create the directory, or point --state-dir at the real directory`);
  }
  if (!st.isDirectory()) throw refuse(`the ${what} ${dir} exists and is not a directory`, `move it away, or choose another --state-dir`);
  if (st.uid !== me) {
    throw refuse(
      `the ${what} ${dir} is owned by uid ${st.uid}, not by the agent's user (uid ${me}); refusing to trust files another user controls`,
      `if its content is yours, chown -R ${me} ${dir} && chmod 700 ${dir}; otherwise move it away and let the agent create a new one`,
    );
  }
  if ((st.mode & 0o022) !== 0) {
    throw refuse(
      `the ${what} ${dir} is writable by ${(st.mode & 0o020) !== 0 ? 'its group' : 'others'} (mode ${octal(st.mode)}); another user could plant files in it`,
      `chmod 700 ${dir}`,
    );
  }
  // Whoever can write a directory above it can rename this one away and put their own in its place.
  // realpath(3), as fs/promises' realpath is (not the JavaScript walk of realpathSync).
  let cur = realpathSync.native(dir);
  for (;;) {
    const up = dirname(cur);
    if (up === cur) break;
    cur = up;
    const a = statSync(cur);
    if (a.uid !== 0 && a.uid !== me) {
      throw refuse(`the ${what} ${dir} lies inside ${cur}, owned by uid ${a.uid}: that user could replace the ${what}`, `choose a --state-dir whose parent directories belong to root`);
    }
    if ((a.mode & 0o022) !== 0 && (a.mode & 0o1000) === 0) {
      throw refuse(
        `the ${what} ${dir} lies inside ${cur}, which is writable by ${(a.mode & 0o020) !== 0 ? 'its group' : 'others'} (mode ${octal(a.mode)}) without the sticky bit: another user could replace the ${what}`,
        `chmod go-w ${cur}, or choose another --state-dir`,
      );
    }
  }
}
