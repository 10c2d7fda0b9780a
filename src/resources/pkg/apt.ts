import { spawn } from 'node:child_process';
import { StringDecoder } from 'node:string_decoder';

/**
 * Running apt-get and reading what it says. apt-get is run in its own process group so that an abort can stop
 * dpkg and its maintainer scripts too, and it always stays a direct child (nothing is left for PID 1 to reap).
 */

export const APT_GET = 'apt-get';

/**
 * Options every call carries. Non-interactive in every way a prompt can appear: debconf (environment), apt's own
 * questions (-y), and dpkg's conffile question (keep the admin's file, take the default where there is one).
 * The lock timeout makes a concurrent apt (unattended-upgrades, a person) a wait rather than an instant failure.
 */
export const BASE_ARGS: readonly string[] = [
  '-y',
  '-q',
  '--no-install-recommends',
  '--allow-downgrades',
  '-o',
  'DPkg::Lock::Timeout=60',
  '-o',
  'Dpkg::Options::=--force-confdef',
  '-o',
  'Dpkg::Options::=--force-confold',
];

export const APT_ENV: Readonly<Record<string, string>> = {
  DEBIAN_FRONTEND: 'noninteractive',
  APT_LISTCHANGES_FRONTEND: 'none',
  NEEDRESTART_MODE: 'l',
  // apt's messages are matched below; they must not be translated.
  LC_ALL: 'C',
};

const MAX_LINES = 400;
const MAX_LINE = 4096;
const TERM_GRACE_MS = 5000;
const KILL_WAIT_MS = 1000;

export type AptOutcome =
  | { readonly kind: 'exited'; readonly code: number | null; readonly signal: NodeJS.Signals | null; readonly lines: readonly string[]; readonly durationMs: number }
  | { readonly kind: 'aborted'; readonly lines: readonly string[] }
  | { readonly kind: 'spawn-error'; readonly error: NodeJS.ErrnoException };

export interface AptRun {
  readonly args: readonly string[];
  readonly signal: AbortSignal;
  onLine?(line: string): void;
}

/** Runs apt-get to completion. Never rejects. stdout and stderr are merged (apt splits one story across both). */
export function runAptGet(run: AptRun, file: string = APT_GET): Promise<AptOutcome> {
  if (run.signal.aborted) return Promise.resolve({ kind: 'aborted', lines: [] });
  return new Promise<AptOutcome>((resolve) => {
    const started = performance.now();
    const child = spawn(file, [...run.args], {
      env: { ...process.env, ...APT_ENV },
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const pid = child.pid;
    const lines: string[] = [];
    const push = (line: string): void => {
      // dpkg's "(Reading database ... 5%" progress arrives as one endless line of carriage returns.
      const last = line.lastIndexOf('\r');
      const clean = last === -1 ? line : line.slice(last + 1);
      if (clean === '' && line !== '') return;
      const l = clean.length > MAX_LINE ? `${clean.slice(0, MAX_LINE)} […]` : clean;
      lines.push(l);
      if (lines.length > MAX_LINES) lines.splice(0, lines.length - MAX_LINES);
      run.onLine?.(l);
    };
    const out = new Lines(push);
    const err = new Lines(push);
    child.stdout.on('data', (c: Buffer) => out.write(c));
    child.stderr.on('data', (c: Buffer) => err.write(c));
    child.stdout.on('error', () => undefined);
    child.stderr.on('error', () => undefined);

    let settled = false;
    let aborted = false;
    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    let killTimer: NodeJS.Timeout | undefined;
    let giveUp: NodeJS.Timeout | undefined;
    const killGroup = (sig: NodeJS.Signals): void => {
      if (pid === undefined) return;
      try {
        process.kill(-pid, sig);
      } catch {
        // the group is gone already
      }
    };
    const finish = (): void => {
      if (settled) return;
      settled = true;
      run.signal.removeEventListener('abort', onAbort);
      clearTimeout(killTimer);
      clearTimeout(giveUp);
      if (pid !== undefined) live.delete(pid);
      out.end();
      err.end();
      if (aborted) resolve({ kind: 'aborted', lines });
      else resolve({ kind: 'exited', code: exit?.code ?? null, signal: exit?.signal ?? null, lines, durationMs: performance.now() - started });
    };
    // dpkg gets time to finish the package it is on: a SIGKILL mid-unpack leaves a half-installed package behind.
    const onAbort = (): void => {
      if (aborted || exit !== undefined) return;
      aborted = true;
      killGroup('SIGTERM');
      killTimer = setTimeout(() => {
        killGroup('SIGKILL');
        giveUp = setTimeout(finish, KILL_WAIT_MS);
      }, TERM_GRACE_MS);
    };
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (settled || exit !== undefined) return;
      settled = true;
      run.signal.removeEventListener('abort', onAbort);
      resolve({ kind: 'spawn-error', error: e });
    });
    child.on('exit', (code, sig) => {
      exit = { code, signal: sig };
    });
    child.on('close', finish);
    if (pid === undefined) return;
    trackGroup(pid);
    run.signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Process groups still running, killed if this process exits without aborting them (a crash, process.exit). */
const live = new Set<number>();
let hooked = false;
function trackGroup(pid: number): void {
  if (!hooked) {
    hooked = true;
    process.on('exit', () => {
      for (const g of live) {
        try {
          process.kill(-g, 'SIGTERM');
        } catch {
          // gone
        }
      }
    });
  }
  live.add(pid);
}

class Lines {
  private readonly decoder = new StringDecoder('utf8');
  private pending = '';
  constructor(private readonly emit: (line: string) => void) {}
  write(chunk: Buffer): void {
    const text = this.pending + this.decoder.write(chunk);
    const parts = text.split('\n');
    this.pending = parts.pop() ?? '';
    // An endless line must not grow without bound.
    if (this.pending.length > 4 * MAX_LINE) this.pending = this.pending.slice(-MAX_LINE);
    for (const p of parts) this.emit(p);
  }
  end(): void {
    const rest = this.pending + this.decoder.end();
    this.pending = '';
    if (rest !== '') this.emit(rest);
  }
}

// ---- reading apt's output ---------------------------------------------------------------------------------------

/**
 * The lines of apt/dpkg output that explain a failure: `E:` lines, the unmet-dependency report, dpkg's errors and
 * its closing "Errors were encountered" list. Progress lines (which mention every package) are left out, so a
 * package named here really is involved in the failure.
 */
export function errorLines(lines: readonly string[]): string[] {
  const out: string[] = [];
  let block: 'deps' | 'errors' | undefined;
  for (const line of lines) {
    if (block !== undefined) {
      if (line.startsWith(' ')) {
        out.push(line);
        continue;
      }
      block = undefined;
    }
    if (/^The following packages have unmet dependencies:/.test(line)) {
      out.push(line);
      block = 'deps';
    } else if (/^Errors were encountered while processing:/.test(line)) {
      out.push(line);
      block = 'errors';
    } else if (/^(E: |dpkg: error|dpkg: dependency problems|dpkg-deb: error|Sub-process .* returned an error)/.test(line)) {
      out.push(line);
    } else if (/^\s*\S+ : (Depends|Conflicts|Breaks|PreDepends|Pre-Depends):/.test(line)) {
      out.push(line);
    }
  }
  return out;
}

/** Whether `line` names package `name` as a whole word (bp-a does not match bp-ab; bp-a:amd64 matches bp-a). */
export function mentions(line: string, name: string): boolean {
  const base = name.includes(':') ? name.slice(0, name.indexOf(':')) : name;
  const re = new RegExp(`(^|[^a-z0-9+.-])${escapeRe(base)}(?=$|[^a-z0-9+.-]|[:.](?![a-z0-9]))`);
  return re.test(line);
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Packages listed under "The following packages will be REMOVED:" (apt marks purges with a trailing `*`). */
export function removedPackages(lines: readonly string[]): string[] {
  const out: string[] = [];
  let inBlock = false;
  for (const line of lines) {
    if (/^The following packages will be REMOVED:/.test(line)) {
      inBlock = true;
      continue;
    }
    if (!inBlock) continue;
    if (!line.startsWith(' ')) {
      inBlock = false;
      continue;
    }
    for (const w of line.trim().split(/\s+/)) if (w !== '') out.push(w.replace(/\*$/, ''));
  }
  return out;
}

export type FailureClass = 'lock' | 'not-found' | 'version-not-found' | 'unmet' | 'interrupted' | 'fetch' | 'other';

/** What kind of failure this was: it decides the hint and whether a retry can help. */
export function classify(lines: readonly string[]): FailureClass {
  const text = lines.join('\n');
  if (/Could not get lock|Unable to acquire the dpkg frontend lock|Unable to lock the administration directory/.test(text)) return 'lock';
  if (/dpkg was interrupted/.test(text)) return 'interrupted';
  if (/Version '[^']*' for '[^']*' was not found/.test(text)) return 'version-not-found';
  if (/Unable to locate package|has no installation candidate|Couldn't find any package/.test(text)) return 'not-found';
  if (/unmet dependencies|Unable to correct problems/.test(text)) return 'unmet';
  if (/Failed to fetch|Temporary failure resolving|Could not connect|Connection timed out|Hash Sum mismatch/.test(text)) return 'fetch';
  return 'other';
}
