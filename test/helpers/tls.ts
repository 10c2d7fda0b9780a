import { execFileSync, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Test certificates made with openssl, the same steps docs/etcd-security.md gives operators: a CA, a server
 * certificate for the loopback etcd members (SANs 127.0.0.2-4), and client certificates signed by that CA. P-256 keys,
 * valid for a day.
 */

export interface TlsFiles {
  readonly ca: string;
  readonly caKey: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
}

export function opensslAvailable(): boolean {
  return spawnSync('openssl', ['version'], { stdio: 'ignore' }).status === 0;
}

function openssl(args: readonly string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A self-signed CA named `name` in `dir` (`<name>.crt`, `<name>.key`). */
export function makeCa(dir: string, name: string): { cert: string; key: string } {
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-keyout', `${name}.key`, '-out', `${name}.crt`, '-subj', `/CN=${name}`], dir);
  return { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
}

/** A certificate for `cn` signed by the CA, for `usage` (server: with IP SANs; client: the CN is etcd's user name). */
export function makeCert(dir: string, ca: { cert: string; key: string }, name: string, cn: string, usage: 'server' | 'client'): { cert: string; key: string } {
  const ext = join(dir, `${name}.ext`);
  writeFileSync(
    ext,
    usage === 'server'
      ? 'subjectAltName = IP:127.0.0.2, IP:127.0.0.3, IP:127.0.0.4, DNS:localhost\nextendedKeyUsage = serverAuth, clientAuth\n'
      : 'extendedKeyUsage = clientAuth\n',
  );
  openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`], dir);
  openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-days', '1', '-extfile', ext, '-out', `${name}.crt`], dir);
  return { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
}

/** A CA, a server certificate for the test etcd, and a client certificate (CN `client`). */
export function makeTls(dir: string): TlsFiles {
  const ca = makeCa(dir, 'ca');
  const server = makeCert(dir, ca, 'server', 'etcd', 'server');
  const client = makeCert(dir, ca, 'client', 'client', 'client');
  return { ca: ca.cert, caKey: ca.key, serverCert: server.cert, serverKey: server.key, clientCert: client.cert, clientKey: client.key };
}
