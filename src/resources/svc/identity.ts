import { execFile } from 'node:child_process';

/**
 * Who a service runs as. Names are looked up with getent, so users from NSS (LDAP, sssd) work like local ones; the
 * lookup happens at each start, because a user resource earlier in the graph may have just created the user.
 */

function getent(db: 'passwd' | 'group', key: string): Promise<string[] | undefined> {
  return new Promise((resolve, reject) => {
    execFile('getent', [db, key], { timeout: 10_000 }, (err, stdout) => {
      if (err === null) {
        resolve(stdout.trim().split('\n')[0]?.split(':'));
        return;
      }
      // getent exits 2 for "no such key".
      if ((err as { code?: unknown }).code === 2) resolve(undefined);
      else reject(new Error(`getent ${db} ${key}: ${err.message}`));
    });
  });
}

/** A numeric id without an entry is taken as given; an unknown name is a problem to report. */
export async function resolveIdentity(
  user: string | number | undefined,
  group: string | number | undefined,
): Promise<{ uid?: number; gid?: number; name?: string; home?: string } | { problem: string }> {
  const out: { uid?: number; gid?: number; name?: string; home?: string } = {};
  if (user !== undefined) {
    const pw = await getent('passwd', String(user));
    if (pw === undefined) {
      if (typeof user !== 'number') return { problem: `there is no user ${user}` };
      // Without a passwd entry there is no primary group, and keeping the agent's (root) would be a quiet hole.
      if (group === undefined) return { problem: `uid ${user} has no passwd entry, so it has no primary group; give group` };
      out.uid = user;
    } else {
      out.uid = Number(pw[2]);
      out.gid = Number(pw[3]);
      out.name = pw[0] ?? String(user);
      out.home = pw[5] ?? '/';
    }
  }
  if (group !== undefined) {
    const gr = await getent('group', String(group));
    if (gr === undefined) {
      if (typeof group !== 'number') return { problem: `there is no group ${group}` };
      out.gid = group;
    } else {
      out.gid = Number(gr[2]);
    }
  }
  return out;
}
