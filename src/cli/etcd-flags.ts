import type { Command } from 'commander';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { EtcdAuthOptions, EtcdTlsOptions } from '../cluster/etcd-store.js';
// The store's modules load with the store: `backplane run` needs these flags, and most runs never open a store.
import type { Store } from '../cluster/store.js';
import { BackplaneError } from '../errors.js';
import { defaultStateDir } from '../state-dir.js';

/**
 * The flags of every command that opens the cluster store, in one place: `--etcd`, `--cluster`, TLS towards etcd
 * (`--etcd-ca`, `--etcd-cert`, `--etcd-key`) and etcd's own users (`--etcd-user` with `--etcd-password-file` or the
 * environment variable BACKPLANE_ETCD_PASSWORD; never the password itself on the command line, where `ps` shows it).
 * See docs/etcd-security.md.
 */

export const PASSWORD_ENV = 'BACKPLANE_ETCD_PASSWORD';

export interface EtcdFlags {
  etcd?: string;
  cluster: string;
  etcdCa?: string;
  etcdCert?: string;
  etcdKey?: string;
  etcdUser?: string;
  etcdPasswordFile?: string;
}

/** What the flags give an EtcdStore (besides its tuning): endpoints, cluster, TLS and auth. */
export interface EtcdConnection {
  readonly endpoints: string[];
  readonly cluster: string;
  readonly tls?: EtcdTlsOptions;
  readonly auth?: EtcdAuthOptions;
}

/** Adds the store flags to `cmd`. `etcdHelp` describes --etcd for this command (what happens without it). */
export function addStoreFlags(cmd: Command, etcdHelp: string): Command {
  return cmd
    .option('--etcd <urls>', etcdHelp)
    .option('--cluster <name>', 'cluster name: keys live under /backplane/<name>/', 'default')
    .option('--etcd-ca <file>', "PEM file of the CA that signed the etcd members' certificates (https URLs)")
    .option('--etcd-cert <file>', 'PEM client certificate for etcd --client-cert-auth (with --etcd-key)')
    .option('--etcd-key <file>', 'PEM private key of --etcd-cert')
    .option('--etcd-user <name>', `etcd user to authenticate as; the password comes from --etcd-password-file or $${PASSWORD_ENV}`)
    .option('--etcd-password-file <file>', 'file holding the etcd password (first line; must not be readable by group or others)');
}

export function splitUrls(v: string | undefined): string[] {
  return (v ?? '')
    .split(',')
    .map((u) => u.trim())
    .filter((u) => u !== '');
}

/**
 * The etcd connection the flags describe, or undefined when no --etcd is given (the embedded store). Throws an
 * E_USAGE BackplaneError for flags that do not fit together and for an unreadable or too open password file.
 */
export function etcdConnection(flags: EtcdFlags, env: NodeJS.ProcessEnv = process.env): EtcdConnection | undefined {
  const endpoints = splitUrls(flags.etcd);
  for (const u of endpoints) checkEtcdUrl(u);
  const security: [string, string | undefined][] = [
    ['--etcd-ca', flags.etcdCa],
    ['--etcd-cert', flags.etcdCert],
    ['--etcd-key', flags.etcdKey],
    ['--etcd-user', flags.etcdUser],
    ['--etcd-password-file', flags.etcdPasswordFile],
  ];
  if (endpoints.length === 0) {
    const given = security.filter(([, v]) => v !== undefined).map(([n]) => n);
    if (given.length > 0) throw new BackplaneError('E_USAGE', `${given.join(', ')} only apply with --etcd`, { hint: 'pass the etcd client URLs with --etcd https://host:2379' });
    return undefined;
  }
  if ((flags.etcdCert === undefined) !== (flags.etcdKey === undefined)) {
    throw new BackplaneError('E_USAGE', '--etcd-cert and --etcd-key go together', { hint: 'pass the client certificate and its private key' });
  }
  const tlsGiven = flags.etcdCa !== undefined || flags.etcdCert !== undefined;
  const plain = endpoints.filter((u) => !u.startsWith('https://'));
  if (tlsGiven && plain.length > 0) {
    throw new BackplaneError('E_USAGE', `--etcd-ca/--etcd-cert need https:// URLs, but got ${plain.join(', ')}`, { hint: 'give the etcd client URLs as https://host:port' });
  }
  const tls: EtcdTlsOptions = {
    ...(flags.etcdCa === undefined ? {} : { caFile: flags.etcdCa }),
    ...(flags.etcdCert === undefined ? {} : { certFile: flags.etcdCert }),
    ...(flags.etcdKey === undefined ? {} : { keyFile: flags.etcdKey }),
  };
  const auth = etcdAuth(flags, env);
  return {
    endpoints,
    cluster: flags.cluster,
    ...(tlsGiven ? { tls } : {}),
    ...(auth === undefined ? {} : { auth }),
  };
}

/**
 * `--etcd not-a-url` would otherwise get as far as the cluster's trust files or the first connection attempt and fail
 * there with an error about something else entirely.
 */
function checkEtcdUrl(u: string): void {
  let url: URL | undefined;
  try {
    url = new URL(u);
  } catch {
    url = undefined;
  }
  const ok =
    url !== undefined &&
    (url.protocol === 'http:' || url.protocol === 'https:') &&
    url.hostname !== '' &&
    url.pathname === '/' &&
    url.search === '' &&
    url.hash === '' &&
    url.username === '';
  if (!ok) {
    throw new BackplaneError('E_USAGE', `--etcd "${u}" is not an etcd client URL`, {
      hint: 'give http://host:port or https://host:port (comma-separated for several members), e.g. --etcd http://127.0.0.1:2379',
    });
  }
}

function etcdAuth(flags: EtcdFlags, env: NodeJS.ProcessEnv): EtcdAuthOptions | undefined {
  const fromEnv = env[PASSWORD_ENV];
  if (flags.etcdUser === undefined) {
    if (flags.etcdPasswordFile !== undefined) throw new BackplaneError('E_USAGE', '--etcd-password-file needs --etcd-user');
    if (fromEnv !== undefined && fromEnv !== '') throw new BackplaneError('E_USAGE', `$${PASSWORD_ENV} is set, but --etcd-user is not`, { hint: 'pass --etcd-user <name>, or unset the variable' });
    return undefined;
  }
  if (flags.etcdUser === '') throw new BackplaneError('E_USAGE', '--etcd-user must not be empty');
  let password: string;
  if (flags.etcdPasswordFile !== undefined) {
    password = readPasswordFile(flags.etcdPasswordFile);
  } else if (fromEnv !== undefined && fromEnv !== '') {
    password = fromEnv;
  } else {
    throw new BackplaneError('E_USAGE', `--etcd-user ${flags.etcdUser} needs a password`, {
      hint: `put it in a file only root can read and pass --etcd-password-file <file>, or set $${PASSWORD_ENV}`,
    });
  }
  return { user: flags.etcdUser, password };
}

/** The first line of `file`. Refused when group or others may read it (or write it), as ssh does with keys. */
export function readPasswordFile(file: string): string {
  let mode: number;
  let text: string;
  try {
    mode = statSync(file).mode;
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new BackplaneError('E_USAGE', `cannot read the etcd password file ${file}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  if ((mode & 0o077) !== 0) {
    throw new BackplaneError('E_USAGE', `the etcd password file ${file} is accessible by group or others (mode ${(mode & 0o777).toString(8).padStart(4, '0')})`, {
      hint: `chmod 600 ${file}`,
    });
  }
  const password = text.split(/\r?\n/)[0] ?? '';
  if (password === '') throw new BackplaneError('E_USAGE', `the etcd password file ${file} is empty`, { hint: 'the password is its first line' });
  return password;
}

/**
 * The store the flags select: etcd with --etcd, otherwise the embedded store in `stateDir` (default: the state
 * directory). While an agent holds the embedded store (its lock), the same store through that agent's control socket
 * (`<state dir>/control.sock`, see control-server.ts); when that does not answer either, the error says both.
 */
export async function openStore(flags: EtcdFlags & { stateDir?: string }): Promise<Store> {
  const conn = etcdConnection(flags);
  if (conn !== undefined) {
    const { EtcdStore } = await import('../cluster/etcd-store.js');
    return new EtcdStore(conn);
  }
  const stateDir = flags.stateDir ?? defaultStateDir();
  const [{ EmbeddedStore }, { isStoreError }] = await Promise.all([import('../cluster/embedded-store.js'), import('../cluster/store.js')]);
  try {
    return await EmbeddedStore.open({ dir: join(stateDir, 'store') });
  } catch (err) {
    if (!isStoreError(err, 'locked')) throw err;
    const { RemoteStore } = await import('../cluster/remote-store.js');
    return RemoteStore.connect(stateDir, { heldBy: err });
  }
}
