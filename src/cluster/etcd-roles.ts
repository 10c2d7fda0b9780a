import { clusterRoot, keys, segment } from './keys.js';

/**
 * etcd roles that confine each host to its own keys (docs/etcd-security.md). A host reads the whole cluster prefix
 * (it collects what others export and sees who is alive) and writes only:
 *   nodes/<host>           its membership key (exact key: nodes/<host> must not cover nodes/<host>x)
 *   exported/<host>/       what it exports (prefix, ending in "/", with the host segment percent-encoded as keys.ts does)
 *   kv/<host>/             the values its `kv` resources publish (prefix)
 *   joins/<host>           its join request (exact key)
 *   election/              elections (prefix): every candidate writes its own key there
 * `trust/` (the CA's public key and the signed list of approved hosts) and `meta/` are written by the admin role only.
 * etcd checks write permission on every key attached to a lease when the lease is revoked, so a host's lease may
 * only carry the host's own keys, which is what the agent does.
 */

export type Permission = 'read' | 'readwrite';

export interface Grant {
  readonly permission: Permission;
  /** The full etcd key (with /backplane/<cluster>/). */
  readonly key: string;
  readonly prefix: boolean;
}

export interface EtcdRole {
  readonly role: string;
  readonly grants: readonly Grant[];
}

export function hostRoleName(host: string): string {
  return `backplane-host-${host}`;
}

export function adminRoleName(cluster: string): string {
  return `backplane-admin-${cluster}`;
}

export function hostRole(cluster: string, host: string): EtcdRole {
  const root = clusterRoot(cluster);
  return {
    role: hostRoleName(host),
    grants: [
      { permission: 'read', key: root, prefix: true },
      { permission: 'readwrite', key: root + keys.node(host), prefix: false },
      { permission: 'readwrite', key: root + keys.exportedByHost(host), prefix: true },
      { permission: 'readwrite', key: root + keys.kvByHost(host), prefix: true },
      { permission: 'readwrite', key: `${root}joins/${segment(host)}`, prefix: false },
      { permission: 'readwrite', key: root + keys.electionsPrefix, prefix: true },
    ],
  };
}

export function adminRole(cluster: string): EtcdRole {
  return { role: adminRoleName(cluster), grants: [{ permission: 'readwrite', key: clusterRoot(cluster), prefix: true }] };
}

/** Single-quotes for sh. */
export function shQuote(s: string): string {
  return /^[A-Za-z0-9@%+=:,./_-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * The etcdctl commands that create `role`, a user of the same name with the password read from `passwordFile`
 * (on the machine where the commands run), and grant the role to the user. Without `passwordFile` no user is
 * created: for hosts that authenticate with a client certificate whose CN is the role name.
 */
export function etcdctlScript(role: EtcdRole, what: string, passwordFile: string | undefined): string {
  const r = shQuote(role.role);
  const lines = [
    `# ${what}`,
    '# Run as an etcd administrator, with the connection in the environment, e.g.:',
    '#   export ETCDCTL_ENDPOINTS=https://etcd1:2379 ETCDCTL_CACERT=ca.crt ETCDCTL_CERT=admin.crt ETCDCTL_KEY=admin.key ETCDCTL_USER=root',
    '# Safe to run again: "already exists" errors are ignored, grants are idempotent.',
    `etcdctl role add ${r} || true`,
    ...role.grants.map((g) => `etcdctl role grant-permission ${g.prefix ? '--prefix=true ' : ''}${r} ${g.permission} ${shQuote(g.key)}`),
  ];
  if (passwordFile !== undefined) {
    lines.push(
      `# The user's password is the first line of ${passwordFile}; make one with: (umask 077; openssl rand -base64 24 > ${shQuote(passwordFile)})`,
      `etcdctl user add ${r} --interactive=false < ${shQuote(passwordFile)} || true`,
    );
  } else {
    lines.push(`# No password: the host authenticates with a client certificate whose CN is ${role.role}.`, `etcdctl user add ${r} --no-password || true`);
  }
  lines.push(`etcdctl user grant-role ${r} ${r}`);
  return `${lines.join('\n')}\n`;
}
