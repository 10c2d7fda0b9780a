import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Discovery, DiscoveryHandle } from '../../src/agent/discovery.js';
import { GraphSource } from '../../src/agent/graph-source.js';
import { EmbeddedStore } from '../../src/cluster/embedded-store.js';
import { generateKeyPair } from '../../src/cluster/identity.js';
import type { Store } from '../../src/cluster/store.js';
import { sealHosts, TrustView, withHost } from '../../src/cluster/trust.js';
import type { KindRegistry } from '../../src/graph/build.js';
import { resourceId, type ResourceId } from '../../src/graph/ids.js';
import { createLogger } from '../../src/log.js';
import { builtinKinds } from '../../src/resources/builtin-kinds.js';
import { createRegistry } from '../../src/resources/registry.js';
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

  test('a re-render for a changed export keeps the vertices of the unchanged collected resources and checks only the changed one', async () => {
    // The graph collects its own exports through the (embedded) store, as every host in a cluster does.
    const file = join(dir, 'c.yaml');
    const collectedDir = join(dir, 'in');
    let checks = 0;
    const wrap = (k: AnyResourceKind): AnyResourceKind => ({
      ...k,
      schema: new Proxy(k.schema, {
        get(target, prop, receiver) {
          const v: unknown = Reflect.get(target, prop, receiver);
          if (prop !== 'safeParse' || typeof v !== 'function') return v;
          return (...args: unknown[]) => {
            // Checks of collected resources only: their path is in the collected directory.
            const path = (args[0] as { path?: unknown } | undefined)?.path;
            if (typeof path === 'string' && path.startsWith(collectedDir)) checks++;
            return (v as (...a: unknown[]) => unknown).apply(target, args);
          };
        },
      }),
      // The kind's shortcut is a parameter check too, when it answers (else the schema is asked, and counted).
      ...(k.quickParams === undefined
        ? {}
        : {
            quickParams: (name: string, params: Readonly<Record<string, unknown>>) => {
              const q = k.quickParams?.(name, params);
              const path = params['path'] ?? name;
              if (q !== undefined && typeof path === 'string' && path.startsWith(collectedDir)) checks++;
              return q;
            },
          }),
    });
    const graph = (two: string): string =>
      `resources:\n  - { kind: file, name: ${join(dir, 'one')}, content: "1", export: true }\n  - { kind: file, name: ${join(dir, 'two')}, content: "${two}", export: true }\ncollect:\n  - { kind: file, set: { path: "${collectedDir}/{host}-{basename}" } }\n`;
    await writeFile(file, graph('a'));
    const src = new GraphSource({
      file,
      host: 'h',
      registry: createRegistry(builtinKinds.map(wrap)),
      log: createLogger({ level: 'silent' }),
      stateDir: join(dir, 'state3'),
      cluster: { etcd: [], cluster: 'c', labels: {} },
      version: 't',
    });
    const ac = new AbortController();
    let changed: () => void = () => undefined;
    await src.watch(() => changed(), ac.signal, { file: false });
    // Publishes what `g` exports and renders again once the store's copy came back through the link's watch.
    const publishAndRender = async (g: Awaited<ReturnType<GraphSource['render']>>): Promise<Awaited<ReturnType<GraphSource['render']>>> => {
      const back = new Promise<void>((resolve) => (changed = resolve));
      src.publish(g);
      await Promise.race([back, sleep(10_000).then(() => Promise.reject(new Error('the exports did not come back from the store')))]);
      return src.render();
    };
    const one = resourceId('file', `${collectedDir}/h-one`);
    const two = resourceId('file', `${collectedDir}/h-two`);
    const content = (g: Awaited<ReturnType<GraphSource['render']>>, id: ResourceId): unknown => (g.vertices.get(id)?.params as { content?: unknown } | undefined)?.content;
    try {
      const g1 = await publishAndRender(await src.render());
      assert.deepEqual([content(g1, one), content(g1, two)], ['1', 'a']);
      await writeFile(file, graph('b'));
      checks = 0;
      const g2 = await publishAndRender(await src.render());
      assert.equal(content(g2, two), 'b', 'the changed export is collected with its new content');
      assert.equal(g2.vertices.get(one), g1.vertices.get(one), 'the unchanged one keeps its vertex');
      assert.notEqual(g2.vertices.get(two), g1.vertices.get(two));
      // Once by the graph source (what it manages), once by the build: not every collected resource again.
      assert.equal(checks, 2, `collected resources checked ${checks} times`);
    } finally {
      ac.abort();
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
