import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { EtcdStore } from '../../src/cluster/etcd-store.js';
import { generateKeyPair } from '../../src/cluster/identity.js';
import { keys } from '../../src/cluster/keys.js';
import { sealHosts, sealRecord, withHost } from '../../src/cluster/trust.js';
import { runCli, startCli, type RunningCli } from '../helpers/cli.js';
import { etcdAvailable, startEtcd, type EtcdCluster } from '../helpers/etcd.js';

/**
 * Host identity against an attacker who can write the store directly (etcd, no TLS or roles here: the worst case the
 * signatures alone must hold). Real agents: a holds the CA and collects every host's files into a/in; b joined with a
 * token and exports one file; c asks to join without a token and waits for the operator. The test process writes
 * forged, impersonated, moved, replayed and deleted records into etcd and checks that nothing of it is applied, that
 * each refusal is logged once, and that owners put their records back.
 */

let etcd: EtcdCluster;
let work: string;
let store: EtcdStore;
const CLUSTER = 'trust';
const agents = new Map<string, RunningCli>();

const exists = (p: string): Promise<boolean> => stat(p).then(() => true, () => false);
const read = (p: string): Promise<string | undefined> => readFile(p, 'utf8').catch(() => undefined);
const state = (h: string): string => join(work, `state-${h}`);
const common = (): string[] => ['--etcd', etcd.endpoints.join(','), '--cluster', CLUSTER];

async function writeGraph(host: string, text: string): Promise<void> {
  const p = join(work, `${host}.yaml`);
  await writeFile(`${p}.tmp`, text);
  await rename(`${p}.tmp`, p);
}

function exporter(host: string, version: number): string {
  return `resources:
  - { kind: file, name: ${work}/${host}/out.txt, content: "from ${host} v${version}\\n", export: true }
`;
}

function start(host: string, extra: string[] = []): RunningCli {
  const cli = startCli(['run', '--file', join(work, `${host}.yaml`), '--hostname', host, ...common(), '--state-dir', state(host), ...extra], { timeoutMs: 300_000 });
  agents.set(host, cli);
  return cli;
}

async function poll(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<number> {
  const t0 = performance.now();
  while (performance.now() - t0 < timeoutMs) {
    if (await check()) return performance.now() - t0;
    await sleep(20);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${[...agents].map(([h, a]) => `--- ${h}:\n${a.output().split('\n').slice(-25).join('\n')}`).join('\n')}`);
}

/** What a/in holds: file name -> content. */
async function collectedOnA(): Promise<Record<string, string>> {
  const dir = join(work, 'a', 'in');
  const out: Record<string, string> = {};
  for (const n of await readdir(dir).catch(() => [])) out[n] = (await read(join(dir, n))) ?? '';
  return out;
}

function count(text: string, re: RegExp): number {
  return text.split('\n').filter((l) => re.test(l)).length;
}

async function members(): Promise<{ host: string; verified: boolean; problem?: string }[]> {
  const r = await runCli(['cluster', 'members', ...common(), '--state-dir', state('a'), '--json']);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as { host: string; verified: boolean; problem?: string }[];
}

describe('nothing written to the store without an approved host key is applied (real etcd, real agents)', { skip: !etcdAvailable() && 'etcd is not installed' }, () => {
  before(async () => {
    etcd = await startEtcd({ members: 1 });
    work = await mkdtemp(join(tmpdir(), 'bp-trust-'));
    store = new EtcdStore({ endpoints: etcd.endpoints, cluster: CLUSTER });
    for (const h of ['a', 'b', 'c']) await mkdir(join(work, h), { recursive: true });
    const init = await runCli(['cluster', 'init', ...common(), '--state-dir', state('a'), '--hostname', 'a']);
    assert.equal(init.code, 0, init.stderr);
    const token = await runCli(['hosts', 'token', ...common(), '--state-dir', state('a')]);
    assert.equal(token.code, 0, token.stderr);
    await writeFile(join(work, 'token'), token.stdout, { mode: 0o600 });
    await writeGraph(
      'a',
      `resources:
  - { kind: file, name: ${work}/a/in, type: directory, purge: true }
collect:
  - { kind: file, set: { path: "${work}/a/in/{host}-{basename}" } }
`,
    );
    await writeGraph('b', exporter('b', 0));
    start('a');
    await agents.get('a')!.waitFor(/joined cluster/, 20_000);
    start('b', ['--join-token-file', join(work, 'token')]);
    await agents.get('b')!.waitFor(/host b is approved/, 20_000);
    await poll('b’s export collected on a', 15_000, async () => (await collectedOnA())['b-out.txt'] === 'from b v0\n');
  });

  after(async () => {
    for (const a of agents.values()) a.proc.kill('SIGKILL');
    await Promise.all([...agents.values()].map((a) => a.exited));
    await store?.close();
    await etcd?.stop();
    if (work !== undefined) await rm(work, { recursive: true, force: true });
  });

  test('forged, impersonated and moved exports of every dangerous parameter are refused, logged once, never applied', async () => {
    const secret = join(work, 'secret');
    await writeFile(secret, 'SECRET\n', { mode: 0o600 });
    const marker = join(work, 'pwned');
    const payloads: [string, string, Record<string, unknown>][] = [
      ['file', `${work}/x/source`, { source: secret, mode: '0644' }],
      ['file', `${work}/x/setuid`, { content: '#!/bin/sh\n', mode: '4755', owner: 'root' }],
      ['file', `${work}/x/link`, { type: 'link', target: secret }],
      ['exec', 'pwn', { cmd: ['touch', marker] }],
    ];
    const stranger = generateKeyPair();
    const written: [string, RegExp][] = [];
    for (const [kind, name, params] of payloads) {
      const body = JSON.stringify({ kind, name, params, to: '*' });
      const asB = keys.exported('b', kind, name);
      const asEvil = keys.exported('evil', kind, name);
      // Unsigned, in b's name.
      await store.put(asB, body);
      written.push([asB, /value is not a signed record/]);
      // Signed with a key that is not b's, in b's name.
      const imp = keys.exported('b', kind, `${name}-imp`);
      await store.put(imp, sealRecord(stranger, imp, Date.now(), JSON.stringify({ kind, name: `${name}-imp`, params, to: '*' })));
      written.push([imp, /the signature is not b's/]);
      // Signed by a host nobody approved.
      await store.put(asEvil, sealRecord(stranger, asEvil, Date.now(), body));
    }
    // A key that would drive the operator's terminal: logged with its control characters escaped.
    await store.put('exported/evil\u001b[2J/file/x', '{}');
    written.push(['exported/evil\\x1b[2J/file/x', /is not a valid host name/]);
    // b's real, signed export copied under another name: the signature binds the key.
    const real = await store.get(keys.exported('b', 'file', `${work}/b/out.txt`));
    assert.ok(real !== undefined);
    const moved = keys.exported('b', 'file', `${work}/b/moved.txt`);
    await store.put(moved, real.value);
    written.push([moved, /moved from another key/]);

    const a = agents.get('a')!;
    for (const [key, why] of written) await a.waitFor(new RegExp(`ignoring cluster data at ${escape(key)}: .*${why.source}`), 10_000);
    await a.waitFor(/ignoring cluster data at exported\/evil\/.*host "evil" is not approved/, 10_000);

    // Written again and again, each is still one line, and none is applied.
    for (let i = 0; i < 5; i++) for (const [key] of written.slice(0, 2)) await store.put(key, JSON.stringify({ junk: i }));
    for (let i = 0; i < 5; i++) await store.put(written[0]![0], (await store.get(written[0]![0]))!.value.replace(/"junk":\d/, '"junk":0'));
    await sleep(1000);
    const out = a.output();
    assert.equal(count(out, /host "evil" is not approved/), 1, out);
    for (const [key, why] of written.slice(2)) assert.equal(count(out, new RegExp(`${escape(key)}: .*${why.source}`)), 1, `${key}\n${out}`);
    assert.ok(!out.includes('\u001b[2J'), 'a raw escape sequence reached the log');
    assert.deepEqual(await collectedOnA(), { 'b-out.txt': 'from b v0\n' });
    assert.equal(await exists(marker), false);
    assert.equal(await exists(join(work, 'x')), false);
    assert.doesNotMatch(out, /(\/x\/(source|setuid|link)|pwn|moved\.txt)[^\n]*\]: (created|ran)/);
  });

  test('a fake member record is not a member; an impersonated one is put back by its owner', async () => {
    const fake = JSON.stringify({ host: 'ghost', facts: {}, labels: {}, startedAt: '', version: '', free: { cpus: 64, memory: 1e12 } });
    await store.put(keys.node('ghost'), fake);
    await store.put(keys.node('b'), fake.replace('ghost', 'b'));
    const ms = await poll('b’s membership record put back', 5000, async () => (await members()).find((m) => m.host === 'b')?.verified === true);
    const list = await members();
    assert.equal(list.find((m) => m.host === 'ghost')?.verified, false);
    assert.match(list.find((m) => m.host === 'ghost')?.problem ?? '', /"ghost" is not approved/);
    assert.match(agents.get('b')!.output(), /membership record was changed or deleted in the store by someone else; putting it back/);
    const text = await runCli(['cluster', 'members', ...common(), '--state-dir', state('a')]);
    assert.match(text.stdout, /^ghost\s+UNVERIFIED/m, text.stderr);
    assert.match(text.stdout, /^b\s+alive/m);
    assert.ok(ms < 5000);
    await store.delete(keys.node('ghost'));
  });

  test('an export deleted or replaced by an older signed copy is put back by its owner; collectors refuse the replay', async () => {
    const key = keys.exported('b', 'file', `${work}/b/out.txt`);
    const v0 = (await store.get(key))!.value;
    await writeGraph('b', exporter('b', 1));
    await poll('b v1 on a', 10_000, async () => (await collectedOnA())['b-out.txt'] === 'from b v1\n');

    const t0 = performance.now();
    await store.delete(key);
    await poll('the deleted export back in the store', 5000, async () => (await store.get(key)) !== undefined);
    const back = performance.now() - t0;
    assert.ok(back < 5000, `${back} ms`);

    await store.put(key, v0); // b's own signature, an older sequence number
    await agents.get('a')!.waitFor(/ignoring cluster data at .*out\.txt: it is an older signed value .* a replay/, 5000);
    await poll('b’s current export put back over the replay', 5000, async () => (await store.get(key))?.value !== v0);
    await sleep(300);
    assert.equal((await collectedOnA())['b-out.txt'], 'from b v1\n', 'the replayed v0 was never applied');
    assert.doesNotMatch(agents.get('a')!.output(), /b-out\.txt\]: content changed.*\n.*v0/);
  });

  test('a host without a token waits for approval; approved, it is collected; revoked, it is dropped everywhere; a rolled-back or forged hosts list changes nothing', async () => {
    const fp = /CA (sha256:\S+),/.exec((await runCli(['hosts', 'list', ...common(), '--state-dir', state('a')])).stdout)?.[1];
    assert.ok(fp !== undefined);
    await writeGraph('c', exporter('c', 0));
    const c = start('c', ['--ca-fingerprint', fp]);
    await c.waitFor(/host c is waiting to be approved .*backplane hosts approve c/, 15_000);
    await agents.get('a')!.waitFor(/host c asks to join/, 10_000);
    await agents.get('a')!.waitFor(/ignoring cluster data at exported\/c\/.*host "c" is not approved/, 10_000);
    const listed = await runCli(['hosts', 'list', ...common(), '--state-dir', state('a')]);
    assert.match(listed.stdout, /^c\s+pending\s+sha256:/m, listed.stderr);
    assert.equal((await collectedOnA())['c-out.txt'], undefined);

    const before = (await store.get(keys.trustHosts))!.value;
    const approved = await runCli(['hosts', 'approve', 'c', ...common(), '--state-dir', state('a')]);
    assert.equal(approved.code, 0, approved.stderr);
    await c.waitFor(/host c is approved/, 10_000);
    await poll('c’s export collected on a', 10_000, async () => (await collectedOnA())['c-out.txt'] === 'from c v0\n');
    const approvedList = (await store.get(keys.trustHosts))!.value;

    const revoked = await runCli(['hosts', 'revoke', 'c', ...common(), '--state-dir', state('a')]);
    assert.equal(revoked.code, 0, revoked.stderr);
    await poll('c’s export dropped on a', 10_000, async () => (await collectedOnA())['c-out.txt'] === undefined);
    await c.waitFor(/host c has been revoked/, 10_000);

    // The list from before the revocation, signed by the real CA: a rollback, refused by every reader.
    await store.put(keys.trustHosts, approvedList);
    await agents.get('b')!.waitFor(/ignoring trust\/hosts in the store: .*rollback/, 5000);
    // A list signed by some other key, approving a stranger.
    const stranger = generateKeyPair();
    await store.put(keys.trustHosts, sealHosts(stranger, withHost({ serial: 99, issuedAt: '', hosts: {} }, 'c', { publicKey: stranger.publicKey, state: 'approved', since: '' })));
    await agents.get('b')!.waitFor(/ignoring trust\/hosts in the store: the signature is not the cluster CA's/, 5000);
    // A forged CA key in the store changes nothing for hosts that pinned the real one.
    await store.put(keys.trustCa, JSON.stringify({ publicKey: stranger.publicKey }));
    await sleep(800);
    assert.equal((await collectedOnA())['c-out.txt'], undefined, 'c stays revoked');
    assert.equal((await collectedOnA())['b-out.txt'], 'from b v1\n', 'b is still believed');
    // a holds the CA: it puts the real list and key back.
    await poll('the CA host repairs trust/', 5000, async () => {
      const ca = await store.get(keys.trustCa);
      const hosts = await store.get(keys.trustHosts);
      return ca !== undefined && !ca.value.includes(stranger.publicKey) && hosts !== undefined && hosts.value !== approvedList && !hosts.value.includes('"serial":99');
    });
    assert.notEqual(before, approvedList);
  });

  test('a join request with a wrong token proof, or for a name already taken, is not approved', async () => {
    const k = generateKeyPair();
    const tokenId = /^bp1\.([0-9a-f]{8})\./.exec(await readFile(join(work, 'token'), 'utf8'))![1]!;
    await store.put(keys.join('d'), JSON.stringify({ host: 'd', publicKey: k.publicKey, at: new Date().toISOString(), token: tokenId, mac: '00'.repeat(32) }));
    await agents.get('a')!.waitFor(/not approving d: .*(proof of token .* is wrong|used up)/, 10_000);
    // Rewritten again and again, the same bad request is one line, not one per write.
    for (let i = 0; i < 4; i++) {
      await store.put(keys.join('d'), JSON.stringify({ host: 'd', publicKey: k.publicKey, at: `again ${i}`, token: tokenId, mac: '00'.repeat(32) }));
    }
    await sleep(700);
    assert.equal(count(agents.get('a')!.output(), /not approving d: /), 1, agents.get('a')!.output());
    const fresh = await runCli(['hosts', 'token', ...common(), '--state-dir', state('a')]);
    const freshId = /^bp1\.([0-9a-f]{8})\./.exec(fresh.stdout)![1]!;
    await store.put(keys.join('b'), JSON.stringify({ host: 'b', publicKey: k.publicKey, at: new Date().toISOString(), token: freshId, mac: '00'.repeat(32) }));
    await agents.get('a')!.waitFor(/not approving b by token: that name is already approved with another key/, 10_000);
    const list = await runCli(['hosts', 'list', ...common(), '--state-dir', state('a'), '--json']);
    const parsed = JSON.parse(list.stdout) as { hosts: { host: string; state: string }[] };
    assert.equal(parsed.hosts.find((h) => h.host === 'd'), undefined);
    // The CA's own host cannot be revoked from itself (its agent would approve itself again).
    const self = await runCli(['hosts', 'revoke', 'a', ...common(), '--state-dir', state('a')]);
    assert.equal(self.code, 2);
    assert.match(self.stderr, /"a" is this host, which holds the cluster CA/);
  });

  test('joining while the CA host is down: a host that published before it was approved is collected by the CA host as soon as that host approves it', async () => {
    const a = agents.get('a')!;
    a.proc.kill('SIGTERM');
    await a.exited;
    const token = await runCli(['hosts', 'token', ...common(), '--state-dir', state('a')]);
    assert.equal(token.code, 0, token.stderr);
    await writeFile(join(work, 'token-d'), token.stdout, { mode: 0o600 });
    await mkdir(join(work, 'd'), { recursive: true });
    await writeGraph('d', exporter('d', 0));
    const d = start('d', ['--join-token-file', join(work, 'token-d')]);
    await d.waitFor(/host d is waiting to be approved/, 15_000);
    await d.waitFor(/joined cluster/, 15_000);
    await poll('d’s export in the store', 5000, async () => (await store.get(keys.exported('d', 'file', `${work}/d/out.txt`))) !== undefined);
    const again = start('a');
    await again.waitFor(/approved host d .* with join token/, 15_000);
    await poll('d’s export collected on a', 10_000, async () => (await collectedOnA())['d-out.txt'] === 'from d v0\n');
  });

  test('an approved host that misbehaves: its signed exports that choose power parameters the collector does not take are refused, logged once', async () => {
    const secret = join(work, 'secret2');
    await writeFile(secret, 'SECRET\n', { mode: 0o600 });
    await writeGraph(
      'b',
      `${exporter('b', 2)}  - { kind: file, name: ${work}/b/copy, source: ${secret}, mode: "0644", export: true }
  - { kind: file, name: ${work}/b/suid, content: "#!/bin/sh\\n", mode: "4755", export: true }
  - { kind: file, name: ${work}/b/owned, content: "x\\n", owner: root, export: true }
`,
    );
    const a = agents.get('a')!;
    await poll('b v2 on a', 10_000, async () => (await collectedOnA())['b-out.txt'] === 'from b v2\n');
    for (const [name, param] of [['copy', 'source'], ['suid', 'mode'], ['owned', 'owner']] as const) {
      await a.waitFor(new RegExp(`not collecting file\\[${escape(`${work}/b/${name}`)}\\] exported by b: .*'${param}'`), 10_000);
    }
    await sleep(500);
    assert.deepEqual(Object.keys(await collectedOnA()).sort(), ['b-out.txt', 'd-out.txt']);
    assert.equal(count(a.output(), /not collecting file\[.*\/b\/copy\]/), 1);
  });

  test('kv: a host publishes a signed value under its own name, puts it back when someone else changes it, withdraws it when removed', async () => {
    const kvList = async (): Promise<{ host: string; key: string; value?: string; verified: boolean; problem?: string }[]> => {
      const r = await runCli(['cluster', 'kv', ...common(), '--state-dir', state('a'), '--json']);
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout) as { host: string; key: string; value?: string; verified: boolean }[];
    };
    const key = keys.kv('b', 'greeting');
    await writeGraph('b', `${exporter('b', 3)}  - { kind: kv, name: greeting, value: hello }\n`);
    await poll('b’s kv value in the store', 10_000, async () => (await kvList()).some((e) => e.host === 'b' && e.key === 'greeting' && e.value === 'hello' && e.verified));
    // Someone else writes b's key: readers refuse it, and b puts its own signed value back.
    const evil = JSON.stringify({ value: 'evil' });
    await store.put(key, evil);
    await poll('b’s value put back', 5000, async () => {
      const now = await store.get(key);
      return now !== undefined && now.value !== evil && (await kvList()).some((e) => e.host === 'b' && e.key === 'greeting' && e.value === 'hello' && e.verified);
    });
    await store.put(keys.kv('ghost', 'greeting'), sealRecord(generateKeyPair(), keys.kv('ghost', 'greeting'), 1, JSON.stringify({ value: 'boo' })));
    const list = await kvList();
    assert.equal(list.find((e) => e.host === 'ghost')?.verified, false);
    assert.match(list.find((e) => e.host === 'ghost')?.problem ?? '', /"ghost" is not approved/);
    // Removed from the graph: withdrawn.
    await writeGraph('b', exporter('b', 3));
    await poll('b’s kv value withdrawn', 10_000, async () => (await store.get(key)) === undefined);
  });
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
