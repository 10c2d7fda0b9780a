import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Etcd3 } from 'etcd3';
import { adminRole, etcdctlScript, hostRole } from '../../src/cluster/etcd-roles.js';
import { EtcdStore, type EtcdTlsOptions } from '../../src/cluster/etcd-store.js';
import { keys } from '../../src/cluster/keys.js';
import { runCli, startCli } from '../helpers/cli.js';
import { etcdAvailable, startEtcd, type EtcdCluster } from '../helpers/etcd.js';
import { makeCa, makeCert, makeTls, opensslAvailable, type TlsFiles } from '../helpers/tls.js';
import { Recorder, rejectsWith, until } from './store-contract.js';

/**
 * etcd over mutual TLS and with etcd's own users, against a real etcd 3.4 with --client-cert-auth and auth tokens
 * that expire after 2 s (--auth-token-ttl 2; etcd's default is 5 min). The roles are made by running the etcdctl
 * commands that `backplane cluster etcd-roles` prints.
 */

const etcdctlAvailable = spawnSync('etcdctl', ['version'], { stdio: 'ignore' }).status === 0;
const skip = !etcdAvailable()
  ? 'etcd is not installed (apt-get install etcd-server)'
  : !opensslAvailable()
    ? 'openssl is not installed'
    : !etcdctlAvailable
      ? 'etcdctl is not installed (apt-get install etcd-client)'
      : false;

const CLUSTER = 'prod';
const ROOT_PASSWORD = 'root-secret';
let dir: string;
let tls: TlsFiles;
let etcd: EtcdCluster | undefined;

before(async () => {
  if (skip !== false) return;
  dir = await mkdtemp(join(tmpdir(), 'bp-etcd-tls-'));
  tls = makeTls(dir);
  etcd = await startEtcd({
    members: 1,
    tls: { ca: tls.ca, cert: tls.serverCert, key: tls.serverKey, probe: { cert: tls.clientCert, key: tls.clientKey } },
    args: ['--auth-token-ttl', '2'],
  });
});
after(async () => {
  await etcd?.stop();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

function endpoints(): string[] {
  if (etcd === undefined) throw new Error('etcd did not start');
  return etcd.endpoints;
}

function mtls(): EtcdTlsOptions {
  return { caFile: tls.ca, certFile: tls.clientCert, keyFile: tls.clientKey };
}

function open(opts: { tls?: EtcdTlsOptions; user?: string; password?: string; opTimeoutMs?: number } = {}): EtcdStore {
  return new EtcdStore({
    endpoints: endpoints(),
    cluster: CLUSTER,
    tls: opts.tls ?? mtls(),
    ...(opts.user === undefined ? {} : { auth: { user: opts.user, password: opts.password ?? '' } }),
    ...(opts.opTimeoutMs === undefined ? {} : { opTimeoutMs: opts.opTimeoutMs }),
  });
}

/** Runs a script of etcdctl lines as the etcd root user, over the same mutual TLS. */
function etcdctl(script: string): void {
  execFileSync('sh', ['-ec', script], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      ETCDCTL_API: '3',
      ETCDCTL_ENDPOINTS: endpoints().join(','),
      ETCDCTL_CACERT: tls.ca,
      ETCDCTL_CERT: tls.clientCert,
      ETCDCTL_KEY: tls.clientKey,
      ETCDCTL_USER: `root:${ROOT_PASSWORD}`,
    },
  });
}

async function elapsed<T>(p: Promise<T>): Promise<number> {
  const t0 = Date.now();
  await p.catch(() => undefined);
  return Date.now() - t0;
}

describe('etcd over mutual TLS', { skip }, () => {
  test('a store over mutual TLS: put, get, watch, lease, health', async () => {
    const s = open();
    const ac = new AbortController();
    try {
      const rec = new Recorder();
      await s.watch('tls/', 0, rec.onEvent, ac.signal);
      await s.put('tls/a', '1');
      assert.equal((await s.get('tls/a'))?.value, '1');
      const lease = await s.lease(2000);
      await s.put('tls/leased', 'x', { lease });
      await lease.revoke();
      await until('the watch to see the put and the revoke', () => rec.summary().join('\n').includes('delete tls/leased'), 3000);
      assert.match(rec.summary().join('\n'), /put tls\/a=1/);
      const h = await s.health();
      assert.ok(h.ok, h.detail);
      await s.delete('tls/', { prefix: true });
    } finally {
      ac.abort();
      await s.close();
    }
  });

  test('a CA that did not sign the server certificate, or no CA: "certificate verify failed", at once', async () => {
    const other = makeCa(dir, 'other-ca');
    for (const [name, t] of [
      ['wrong CA', { ...mtls(), caFile: other.cert }],
      ['no CA (system roots)', { certFile: tls.clientCert, keyFile: tls.clientKey }],
    ] as const) {
      const s = open({ tls: t });
      try {
        const p = s.get('x');
        const err = await rejectsWith(p, 'tls', /certificate verify failed/);
        assert.match(err.message, new RegExp(endpoints()[0]!.replace(/\./g, '\\.')), `${name}: names the endpoint`);
        assert.match(err.hint ?? '', name === 'wrong CA' ? /other-ca\.crt did not sign/ : /--etcd-ca/, name);
        assert.equal(err.retryable, false);
        assert.ok((await elapsed(p)) < 1500, `${name}: not retried until the operation timeout`);
        await rejectsWith(s.watch('', 0, () => undefined, new AbortController().signal), 'tls');
      } finally {
        await s.close();
      }
    }
  });

  test('no client certificate, or one from another CA: etcd refuses it, and the error says so', async () => {
    const other = makeCa(dir, 'rogue-ca');
    const rogue = makeCert(dir, other, 'rogue', 'rogue', 'client');
    for (const [name, t, hint] of [
      ['no client certificate', { caFile: tls.ca }, /pass --etcd-cert and --etcd-key/],
      ['a client certificate from another CA', { caFile: tls.ca, certFile: rogue.cert, keyFile: rogue.key }, /etcd does not trust .*rogue\.crt/],
    ] as const) {
      const s = open({ tls: t });
      try {
        const err = await rejectsWith(s.put('x', 'y'), 'tls', /refused this client's TLS certificate/);
        assert.match(err.hint ?? '', hint, name);
      } finally {
        await s.close();
      }
    }
  });

  test('TLS options with an http:// URL, or a certificate without its key: refused up front', () => {
    assert.throws(() => new EtcdStore({ endpoints: ['http://127.0.0.2:1'], cluster: CLUSTER, tls: mtls() }), /not an https:\/\/ URL/);
    assert.throws(() => open({ tls: { caFile: tls.ca, certFile: tls.clientCert } }), /needs its key/);
    assert.throws(() => open({ tls: { caFile: join(dir, 'missing.crt') } }), /cannot read the etcd CA file .*missing\.crt/);
  });
});

describe('etcd users: each host writes only its own keys', { skip }, () => {
  const PASSWORD = { a: 'pw-a', b: 'pw-b' } as const;

  before(async () => {
    // Auth on, as an operator does it (docs/etcd-security.md): a root user, the admin role, a role per host.
    etcdctl(`etcdctl user add root --new-user-password=${ROOT_PASSWORD}\netcdctl auth enable`);
    for (const h of ['a', 'b'] as const) {
      const file = join(dir, `host-${h}.password`);
      await writeFile(file, `${PASSWORD[h]}\n`);
      await chmod(file, 0o600);
      etcdctl(etcdctlScript(hostRole(CLUSTER, h), `host ${h}`, file));
    }
    // Host c has no password: its client certificate's CN is its etcd user.
    etcdctl(etcdctlScript(hostRole(CLUSTER, 'c'), 'host c', undefined));
    etcdctl(etcdctlScript(adminRole(CLUSTER), 'admin', join(dir, 'host-a.password')));
  });

  test('host a writes its own keys, leases and elections; reads and watches everything', async () => {
    const a = open({ user: 'backplane-host-a', password: PASSWORD.a });
    const b = open({ user: 'backplane-host-b', password: PASSWORD.b });
    const ac = new AbortController();
    try {
      const rec = new Recorder();
      await a.watch(keys.exportedPrefix, 0, rec.onEvent, ac.signal);
      const lease = await a.lease(2000);
      await a.put(keys.node('a'), 'alive', { lease });
      await a.txn([
        { put: keys.exported('a', 'file', '/etc/motd'), value: 'm', lease },
        { put: `joins/a`, value: 'please' },
      ]);
      await b.put(keys.exported('b', 'file', '/etc/hosts'), 'h');
      await until("a's watch to see b's export", () => rec.summary().join('\n').includes('put exported/b/file/%2Fetc%2Fhosts=h'), 3000);
      assert.deepEqual((await a.list(keys.nodesPrefix)).kvs.map((kv) => kv.key), ['nodes/a']);
      const leader = await a.campaign('controller', 'a', 2000, ac.signal);
      await leader.resign();
      // etcd checks write permission on every key attached to a lease when it is revoked.
      await lease.revoke();
      assert.equal(await a.get(keys.node('a')), undefined);
      await a.delete(keys.exportedByHost('a'), { prefix: true });
    } finally {
      ac.abort();
      await a.close();
      await b.close();
    }
  });

  test("writing another host's keys is a permission error naming the key, the user and the recipe", async () => {
    const a = open({ user: 'backplane-host-a', password: PASSWORD.a });
    try {
      for (const [key, op] of [
        ['nodes/b', () => a.put(keys.node('b'), 'fake')],
        ['nodes/ab', () => a.put(keys.node('ab'), 'fake')],
        ['exported/b/file/x', () => a.put(keys.exported('b', 'file', 'x'), 'evil')],
        ['joins/b', () => a.put('joins/b', 'x')],
        ['trust/hosts', () => a.put('trust/hosts', 'forged')],
      ] as const) {
        const err = await rejectsWith(op(), 'permission', new RegExp(`etcd user "backplane-host-a" may not write key "${key}" in /backplane/prod/`));
        assert.match(err.hint ?? '', /backplane cluster etcd-roles --host/);
        assert.equal(err.retryable, false);
      }
      await rejectsWith(a.delete(keys.exportedPrefix, { prefix: true }), 'permission', /may not delete the keys under "exported\/"/);
      await rejectsWith(a.txn([{ put: keys.node('a'), value: 'ok' }, { put: keys.node('b'), value: 'no' }]), 'permission', /write keys "nodes\/a", "nodes\/b"/);
      assert.equal(await a.get(keys.node('a')), undefined, 'a refused transaction wrote nothing');
      // Outside the cluster's prefix even reads are refused.
      const other = new EtcdStore({ endpoints: endpoints(), cluster: 'other', tls: mtls(), auth: { user: 'backplane-host-a', password: PASSWORD.a } });
      await rejectsWith(other.get('nodes/x'), 'permission', /may not read key "nodes\/x" in \/backplane\/other\//).finally(() => other.close());
    } finally {
      await a.close();
    }
  });

  test('a client certificate whose CN is the user needs no password; the admin role writes anything', async () => {
    const c = makeCert(dir, { cert: tls.ca, key: tls.caKey }, 'host-c', 'backplane-host-c', 'client');
    const sc = open({ tls: { caFile: tls.ca, certFile: c.cert, keyFile: c.key } });
    const admin = open({ user: 'backplane-admin-prod', password: PASSWORD.a });
    try {
      await sc.put(keys.node('c'), 'alive');
      await rejectsWith(sc.put(keys.node('a'), 'x'), 'permission', /etcd user "backplane-host-c \(the CN of .*host-c\.crt\)" may not write key "nodes\/a"/);
      await admin.put('trust/hosts', 'signed list');
      await admin.delete('', { prefix: true });
    } finally {
      await sc.close();
      await admin.close();
    }
  });

  test('a wrong password or an unknown user: a clear auth error, not retried', async () => {
    for (const [user, password] of [['backplane-host-a', 'wrong'], ['nobody', 'x']] as const) {
      const s = open({ user, password });
      try {
        const p = s.get(keys.node('a'));
        const err = await rejectsWith(p, 'auth', new RegExp(`etcd refused etcd user "${user}": wrong user name or password`));
        assert.match(err.hint ?? '', /--etcd-password-file or BACKPLANE_ETCD_PASSWORD/);
        assert.ok((await elapsed(p)) < 1500);
        await rejectsWith(s.watch('', 0, () => undefined, new AbortController().signal), 'auth');
        await rejectsWith(s.lease(1000), 'auth');
      } finally {
        await s.close();
      }
    }
  });

  test('expired auth tokens and an etcd restart (all tokens gone) break neither a running watch nor a lease', async () => {
    const a = open({ user: 'backplane-host-a', password: PASSWORD.a });
    const b = open({ user: 'backplane-host-b', password: PASSWORD.b });
    const ac = new AbortController();
    try {
      const rec = new Recorder();
      await a.watch(keys.exportedPrefix, 0, rec.onEvent, ac.signal);
      const lease = await a.lease(3000);
      await a.put(keys.node('a'), 'alive', { lease });
      // Tokens live 2 s here and are renewed only by use: after 3.5 s idle, a's token is gone.
      await sleep(3500);
      await b.put(keys.exported('b', 'file', 'one'), '1');
      await until('the watch to see a write after the token expired', () => rec.summary().join('\n').includes('exported/b/file/one'), 3000);
      await a.put(keys.exported('a', 'file', 'x'), 'x'); // a unary call re-authenticates
      const later = new Recorder();
      await a.watch(keys.nodesPrefix, 0, later.onEvent, ac.signal); // a new watch after the expiry
      // A restart forgets every token; the watch streams reconnect with the stale one and must recover.
      await sleep(2500);
      await etcd!.kill(0);
      await etcd!.restart(0);
      await b.put(keys.exported('b', 'file', 'two'), '2');
      await b.put(keys.node('b'), 'alive');
      await until('the watch to resume after the restart', () => rec.summary().join('\n').includes('exported/b/file/two'), 8000);
      await until('the newer watch too', () => later.summary().join('\n').includes('put nodes/b=alive'), 8000);
      assert.equal(lease.lost.aborted, false, 'the lease survived token expiry and the restart');
      assert.equal((await a.get(keys.node('a')))?.value, 'alive');
      await lease.revoke();
      await b.delete(keys.node('b'));
    } finally {
      ac.abort();
      await a.close();
      await b.close();
    }
  });
});

describe('etcd client options', { skip }, () => {
  test('raw etcd3 sanity: the test CA really signed the server certificate', async () => {
    // Guards the test setup itself: a broken certificate chain would make every "clear error" test above vacuous.
    const raw = new Etcd3({ hosts: endpoints(), credentials: { rootCertificate: readFileSync(tls.ca), certChain: readFileSync(tls.clientCert), privateKey: readFileSync(tls.clientKey) }, auth: { username: 'root', password: ROOT_PASSWORD } });
    try {
      await raw.get('anything').string();
    } finally {
      raw.close();
    }
  });
});

describe('real agents over mutual TLS with etcd users: the recipe and host identity together', { skip }, () => {
  // Runs after the users suite above: auth is on, and users a, b and the admin exist with their roles.
  test('the CA host (admin user) approves b by token; b (its own role) publishes and collects; neither can be impersonated', async () => {
    const work = await mkdtemp(join(dir, 'agents-'));
    const tlsFlags = ['--etcd', endpoints().join(','), '--cluster', CLUSTER, '--etcd-ca', tls.ca, '--etcd-cert', tls.clientCert, '--etcd-key', tls.clientKey];
    const adminFlags = [...tlsFlags, '--etcd-user', 'backplane-admin-prod', '--etcd-password-file', join(dir, 'host-a.password')];
    const bFlags = [...tlsFlags, '--etcd-user', 'backplane-host-b', '--etcd-password-file', join(dir, 'host-b.password')];
    const stateA = join(work, 'state-a');
    const init = await runCli(['cluster', 'init', ...adminFlags, '--state-dir', stateA, '--hostname', 'a']);
    assert.equal(init.code, 0, init.stderr);
    const token = await runCli(['hosts', 'token', ...adminFlags, '--state-dir', stateA]);
    assert.equal(token.code, 0, token.stderr);
    await writeFile(join(work, 'token'), token.stdout, { mode: 0o600 });
    await writeFile(join(work, 'a.yaml'), `resources:\n  - { kind: file, name: ${work}/in, type: directory, purge: true }\ncollect:\n  - { kind: file, set: { path: "${work}/in/{host}-{basename}" } }\n`);
    await writeFile(join(work, 'b.yaml'), `resources:\n  - { kind: file, name: ${work}/b.txt, content: "from b\\n", export: true }\n`);
    const a = startCli(['run', '-f', join(work, 'a.yaml'), '--hostname', 'a', '--state-dir', stateA, ...adminFlags], { timeoutMs: 120_000 });
    const b = startCli(['run', '-f', join(work, 'b.yaml'), '--hostname', 'b', '--state-dir', join(work, 'state-b'), '--join-token-file', join(work, 'token'), ...bFlags], { timeoutMs: 120_000 });
    const store = open({ user: 'backplane-host-b', password: 'pw-b' });
    try {
      await a.waitFor(/approved host b .* with join token/, 20_000);
      await b.waitFor(/host b is approved/, 10_000);
      await until('b’s export collected on a', () => {
        try {
          return readFileSync(join(work, 'in', 'b-b.txt'), 'utf8') === 'from b\n';
        } catch {
          return false;
        }
      }, 10_000).catch(async () => {
        throw new Error(`a:\n${a.output()}\nb:\n${b.output()}`);
      });
      // b's own etcd user cannot touch the trust list or speak in a's name, whatever it tries.
      await rejectsWith(store.put(keys.trustHosts, 'x'), 'permission', /may not write key "trust\/hosts"/);
      await rejectsWith(store.put(keys.exported('a', 'file', '/etc/x'), 'x'), 'permission', /may not write key "exported\/a\//);
    } finally {
      await store.close();
      a.proc.kill('SIGTERM');
      b.proc.kill('SIGTERM');
      await Promise.all([a.exited, b.exited]);
    }
  });
});
