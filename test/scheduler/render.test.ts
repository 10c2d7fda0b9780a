import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { ValidationErrors } from '../../src/errors.js';
import { buildGraph } from '../../src/graph/build.js';
import { builtinKinds } from '../../src/resources/builtin-kinds.js';
import { createRegistry } from '../../src/resources/registry.js';
import type { HostFacts } from '../../src/resources/types.js';
import { renderInstance, type InstanceHost, type RenderedInstance } from '../../src/scheduler/render.js';
import { parseServiceText } from '../../src/scheduler/spec.js';
import type { Alloc, ServiceSpec } from '../../src/scheduler/types.js';

const FACTS: HostFacts = {
  hostname: 'node-a',
  fqdn: 'node-a.lan',
  os: { platform: 'linux', release: '6.1.0', arch: 'x64' },
  cpus: 8,
  memory: { total: 16 * 1024 ** 3, free: 8 * 1024 ** 3 },
  interfaces: { eth0: [{ address: '10.0.0.7', family: 'IPv4' }] },
  ipv4: '10.0.0.7',
};
const HOST: InstanceHost = { name: 'node-a', facts: FACTS, labels: { zone: 'b', disk: 'ssd' } };

const SPEC = `name: api
count: 2
run:
  cmd: [/usr/bin/api, --listen, "{{ host.facts.ipv4 }}:{{ instance.port.http }}", --zone, "{{ host.labels.zone }}", "{{ \\"{{\\" }}literal}}"]
  env: { ID: "{{ service.name }}-{{ instance.index }}", IFACE: "{{ host.facts.interfaces.eth0.0.address }}" }
  cwd: "/srv/api/{{ instance.id }}"
  user: nobody
  stopSignal: INT
  stopTimeout: 3s
resources: { cpu: 250m, memory: 128M }
ports:
  http: {}
  admin: { static: 9000 }
health:
  http: { port: http, path: /healthz }
  grace: 4s
restart: { attempts: 3, interval: 5m, delay: 500ms }
files:
  - kind: file
    name: "/srv/api/{{ instance.id }}"
    type: directory
  - kind: file
    name: "/srv/api/{{ instance.id }}/api.conf"
    content: "host={{ host.name }} version={{ service.version }} admin={{ instance.port.admin }}\\n"
  - kind: template
    name: "/srv/api/{{ instance.id }}/index.html"
    template: "{{ vars.service.name }}#{{ vars.instance.index }} on {{ vars.host.name }} zone {{ vars.host.labels.zone }} port {{ vars.instance.port.http }} title {{ vars.title }}"
    vars: { title: "{{ service.name }} in {{ host.labels.zone }}" }
  - kind: http
    name: "api-{{ instance.id }}-ready"
    url: "http://127.0.0.1:{{ instance.port.http }}/ready"
`;

function spec(text = SPEC): ServiceSpec {
  const [s] = parseServiceText('/specs/api.yaml', text);
  assert.ok(s !== undefined);
  return s;
}

function alloc(s: ServiceSpec, index = 1): Alloc {
  return { id: `${s.name}.${index}.ab12cd34`, service: s.name, index, version: s.version, host: 'node-a', resources: s.resources, ports: { http: 23456, admin: 9000 }, createdAt: 0, reschedules: [] };
}

function params(r: RenderedInstance, kind: string, name: string): Record<string, unknown> {
  const res = r.resources.find((x) => x.kind === kind && x.name === name);
  assert.ok(res !== undefined, `no ${kind}[${name}] in ${r.resources.map((x) => `${x.kind}[${x.name}]`).join(', ')}`);
  return res.params;
}

describe('rendering an instance', () => {
  test('every string is substituted; the task becomes a svc named after the alloc with the policies mapped', () => {
    const s = spec();
    const r = renderInstance(s, alloc(s), HOST);
    const svc = params(r, 'svc', 'api.1.ab12cd34');
    assert.deepEqual(svc['cmd'], ['/usr/bin/api', '--listen', '10.0.0.7:23456', '--zone', 'b', '{{literal}}']);
    assert.deepEqual(svc['env'], {
      ID: 'api-1',
      IFACE: '10.0.0.7',
      INSTANCE_INDEX: '1',
      INSTANCE_ID: 'api.1.ab12cd34',
      SERVICE_NAME: 'api',
      SERVICE_VERSION: s.version,
      PORT_HTTP: '23456',
      PORT_ADMIN: '9000',
    });
    assert.equal(svc['cwd'], '/srv/api/api.1.ab12cd34');
    assert.equal(svc['user'], 'nobody');
    assert.equal(svc['stopSignal'], 'INT');
    assert.equal(svc['stopTimeout'], '3000ms');
    assert.deepEqual(svc['limits'], { cpu: 0.25, memory: 128 * 1024 * 1024 });
    assert.deepEqual(svc['health'], { http: 'http://127.0.0.1:23456/healthz', interval: '2000ms', timeout: '1000ms', failures: 3, startPeriod: '4000ms' });
    // attempts restarts in place within interval; the next failure is final (the controller reschedules).
    assert.deepEqual(svc['crashLoop'], { failures: 4, window: '300000ms' });
    assert.deepEqual(svc['backoff'], { initial: '500ms' });
    assert.equal(svc['onAgentExit'], 'keep');
    assert.equal(svc['restart'], 'always');

    assert.equal(params(r, 'file', '/srv/api/api.1.ab12cd34/api.conf')['content'], `host=node-a version=${s.version} admin=9000\n`);
    assert.equal(params(r, 'http', 'api-api.1.ab12cd34-ready')['url'], 'http://127.0.0.1:23456/ready');
    // The template's text is left for Liquid; its vars carry the instance (and its own strings are substituted).
    const tpl = params(r, 'template', '/srv/api/api.1.ab12cd34/index.html');
    assert.match(String(tpl['template']), /^\{\{ vars\.service\.name \}\}#/);
    assert.deepEqual(tpl['vars'], {
      title: 'api in b',
      instance: { index: 1, id: 'api.1.ab12cd34', port: { http: 23456, admin: 9000 } },
      service: { name: 'api', version: s.version },
      host: { name: 'node-a', labels: { zone: 'b', disk: 'ssd' } },
    });
    // Nothing with a {{ left but the Liquid text and the literal.
    const left = JSON.stringify(r.resources.map((x) => ({ ...x.params, template: undefined, cmd: undefined })));
    assert.doesNotMatch(left, /\{\{/);
  });

  test('builds into a valid graph with the real kinds; config files notify the svc, checks do not', () => {
    const s = spec();
    const r = renderInstance(s, alloc(s), HOST);
    const g = buildGraph({ source: 'instance', resources: r.resources, edges: r.edges, errors: [] }, createRegistry(builtinKinds));
    const ids = [...g.vertices.keys()].sort();
    assert.deepEqual(ids, [
      'file[/srv/api/api.1.ab12cd34/api.conf]',
      'file[/srv/api/api.1.ab12cd34]',
      'http[api-api.1.ab12cd34-ready]',
      'svc[api.1.ab12cd34]',
      'template[/srv/api/api.1.ab12cd34/index.html]',
    ]);
    const notifies = g.edges.filter((e) => e.notify).map((e) => `${e.from} -> ${e.to}`).sort();
    assert.deepEqual(notifies, [
      'file[/srv/api/api.1.ab12cd34/api.conf] -> svc[api.1.ab12cd34]',
      'file[/srv/api/api.1.ab12cd34] -> svc[api.1.ab12cd34]',
      'template[/srv/api/api.1.ab12cd34/index.html] -> svc[api.1.ab12cd34]',
    ]);
    // The svc's parameters as the kind reads them.
    const svc = g.vertices.get('svc[api.1.ab12cd34]' as never);
    assert.equal((svc?.params as { stopSignal: string }).stopSignal, 'SIGINT');
    // Two instances on one host render apart: they can live in one agent graph.
    const other = renderInstance(s, { ...alloc(s, 0), id: 'api.0.00ff00ff', ports: { http: 23457, admin: 9000 } }, HOST);
    buildGraph({ source: 'two', resources: [...r.resources, ...other.resources], edges: [...r.edges, ...other.edges], errors: [] }, createRegistry(builtinKinds));
  });

  test('a value this host or alloc does not have is an error naming the alloc', () => {
    const s = spec();
    const noLabel = (): RenderedInstance => renderInstance(s, alloc(s), { ...HOST, labels: { disk: 'ssd' } });
    assert.throws(noLabel, (err: unknown) => {
      assert.ok(err instanceof ValidationErrors);
      const e = err.errors[0];
      assert.match(e?.message ?? '', /host node-a has no label "zone"/);
      assert.equal(e?.where?.file, 'service api (alloc api.1.ab12cd34): run.cmd[4]');
      return true;
    });
    const noIface = (): RenderedInstance => renderInstance(s, alloc(s), { ...HOST, facts: { ...FACTS, interfaces: {} } });
    assert.throws(noIface, /host\.facts\.interfaces\.eth0" is not a fact of host node-a/);
    const noPort = (): RenderedInstance => renderInstance(s, { ...alloc(s), ports: { http: 1 } }, HOST);
    assert.throws(noPort, /the alloc has no port "admin"/);
  });

  test('the heartbeat fence reaches the svc', () => {
    const s = spec();
    const fence = { heartbeat: '/var/lib/backplane/sched/heartbeat', maxAgeMs: 3000 };
    const r = renderInstance(s, alloc(s), HOST, { fence });
    assert.deepEqual(params(r, 'svc', 'api.1.ab12cd34')['fence'], { heartbeat: fence.heartbeat, maxAge: '3000ms' });
    const g = buildGraph({ source: 'fenced', resources: r.resources, edges: r.edges, errors: [] }, createRegistry(builtinKinds));
    assert.deepEqual((g.vertices.get('svc[api.1.ab12cd34]' as never)?.params as { fence: unknown }).fence, { heartbeat: fence.heartbeat, maxAge: 3000 });
    assert.equal(params(renderInstance(s, alloc(s), HOST), 'svc', 'api.1.ab12cd34')['fence'], undefined);
  });

  test('the example services render and build', () => {
    for (const [file, name] of [
      ['web.yaml', 'web'],
      ['proxy.yaml', 'proxy'],
    ] as const) {
      const [s] = parseServiceText(file, readExample(file));
      assert.ok(s !== undefined && s.name === name);
      const r = renderInstance(s, { ...alloc(s, 0), id: `${name}.0.0badcafe`, ports: { http: s.ports[0]?.static ?? 20001 } }, HOST);
      buildGraph({ source: file, resources: r.resources, edges: r.edges, errors: [] }, createRegistry(builtinKinds));
    }
  });
});

function readExample(file: string): string {
  return readFileSync(new URL(`../../examples/services/${file}`, import.meta.url), 'utf8');
}
