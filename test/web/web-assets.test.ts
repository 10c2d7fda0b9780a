import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { serveWebAsset, webRoot } from '../../src/api/web-assets.js';
import { ROOT } from '../helpers/cli.js';

/**
 * The dashboard's static files as the agent serves them: only the fixed list, with the security headers, for GET and
 * HEAD only; nothing outside the web root however the path is spelled.
 */

let dir: string;
let server: Server;
let base: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bp-web-'));
  await writeFile(join(dir, 'index.html'), '<!doctype html><title>x</title>');
  await writeFile(join(dir, 'app.js'), 'console.log(1)');
  await writeFile(join(dir, 'style.css'), 'body{}');
  await writeFile(join(dir, 'secret.txt'), 'not for the web');
  await writeFile(join(tmpdir(), 'bp-web-outside.txt'), 'outside');
  server = createServer((req, res) => {
    serveWebAsset(req, res, dir).then(
      (served) => {
        if (!served) res.writeHead(418).end('not mine');
      },
      (e: unknown) => res.writeHead(500).end(String(e)),
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  if (addr === null || typeof addr === 'string') throw new Error('no address');
  base = `http://127.0.0.1:${addr.port}`;
});

after(async () => {
  await new Promise<void>((r) => server.close(() => r()));
  await rm(dir, { recursive: true, force: true });
});

test('the page and its assets come with their types and the security headers', async () => {
  for (const [path, type] of [
    ['/', 'text/html; charset=utf-8'],
    ['/assets/app.js', 'text/javascript; charset=utf-8'],
    ['/assets/style.css', 'text/css; charset=utf-8'],
  ] as const) {
    const res = await fetch(base + path);
    assert.equal(res.status, 200, path);
    assert.equal(res.headers.get('content-type'), type, path);
    assert.equal(res.headers.get('cache-control'), 'no-cache');
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
    assert.equal(res.headers.get('referrer-policy'), 'no-referrer');
    assert.equal(res.headers.get('x-frame-options'), 'DENY');
    const csp = res.headers.get('content-security-policy') ?? '';
    assert.match(csp, /default-src 'self'/);
    assert.match(csp, /script-src 'self'(;|$)/, 'no inline or eval script');
    assert.match(csp, /frame-ancestors 'none'/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  }
});

test('an unchanged file answers 304 to its ETag, and HEAD has no body', async () => {
  const first = await fetch(`${base}/assets/app.js`);
  const etag = first.headers.get('etag') ?? '';
  assert.match(etag, /^".+"$/);
  const again = await fetch(`${base}/assets/app.js`, { headers: { 'If-None-Match': etag } });
  assert.equal(again.status, 304);
  const head = await fetch(`${base}/assets/app.js`, { method: 'HEAD' });
  assert.equal(head.status, 200);
  assert.equal(await head.text(), '');
});

test('nothing but the listed files: other files in the root, traversal in any spelling, other methods', async () => {
  for (const path of ['/assets/secret.txt', '/assets/../secret.txt', '/assets/%2e%2e/secret.txt', '/assets/..%2fsecret.txt', '/assets/%2e%2e%2f%2e%2e%2fbp-web-outside.txt', '/assets/', '/assets/app.js/']) {
    const res = await fetch(base + path);
    const body = await res.text();
    assert.ok(res.status === 404 || res.status === 418, `${path}: ${res.status}`);
    assert.doesNotMatch(body, /not for the web|outside/, path);
  }
  const post = await fetch(`${base}/assets/app.js`, { method: 'POST', body: 'x' });
  assert.equal(post.status, 405);
  assert.equal(post.headers.get('allow'), 'GET, HEAD');
  // Not a dashboard path: left to the API.
  assert.equal((await fetch(`${base}/v1/hosts`)).status, 418);
});

test('a missing build says how to make it', async () => {
  const res = await fetch(`${base}/assets/favicon.svg`);
  assert.equal(res.status, 503);
  assert.match(await res.text(), /node scripts\/build\.mjs/);
});

test('webRoot is dist/web of this checkout when run from source', () => {
  assert.equal(webRoot(), join(ROOT, 'dist', 'web'));
});
