import type { Command } from 'commander';
import { ClusterLink, type Member } from '../cluster/link.js';
import { TrustFiles, trustScope } from '../cluster/trust.js';
import { keys, parseExportedKey, parseKvKey } from '../cluster/keys.js';
import type { Store } from '../cluster/store.js';
import { adminRole, etcdctlScript, hostRole } from '../cluster/etcd-roles.js';
import { BackplaneError } from '../errors.js';
import { defaultStateDir } from '../state-dir.js';
import { EXIT, print, reportError } from './common.js';
import { addStoreFlags, openStore, type EtcdFlags } from './etcd-flags.js';
import { apiFlags, isJson, outputFlags, type OutputFlags } from './output.js';

/** The flags of every command that opens the cluster store (see storeFlags). */
export interface StoreFlags extends EtcdFlags, OutputFlags {
  stateDir?: string;
}

type ClusterFlags = StoreFlags;


/** Adds the options of every command that opens the cluster store. */
export function storeFlags(c: Command): Command {
  // --etcd, --cluster and the etcd TLS and user flags: etcd-flags.ts, shared with `backplane run`.
  return outputFlags(
    addStoreFlags(c, 'etcd client URLs (comma-separated); default: the embedded store in --state-dir').option('--state-dir <dir>', 'state directory: of the embedded store, and where this host keeps its keys'),
  );
}

/**
 * The flags of a command that goes through the operator API (api/client.ts): the store flags (with --etcd the op runs
 * here on etcd), --api/--api-ca/--token-file, --output. Without --etcd or --api: the local agent's socket.
 */
export function clientFlags(c: Command): Command {
  return apiFlags(storeFlags(c));
}

export function registerCluster(program: Command): void {
  const cluster = program.command('cluster').description('inspect the cluster: its hosts, their exports, the store');
  const common = storeFlags;

  registerEtcdRoles(cluster);

  common(cluster.command('init').description("create the cluster's CA on this host and approve this host (once, on the first host)"))
    .option('--hostname <name>', "this host's name in the cluster (default: the machine's hostname)")
    .action(async (flags: StoreFlags & { hostname?: string }) => {
      const { clusterInit } = await import('./hosts.js');
      process.exitCode = await clusterInit({ ...flags, ttl: '', uses: '' });
    });

  common(cluster.command('members').description('the hosts registered in the cluster, with their facts and liveness')).action(
    async (flags: ClusterFlags) => {
      process.exitCode = await withStore(flags, async (store) => {
        const members = await verifiedMembers(store, flags);
        if (isJson(flags)) {
          process.stdout.write(`${JSON.stringify(members, null, 2)}\n`);
          return;
        }
        if (members.length === 0) print('no hosts registered\n');
        for (const m of members) {
          const r = m.record;
          if (!m.verified) {
            print(`${m.host.padEnd(20)} UNVERIFIED  ${m.problem ?? ''}\n`);
            continue;
          }
          const facts = r === undefined ? 'unreadable record' : `${r.facts.cpus} cpus, ${gib(r.facts.memory.total)} memory, ${r.facts.ipv4}, up since ${r.startedAt}`;
          const labels = r === undefined || Object.keys(r.labels).length === 0 ? '' : ` [${Object.entries(r.labels).map(([k, v]) => `${k}=${v}`).join(' ')}]`;
          print(`${m.host.padEnd(20)} alive  ${facts}${labels}\n`);
        }
      });
    },
  );

  common(cluster.command('kv').description("every host's kv values (the kv kind), each verified against its host's key"))
    .option('--host <name>', 'only this host')
    .action(async (flags: ClusterFlags & { host?: string }) => {
      process.exitCode = await withStore(flags, async (store) => {
        const { loadTrust } = await import('./hosts.js');
        const files = await TrustFiles.open(flags.stateDir ?? defaultStateDir(), trustScope((flags.etcd ?? '') !== '', flags.cluster));
        const trust = await loadTrust(store, files);
        const { kvs } = await store.list(flags.host === undefined ? keys.kvPrefix : keys.kvByHost(flags.host));
        const out: { host: string; key: string; value?: string; verified: boolean; problem?: string }[] = [];
        for (const kv of kvs) {
          const where = parseKvKey(kv.key);
          if (where === undefined) continue;
          const v = trust?.verify(where.host, kv.key, kv.value);
          let value: string | undefined;
          if (v?.ok === true) {
            try {
              const body = JSON.parse(v.body) as { value?: unknown };
              if (typeof body.value === 'string') value = body.value;
            } catch {
              value = undefined;
            }
          }
          const problem = v === undefined ? 'no CA pinned on this host to verify with' : !v.ok ? v.why : value === undefined ? 'the signed record holds no value' : undefined;
          out.push({ host: where.host, key: where.key, ...(value === undefined ? {} : { value }), verified: problem === undefined, ...(problem === undefined ? {} : { problem }) });
        }
        if (isJson(flags)) {
          process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
          return;
        }
        if (out.length === 0) print('no kv values\n');
        for (const e of out) print(e.verified ? `${e.host}/${e.key} = ${JSON.stringify(e.value)}\n` : `${e.host}/${e.key} UNVERIFIED (${e.problem ?? ''}), ignored\n`);
      });
    });

  common(cluster.command('status').description("the store's health, the hosts and what each exports")).action(async (flags: ClusterFlags) => {
    process.exitCode = await withStore(flags, async (store) => {
      const health = await store.health({ timeoutMs: 2000 });
      const members = await verifiedMembers(store, flags);
      const { kvs } = await store.list(keys.exportedPrefix);
      const exports = new Map<string, string[]>();
      for (const kv of kvs) {
        const k = parseExportedKey(kv.key);
        if (k === undefined) continue;
        const list = exports.get(k.host) ?? [];
        list.push(`${k.kind}[${k.name}]`);
        exports.set(k.host, list);
      }
      if (isJson(flags)) {
        process.stdout.write(`${JSON.stringify({ store: { kind: store.kind, ...health }, members, exports: Object.fromEntries(exports) }, null, 2)}\n`);
        return;
      }
      print(`store: ${store.kind}, ${health.ok ? 'healthy' : 'UNHEALTHY'} (${health.detail})\n`);
      print(`hosts: ${members.length}\n`);
      for (const m of members) {
        const ex = exports.get(m.host) ?? [];
        if (!m.verified) print(`  ${m.host}: UNVERIFIED record (${m.problem ?? 'unknown'}), ignored\n`);
        else print(`  ${m.host}: alive, exports ${ex.length}${ex.length > 0 ? `: ${ex.join(', ')}` : ''}\n`);
      }
      for (const [host, ex] of exports) {
        if (!members.some((m) => m.host === host)) print(`  ${host}: NOT registered, yet exports ${ex.join(', ')}\n`);
      }
      if (!health.ok) throw new Error('the store is not healthy');
    });
  });
}

/** Members, each verified against the hosts list this host believes (its CA pinned in --state-dir). */
async function verifiedMembers(store: Store, flags: StoreFlags): Promise<Member[]> {
  const { loadTrust } = await import('./hosts.js');
  const files = await TrustFiles.open(flags.stateDir ?? defaultStateDir(), trustScope((flags.etcd ?? '') !== '', flags.cluster));
  return ClusterLink.members(store, await loadTrust(store, files));
}

interface RolesFlags {
  host?: string;
  admin?: boolean;
  cluster: string;
  passwordFile?: string;
  certOnly?: boolean;
}

function registerEtcdRoles(cluster: Command): void {
  cluster
    .command('etcd-roles')
    .description("print the etcdctl commands that create a host's etcd role and user (write access to its own keys only), or the admin role")
    .option('--host <name>', 'the host (as in run --hostname)')
    .option('--admin', 'the administrator role instead: read and write the whole cluster prefix')
    .option('--cluster <name>', 'cluster name', 'default')
    .option('--password-file <file>', "where the new user's password is, on the machine that runs the commands (default: <role>.password)")
    .option('--cert-only', 'create the user without a password: it authenticates with a client certificate whose CN is the user name')
    .action((flags: RolesFlags) => {
      try {
        if ((flags.host === undefined) === (flags.admin !== true)) {
          throw new BackplaneError('E_USAGE', 'pass either --host <name> or --admin', { hint: 'e.g. backplane cluster etcd-roles --host web1 --cluster prod' });
        }
        const role = flags.host === undefined ? adminRole(flags.cluster) : hostRole(flags.cluster, flags.host);
        const what =
          flags.host === undefined
            ? `etcd role and user for administrators of Backplane cluster "${flags.cluster}": read and write everything under /backplane/${flags.cluster}/`
            : `etcd role and user for Backplane host "${flags.host}" in cluster "${flags.cluster}": reads the cluster, writes only its own keys`;
        const passwordFile = flags.certOnly === true ? undefined : (flags.passwordFile ?? `${role.role}.password`);
        process.stdout.write(etcdctlScript(role, what, passwordFile));
        process.exitCode = EXIT.ok;
      } catch (err) {
        process.exitCode = reportError(err);
      }
    });
}

/** Runs `fn` with the store open, and turns what it throws into an exit code. */
export async function withStore(flags: StoreFlags, fn: (store: Store) => Promise<void>): Promise<number> {
  let store: Store | undefined;
  try {
    store = await openStore(flags);
    await fn(store);
    return EXIT.ok;
  } catch (err) {
    return reportError(err);
  } finally {
    await store?.close().catch(() => undefined);
  }
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}
