import assert from 'node:assert/strict';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { etcdConnection, type EtcdFlags } from '../../src/cli/etcd-flags.js';
import { hostRole } from '../../src/cluster/etcd-roles.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bp-etcd-flags-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const base: EtcdFlags = { etcd: 'https://10.0.0.1:2379, https://10.0.0.2:2379', cluster: 'prod' };

async function passwordFile(name: string, text: string, mode: number): Promise<string> {
  const f = join(dir, name);
  await writeFile(f, text);
  await chmod(f, mode);
  return f;
}

describe('etcd flags', () => {
  test('TLS files and a user with a password file make the EtcdStore options', async () => {
    const f = await passwordFile('ok', 'p@ss word\nignored second line\n', 0o600);
    const c = etcdConnection({ ...base, etcdCa: 'ca.crt', etcdCert: 'c.crt', etcdKey: 'c.key', etcdUser: 'backplane-host-a', etcdPasswordFile: f }, {});
    assert.deepEqual(c, {
      endpoints: ['https://10.0.0.1:2379', 'https://10.0.0.2:2379'],
      cluster: 'prod',
      tls: { caFile: 'ca.crt', certFile: 'c.crt', keyFile: 'c.key' },
      auth: { user: 'backplane-host-a', password: 'p@ss word' },
    });
  });

  test('the password may come from BACKPLANE_ETCD_PASSWORD; the file wins over it', async () => {
    assert.deepEqual(etcdConnection({ ...base, etcdUser: 'u' }, { BACKPLANE_ETCD_PASSWORD: 'from-env' })?.auth, { user: 'u', password: 'from-env' });
    const f = await passwordFile('wins', 'from-file', 0o400);
    assert.deepEqual(etcdConnection({ ...base, etcdUser: 'u', etcdPasswordFile: f }, { BACKPLANE_ETCD_PASSWORD: 'from-env' })?.auth, { user: 'u', password: 'from-file' });
  });

  test('a password file readable or writable by group or others is refused, naming the file and the fix', async () => {
    for (const mode of [0o644, 0o640, 0o604, 0o620]) {
      const f = await passwordFile(`open-${mode.toString(8)}`, 'secret', mode);
      assert.throws(
        () => etcdConnection({ ...base, etcdUser: 'u', etcdPasswordFile: f }, {}),
        (err: Error & { hint?: string }) => {
          assert.match(err.message, new RegExp(`${f} is accessible by group or others \\(mode 0${mode.toString(8)}\\)`));
          assert.equal(err.hint, `chmod 600 ${f}`);
          return true;
        },
      );
    }
  });

  test('mistakes: a user without a password, a password without a user, TLS on http, TLS flags without --etcd', async () => {
    assert.throws(() => etcdConnection({ ...base, etcdUser: 'u' }, {}), /--etcd-user u needs a password/);
    assert.throws(() => etcdConnection({ ...base }, { BACKPLANE_ETCD_PASSWORD: 'x' }), /BACKPLANE_ETCD_PASSWORD is set, but --etcd-user is not/);
    assert.throws(() => etcdConnection({ ...base, etcdPasswordFile: 'f' }, {}), /--etcd-password-file needs --etcd-user/);
    assert.throws(() => etcdConnection({ ...base, etcdUser: 'u', etcdPasswordFile: join(dir, 'missing') }, {}), /cannot read the etcd password file .*missing/);
    const empty = await passwordFile('empty', '\n', 0o600);
    assert.throws(() => etcdConnection({ ...base, etcdUser: 'u', etcdPasswordFile: empty }, {}), /is empty/);
    assert.throws(() => etcdConnection({ ...base, etcd: 'http://10.0.0.1:2379', etcdCa: 'ca.crt' }, {}), /need https:\/\/ URLs, but got http:\/\/10\.0\.0\.1:2379/);
    assert.throws(() => etcdConnection({ ...base, etcdCert: 'c.crt' }, {}), /--etcd-cert and --etcd-key go together/);
    assert.throws(() => etcdConnection({ cluster: 'prod', etcdCa: 'ca.crt', etcdUser: 'u' }, {}), /--etcd-ca, --etcd-user only apply with --etcd/);
    assert.equal(etcdConnection({ cluster: 'prod' }, {}), undefined, 'no --etcd: the embedded store');
  });

  test("a host's role covers its own keys exactly, with the host name percent-encoded as in keys.ts", () => {
    const r = hostRole('prod', 'web/1');
    assert.equal(r.role, 'backplane-host-web/1');
    assert.deepEqual(
      r.grants.map((g) => `${g.permission} ${g.key}${g.prefix ? '*' : ''}`),
      [
        'read /backplane/prod/*',
        'readwrite /backplane/prod/nodes/web%2F1',
        'readwrite /backplane/prod/exported/web%2F1/*',
        'readwrite /backplane/prod/kv/web%2F1/*',
        'readwrite /backplane/prod/joins/web%2F1',
        'readwrite /backplane/prod/election/*',
      ],
    );
  });
});
