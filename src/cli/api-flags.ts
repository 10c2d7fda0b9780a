import { constants as fsc } from 'node:fs';
import { open } from 'node:fs/promises';
import type { Command } from 'commander';
import type { TlsListen } from '../api/server.js';
import { BackplaneError, errorMessage } from '../errors.js';

/** `run`'s flags for the operator API's TCP door (the Unix socket is always there). */
export interface ApiFlags {
  api?: boolean;
  apiListen?: string;
  apiTlsCert?: string;
  apiTlsKey?: string;
}

export function addApiFlags(c: Command): Command {
  return c
    .option('--api-listen <host:port>', 'also serve the API and dashboard on TCP with TLS (e.g. 127.0.0.1:8443); needs --api-tls-cert and --api-tls-key')
    .option('--api-tls-cert <file>', 'PEM certificate (chain) for --api-listen')
    .option('--api-tls-key <file>', 'PEM private key for --api-listen (readable by its owner only)')
    .option('--no-api', 'serve no operator API, not even on the Unix socket in --state-dir');
}

/** The agent's `api` option from the flags: false, socket only, or socket and TLS (files read and checked now). */
export async function apiOption(flags: ApiFlags): Promise<{ tls?: TlsListen } | false> {
  if (flags.api === false) {
    if (flags.apiListen !== undefined) throw new BackplaneError('E_USAGE', '--no-api and --api-listen contradict each other');
    return false;
  }
  if (flags.apiListen === undefined) {
    if (flags.apiTlsCert !== undefined || flags.apiTlsKey !== undefined) throw new BackplaneError('E_USAGE', '--api-tls-cert and --api-tls-key need --api-listen HOST:PORT');
    return {};
  }
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:\s]+):(\d{1,5})$/.exec(flags.apiListen);
  const port = Number(m?.[2]);
  if (m === null || !(port >= 0 && port <= 65535)) {
    throw new BackplaneError('E_USAGE', `--api-listen "${flags.apiListen}" is not HOST:PORT`, { hint: 'e.g. --api-listen 127.0.0.1:8443, or 0.0.0.0:8443 for every interface' });
  }
  if (flags.apiTlsCert === undefined || flags.apiTlsKey === undefined) {
    throw new BackplaneError('E_USAGE', '--api-listen serves only TLS: give --api-tls-cert FILE and --api-tls-key FILE', {
      hint: 'a self-signed pair: openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 -subj /CN=$(hostname) -keyout api.key -out api.crt',
    });
  }
  const host = (m[1] ?? '').replace(/^\[|\]$/g, '');
  return { tls: { host, port, cert: await readPem(flags.apiTlsCert, '--api-tls-cert', false), key: await readPem(flags.apiTlsKey, '--api-tls-key', true) } };
}

/** Reads a PEM file, refusing a private key others can read (O_NOFOLLOW: a symlink is not followed as root). */
async function readPem(path: string, flag: string, secret: boolean): Promise<string> {
  let text: string;
  try {
    const fh = await open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW);
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new BackplaneError('E_USAGE', `${flag} ${path} is not a regular file`);
      if (secret && (st.mode & 0o077) !== 0) {
        throw new BackplaneError('E_USAGE', `${flag} ${path} can be read by group or others (mode ${(st.mode & 0o777).toString(8)}): it is the API's private key`, { hint: `chmod 600 ${path}` });
      }
      text = await fh.readFile('utf8');
    } finally {
      await fh.close();
    }
  } catch (err) {
    if (err instanceof BackplaneError) throw err;
    throw new BackplaneError('E_USAGE', `${flag} ${path} cannot be read: ${errorMessage(err)}`, { cause: err });
  }
  if (!text.includes('-----BEGIN ')) throw new BackplaneError('E_USAGE', `${flag} ${path} is not PEM`, { hint: 'give a PEM file (-----BEGIN ...)' });
  return text;
}
