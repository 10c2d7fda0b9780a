import assert from 'node:assert/strict';
import { chmod, lstat, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { serveControl, type ControlServer } from '../../src/cluster/control-server.js';
import { controlSocketPath } from '../../src/cluster/control-protocol.js';
import { EmbeddedStore } from '../../src/cluster/embedded-store.js';
import { RemoteStore } from '../../src/cluster/remote-store.js';
import { StoreError } from '../../src/cluster/store.js';
import { createLogger } from '../../src/log.js';
import { createOtherUser, skipReason } from '../helpers/other-user.js';
import { Recorder, rejectsWith, storeContract, until } from './store-contract.js';

const log = createLogger({ level: 'silent' });
const cleanup: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const fn of cleanup.reverse()) await fn().catch(() => undefined);
});

async function stateDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'bp-ctl-'));
  cleanup.push(() => rm(d, { recursive: true, force: true }));
  return d;
}

/** An agent's half of it: the embedded store in `<dir>/store`, served on `<dir>/control.sock`. */
async function agentSide(dir?: string): Promise<{ dir: string; store: EmbeddedStore; server: ControlServer }> {
  const d = dir ?? (await stateDir());
  const store = await EmbeddedStore.open({ dir: join(d, 'store') });
  const server = await serveControl(store, d, log);
  cleanup.push(async () => {
    await server.close();
    await store.close();
  });
  return { dir: d, store, server };
}

// Every operation the CLI needs, through the socket, against the same contract as the stores themselves.
storeContract('embedded through the control socket', {
  leases: false,
  open: async () => {
    const { dir } = await agentSide();
    return new RemoteStore({ socketPath: controlSocketPath(dir) });
  },
});

/** A raw POST to the socket, as any local program could send it. */
function post(socketPath: string, path: string, body: Buffer | string): Promise<{ status: number; json: { error?: { reason: string; message: string } } }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'POST', headers: { 'content-length': Buffer.byteLength(body) } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(text) as { error?: { reason: string; message: string } } }));
    });
    // The server may answer and close before the whole body is sent: the answer is what counts.
    req.on('error', reject);
    req.end(body);
  });
}

describe('control socket', () => {
  test('the socket is 0600 in the 0700 state directory; a stale one is replaced, anything else refused; close removes it', async () => {
    const dir = await stateDir();
    const path = controlSocketPath(dir);
    // A socket left behind by a killed agent: replaced.
    const stale = await agentSide(dir);
    await stale.store.close();
    const first = await agentSide(dir);
    assert.equal(((await lstat(path)).mode & 0o777).toString(8), '600');
    assert.equal(((await stat(dir)).mode & 0o777).toString(8), '700');
    const remote = new RemoteStore({ socketPath: path });
    await first.store.put('k', 'v');
    assert.equal((await remote.get('k'))?.value, 'v');
    const h = await remote.health();
    assert.ok(h.ok, h.detail);
    assert.match(h.detail, new RegExp(`served by agent pid ${process.pid}.*through ${path}`));
    await remote.close();
    await first.server.close();
    await first.server.close();
    await assert.rejects(lstat(path), /ENOENT/, 'close removes the socket');
    await first.store.close();
    // Leftover stale server handle from above: closing it later must not remove someone else's socket.
    const second = await agentSide(dir);
    await stale.server.close();
    assert.ok((await lstat(path)).isSocket(), "an old server's close leaves the new socket alone");
    await second.server.close();

    await writeFile(path, 'not a socket');
    await assert.rejects(serveControl(second.store, dir, log), (err: Error) => /is not a socket; refusing/.test(err.message));
    await rm(path);
    // A state directory others may enter is not served: the directory is what keeps other users off the socket.
    await chmod(dir, 0o711);
    await assert.rejects(serveControl(second.store, dir, log), (err: Error) => /open to group or others \(mode 0711\)/.test(err.message));
    await chmod(dir, 0o700);
  });

  test('oversized requests are refused cleanly and the server keeps serving', async () => {
    const { dir, store } = await agentSide();
    const path = controlSocketPath(dir);
    const remote = new RemoteStore({ socketPath: path });
    try {
      // Past the store's limit: refused before it is sent, with the store's own message.
      await rejectsWith(remote.put('big', 'x'.repeat(1_600_000)), 'too-large', /"big" is \d+ bytes/);
      // Under the store's limit but huge once JSON-escaped: refused by the socket's limit.
      await rejectsWith(remote.put('ctl', '\u0001'.repeat(1_400_000)), 'too-large', /once encoded for the control socket/);
      // A raw 10 MB body: the server answers 413 without reading it all, and stays up.
      const raw = await post(path, '/v1/put', Buffer.alloc(10 * 1024 * 1024, 0x61));
      assert.equal(raw.status, 413);
      assert.equal(raw.json.error?.reason, 'too-large');
      assert.match(raw.json.error?.message ?? '', /may carry at most \d+ bytes/);
      // Malformed requests: named, not crashed on.
      const bad = await post(path, '/v1/put', '{"key": 1}');
      assert.equal(bad.status, 400);
      assert.equal(bad.json.error?.reason, 'invalid');
      assert.equal((await post(path, '/v1/nope', '{}')).json.error?.reason, 'invalid');
      const leased = await post(path, '/v1/put', '{"key":"a","value":"b","lease":"1"}');
      assert.equal(leased.json.error?.reason, 'unsupported');
      await remote.put('after', 'ok');
      assert.equal((await store.get('after'))?.value, 'ok');
      assert.equal(await store.get('big'), undefined);
    } finally {
      await remote.close();
    }
  });

  test('store errors come across with reason, message and hint; leases and elections are unsupported', async () => {
    const { dir, store } = await agentSide();
    const remote = new RemoteStore({ socketPath: controlSocketPath(dir) });
    try {
      const err = await rejectsWith(remote.compact(10_000), 'invalid', /only at revision/);
      assert.ok(err instanceof StoreError);
      await rejectsWith(remote.lease(), 'unsupported', /control socket/);
      await rejectsWith(remote.campaign(), 'unsupported');
      const lease = await store.lease(1000);
      await rejectsWith(remote.put('x', 'y', { lease }), 'unsupported', /with a lease/);
      await rejectsWith(remote.txn([{ put: 'x', value: 'y', lease }]), 'unsupported');
      await lease.revoke();
      // The agent's store closed under the server: the error says so.
      await store.close();
      await rejectsWith(remote.get('x'), 'closed', /is closed/);
    } finally {
      await remote.close();
    }
  });

  test('a watch through the socket resumes after the agent restarts its server, missing nothing', async () => {
    const { dir, store, server } = await agentSide();
    const remote = new RemoteStore({ socketPath: controlSocketPath(dir) });
    const rec = new Recorder();
    const ac = new AbortController();
    try {
      await remote.watch('w/', 0, rec.onEvent, ac.signal);
      await store.put('w/1', 'a');
      await until('the first event', () => rec.summary().length === 1);
      await server.close();
      await store.put('w/2', 'b'); // while nobody serves
      const again = await serveControl(store, dir, log);
      cleanup.push(() => again.close());
      await store.put('w/3', 'c');
      await until('the events after the restart', () => rec.summary().length === 3, 10_000);
      assert.deepEqual(rec.summary(), ['put w/1=a', 'put w/2=b', 'put w/3=c']);
    } finally {
      ac.abort();
      await remote.close();
    }
  });

  test('nothing answering: a clear error that names the holder and the socket', async () => {
    const dir = await stateDir();
    const heldBy = new StoreError('locked', `the store in ${dir}/store is in use by another process (pid 4242)`);
    const err = await rejectsWith(RemoteStore.connect(dir, { heldBy }), 'unreachable');
    assert.match(err.message, new RegExp(`pid 4242\\), and its control socket ${dir}/control.sock is not answering`));
    assert.match(err.hint ?? '', /try again in a moment/);
  });

  test('another user cannot connect, even to a socket made world-writable', { skip: skipReason }, async () => {
    const { dir } = await agentSide();
    const path = controlSocketPath(dir);
    const other = createOtherUser();
    try {
      const code = `
        import { request } from 'node:http';
        const req = request({ socketPath: ${JSON.stringify(path)}, path: '/v1/health', method: 'POST', headers: { 'content-length': 2 } }, (res) => {
          process.stdout.write('connected ' + res.statusCode + '\\n');
        });
        req.on('error', (err) => process.stdout.write('error ' + err.code + '\\n'));
        req.end('{}');
      `;
      const r = await other.node(code);
      assert.equal(r.stdout.trim(), 'error EACCES', r.stderr);
      // The socket's own mode is the second line of defence; the 0700 directory alone keeps them out.
      await chmod(path, 0o666);
      const r2 = await other.node(code);
      assert.equal(r2.stdout.trim(), 'error EACCES', r2.stderr);
      // And root (the agent's user) still can.
      assert.ok((await new RemoteStore({ socketPath: path }).health()).ok);
    } finally {
      other.remove();
    }
  });
});
