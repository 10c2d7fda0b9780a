import { randomBytes } from 'node:crypto';
import { chmod, lstat, rename, stat, unlink } from 'node:fs/promises';
import type { Server } from 'node:net';
import { join } from 'node:path';
import { BackplaneError, errorMessage } from '../errors.js';
import { ensureStateDir } from '../state-dir.js';

/**
 * A Unix socket only the agent's user can connect to, in its state directory (the control socket, the API socket).
 *
 * Node exposes neither SO_PEERCRED nor getpeereid, so a server cannot ask the kernel who is on the other end. This
 * relies on the file system instead, which Linux checks on connect(2): the socket is made only in a state directory
 * that is the agent user's own and closed to group and others (0700: nobody else can even reach the path), and the
 * socket itself is chmod 0600 (connect needs write permission on it). Both are checked or set before the first
 * connection can be accepted; a state directory that lets others in is refused rather than served.
 *
 * Listen only while holding the store or state in `stateDir` (its flock): a socket left on the path is then a stale
 * one of an earlier agent (kill -9 leaves it behind), never a live one, and is replaced.
 */

/** sun_path is 108 bytes on Linux, including the terminating NUL. */
const MAX_SOCKET_PATH = 107;

export interface PrivateSocket {
  readonly path: string;
  /** Removes the socket if it is still ours, then closes the server (and every connection). Idempotent. */
  close(): Promise<void>;
}

export async function listenPrivate(server: Server, stateDir: string, fileName: string, what: string): Promise<PrivateSocket> {
  const path = join(stateDir, fileName);
  // Bound under a temporary name, then renamed into place: the rename replaces a stale socket atomically, and
  // libuv, which unlinks the name it bound when the server closes, then unlinks nothing that matters (a later
  // agent's socket on the path, say). close() removes ours itself, after checking it is still ours.
  const bindPath = join(stateDir, `.${fileName}-${randomBytes(4).toString('hex')}`);
  await checkPrivate(stateDir, bindPath, what);
  await checkReplaceable(path, what);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(bindPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  let ino: number;
  try {
    // Before anyone can know the name: the directory already keeps everyone else out (checkPrivate).
    await chmod(bindPath, 0o600);
    ino = (await stat(bindPath)).ino;
    await rename(bindPath, path);
  } catch (err) {
    server.close();
    await unlink(bindPath).catch(() => undefined);
    throw new BackplaneError('E_IO', `cannot set up ${what} ${path}: ${errorMessage(err)}`, { cause: err });
  }
  let closing: Promise<void> | undefined;
  return {
    path,
    close: () => {
      closing ??= (async () => {
        // Only our own socket: a later server may already have put its own on the path. Checked while ours still
        // listens, so its inode number cannot have been reused by another file.
        const st = await lstat(path).catch(() => undefined);
        if (st?.isSocket() === true && st.ino === ino) await unlink(path).catch(() => undefined);
        const done = new Promise<void>((resolve) => server.close(() => resolve()));
        (server as Server & { closeAllConnections?: () => void }).closeAllConnections?.();
        await done;
      })();
      return closing;
    },
  };
}

/**
 * The state directory must be the agent user's own and closed to everyone else: that is what keeps other users
 * away from the socket. ensureStateDir refuses one others can write; a socket needs more.
 */
async function checkPrivate(stateDir: string, bindPath: string, what: string): Promise<void> {
  await ensureStateDir(stateDir);
  const st = await lstat(stateDir);
  if ((st.mode & 0o077) !== 0) {
    throw new BackplaneError('E_USAGE', `the state directory ${stateDir} is open to group or others (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}); the agent's ${what} there could be reached by other users`, {
      hint: `chmod 700 ${stateDir}`,
    });
  }
  if (Buffer.byteLength(bindPath) > MAX_SOCKET_PATH) {
    throw new BackplaneError('E_USAGE', `the state directory ${stateDir} is too long a path for the agent's ${what}: a Unix socket address holds ${MAX_SOCKET_PATH} bytes, and ${bindPath} is ${Buffer.byteLength(bindPath)}`, {
      hint: 'use a shorter --state-dir',
    });
  }
}

/** A socket left by an earlier agent is replaced; anything else on the path is the user's and is left alone. */
async function checkReplaceable(path: string, what: string): Promise<void> {
  const st = await lstat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (st === undefined) return;
  if (!st.isSocket()) {
    throw new BackplaneError('E_USAGE', `${path} exists and is not a socket; refusing to replace it with the agent's ${what}`, {
      hint: `move ${path} away`,
    });
  }
}
