import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { Engine } from '../../src/engine/engine.js';
import { BackplaneError, ValidationErrors } from '../../src/errors.js';
import { parseGraphText } from '../../src/frontends/load.js';
import { buildGraph } from '../../src/graph/build.js';
import { createLogger } from '../../src/log.js';
import { builtinKinds } from '../../src/resources/builtin-kinds.js';
import { createRegistry } from '../../src/resources/registry.js';
import { templateKind } from '../../src/resources/template.js';
import type { ServiceDirectory, ServiceInstance } from '../../src/resources/types.js';
import { harness, until, waitSettled } from '../helpers/engine.js';

/**
 * The template kind's `services`: an upstream list fed by service discovery, re-rendered by the engine when the
 * instances change. The directory here is the in-memory shape the agent's DiscoveryHandle has (that one is tested
 * against a real store in test/agent/discovery.test.ts); what is under test is the template and the engine.
 */

class Directory implements ServiceDirectory {
  private readonly data = new Map<string, readonly ServiceInstance[]>();
  private readonly watchers = new Map<string, Set<() => void>>();

  set(service: string, list: readonly ServiceInstance[]): void {
    this.data.set(service, list);
    for (const cb of this.watchers.get(service) ?? []) cb();
  }

  get(service: string): Promise<readonly ServiceInstance[]> {
    return Promise.resolve(this.data.get(service) ?? []);
  }

  watch(service: string, onChange: () => void): () => void {
    const set = this.watchers.get(service) ?? new Set();
    set.add(onChange);
    this.watchers.set(service, set);
    return () => set.delete(onChange);
  }

  watching(service: string): number {
    return this.watchers.get(service)?.size ?? 0;
  }
}

function instance(index: number, host: string, address: string, port: number): ServiceInstance {
  return { id: `api.${index}.0000000${index}`, index, host, address, ports: { http: port }, version: 'v1' };
}

const registry = createRegistry([...builtinKinds, templateKind]);
const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'bp-template-discovery-'));
  dirs.push(d);
  return d;
}

const UPSTREAM = `upstream api {
{%- for i in services.api %}
  server {{ i.address }}:{{ i.ports.http }}; # {{ i.host }} #{{ i.index }}
{%- else %}
  server 127.0.0.1:1 down;
{%- endfor %}
}
`;

function graphText(out: string, services: readonly string[], template = UPSTREAM): string {
  return `resources:
  - kind: template
    name: ${out}
    services: ${JSON.stringify(services)}
    template: ${JSON.stringify(template)}
`;
}

function buildErrors(text: string): string[] {
  try {
    buildGraph(parseGraphText('/test/graph.yaml', text), registry);
  } catch (err) {
    if (err instanceof ValidationErrors) return err.errors.map((e: BackplaneError) => e.message);
    throw err;
  }
  return [];
}

describe('template: services', () => {
  test('an upstream list follows the healthy instances of the services it lists', async () => {
    const out = join(await tempDir(), 'upstream.conf');
    const dir = new Directory();
    dir.set('api', [instance(0, 'b', '10.0.0.2', 20001)]);
    const engine = new Engine({ registry, log: createLogger({ level: 'silent' }), services: dir });
    try {
      await engine.setGraph(buildGraph(parseGraphText('/test/graph.yaml', graphText(out, ['api'])), registry));
      await waitSettled(engine);
      assert.equal(engine.summary().ok, true);
      assert.equal(await readFile(out, 'utf8'), 'upstream api {\n  server 10.0.0.2:20001; # b #0\n}\n');
      await until(() => dir.watching('api') === 1, 5000, 'the template watches api');

      // A second instance turns healthy: the engine re-renders without a graph change.
      dir.set('api', [instance(0, 'b', '10.0.0.2', 20001), instance(1, 'c', '10.0.0.3', 20002)]);
      const two = 'upstream api {\n  server 10.0.0.2:20001; # b #0\n  server 10.0.0.3:20002; # c #1\n}\n';
      await until(async () => (await readFile(out, 'utf8')) === two, 5000, 're-rendered with two servers');

      // Another service's changes are none of this template's business: it watches only what it lists.
      assert.equal(dir.watching('db'), 0);

      // All gone: the template's own fallback, not an empty upstream block.
      dir.set('api', []);
      await until(async () => (await readFile(out, 'utf8')) === 'upstream api {\n  server 127.0.0.1:1 down;\n}\n', 5000, 'fallback');
    } finally {
      await engine.stop();
    }
    assert.equal(dir.watching('api'), 0, 'the watch is dropped when the resource stops');
  });

  test('without an agent (no service discovery), a listed service is an empty list', async () => {
    const out = join(await tempDir(), 'upstream.conf');
    const h = harness([templateKind]);
    try {
      await h.engine.setGraph(h.graph(graphText(out, ['api'])));
      await h.settled();
      assert.equal(h.engine.summary().ok, true);
      assert.equal(await readFile(out, 'utf8'), 'upstream api {\n  server 127.0.0.1:1 down;\n}\n');
    } finally {
      await h.engine.stop();
    }
  });

  test('names are checked when the graph loads: only listed services, each a valid service name', () => {
    assert.deepEqual(buildErrors(graphText('/tmp/x.conf', ['api'])), []);
    // Index access and a port name past the service's list are left to rendering (they depend on the data).
    assert.deepEqual(buildErrors(graphText('/tmp/x.conf', ['api'], '{{ services.api.first.ports.http }} {{ services.api.size }}')), []);

    const unlisted = buildErrors(graphText('/tmp/x.conf', ['api'], '{{ services.db.first.address }}'));
    assert.equal(unlisted.length, 1);
    assert.match(unlisted[0] ?? '', /"services\.db" is not listed in this template's services \(add "db" to services/);

    const typo = buildErrors(graphText('/tmp/x.conf', ['api'], '{% for i in services.apj %}{{ i.address }}{% endfor %}'));
    assert.match(typo[0] ?? '', /did you mean services\.api\?/);

    const none = buildErrors(graphText('/tmp/x.conf', [], '{{ services.api.size }}'));
    assert.match(none[0] ?? '', /"services\.api" is not listed/);

    const misspeltRoot = buildErrors(graphText('/tmp/x.conf', ['api'], '{{ service.api.size }}'));
    assert.match(misspeltRoot[0] ?? '', /unknown variable "service" \(did you mean services\?\)/);

    const badName = buildErrors(graphText('/tmp/x.conf', ['API_1']));
    assert.match(badName[0] ?? '', /a service name is 1-63 characters/);
  });
});
