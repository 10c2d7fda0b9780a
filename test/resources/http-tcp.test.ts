import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer as createHttpsServer } from 'node:https';
import { tmpdir } from 'node:os';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createNetServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { resourceId } from '../../src/graph/ids.js';
import { httpKind } from '../../src/resources/http.js';
import { tcpKind } from '../../src/resources/tcp.js';
import type { CheckResult, Resource, ResourceLog } from '../../src/resources/types.js';
import { harness, until, withTempDir } from '../helpers/engine.js';
import { testWorld } from '../helpers/world.js';
import { rejection } from '../helpers/assert.js';

const quiet: ResourceLog = { change: () => undefined, info: () => undefined, warn: () => undefined, debug: () => undefined };
// One world whose (unused) state root is removed at the end: testWorld() alone leaves a directory per call.
const stateRoot = mkdtempSync(join(tmpdir(), 'bp-state-'));
const world = testWorld({ stateRoot });
after(() => rm(stateRoot, { recursive: true, force: true }));

function http(params: Record<string, unknown>): Resource {
  return httpKind.create(resourceId('http', 'test'), httpKind.schema.parse(params), world);
}

function tcp(params: Record<string, unknown>): Resource {
  return tcpKind.create(resourceId('tcp', 'test'), tcpKind.schema.parse(params), world);
}

function check(res: Resource, opts: { apply?: boolean; signal?: AbortSignal } = {}): Promise<CheckResult> {
  return res.checkApply({ apply: opts.apply ?? true, refresh: false, signal: opts.signal ?? new AbortController().signal, log: quiet });
}


// ---- servers -----------------------------------------------------------------------------------------------------

interface Running {
  readonly port: number;
  readonly close: () => Promise<void>;
}

const open = new Set<Running>();
after(async () => {
  for (const s of open) await s.close();
});

/** Servers keep clients' keep-alive connections; closing must not wait for them. */
async function listen(server: Server & { closeAllConnections?: () => void }, port = 0): Promise<Running> {
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.listen(port, '127.0.0.1');
  await once(server, 'listening');
  const running: Running = {
    port: (server.address() as AddressInfo).port,
    close: async () => {
      if (!open.delete(running)) return;
      const closed = once(server, 'close');
      server.close();
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
  open.add(running);
  return running;
}

function httpServer(handler: (req: IncomingMessage, res: ServerResponse) => void, port = 0): Promise<Running> {
  return listen(createHttpServer(handler), port);
}

function ok(body = 'ok'): (req: IncomingMessage, res: ServerResponse) => void {
  return (_req, res) => res.end(body);
}

/** A port nothing listens on (bound once, then released). */
async function freePort(): Promise<number> {
  const s = await listen(createNetServer());
  await s.close();
  return s.port;
}

interface Watching {
  readonly events: string[];
  readonly stop: () => Promise<void>;
}

async function startWatch(res: Resource): Promise<Watching> {
  const ac = new AbortController();
  const events: string[] = [];
  let ready = false;
  const done = res.watch?.({ signal: ac.signal, ready: () => (ready = true), changed: (r) => events.push(r), log: quiet }) ?? Promise.resolve();
  await until(() => ready, 5000, 'watch ready');
  return {
    events,
    stop: async () => {
      ac.abort();
      await done;
    },
  };
}

function runNode(args: string[], env: NodeJS.ProcessEnv): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, args, { env, timeout: 30_000 }, (err, stdout, stderr) => {
      if (err !== null) reject(new Error(`${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

// ---- http ----------------------------------------------------------------------------------------------------

describe('http', () => {
  test('converged when the endpoint answers 200; every probe uses a new connection', async () => {
    const clientPorts = new Set<number>();
    const s = await httpServer((req, res) => {
      clientPorts.add(req.socket.remotePort ?? 0);
      res.end('ok');
    });
    const res = http({ url: `http://127.0.0.1:${s.port}/health` });
    assert.deepEqual(await check(res), { converged: true, changes: [] });
    assert.deepEqual(await check(res), { converged: true, changes: [] });
    assert.equal(clientPorts.size, 2, 'a pooled connection could hide a service that stopped accepting new ones');
  });

  test('https works; an untrusted certificate is reported as such', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'bp-http-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const key = join(dir, 'key.pem');
    const cert = join(dir, 'cert.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert,
      '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'], { stdio: 'ignore' });
    const server = createHttpsServer({ key: await readFile(key), cert: await readFile(cert) }, ok('secure'));
    const s = await listen(server);
    const url = `https://127.0.0.1:${s.port}/`;
    const err = await rejection(check(http({ url })));
    assert.match(err.message, new RegExp(`^GET ${url} failed: TLS certificate not accepted: .*self.signed`));
    assert.match(err.hint ?? '', /NODE_EXTRA_CA_CERTS/);
    // Node reads extra CAs only at start-up: trust the certificate in a child process, as an agent would be run.
    const script = `import { httpKind } from ${JSON.stringify(join(process.cwd(), 'src/resources/http.ts'))};
      const p = httpKind.schema.parse({ url: ${JSON.stringify(url)}, body: 'secure' });
      const r = await httpKind.create('http[x]', p, {}).checkApply({ apply: true, refresh: false, signal: new AbortController().signal,
        log: { change() {}, info() {}, warn() {}, debug() {} } });
      process.stdout.write(JSON.stringify(r));`;
    const out = await runNode(['--import', 'tsx', '--input-type=module', '-e', script], { ...process.env, NODE_EXTRA_CA_CERTS: cert });
    assert.deepEqual(JSON.parse(out), { converged: true, changes: [] });
  });

  test('the name is the URL when url is not given', async () => {
    const s = await httpServer(ok());
    const name = `http://127.0.0.1:${s.port}/`;
    const p = httpKind.schema.parse({ ...httpKind.defaults?.(name) });
    assert.equal(p.url, name);
    const r = await check(httpKind.create(resourceId('http', name), p, world));
    assert.equal(r.converged, true);
    assert.deepEqual(httpKind.defaults?.('web'), {});
    const bad = httpKind.schema.safeParse({});
    assert.ok(!bad.success);
    assert.match(bad.error.issues[0]?.message ?? '', /give url, or name the resource by its http:\/\/ or https:\/\/ URL/);
  });

  test('a closed port fails retryably with "connection refused"', async () => {
    const port = await freePort();
    const err = await rejection(check(http({ url: `http://127.0.0.1:${port}/` })));
    assert.equal(err.code, 'E_APPLY');
    assert.equal(err.retryable, true);
    assert.equal(err.message, `GET http://127.0.0.1:${port}/ failed: connection refused`);
    assert.match(err.hint ?? '', /retry: -1/);
  });

  test('a wrong status fails with what was expected', async () => {
    const s = await httpServer((_req, res) => {
      res.statusCode = 503;
      res.end('down for maintenance');
    });
    const err = await rejection(check(http({ url: `http://127.0.0.1:${s.port}/` })));
    assert.equal(err.message, `GET http://127.0.0.1:${s.port}/ answered 503 Service Unavailable (expected 200)`);
    assert.equal(err.retryable, true);
    // It answers, so "start the service" would be the wrong advice.
    assert.equal(err.hint, "the server runs and answers, but serves something else: fix what it serves, or change this check's status to what it should serve");
  });

  test('status accepts classes and lists; redirects are followed unless told not to', async () => {
    const s = await httpServer((req, res) => {
      if (req.url === '/old') {
        res.writeHead(302, { location: '/new' });
        res.end();
      } else if (req.url === '/new') res.writeHead(204).end();
      else res.writeHead(404).end();
    });
    const base = `http://127.0.0.1:${s.port}`;
    assert.equal((await check(http({ url: `${base}/new`, status: '2xx' }))).converged, true);
    assert.equal((await check(http({ url: `${base}/old`, status: 204 }))).converged, true);
    assert.equal((await check(http({ url: `${base}/old`, status: [200, '3xx'], followRedirects: false }))).converged, true);
    const err = await rejection(check(http({ url: `${base}/nope`, status: ['2xx', 301] })));
    assert.match(err.message, /answered 404 Not Found \(expected 2xx or 301\)$/);
    assert.ok(!httpKind.schema.safeParse({ url: base, status: '6xx' }).success);
    assert.ok(!httpKind.schema.safeParse({ url: base, status: 'ok' }).success);
  });

  test('body and bodyMatch check the answer', async () => {
    const s = await httpServer(ok('{"status":"green","nodes":3}'));
    const url = `http://127.0.0.1:${s.port}/`;
    assert.equal((await check(http({ url, body: '"green"' }))).converged, true);
    assert.equal((await check(http({ url, bodyMatch: '"nodes":[1-9]' }))).converged, true);
    const e1 = await rejection(check(http({ url, body: '"red"' })));
    assert.equal(e1.message, `GET ${url} answered 200 OK, but the body does not contain "\\"red\\"" (it starts "{\\"status\\":\\"green\\",\\"nodes\\":3}")`);
    assert.match(e1.hint ?? '', /runs and answers, but serves something else: .* change this check's body /);
    assert.doesNotMatch(e1.hint ?? '', /start the service/);
    const e2 = await rejection(check(http({ url, bodyMatch: '^\\[' })));
    assert.match(e2.message, /does not match \/\^\\\[\//);
    assert.match(e2.hint ?? '', /change this check's bodyMatch /);
    assert.ok(!httpKind.schema.safeParse({ url, bodyMatch: '(' }).success, 'an invalid regex is a schema error');
  });

  test('headers are sent; credentials in the URL become basic auth and are never printed', async () => {
    const seen: IncomingMessage['headers'][] = [];
    const s = await httpServer((req, res) => {
      seen.push(req.headers);
      res.writeHead(req.headers.authorization === `Basic ${Buffer.from('bob:s3cret').toString('base64')}` ? 200 : 401).end();
    });
    assert.equal((await check(http({ url: `http://bob:s3cret@127.0.0.1:${s.port}/`, headers: { 'X-Probe': 'yes' } }))).converged, true);
    assert.equal(seen[0]?.['x-probe'], 'yes');
    const err = await rejection(check(http({ url: `http://bob:wrong@127.0.0.1:${s.port}/` })));
    assert.equal(err.message, `GET http://bob:***@127.0.0.1:${s.port}/ answered 401 Unauthorized (expected 200)`);
  });

  test('a server that never answers fails after timeout', async () => {
    const s = await httpServer(() => undefined);
    const started = Date.now();
    const err = await rejection(check(http({ url: `http://127.0.0.1:${s.port}/`, timeout: '300ms' })));
    const took = Date.now() - started;
    assert.equal(err.message, `GET http://127.0.0.1:${s.port}/ did not answer within 300ms`);
    assert.ok(took >= 290 && took < 3000, `took ${took}ms`);
  });

  test('a body that never ends also times out', async () => {
    const s = await httpServer((_req, res) => res.write('partial'));
    const err = await rejection(check(http({ url: `http://127.0.0.1:${s.port}/`, body: 'complete', timeout: '300ms' })));
    assert.match(err.message, /did not answer within 300ms$/);
  });

  test('aborting the run stops a request at once', async () => {
    const s = await httpServer(() => undefined);
    const ac = new AbortController();
    const started = Date.now();
    const p = check(http({ url: `http://127.0.0.1:${s.port}/`, timeout: '30s' }), { signal: ac.signal });
    setTimeout(() => ac.abort(), 100);
    const err = await rejection(p);
    assert.equal(err.code, 'E_ABORTED');
    assert.ok(Date.now() - started < 2000);
  });

  test('noop mode probes a GET but reports instead of failing; it never sends a POST', async () => {
    let posts = 0;
    const s = await httpServer((req, res) => {
      if (req.method === 'POST') posts++;
      res.writeHead(503).end();
    });
    const url = `http://127.0.0.1:${s.port}/`;
    const r = await check(http({ url }), { apply: false });
    assert.deepEqual(r, { converged: false, changes: [`not ready: GET ${url} answered 503 Service Unavailable (expected 200)`] });
    const post = await check(http({ url, method: 'POST' }), { apply: false });
    assert.equal(post.converged, false);
    assert.match(post.changes[0] ?? '', /^would send POST /);
    assert.equal(posts, 0);
  });

  test('the watch reports the endpoint coming up and going down, and nothing while it stays put', async () => {
    const port = await freePort();
    const res = http({ url: `http://127.0.0.1:${port}/`, interval: '100ms', timeout: '500ms' });
    await rejection(check(res)); // down: the watch's baseline
    const w = await startWatch(res);
    try {
      await new Promise((r) => setTimeout(r, 350));
      assert.deepEqual(w.events, [], 'no event while it stays down');
      const s = await httpServer(ok(), port);
      await until(() => w.events.length > 0, 5000, 'came-up event');
      assert.match(w.events[0] ?? '', /^came up: GET .* answered 200 OK$/);
      assert.equal((await check(res)).converged, true);
      const count = w.events.length;
      await new Promise((r) => setTimeout(r, 350));
      assert.equal(w.events.length, count, 'no event while it stays up');
      await s.close();
      await until(() => w.events.length > count, 5000, 'went-down event');
      assert.match(w.events.at(-1) ?? '', /^went down: .*connection refused/);
    } finally {
      await w.stop();
    }
  });

  test('the watch ends promptly when aborted, also in the middle of a probe', async () => {
    const s = await httpServer(() => undefined);
    const res = http({ url: `http://127.0.0.1:${s.port}/`, interval: '100ms', timeout: '30s' });
    const w = await startWatch(res);
    await new Promise((r) => setTimeout(r, 250)); // a probe is now hanging on the silent server
    const started = Date.now();
    await w.stop();
    assert.ok(Date.now() - started < 1000);
  });

  test('schema: bad URLs and intervals are rejected', () => {
    for (const params of [{ url: 'ftp://x/' }, { url: 'not a url' }, { url: 'http://x/', interval: '10ms' }, { url: 'http://x/', timeout: 0 }]) {
      assert.ok(!httpKind.schema.safeParse(params).success, JSON.stringify(params));
    }
  });
});

// ---- tcp -----------------------------------------------------------------------------------------------------

function tcpServer(onConn: (s: Socket) => void, port = 0): Promise<Running> {
  return listen(createNetServer(onConn), port);
}

describe('tcp', () => {
  test('converged when the port accepts a connection; address, host+port and the name all work', async () => {
    const s = await tcpServer((c) => c.end());
    assert.deepEqual(await check(tcp({ address: `127.0.0.1:${s.port}` })), { converged: true, changes: [] });
    assert.equal((await check(tcp({ port: s.port }))).converged, true);
    assert.equal((await check(tcp({ host: 'localhost', port: s.port }))).converged, true);
    const name = `127.0.0.1:${s.port}`;
    assert.deepEqual(tcpKind.defaults?.(name), { address: name });
    assert.deepEqual(tcpKind.defaults?.('redis'), {});
    assert.equal((await check(tcp({ ...tcpKind.defaults?.(name) }))).converged, true);
  });

  test('a closed port fails retryably', async () => {
    const port = await freePort();
    const err = await rejection(check(tcp({ address: `127.0.0.1:${port}` })));
    assert.equal(err.code, 'E_APPLY');
    assert.equal(err.retryable, true);
    assert.equal(err.message, `connect to 127.0.0.1:${port} failed: connection refused`);
  });

  test('send/expect: converged when the answer contains the expected text', async () => {
    const s = await tcpServer((c) => c.on('data', (d) => c.write(String(d).includes('PING') ? '+PONG\r\n' : '-ERR\r\n')));
    assert.equal((await check(tcp({ port: s.port, send: 'PING\r\n', expect: '+PONG' }))).converged, true);
    const err = await rejection(check(tcp({ port: s.port, send: 'HELLO\r\n', expect: '+PONG', timeout: '300ms' })));
    assert.equal(err.message, `127.0.0.1:${s.port} accepted the connection but did not send "+PONG" within 300ms (got "-ERR\\r\\n")`);
  });

  test('a banner is read without sending anything; a server that hangs up is reported', async () => {
    const banner = await tcpServer((c) => c.end('220 mail.example ESMTP\r\n'));
    assert.equal((await check(tcp({ port: banner.port, expect: '220 ' }))).converged, true);
    const err = await rejection(check(tcp({ port: banner.port, expect: 'SSH-2.0' })));
    assert.equal(err.message, `127.0.0.1:${banner.port} closed the connection without sending "SSH-2.0" (got "220 mail.example ESMTP\\r\\n")`);
  });

  test('a server that accepts but never answers times out', async () => {
    const s = await tcpServer(() => undefined);
    const started = Date.now();
    const err = await rejection(check(tcp({ port: s.port, expect: 'x', timeout: '300ms' })));
    assert.equal(err.message, `127.0.0.1:${s.port} accepted the connection but did not send "x" within 300ms`);
    assert.ok(Date.now() - started < 3000);
  });

  test('aborting stops a probe at once', async () => {
    const s = await tcpServer(() => undefined);
    const ac = new AbortController();
    const p = check(tcp({ port: s.port, expect: 'x', timeout: '30s' }), { signal: ac.signal });
    setTimeout(() => ac.abort(), 100);
    const err = await rejection(p);
    assert.equal(err.code, 'E_ABORTED');
  });

  test('noop mode reports a closed port instead of failing', async () => {
    const port = await freePort();
    const r = await check(tcp({ port }), { apply: false });
    assert.deepEqual(r, { converged: false, changes: [`not ready: connect to 127.0.0.1:${port} failed: connection refused`] });
  });

  test('the watch reports the port coming up and going down', async () => {
    const port = await freePort();
    const res = tcp({ port, interval: '100ms' });
    await rejection(check(res));
    const w = await startWatch(res);
    try {
      const s = await tcpServer((c) => c.end(), port);
      await until(() => w.events.length > 0, 5000, 'came-up event');
      assert.equal(w.events[0], `came up: 127.0.0.1:${port} accepted a connection`);
      await s.close();
      await until(() => w.events.length > 1, 5000, 'went-down event');
      assert.equal(w.events[1], `went down: connect to 127.0.0.1:${port} failed: connection refused`);
    } finally {
      await w.stop();
    }
  });

  test('schema: an address or a port is required, and must be valid', () => {
    const bad = [{}, { host: 'x' }, { address: 'x' }, { address: 'x:0' }, { address: 'x:70000' }, { port: 0 }, { address: '::1:80' }];
    for (const params of bad) assert.ok(!tcpKind.schema.safeParse(params).success, JSON.stringify(params));
    assert.ok(tcpKind.schema.safeParse({ address: '[::1]:6379' }).success);
    assert.ok(tcpKind.schema.safeParse({ address: 'db.internal:5432' }).success);
  });
});

// ---- through the engine --------------------------------------------------------------------------------------

describe('http and tcp as gates in a graph', () => {
  test('with retry: -1 a dependent waits until the service answers', async () => {
    await withTempDir(async (dir) => {
      const port = await freePort();
      const marker = join(dir, 'ran');
      const h = harness([httpKind, tcpKind]);
      await h.engine.setGraph(
        h.graph(`
resources:
  - kind: http
    name: http://127.0.0.1:${port}/health
    meta: { retry: -1, delay: 100ms }
  - kind: exec
    name: client
    cmd: [touch, ${marker}]
    require: ["http[http://127.0.0.1:${port}/health]"]
`),
      );
      try {
        await new Promise((r) => setTimeout(r, 400));
        assert.equal(existsSync(marker), false, 'the dependent ran before the service was up');
        assert.equal(h.engine.settled, false, 'retrying forever keeps the graph from settling');
        await httpServer(ok(), port);
        await until(() => existsSync(marker), 5000, 'the dependent to run');
        await h.settled();
        assert.equal(h.engine.summary().ok, true);
      } finally {
        await h.engine.stop();
      }
    });
  });

  test('without retries the dependent is blocked, and runs when the watch sees the service come up', async () => {
    await withTempDir(async (dir) => {
      const port = await freePort();
      const marker = join(dir, 'ran');
      const h = harness([httpKind, tcpKind]);
      await h.engine.setGraph(
        h.graph(`
resources:
  - { kind: tcp, name: "127.0.0.1:${port}", interval: 100ms }
  - { kind: exec, name: client, cmd: [touch, ${marker}], require: ["tcp[127.0.0.1:${port}]"] }
`),
      );
      try {
        await h.settled();
        const states = Object.fromEntries(h.engine.status().map((s) => [s.id, s.state]));
        assert.deepEqual(states, { [`tcp[127.0.0.1:${port}]`]: 'failed', 'exec[client]': 'blocked' });
        await tcpServer((c) => c.end(), port);
        await until(() => existsSync(marker), 5000, 'the dependent to run');
        await h.settled();
        assert.equal(h.engine.summary().ok, true);
      } finally {
        await h.engine.stop();
      }
    });
  });
});
