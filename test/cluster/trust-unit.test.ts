import assert from 'node:assert/strict';
import { chmod, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fingerprint, generateKeyPair, readPrivateFile } from '../../src/cluster/identity.js';
import { keys } from '../../src/cluster/keys.js';
import { approve, joinMac, parseToken, revoke, sealHosts, sealRecord, TrustFiles, TrustView, withHost, type HostsDoc } from '../../src/cluster/trust.js';

/** The pure parts of host identity: what a reader believes, given a CA key, a hosts list and a value. */

const ca = generateKeyPair();
const a = generateKeyPair();
const b = generateKeyPair();
const empty: HostsDoc = { serial: 0, issuedAt: '', hosts: {} };
const since = '2026-12-01T00:00:00.000Z';
const doc1 = withHost(withHost(empty, 'a', { publicKey: a.publicKey, state: 'approved', since }), 'b', { publicKey: b.publicKey, state: 'approved', since });

function viewWith(doc: HostsDoc): TrustView {
  const v = new TrustView(ca.publicKey);
  assert.equal(v.adopt(sealHosts(ca, doc)), 'newer');
  return v;
}

describe('signed records', () => {
  const key = keys.exported('b', 'file', '/etc/motd');
  const body = JSON.stringify({ kind: 'file', name: '/etc/motd', params: { content: 'hi' }, to: '*' });

  test('a record signed by an approved host verifies; its body comes back exactly', () => {
    const v = viewWith(doc1).verify('b', key, sealRecord(b, key, 7, body));
    assert.deepEqual(v, { ok: true, body, seq: 7 });
  });

  test('unsigned, forged, impersonated, moved and tampered records are refused with the reason', () => {
    const view = viewWith(doc1);
    const cases: [string, string, string, RegExp][] = [
      ['unsigned JSON', 'b', body, /not a signed record/],
      ['not JSON', 'b', '{', /not JSON/],
      ['signed by a, claims b', 'b', sealRecord(a, key, 1, body), /signature is not b's/],
      ['signed by a stranger', 'b', sealRecord(generateKeyPair(), key, 1, body), /signature is not b's/],
      ['moved from another key', 'b', sealRecord(b, keys.exported('b', 'file', '/tmp/x'), 1, body), /moved from another key/],
      ['body altered after signing', 'b', sealRecord(b, key, 1, body).replace('hi', 'ho'), /signature is not b's/],
      ['seq altered after signing', 'b', sealRecord(b, key, 1, body).replace('"seq":1', '"seq":2'), /signature is not b's/],
      ['a host nobody approved', 'evil', sealRecord(generateKeyPair(), keys.exported('evil', 'file', '/etc/motd'), 1, body), /"evil" is not approved/],
    ];
    for (const [what, host, value, why] of cases) {
      const v = view.verify(host, host === 'evil' ? keys.exported('evil', 'file', '/etc/motd') : key, value);
      assert.equal(v.ok, false, what);
      if (!v.ok) assert.match(v.why, why, what);
    }
  });

  test('a revoked host is refused even with a good signature', () => {
    const view = viewWith(revoke('b')(doc1)!);
    const v = view.verify('b', key, sealRecord(b, key, 1, body));
    assert.equal(v.ok, false);
    if (!v.ok) assert.match(v.why, /revoked/);
  });
});

describe('the hosts list', () => {
  test('only the CA signs it; an older serial is a rollback; a different list under the same serial is refused', () => {
    const view = viewWith(doc1);
    const doc2 = revoke('b')(doc1)!;
    assert.equal(view.adopt(sealHosts(ca, doc2)), 'newer');
    assert.equal(view.state('b'), 'revoked');
    assert.match(view.adopt(sealHosts(ca, doc1)), /older than serial 3.*rollback/);
    assert.equal(view.state('b'), 'revoked', 'a rolled-back list does not un-revoke');
    assert.match(view.adopt(sealHosts(generateKeyPair(), withHost(doc2, 'evil', { publicKey: a.publicKey, state: 'approved', since }))), /not the cluster CA's/);
    const sameSerial: HostsDoc = { ...doc2, hosts: { ...doc2.hosts, evil: { publicKey: a.publicKey, state: 'approved', since } } };
    assert.match(view.adopt(sealHosts(ca, sameSerial)), /differs from the document with the same serial/);
    assert.equal(view.adopt(sealHosts(ca, doc2)), 'same');
    assert.equal(view.keyOf('evil'), undefined);
  });

  test('approve refuses to replace a key unless asked; revoke of an unknown host is an error', () => {
    const other = generateKeyPair();
    assert.throws(() => approve('a', other.publicKey, false)(doc1), /already|approved with another key/);
    assert.equal(approve('a', other.publicKey, true)(doc1)?.hosts['a']?.publicKey, other.publicKey);
    assert.equal(approve('a', a.publicKey, false)(doc1), undefined, 'already approved: no new serial');
    assert.throws(() => revoke('nobody')(doc1), /never approved/);
  });
});

describe('trust files and join tokens', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bp-trust-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('keys are made once, 0600, and the same key comes back', async () => {
    const files = await TrustFiles.open(dir, 'embedded');
    const k1 = await files.hostKey();
    const k2 = await files.hostKey();
    assert.equal(k1.publicKey, k2.publicKey);
    assert.ok((await readFile(join(dir, 'trust', 'host.key'), 'utf8')).includes('PRIVATE KEY'));
    const ca1 = await files.createCaKey();
    assert.equal((await files.caKey())?.publicKey, ca1.publicKey);
  });

  test('a key file others can read, or a symlink, is refused, not trusted', async () => {
    const p = join(dir, 'loose.key');
    await writeFile(p, 'x', { mode: 0o644 });
    await chmod(p, 0o644);
    await assert.rejects(readPrivateFile(p), /mode 644; a key must be private/);
    const l = join(dir, 'link.key');
    await symlink(join(dir, 'trust', 'host.key'), l);
    await assert.rejects(readPrivateFile(l), /is a symlink/);
  });

  test('a token is redeemed only with its secret, for the host and key it was made for, and only as often as allowed', async () => {
    const files = await TrustFiles.open(dir, 'etcd-t');
    await files.createCaKey();
    const { token } = await files.createToken(60_000, 1);
    const t = parseToken(token);
    assert.equal(t.caFingerprint, fingerprint((await files.caKey())!.publicKey));
    const req = { host: 'b', publicKey: b.publicKey, at: since, token: t.id };
    assert.match(String(await files.redeem({ ...req, mac: joinMac('00'.repeat(16), 'b', b.publicKey) })), /proof of token .* is wrong/);
    assert.match(String(await files.redeem({ ...req, mac: joinMac(t.secret, 'c', b.publicKey) })), /is wrong/, 'made for another host name');
    assert.match(String(await files.redeem({ ...req, mac: joinMac(t.secret, 'b', a.publicKey) })), /is wrong/, 'made for another key');
    assert.match(String(await files.redeem({ host: 'b', publicKey: b.publicKey, at: since })), /no join token/);
    assert.equal(await files.redeem({ ...req, mac: joinMac(t.secret, 'b', b.publicKey) }), true);
    assert.match(String(await files.redeem({ ...req, mac: joinMac(t.secret, 'b', b.publicKey) })), /used up/);
    const expired = parseToken((await files.createToken(-1, 5)).token);
    assert.match(String(await files.redeem({ ...req, token: expired.id, mac: joinMac(expired.secret, 'b', b.publicKey) })), /unknown|expired/);
    assert.throws(() => parseToken('bp1.nope'), /not valid/);
  });
});
