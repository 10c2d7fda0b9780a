import { constants as C, type Stats } from 'node:fs';
import { lstat, open, readdir, readlink, rmdir, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { BackplaneError } from '../errors.js';
import { syncDirectory } from './dirsync.js';

/**
 * Paths that cannot be raced. The agent runs as root and changes paths that other users may be able to rename
 * things in; a check on a path followed by a change on the same path lets such a user swap in a symlink between
 * the two calls. So every change is made on what was checked:
 *
 * - the parent directory of a path is reached either by its plain path, when nobody but root (or this process's
 *   user) can change how that path resolves, or else by a descriptor opened one component at a time with
 *   O_NOFOLLOW, following a symlinked component only when it sits in a directory only root can write (systemd's
 *   "unsafe path transition" rule);
 * - names inside that directory are then used through `/proc/self/fd/<dirfd>/<name>`: Node has no openat(),
 *   renameat(), unlinkat(), mkdirat() or symlinkat(), and a path through the descriptor's /proc link resolves
 *   exactly like those calls would;
 * - the leaf is opened with O_NOFOLLOW and inspected and changed through that one descriptor (`leaf.ts` callers).
 *
 * Linux only (the agent's platform): /proc must be mounted.
 */

/** Linux's O_PATH (same value on x86 and the asm-generic architectures: arm64, riscv); Node's fs.constants lacks it. */
export const O_PATH = 0o10000000;
const S_ISVTX = 0o1000;
/** How long a directory chain found root-only stays trusted without a fresh look. Only root can undo it. */
const TRUST_TTL_MS = 1000;
const MAX_LINKS = 40;
/** A component that is a symlink, then a directory again, is looked at this many times before giving up. */
const MAX_RETRIES = 8;

const myUid = process.getuid?.() ?? 0;

function trustedOwner(uid: number): boolean {
  return uid === 0 || uid === myUid;
}

/** Nobody but root (or this process's user) can create, remove or rename entries in a directory with this stat. */
export function privateDir(st: Pick<Stats, 'uid' | 'mode'>): boolean {
  return trustedOwner(st.uid) && (st.mode & 0o022) === 0;
}

/** The entry `e` of directory `d` cannot be removed, renamed or replaced by anyone but root (or this user). */
function entryFixed(d: Pick<Stats, 'uid' | 'mode'>, e: Pick<Stats, 'uid'>): boolean {
  // In a sticky directory (/tmp) only the entry's owner, the directory's owner and root may unlink or rename over it.
  return privateDir(d) || (trustedOwner(d.uid) && (d.mode & S_ISVTX) !== 0 && trustedOwner(e.uid));
}

/** A directory the caller may name entries in; the names resolve in exactly the directory that was checked. */
export interface DirRef {
  /** The plain path when its resolution is fixed, else `/proc/self/fd/N` of a descriptor held open. */
  readonly path: string;
  /** Someone other than root (or this process's user) may create, remove or rename entries in it. */
  readonly shared: boolean;
  at(name: string): string;
  /** fsync of the directory, making renames and creations in it durable. */
  sync(): Promise<void>;
  close(): Promise<void>;
}

export function procPath(fh: FileHandle): string {
  return `/proc/self/fd/${fh.fd}`;
}

function plainRef(dir: string, shared: boolean): DirRef {
  return {
    path: dir,
    shared,
    at: (name) => (dir === '/' ? `/${name}` : `${dir}/${name}`),
    sync: () => syncDirectory(dir),
    close: () => Promise.resolve(),
  };
}

function fdRef(fh: FileHandle, shared: boolean): DirRef {
  const path = procPath(fh);
  return {
    path,
    shared,
    at: (name) => `${path}/${name}`,
    async sync() {
      // The walk holds an O_PATH descriptor, which cannot be fsynced; a reopen through /proc is the same directory.
      const d = await open(path, C.O_RDONLY | C.O_DIRECTORY);
      try {
        await d.sync();
      } finally {
        await d.close();
      }
    },
    close: () => fh.close(),
  };
}

interface Prefix {
  /** The longest leading part of the directory whose resolution nobody but root can change. */
  readonly path: string;
  readonly st: Stats;
  /** The whole directory is that part. */
  readonly complete: boolean;
  /** Only root can invalidate this answer, so it may be reused for a while (TRUST_TTL_MS). */
  readonly cacheable: boolean;
}

/** `plain`: plainParent's answer for the directory once `p` has resolved (null: not a plain path), for knownPlainParent. */
const known = new Map<string, { readonly at: number; readonly p: Promise<Prefix>; plain?: PlainParent | null }>();

export interface PlainParent {
  readonly dir: string;
  readonly shared: boolean;
}

/**
 * Forgets every directory found trusted. The file kind calls it after it creates, removes or changes the owner or
 * mode of a directory, so a directory it just gave to a user is looked at again.
 */
export function forgetTrustedDirs(): void {
  known.clear();
}

function stablePrefix(dir: string): Promise<Prefix> {
  const hit = known.get(dir);
  if (hit !== undefined && Date.now() - hit.at < TRUST_TTL_MS) return hit.p;
  const p = computePrefix(dir);
  const entry: { readonly at: number; readonly p: Promise<Prefix>; plain?: PlainParent | null } = { at: Date.now(), p };
  known.set(dir, entry);
  p.then(
    (r) => {
      if (!r.cacheable && known.get(dir) === entry) known.delete(dir);
      else entry.plain = r.complete ? { dir, shared: !privateDir(r.st) } : null;
    },
    () => {
      if (known.get(dir) === entry) known.delete(dir);
    },
  );
  return p;
}

/** One lstat per directory, the ancestors' answers shared: 10,000 files in one directory cost a few lstats per second. */
async function computePrefix(dir: string): Promise<Prefix> {
  if (dir === '/') return { path: '/', st: await lstat('/'), complete: true, cacheable: true };
  const parent = await stablePrefix(dirname(dir));
  if (!parent.complete) return parent;
  let st: Stats;
  try {
    st = await lstat(dir);
  } catch {
    // Missing or unreadable: the careful walk reports it properly.
    return { ...parent, complete: false };
  }
  if (!st.isDirectory() || !entryFixed(parent.st, st)) return { ...parent, complete: false };
  // Fixed by the sticky rule (a root-owned entry of /tmp) is as fixed as in a private directory: only root can
  // chown the entry or rename it. Not caching it re-stat'ed every parent below /tmp once per file checked.
  return { path: dir, st, complete: true, cacheable: parent.cacheable };
}

/**
 * When nobody but root can change how `path`'s directory resolves (the whole chain was found fixed, as openParent
 * checks it): that directory, so `${dir}/${name}` opened with O_NOFOLLOW reaches exactly what openParent's plain
 * reference would. undefined when openParent would need a descriptor walk. The answer is shared and cached like
 * openParent's, so 100,000 files in one directory cost one look.
 */
export async function plainParent(path: string): Promise<PlainParent | undefined> {
  const dir = dirname(path);
  let pre: Prefix;
  try {
    pre = await stablePrefix(dir);
  } catch {
    return undefined;
  }
  return pre.complete ? { dir, shared: !privateDir(pre.st) } : undefined;
}

/**
 * plainParent's answer without waiting, when it is already known (cached and fresh): null for "no plain path",
 * undefined when only plainParent can tell. A converged check of a file in a known directory then needs no promise.
 */
export function knownPlainParent(path: string): PlainParent | null | undefined {
  const hit = known.get(dirname(path));
  if (hit === undefined || Date.now() - hit.at >= TRUST_TTL_MS) return undefined;
  return hit.plain;
}

export interface SafePathOptions {
  /** `kind[name]` for the errors this throws. */
  readonly resource?: string | undefined;
}

/**
 * The directory holding `path`, reached without following any symlink an unprivileged user could have planted.
 * Throws the errno error (ENOENT, ENOTDIR, EACCES...) of a component that is missing or not a directory, or a
 * BackplaneError for a symlink that may not be followed.
 */
export async function openParent(path: string, opts: SafePathOptions = {}): Promise<DirRef> {
  const dir = dirname(path);
  const pre = await stablePrefix(dir);
  if (pre.complete) return plainRef(dir, !privateDir(pre.st));
  const fh = await walk(pre.path, components(dir.slice(pre.path.length)), 'dir', path, opts);
  try {
    return fdRef(fh, !privateDir(await fh.stat()));
  } catch (err) {
    await fh.close();
    throw err;
  }
}

/**
 * Opens `path` for reading (O_NONBLOCK: a fifo cannot hang it), following a symlink anywhere on the way, the last
 * component included, only where root alone could have put it. For reading a `source` the graph names.
 */
export async function openForRead(path: string, opts: SafePathOptions = {}): Promise<FileHandle> {
  const dir = dirname(path);
  const pre = await stablePrefix(dir);
  if (pre.complete) {
    try {
      return await open(path, READ_NOFOLLOW);
    } catch (err) {
      if (errnoCode(err) !== 'ELOOP') throw err;
      // A symlink at the end: the walk decides whether it may be followed.
    }
  }
  return walk(pre.path, components(path.slice(pre.path === '/' ? 0 : pre.path.length)), 'read', path, opts);
}

/** Regular files and directories open for reading and fchmod/fchown; fifos don't block, ttys don't attach. */
export const READ_NOFOLLOW = C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK | C.O_NOCTTY;
const DIR_STEP = O_PATH | C.O_DIRECTORY | C.O_NOFOLLOW;

function components(rest: string): string[] {
  return rest.split('/').filter((c) => c !== '' && c !== '.');
}

/**
 * openat() one component at a time from `start` (a directory whose path resolution is fixed). Each step is
 * O_NOFOLLOW; a symlink is read and followed only when its directory passes `entryFixed`, up to 40 of them.
 * 'dir' mode returns an O_PATH descriptor of the final directory; 'read' mode opens the final component for reading.
 */
async function walk(start: string, comps: string[], mode: 'dir' | 'read', path: string, opts: SafePathOptions): Promise<FileHandle> {
  let cur = await open(start, O_PATH | C.O_DIRECTORY);
  let shown = start;
  let links = 0;
  let retries = 0;
  const todo = [...comps];
  try {
    for (;;) {
      const c = todo.shift();
      if (c === undefined) {
        if (mode === 'dir') return cur;
        // 'read' of a path that ended in a directory or in "..": open what we reached.
        const fh = await open(procPath(cur), C.O_RDONLY | C.O_NONBLOCK);
        await cur.close();
        return fh;
      }
      const last = mode === 'read' && todo.length === 0;
      const at = `${procPath(cur)}/${c}`;
      let next: FileHandle;
      try {
        next = await open(at, last ? READ_NOFOLLOW : DIR_STEP);
      } catch (err) {
        const code = errnoCode(err);
        if (code !== 'ELOOP' && code !== 'ENOTDIR') throw err;
        const lst = await lstat(at);
        if (!lst.isSymbolicLink()) {
          // Not a symlink (any more): a swap in progress, or really not a directory. Look again, a few times.
          if (lst.isDirectory() && ++retries <= MAX_RETRIES) {
            todo.unshift(c);
            continue;
          }
          throw err;
        }
        if (++links > MAX_LINKS) throw Object.assign(new Error(`too many levels of symbolic links: ${path}`), { code: 'ELOOP' });
        const dst = await cur.stat();
        // Checked before the link is read: in a directory that passes, nobody else can replace the link meanwhile.
        if (!entryFixed(dst, lst)) {
          const target = await readlink(at).catch(() => '?');
          throw unsafeLink(join2(shown, c), target, shown, dst, path, opts);
        }
        const target = await readlink(at);
        todo.unshift(...target.split('/').filter((t) => t !== '' && t !== '.'));
        if (target.startsWith('/')) {
          const root = await open('/', O_PATH | C.O_DIRECTORY);
          await cur.close();
          cur = root;
          shown = '/';
        }
        continue;
      }
      if (last) {
        await cur.close();
        return next;
      }
      await cur.close();
      cur = next;
      shown = join2(shown, c);
    }
  } catch (err) {
    await cur.close();
    throw err;
  }
}

function join2(dir: string, name: string): string {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}

function unsafeLink(link: string, target: string, dir: string, dst: Stats, path: string, opts: SafePathOptions): BackplaneError {
  const who = trustedOwner(dst.uid) ? `users other than its owner (mode ${(dst.mode & 0o7777).toString(8)})` : `uid ${dst.uid}, its owner`;
  return new BackplaneError(
    'E_APPLY',
    `refusing to follow symlink ${link} -> ${target} on the way to ${path}: ${dir} can be changed by ${who}, who may have planted it`,
    {
      resource: opts.resource,
      hint: 'a symlink is followed only in a directory nobody but root can write; declare the real path, or make the directory writable by root only',
    },
  );
}

/** An error (with the file kind's wording) for a change refused because the file has other names an attacker chose. */
export function hardLinkRefusal(path: string, what: string, nlink: number, opts: SafePathOptions = {}): BackplaneError {
  return new BackplaneError(
    'E_APPLY',
    `refusing to change the ${what} of ${path}: it has ${nlink} hard links and its directory can be changed by other users, so another name may be a file outside the graph`,
    { resource: opts.resource, hint: 'remove the extra hard links, or make the directory writable by root only' },
  );
}

/**
 * Removes `name` from the directory `parent` (a DirRef path or a /proc/self/fd path): unlinks a non-directory;
 * with `recursive`, empties a directory through descriptors and removes it. No symlink is ever followed, also
 * one swapped in for a subdirectory mid-walk: it is unlinked instead. A missing entry is not an error.
 */
export async function removeEntry(parent: string, name: string, recursive: boolean): Promise<void> {
  const at = `${parent}/${name}`;
  // A bounded loop: each retry means the entry changed type under us (a swap).
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      await unlink(at);
      return;
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ENOENT') return;
      if (code !== 'EISDIR' || !recursive) throw err;
    }
    let dir: FileHandle;
    try {
      dir = await open(at, DIR_STEP);
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ENOENT') return;
      if (code === 'ELOOP' || code === 'ENOTDIR') continue; // now a symlink or a file: unlink it
      throw err;
    }
    try {
      const base = procPath(dir);
      for (const child of await readdir(base)) await removeEntry(base, child, true);
    } finally {
      await dir.close();
    }
    try {
      await rmdir(at);
      return;
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ENOENT') return;
      if (code !== 'ENOTDIR' && code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
    }
  }
  throw Object.assign(new Error(`${at} kept changing while it was being removed`), { code: 'EAGAIN' });
}

export function errnoCode(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null || !('code' in err)) return undefined;
  const code: unknown = err.code;
  return typeof code === 'string' ? code : undefined;
}

/** basename that names `/` as `.`, so `dir.at(leafName(p))` works for every absolute path. */
export function leafName(path: string): string {
  const b = basename(path);
  return b === '' ? '.' : b;
}
