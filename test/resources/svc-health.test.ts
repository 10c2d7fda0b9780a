import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, test } from 'node:test';
import type { HealthParams } from '../../src/resources/svc-schema.js';
import { makeProbe, type ProbeResult } from '../../src/resources/svc/health.js';
import { freePort } from '../helpers/net.js';
import { makeCa, opensslAvailable } from '../helpers/tls.js';

/**
 * The svc http health check against real servers on loopback: each server is a script of writes on the raw socket,
 * so every way an answer can arrive (split, interim, garbage, never) is what the probe really reads.
 */

const servers: Server[] = [];
const conns: Socket[] = [];
after(() => {
  for (const s of servers) s.close();
  for (const c of conns) c.destroy();
});

interface Seen {
  /** The request as the server read it, up to its blank line. */
  head: Promise<string>;
  /** When the server's socket is closed: how the client ended the connection, 'end' (a FIN) or the error code. */
  closed: Promise<string>;
}

/** A server that runs `answer` on each connection once the request head is in; `seen()` tells about the last one. */
async function server(answer: (sock: Socket) => void | Promise<void>, host = '127.0.0.1', allowHalfOpen = false): Promise<{ port: number; seen: () => Seen }> {
  let last: Seen | undefined;
  const s = createServer({ allowHalfOpen }, (sock) => {
    conns.push(sock);
    let buf = '';
    let gotHead: (h: string) => void = () => {};
    let how = 'closed without an end';
    let gotClose: (how: string) => void = () => {};
    last = {
      head: new Promise((r) => (gotHead = r)),
      closed: new Promise((r) => (gotClose = r)),
    };
    sock.on('data', (d: Buffer) => {
      if (buf.includes('\r\n\r\n')) return;
      buf += d.toString('latin1');
      const i = buf.indexOf('\r\n\r\n');
      if (i !== -1) {
        gotHead(buf.slice(0, i));
        void answer(sock);
      }
    });
    sock.on('end', () => (how = 'end'));
    sock.on('error', (err: NodeJS.ErrnoException) => (how = err.code ?? err.message));
    sock.on('close', () => gotClose(how));
  });
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, host, () => r()));
  return {
    port: (s.address() as AddressInfo).port,
    seen: () => {
      assert.ok(last, 'nothing connected');
      return last;
    },
  };
}

function params(url: string, timeout = 2000): HealthParams {
  return { http: url, interval: 5000, timeout, failures: 3, startPeriod: 10_000 };
}

function probe(url: string, timeout?: number): Promise<ProbeResult> {
  return makeProbe(params(url, timeout), process.env, '/')(new AbortController().signal);
}

const reason = (r: ProbeResult): string => (r.ok ? 'ok' : r.reason);

/** Writes an answer and closes politely. */
const answer =
  (text: string) =>
  (sock: Socket): void => {
    sock.end(text);
  };

describe('svc health: http', () => {
  test('2xx and 3xx are healthy, the rest answered <status>; the request is GET path?query with Host, User-Agent and Connection: close', async () => {
    for (const [status, want] of [
      ['200 OK', 'ok'],
      ['204 No Content', 'ok'],
      ['302 Found', 'ok'],
      ['399 X', 'ok'],
      ['404 Not Found', 'answered 404'],
      ['500 Internal Server Error', 'answered 500'],
      ['199 X', 'closed'],
    ] as const) {
      const s = await server(answer(`HTTP/1.1 ${status}\r\nContent-Length: 0\r\n\r\n`));
      const url = `http://127.0.0.1:${s.port}/a/b?x=1&y=%20#frag`;
      const r = await probe(url);
      if (want === 'ok') assert.deepEqual(r, { ok: true }, status);
      // An interim answer with nothing after it is not a final one.
      else if (want === 'closed') assert.equal(reason(r), `GET ${url} failed: the connection was closed before a full status line`);
      else assert.equal(reason(r), `GET ${url} ${want}`);
      assert.equal(
        await s.seen().head,
        `GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: 127.0.0.1:${s.port}\r\nUser-Agent: backplane-health\r\nConnection: close`,
      );
    }
  });

  test("the request carries what node:http's would: the same request line and headers, userinfo as basic auth", async () => {
    for (const rest of ['/', '/h?q', '/p%20q/', '/x?a=%C3%A9#f']) {
      for (const user of ['', 'u@', 'us%20er:p%40ss@', ':pw@']) {
        const s = await server(answer('HTTP/1.1 200 OK\r\n\r\n'));
        const url = `http://${user}127.0.0.1:${s.port}${rest}`;
        assert.deepEqual(await probe(url), { ok: true });
        const ours = await s.seen().head;
        await new Promise<void>((resolve, reject) => {
          const req = request(url, { agent: false, headers: { 'user-agent': 'backplane-health' } }, (res) => {
            res.resume();
            resolve();
          });
          req.on('error', reject);
          req.end();
        });
        const nodes = await s.seen().head;
        // The same lines; node sends them in another order and lower-cases the names it was given.
        const norm = (h: string): string[] => {
          const [line = '', ...headers] = h.split('\r\n');
          return [line, ...headers.map((x) => x.replace(/^[^:]+/, (n) => n.toLowerCase())).sort()];
        };
        assert.deepEqual(norm(ours), norm(nodes), url);
        if (user !== '') assert.match(ours, /\r\nAuthorization: Basic /);
      }
    }
  });

  test('a 1xx interim answer (100 Continue, 103 Early Hints with headers) is skipped for the next status line', async () => {
    let s = await server(answer('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n'));
    assert.deepEqual(await probe(`http://127.0.0.1:${s.port}/`), { ok: true });
    s = await server(answer('HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nLink: </b.js>\r\n\r\nHTTP/1.1 503 Busy\r\n\r\n'));
    assert.equal(reason(await probe(`http://127.0.0.1:${s.port}/`)), `GET http://127.0.0.1:${s.port}/ answered 503`);
    // Interim answers and their final one, each in a packet of its own.
    s = await server(async (sock) => {
      sock.write('HTTP/1.1 100 Continue\r\n\r\n');
      await sleep(20);
      sock.write('HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n');
      await sleep(20);
      sock.end('HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n');
    });
    assert.deepEqual(await probe(`http://127.0.0.1:${s.port}/`), { ok: true });
  });

  test('a status line in 1-byte writes is read whole', async () => {
    for (const [text, want] of [
      ['HTTP/1.1 200 OK\r\n\r\n', 'ok'],
      ['HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 404 Nope\r\n\r\n', 'answered 404'],
    ] as const) {
      const s = await server(async (sock) => {
        sock.setNoDelay(true);
        for (const c of text) {
          sock.write(c);
          await sleep(2);
        }
        sock.end();
      });
      const url = `http://127.0.0.1:${s.port}/`;
      const r = await probe(url);
      assert.equal(reason(r), want === 'ok' ? 'ok' : `GET ${url} ${want}`);
    }
  });

  test('garbage, a close before a full status line, or no final status line in 16 KiB: a failure that says so', async () => {
    let s = await server(answer('SSH-2.0-OpenSSH_9.6\r\n'));
    let url = `http://127.0.0.1:${s.port}/`;
    assert.equal(reason(await probe(url)), `GET ${url} answered with a malformed status line: "SSH-2.0-OpenSSH_9.6"`);
    s = await server(answer('HTTP/1.1 2OO OK\r\n\r\n'));
    url = `http://127.0.0.1:${s.port}/`;
    assert.equal(reason(await probe(url)), `GET ${url} answered with a malformed status line: "HTTP/1.1 2OO OK"`);
    // Garbage from a server that then waits: told at once, not at the timeout.
    s = await server((sock) => void sock.write('<html>'));
    url = `http://127.0.0.1:${s.port}/`;
    let t0 = Date.now();
    assert.equal(reason(await probe(url, 5000)), `GET ${url} answered with a malformed status line: "<html>"`);
    assert.ok(Date.now() - t0 < 2000, `took ${Date.now() - t0} ms`);
    s = await server((sock) => void sock.end());
    url = `http://127.0.0.1:${s.port}/`;
    assert.equal(reason(await probe(url)), `GET ${url} failed: the connection was closed without an answer`);
    s = await server(answer('HTTP/1.1 20'));
    url = `http://127.0.0.1:${s.port}/`;
    assert.equal(reason(await probe(url)), `GET ${url} failed: the connection was closed before a full status line`);
    // Interim answers without end, then silence: bounded by bytes, not only by the timeout.
    s = await server((sock) => void sock.write(`HTTP/1.1 103 Early Hints\r\n${'Link: </x>\r\n'.repeat(2000)}`));
    url = `http://127.0.0.1:${s.port}/`;
    t0 = Date.now();
    assert.equal(reason(await probe(url, 5000)), `GET ${url} answered more than 16384 bytes without a final status line`);
    assert.ok(Date.now() - t0 < 2000, `took ${Date.now() - t0} ms`);
  });

  // A timeout of the test's own: a check bounded only by idleness would wait forever for the drip.
  test('the timeout bounds the whole check: a server that never answers, or one that drips an endless interim answer', { timeout: 5000 }, async () => {
    let s = await server(() => {});
    let url = `http://127.0.0.1:${s.port}/`;
    let t0 = Date.now();
    assert.equal(reason(await probe(url, 150)), `GET ${url} timed out after 150ms`);
    let took = Date.now() - t0;
    assert.ok(took >= 140 && took < 1000, `took ${took} ms`);
    await s.seen().closed;
    s = await server(async (sock) => {
      sock.write('HTTP/1.1 100 Continue\r\nX-Slow: ');
      while (!sock.destroyed) {
        sock.write('a');
        await sleep(20);
      }
    });
    url = `http://127.0.0.1:${s.port}/`;
    t0 = Date.now();
    assert.equal(reason(await probe(url, 200)), `GET ${url} timed out after 200ms`);
    took = Date.now() - t0;
    assert.ok(took >= 190 && took < 1000, `took ${took} ms`);
  });

  test('connection refused', async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}/health`;
    assert.equal(reason(await probe(url)), `GET ${url} failed: ECONNREFUSED`);
  });

  test('a polite close: the rest of the answer is read, the server sees a FIN, not a reset', async () => {
    // Half-open allowed: the server goes on sending after the client's FIN.
    const s = await server(
      async (sock) => {
        sock.write('HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n');
        // The body comes after the probe has its status: a client that closed at once would answer it with a reset.
        await sleep(30);
        sock.end(Buffer.alloc(1 << 20, 'x'));
      },
      '127.0.0.1',
      true,
    );
    // Other tests' servers may still hold connections: closed first, so that what is left is this check's.
    for (const c of conns) c.destroy();
    await sleep(50);
    const handles = (): string => ['Timeout', 'TCPSocketWrap'].map((k) => process.getActiveResourcesInfo().filter((x) => x === k).length).join(' ');
    const before = handles();
    assert.deepEqual(await probe(`http://127.0.0.1:${s.port}/`, 5000), { ok: true });
    assert.equal(await s.seen().closed, 'end');
    // Nothing of the check (socket, timers) is left soon after (a one-shot run must be able to exit).
    for (let i = 0; i < 100 && handles() !== before; i++) await sleep(10);
    assert.equal(handles(), before);
  });

  test('a server that never closes after its answer cannot keep the socket past the timeout', async () => {
    // An event stream that ignores the client's FIN: only the client's close ends it (its writes then fail).
    const s = await server(
      async (sock) => {
        sock.write('HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n');
        while (!sock.destroyed) {
          sock.write('data: x\n\n');
          await sleep(20);
        }
      },
      '127.0.0.1',
      true,
    );
    const t0 = Date.now();
    assert.deepEqual(await probe(`http://127.0.0.1:${s.port}/`, 200), { ok: true });
    assert.equal(await Promise.race([s.seen().closed.then(() => 'closed'), sleep(1500, 'still open')]), 'closed');
    const took = Date.now() - t0;
    assert.ok(took >= 190, `took ${took} ms`);
  });

  test('localhost and an IPv6 literal: connected to, and named in Host as the URL has them', async () => {
    let s = await server(answer('HTTP/1.1 200 OK\r\n\r\n'));
    assert.deepEqual(await probe(`http://localhost:${s.port}/up`), { ok: true });
    assert.match(await s.seen().head, new RegExp(`^GET /up HTTP/1\\.1\r\nHost: localhost:${s.port}\r\n`));
    try {
      s = await server(answer('HTTP/1.1 200 OK\r\n\r\n'), '::1');
    } catch {
      return; // no IPv6 loopback on this machine
    }
    assert.deepEqual(await probe(`http://[::1]:${s.port}/`), { ok: true });
    assert.match(await s.seen().head, new RegExp(`^GET / HTTP/1\\.1\r\nHost: \\[::1\\]:${s.port}\r\n`));
  });

  test('https:// still goes through TLS (node:https): an untrusted certificate is a failure', { skip: !opensslAvailable() }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bp-health-'));
    try {
      const ca = makeCa(dir, 'self');
      const s = createHttpsServer({ cert: readFileSync(ca.cert), key: readFileSync(ca.key) }, (_req, res) => res.end('ok'));
      servers.push(s);
      await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
      const url = `https://127.0.0.1:${(s.address() as AddressInfo).port}/`;
      assert.match(reason(await probe(url)), new RegExp(`^GET ${url} failed: (DEPTH_ZERO_SELF_SIGNED_CERT|SELF_SIGNED_CERT_IN_CHAIN|ERR_TLS_CERT_ALTNAME_INVALID)$`));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
