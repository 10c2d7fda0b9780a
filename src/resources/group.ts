import { z } from 'zod';
import { BackplaneError } from '../errors.js';
import type { ResourceId } from '../graph/ids.js';
import {
  abortedError,
  accountId,
  accountName,
  listText,
  runTool,
  snapshotFor,
  unique,
  untilAborted,
  watchAccounts,
  type AccountsSnapshot,
  type GroupEntry,
} from './accounts.js';
import { defineKind, type CheckResult, type Resource, type ResourceLog, type ResourceWorld } from './types.js';
import { once } from '../util/once.js';

/** The group kind's parameters, built on first use: a graph without a group does not pay for them at start-up. */
export const groupSchema = once(() =>
  z.strictObject({
    name: accountName().meta({ description: 'the group name; always the resource name' }),
    state: z.enum(['exists', 'absent']).default('exists'),
    gid: accountId().optional().meta({ description: 'group id; without it a new group gets the next free one and an existing one keeps its own' }),
    system: z.boolean().default(false).meta({ description: 'create a system group (gid below 1000); only used when creating' }),
    members: z
      .array(accountName())
      .optional()
      .meta({ description: 'the exact member list (users not listed are removed); not managed when not given' }),
  }),
);

export type GroupSchema = ReturnType<typeof groupSchema>;
export type GroupParams = z.output<GroupSchema>;

/**
 * A local group (Puppet's and Ansible's `group`), managed with groupadd, groupmod, groupdel and gpasswd. Users that
 * name it are ordered after it. `members` sets the member list exactly; members declared as users in the same graph
 * are added once those users exist (a group cannot wait for them: they usually wait for it).
 */
export const groupKind = defineKind<GroupParams>({
  kind: 'group',
  description: 'a local group: gid, system, exact member list; or that it is absent',
  get schema() {
    return groupSchema();
  },
  refreshable: false,
  defaults: (name) => ({ name }),
  // What another host's export may choose here only when the collect rule takes it (see CollectPolicy).
  collect: {
    power: {
      name: 'which group is managed',
      state: 'that the group is removed',
      gid: "the group's gid (gid 0 is root)",
      members: "the group's members",
      system: 'that the group is a system group',
    },
    fromName: ['name'],
  },
  autoEdges: (p) =>
    // Removing a group fails while it is some user's primary group; a user declared absent frees it.
    p.state === 'absent' ? { wants: [`group-unused:${p.name}`] } : { provides: [`group:${p.name}`] },
  manages: (p) => `group ${p.name}`,
  create: (id, params, world) => createGroup(id, params, world),
});

const CONVERGED: CheckResult = { converged: true, changes: [] };

interface Run {
  readonly id: ResourceId;
  readonly p: GroupParams;
  readonly world: ResourceWorld;
  readonly apply: boolean;
  readonly signal: AbortSignal;
  readonly log: ResourceLog;
  readonly s: AccountsSnapshot;
}

function createGroup(id: ResourceId, p: GroupParams, world: ResourceWorld): Resource {
  return {
    async watch({ signal, ready, changed, log }) {
      // passwd matters when members must exist, or when removal waits for the users whose primary group this is.
      const files = p.state === 'exists' && p.members === undefined ? (['group'] as const) : (['group', 'passwd'] as const);
      await watchAccounts(files, (s) => fingerprint(s, p), { signal, changed, log });
      ready();
      await untilAborted(signal);
    },
    async checkApply({ apply, signal, log }) {
      if (signal.aborted) throw abortedError(id);
      const s = await snapshotFor(id);
      const r: Run = { id, p, world, apply, signal, log, s };
      const current = s.groups.get(p.name);
      if (p.state === 'absent') return current === undefined ? CONVERGED : remove(r, current);
      return current === undefined ? create(r) : modify(r, current);
    },
  };
}

function fingerprint(s: AccountsSnapshot, p: GroupParams): string {
  const g = s.groups.get(p.name);
  const parts = [g?.line ?? '-'];
  if (p.state === 'absent') {
    if (g !== undefined) parts.push(...s.usersWithGid(g.gid).map((u) => u.name));
  } else if (p.members !== undefined) {
    for (const m of p.members) parts.push(`${m}:${s.users.has(m) ? 1 : 0}`);
  }
  return parts.join('\n');
}

async function create(r: Run): Promise<CheckResult> {
  const { p } = r;
  const args: string[] = [];
  if (p.system) args.push('-r');
  if (p.gid !== undefined) {
    requireFreeGid(r, p.gid);
    args.push('-g', String(p.gid));
  }
  const members = planMembers(r, []);
  const memberChanges = members === undefined || members.added.length === 0 ? [] : [`added members ${listText(members.added)}`];
  if (!r.apply) return { converged: false, changes: [p.gid === undefined ? 'created' : `created (gid ${p.gid})`, ...memberChanges] };

  await runTool(r.id, ['groupadd', ...args, p.name], {
    signal: r.signal,
    log: r.log,
    hints: (f) =>
      f.code === 4
        ? { hint: 'the gid was taken meanwhile; choose another gid', retryable: false }
        : f.code === 9
          ? { hint: 'the group was created meanwhile by something else; the next check will adjust it', retryable: true }
          : undefined,
  });
  if (members !== undefined && members.target.length > 0) await setMembers(r, members.target);
  const made = (await snapshotFor(r.id)).groups.get(p.name);
  return { converged: false, changes: [made === undefined ? 'created' : `created (gid ${made.gid})`, ...memberChanges] };
}

async function modify(r: Run, cur: GroupEntry): Promise<CheckResult> {
  const { p } = r;
  const changes: string[] = [];
  const gidChange = p.gid !== undefined && p.gid !== cur.gid ? p.gid : undefined;
  if (gidChange !== undefined) {
    requireFreeGid(r, gidChange);
    changes.push(`gid ${cur.gid} -> ${gidChange}`);
  }
  const members = planMembers(r, cur.members);
  const membersChange = members !== undefined && (members.added.length > 0 || members.removed.length > 0);
  if (members !== undefined) {
    if (members.added.length > 0) changes.push(`added members ${listText(members.added)}`);
    if (members.removed.length > 0) changes.push(`removed members ${listText(members.removed)}`);
  }
  if (changes.length === 0) return CONVERGED;
  if (!r.apply) return { converged: false, changes };
  // groupmod -g also moves users whose primary group this is to the new gid; files keep their old group id.
  if (gidChange !== undefined) await runTool(r.id, ['groupmod', '-g', String(gidChange), p.name], { signal: r.signal, log: r.log });
  if (membersChange && members !== undefined) await setMembers(r, members.target);
  return { converged: false, changes };
}

async function remove(r: Run, cur: GroupEntry): Promise<CheckResult> {
  const { p, s } = r;
  const users = s.usersWithGid(cur.gid).map((u) => u.name);
  // In noop mode the users' own removal has not run yet; in a real run it comes first (see autoEdges).
  if (users.length > 0 && !(r.apply === false && r.world.isProvided(`group-unused:${p.name}`)))
    throw new BackplaneError('E_APPLY', `group ${p.name} is the primary group of user${users.length === 1 ? '' : 's'} ${listText(users)}, so it cannot be removed`, {
      resource: r.id,
      hint: 'remove those users first (a user declared absent is ordered before this group), or give them another primary group',
      retryable: true,
    });
  if (r.apply) await runTool(r.id, ['groupdel', p.name], { signal: r.signal, log: r.log });
  return { converged: false, changes: ['removed'] };
}

interface MembersPlan {
  /** The member list to write. */
  readonly target: readonly string[];
  readonly added: readonly string[];
  readonly removed: readonly string[];
}

function planMembers(r: Run, current: readonly string[]): MembersPlan | undefined {
  if (r.p.members === undefined) return undefined;
  const wanted = unique(r.p.members);
  const target: string[] = [];
  const waiting: string[] = [];
  const missing: string[] = [];
  for (const m of wanted) {
    if (r.s.users.has(m)) target.push(m);
    // gpasswd refuses unknown users. A declared one is added when its creation wakes this resource's watch; in
    // noop mode report it as if it existed, which it would by then.
    else if (r.world.isProvided(`user:${m}`)) (r.apply ? waiting : target).push(m);
    else missing.push(m);
  }
  if (missing.length > 0)
    throw new BackplaneError('E_APPLY', `member${missing.length === 1 ? '' : 's'} ${listText(missing)} of group ${r.p.name} do${missing.length === 1 ? 'es' : ''} not exist (looked up in /etc/passwd)`, {
      resource: r.id,
      hint: 'declare them as user resources (a group adds members once they exist) or create them first',
      retryable: true,
    });
  if (waiting.length > 0) r.log.info(`members ${listText(waiting)} will be added once their users exist`);
  return {
    target,
    added: target.filter((m) => !current.includes(m)),
    removed: current.filter((m) => !wanted.includes(m)),
  };
}

async function setMembers(r: Run, members: readonly string[]): Promise<void> {
  await runTool(r.id, ['gpasswd', '-M', members.join(','), r.p.name], { signal: r.signal, log: r.log });
}

function requireFreeGid(r: Run, gid: number): void {
  for (const g of r.s.groups.values()) {
    if (g.gid !== gid || g.name === r.p.name) continue;
    throw new BackplaneError('E_APPLY', `gid ${gid} is already used by group "${g.name}"`, {
      resource: r.id,
      hint: `choose another gid for ${r.p.name}, or renumber or remove ${g.name} first`,
    });
  }
}
