import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { listenPrivate, type PrivateSocket } from '../cluster/private-socket.js';
import { keys } from '../cluster/keys.js';
import type { WatchBatch } from '../cluster/store.js';
import { BackplaneError, errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { openEventRecord } from '../scheduler/records.js';
import { AuditLog } from './audit.js';
import { openApiDocument } from './openapi.js';
import { ApiError, authorize, matchPath, parseInput, redacted, roleAllows, type AgentView, type AnyOp, type Caller, type ClusterAccess, type OpContext, type Role } from './ops.js';
import { OPS } from './ops/index.js';
import { TokenVerifier } from './tokens.js';

/**
 * The operator API of an agent: every op of the table (ops/index.ts) over HTTP, the live stream, metrics, the
 * OpenAPI document and the dashboard's files.
 *
 * Two doors. The Unix socket `<stateDir>/api.sock` only root (the agent's user) can connect to (private-socket.ts);
 * a caller there is the host's root and an admin, no token asked. TCP is served only with TLS, and every request
 * there needs a bearer token (tokens.ts) whose role (and namespace) allow what it asks. Refusals say why and are
 * logged; every change a caller was allowed to make is recorded in the audit log with its outcome.
 */

export const API_SOCKET = 'api.sock';
/** A deploy carries its files' text; nothing else comes close. */
const MAX_BODY_BYTES = 8 * 1024 * 1024;
/** A stream client that stops reading is cut off past this much unsent output (it reconnects and refetches). */
const STREAM_BACKLOG_BYTES = 1024 * 1024;
const PING_MS = 15_000;
/** Store changes are announced per kind of thing at most this often: a rollout writes many keys at once. */
const CLUSTER_DEBOUNCE_MS = 100;
const REFUSALS_LOGGED = 50;
const REFUSAL_WINDOW_MS = 10_000;
/**
 * The whole request (headers and body) must arrive within this: a client trickling a body cannot hold a connection
 * for ever. Answers are not limited by it, so the live stream stays open.
 */
const REQUEST_TIMEOUT_MS = 60_000;

export interface TlsListen {
  readonly host: string;
  readonly port: number;
  /** PEM text. */
  readonly cert: string;
  readonly key: string;
}

export interface ApiServerOptions {
  readonly host: string;
  readonly stateDir: string;
  readonly log: Logger;
  readonly agent?: AgentView | undefined;
  /** The cluster as this agent sees it now, or undefined while it has no store connection. */
  readonly cluster: () => ClusterAccess | undefined;
  readonly metrics?: (() => Promise<{ text: string; contentType: string }>) | undefined;
  /** The dashboard's files: answers true when it served the request. */
  readonly web?: ((req: IncomingMessage, res: ServerResponse) => Promise<boolean>) | undefined;
  readonly tls?: TlsListen | undefined;
  readonly ops?: readonly AnyOp[];
}

export interface ApiServer {
  readonly socketPath: string;
  /** The TLS listener's address (its port, when asked for port 0). */
  readonly tcp?: { readonly host: string; readonly port: number } | undefined;
  close(): Promise<void>;
}

type StreamWhat = 'services' | 'plans' | 'allocs' | 'hosts' | 'drains' | 'apps' | 'policy' | 'events' | 'tokens';

/** Which view a changed store key affects (what a stream client should refetch). */
export function whatChanged(key: string): StreamWhat | undefined {
  if (key.startsWith(keys.servicesPrefix) || key.startsWith(keys.scalePrefix)) return 'services';
  if (key.startsWith(keys.planPrefix) || key.startsWith(keys.historyPrefix) || key.startsWith(keys.cmdPrefix)) return 'plans';
  if (key.startsWith(keys.assignPrefix) || key.startsWith(keys.statusPrefix)) return 'allocs';
  if (key.startsWith(keys.drainPrefix)) return 'drains';
  if (key.startsWith(keys.nodesPrefix) || key.startsWith(keys.trustPrefix)) return 'hosts';
  if (key.startsWith(keys.appsPrefix) || key.startsWith(keys.appStatePrefix)) return 'apps';
  if (key.startsWith(keys.eventsPrefix)) return 'events';
  if (key.startsWith('policy/')) return 'policy';
  if (key.startsWith(keys.apiTokensPrefix)) return 'tokens';
  return undefined;
}

interface StreamClient {
  readonly caller: Caller;
  send(type: string, data: unknown): void;
}

export async function serveApi(opts: ApiServerOptions): Promise<ApiServer> {
  const ops = opts.ops ?? OPS;
  const log = opts.log;
  const audit = new AuditLog(opts.stateDir);
  const socketCaller: Caller = { name: `root@${opts.host}`, role: 'admin', via: 'socket' };
  const tokens = new TokenVerifier(async () => {
    const c = clusterOrFail();
    return { store: c.store, view: c.view };
  });
  let openapi: string | undefined;
  const streams = new Set<StreamClient>();
  const closing = new AbortController();

  function clusterOrFail(): ClusterAccess {
    const c = opts.cluster();
    if (c === undefined) {
      throw new ApiError(503, `agent ${opts.host} is not connected to the cluster store (yet)`, { hint: 'see its log; it connects in the background and retries' });
    }
    return c;
  }

  const handler = (door: 'socket' | 'tcp') => (req: IncomingMessage, res: ServerResponse): void => {
    res.setHeader('x-content-type-options', 'nosniff');
    void handle(door, req, res).catch((err: unknown) => {
      if (!res.headersSent) answerError(res, err);
      else res.destroy();
    });
  };

  async function callerOf(door: 'socket' | 'tcp', req: IncomingMessage): Promise<Caller> {
    if (door === 'socket') return socketCaller;
    return tokens.verify(req.headers.authorization);
  }

  // Refusals are logged, but anyone who can reach the port can cause them: at most REFUSALS_LOGGED per window, then
  // one line saying how many were left out.
  let window = { start: 0, logged: 0, dropped: 0 };
  function refused(req: IncomingMessage, who: string, err: unknown): void {
    const status = err instanceof ApiError ? err.status : 500;
    if (status !== 401 && status !== 403) return;
    const now = Date.now();
    if (now - window.start > REFUSAL_WINDOW_MS) {
      if (window.dropped > 0) log.warn(`api: ${window.dropped} more refusals in ${REFUSAL_WINDOW_MS / 1000} s were not logged`);
      window = { start: now, logged: 0, dropped: 0 };
    }
    if (window.logged >= REFUSALS_LOGGED) {
      window.dropped++;
      return;
    }
    window.logged++;
    log.warn(`api: refused ${req.method ?? '?'} ${(req.url ?? '?').split('?')[0] ?? ''} from ${who}: ${messageOf(err)}`);
  }

  async function handle(door: 'socket' | 'tcp', req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://api');
    const method = req.method ?? 'GET';
    const remote = door === 'socket' ? 'unix socket' : `${req.socket.remoteAddress ?? '?'}:${req.socket.remotePort ?? '?'}`;
    if (url.pathname === '/openapi.json' && method === 'GET') {
      openapi ??= JSON.stringify(openApiDocument(ops));
      answerText(res, 200, 'application/json', openapi);
      return;
    }
    if (url.pathname === '/metrics' || url.pathname === '/v1/stream') {
      let caller: Caller;
      try {
        caller = await callerOf(door, req);
        if (!roleAllows(caller.role, 'viewer')) throw new ApiError(403, `${caller.name} may not read`);
      } catch (err) {
        refused(req, remote, err);
        throw err;
      }
      if (url.pathname === '/metrics') {
        if (opts.metrics === undefined) throw new ApiError(404, 'this agent keeps no metrics');
        const m = await opts.metrics();
        answerText(res, 200, m.contentType, m.text);
      } else {
        stream(caller, req, res);
      }
      return;
    }
    if (url.pathname.startsWith('/v1/')) {
      await handleOp(door, req, res, url, method, remote);
      return;
    }
    if (opts.web !== undefined && (await opts.web(req, res))) return;
    throw new ApiError(404, `no ${method} ${url.pathname} here`, { hint: 'the API is under /v1/ (see /openapi.json); the dashboard is at /' });
  }

  async function handleOp(door: 'socket' | 'tcp', req: IncomingMessage, res: ServerResponse, url: URL, method: string, remote: string): Promise<void> {
    let op: AnyOp | undefined;
    let params: Record<string, string> | undefined;
    let pathMatched = false;
    for (const o of ops) {
      const p = matchPath(o.path, url.pathname);
      if (p === undefined) continue;
      pathMatched = true;
      if (o.method === method) {
        op = o;
        params = p;
        break;
      }
    }
    if (op === undefined || params === undefined) {
      req.resume();
      if (pathMatched) throw new ApiError(405, `${method} is not allowed on ${url.pathname}`, { hint: 'see /openapi.json' });
      throw new ApiError(404, `no ${method} ${url.pathname} in the API`, { hint: 'see /openapi.json' });
    }
    let caller: Caller;
    try {
      caller = await callerOf(door, req);
    } catch (err) {
      req.resume();
      refused(req, remote, err);
      throw err;
    }
    let raw: Record<string, unknown>;
    if (method === 'GET' || method === 'DELETE') {
      req.resume();
      raw = { ...Object.fromEntries(url.searchParams), ...params };
    } else {
      const body = await readJson(req);
      for (const k of Object.keys(params)) {
        if (k in body && body[k] !== params[k]) throw new ApiError(400, `${k} is "${params[k] ?? ''}" in the path and "${String(body[k])}" in the body`);
      }
      raw = { ...body, ...params };
    }
    const ac = new AbortController();
    res.once('close', () => {
      if (!res.writableFinished) ac.abort(new BackplaneError('E_ABORTED', 'the API client went away'));
    });
    const ctx: OpContext = { caller, cluster: async () => clusterOrFail(), agent: opts.agent, signal: ac.signal, stateDir: opts.stateDir };
    const input = parseInput<never, unknown>(op, raw);
    try {
      await authorize(op, caller, input, ctx);
    } catch (err) {
      refused(req, `${caller.name} (${remote})`, err);
      if (op.mutates) await audit.record(caller, op.name, redacted(op, input), { error: messageOf(err), refused: true }, remote).catch((e: unknown) => log.warn(`api: cannot write the audit log: ${errorMessage(e)}`));
      throw err;
    }
    let result: unknown;
    try {
      result = await op.run(ctx, input);
    } catch (err) {
      if (op.mutates) await audit.record(caller, op.name, redacted(op, input), { error: messageOf(err) }, remote).catch((e: unknown) => log.warn(`api: cannot write the audit log: ${errorMessage(e)}`));
      throw err;
    }
    if (op.mutates) {
      await audit.record(caller, op.name, redacted(op, input), {}, remote).catch((e: unknown) => log.warn(`api: cannot write the audit log: ${errorMessage(e)}`));
      log.info(`api: ${caller.name} ${op.name}`);
    }
    answerText(res, 200, 'application/json', JSON.stringify(result ?? null));
  }

  function stream(caller: Caller, req: IncomingMessage, res: ServerResponse): void {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    const client: StreamClient = {
      caller,
      send: (type, data) => {
        if (res.writableLength > STREAM_BACKLOG_BYTES) {
          log.warn(`api: a stream client of ${caller.name} is not reading; cutting it off`);
          res.destroy();
          return;
        }
        res.write(`event: ${type}\ndata: ${JSON.stringify(data)}\n\n`);
      },
    };
    streams.add(client);
    client.send('hello', { host: opts.host, at: Date.now(), role: caller.role });
    const offAgent = opts.agent?.onEvent((e) => client.send(e.type, e));
    const ping = setInterval(() => res.write(': ping\n\n'), PING_MS);
    ping.unref();
    const done = (): void => {
      streams.delete(client);
      offAgent?.();
      clearInterval(ping);
    };
    req.once('close', done);
    res.once('close', done);
    startClusterWatch();
  }

  // One store watch for every stream client, started with the first.
  let watching = false;
  const pending = new Map<StreamWhat, NodeJS.Timeout>();
  function announce(what: StreamWhat): void {
    if (pending.has(what)) return;
    pending.set(what, setTimeout(() => {
      pending.delete(what);
      for (const s of streams) s.send('cluster', { what, at: Date.now() });
    }, CLUSTER_DEBOUNCE_MS));
  }
  function startClusterWatch(): void {
    if (watching) return;
    watching = true;
    void (async () => {
      while (!closing.signal.aborted) {
        const c = opts.cluster();
        if (c === undefined) {
          await new Promise((r) => setTimeout(r, 1000).unref());
          continue;
        }
        try {
          const onBatch = (b: WatchBatch): void => {
            if (b.type === 'resync') {
              for (const w of ['services', 'plans', 'allocs', 'hosts', 'drains', 'apps', 'policy', 'events'] as const) announce(w);
              return;
            }
            for (const e of b.events) {
              const key = e.type === 'put' ? e.kv.key : e.key;
              const what = whatChanged(key);
              if (what !== undefined) announce(what);
              if (e.type === 'put' && what === 'events') {
                const r = openEventRecord(c.view, e.kv.key, e.kv.value);
                // A scoped caller is told that events changed and asks for its own; the records themselves go to the unscoped.
                if (r.ok) for (const s of streams) if (s.caller.namespace === undefined) s.send('event', r.value);
              }
            }
          };
          await c.store.watch('', 0, onBatch, closing.signal);
          return;
        } catch (err) {
          if (closing.signal.aborted) return;
          log.debug(`api: stream watch failed: ${errorMessage(err)}; retrying`);
          await new Promise((r) => setTimeout(r, 1000).unref());
        }
      }
    })();
  }

  // The two doors.
  const unix = createHttpServer({ requestTimeout: REQUEST_TIMEOUT_MS, headersTimeout: 10_000 }, handler('socket'));
  unix.maxConnections = 256;
  const socket: PrivateSocket = await listenPrivate(unix, opts.stateDir, API_SOCKET, 'API socket');
  unix.on('error', (err) => log.warn(`api socket ${socket.path}: ${err.message}`));
  let tcp: Server | undefined;
  let tcpAddress: { host: string; port: number } | undefined;
  if (opts.tls !== undefined) {
    const t = opts.tls;
    const server = createHttpsServer({ cert: t.cert, key: t.key, minVersion: 'TLSv1.2', requestTimeout: REQUEST_TIMEOUT_MS, headersTimeout: 10_000 }, handler('tcp'));
    server.maxConnections = 4096;
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(t.port, t.host, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (err) {
      await socket.close();
      throw new BackplaneError('E_USAGE', `cannot serve the API on ${t.host}:${t.port}: ${errorMessage(err)}`, { hint: 'choose a free port (--api-listen HOST:PORT)', cause: err });
    }
    server.on('error', (err) => log.warn(`api ${t.host}:${t.port}: ${err.message}`));
    server.on('tlsClientError', (err) => log.debug(`api: TLS handshake failed: ${err.message}`));
    tcp = server;
    const a = server.address() as AddressInfo;
    tcpAddress = { host: a.address, port: a.port };
    log.info(`api: serving https://${t.host.includes(':') ? `[${t.host}]` : t.host}:${a.port}/ (dashboard at /, API at /v1/, OpenAPI at /openapi.json)`);
  }
  log.debug(`api: serving on ${socket.path}`);

  let closed: Promise<void> | undefined;
  return {
    socketPath: socket.path,
    ...(tcpAddress === undefined ? {} : { tcp: tcpAddress }),
    close: () => {
      closed ??= (async () => {
        closing.abort();
        for (const t of pending.values()) clearTimeout(t);
        const tcpDone = tcp === undefined ? Promise.resolve() : new Promise<void>((resolve) => tcp.close(() => resolve()));
        (tcp as (Server & { closeAllConnections?: () => void }) | undefined)?.closeAllConnections?.();
        await Promise.all([socket.close(), tcpDone]);
      })();
      return closed;
    },
  };
}

/** An error's message without its hint (the hint is answered beside it). */
function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : errorMessage(err);
}

function answerText(res: ServerResponse, status: number, type: string, text: string): void {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}

function answerError(res: ServerResponse, err: unknown): void {
  const status = err instanceof ApiError ? err.status : 500;
  const code = err instanceof BackplaneError ? err.code : 'E_INTERNAL';
  const hint = err instanceof BackplaneError ? err.hint : undefined;
  // A store or program error says what went wrong; the stack stays in the agent's log.
  const body = { error: { status, code, message: messageOf(err), ...(hint === undefined ? {} : { hint }) } };
  answerText(res, status, 'application/json', JSON.stringify(body));
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const declared = Number(req.headers['content-length'] ?? '0');
  if (declared > MAX_BODY_BYTES) {
    req.resume();
    throw new ApiError(413, `a request body may be at most ${MAX_BODY_BYTES} bytes`);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    const b = chunk as Buffer;
    size += b.length;
    if (size > MAX_BODY_BYTES) {
      req.destroy();
      throw new ApiError(413, `a request body may be at most ${MAX_BODY_BYTES} bytes`);
    }
    chunks.push(b);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '') return {};
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ApiError(400, `the request body is not JSON: ${errorMessage(err)}`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new ApiError(400, 'the request body must be a JSON object');
  return json as Record<string, unknown>;
}

export type { Role };
