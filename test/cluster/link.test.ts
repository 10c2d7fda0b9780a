import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { EmbeddedStore } from '../../src/cluster/embedded-store.js';
import { generateKeyPair, type KeyPair } from '../../src/cluster/identity.js';
import { keys } from '../../src/cluster/keys.js';
import { campaign } from '../../src/cluster/election.js';
import { ClusterLink, type NodeRecord } from '../../src/cluster/link.js';
import type { KeyValue, Lease, Store } from '../../src/cluster/store.js';
import { approve, joinMac, parseToken, sealRecord, TrustFiles, TrustView, updateHosts } from '../../src/cluster/trust.js';
import type { ExportEntry } from '../../src/graph/collect.js';
import { createLogger, type Logger } from '../../src/log.js';
import { until } from '../helpers/engine.js';

/**
 * The cluster link against a real embedded store and real signatures: what it hands the agent (and how often), how
 * the CA's holder approves hosts that join at once, and how it recovers a lease the store no longer honours.
 */

const log = createLogger({ level: 'silent' });
const since = '2026-12-02T00:00:00.000Z';

function record(host: string): NodeRecord {
  return {
    host,
    facts: { hostname: host, fqdn: host, os: { platform: 'linux', release: '6', arch: 'x64' }, cpus: 2, memory: { total: 8e9, free: 4e9 }, interfaces: {}, ipv4: '127.0.0.1' },
    labels: {},
    startedAt: since,
    version: 'test',
    free: { cpus: 2, memory: 4e9 },
  };
}

/** The CA's holder 'a' on `store`: it approves itself; `exports` records every list it is handed. */
async function caLink(
  store: Store,
  stateDir: string,
  opts: { wrap?: (s: Store) => Store; wrapFiles?: (f: TrustFiles) => TrustFiles; log?: Logger } = {},
): Promise<{ link: ClusterLink; files: TrustFiles; ca: KeyPair; exports: ExportEntry[][] }> {
  const opened = await TrustFiles.open(stateDir, 'embedded');
  const files = opts.wrapFiles?.(opened) ?? opened;
  const ca = await files.createCaKey();
  const hostKey = await files.hostKey();
  const link = new ClusterLink({ store: opts.wrap?.(store) ?? store, host: 'a', log: opts.log ?? log, identity: { files, hostKey, ca }, record: () => record('a'), leaseTtlMs: 1000 });
  const exports: ExportEntry[][] = [];
  await link.start((entries) => exports.push([...entries]));
  return { link, files, ca, exports };
}

function exportValue(signer: KeyPair, host: string, path: string, content: string, to: '*' | string[] = '*'): { key: string; value: string } {
  const key = keys.exported(host, 'file', path);
  return { key, value: sealRecord(signer, key, Date.now(), JSON.stringify({ kind: 'file', name: path, params: { content }, to })) };
}

describe('cluster link', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bp-link-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('the agent hears about exports only when what it collects changed, not on every write under exported/', async () => {
    const store = await EmbeddedStore.open({ dir: join(dir, 'emit-store') });
    const { link, ca, exports } = await caLink(store, join(dir, 'emit-state'));
    try {
      const b = generateKeyPair();
      const view = new TrustView(ca.publicKey);
      await updateHosts(store, ca, view, approve('b', b.publicKey, false));
      await until(() => link.trust?.keyOf('b') === b.publicKey, 5000, 'b approved on the link');

      const real = async (content: string): Promise<void> => {
        const before = exports.length;
        const v = exportValue(b, 'b', '/etc/motd', content);
        await store.put(v.key, v.value);
        await until(() => exports.length > before && exports.at(-1)?.some((e) => e.resource.params['content'] === content) === true, 5000, `export "${content}" handed over`);
      };
      await real('one');
      const count = exports.length;

      // Writes that change nothing this host collects: an export addressed to another host, a forged one, one from
      // a host nobody approved, and the very same signed value written again.
      const forOther = exportValue(b, 'b', '/etc/other', 'x', ['c']);
      await store.put(forOther.key, forOther.value);
      const forged = exportValue(generateKeyPair(), 'b', '/etc/forged', 'x');
      await store.put(forged.key, forged.value);
      const stranger = exportValue(generateKeyPair(), 'z', '/etc/z', 'x');
      await store.put(stranger.key, stranger.value);
      const same = await store.get(keys.exported('b', 'file', '/etc/motd'));
      assert.ok(same !== undefined);
      await store.put(same.key, same.value);
      // A hosts list that approves a host with nothing exported yet.
      await updateHosts(store, ca, view, approve('c', generateKeyPair().publicKey, false));
      await until(() => link.trust?.state('c') === 'approved', 5000, 'c approved on the link');

      // Watch events arrive in order: once a real change is handed over, every write above has been looked at.
      await real('two');
      assert.equal(exports.length, count + 1, 'only the real change was handed over');
    } finally {
      await link.close();
      await store.close();
    }
  });

  test('an export that did not change is handed over as the same entry, also after a new hosts list re-judged everything', async () => {
    const store = await EmbeddedStore.open({ dir: join(dir, 'same-store') });
    const { link, ca, exports } = await caLink(store, join(dir, 'same-state'));
    try {
      const b = generateKeyPair();
      const view = new TrustView(ca.publicKey);
      await updateHosts(store, ca, view, approve('b', b.publicKey, false));
      await until(() => link.trust?.keyOf('b') === b.publicKey, 5000, 'b approved on the link');
      const put = async (path: string, content: string): Promise<ExportEntry[]> => {
        const v = exportValue(b, 'b', path, content);
        await store.put(v.key, v.value);
        await until(() => exports.at(-1)?.some((e) => e.resource.name === path && e.resource.params['content'] === content) === true, 5000, `${path} "${content}" handed over`);
        return exports.at(-1) ?? [];
      };
      const motd = (list: readonly ExportEntry[]): ExportEntry | undefined => list.find((e) => e.resource.name === '/etc/motd');
      const first = motd(await put('/etc/motd', 'one'));
      assert.ok(first !== undefined);
      assert.equal(motd(await put('/etc/issue', 'x')), first, 'another export changed: the same entry');
      // A new hosts list makes the link judge every export again.
      await updateHosts(store, ca, view, approve('c', generateKeyPair().publicKey, false));
      await until(() => link.trust?.state('c') === 'approved', 5000, 'c approved on the link');
      assert.equal(motd(await put('/etc/issue', 'y')), first, 're-judged, unchanged: the same entry');
      const changed = motd(await put('/etc/motd', 'two'));
      assert.notEqual(changed, first);
      assert.equal(changed?.resource.params['content'], 'two');
    } finally {
      await link.close();
      await store.close();
    }
  });

  test("this host's export changes are written once, their own watch echo is not taken for someone else's change, and someone else's change during the write is put back", async () => {
    const store = await EmbeddedStore.open({ dir: join(dir, 'echo-store') });
    const warnings: string[] = [];
    const quiet = createLogger({ level: 'warn', write: (line) => warnings.push(line) });
    const path = join(dir, 'echo');
    const key = keys.exported('a', 'file', path);
    let writes = 0;
    // Set by the test: runs after the link's write has landed in the store and before the link hears it has.
    let meanwhile: (() => Promise<void>) | undefined;
    const counting = (s: Store): Store =>
      new Proxy(s, {
        get(target, prop, receiver) {
          if (prop === 'txn') {
            return async (...args: Parameters<Store['txn']>) => {
              if (args[0].some((op) => ('put' in op ? op.put : op.delete) === key)) writes++;
              const r = await target.txn(...args);
              const m = meanwhile;
              meanwhile = undefined;
              await m?.();
              // The watch echo of the write is delivered before the write's own answer.
              await sleep(20);
              return r;
            };
          }
          const v: unknown = Reflect.get(target, prop, receiver);
          return typeof v === 'function' ? (v as (...args: unknown[]) => unknown).bind(target) : v;
        },
      });
    const { link } = await caLink(store, join(dir, 'echo-state'), { wrap: counting, log: quiet });
    const publish = (content: string): Promise<void> => link.publish([{ kind: 'file', name: path, params: { content }, meta: undefined, to: '*' }]);
    /** The export's content as the store holds it now (its raw value when it is not a record at all). */
    const content = async (): Promise<unknown> => {
      const kv = await store.get(key);
      if (kv === undefined) return undefined;
      try {
        return (JSON.parse((JSON.parse(kv.value) as { body: string }).body) as { params: { content: unknown } }).params.content;
      } catch {
        return kv.value;
      }
    };
    try {
      await publish('one');
      await publish('two');
      await sleep(100);
      assert.equal(writes, 2, 'one write per change');
      assert.deepEqual(warnings.filter((w) => /someone else/.test(w)), [], 'no echo taken for a stranger');
      assert.equal(await content(), 'two');

      // Someone overwrites the export right after the link's next write: it is put back.
      meanwhile = async () => {
        await store.put(key, 'forged');
      };
      await publish('three');
      await until(async () => (await content()) === 'three', 5000, 'the export put back');
      assert.ok(warnings.some((w) => /someone else/.test(w)), 'and said so');
    } finally {
      await link.close();
      await store.close();
    }
  });

  test('a newer hosts list is acted on at once, and kept on disk after (not before) its hosts are collected', async () => {
    const store = await EmbeddedStore.open({ dir: join(dir, 'keep-store') });
    // The disk write of the hosts list is held until released: a slow disk on a busy machine.
    let hold = false;
    let release: (() => void) | undefined;
    const held = new Promise<void>((resolve) => (release = resolve));
    const saved: string[] = [];
    const slowDisk = (f: TrustFiles): TrustFiles =>
      new Proxy(f, {
        get(target, prop, receiver) {
          if (prop === 'saveHosts') {
            return async (sealed: string): Promise<void> => {
              if (hold) await held;
              await target.saveHosts(sealed);
              saved.push(sealed);
            };
          }
          const v: unknown = Reflect.get(target, prop, receiver);
          return typeof v === 'function' ? (v as (...args: unknown[]) => unknown).bind(target) : v;
        },
      });
    const { link, ca, exports, files } = await caLink(store, join(dir, 'keep-state'), { wrapFiles: slowDisk });
    try {
      hold = true;
      const b = generateKeyPair();
      const v = exportValue(b, 'b', '/etc/motd', 'from b');
      await store.put(v.key, v.value);
      await updateHosts(store, ca, new TrustView(ca.publicKey), approve('b', b.publicKey, false));
      await until(() => exports.at(-1)?.some((e) => e.host === 'b') === true, 5000, "b's export collected while the hosts list is still being written");
      release?.();
      await until(async () => (await files.cachedHosts()) === link.trust?.sealed, 5000, 'the newest hosts list on disk');
      assert.ok(saved.length > 0);
    } finally {
      release?.();
      await link.close();
      await store.close();
    }
  });

  test('join requests that arrive together are approved with one new hosts list; a host asking again takes no second use of its token', async () => {
    const store = await EmbeddedStore.open({ dir: join(dir, 'join-store') });
    const { link, files } = await caLink(store, join(dir, 'join-state'));
    try {
      const token = parseToken((await files.createToken(60_000, 4)).token);
      const serial = link.trust?.serial ?? -1;
      const joiners = ['h1', 'h2', 'h3', 'h4'].map((host) => ({ host, key: generateKeyPair() }));
      // One transaction: the link sees the four requests in one watch batch, as thirty hosts starting at once would
      // arrive while it is still handling the first.
      await store.txn(
        joiners.map(({ host, key }) => ({
          put: keys.join(host),
          value: JSON.stringify({ host, publicKey: key.publicKey, at: since, token: token.id, mac: joinMac(token.secret, host, key.publicKey) }),
        })),
      );
      await until(() => joiners.every(({ host, key }) => link.trust?.keyOf(host) === key.publicKey), 5000, 'all four approved');
      assert.equal(link.trust?.serial, serial + 1, 'one hosts list for the four, not four');
      await until(async () => (await store.list(keys.joinsPrefix)).kvs.length === 0, 5000, 'the requests are cleared');

      // The token's four uses went to four hosts; the same host and key asking again (its approval got lost) is free,
      // a fifth host is not.
      const again = joiners[0]!;
      const reqAgain = { host: again.host, publicKey: again.key.publicKey, at: since, token: token.id, mac: joinMac(token.secret, again.host, again.key.publicKey) };
      const fifth = generateKeyPair();
      const reqFifth = { host: 'h5', publicKey: fifth.publicKey, at: since, token: token.id, mac: joinMac(token.secret, 'h5', fifth.publicKey) };
      assert.deepEqual(await files.redeemAll([reqAgain, reqFifth]), [true, `token ${token.id} is used up`]);
      // A request naming a redeemed host and key still has to prove the token.
      assert.match(String((await files.redeemAll([{ ...reqAgain, mac: joinMac('00'.repeat(16), again.host, again.key.publicKey) }]))[0]), /proof of token .* is wrong/);
    } finally {
      await link.close();
      await store.close();
    }
  });

  test('a lease the store refuses while this host still thinks it alive is replaced: the host registers and publishes again', async () => {
    const store = await EmbeddedStore.open({ dir: join(dir, 'lease-store') });
    // What etcd does when keep-alives were acknowledged too late: the lease is gone in the store, and the client has
    // not noticed yet. Here the link is handed leases whose `lost` never fires; the real lease is revoked below.
    const real = new Map<string, Lease>();
    const numb = (s: Store): Store =>
      new Proxy(s, {
        get(target, prop, receiver) {
          if (prop === 'lease') {
            return async (ttlMs: number, opts?: { signal?: AbortSignal }): Promise<Lease> => {
              const l = await target.lease(ttlMs, opts);
              real.set(l.id, l);
              return { id: l.id, ttlMs: l.ttlMs, renewedAt: l.renewedAt, lost: new AbortController().signal, revoke: () => l.revoke(), release: () => l.release() };
            };
          }
          const v: unknown = Reflect.get(target, prop, receiver);
          return typeof v === 'function' ? (v as (...args: unknown[]) => unknown).bind(target) : v;
        },
      });
    const { link } = await caLink(store, join(dir, 'lease-state'), { wrap: numb });
    try {
      const path = join(dir, 'motd');
      await link.publish([{ kind: 'file', name: path, params: { content: 'hi' }, meta: undefined, to: '*' }]);
      const key = keys.exported('a', 'file', path);
      const first = link.currentLease;
      assert.ok(first !== undefined);
      assert.equal((await store.get(key))?.lease, first.id);

      // The store ends the lease: the record and the export go with it.
      await real.get(first.id)?.revoke();
      assert.equal(await store.get(key), undefined);
      // The next write under it is refused ('lease-lost'); the link must take a new lease, not retry the dead one.
      await link.publish([{ kind: 'file', name: path, params: { content: 'hi again' }, meta: undefined, to: '*' }]);
      await until(async () => {
        const kv: KeyValue | undefined = await store.get(key);
        const now = link.currentLease;
        return kv !== undefined && now !== undefined && now.id !== first.id && kv.lease === now.id;
      }, 5000, 'the export back under a new lease');
      const node = await store.get(keys.node('a'));
      assert.equal(node?.lease, link.currentLease?.id, 'the membership record is back too');
    } finally {
      await link.close();
      await sleep(10);
      await store.close();
    }
  });

  test("the controller's election shares the membership lease: one lease per agent, a resign keeps the membership", async () => {
    const store = await EmbeddedStore.open({ dir: join(dir, 'session-store') });
    let granted = 0;
    const counting = (s: Store): Store =>
      new Proxy(s, {
        get(target, prop, receiver) {
          if (prop === 'lease') {
            return (ttlMs: number, opts?: { signal?: AbortSignal }): Promise<Lease> => {
              granted++;
              return target.lease(ttlMs, opts);
            };
          }
          const v: unknown = Reflect.get(target, prop, receiver);
          return typeof v === 'function' ? (v as (...args: unknown[]) => unknown).bind(target) : v;
        },
      });
    const { link } = await caLink(store, join(dir, 'session-state'), { wrap: counting });
    const ac = new AbortController();
    try {
      const lease = await link.sessionLease(ac.signal);
      assert.equal(lease, link.currentLease);
      assert.equal(granted, 1);
      const wrapped = counting(store);
      const lead = await campaign(wrapped, 'controller', 'a', 1000, ac.signal, lease);
      assert.equal(granted, 1, 'the campaign granted a lease of its own');
      assert.equal((await store.get(lead.key))?.lease, lease.id);
      await lead.resign();
      assert.equal(lease.lost.aborted, false, 'resigning ended the membership lease');
      assert.equal(await store.get(lead.key), undefined);
      assert.equal((await store.get(keys.node('a')))?.lease, lease.id);
      // A candidate key a failed resign left behind under the same lease is taken back, not waited on for ever.
      await store.put(lead.key, 'a', { lease });
      const again = await Promise.race([campaign(wrapped, 'controller', 'a', 1000, ac.signal, lease), sleep(3000).then(() => undefined)]);
      assert.ok(again !== undefined, 'the campaign waited on its own stale key');
      assert.equal(again.key, lead.key);
      // The membership lease ends: so does leadership, and the next campaign gets the lease the host registers under.
      await lease.revoke();
      assert.equal(again.lost.aborted, true);
      const next = await link.sessionLease(ac.signal);
      assert.notEqual(next.id, lease.id);
      assert.equal((await store.get(keys.node('a')))?.lease, next.id);
    } finally {
      ac.abort();
      await link.close();
      await sleep(10);
      await store.close();
    }
  });
});
