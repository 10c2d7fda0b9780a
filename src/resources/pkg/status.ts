import { execFile, execFileSync } from 'node:child_process';
import { closeSync, fstatSync, lstatSync, openSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * The dpkg database, read directly: `status` plus the journal in `updates/` that dpkg writes between checkpoints
 * (after a dpkg that was killed, the journal holds the truth until the next dpkg run folds it into `status`).
 * Asking dpkg-query instead would cost a process per check; the file is a few hundred kB and parses in milliseconds.
 */

export const DPKG_ADMIN_DIR = '/var/lib/dpkg';

export interface PkgEntry {
  readonly name: string;
  /** `all`, the native architecture, or a foreign one. Empty when the stanza has none (a purged leftover). */
  readonly arch: string;
  /** Empty for a package that is not installed and never was (or was purged but kept a selection). */
  readonly version: string;
  /** The three words of the Status field: want, flag, state, e.g. `install ok installed`. */
  readonly want: string;
  readonly flag: string;
  readonly state: string;
}

/**
 * States in which the package's files are on disk and it is configured. Trigger states count: the package itself
 * is configured and only a trigger of another package is outstanding; apt would call it installed, and treating it
 * as missing would ask apt to install something apt considers done — a loop that never converges.
 */
const INSTALLED_STATES = new Set(['installed', 'triggers-pending', 'triggers-awaited']);

export function isInstalled(e: PkgEntry | undefined): boolean {
  return e !== undefined && e.flag === 'ok' && INSTALLED_STATES.has(e.state);
}

/** Anything of the package left on disk: files (in any state but config-files) or, with `configToo`, conffiles. */
export function hasTraces(e: PkgEntry | undefined, configToo: boolean): boolean {
  if (e === undefined || e.state === 'not-installed' || e.state === '') return false;
  return configToo || e.state !== 'config-files';
}

/** `install ok installed 1.2-3`, or `not installed`: what a person would want to see in a log line. */
export function describeEntry(e: PkgEntry | undefined): string {
  if (e === undefined || e.state === 'not-installed') return 'not installed';
  return e.version === '' ? e.state : `${e.state} ${e.version}`;
}

export class DpkgDb {
  /** By package name; several entries when a Multi-Arch: same package is installed for more than one arch. */
  private byName: Map<string, PkgEntry[]>;
  /**
   * The status file's bytes while only some names have been looked up (see fromStatus), each looked-up name in
   * byName; undefined once every entry is in byName.
   */
  private raw: Buffer | undefined;
  /** nativeArch's answer once asked (null: the file does not say). */
  private native: string | null | undefined;

  constructor(entries: Iterable<PkgEntry>) {
    this.byName = byNameOf(entries);
  }

  /**
   * The database in the bytes of a status file, parsed as far as asked: the first name looked up has its stanzas
   * found and parsed alone, and the second distinct name parses the rest. The usual run checks one or two packages,
   * and the whole file (745 kB, 833 packages on this project's machine) decoded and parsed was ~20 ms of a cold run,
   * on its critical path (a config file requires its package). The entries are exactly those parseStatus gives.
   */
  static fromStatus(raw: Buffer): DpkgDb {
    const db = new DpkgDb([]);
    db.raw = raw;
    return db;
  }

  /** Whether every entry has been parsed (for tests: one lookup parses only its own stanzas). */
  get parsedWhole(): boolean {
    return this.raw === undefined;
  }

  get size(): number {
    this.parseAll();
    let n = 0;
    for (const list of this.byName.values()) n += list.length;
    return n;
  }

  /** Every entry of the package `base` (all its architectures), in file order; [] when there is none. */
  entriesFor(base: string): readonly PkgEntry[] {
    return this.entriesOf(base) ?? [];
  }

  private entriesOf(base: string): PkgEntry[] | undefined {
    const raw = this.raw;
    if (raw === undefined || this.byName.has(base)) return this.byName.get(base);
    if (this.byName.size > 0) {
      this.parseAll();
      return this.byName.get(base);
    }
    const found = entriesNamed(raw, base);
    this.byName.set(base, found);
    return found.length === 0 ? undefined : found;
  }

  private parseAll(): void {
    if (this.raw === undefined) return;
    this.byName = byNameOf(parseStatus(this.raw.toString('utf8')));
    this.raw = undefined;
  }

  /**
   * dpkg's native architecture as this database has it: the architecture of the installed dpkg package. `dpkg
   * --print-architecture` prints the architecture dpkg was built for, and the dpkg that runs is the one this entry
   * describes (Essential and Multi-Arch: foreign, so one is installed). Undefined when the entry does not say it
   * plainly (no dpkg, or a second one mid-crossgrade, or not installed, or `all`): ask dpkg then. Reading it here
   * costs no process: that process was 6-10 ms of the agent's main thread (the fork) on a cold run's critical path.
   * Newer dpkg reads the native architecture from `arch-native` in its admin directory where that file exists: the
   * caller asks dpkg then (see hasArchNativeFile).
   */
  nativeArch(): string | undefined {
    if (this.native === undefined) {
      const list = (this.raw === undefined ? this.byName.get('dpkg') : entriesNamed(this.raw, 'dpkg')) ?? [];
      const present = list.filter((e) => hasTraces(e, true));
      const only = present.length === 1 ? present[0] : undefined;
      this.native = only !== undefined && isInstalled(only) && ARCH_NAME.test(only.arch) && only.arch !== 'all' ? only.arch : null;
    }
    return this.native ?? undefined;
  }

  /**
   * `name:arch` looks for exactly that architecture. A bare name means what apt means by it: the native
   * architecture or `all` (a foreign-arch-only install does not satisfy `apt-get install name`).
   */
  get(name: string, native: string = nativeArch()): PkgEntry | undefined {
    const colon = name.indexOf(':');
    const base = colon === -1 ? name : name.slice(0, colon);
    const arch = colon === -1 ? undefined : name.slice(colon + 1);
    const list = this.entriesOf(base);
    if (list === undefined) return undefined;
    if (arch !== undefined) return list.find((e) => e.arch === arch || (e.arch === 'all' && arch === native));
    return list.find((e) => e.arch === native || e.arch === 'all' || e.arch === '');
  }
}

function byNameOf(entries: Iterable<PkgEntry>): Map<string, PkgEntry[]> {
  const byName = new Map<string, PkgEntry[]>();
  for (const e of entries) {
    const list = byName.get(e.name);
    if (list === undefined) byName.set(e.name, [e]);
    else list.push(e);
  }
  return byName;
}

/** What dpkg accepts as an architecture name (dpkg_arch_name_is_illegal: lower-case letters, digits, hyphens). */
const ARCH_NAME = /^[a-z0-9][a-z0-9-]*$/;

const LF = 0x0a;
const PACKAGE_KEY = 'Package:';
const PACKAGE_KEY_BYTES = Buffer.from(PACKAGE_KEY, 'latin1');

/**
 * The entries of the status file `raw` named `name`, in file order, as parseStatus(whole text) would give them: every
 * line that starts with `Package:` and names it (its value trimmed, as parseStatus does) marks a stanza, and that
 * stanza, from the blank line before to the blank line after, goes through parseStatus itself. A stanza whose last
 * Package line names another package yields nothing here, as in the whole parse. Byte offsets are safe to cut at:
 * in UTF-8 a newline or a colon is never part of another character.
 */
function entriesNamed(raw: Buffer, name: string): PkgEntry[] {
  const needle = Buffer.from(name, 'utf8');
  if (needle.length === 0 || needle.includes(LF)) return entriesNamedByLine(raw, name);
  // Found from the name's own occurrences: a few dozen for a package others depend on, where every Package line
  // (833 here) was ~3 µs of indexOf and a decoded string each, 3-10 ms of a cold run's first package check.
  const out: PkgEntry[] = [];
  for (let from = 0; ; ) {
    const hit = raw.indexOf(needle, from);
    if (hit === -1) return out;
    // The line holding it marks a stanza when it starts with "Package:" and its value is the name.
    const at = hit === 0 ? 0 : raw.lastIndexOf(LF, hit - 1) + 1;
    let eol = raw.indexOf(LF, hit);
    if (eol === -1) eol = raw.length;
    from = eol;
    if (eol - at < PACKAGE_KEY_BYTES.length || raw.compare(PACKAGE_KEY_BYTES, 0, PACKAGE_KEY_BYTES.length, at, at + PACKAGE_KEY_BYTES.length) !== 0) continue;
    if (raw.toString('utf8', at + PACKAGE_KEY_BYTES.length, eol).trim() !== name) continue;
    const start = stanzaStart(raw, at);
    const end = stanzaEnd(raw, eol);
    for (const e of parseStatus(raw.toString('utf8', start, end))) if (e.name === name) out.push(e);
    from = end;
  }
}

/** entriesNamed line by line, for a name that cannot be searched for itself (empty, or with a newline). */
function entriesNamedByLine(raw: Buffer, name: string): PkgEntry[] {
  const out: PkgEntry[] = [];
  for (let from = 0; ; ) {
    const at = raw.indexOf(PACKAGE_KEY, from, 'latin1');
    if (at === -1) return out;
    from = at + PACKAGE_KEY.length;
    if (at > 0 && raw[at - 1] !== LF) continue;
    let eol = raw.indexOf(LF, from);
    if (eol === -1) eol = raw.length;
    if (raw.toString('utf8', from, eol).trim() !== name) continue;
    const start = stanzaStart(raw, at);
    const end = stanzaEnd(raw, eol);
    for (const e of parseStatus(raw.toString('utf8', start, end))) if (e.name === name) out.push(e);
    from = end;
  }
}

/** Where the stanza holding the line at `at` begins: after the last blank line ("" or "\r", as parseStatus has it) before it. */
function stanzaStart(raw: Buffer, at: number): number {
  // (A negative offset would count from the end.)
  if (at === 0) return 0;
  const lf = raw.lastIndexOf('\n\n', at - 1, 'latin1');
  const start = lf === -1 ? 0 : lf + 2;
  // A "\r" line only between there and here (dpkg writes none: searched in that span, not the whole file).
  const crlf = raw.subarray(start, at).lastIndexOf('\n\r\n', undefined, 'latin1');
  return crlf === -1 ? start : start + crlf + 3;
}

/** Where the stanza holding the line ending at `eol` ends: at its next blank line, or at the end of the file. */
function stanzaEnd(raw: Buffer, eol: number): number {
  const lf = raw.indexOf('\n\n', eol, 'latin1');
  const end = lf === -1 ? raw.length : lf + 1;
  const crlf = raw.subarray(eol, end).indexOf('\n\r\n', 0, 'latin1');
  return crlf === -1 ? end : eol + crlf + 1;
}

/** Parses the deb822 text of a dpkg status file. Only the four fields that matter are looked at. */
export function parseStatus(text: string): PkgEntry[] {
  const out: PkgEntry[] = [];
  let name = '';
  let arch = '';
  let version = '';
  let status = '';
  const flush = (): void => {
    if (name !== '') {
      const [want = '', flag = '', state = ''] = status.split(/\s+/);
      out.push({ name, arch, version, want, flag, state });
    }
    name = arch = version = status = '';
  };
  let pos = 0;
  const len = text.length;
  while (pos < len) {
    let end = text.indexOf('\n', pos);
    if (end === -1) end = len;
    const c = text.charCodeAt(pos);
    if (end === pos || (end === pos + 1 && c === 13)) flush();
    // Continuation lines (space or tab) belong to multi-line fields such as Description and Conffiles.
    else if (c !== 32 && c !== 9) {
      const colon = text.indexOf(':', pos);
      if (colon !== -1 && colon < end) {
        const key = text.slice(pos, colon);
        switch (key) {
          case 'Package':
            name = text.slice(colon + 1, end).trim();
            break;
          case 'Status':
            status = text.slice(colon + 1, end).trim();
            break;
          case 'Version':
            version = text.slice(colon + 1, end).trim();
            break;
          case 'Architecture':
            arch = text.slice(colon + 1, end).trim();
            break;
        }
      }
    }
    pos = end + 1;
  }
  flush();
  return out;
}

interface CacheEntry {
  readonly signature: string;
  readonly db: DpkgDb;
}

const cache = new Map<string, CacheEntry>();
/** Loads in progress, by admin dir and the signature of the `status` they were started for. */
const inFlight = new Map<string, Promise<DpkgDb>>();
let parses = 0;

/** How many times a status file was actually parsed (the cache works when this stays small). For tests. */
export function statusParseCount(): number {
  return parses;
}

/**
 * The dpkg database under `adminDir`, parsed at most once per version of the files: concurrent callers share one
 * read, and later callers get the cached parse while `status` (inode, size, mtime) and the journal are unchanged.
 * The result is never older than the call: a load started before `status` was replaced is not shared.
 */
export async function readDpkgStatus(adminDir: string = DPKG_ADMIN_DIR): Promise<DpkgDb> {
  const journal = await journalFiles(adminDir);
  const statusPath = join(adminDir, 'status');
  const signature = signatureOf(statSync(statusPath));
  const cached = cache.get(adminDir);
  // A non-empty journal is rare (only during or after an interrupted dpkg run); it is simply never cached.
  if (journal.length === 0 && cached !== undefined && cached.signature === signature) return cached.db;
  const key = `${adminDir}\0${signature}\0${journal.join(',')}`;
  let pending = inFlight.get(key);
  if (pending === undefined) {
    pending = load(adminDir, journal);
    inFlight.set(key, pending);
    const done = (): void => {
      inFlight.delete(key);
    };
    pending.then(done, done);
  }
  return pending;
}

function signatureOf(st: { ino: number; size: number; mtimeMs: number }): string {
  return `${st.ino}:${st.size}:${st.mtimeMs}`;
}

async function load(adminDir: string, journal: readonly string[]): Promise<DpkgDb> {
  // Reading through one descriptor gives a consistent snapshot: dpkg replaces `status` by rename, never in place.
  // Synchronously, like the stat and the journal's listing: the file is in the page cache (745 kB: ~1-3 ms of this
  // thread, once per change of the database), where the six thread-pool round trips of the asynchronous calls each
  // waited for this thread while other resources' steps ran on it, ~14 ms on the way from a cold run's start to a
  // config file that requires its package (2026-12-03: the nginx stack's package check done 5 ms sooner, the run 3-6
  // ms sooner, 15-31 interleaved runs). An earlier try of this, before the svc logger left the agent's forks, had made
  // the run slower (the service started sooner, and its two forks held up the other resources' writes).
  const fd = openSync(join(adminDir, 'status'), 'r');
  let raw: Buffer;
  let signature: string;
  try {
    signature = signatureOf(fstatSync(fd));
    raw = readFileSync(fd);
  } finally {
    closeSync(fd);
  }
  parses++;
  if (journal.length === 0) {
    const db = DpkgDb.fromStatus(raw);
    cache.set(adminDir, { signature, db });
    return db;
  }
  const merged = new Map(parseStatus(raw.toString('utf8')).map((e) => [`${e.name}:${e.arch}`, e]));
  for (const f of journal) {
    let t: string;
    try {
      t = await readFile(join(adminDir, 'updates', f), 'utf8');
    } catch {
      continue; // folded into status and deleted meanwhile
    }
    for (const e of parseStatus(t)) merged.set(`${e.name}:${e.arch}`, e);
  }
  return new DpkgDb(merged.values());
}

/** dpkg's journal entries, in the order they were written (their names are increasing numbers). */
async function journalFiles(adminDir: string): Promise<string[]> {
  let names: string[];
  try {
    names = readdirSync(join(adminDir, 'updates'));
  } catch {
    return [];
  }
  return names.filter((n) => /^\d+$/.test(n)).sort((a, b) => Number(a) - Number(b));
}

const NODE_TO_DEB: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'armhf', ia32: 'i386', ppc64: 'ppc64el', s390x: 's390x', riscv64: 'riscv64' };
const PRINT_ARCH = ['--print-architecture'];
const PRINT_TIMEOUT_MS = 5000;
let native: string | undefined;
let nativeAsked: Promise<string> | undefined;
let dpkgAsked = 0;

/** How many times dpkg was run to print its architecture (tests: a check that reads it from the database runs none). */
export function dpkgArchProcesses(): number {
  return dpkgAsked;
}

/** What dpkg printed (empty when it could not be run or failed), or Node's name for the architecture. */
function archFrom(printed: string): string {
  return printed === '' ? (NODE_TO_DEB[process.arch] ?? process.arch) : printed;
}

/**
 * Whether the admin directory has an `arch-native` file: a newer dpkg takes its native architecture from there rather
 * than from how it was built, so the installed dpkg's own architecture (DpkgDb.nativeArch) may not be it.
 */
export async function hasArchNativeFile(adminDir: string = DPKG_ADMIN_DIR): Promise<boolean> {
  try {
    lstatSync(join(adminDir, 'arch-native'));
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ENOENT';
  }
}

/** dpkg's native architecture (asked once; Node's name for it is the fallback when dpkg cannot be run). */
export function nativeArch(): string {
  if (native === undefined) {
    let printed: string;
    dpkgAsked++;
    try {
      printed = execFileSync('dpkg', PRINT_ARCH, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: PRINT_TIMEOUT_MS }).trim();
    } catch {
      printed = '';
    }
    native = archFrom(printed);
  }
  return native;
}

/**
 * nativeArch() without blocking: a check asks for it while it reads the status file, so dpkg runs meanwhile (a
 * blocking call was ~15 ms of a cold run, before its first resource). The same command and fallback.
 */
export function nativeArchAsync(): Promise<string> {
  if (native !== undefined) return Promise.resolve(native);
  nativeAsked ??= new Promise((resolve) => {
    dpkgAsked++;
    execFile('dpkg', PRINT_ARCH, { encoding: 'utf8', timeout: PRINT_TIMEOUT_MS }, (err, stdout) => {
      native ??= archFrom(err === null ? stdout.trim() : '');
      resolve(native);
    });
  });
  return nativeAsked;
}
