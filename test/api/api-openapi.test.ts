import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { startApiAgent, type Answer, type ApiAgent } from '../helpers/api.js';
import { agentCgroups, killCgroups, removeCgroups } from '../helpers/cgroups.js';
import { until } from '../helpers/engine.js';

/**
 * Every endpoint of the operator API, called for real on a running agent with services in two namespaces, each
 * answer validated against the schema /openapi.json gives for it (200s and errors alike); and what a token scoped to
 * one namespace may and may not reach.
 */

type Json = Record<string, unknown>;
interface Doc {
  paths: Record<string, Record<string, { operationId: string; responses: Record<string, { content?: Record<string, { schema: Json }> }> }>>;
  components: { schemas: { Error: Json } };
}

const spec = (name: string, ns: string, count = 1): string =>
  `name: ${name}\nnamespace: ${ns}\ncount: ${count}\nresources: {cpu: 10m, memory: 16M}\nrun:\n  cmd: [/bin/sleep, "3600"]\n`;

describe('operator API: every endpoint against its OpenAPI schema', () => {
  let dir: string;
  let agent: ApiAgent;
  let doc: Doc;
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  const validators = new Map<string, ReturnType<typeof ajv.compile>>();
  const called = new Set<string>();
  const tok: Record<string, string> = {};

  /** Checks an answer against the document's schema for that operation and status. */
  function check(method: string, template: string, a: Answer): void {
    const op = doc.paths[template]?.[method.toLowerCase()];
    assert.ok(op !== undefined, `${method} ${template} is in /openapi.json`);
    called.add(op.operationId);
    const status = String(a.status);
    const schema = a.status === 200 ? op.responses['200']?.content?.['application/json']?.schema : doc.components.schemas.Error;
    assert.ok(schema !== undefined, `${op.operationId}: the document describes a ${status} answer`);
    if (a.status !== 200) assert.ok(op.responses[status] !== undefined, `${op.operationId}: ${status} is a documented answer`);
    const key = `${op.operationId} ${a.status === 200 ? '200' : 'error'}`;
    let v = validators.get(key);
    if (v === undefined) validators.set(key, (v = ajv.compile(schema)));
    const body: unknown = JSON.parse(a.text);
    assert.ok(v(body), `${op.operationId} ${status}: the answer does not match its schema: ${ajv.errorsText(v.errors)}\n${a.text.slice(0, 500)}`);
  }

  async function call(method: string, template: string, path: string, token: string | undefined, body?: unknown, want = 200): Promise<Answer> {
    const a = await agent.https(method, path, token, body);
    assert.equal(a.status, want, `${method} ${path}: ${a.text}`);
    check(method, template, a);
    return a;
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bp-openapi-'));
    await writeFile(join(dir, 'g.yaml'), `resources:\n  - kind: file\n    name: ${join(dir, 'f.txt')}\n    content: "x\\n"\n`);
    agent = await startApiAgent(dir, join(dir, 'g.yaml'), { extra: ['--capacity', 'cpu=8,memory=8G'] });
    doc = (await agent.https('GET', '/openapi.json', undefined)).json<Doc>();
    for (const role of ['viewer', 'operator', 'admin']) tok[role] = await agent.token(`o-${role}`, role);
    tok['a-operator'] = await agent.token('team-a-op', 'operator', { namespace: 'team-a' });
    tok['a-viewer'] = await agent.token('team-a-view', 'viewer', { namespace: 'team-a' });
    const d = await agent.https('POST', '/v1/deploy', tok['operator'], { files: [{ name: 'a1.yaml', text: spec('a1', 'team-a') }, { name: 'b1.yaml', text: spec('b1', 'team-b') }] });
    assert.equal(d.status, 200, d.text);
    check('POST', '/v1/deploy', d);
    await until(async () => (await agent.socket('GET', '/v1/services')).json<{ healthy: number }[]>().filter((r) => r.healthy === 1).length === 2, 60_000, 'both services healthy');
  });

  after(async () => {
    // The agent leaves its instances to their fence: they and their cgroups go here.
    const cgroups = await agentCgroups(dir);
    await agent?.stop();
    await killCgroups(cgroups);
    await removeCgroups(cgroups);
    await rm(dir, { recursive: true, force: true, maxRetries: 5 });
  });

  it('serves an OpenAPI 3.1 document naming every op with its least role', () => {
    assert.equal((doc as unknown as { openapi: string }).openapi, '3.1.0');
    const ids = Object.values(doc.paths).flatMap((p) => Object.values(p).map((o) => o.operationId));
    for (const id of ['services.list', 'services.deploy', 'plans.command', 'hosts.drain', 'namespaces.put', 'tokens.create', 'audit.list', 'stream', 'metrics']) assert.ok(ids.includes(id), id);
  });

  it('answers every read as its schema says', async () => {
    const v = tok['viewer'];
    await call('GET', '/v1/whoami', '/v1/whoami', v);
    await call('GET', '/v1/agent', '/v1/agent', v);
    await call('GET', '/v1/agent/graph', '/v1/agent/graph', v);
    const hosts = (await call('GET', '/v1/hosts', '/v1/hosts', v)).json<{ host: string }[]>();
    assert.deepEqual(hosts.map((h) => h.host), ['h1']);
    await call('GET', '/v1/hosts/trust', '/v1/hosts/trust', v);
    const rows = (await call('GET', '/v1/services', '/v1/services', v)).json<{ name: string; namespace: string }[]>();
    assert.deepEqual(rows.map((r) => `${r.namespace}/${r.name}`).sort(), ['team-a/a1', 'team-b/b1']);
    await call('GET', '/v1/problems', '/v1/problems', v);
    const one = (await call('GET', '/v1/services/{name}', '/v1/services/a1?events=5', v)).json<{ instances: { state: string }[] }>();
    assert.equal(one.instances.length, 1);
    await call('GET', '/v1/services/{name}/plan', '/v1/services/a1/plan?history=true', v);
    const svc = (await agent.socket('GET', '/v1/services/a1')).json<{ spec: { version: string } }>();
    await call('GET', '/v1/services/{name}/progress', `/v1/services/a1/progress?version=${svc.spec.version}`, v);
    await call('GET', '/v1/apps', '/v1/apps', v);
    await call('GET', '/v1/backplanes', '/v1/backplanes', v);
    await call('GET', '/v1/events', '/v1/events?limit=10', v);
    await call('GET', '/v1/namespaces', '/v1/namespaces', v);
    await call('GET', '/v1/namespaces/{ns}', '/v1/namespaces/team-a', v);
    await call('GET', '/v1/tokens', '/v1/tokens', tok['admin']);
    await call('GET', '/v1/audit', '/v1/audit?limit=5', tok['admin']);
    // Errors too: a missing service, a viewer asking for tokens.
    await call('GET', '/v1/services/{name}', '/v1/services/nope', v, undefined, 404);
    await call('GET', '/v1/tokens', '/v1/tokens', v, undefined, 403);
    await call('GET', '/v1/apps/{name}', '/v1/apps/nope', v, undefined, 404);
  });

  it('answers every change as its schema says', async () => {
    const o = tok['operator'];
    await call('POST', '/v1/services/{name}/scale', '/v1/services/a1/scale', o, { count: 2 });
    await until(async () => (await agent.socket('GET', '/v1/services')).json<{ name: string; healthy: number }[]>().find((r) => r.name === 'a1')?.healthy === 2, 60_000, 'a1 at 2');
    // A plan command the plan refuses (nothing to pause: the scale finished) is still a documented answer.
    const pause = await agent.https('POST', '/v1/services/a1/plan/pause', o, { wait: 0 });
    assert.ok([200, 409, 400].includes(pause.status), pause.text);
    check('POST', '/v1/services/{name}/plan/{action}', pause);
    await call('POST', '/v1/hosts/{host}/drain', '/v1/hosts/h1/drain', o, {});
    await call('POST', '/v1/hosts/{host}/undrain', '/v1/hosts/h1/undrain', o, {});
    await call('PUT', '/v1/namespaces/{ns}', '/v1/namespaces/team-c', tok['admin'], { quota: { instances: 3 } });
    await call('DELETE', '/v1/namespaces/{ns}', '/v1/namespaces/team-c', tok['admin']);
    const made = (await call('POST', '/v1/tokens', '/v1/tokens', tok['admin'], { name: 'tmp', role: 'viewer' })).json<{ info: { id: string } }>();
    await call('DELETE', '/v1/tokens/{id}', `/v1/tokens/${made.info.id}`, tok['admin']);
    await call('DELETE', '/v1/apps/{name}', '/v1/apps/nope', o, undefined, 404);
    await call('POST', '/v1/deploy', '/v1/deploy', o, { files: [{ name: 'c1.yaml', text: spec('c1', 'team-c') }], dryRun: true });
    await call('DELETE', '/v1/services/{name}', '/v1/services/b1', o);
  });

  it('keeps a namespace-scoped token inside its namespace: refused, logged, nothing changed', async () => {
    const a = tok['a-operator'];
    const rows = (await agent.https('GET', '/v1/services', a)).json<{ name: string }[]>();
    assert.deepEqual(rows.map((r) => r.name), ['a1'], 'it sees only its namespace');
    const before = (await agent.socket('GET', '/v1/services/a1')).json<{ instances: unknown[] }>();
    const deny = async (method: string, path: string, body?: unknown, why = /scoped to namespace team-a/): Promise<void> => {
      const r = await agent.https(method, path, a, body);
      assert.equal(r.status, 403, `${method} ${path}: ${r.text}`);
      assert.match(r.json<{ error: { message: string } }>().error.message, why);
    };
    await deny('GET', '/v1/services/b1');
    await deny('POST', '/v1/services/b1/scale', { count: 5 });
    await deny('POST', '/v1/deploy', { files: [{ name: 'x.yaml', text: spec('x1', 'team-b') }] });
    await deny('POST', '/v1/hosts/h1/drain', {});
    // Its own namespace's quota is the cluster's policy: that takes an admin, and no admin token is scoped.
    await deny('PUT', '/v1/namespaces/team-a', { quota: { instances: 100 } }, /needs the admin role/);
    // Its own namespace it may change.
    assert.equal((await agent.https('POST', '/v1/services/a1/scale', a, { count: 1 })).status, 200);
    // Nothing of the refused changes happened, and each refusal is in the audit log.
    const names = (await agent.socket('GET', '/v1/services')).json<{ name: string }[]>().map((r) => r.name);
    assert.ok(!names.includes('x1'));
    assert.equal((await agent.socket('GET', '/v1/hosts')).json<{ host: string; drained?: boolean; draining?: boolean }[]>()[0]?.draining ?? false, false);
    const audit = (await agent.socket('GET', '/v1/audit?limit=100')).json<{ who: string; op: string; outcome: string }[]>();
    const refused = audit.filter((e) => e.who === 'team-a-op' && e.outcome === 'refused').map((e) => e.op);
    assert.deepEqual(refused.sort(), ['hosts.drain', 'namespaces.put', 'services.deploy', 'services.scale']);
    await agent.cli.waitFor(/api: refused POST \/v1\/services\/b1\/scale from team-a-op/);
    assert.ok(before.instances.length >= 1);
    // A scoped viewer: reads its namespace, changes nothing.
    assert.equal((await agent.https('POST', '/v1/services/a1/scale', tok['a-viewer'], { count: 3 })).status, 403);
  });

  it('exercised every operation in the document', () => {
    const ids = Object.values(doc.paths).flatMap((p) => Object.values(p).map((o) => o.operationId));
    // The stream and metrics are not JSON: covered by api-access.test.ts and metrics.test.ts.
    const missing = ids.filter((id) => !called.has(id) && id !== 'stream' && id !== 'metrics');
    assert.deepEqual(missing, [], `operations never called here: ${missing.join(', ')}`);
  });
});
