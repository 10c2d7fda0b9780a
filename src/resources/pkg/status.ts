import { execFileSync } from 'node:child_process';
import { open, readdir, readFile, stat } from 'node:fs/promises';
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
  private readonly byName: Map<string, PkgEntry[]>;

  constructor(entries: Iterable<PkgEntry>) {
    const byName = new Map<string, PkgEntry[]>();
    for (const e of entries) {
      const list = byName.get(e.name);
      if (list === undefined) byName.set(e.name, [e]);
      else list.push(e);
    }
    this.byName = byName;
  }

  get size(): number {
    let n = 0;
    for (const list of this.byName.values()) n += list.length;
    return n;
  }

  /**
   * `name:arch` looks for exactly that architecture. A bare name means what apt means by it: the native
   * architecture or `all` (a foreign-arch-only install does not satisfy `apt-get install name`).
   */
  get(name: string, native: string = nativeArch()): PkgEntry | undefined {
    const colon = name.indexOf(':');
    const base = colon === -1 ? name : name.slice(0, colon);
    const arch = colon === -1 ? undefined : name.slice(colon + 1);
    const list = this.byName.get(base);
    if (list === undefined) return undefined;
    if (arch !== undefined) return list.find((e) => e.arch === arch || (e.arch === 'all' && arch === native));
    return list.find((e) => e.arch === native || e.arch === 'all' || e.arch === '');
  }
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
  const signature = signatureOf(await stat(statusPath));
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
  const fh = await open(join(adminDir, 'status'), 'r');
  let text: string;
  let signature: string;
  try {
    signature = signatureOf(await fh.stat());
    text = await fh.readFile('utf8');
  } finally {
    await fh.close();
  }
  parses++;
  const entries = parseStatus(text);
  if (journal.length === 0) {
    const db = new DpkgDb(entries);
    cache.set(adminDir, { signature, db });
    return db;
  }
  const merged = new Map(entries.map((e) => [`${e.name}:${e.arch}`, e]));
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
    names = await readdir(join(adminDir, 'updates'));
  } catch {
    return [];
  }
  return names.filter((n) => /^\d+$/.test(n)).sort((a, b) => Number(a) - Number(b));
}

const NODE_TO_DEB: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'armhf', ia32: 'i386', ppc64: 'ppc64el', s390x: 's390x', riscv64: 'riscv64' };
let native: string | undefined;

/** dpkg's native architecture (asked once; Node's name for it is the fallback when dpkg cannot be run). */
export function nativeArch(): string {
  if (native === undefined) {
    try {
      native = execFileSync('dpkg', ['--print-architecture'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 }).trim();
    } catch {
      native = '';
    }
    if (native === '') native = NODE_TO_DEB[process.arch] ?? process.arch;
  }
  return native;
}
