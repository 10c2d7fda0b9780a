import { closeSync, constants as fsc, fstatSync, lstatSync, mkdirSync, openSync, realpathSync, statSync } from 'node:fs';
import { lstat, open, rename, rm, type FileHandle } from 'node:fs/promises';
import { dirname, resolve, sep } from 'node:path';

/**
 * The process writes its stdout/stderr straight into these files (O_APPEND), so they survive agent restarts. That
 * rules out rename-and-reopen rotation (the process would keep writing to the renamed file), so rotation is
 * copy-then-truncate, as logrotate's copytruncate: x is copied, then cut to zero (thanks to O_APPEND the next write
 * lands at its start), then x.(n-1) -> x.n … and the copy becomes x.1. Lines written between the copy and the
 * truncate are lost; the window is one copy of a file that is checked once a second.
 *
 * The agent is root and a log may live in a directory another user can write (the service's own user, or /tmp). So
 * nothing here follows a symlink at a log name or at a name rotation creates: files are opened O_NOFOLLOW and then
 * checked on the fd (a regular file with one link, or a character device such as /dev/null); the rotation copy is
 * created O_EXCL; renames move names, never write through them. Otherwise a planted `x -> /etc/shadow` (or a hard
 * link to it) would have root append service output to, or truncate, a file the graph never named. Directories
 * above the log's own directory must be beyond other users' reach (checkLogDir), since a swapped directory would
 * redirect even an O_NOFOLLOW open.
 */

const me = (): number => process.geteuid?.() ?? 0;

function symlinkRefusal(path: string, cause: unknown): Error {
  return new Error(`${path} is a symlink; refusing to follow it (a log file must be a plain file at the named path)`, { cause });
}

/** Creates the log's directory and checks that no other user could redirect writes made under it. */
export async function prepareLogFile(path: string): Promise<void> {
  // Synchronous, as checkLogDir below and for the same reason.
  mkdirSync(dirname(path), { recursive: true });
  checkLogDir(dirname(path));
}

/**
 * Whoever can write a directory above the log's own directory can replace the log's directory with a symlink to,
 * say, /etc, and root would append to /etc/<name>. So: no symlink on the way owned by another user, and every
 * directory strictly above the log's directory owned by root (or the agent's user) and not writable by group or
 * others unless sticky. The log's own directory may belong to anyone (often the service's user): a name planted in
 * it is caught when the file is opened.
 */
export function checkLogDir(dir: string): void {
  // Synchronous: a dozen lstat/stat calls of a few microseconds each, on the way to a service's spawn. Each through
  // the thread pool was a round trip of the event loop: 9 ms for a state directory's two logs on a busy 2-core host.
  const paths = [resolve(dir)];
  const real = realpathSync(dir);
  if (real !== paths[0]) paths.push(real);
  for (const p of paths) {
    const parts = p.split(sep).filter((x) => x !== '');
    let prefix = '';
    for (let i = 0; i < parts.length; i++) {
      const parent = prefix === '' ? '/' : prefix;
      prefix = `${prefix}/${parts[i] ?? ''}`;
      const st = lstatSync(prefix);
      // The parent itself was checked one step earlier; a root-owned symlink there (/var/run) is judged by its target.
      const pst = statSync(parent);
      if (st.isSymbolicLink() && st.uid !== 0 && st.uid !== me()) {
        throw new Error(`${prefix} is a symlink owned by uid ${st.uid}; refusing to write logs under it (that user chooses where it points)`);
      }
      // parent holds `prefix`, a directory on the way to the log's directory (or that directory itself).
      if (pst.uid !== 0 && pst.uid !== me()) {
        throw new Error(`${prefix} lies in ${parent}, owned by uid ${pst.uid}, who could replace it with a symlink and redirect root's writes; keep logs in a directory whose parents belong to root, e.g. /var/log/<service>/`);
      }
      if ((pst.mode & 0o022) !== 0 && (pst.mode & 0o1000) === 0) {
        throw new Error(`${prefix} lies in ${parent}, writable by group or others (mode ${(pst.mode & 0o7777).toString(8)}) without the sticky bit; chmod go-w ${parent}, or keep logs elsewhere`);
      }
    }
  }
}

/**
 * Opens a log for the process's output: O_APPEND|O_CREAT (0640) without following a symlink, and O_NONBLOCK so a
 * planted fifo cannot hang the agent. Refuses, on the opened fd, anything but a plain file with a single link owned
 * by root, the agent's user or the service's user; a character device (/dev/null, a console) is accepted, reopened
 * through /proc/self/fd without O_NONBLOCK. Only root can create device nodes, so none is planted. Synchronous: the
 * fds go straight to spawn.
 */
export function openLogForAppend(path: string, serviceUid?: number): number {
  let fd: number;
  try {
    fd = openSync(path, fsc.O_WRONLY | fsc.O_APPEND | fsc.O_CREAT | fsc.O_NOFOLLOW | fsc.O_NONBLOCK, 0o640);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ELOOP') throw symlinkRefusal(path, err);
    throw err;
  }
  try {
    const st = fstatSync(fd);
    if (st.isFile()) {
      if (st.nlink !== 1) throw new Error(`${path} has ${st.nlink} hard links; refusing to write to it (the other names may be files the graph never named)`);
      if (st.uid !== 0 && st.uid !== me() && st.uid !== serviceUid) {
        throw new Error(`${path} is owned by uid ${st.uid}, neither root nor the service's user; refusing to write into another user's file`);
      }
      return fd;
    }
    if (st.isCharacterDevice()) {
      const again = openSync(`/proc/self/fd/${fd}`, fsc.O_WRONLY | fsc.O_APPEND);
      closeSync(fd);
      return again;
    }
    throw new Error(`${path} is not a regular file; refusing to write logs to it`);
  } catch (err) {
    try {
      closeSync(fd);
    } catch {
      // closed already (the character-device branch)
    }
    throw err;
  }
}

const COPY_CHUNK = 1024 * 1024;

/** Rotates `path` if it is a regular file larger than maxSize. Returns true when it rotated. */
export async function rotateIfNeeded(path: string, maxSize: number, keep: number): Promise<boolean> {
  let pre;
  try {
    // Synchronous: one lstat, on the way to every start; only an actual rotation (a copy) goes through the pool.
    pre = lstatSync(path);
  } catch {
    return false;
  }
  if (pre.isSymbolicLink()) throw symlinkRefusal(path, undefined);
  // /dev/null, a fifo or a tty is somebody else's business.
  if (!pre.isFile() || pre.size <= maxSize) return false;
  let src: FileHandle;
  try {
    src = await open(path, fsc.O_RDWR | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return false;
    if (code === 'ELOOP') throw symlinkRefusal(path, err);
    throw err;
  }
  try {
    // Checked again on the fd: the name may have been swapped since the lstat.
    const st = await src.stat();
    if (!st.isFile() || st.size <= maxSize) return false;
    if (st.nlink !== 1) throw new Error(`${path} has ${st.nlink} hard links; refusing to rotate it (the other names may be files the graph never named)`);
    if (keep === 0) {
      await src.truncate(0);
      return true;
    }
    // The slow copy goes first, under a temporary name, so that readers never find a numbered file missing.
    const copy = `${path}.rotating`;
    const dst = await createExclusive(copy);
    try {
      await dst.chown(st.uid, st.gid);
      await dst.chmod(st.mode & 0o644);
      const buf = Buffer.allocUnsafe(Math.min(COPY_CHUNK, st.size));
      let pos = 0;
      for (;;) {
        const { bytesRead } = await src.read(buf, 0, buf.length, pos);
        if (bytesRead === 0) break;
        await dst.write(buf, 0, bytesRead);
        pos += bytesRead;
      }
    } finally {
      await dst.close();
    }
    await src.truncate(0);
    for (let i = keep - 1; i >= 1; i--) await shiftRotated(`${path}.${i}`, `${path}.${i + 1}`);
    await rename(copy, `${path}.1`);
    return true;
  } finally {
    await src.close();
  }
}

/** O_CREAT|O_EXCL|O_NOFOLLOW: whatever is at `path` (a stale copy, a planted symlink) is removed, never written through. */
async function createExclusive(path: string): Promise<FileHandle> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await open(path, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= 3) throw err;
      // unlink, not recursive: removes a symlink itself; a directory there is an error for a human.
      await rm(path);
    }
  }
}

/** Moves a numbered rotated file up; a name there that is not a plain file (a planted symlink) is removed instead. */
async function shiftRotated(from: string, to: string): Promise<void> {
  let st;
  try {
    st = await lstat(from);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!st.isFile()) {
    await rm(from);
    return;
  }
  await rename(from, to);
}

/** Size of a log file (not followed through a symlink), 0 when missing: where this run's output starts. */
export async function fileSize(path: string): Promise<number> {
  try {
    // Synchronous: read right before a spawn, where a thread-pool turn cost milliseconds behind other resources' I/O.
    const st = lstatSync(path);
    return st.isFile() ? st.size : 0;
  } catch {
    return 0;
  }
}

const TAIL_BYTES = 16 * 1024;

/**
 * The last `lines` lines written at or after `from` (bytes). After a rotation the file is shorter than `from`;
 * then whatever is there is the newest output.
 */
export async function tailLines(path: string, from: number, lines: number): Promise<string[]> {
  let fh;
  try {
    // Not through a symlink: its target's last lines would end up in the agent's log and error messages.
    fh = await open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  } catch {
    return [];
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) return [];
    const size = st.size;
    const start = Math.max(size < from ? 0 : from, size - TAIL_BYTES);
    const buf = Buffer.alloc(size - start);
    if (buf.length === 0) return [];
    await fh.read(buf, 0, buf.length, start);
    const all = buf.toString('utf8').split('\n');
    if (all.at(-1) === '') all.pop();
    // A cut first line is noise unless it is all there is.
    if (start > from && start > 0 && all.length > 1) all.shift();
    return all.slice(-lines).map((l) => (l.length > 500 ? `${l.slice(0, 500)} […]` : l));
  } finally {
    await fh.close();
  }
}
