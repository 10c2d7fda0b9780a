import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, mock, test } from 'node:test';
import { call, HttpError, openStream, type StreamStatus } from '../../web/api.js';
import { coalesce } from '../../web/dom.js';

/**
 * The dashboard's client side, run in Node against a real HTTP server that misbehaves the way a network can: a call
 * that never gets its answer, a body that stalls, a stream that goes silent. (The page itself is tested in Chromium
 * by dashboard.test.ts.)
 */

// The page keeps its token in sessionStorage; Node has none.
const store = new Map<string, string>();
Object.assign(globalThis, {
  sessionStorage: { getItem: (k: string) => store.get(k) ?? null, setItem: (k: string, v: string) => void store.set(k, v), removeItem: (k: string) => void store.delete(k) },
});

let server: Server;
let base: string;
const open = new Set<ServerResponse>();
let streamsOpened = 0;
let pingEveryMs = 0;

function route(req: IncomingMessage, res: ServerResponse): void {
  open.add(res);
  res.on('close', () => open.delete(res));
  if (req.url === '/never') return; // headers never come
  if (req.url === '/stalled-body') {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': '100' });
    res.write('{"a":');
    return;
  }
  if (req.url === '/ok') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"ok":true}');
    return;
  }
  if (req.url === '/v1/stream') {
    streamsOpened++;
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(`event: hello\ndata: {"n":${streamsOpened}}\n\n`);
    if (pingEveryMs > 0) {
      const t = setInterval(() => res.write(': ping\n\n'), pingEveryMs);
      res.on('close', () => clearInterval(t));
    }
    return; // then silence (or pings only)
  }
  res.writeHead(404).end();
}

before(async () => {
  server = createServer(route);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  for (const r of open) r.destroy();
  await new Promise<void>((r) => server.close(() => r()));
});

describe('API calls', { timeout: 20_000 }, () => {
  test('a call with no answer fails after its timeout, saying what it asked (a hung call must not freeze a view)', async () => {
    const t0 = Date.now();
    const err = await call('GET', `${base}/never`, undefined, undefined, 400).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(err instanceof HttpError, String(err));
    assert.equal(err.status, 0);
    assert.match(err.message, /did not answer GET .*\/never within 0.4 s/);
    assert.ok(Date.now() - t0 < 10_000);
  });

  test('a body that stalls after the headers fails the same way', async () => {
    const err = await call('GET', `${base}/stalled-body`, undefined, undefined, 400).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(err instanceof HttpError, String(err));
    assert.match(err.message, /within 0.4 s/);
  });

  test('an answer in time is the parsed JSON; the caller can still abort a call', async () => {
    assert.deepEqual(await call('GET', `${base}/ok`), { ok: true });
    const ac = new AbortController();
    const p = call('GET', `${base}/never`, undefined, ac.signal, 10_000);
    ac.abort();
    await assert.rejects(p, (e: unknown) => !(e instanceof HttpError));
  });
});

describe('the live stream', { timeout: 30_000 }, () => {
  test('a stream that goes silent is dropped and made again, and says why', async () => {
    pingEveryMs = 0;
    const before = streamsOpened;
    const hellos: unknown[] = [];
    const statuses: StreamStatus[] = [];
    const stop = openStream(
      (m) => {
        if (m.type === 'hello') hellos.push(m.data);
      },
      (s) => statuses.push(s),
      { url: `${base}/v1/stream`, idleMs: 400 },
    );
    try {
      const deadline = Date.now() + 15_000;
      while (hellos.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      assert.ok(hellos.length >= 2, `reconnected: ${JSON.stringify(statuses)}`);
      assert.ok(streamsOpened - before >= 2);
      const retry = statuses.find((s) => s.state === 'retrying');
      assert.ok(retry !== undefined && retry.state === 'retrying');
      assert.match(retry.why, /no message or ping for 0.4 s/);
    } finally {
      stop();
    }
  });

  test('pings keep a quiet stream alive: no reconnect while they come', async () => {
    pingEveryMs = 100;
    const before = streamsOpened;
    const statuses: StreamStatus[] = [];
    const stop = openStream(() => undefined, (s) => statuses.push(s), { url: `${base}/v1/stream`, idleMs: 1_000 });
    try {
      await new Promise((r) => setTimeout(r, 3_000));
      assert.equal(streamsOpened - before, 1, JSON.stringify(statuses));
      assert.deepEqual(statuses.map((s) => s.state), ['connecting', 'live']);
    } finally {
      stop();
      pingEveryMs = 0;
    }
  });
});

describe('coalesce', () => {
  test('changes that never pause still redraw, once per interval (a restarting debounce never would)', () => {
    mock.timers.enable({ apis: ['setTimeout'] });
    try {
      let calls = 0;
      const poke = coalesce(() => calls++, 150);
      // A change every 100 ms for 3 s: a debounce of 150 ms would wait for a pause that never comes.
      for (let t = 0; t < 3_000; t += 100) {
        poke();
        mock.timers.tick(100);
      }
      assert.ok(calls >= 15, `${calls} redraws in 3 s`);
      const at = calls;
      mock.timers.tick(1_000);
      assert.equal(calls, at, 'nothing pending once the changes stop');
      poke();
      poke();
      mock.timers.tick(150);
      assert.equal(calls, at + 1, 'a burst is one redraw');
    } finally {
      mock.timers.reset();
    }
  });
});
