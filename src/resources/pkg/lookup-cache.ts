import { closeSync, constants, fstatSync, openSync, readdirSync, readSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { PkgEntry } from './status.js';

/**
 * One pkg resource's answer from dpkg's database, kept in its private state directory for the next run: the
 * package's entries and dpkg's native architecture, with the identity of the `status` file they were read from.
 * Reading and searching the 745 kB status file was ~7 ms of the agent's main thread on a cold nginx stack's critical
 * path (its config file requires the package), where a hit is seven small system calls and a JSON of a few hundred
 * bytes (0.5-1 ms). CFEngine keeps its own inventory of installed packages for the same reason.
 *
 * A hit is only taken while the database is exactly the one it was made from:
 *  - `status` has the same device, inode, size, mtime and ctime, to the nanosecond. dpkg replaces the file by rename
 *    on every change (a new inode); an edit in place changes mtime and ctime, and ctime cannot be set back.
 *  - dpkg's journal (`updates/`) is empty: a non-empty one is folded into the answer by a full read, never cached.
 *  - there is no `arch-native` file, whose content dpkg reads for the native architecture without touching `status`.
 * The file is trusted as far as the state directory (root's, 0700): opened without following a symlink, used only if
 * it is a regular file with one link, owned by this user and writable by nobody else, and of this exact shape.
 * Anything else is a miss, and a miss costs only the full read. It is written by rename and not fsynced: after a
 * crash it is whole or missing, and its signature travels in the same JSON as its entries, so it is never taken for
 * a database it was not read from.
 */

export const LOOKUP_FILE = 'dpkg-lookup.json';
const FORMAT = 1;
/** Far above any real answer (a package installed for every architecture): a bigger file is not ours. */
const MAX_BYTES = 64 * 1024;
const MAX_ENTRIES = 64;
const ARCH_NAME = /^[a-z0-9][a-z0-9-]*$/;
const FIELDS = ['name', 'arch', 'version', 'want', 'flag', 'state'] as const;

export interface Lookup {
  readonly native: string;
  /** Every entry of the package's base name (all architectures), as DpkgDb has them. */
  readonly entries: readonly PkgEntry[];
}

/**
 * The identity of `adminDir`'s database as a lookup may be taken for, or undefined when no lookup may be used or
 * kept (a journal, an arch-native file, no status file).
 */
export function databaseSignature(adminDir: string): string | undefined {
  try {
    if (readdirSync(join(adminDir, 'updates')).some((n) => /^\d+$/.test(n))) return undefined;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return undefined;
  }
  try {
    statSync(join(adminDir, 'arch-native'));
    return undefined;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return undefined;
  }
  try {
    const st = statSync(join(adminDir, 'status'), { bigint: true });
    return `${adminDir}\0${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
  } catch {
    return undefined;
  }
}

/** The lookup of `name` kept in `dir` for the database `signature`, or undefined (a miss). */
export function readLookup(dir: string, name: string, signature: string): Lookup | undefined {
  let fd: number;
  try {
    fd = openSync(join(dir, LOOKUP_FILE), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return undefined;
  }
  let text: string;
  try {
    const st = fstatSync(fd);
    const uid = process.geteuid?.() ?? st.uid;
    if (!st.isFile() || st.nlink !== 1 || st.uid !== uid || (st.mode & 0o022) !== 0 || st.size > MAX_BYTES) return undefined;
    const buf = Buffer.allocUnsafe(st.size);
    let off = 0;
    while (off < buf.length) {
      const n = readSync(fd, buf, off, buf.length - off, off);
      if (n === 0) return undefined;
      off += n;
    }
    text = buf.toString('utf8');
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    return undefined;
  }
  return lookupOf(data, name, signature);
}

/** `data` as a lookup of `name` for `signature`, checked field by field; undefined for anything else. */
function lookupOf(data: unknown, name: string, signature: string): Lookup | undefined {
  if (typeof data !== 'object' || data === null) return undefined;
  const d = data as Record<string, unknown>;
  if (d['format'] !== FORMAT || d['signature'] !== signature || d['name'] !== name) return undefined;
  const native = d['native'];
  const list = d['entries'];
  if (typeof native !== 'string' || !ARCH_NAME.test(native) || !Array.isArray(list) || list.length > MAX_ENTRIES) return undefined;
  const base = baseName(name);
  const entries: PkgEntry[] = [];
  for (const e of list as unknown[]) {
    if (typeof e !== 'object' || e === null) return undefined;
    const r = e as Record<string, unknown>;
    if (Object.keys(r).length !== FIELDS.length || FIELDS.some((f) => typeof r[f] !== 'string') || r['name'] !== base) return undefined;
    entries.push({ name: base, arch: r['arch'] as string, version: r['version'] as string, want: r['want'] as string, flag: r['flag'] as string, state: r['state'] as string });
  }
  return { native, entries };
}

/**
 * Keeps the lookup of `name` in `dir` for the next run. Best effort: a lookup that cannot be written is only a miss
 * next time, so nothing here fails the check.
 */
export function writeLookup(dir: string, name: string, signature: string, lookup: Lookup): void {
  const body = JSON.stringify({ format: FORMAT, signature, name, native: lookup.native, entries: lookup.entries.map((e) => Object.fromEntries(FIELDS.map((f) => [f, e[f]]))) });
  if (Buffer.byteLength(body) > MAX_BYTES || lookup.entries.length > MAX_ENTRIES) return;
  const tmp = join(dir, `.${LOOKUP_FILE}.tmp-${process.pid}`);
  let fd: number | undefined;
  try {
    // A leftover of a process that had this pid and died between the create and the rename.
    try {
      unlinkSync(tmp);
    } catch {
      // none
    }
    fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    const buf = Buffer.from(body, 'utf8');
    for (let off = 0; off < buf.length; ) off += writeSync(fd, buf, off, buf.length - off);
    closeSync(fd);
    fd = undefined;
    renameSync(tmp, join(dir, LOOKUP_FILE));
  } catch {
    if (fd !== undefined) closeSync(fd);
    try {
      unlinkSync(tmp);
    } catch {
      // not made, or gone
    }
  }
}

function baseName(name: string): string {
  const colon = name.indexOf(':');
  return colon === -1 ? name : name.slice(0, colon);
}
