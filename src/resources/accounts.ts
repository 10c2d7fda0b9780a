import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { BackplaneError } from '../errors.js';
import type { ResourceId } from '../graph/ids.js';
import { watchPath } from '../util/dirwatch.js';
import type { ResourceLog } from './types.js';

/**
 * What the `user` and `group` kinds share: the account-name rule, parsing of /etc/passwd and /etc/group into one
 * snapshot, a watch that only reports changes to the entries a resource cares about, and running the shadow tools
 * (useradd, usermod, groupadd, gpasswd, ...). State is always read from the files, never from getpwnam(): that is
 * what the tools edit, and it keeps NSS sources such as LDAP (which the tools cannot change) out of the picture.
 */

// ---- names -------------------------------------------------------------------------------------------------------

/** Debian's NAME_REGEX (the permissive SYS_NAME_REGEX form), which every distribution's tools accept. */
export const ACCOUNT_NAME = /^[a-z_][a-z0-9_-]*[$]?$/;
export const MAX_ACCOUNT_NAME = 32;
/** (uid_t)-1 is "no id" to the kernel and the tools. */
export const MAX_ID = 4294967294;
export const accountId = () => z.number().int().nonnegative().max(MAX_ID);

export const accountName = () =>
  z
    .string()
    .max(MAX_ACCOUNT_NAME, `must be at most ${MAX_ACCOUNT_NAME} characters (the limit of utmp and most tools)`)
    .regex(
      ACCOUNT_NAME,
      'must be an account name: lowercase letters, digits, "_" and "-", starting with a letter or "_" (a trailing "$" is allowed for machine accounts)',
    );

/** A group given by name or by number; a numeric string (`"100"`) means the number. */
export const groupRef = () =>
  z.union([
    z.number().int().nonnegative().max(MAX_ID),
    z
      .string()
      .regex(/^\d+$/)
      .transform((s) => Number(s)),
    accountName(),
  ]);

// ---- parsing -----------------------------------------------------------------------------------------------------

export interface PasswdEntry {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
  readonly gecos: string;
  readonly home: string;
  readonly shell: string;
  /** The line as it is in the file: what watches compare. */
  readonly line: string;
}

export interface GroupEntry {
  readonly name: string;
  readonly gid: number;
  readonly members: readonly string[];
  readonly line: string;
}

const NUMERIC = /^\d+$/;

/** Skips comments, NIS `+`/`-` entries and malformed lines; the first entry of a name wins, as with getpwnam(). */
export function parsePasswd(text: string): Map<string, PasswdEntry> {
  const users = new Map<string, PasswdEntry>();
  for (const line of text.split('\n')) {
    if (skippable(line)) continue;
    const f = line.split(':');
    if (f.length !== 7) continue;
    const [name = '', , uid = '', gid = '', gecos = '', home = '', shell = ''] = f;
    if (!NUMERIC.test(uid) || !NUMERIC.test(gid) || users.has(name)) continue;
    users.set(name, { name, uid: Number(uid), gid: Number(gid), gecos, home, shell, line });
  }
  return users;
}

export function parseGroup(text: string): Map<string, GroupEntry> {
  const groups = new Map<string, GroupEntry>();
  for (const line of text.split('\n')) {
    if (skippable(line)) continue;
    const f = line.split(':');
    if (f.length !== 4) continue;
    const [name = '', , gid = '', members = ''] = f;
    if (!NUMERIC.test(gid) || groups.has(name)) continue;
    groups.set(name, { name, gid: Number(gid), members: members === '' ? [] : members.split(',').filter((m) => m !== ''), line });
  }
  return groups;
}

function skippable(line: string): boolean {
  return line === '' || line.startsWith('#') || line.startsWith('+') || line.startsWith('-');
}

/** /etc/passwd and /etc/group as read at one moment, with the look-ups both kinds need. */
export class AccountsSnapshot {
  readonly users: ReadonlyMap<string, PasswdEntry>;
  readonly groups: ReadonlyMap<string, GroupEntry>;
  private byUid: Map<number, PasswdEntry> | undefined;
  private byGid: Map<number, GroupEntry> | undefined;
  private memberships: Map<string, GroupEntry[]> | undefined;

  constructor(passwd: string, group: string) {
    this.users = parsePasswd(passwd);
    this.groups = parseGroup(group);
  }

  userByUid(uid: number): PasswdEntry | undefined {
    this.byUid ??= firstBy(this.users.values(), (u) => u.uid);
    return this.byUid.get(uid);
  }

  groupByGid(gid: number): GroupEntry | undefined {
    this.byGid ??= firstBy(this.groups.values(), (g) => g.gid);
    return this.byGid.get(gid);
  }

  /** Groups listing `user` as a member (supplementary groups), in file order. */
  groupsOf(user: string): readonly GroupEntry[] {
    if (this.memberships === undefined) {
      const m = new Map<string, GroupEntry[]>();
      for (const g of this.groups.values())
        for (const u of g.members) {
          const list = m.get(u);
          if (list === undefined) m.set(u, [g]);
          else if (list.at(-1) !== g) list.push(g);
        }
      this.memberships = m;
    }
    return this.memberships.get(user) ?? [];
  }

  /** Users whose primary group is `gid`; a scan, since only removing a group needs it. */
  usersWithGid(gid: number): PasswdEntry[] {
    return [...this.users.values()].filter((u) => u.gid === gid);
  }

  /** The group's name when the gid has one, else the bare number. */
  describeGid(gid: number): string {
    const g = this.groupByGid(gid);
    return g === undefined ? String(gid) : g.name;
  }
}

function firstBy<T>(items: Iterable<T>, key: (t: T) => number): Map<number, T> {
  const m = new Map<number, T>();
  for (const item of items) {
    const k = key(item);
    if (!m.has(k)) m.set(k, item);
  }
  return m;
}

// ---- reading -----------------------------------------------------------------------------------------------------

/**
 * Concurrent reads share one: a hand edit wakes every user and group resource at once, and 1,000 of them must cost
 * one read, not 1,000. A caller never gets a read that started before it asked, though — one already running may
 * predate the change that woke the caller — so late callers share the next read instead.
 */
class FreshReader<T> {
  private running: Promise<T> | undefined;
  private waiting: Promise<T> | undefined;

  constructor(private readonly read: () => Promise<T>) {}

  get(): Promise<T> {
    if (this.running === undefined) return this.start();
    this.waiting ??= this.running
      .then(
        () => undefined,
        () => undefined,
      )
      .then(() => {
        this.waiting = undefined;
        return this.start();
      });
    return this.waiting;
  }

  private start(): Promise<T> {
    const p = this.read();
    this.running = p;
    const clear = (): void => {
      if (this.running === p) this.running = undefined;
    };
    p.then(clear, clear);
    return p;
  }
}

const readers = new Map<string, FreshReader<AccountsSnapshot>>();

/**
 * Reads `<root>/etc/passwd` and `<root>/etc/group` (a missing file counts as empty). `root` exists for tests; the
 * kinds always use `/`, which is also what the shadow tools edit.
 */
export function readAccounts(root = '/'): Promise<AccountsSnapshot> {
  let reader = readers.get(root);
  if (reader === undefined) {
    reader = new FreshReader(async () => {
      const [passwd, group] = await Promise.all([readOrEmpty(join(root, 'etc/passwd')), readOrEmpty(join(root, 'etc/group'))]);
      return new AccountsSnapshot(passwd, group);
    });
    readers.set(root, reader);
  }
  return reader.get();
}

async function readOrEmpty(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  }
}

/** readAccounts for a resource: failures become its E_APPLY. */
export async function snapshotFor(id: ResourceId, root = '/'): Promise<AccountsSnapshot> {
  try {
    return await readAccounts(root);
  } catch (err) {
    throw new BackplaneError('E_APPLY', `cannot read the account files in ${join(root, 'etc')}: ${(err as Error).message}`, {
      resource: id,
      hint: 'Backplane must be able to read /etc/passwd and /etc/group',
      retryable: true,
      cause: err,
    });
  }
}

// ---- watching ----------------------------------------------------------------------------------------------------

export interface AccountWatch {
  readonly signal: AbortSignal;
  readonly changed: (reason: string) => void;
  readonly log: ResourceLog;
}

/**
 * Watches the account files (by their directory: the shadow tools replace them by rename) and calls `changed` only
 * when `fingerprint` of a fresh snapshot differs from the last one seen, so an edit to one user does not make every
 * user and group resource re-check. Resolves once the watch is established and the baseline is taken.
 */
export async function watchAccounts(
  files: readonly ('passwd' | 'group')[],
  fingerprint: (s: AccountsSnapshot) => string,
  ctx: AccountWatch,
  root = '/',
): Promise<void> {
  const { signal, changed, log } = ctx;
  let last: string | undefined;
  const compare = async (reason: string): Promise<void> => {
    let fp: string;
    try {
      fp = fingerprint(await readAccounts(root));
    } catch (err) {
      // Unreadable now (replaced mid-read, permissions): let a check find out rather than miss a change.
      changed(`${reason} (could not compare: ${(err as Error).message})`);
      return;
    }
    if (signal.aborted || fp === last) return;
    last = fp;
    changed(reason);
  };
  const onEvent = (reason: string): void => {
    compare(reason).catch((err: unknown) => log.warn(`account watch: ${(err as Error).message}`));
  };
  await Promise.all(files.map((f) => watchPath(join(root, 'etc', f), onEvent, signal)));
  try {
    const base = fingerprint(await readAccounts(root));
    // An event may have been compared already; its snapshot is at least as new as this one.
    last ??= base;
  } catch {
    // No baseline: the first event will report a change, which is merely spurious.
  }
}

// ---- tools -------------------------------------------------------------------------------------------------------

/** Where the shadow tools live on Debian; PATH of an agent started by hand may lack the sbin directories. */
const TOOL_PATH = '/usr/sbin:/usr/bin:/sbin:/bin';
/**
 * An abort lets a running tool finish this long before SIGTERM: the tools rewrite passwd, shadow, group and gshadow
 * one after the other, so killing one midway can leave a user in passwd but not in shadow. They normally take
 * milliseconds; only waiting for another process's lock (up to 15 s) takes longer.
 */
const ABORT_GRACE_MS = 2000;
const KILL_AFTER_MS = 1000;
const MAX_OUTPUT = 4096;

export interface ToolFailure {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stderr: string;
}

/** Hints for a tool's documented exit codes (shadow's man pages), by tool name. */
export type ToolHints = (f: ToolFailure) => { hint?: string; retryable?: boolean } | undefined;

/**
 * Runs one shadow tool as a direct child, in the C locale so its messages are the documented ones. Resolves on exit
 * 0; otherwise throws E_APPLY quoting the command and its stderr.
 */
export async function runTool(
  id: ResourceId,
  argv: readonly [string, ...string[]],
  opts: { readonly signal: AbortSignal; readonly log: ResourceLog; readonly hints?: ToolHints },
): Promise<void> {
  const [file, ...args] = argv;
  const what = argv.map(quoteArg).join(' ');
  if (opts.signal.aborted) throw new BackplaneError('E_ABORTED', `stopped before running \`${what}\``, { resource: id });
  opts.log.debug(`running ${what}`);
  const env = { ...process.env, LC_ALL: 'C', PATH: `${TOOL_PATH}:${process.env['PATH'] ?? ''}` };
  const result = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string } | { error: NodeJS.ErrnoException }>(
    (resolve) => {
      const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
      let stderr = '';
      let stdout = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout = (stdout + d).slice(-MAX_OUTPUT)));
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-MAX_OUTPUT)));
      let timers: NodeJS.Timeout[] = [];
      const onAbort = (): void => {
        timers.push(
          setTimeout(() => {
            child.kill('SIGTERM');
            timers.push(setTimeout(() => child.kill('SIGKILL'), KILL_AFTER_MS));
          }, ABORT_GRACE_MS),
        );
      };
      opts.signal.addEventListener('abort', onAbort, { once: true });
      const done = (): void => {
        opts.signal.removeEventListener('abort', onAbort);
        for (const t of timers) clearTimeout(t);
        timers = [];
      };
      child.on('error', (error: NodeJS.ErrnoException) => {
        done();
        resolve({ error });
      });
      child.on('close', (code, sig) => {
        done();
        // Some tools report on stdout; better than an empty message.
        resolve({ code, signal: sig, stderr: stderr.trim() === '' ? stdout : stderr });
      });
    },
  );
  if ('error' in result) {
    const e = result.error;
    throw new BackplaneError('E_APPLY', `could not run ${file}: ${e.message}`, {
      resource: id,
      hint: e.code === 'ENOENT' ? `${file} is part of Debian's passwd package: apt-get install passwd` : undefined,
      cause: e,
    });
  }
  const stderr = result.stderr.trim();
  for (const line of stderr.split('\n')) if (line !== '') opts.log.debug(`${file}: ${line}`);
  if (result.code === 0) return;
  if (opts.signal.aborted)
    throw new BackplaneError('E_ABORTED', `\`${what}\` was stopped: the agent is shutting down or the graph was replaced`, { resource: id });
  const how = result.code !== null ? `exit ${result.code}` : `killed by ${result.signal ?? 'a signal'}`;
  const known = opts.hints?.(result) ?? {};
  const locked = /cannot lock|try again later/i.test(stderr);
  throw new BackplaneError('E_APPLY', `\`${what}\` failed (${how})${stderr === '' ? '' : `: ${stderr.replace(/\n/g, '; ')}`}`, {
    resource: id,
    hint: known.hint ?? (locked ? 'another program is editing the account files; this is retried' : `run \`${what}\` by hand to see why`),
    retryable: known.retryable ?? locked,
  });
}

const SAFE_ARG = /^[\w@%+=:,./-]+$/;

function quoteArg(a: string): string {
  return SAFE_ARG.test(a) ? a : `'${a.replaceAll("'", `'\\''`)}'`;
}

/** Exit 8 of usermod/userdel: the account is in use by a running process. */
export function inUseHint(f: ToolFailure, action: string): { hint: string; retryable: boolean } | undefined {
  if (f.code !== 8) return undefined;
  return {
    hint: `processes are running as this user; stop them (or order the service that runs them before this resource) to ${action}`,
    retryable: true,
  };
}

export function listText(names: readonly string[]): string {
  return names.join(', ');
}

export function unique(names: readonly string[]): string[] {
  return [...new Set(names)];
}

/** Resolves when `signal` aborts: what a watch does once it is established. */
export function untilAborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener('abort', () => resolve(), { once: true });
  });
}

export function abortedError(id: ResourceId): BackplaneError {
  return new BackplaneError('E_ABORTED', 'stopped before finishing: the agent is shutting down or the graph was replaced', { resource: id });
}
