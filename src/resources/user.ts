import { z } from 'zod';
import { BackplaneError } from '../errors.js';
import type { ResourceId } from '../graph/ids.js';
import { absolutePath } from '../graph/schema-util.js';
import {
  abortedError,
  accountId,
  accountName,
  groupRef,
  inUseHint,
  listText,
  runTool,
  snapshotFor,
  unique,
  untilAborted,
  watchAccounts,
  type AccountsSnapshot,
  type PasswdEntry,
  type ToolHints,
} from './accounts.js';
import { defineKind, type CheckResult, type Resource, type ResourceLog, type ResourceWorld } from './types.js';
import { once } from '../util/once.js';

/** The user kind's parameters, built on first use: a graph without a user does not pay for them at start-up. */
export const userSchema = once(() =>
  z
    .strictObject({
      name: accountName().meta({ description: 'the login name; always the resource name' }),
      state: z.enum(['exists', 'absent']).default('exists'),
      uid: accountId().optional().meta({ description: 'user id; without it a new user gets the next free one and an existing one keeps its own' }),
      gid: accountId().optional().meta({ description: 'primary group by number (the same as group: <number>)' }),
      group: groupRef()
        .optional()
        .meta({ description: 'primary group, by name or number; without it a new user gets a group of its own name (adopted if it exists)' }),
      groups: z.array(accountName()).optional().meta({ description: 'supplementary groups; not managed when not given' }),
      groupsMode: z
        .enum(['minimum', 'exact'])
        .default('minimum')
        .meta({ description: 'minimum: only add the user to missing groups; exact: also remove it from groups not listed' }),
      shell: absolutePath().optional().meta({ description: 'login shell, e.g. /bin/bash' }),
      home: absolutePath().optional().meta({ description: 'home directory; without it a new user gets /home/<name>' }),
      createHome: z.boolean().optional().meta({ description: 'create the home directory (from /etc/skel) when creating the user; default true, false for system users' }),
      moveHome: z.boolean().default(false).meta({ description: 'when home changes, move the old directory\'s contents there (usermod -m)' }),
      comment: z
        .string()
        .refine((c) => !/[:\n]/.test(c), { message: 'must not contain ":" or a newline (it is a field of /etc/passwd)' })
        .optional()
        .meta({ description: 'the GECOS field, usually the full name' }),
      system: z.boolean().default(false).meta({ description: 'create a system account (uid below 1000, no aging); only used when creating' }),
      removeHome: z.boolean().default(false).meta({ description: 'state: absent only: also delete the home directory and mail spool' }),
    })
    .superRefine((p, ctx) => {
      if (p.gid !== undefined && p.group !== undefined)
        ctx.addIssue({ code: 'custom', path: ['gid'], message: 'give the primary group as either gid or group, not both' });
      if (p.removeHome && p.state !== 'absent')
        ctx.addIssue({ code: 'custom', path: ['removeHome'], message: 'removeHome is only for state: absent' });
      if (p.moveHome && p.home === undefined)
        ctx.addIssue({ code: 'custom', path: ['moveHome'], message: 'moveHome needs home (where to move it)' });
      if (p.groupsMode === 'exact' && p.groups === undefined)
        ctx.addIssue({
          code: 'custom',
          path: ['groupsMode'],
          message: 'groupsMode: exact needs groups (write groups: [] to take the user out of every supplementary group)',
        });
    }),
);

export type UserSchema = ReturnType<typeof userSchema>;
export type UserParams = z.output<UserSchema>;

/**
 * A local user account (Puppet's and Ansible's `user`): created, changed and removed with useradd, usermod and
 * userdel, which keep passwd, shadow, group and gshadow consistent and take their locks. State is read from
 * /etc/passwd and /etc/group. A user is ordered after the groups it names, so groups declared in the same graph
 * exist before it is created.
 */
export const userKind = defineKind<UserParams>({
  kind: 'user',
  description: 'a local user account: uid, primary and supplementary groups, shell, home, comment; or that it is absent',
  get schema() {
    return userSchema();
  },
  refreshable: false,
  defaults: (name) => ({ name }),
  // What another host's export may choose here only when the collect rule takes it (see CollectPolicy).
  collect: {
    power: {
      name: 'which account is managed',
      state: 'that the account is removed',
      uid: "the account's uid (uid 0 is root)",
      gid: "the account's primary group",
      group: "the account's primary group",
      groups: "the account's supplementary groups (sudo, docker)",
      groupsMode: 'that the account leaves groups',
      shell: "the account's login shell",
      home: "the account's home directory",
      moveHome: 'that a home directory is moved',
      removeHome: 'that a home directory is deleted',
      system: 'that the account is a system account',
    },
    fromName: ['name'],
  },
  autoEdges: (p) => {
    const primary = primaryRef(p);
    if (p.state === 'absent') {
      // A group can only be deleted once no user has it as primary group: removing the user frees it.
      const freed = new Set([`group-unused:${p.name}`]);
      if (typeof primary === 'string') freed.add(`group-unused:${primary}`);
      return { provides: [...freed] };
    }
    const wants = new Set<string>();
    // Without a primary group, a group of the user's own name is adopted if it exists: declared, it must come first.
    if (primary === undefined) wants.add(`group:${p.name}`);
    else if (typeof primary === 'string') wants.add(`group:${primary}`);
    for (const g of p.groups ?? []) wants.add(`group:${g}`);
    return { provides: [`user:${p.name}`], wants: [...wants] };
  },
  manages: (p) => `user ${p.name}`,
  create: (id, params, world) => createUser(id, params, world),
});

const CONVERGED: CheckResult = { converged: true, changes: [] };

function primaryRef(p: UserParams): string | number | undefined {
  return p.group ?? p.gid;
}

interface Run {
  readonly id: ResourceId;
  readonly p: UserParams;
  readonly world: ResourceWorld;
  readonly apply: boolean;
  readonly signal: AbortSignal;
  readonly log: ResourceLog;
  readonly s: AccountsSnapshot;
}

function createUser(id: ResourceId, p: UserParams, world: ResourceWorld): Resource {
  return {
    async watch({ signal, ready, changed, log }) {
      // Everything managed here lives in passwd and group; shadow only changes together with them.
      const files = p.state === 'absent' ? (['passwd'] as const) : (['passwd', 'group'] as const);
      await watchAccounts(files, (s) => fingerprint(s, p), { signal, changed, log });
      ready();
      await untilAborted(signal);
    },
    async checkApply({ apply, signal, log }) {
      if (signal.aborted) throw abortedError(id);
      const s = await snapshotFor(id);
      const r: Run = { id, p, world, apply, signal, log, s };
      const current = s.users.get(p.name);
      if (p.state === 'absent') return current === undefined ? CONVERGED : remove(r, current);
      return current === undefined ? create(r) : modify(r, current);
    },
  };
}

/**
 * This user's line, the names of the groups it is in, and the ids of the groups it names. Not those groups' whole
 * lines: a shared group's line changes whenever anyone joins it, and 200 users of one group would then re-check
 * 200 times each while they are created.
 */
function fingerprint(s: AccountsSnapshot, p: UserParams): string {
  const line = s.users.get(p.name)?.line ?? '-';
  if (p.state === 'absent') return line;
  const parts = [line, s.groupsOf(p.name).map((g) => g.name).join(',')];
  const primary = primaryRef(p) ?? p.name;
  const named = [typeof primary === 'number' ? s.groupByGid(primary) : s.groups.get(primary), ...(p.groups ?? []).map((g) => s.groups.get(g))];
  for (const g of named) parts.push(g === undefined ? '-' : `${g.name}:${g.gid}`);
  return parts.join('\n');
}

// ---- create ------------------------------------------------------------------------------------------------------

async function create(r: Run): Promise<CheckResult> {
  const { p, s } = r;
  const args: string[] = [];
  if (p.system) args.push('-r');
  if (p.uid !== undefined) {
    requireFreeUid(r, p.uid);
    args.push('-u', String(p.uid));
  }
  const primary = primaryRef(p);
  if (primary !== undefined) args.push('-g', groupArg(resolveGroup(r, primary, 'primary group')));
  // useradd -U would fail on an existing group of the same name; that group is the one meant.
  else if (s.groups.has(p.name)) args.push('-g', p.name);
  else args.push('-U');
  if (p.groups !== undefined && p.groups.length > 0) {
    const groups = unique(p.groups);
    for (const g of groups) resolveGroup(r, g, 'supplementary group');
    args.push('-G', groups.join(','));
  }
  if (p.shell !== undefined) args.push('-s', p.shell);
  if (p.home !== undefined) args.push('-d', p.home);
  // Explicit either way, so login.defs' CREATE_HOME cannot change what a graph means.
  args.push((p.createHome ?? !p.system) ? '-m' : '-M');
  if (p.comment !== undefined) args.push('-c', p.comment);
  if (!r.apply) return { converged: false, changes: [p.uid === undefined ? 'created' : `created (uid ${p.uid})`] };

  await runTool(r.id, ['useradd', ...args, p.name], { signal: r.signal, log: r.log, hints: useraddHints(p) });
  const made = (await snapshotFor(r.id)).users.get(p.name);
  return { converged: false, changes: [made === undefined ? 'created' : `created (uid ${made.uid})`] };
}

function useraddHints(p: UserParams): ToolHints {
  return (f) => {
    switch (f.code) {
      case 4:
        return { hint: 'the uid was taken meanwhile; choose another uid', retryable: false };
      case 6:
        return { hint: 'a group it names was removed meanwhile; declare the group as a resource', retryable: true };
      case 9:
        return { hint: 'the user was created meanwhile by something else; the next check will adjust it', retryable: true };
      case 12:
        return { hint: `check that the parent directory of ${p.home ?? `/home/${p.name}`} exists, or set createHome: false` };
      default:
        return undefined;
    }
  };
}

// ---- modify ------------------------------------------------------------------------------------------------------

async function modify(r: Run, cur: PasswdEntry): Promise<CheckResult> {
  const { p, s } = r;
  const args: string[] = [];
  const changes: string[] = [];
  if (p.uid !== undefined && cur.uid !== p.uid) {
    requireFreeUid(r, p.uid);
    changes.push(`uid ${cur.uid} -> ${p.uid}`);
    args.push('-u', String(p.uid));
  }
  const primary = primaryRef(p);
  if (primary !== undefined) {
    const g = resolveGroup(r, primary, 'primary group');
    if (g.gid !== cur.gid) {
      changes.push(`group ${s.describeGid(cur.gid)} -> ${g.name}`);
      args.push('-g', groupArg(g));
    }
  }
  if (p.shell !== undefined && cur.shell !== p.shell) {
    changes.push(`shell ${cur.shell === '' ? '(none)' : cur.shell} -> ${p.shell}`);
    args.push('-s', p.shell);
  }
  if (p.home !== undefined && cur.home !== p.home) {
    changes.push(`home ${cur.home} -> ${p.home}${p.moveHome ? ' (moved)' : ''}`);
    args.push('-d', p.home);
    if (p.moveHome) args.push('-m');
  }
  if (p.comment !== undefined && cur.gecos !== p.comment) {
    changes.push(`comment ${JSON.stringify(cur.gecos)} -> ${JSON.stringify(p.comment)}`);
    args.push('-c', p.comment);
  }
  if (p.groups !== undefined) {
    const wanted = unique(p.groups);
    for (const g of wanted) resolveGroup(r, g, 'supplementary group');
    const current = s.groupsOf(p.name).map((g) => g.name);
    const add = wanted.filter((g) => !current.includes(g));
    const drop = p.groupsMode === 'exact' ? current.filter((g) => !wanted.includes(g)) : [];
    if (add.length > 0) changes.push(`added to groups ${listText(add)}`);
    if (drop.length > 0) changes.push(`removed from groups ${listText(drop)}`);
    if (drop.length > 0) args.push('-G', wanted.join(','));
    else if (add.length > 0) args.push('-a', '-G', add.join(','));
  }
  if (changes.length === 0) return CONVERGED;
  if (r.apply) await runTool(r.id, ['usermod', ...args, p.name], { signal: r.signal, log: r.log, hints: usermodHints(p) });
  return { converged: false, changes };
}

function usermodHints(p: UserParams): ToolHints {
  return (f) => {
    const inUse = inUseHint(f, 'change its uid or move its home');
    if (inUse !== undefined) return inUse;
    switch (f.code) {
      case 4:
        return { hint: 'the uid was taken meanwhile; choose another uid', retryable: false };
      case 6:
        return { hint: 'a group it names was removed meanwhile; declare the group as a resource', retryable: true };
      case 12:
        return { hint: `could not move the home directory; check that the parent of ${p.home ?? 'the new home'} exists and nothing is in the way` };
      default:
        return undefined;
    }
  };
}

// ---- remove ------------------------------------------------------------------------------------------------------

async function remove(r: Run, cur: PasswdEntry): Promise<CheckResult> {
  const { p } = r;
  const change = p.removeHome ? `removed (with home ${cur.home})` : 'removed';
  if (r.apply) {
    await runTool(r.id, ['userdel', ...(p.removeHome ? ['-r'] : []), p.name], {
      signal: r.signal,
      log: r.log,
      hints: (f) =>
        inUseHint(f, 'remove it') ??
        (f.code === 12 ? { hint: `the account is gone but its home ${cur.home} could not be removed (is it owned by another user?); remove it by hand` } : undefined),
    });
  }
  return { converged: false, changes: [change] };
}

// ---- helpers -----------------------------------------------------------------------------------------------------

interface ResolvedGroup {
  readonly name: string;
  /** undefined: declared in the graph but not created yet, which only noop mode tolerates. */
  readonly gid: number | undefined;
}

function resolveGroup(r: Run, ref: string | number, role: string): ResolvedGroup {
  const g = typeof ref === 'number' ? r.s.groupByGid(ref) : r.s.groups.get(ref);
  if (g !== undefined) return { name: g.name, gid: g.gid };
  const declared = typeof ref === 'string' && r.world.isProvided(`group:${ref}`);
  // In noop mode the group's own resource has not run either; in a real run it would have created it first.
  if (declared && !r.apply) return { name: ref, gid: undefined };
  const what = typeof ref === 'number' ? `no group has gid ${ref}` : `group "${ref}" does not exist`;
  throw new BackplaneError('E_APPLY', `${what} (the ${role} of user ${r.p.name}; looked up in /etc/group)`, {
    resource: r.id,
    hint: declared
      ? `group[${String(ref)}] is declared in the graph but has not created it; see that resource's error`
      : typeof ref === 'number'
        ? 'create the group first, or name it with a group resource (users are ordered after the groups they name)'
        : `declare it as a group resource (users are ordered after the groups they name), or create it with groupadd ${ref}`,
    retryable: true,
  });
}

function groupArg(g: ResolvedGroup): string {
  return g.gid === undefined ? g.name : String(g.gid);
}

function requireFreeUid(r: Run, uid: number): void {
  for (const u of r.s.users.values()) {
    if (u.uid !== uid || u.name === r.p.name) continue;
    throw new BackplaneError('E_APPLY', `uid ${uid} is already used by user "${u.name}"`, {
      resource: r.id,
      hint: `choose another uid for ${r.p.name}, or renumber or remove ${u.name} first`,
    });
  }
}
