import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { EmbeddedStore } from '../../src/cluster/embedded-store.js';
import { generateKeyPair } from '../../src/cluster/identity.js';
import { keys } from '../../src/cluster/keys.js';
import type { Store, TxnOp, TxnOptions } from '../../src/cluster/store.js';
import { sealHosts, sealRecord, TrustView } from '../../src/cluster/trust.js';
import { createLogger } from '../../src/log.js';
import { Controller, ELECTION } from '../../src/scheduler/controller.js';
import { wrapSigned, type ServiceRecord } from '../../src/scheduler/records.js';
import { parseServiceText } from '../../src/scheduler/spec.js';
import { until } from '../helpers/engine.js';

/**
 * The controller's fence, in one process: a controller that is deposed between reading its snapshot and committing
 * its plan (here: its election key is deleted at that moment, as a new leader's takeover would after its lease
 * expired) must write nothing, however long it goes on believing it leads. Without the condition on its commits,
 * this test sees an assignment written.
 */

const ca = generateKeyPair();
const hostKey = generateKeyPair();

function trust(): TrustView {
  const view = new TrustView(ca.publicKey);
  const since = new Date().toISOString();
  view.adopt(sealHosts(ca, { serial: 1, issuedAt: since, hosts: { c1: { publicKey: hostKey.publicKey, state: 'approved', since, operator: true } } }));
  return view;
}

test('a controller deposed between its snapshot and its commit, and unaware of it, writes nothing', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bp-ctl-'));
  const inner = await EmbeddedStore.open({ dir });
  const log = createLogger({ format: 'json', level: 'silent' });
  const view = trust();
  let seq = Date.now();
  const sign = (key: string, body: string): string => sealRecord(hostKey, key, ++seq, body);
  let deposeNext = true;
  /** The commit that came just after its controller was deposed, and whether it landed. */
  let deposed: { ok: boolean } | undefined;
  const fenced: boolean[] = [];
  // The store as the controller sees it, except that its first plan commit comes just after it lost the election.
  const store: Store = Object.create(inner) as Store;
  // Like a paused process, the deposed controller does not hear that its election key is gone.
  let deaf = false;
  store.watch = (prefix, from, onEvent, signal) => inner.watch(prefix, from, (b) => (deaf && prefix.startsWith('election/') ? undefined : onEvent(b)), signal);
  store.txn = async (ops: readonly TxnOp[], opts?: TxnOptions) => {
    const plan = ops.some((op) => 'put' in op && op.put.startsWith(keys.assignPrefix));
    const intercept = plan && deposeNext;
    if (intercept) {
      deposeNext = false;
      deaf = true;
      const { kvs } = await inner.list(keys.election(ELECTION));
      for (const kv of kvs) await inner.delete(kv.key);
    }
    const r = await inner.txn(ops, opts);
    if (intercept) deposed = { ok: r.ok };
    else if (plan) fenced.push(r.ok);
    return r;
  };
  const ac = new AbortController();
  try {
    // A node record and a one-instance service signed by the operator host.
    const node = keys.node('c1');
    await inner.put(node, sign(node, JSON.stringify({ host: 'c1', facts: { hostname: 'c1', cpus: 2, memory: { total: 2 ** 31, free: 2 ** 31 }, ipv4: '127.0.0.1' }, labels: {}, startedAt: '', version: '', free: { cpus: 2, memory: 2 ** 31 }, capacity: { cpu: 2, memory: 2 ** 30 } })));
    const [spec] = parseServiceText('/t/web.yaml', 'name: web\ncount: 1\nrun: { cmd: [/bin/true] }\n');
    assert.ok(spec !== undefined);
    const record: ServiceRecord = { spec, source: '/t/web.yaml', deployedAt: '' };
    await inner.put(keys.service('web'), wrapSigned('c1', sign(keys.service('web'), JSON.stringify(record))));

    const ctl = new Controller({ store, host: 'c1', log, ttlMs: 2000, fenceMs: 2000, trust: () => view, sign });
    void ctl.run(ac.signal);
    await until(() => deposed !== undefined, 10_000, 'the commit after the deposition');
    // It went on trying, believing it leads: every one of its commits is refused, and nothing was ever placed.
    await until(() => fenced.length >= 1, 10_000, 'a retried commit');
    assert.deepEqual(deposed, { ok: false });
    assert.ok(fenced.every((ok) => !ok), 'no commit of the deposed controller landed');
    assert.deepEqual((await inner.list(keys.assignPrefix)).kvs, []);
  } finally {
    ac.abort();
    await inner.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test("a controller given the agent's membership lease campaigns under it, grants none of its own, and keeps it when it stops", async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bp-ctl-'));
  const inner = await EmbeddedStore.open({ dir });
  const log = createLogger({ format: 'json', level: 'silent' });
  let granted = 0;
  const store: Store = Object.create(inner) as Store;
  store.lease = (ttlMs, opts) => {
    granted++;
    return inner.lease(ttlMs, opts);
  };
  const membership = await inner.lease(2000);
  const ac = new AbortController();
  try {
    let seq = Date.now();
    const ctl = new Controller({
      store,
      host: 'c1',
      log,
      ttlMs: 2000,
      fenceMs: 2000,
      trust: () => trust(),
      sign: (key, body) => sealRecord(hostKey, key, ++seq, body),
      lease: () => Promise.resolve(membership),
    });
    const running = ctl.run(ac.signal);
    await until(() => ctl.isLeader, 10_000, 'leadership');
    const { kvs } = await inner.list(keys.election(ELECTION));
    assert.deepEqual(
      kvs.map((kv) => kv.lease),
      [membership.id],
    );
    assert.equal(granted, 0);
    ac.abort();
    await running;
    // Resigned: the candidate key is gone, the lease (the host's membership) lives on.
    assert.deepEqual((await inner.list(keys.election(ELECTION))).kvs, []);
    assert.equal(membership.lost.aborted, false);
  } finally {
    ac.abort();
    await membership.revoke();
    await inner.close();
    await rm(dir, { recursive: true, force: true });
  }
});
