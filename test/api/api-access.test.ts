import assert from 'node:assert/strict';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { sealRecord } from '../../src/cluster/trust.js';
import { generateKeyPair } from '../../src/cluster/identity.js';
import { wrapSigned } from '../../src/scheduler/records.js';
import { tokenKey } from '../../src/api/tokens.js';
import { socketRequest, startApiAgent, type ApiAgent } from '../helpers/api.js';
import { createOtherUser, skipReason, type OtherUser } from '../helpers/other-user.js';
import { until } from '../helpers/engine.js';
import { runCli } from '../helpers/cli.js';

/**
 * Who may do what through the operator API, against a real agent: its Unix socket (root only) and its TLS port with
 * tokens of each role. Every refusal says why and changes nothing; every change asked by a known caller is audited.
 */

interface ErrorAnswer {
  error: { status: number; code: string; message: string; hint?: string };
}

describe('operator API access control', () => {
  let dir: string;
  let agent: ApiAgent;
  const tok: Record<string, string> = {};

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bp-api-'));
    const graph = join(dir, 'g.yaml');
    await writeFile(graph, `resources:\n  - kind: file\n    name: ${join(dir, 'f.txt')}\n    content: "one\\n"\n  - kind: exec\n    name: broken\n    cmd: ["false"]\n`);
    agent = await startApiAgent(dir, graph);
    for (const role of ['viewer', 'operator', 'admin']) tok[role] = await agent.token(`t-${role}`, role);
  });

  after(async () => {
    await agent?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('serves the agent over the Unix socket as root, with no token', async () => {
    const a = await agent.socket('GET', '/v1/whoami');
    assert.equal(a.status, 200);
    assert.deepEqual(a.json(), { name: 'root@h1', role: 'admin', via: 'socket' });
    const s = await agent.socket('GET', '/v1/agent');
    const status = s.json<{ failed: { id: string; error?: string }[]; byState: Record<string, number> }>();
    assert.equal(status.failed[0]?.id, 'exec[broken]');
    assert.match(status.failed[0]?.error ?? '', /exited with code 1/);
  });

  it('refuses TCP requests without a valid token, saying why, and logs each refusal', async () => {
    const cases: [string | undefined, RegExp][] = [
      [undefined, /no token/],
      ['not-a-token', /not `Bearer bpt_/],
      ['bpt_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', /does not exist/],
      [`${tok['viewer']?.slice(0, -3) ?? ''}xyz`, /wrong secret/],
    ];
    for (const [token, why] of cases) {
      const a = await agent.https('GET', '/v1/agent', token);
      assert.equal(a.status, 401, `${token ?? '(none)'}: ${a.text}`);
      const e = a.json<ErrorAnswer>().error;
      assert.equal(e.code, 'E_AUTH');
      assert.match(e.message, why);
    }
    // A token in the wrong header form (Basic) is no token either.
    assert.equal((await agent.https('GET', '/v1/agent', undefined, undefined, { authorization: `Basic ${tok['admin'] ?? ''}` })).status, 401);
    await agent.cli.waitFor(/api: refused GET \/v1\/agent from 127\.0\.0\.1:\d+: token 0123456789abcdef does not exist/);
  });

  it('gives each role what it may do and refuses the rest with the role it needs', async () => {
    for (const role of ['viewer', 'operator', 'admin']) {
      const who = await agent.https('GET', '/v1/whoami', tok[role]);
      assert.equal(who.status, 200);
      assert.equal(who.json<{ role: string }>().role, role);
      assert.equal((await agent.https('GET', '/v1/agent', tok[role])).status, 200);
      assert.equal((await agent.https('GET', '/metrics', tok[role])).status, 200);
      // Admin only: tokens and the audit log.
      const list = await agent.https('GET', '/v1/tokens', tok[role]);
      const audit = await agent.https('GET', '/v1/audit', tok[role]);
      if (role === 'admin') {
        assert.equal(list.status, 200);
        assert.equal(audit.status, 200);
      } else {
        assert.equal(list.status, 403);
        assert.equal(list.json<ErrorAnswer>().error.code, 'E_DENIED');
        assert.match(list.json<ErrorAnswer>().error.message, new RegExp(`t-${role} has the ${role} role; tokens.list .* needs the admin role`));
        assert.equal(audit.status, 403);
      }
    }
  });

  it('refuses a viewer and an operator making a token, records the refusal, and makes none', async () => {
    const before = (await agent.socket('GET', '/v1/tokens')).json<unknown[]>().length;
    for (const role of ['viewer', 'operator']) {
      const a = await agent.https('POST', '/v1/tokens', tok[role], { name: `sneaky-${role}`, role: 'admin' });
      assert.equal(a.status, 403, a.text);
    }
    assert.equal((await agent.socket('GET', '/v1/tokens')).json<unknown[]>().length, before, 'no token was made');
    const audit = (await agent.socket('GET', '/v1/audit?limit=1000')).json<{ who: string; op: string; outcome: string; error?: string }[]>();
    const refused = audit.filter((e) => e.op === 'tokens.create' && e.outcome === 'refused');
    assert.deepEqual(refused.map((e) => e.who).sort(), ['t-operator', 't-viewer']);
    const made = audit.filter((e) => e.op === 'tokens.create' && e.outcome === 'ok');
    assert.ok(made.length >= 3, 'the tokens made in before() are recorded');
    assert.ok(made.every((e) => e.who === 'root@h1'));
  });

  it('refuses an expired token', async () => {
    const t = await agent.token('short', 'viewer', { ttlSeconds: 1 });
    assert.equal((await agent.https('GET', '/v1/whoami', t)).status, 200);
    await new Promise((r) => setTimeout(r, 1200));
    const a = await agent.https('GET', '/v1/whoami', t);
    assert.equal(a.status, 401);
    assert.match(a.json<ErrorAnswer>().error.message, /short\) expired at/);
  });

  it('refuses a revoked token within seconds', async () => {
    const t = await agent.token('revokee', 'operator');
    const id = /^bpt_([0-9a-f]{16})_/.exec(t)?.[1] ?? '';
    assert.equal((await agent.https('GET', '/v1/whoami', t)).status, 200);
    const r = await agent.https('DELETE', `/v1/tokens/${id}`, tok['admin']);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json<{ state: string }>().state, 'revoked');
    await until(async () => (await agent.https('GET', '/v1/whoami', t)).status === 401, 10_000, 'the revoked token refused');
    assert.match((await agent.https('GET', '/v1/whoami', t)).json<ErrorAnswer>().error.message, /was revoked at .* by h1/);
  });

  it('refuses a forged token record: one not signed by an operator host', async () => {
    // A writer of the store (not the CA's hosts) plants a token record for a secret it knows, claiming h1 signed it.
    const id = 'feedfacefeedface';
    const secret = 'A'.repeat(43);
    const { createHash } = await import('node:crypto');
    const body = JSON.stringify({
      token: { id, name: 'forged', role: 'admin', createdAt: new Date().toISOString(), createdBy: 'h1', secretHash: createHash('sha256').update(secret).digest('hex') },
    });
    const key = tokenKey(id);
    const forged = wrapSigned('h1', sealRecord(generateKeyPair(), key, Date.now(), body));
    // Written through the agent's control socket: the store itself does not check what it holds.
    const put = await socketRequest(join(agent.stateDir, 'control.sock'), 'POST', '/v1/put', { key, value: forged });
    assert.equal(put.status, 200, put.text);
    const a = await agent.https('GET', '/v1/tokens', `bpt_${id}_${secret}`);
    assert.equal(a.status, 401);
    assert.match(a.json<ErrorAnswer>().error.message, /token feedfacefeedface is not believed: /);
    // And it does not pass as a token in the list either.
    const list = (await agent.socket('GET', '/v1/tokens')).json<{ id: string; state: string }[]>();
    assert.equal(list.find((t) => t.id === id)?.state, 'forged');
  });

  it('does not let an admin token be scoped, nor a scoped token change the whole cluster', async () => {
    const a = await agent.socket('POST', '/v1/tokens', { name: 'x', role: 'admin', namespace: 'team-a' });
    assert.equal(a.status, 400);
    assert.match(a.json<ErrorAnswer>().error.message, /admin token cannot be scoped/);
  });

  it('answers 404 for unknown paths and 405 for a wrong method, and 400 for bad input saying where', async () => {
    assert.equal((await agent.https('GET', '/v1/nothing', tok['viewer'])).status, 404);
    assert.equal((await agent.https('PUT', '/v1/agent', tok['admin'])).status, 405);
    const bad = await agent.https('POST', '/v1/tokens', tok['admin'], { name: 'ok', role: 'root' });
    assert.equal(bad.status, 400);
    assert.match(bad.json<ErrorAnswer>().error.message, /tokens\.create: role: /);
    const notJson = await agent.https('POST', '/v1/tokens', tok['admin'], undefined, { 'content-type': 'application/json' });
    assert.equal(notJson.status, 400);
  });

  it('streams resource repairs and cluster changes as server-sent events', async () => {
    const { request } = await import('node:https');
    const events: string[] = [];
    const req = request({ host: '127.0.0.1', port: agent.port, path: '/v1/stream', ca: agent.cert, headers: { authorization: `Bearer ${tok['viewer'] ?? ''}` } });
    let type: string | undefined;
    const done = new Promise<void>((resolve) => req.on('close', resolve));
    req.on('response', (res) => {
      type = res.headers['content-type'];
      res.on('data', (b: Buffer) => events.push(b.toString()));
    });
    req.on('error', () => undefined);
    req.end();
    await until(() => events.join('').includes('event: hello'), 10_000, 'hello');
    assert.equal(type, 'text/event-stream');
    // Drift: the file changed behind the agent's back is repaired, and the stream says so.
    await writeFile(join(dir, 'f.txt'), 'drifted\n');
    await until(() => /event: repair\ndata: \{[^\n]*"id":"file\[/.test(events.join('')), 10_000, 'a repair event');
    // A change in the store (a token made) reaches the stream as a cluster event.
    await agent.token('streamed', 'viewer');
    await until(() => events.join('').includes('"what":"tokens"'), 10_000, 'a cluster event');
    req.destroy();
    await done;
    assert.equal(await readFile(join(dir, 'f.txt'), 'utf8'), 'one\n');
  });

  it('serves the CLI from another machine: --api with a token file, refusals printed with their reason', async () => {
    const tokenFile = join(dir, 'viewer.token');
    await writeFile(tokenFile, `${tok['viewer'] ?? ''}\n`, { mode: 0o600 });
    const api = ['--api', `https://127.0.0.1:${agent.port}`, '--api-ca', join(dir, 'api.crt'), '--token-file', tokenFile];
    const status = await runCli(['status', ...api, '--output', 'json']);
    // Exit 1: a resource failed (exec[broken]); the answer is the agent's, over TLS.
    assert.equal(status.code, 1, status.stderr);
    assert.equal((JSON.parse(status.stdout) as { host: string }).host, 'h1');
    const denied = await runCli(['token', 'create', '--name', 'x', '--role', 'viewer', ...api]);
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /t-viewer has the viewer role; tokens\.create .* needs the admin role/);
    // A token file others can read is refused before anything is sent.
    await chmod(tokenFile, 0o644);
    const loose = await runCli(['status', ...api]);
    assert.equal(loose.code, 2);
    assert.match(loose.stderr, /accessible by group or others/);
  });

  describe('a local user who is not root', { skip: skipReason }, () => {
    let other: OtherUser | undefined;
    before(() => {
      other = createOtherUser();
    });
    after(() => other?.remove());

    it('cannot connect to the API socket, and nothing changes', async () => {
      const auditBefore = await readFile(join(agent.stateDir, 'audit.log'), 'utf8');
      const socketPath = join(agent.stateDir, 'api.sock');
      const code = `
        import { request } from 'node:http';
        const req = request({ socketPath: ${JSON.stringify(socketPath)}, method: 'POST', path: '/v1/tokens', headers: { 'content-type': 'application/json' } }, (res) => { console.log('STATUS', res.statusCode); });
        req.on('error', (err) => { console.log('ERROR', err.code); });
        req.end(JSON.stringify({ name: 'evil', role: 'admin' }));`;
      const r = await other?.node(code);
      assert.match(r?.stdout ?? '', /ERROR (EACCES|ENOENT)/, `${r?.stdout ?? ''}${r?.stderr ?? ''}`);
      assert.doesNotMatch(r?.stdout ?? '', /STATUS/);
      assert.equal(await readFile(join(agent.stateDir, 'audit.log'), 'utf8'), auditBefore);
      const names = (await agent.socket('GET', '/v1/tokens')).json<{ name: string }[]>().map((t) => t.name);
      assert.ok(!names.includes('evil'));
    });
  });
});
