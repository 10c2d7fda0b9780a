import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { startCli, type RunningCli } from './cli.js';

/**
 * A real agent with its operator API for tests: its Unix socket (root, no token) and its TLS port (tokens), and raw
 * HTTP requests to either, so the tests see exactly what a client sees.
 */

export interface Answer {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly text: string;
  json<T = unknown>(): T;
}

export interface ApiAgent {
  readonly cli: RunningCli;
  readonly stateDir: string;
  readonly port: number;
  readonly cert: string;
  /** Over the Unix socket (as root: admin, no token). */
  socket(method: string, path: string, body?: unknown): Promise<Answer>;
  /** Over TLS, with `token` as the bearer (undefined: no Authorization header). */
  https(method: string, path: string, token: string | undefined, body?: unknown, headers?: Record<string, string>): Promise<Answer>;
  /** Makes a token through the socket and answers its text. */
  token(name: string, role: string, extra?: { namespace?: string; ttlSeconds?: number }): Promise<string>;
  stop(): Promise<void>;
}

/** A throwaway self-signed P-256 certificate for 127.0.0.1 and localhost; key mode 0600. */
export function selfSigned(dir: string): { cert: string; key: string } {
  const cert = join(dir, 'api.crt');
  const key = join(dir, 'api.key');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost', '-keyout', key, '-out', cert], { stdio: 'ignore' });
  execFileSync('chmod', ['600', key]);
  return { cert, key };
}

function answer(status: number, headers: Answer['headers'], text: string): Answer {
  return { status, headers, text, json: <T>() => JSON.parse(text) as T };
}

export function socketRequest(socketPath: string, method: string, path: string, body?: unknown): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = httpRequest({ socketPath, method, path, headers: data === undefined ? {} : { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.on('data', (b: Buffer) => (text += b.toString()));
      res.on('end', () => resolve(answer(res.statusCode ?? 0, res.headers, text)));
    });
    req.on('error', reject);
    req.end(data);
  });
}

export function httpsRequestTo(port: number, ca: string, method: string, path: string, token: string | undefined, body?: unknown, headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const h: Record<string, string> = { ...headers };
    if (token !== undefined) h['authorization'] = `Bearer ${token}`;
    if (data !== undefined) h['content-type'] = 'application/json';
    const req = httpsRequest({ host: '127.0.0.1', port, method, path, ca, headers: h, agent: false }, (res) => {
      let text = '';
      res.on('data', (b: Buffer) => (text += b.toString()));
      res.on('end', () => resolve(answer(res.statusCode ?? 0, res.headers, text)));
    });
    req.on('error', reject);
    req.end(data);
  });
}

/** Starts `backplane run` on `graph` with the API on a free TLS port; resolves once it serves. */
export async function startApiAgent(dir: string, graph: string, opts: { host?: string; extra?: readonly string[] } = {}): Promise<ApiAgent> {
  const { cert, key } = selfSigned(dir);
  const stateDir = join(dir, 'state');
  const cli = startCli(['run', '-f', graph, '--state-dir', stateDir, '--hostname', opts.host ?? 'h1', '--api-listen', '127.0.0.1:0', '--api-tls-cert', cert, '--api-tls-key', key, ...(opts.extra ?? [])], { timeoutMs: 600_000 });
  const line = await cli.waitFor(/api: serving https:\/\/127\.0\.0\.1:\d+/, 30_000);
  const port = Number(/127\.0\.0\.1:(\d+)/.exec(line)?.[1]);
  // Tokens need the cluster link (their records are signed and stored).
  await cli.waitFor(/cluster store: embedded/, 30_000);
  const ca = readFileSync(cert, 'utf8');
  const socketPath = join(stateDir, 'api.sock');
  const self: ApiAgent = {
    cli,
    stateDir,
    port,
    cert: ca,
    socket: (method, path, body) => socketRequest(socketPath, method, path, body),
    https: (method, path, token, body, headers) => httpsRequestTo(port, ca, method, path, token, body, headers),
    token: async (name, role, extra = {}) => {
      const a = await self.socket('POST', '/v1/tokens', { name, role, ...extra });
      if (a.status !== 200) throw new Error(`tokens.create: ${a.status} ${a.text}`);
      return a.json<{ token: string }>().token;
    },
    stop: async () => {
      cli.proc.kill('SIGTERM');
      await cli.exited;
    },
  };
  return self;
}
