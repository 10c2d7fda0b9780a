import type { Command } from 'commander';
import { fingerprint } from '../cluster/identity.js';
import { keys } from '../cluster/keys.js';
import type { Store } from '../cluster/store.js';
import { approve, notCaHolder, parseJoinRequest, revoke, TrustFiles, trustScope, TrustView, updateHosts } from '../cluster/trust.js';
import { BackplaneError } from '../errors.js';
import { defaultStateDir } from '../state-dir.js';
import { parseDuration } from '../util/duration.js';
import type { ClientFlags } from '../api/client.js';
import { clientFlags, storeFlags, withStore, type StoreFlags } from './cluster.js';
import { isJson, printJson, withClient } from './output.js';
import { EXIT, print, reportError } from './common.js';

/**
 * `backplane cluster init` and `backplane hosts ...`: the operator's side of host identity (see cluster/trust.ts).
 * Everything that changes the hosts list needs the CA key, so it runs on the CA's host with its state directory.
 */

interface HostsFlags extends StoreFlags {
  hostname?: string;
  replace?: boolean;
  ttl: string;
  uses: string;
}

async function trustFiles(flags: StoreFlags): Promise<TrustFiles> {
  return TrustFiles.open(flags.stateDir ?? defaultStateDir(), trustScope((flags.etcd ?? '') !== '', flags.cluster));
}

/** The CA this host believes in and the newest hosts list it knows (its cache, then the store's if newer). */
export async function loadTrust(store: Store, files: TrustFiles): Promise<TrustView | undefined> {
  const ca = (await files.caKey())?.publicKey ?? (await files.pinnedCa());
  if (ca === undefined) return undefined;
  const view = new TrustView(ca);
  const cached = await files.cachedHosts();
  if (cached !== undefined) view.adopt(cached);
  const kv = await store.get(keys.trustHosts);
  if (kv !== undefined) view.adopt(kv.value);
  return view;
}

async function caOf(files: TrustFiles): Promise<NonNullable<Awaited<ReturnType<TrustFiles['caKey']>>>> {
  const ca = await files.caKey();
  if (ca === undefined) throw notCaHolder(files.dir);
  return ca;
}

export async function clusterInit(flags: HostsFlags): Promise<number> {
  return withStore(flags, async (store) => {
    const files = await trustFiles(flags);
    const existing = await store.get(keys.trustCa);
    const had = await files.caKey();
    if (existing !== undefined && had === undefined) {
      throw new BackplaneError('E_USAGE', `cluster "${flags.cluster}" already has a CA, and this host does not hold it`, {
        hint: 'join it with a token from `backplane hosts token` on its CA host; or, to start over, delete the keys under trust/ in the store',
      });
    }
    const ca = await files.createCaKey();
    await store.put(keys.trustCa, JSON.stringify({ publicKey: ca.publicKey }));
    await files.pinCa(ca.publicKey);
    const host = flags.hostname ?? (await import('../facts.js')).gatherFacts().hostname;
    const hostKey = await files.hostKey();
    const view = (await loadTrust(store, files)) ?? new TrustView(ca.publicKey);
    await updateHosts(store, ca, view, approve(host, hostKey.publicKey, true, true));
    if (view.sealed !== undefined) await files.saveHosts(view.sealed);
    process.stdout.write(
      `${had === undefined ? 'created' : 'kept'} the cluster CA of "${flags.cluster}": ${fingerprint(ca.publicKey)}\n` +
        `  key: ${files.dir}/ca.key (keep it safe: whoever has it decides which hosts the cluster believes)\n` +
        `host ${host} is approved\n` +
        'next: `backplane hosts token` here, then on each new host `backplane run --etcd ... --join-token-file FILE`\n',
    );
  });
}

export function registerHosts(program: Command): void {
  const hosts = program.command('hosts').description('the hosts as a pool (capacity, reserved, free, instances, drain state); and which hosts the cluster believes: list, approve, revoke, token');
  // `backplane hosts` alone: the capacity view of the service backplane. Its options are positional (they belong to
  // `hosts` only when given before a subcommand), or `hosts token --state-dir D` would hand D to `hosts`, not `token`.
  hosts.enablePositionalOptions();
  clientFlags(hosts).action(async (flags: HostsFlags & ClientFlags) => {
    process.exitCode = await withClient(flags, async (client, json) => {
      const { hostsList } = await import('../api/ops/hosts.js');
      const { printHostRows } = await import('./services.js');
      const rows = await client.call(hostsList, {});
      if (json) printJson(rows);
      else printHostRows(rows);
    });
  });

  clientFlags(hosts.command('list').description('approved, revoked and pending hosts, with their key fingerprints')).action(async (flags: HostsFlags & ClientFlags) => {
    process.exitCode = await withClient(flags, async (client, json) => {
      const { hostsTrust } = await import('../api/ops/hosts.js');
      const t = await client.call(hostsTrust, {});
      if (json) return printJson(t);
      if (t.ca === null) print('this host knows no cluster CA: nothing can be verified here\n');
      else print(`CA ${t.ca}, hosts list serial ${t.serial}\n`);
      for (const h of t.hosts) print(`${h.host.padEnd(24)} ${h.state.padEnd(9)} ${h.fingerprint}  since ${h.since}${h.operator ? '  operator' : ''}\n`);
      for (const p of t.pending) print(`${p.host.padEnd(24)} ${'pending'.padEnd(9)} ${p.fingerprint}  asked ${p.at}${p.token === null ? '' : ` (token ${p.token})`}\n`);
    });
  });

  storeFlags(hosts.command('approve <host>').description('approve a host that asked to join (compare its key fingerprint first)'))
    .option('--replace', 'replace the key of a host that is already approved or revoked (a reinstalled host)')
    .option('--operator', 'let the host sign operator records too: deploy, scale, drain, remove (its root can then run anything on every host)')
    .option('--no-operator', 'take operator rights away (the host stays approved)')
    .action(async (host: string, flags: HostsFlags & { operator?: boolean }) => {
      process.exitCode = await withStore(flags, async (store) => {
        const files = await trustFiles(flags);
        const ca = await caOf(files);
        const kv = await store.get(keys.join(host));
        const view = (await loadTrust(store, files)) ?? new TrustView(ca.publicKey);
        const req = kv === undefined ? undefined : parseJoinRequest(kv.value);
        // Changing operator rights of a host already approved needs no join request: its key is in the list.
        const publicKey = req !== undefined && req.host === host ? req.publicKey : flags.operator !== undefined ? view.keyOf(host) : undefined;
        if (publicKey === undefined) {
          throw new BackplaneError('E_USAGE', `host "${host}" has not asked to join`, { hint: `start its agent with --etcd and --ca-fingerprint; then see \`backplane hosts list\`` });
        }
        const doc = await updateHosts(store, ca, view, approve(host, publicKey, flags.replace === true, flags.operator));
        if (view.sealed !== undefined) await files.saveHosts(view.sealed);
        if (kv !== undefined) await store.cas(kv.key, kv.modRevision, null);
        const role = view.mayOperate(host) ? ' (operator)' : '';
        print(doc === undefined ? `host ${host} was already approved with key ${fingerprint(publicKey)}${role}\n` : `approved host ${host} with key ${fingerprint(publicKey)}${role}\n`);
      });
    });

  storeFlags(hosts.command('revoke <host>').description('stop believing a host: everything it wrote is ignored by every agent')).action(async (host: string, flags: HostsFlags) => {
    process.exitCode = await withStore(flags, async (store) => {
      const files = await trustFiles(flags);
      const ca = await caOf(files);
      const view = (await loadTrust(store, files)) ?? new TrustView(ca.publicKey);
      if (view.keyOf(host) === (await files.hostKey()).publicKey) {
        // Its agent holds the CA and would approve itself again at once: revoking it means moving the CA.
        throw new BackplaneError('E_USAGE', `host "${host}" is this host, which holds the cluster CA; it cannot revoke itself`, {
          hint: 'to retire this host, make a new CA on another host (docs/trust.md, "A lost CA key") and join the others to it',
        });
      }
      const doc = await updateHosts(store, ca, view, revoke(host));
      if (view.sealed !== undefined) await files.saveHosts(view.sealed);
      print(doc === undefined ? `host ${host} was already revoked\n` : `revoked host ${host}\n`);
    });
  });

  storeFlags(hosts.command('token').description('make a join token: a new host that presents it is approved by the CA host\'s agent'))
    .option('--ttl <duration>', 'how long the token is valid', '24h')
    .option('--uses <n>', 'how many hosts may join with it', '1')
    .action(async (flags: HostsFlags) => {
      try {
        const files = await trustFiles(flags);
        const ttl = parseDuration(flags.ttl);
        const uses = Number(flags.uses);
        if (ttl === undefined || ttl <= 0) throw new BackplaneError('E_USAGE', `--ttl "${flags.ttl}" is not a duration`, { hint: 'e.g. --ttl 1h' });
        if (!Number.isInteger(uses) || uses < 1) throw new BackplaneError('E_USAGE', `--uses "${flags.uses}" is not a whole number of at least 1`);
        const { token, expires } = await files.createToken(ttl, uses);
        if (isJson(flags)) process.stdout.write(`${JSON.stringify({ token, expires, uses })}\n`);
        else print(`${token}\n`);
        process.exitCode = EXIT.ok;
      } catch (err) {
        process.exitCode = reportError(err);
      }
    });
}
