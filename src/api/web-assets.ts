import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The web dashboard's static files (built by scripts/build.mjs from web/ into dist/web/), served by the agent's API
 * at `/` and `/assets/*`. Only a fixed list of files is served, so no request path can reach anything else.
 */

/** dist/web next to the running bundle (dist/backplane.mjs, or one of its chunks), or <repo>/dist/web from src. */
export function webRoot(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  for (let dir = here; ; dir = dirname(dir)) {
    if (basename(dir) === 'dist') return join(dir, 'web');
    if (dirname(dir) === dir) break;
  }
  // Run from source (tsx): src/api/web-assets.ts -> <repo>/dist/web.
  return resolve(here, '..', '..', 'dist', 'web');
}

/** Request path -> file in the web root, with its content type. Nothing else is served. */
const FILES: Readonly<Record<string, { readonly file: string; readonly type: string }>> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/index.html': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/assets/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/assets/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
  '/assets/favicon.svg': { file: 'favicon.svg', type: 'image/svg+xml' },
};

/**
 * The page may load only its own script, style and images and talk only to its own origin: no inline script or
 * style, no framing, no plugins, no form posts elsewhere. The dashboard renders hostile cluster data as text only;
 * this is the second wall.
 */
export const CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "font-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'Content-Security-Policy': CSP,
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'X-Frame-Options': 'DENY',
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Resource-Policy': 'same-origin',
};

/** Is this a path of the dashboard (`/`, `/index.html`, `/assets/...`)? The server routes those here. */
export function isWebPath(path: string): boolean {
  return path === '/' || path === '/index.html' || path.startsWith('/assets/');
}

/**
 * Answers a request for a dashboard path: 200 (or 304 when the ETag matches), 404 for an asset that does not exist,
 * 405 for a method other than GET and HEAD, 503 when the dashboard was not built. Returns false, answering nothing,
 * for a path that is not the dashboard's (see isWebPath).
 */
export async function serveWebAsset(req: IncomingMessage, res: ServerResponse, root: string = webRoot()): Promise<boolean> {
  const path = new URL(req.url ?? '/', 'http://x').pathname;
  if (!isWebPath(path)) return false;
  const send = (status: number, type: string, body: string | Buffer, extra: Record<string, string> = {}): void => {
    res.writeHead(status, { ...SECURITY_HEADERS, 'Content-Type': type, 'Cache-Control': 'no-cache', 'Content-Length': String(Buffer.byteLength(body)), ...extra });
    res.end(req.method === 'HEAD' ? undefined : body);
  };
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    send(405, 'text/plain; charset=utf-8', 'method not allowed\n', { Allow: 'GET, HEAD' });
    return true;
  }
  const entry = FILES[path];
  if (entry === undefined) {
    send(404, 'text/plain; charset=utf-8', 'not found\n');
    return true;
  }
  let body: Buffer;
  try {
    body = await readFile(join(root, entry.file));
  } catch {
    send(503, 'text/plain; charset=utf-8', `the dashboard is not built (no ${join(root, entry.file)}): run \`node scripts/build.mjs\`\n`);
    return true;
  }
  const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`;
  if (req.headers['if-none-match'] === etag) {
    res.writeHead(304, { ...SECURITY_HEADERS, ETag: etag, 'Cache-Control': 'no-cache' });
    res.end();
    return true;
  }
  send(200, entry.type, body, { ETag: etag });
  return true;
}
