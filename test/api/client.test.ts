import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer, type IncomingMessage, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { clientFor, directClient, errorFromBody } from '../../src/api/client.js';
import { ApiError } from '../../src/api/ops.js';
import { servicesGet, servicesList } from '../../src/api/ops/services.js';
import { BackplaneError } from '../../src/errors.js';
import { runCli } from '../helpers/cli.js';
import { deploy, newCluster, startAgent, stopCluster, workloadSpec, type TestCluster } from '../helpers/services.js';
import { makeCa, makeCert, opensslAvailable } from '../helpers/tls.js';

/**
 * The CLI's API client: through the local agent's socket and directly on the store it answers the same; an error
 * body becomes the error (message, hint, exit code) the CLI printed before there was an API; an answer of another
 * shape is an error naming the op; over HTTPS it sends the token and trusts --api-ca.
 */

function listen(server: Server, where: string | number): Promise<void> {
  return new Promise((resolve) => (typeof where === 'string' ? server.listen(where, resolve) : server.listen(where, '127.0.0.1', resolve)));
}

describe('API client', { timeout: 240_000 }, () => {
  let work: string;
  let c: TestCluster;
  let stateDir: string;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'bp-client-'));
    c = await newCluster(join(work, 'c'), [], 'default');
    stateDir = join(c.root, 'state-solo');
    (c.op as string[]).splice(0, c.op.length, '--state-dir', stateDir);
    await startAgent(c, 'solo', { capacity: 'cpu=4,memory=1G' });
    const flags = join(c.root, 'flags');
    await mkdir(flags, { recursive: true });
    const r = await deploy(c, 'web', workloadSpec('web', 2, flags), ['--wait', '60s']);
    assert.equal(r.code, 0, r.stderr + r.stdout);
  });

  after(async () => {
    await stopCluster(c);
    await rm(work, { recursive: true, force: true });
  });

  test('socket mode (the running agent) and direct mode (the store) answer services.list the same', async () => {
    const socket = await clientFor({ stateDir, cluster: 'default' });
    const direct = directClient({ stateDir, cluster: 'default' });
    try {
      assert.equal(socket.mode, 'socket');
      assert.equal(direct.mode, 'direct');
      const a = await socket.call(servicesList, {});
      const b = await direct.call(servicesList, {});
      assert.equal(a.length, 1);
      assert.equal(a[0]?.name, 'web');
      assert.equal(a[0]?.namespace, 'default');
      assert.deepEqual(a, b);
    } finally {
      await socket.close();
      await direct.close();
    }
  });

  test('an error body becomes the same error as in direct mode, and the CLI prints it with the same exit code', async () => {
    const socket = await clientFor({ stateDir, cluster: 'default' });
    const direct = directClient({ stateDir, cluster: 'default' });
    try {
      const viaSocket = await socket.call(servicesGet, { name: 'nope' }).then(() => undefined, (e: unknown) => e);
      const viaStore = await direct.call(servicesGet, { name: 'nope' }).then(() => undefined, (e: unknown) => e);
      assert.ok(viaSocket instanceof ApiError);
      assert.ok(viaStore instanceof ApiError);
      assert.equal(viaSocket.status, 404);
      assert.equal(viaSocket.code, 'E_USAGE');
      assert.equal(viaSocket.format(), viaStore.format());
      assert.equal(viaSocket.format(), 'no service "nope"\n  hint: see `backplane services`');
    } finally {
      await socket.close();
      await direct.close();
    }
    const r = await runCli(['service', 'nope', '--state-dir', stateDir]);
    assert.equal(r.code, 2);
    assert.equal(r.stderr, 'error: no service "nope"\n  hint: see `backplane services`\n');
    // A controller's refusal is exit 1, as before.
    const pause = await runCli(['rollout', 'pause', 'web', '--state-dir', stateDir]);
    assert.equal(pause.code, 1, pause.stderr);
    assert.match(pause.stderr, /^error: plan web-\d+ is complete: nothing to pause/);
  });

  test('the hint is said once, also when the message carries it', () => {
    const e = errorFromBody(500, JSON.stringify({ error: { status: 500, code: 'E_IO', message: 'store down\n  hint: try again', hint: 'try again' } }), 'x');
    assert.equal(e.format(), 'store down\n  hint: try again');
    assert.equal(e.code, 'E_IO');
    const odd = errorFromBody(502, '<html>bad gateway</html>', 'services.list at h');
    assert.match(odd.message, /services\.list at h: HTTP 502: <html>bad gateway<\/html>/);
  });

  test('an answer of another shape is an error naming the op', async () => {
    const dir = join(work, 'fake');
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const server = createHttpServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify([{ name: 1 }]));
    });
    await listen(server, join(dir, 'api.sock'));
    try {
      const client = await clientFor({ stateDir: dir, cluster: 'default' });
      assert.equal(client.mode, 'socket');
      await assert.rejects(client.call(servicesList, {}), (e: unknown) => e instanceof BackplaneError && /^services\.list: the answer from .*api\.sock does not match what this CLI expects: 0\.name/.test(e.message));
    } finally {
      server.close();
    }
  });

  test('--api: HTTPS with the token from $BACKPLANE_TOKEN or --token-file, trusting --api-ca; the path and query carry the input', { skip: !opensslAvailable() }, async () => {
    const dir = join(work, 'tls');
    await mkdir(dir, { recursive: true });
    const ca = makeCa(dir, 'ca');
    const cert = makeCert(dir, ca, 'server', 'localhost', 'server');
    const seen: { url: string; auth: string | undefined }[] = [];
    const server = createHttpsServer({ cert: readFileSync(cert.cert), key: readFileSync(cert.key) }, (req: IncomingMessage, res) => {
      seen.push({ url: req.url ?? '', auth: req.headers.authorization });
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { status: 404, code: 'E_USAGE', message: 'no service "x y"', hint: 'see `backplane services`' } }));
    });
    await listen(server, 0);
    const port = (server.address() as AddressInfo).port;
    try {
      const client = await clientFor({ cluster: 'default', api: `https://localhost:${port}`, apiCa: ca.cert }, { BACKPLANE_TOKEN: 'bpt_a_b' });
      assert.equal(client.mode, 'https');
      await assert.rejects(client.call(servicesGet, { name: 'x y', events: 3 }), (e: unknown) => e instanceof ApiError && e.status === 404 && e.message === 'no service "x y"');
      assert.deepEqual(seen.at(-1), { url: '/v1/services/x%20y?events=3', auth: 'Bearer bpt_a_b' });
      const tokenFile = join(dir, 'token');
      await writeFile(tokenFile, 'bpt_c_d\n', { mode: 0o600 });
      const cli = await runCli(['service', 'x y', '--api', `https://localhost:${port}`, '--api-ca', ca.cert, '--token-file', tokenFile]);
      assert.equal(cli.code, 2);
      assert.equal(cli.stderr, 'error: no service "x y"\n  hint: see `backplane services`\n');
      assert.equal(seen.at(-1)?.auth, 'Bearer bpt_c_d');
      // Not trusted without --api-ca: the hint says what to pass.
      const untrusted = await runCli(['services', '--api', `https://localhost:${port}`, '--token-file', tokenFile]);
      assert.equal(untrusted.code, 2);
      assert.match(untrusted.stderr, /--api-ca FILE/);
      // No token: refused before anything is sent.
      const before = seen.length;
      const none = await runCli(['services', '--api', `https://localhost:${port}`, '--api-ca', ca.cert]);
      assert.equal(none.code, 2);
      assert.match(none.stderr, /--api needs a token: --token-file FILE or \$BACKPLANE_TOKEN/);
      assert.equal(seen.length, before);
    } finally {
      server.close();
    }
  });
});
