import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { Discovery, DiscoveryHandle } from '../../src/agent/discovery.js';
import { EmbeddedStore } from '../../src/cluster/embedded-store.js';
import { generateKeyPair, type KeyPair } from '../../src/cluster/identity.js';
import { keys } from '../../src/cluster/keys.js';
import type { NodeRecord } from '../../src/cluster/link.js';
import { sealHosts, sealRecord, TrustView, withHost, type HostsDoc } from '../../src/cluster/trust.js';
import { createLogger } from '../../src/log.js';
import { wrapSigned, type AssignRecord, type StatusRecord } from '../../src/scheduler/records.js';
import type { InstanceState, ServiceSpec } from '../../src/scheduler/types.js';
import { Engine } from '../../src/engine/engine.js';
import { parseGraphText } from '../../src/frontends/load.js';
import { buildGraph } from '../../src/graph/build.js';
import { builtinKinds } from '../../src/resources/builtin-kinds.js';
import { createRegistry } from '../../src/resources/registry.js';
import { templateKind } from '../../src/resources/template.js';
import { until, waitSettled } from '../helpers/engine.js';

/**
 * Service discovery against a real embedded store and real signatures: what it lists is what a verified read of the
 * scheduler's records says is healthy, and nothing a stranger (or the wrong host) wrote.
 */

const ca = generateKeyPair();
const pairs: Record<string, KeyPair> = { op: generateKeyPair(), b: generateKeyPair(), c: generateKeyPair() };
const since = '2026-12-01T00:00:00.000Z';
let doc: HostsDoc = { serial: 0, issuedAt: '', hosts: {} };
for (const [host, pair] of Object.entries(pairs)) doc = withHost(doc, host, { publicKey: pair.publicKey, state: 'approved', since, operator: host === 'op' });
const view = new TrustView(ca.publicKey);
assert.equal(view.adopt(sealHosts(ca, doc)), 'newer');

const ADDRESS: Record<string, string> = { b: '10.0.0.2', c: '10.0.0.3' };
let seq = 1;
const log = createLogger({ level: 'silent' });

function spec(name: string, health: boolean): ServiceSpec {
  return {
    name,
    count: 3,
    version: 'v1',
    task: { cmd: ['/bin/true'], env: {} },
    resources: { cpu: 0.1, memory: 1024 },
    ports: [{ name: 'http' }],
    ...(health ? { health: { http: 'http://127.0.0.1:{{ instance.port.http }}/', intervalMs: 1000, timeoutMs: 500, failures: 3, graceMs: 0 } } : {}),
    placement: { constraints: [], distinctHosts: false, antiAffinity: [], strategy: 'binpack' },
    restart: { attempts: 2, intervalMs: 60_000, delayMs: 1000 },
    reschedule: { attempts: 0, intervalMs: 0, delayMs: 0, maxDelayMs: 0, unlimited: true },
    update: { maxParallel: 1, minHealthyMs: 0, healthyDeadlineMs: 60_000, progressDeadlineMs: 0, canary: 0, autoPromote: false, autoRevert: false },
    files: [],
  };
}

/** The controller's assignment of `service.index` to `host`, signed by `signer` (default: op, an approved host). */
function assignment(service: string, index: number, host: string, port: number, opts: { health?: boolean; signer?: KeyPair } = {}): { key: string; value: string; id: string } {
  const id = `${service}.${index}.${(0xa0000000 + index).toString(16)}`;
  const key = keys.assign(host, id);
  const s = spec(service, opts.health ?? true);
  const specRecord = sealRecord(pairs['op']!, keys.service(service), seq++, JSON.stringify({ spec: s, source: 'test', deployedAt: since }));
  const body: AssignRecord = {
    alloc: { id, service, index, version: s.version, host, resources: s.resources, ports: { http: port }, createdAt: 1, reschedules: [] },
    epoch: 1,
    controller: 'op',
    specRecord,
    specBy: 'op',
  };
  return { key, id, value: wrapSigned('op', sealRecord(opts.signer ?? pairs['op']!, key, seq++, JSON.stringify(body))) };
}

/** `host`'s status report for `alloc`, signed by `signer` (default: the host itself; 'unsigned': plain JSON). */
function status(host: string, alloc: string, state: InstanceState, signer: KeyPair | 'unsigned' = pairs[host]!): { key: string; value: string } {
  const key = keys.status(host, alloc);
  const body = JSON.stringify({ state, restarts: 0, since: 5 } satisfies StatusRecord);
  return { key, value: signer === 'unsigned' ? body : sealRecord(signer, key, seq++, body) };
}

function node(host: string, ipv4?: string): { key: string; value: string } {
  const key = keys.node(host);
  const record = {
    host,
    facts: { hostname: host, fqdn: host, os: { platform: 'linux', release: '6', arch: 'x64' }, cpus: 4, memory: { total: 8e9, free: 4e9 }, interfaces: {}, ipv4: ipv4 ?? ADDRESS[host] ?? '127.0.0.1' },
    labels: {},
    startedAt: since,
    version: 'test',
    free: { cpus: 4, memory: 4e9 },
  } satisfies NodeRecord;
  return { key, value: sealRecord(pairs[host]!, key, seq++, JSON.stringify(record)) };
}

describe('service discovery', () => {
  let dir: string;
  let store: EmbeddedStore;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bp-discovery-'));
    store = await EmbeddedStore.open({ dir });
  });
  after(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function put(...kvs: { key: string; value: string }[]): Promise<void> {
    for (const kv of kvs) await store.put(kv.key, kv.value);
  }

  test('lists healthy instances with address and ports; ignores unsigned, forged and wrong-host statuses', async () => {
    await put(node('b'), node('c'));
    // api has a health check: only 'healthy' counts. web has none: 'running' counts.
    const api0 = assignment('api', 0, 'b', 20001);
    const api1 = assignment('api', 1, 'c', 20002);
    const api2 = assignment('api', 2, 'b', 20003);
    const api3 = assignment('api', 3, 'c', 20004);
    const api4 = assignment('api', 4, 'c', 20005);
    const web0 = assignment('web', 0, 'c', 21000, { health: false });
    // A forged assignment (signed by a key nobody approved) with a healthy status by the host it names.
    const evil = assignment('api', 9, 'c', 6666, { signer: generateKeyPair() });
    await put(api0, api1, api2, api3, api4, web0, evil);
    await put(
      status('b', api0.id, 'healthy'),
      status('c', api1.id, 'running'), // has a health check: running is not enough
      status('b', api2.id, 'healthy', 'unsigned'),
      status('c', api3.id, 'healthy', pairs['b']), // signed by b about c's instance
      status('b', api4.id, 'healthy'), // signed by b, under b's key, about an alloc assigned to c
      status('c', web0.id, 'running'),
      status('c', evil.id, 'healthy'),
    );

    const d = new Discovery({ store, trust: () => view, log });
    try {
      await d.start();
      assert.deepEqual(d.current(), {
        api: [{ id: api0.id, index: 0, host: 'b', address: '10.0.0.2', ports: { http: 20001 }, version: 'v1' }],
        web: [{ id: web0.id, index: 0, host: 'c', address: '10.0.0.3', ports: { http: 21000 }, version: 'v1' }],
      });
    } finally {
      d.close();
    }
  });

  test('an address that is not an IP (a line of config smuggled in a signed record) is never listed', async () => {
    const d = new Discovery({ store, trust: () => view, log });
    const a = assignment('inj', 0, 'b', 20100);
    try {
      await put(node('b', '10.0.0.2;\nserver evil:80'), a, status('b', a.id, 'healthy'));
      await d.start();
      assert.equal(d.current()['inj'], undefined);
    } finally {
      d.close();
      await put(node('b'));
      await store.delete(a.key);
      await store.delete(keys.status('b', a.id));
    }
  });

  test('without a pinned CA nothing is believed', async () => {
    const d = new Discovery({ store, trust: () => undefined, log });
    try {
      await d.start();
      await d.ready;
      assert.deepEqual(d.current(), {});
    } finally {
      d.close();
    }
  });

  test('onChange fires on a real change (sorted by index), not on a no-op rewrite; a departed host drops out', async () => {
    const d = new Discovery({ store, trust: () => view, log, debounceMs: 5 });
    const handle = new DiscoveryHandle();
    let changes = 0;
    let anyChanges = 0;
    const apiSeen: number[] = [];
    const webSeen: number[] = [];
    handle.watch('api', () => apiSeen.push(Date.now()));
    handle.watch('web', () => webSeen.push(Date.now()));
    d.onChange(() => changes++);
    try {
      await handle.attach(d, () => anyChanges++);
      // The first read is a change too (from nothing known): watchers hear about every service it found.
      const base = changes;
      const apiBase = apiSeen.length;
      const webBase = webSeen.length;
      assert.equal(apiBase, 1);
      const api1 = assignment('api', 1, 'c', 20002);
      assert.equal(d.current()['api']?.length, 1, JSON.stringify(d.current()));

      // api.1 becomes healthy: listed, after api.0 (by index).
      await put(status('c', api1.id, 'healthy'));
      await until(() => d.current()['api']?.length === 2, 5000, 'api.1 listed');
      assert.deepEqual(
        d.current()['api']?.map((i) => [i.index, i.host, i.address]),
        [
          [0, 'b', '10.0.0.2'],
          [1, 'c', '10.0.0.3'],
        ],
      );
      assert.equal(changes, base + 1);
      assert.equal(apiSeen.length, apiBase + 1, 'the api watcher is told');
      assert.equal(webSeen.length, webBase, 'web did not change: its watcher is not told');
      assert.equal(anyChanges, changes);
      assert.equal(await handle.get('api', AbortSignal.timeout(1000)).then((l) => l.length), 2);
      assert.deepEqual(await handle.get('nosuch', AbortSignal.timeout(1000)), []);

      // The same status written again (new signature, new revision, same content): nothing changed.
      await put(status('c', api1.id, 'healthy'), node('b'));
      await sleep(150);
      assert.equal(changes, base + 1, 'a no-op rewrite does not fire onChange');

      // A forged status turning a listed instance unhealthy is ignored too (the verified one stays).
      await store.put(keys.status('c', api1.id), sealRecord(generateKeyPair(), keys.status('c', api1.id), 99, JSON.stringify({ state: 'failed', restarts: 0, since: 1 })));
      await sleep(150);
      assert.equal(d.current()['api']?.length, 1, 'the forged status replaced the real one in the store: api.1 is no longer known healthy');

      // Host c's membership record goes (its lease ended): its instances are no longer routable.
      await put(status('c', api1.id, 'healthy'));
      await until(() => d.current()['api']?.length === 2, 5000, 'api.1 back');
      await store.delete(keys.node('c'));
      await until(() => d.current()['web'] === undefined && d.current()['api']?.length === 1, 5000, 'c dropped');
    } finally {
      handle.close();
    }
  });

  test('end to end: store -> discovery -> engine -> an upstream file that follows the healthy instances', async () => {
    await put(node('c'));
    const handle = new DiscoveryHandle();
    await handle.attach(new Discovery({ store, trust: () => view, log }), () => undefined);
    const registry = createRegistry([...builtinKinds, templateKind]);
    const engine = new Engine({ registry, log, services: handle });
    const out = join(dir, 'upstream.conf');
    const template = '{% for i in services.api %}server {{ i.address }}:{{ i.ports.http }};\n{% endfor %}';
    try {
      await engine.setGraph(buildGraph(parseGraphText('/test/graph.yaml', `resources:\n  - { kind: template, name: ${out}, services: [api], template: ${JSON.stringify(template)} }\n`), registry));
      await waitSettled(engine);
      assert.equal(await readFile(out, 'utf8'), 'server 10.0.0.2:20001;\nserver 10.0.0.3:20002;\n');
      // api.2 on b turns healthy (signed by b): the file follows without any graph change.
      await put(status('b', assignment('api', 2, 'b', 20003).id, 'healthy'));
      await until(async () => (await readFile(out, 'utf8')) === 'server 10.0.0.2:20001;\nserver 10.0.0.3:20002;\nserver 10.0.0.2:20003;\n', 5000, 'api.2 in the file');
      // api.0 fails: out of the file.
      await put(status('b', assignment('api', 0, 'b', 20001).id, 'failed'));
      await until(async () => (await readFile(out, 'utf8')) === 'server 10.0.0.3:20002;\nserver 10.0.0.2:20003;\n', 5000, 'api.0 out of the file');
    } finally {
      await engine.stop();
      handle.close();
    }
  });
});
