import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Discovery, DiscoveryHandle } from '../../src/agent/discovery.js';
import { GraphSource } from '../../src/agent/graph-source.js';
import { EmbeddedStore } from '../../src/cluster/embedded-store.js';
import { generateKeyPair } from '../../src/cluster/identity.js';
import type { Store } from '../../src/cluster/store.js';
import { sealHosts, TrustView, withHost } from '../../src/cluster/trust.js';
import type { KindRegistry } from '../../src/graph/build.js';
import { createLogger } from '../../src/log.js';
import { builtinKinds, createRegistry } from '../../src/resources/registry.js';
import type { AnyResourceKind } from '../../src/resources/types.js';

/**
 * What a re-render may skip: with thirty agents every export any host changes re-renders every agent's graph, so the
 * work a render repeats for an unchanged graph file and unchanged resources is paid thirty times over per change.
 */

/** The builtin kinds, with every parameter check the graph source itself makes counted (buildGraph's are not). */
function countingRegistry(): { registry: KindRegistry; bySource: () => number } {
  let n = 0;
  const wrap = (k: AnyResourceKind): AnyResourceKind =>
    ({
      ...k,
      schema: new Proxy(k.schema, {
        get(target, prop, receiver) {
          const v: unknown = Reflect.get(target, prop, receiver);
          if (prop !== 'safeParse' || typeof v !== 'function') return v;
          return (...args: unknown[]) => {
            const stack = new Error().stack ?? '';
            if (stack.includes('GraphSource.') && !stack.includes('buildGraph')) n++;
            return (v as (...a: unknown[]) => unknown).apply(target, args);
          };
        },
      }),
    });
  return { registry: createRegistry(builtinKinds.map(wrap)), bySource: () => n };
}

describe('graph source re-renders', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bp-gsrc-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('an unchanged YAML file is read every time but parsed once; an edit is parsed and used', async () => {
    const file = join(dir, 'g.yaml');
    const lines: string[] = [];
    const log = createLogger({ level: 'debug', write: (l) => lines.push(l) });
    await writeFile(file, `resources:\n  - { kind: file, name: ${join(dir, 'a')}, content: "one" }\n`);
    const src = new GraphSource({ file, host: 'h', registry: createRegistry(), log, stateDir: join(dir, 'state1'), cluster: { etcd: [], cluster: 'c', labels: {} }, version: 't' });
    try {
      const parses = (): number => lines.filter((l) => l.includes(`parsed ${file}`)).length;
      await src.render();
      await src.render();
      await src.render();
      assert.equal(parses(), 1, 'three renders of the same text, one parse');
      await writeFile(file, `resources:\n  - { kind: file, name: ${join(dir, 'a')}, content: "two" }\n`);
      const g = await src.render();
      assert.equal(parses(), 2, 'the edit is parsed');
      const v = [...g.vertices.values()].find((x) => x.name === join(dir, 'a'));
      assert.equal((v?.params as { content?: string } | undefined)?.content, 'two');
    } finally {
      await src.close();
    }
  });

  test('resources that did not change are not validated again by the graph source', async () => {
    const file = join(dir, 'v.yaml');
    const { registry, bySource } = countingRegistry();
    // With a collect rule: the graph source then checks what each local resource manages (collected ones too).
    const graph = (c: string): string =>
      `resources:\n${['a', 'b', 'c'].map((n) => `  - { kind: file, name: ${join(dir, n)}, content: "${n === 'c' ? c : 'x'}" }\n`).join('')}collect:\n  - { kind: file, set: { path: "${dir}/{host}-{basename}" } }\n`;
    await writeFile(file, graph('x'));
    const src = new GraphSource({ file, host: 'h', registry, log: createLogger({ level: 'silent' }), stateDir: join(dir, 'state2'), cluster: { etcd: [], cluster: 'c', labels: {} }, version: 't' });
    try {
      await src.render();
      const first = bySource();
      assert.ok(first >= 3, `the first render checks each resource (${first})`);
      await src.render();
      await src.render();
      assert.equal(bySource(), first, 'later renders of the same resources check nothing again');
      await writeFile(file, graph('y'));
      await src.render();
      assert.equal(bySource(), first + 1, 'only the changed resource is checked');
    } finally {
      await src.close();
    }
  });

  test('service discovery reads the store only once something asks for services (or when attached eagerly)', async () => {
    const store = await EmbeddedStore.open({ dir: join(dir, 'disc-store') });
    let lists = 0;
    const counted = new Proxy(store, {
      get(target, prop, receiver) {
        const v: unknown = Reflect.get(target, prop, receiver);
        if (typeof v !== 'function') return v;
        const f = (v as (...a: unknown[]) => unknown).bind(target);
        return prop === 'list' ? (...args: unknown[]) => (lists++, f(...args)) : f;
      },
    }) as Store;
    const ca = generateKeyPair();
    const view = new TrustView(ca.publicKey);
    view.adopt(sealHosts(ca, withHost({ serial: 0, issuedAt: '', hosts: {} }, 'h', { publicKey: generateKeyPair().publicKey, state: 'approved', since: '' })));
    const log = createLogger({ level: 'silent' });
    const lazy = new DiscoveryHandle();
    const eager = new DiscoveryHandle();
    try {
      await lazy.attach(new Discovery({ store: counted, trust: () => view, log }), () => undefined);
      assert.equal(lists, 0, 'attached, nobody asked: nothing read');
      assert.deepEqual(await lazy.get('api', AbortSignal.timeout(5000)), []);
      assert.ok(lists > 0, 'asked: read');

      lists = 0;
      await eager.attach(new Discovery({ store: counted, trust: () => view, log }), () => undefined, { eager: true });
      assert.ok(lists > 0, 'eager: read at once');
    } finally {
      lazy.close();
      eager.close();
      await store.close();
    }
  });
});
