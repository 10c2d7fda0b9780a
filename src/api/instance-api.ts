/**
 * The instance API: the agent's side of the two-way interface between an application and the platform
 * (docs/instance-api.md, docs/instance-api.openapi.json). HTTP+JSON on 127.0.0.1 only; each instance finds it in
 * BACKPLANE_API and authenticates with BACKPLANE_TOKEN, a token that names its alloc and nothing else.
 *
 * Every request is hostile until proven otherwise: the token is checked in constant time against the allocs this
 * agent runs now (a token of an alloc that went away is worth nothing), the Host header must be the loopback address
 * (a web page in a browser on the host cannot reach it through DNS rebinding), bodies are JSON of at most
 * MAX_BODY_BYTES, parsed strictly (unknown fields are refused), and every error says what was wrong and what to do.
 *
 * The server knows nothing of the store: what it serves and what it relays goes through an InstanceApiBackend (the
 * agent's Instances, src/agent/instances.ts).
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import openapi from '../../docs/instance-api.openapi.json' with { type: 'json' };
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import type { Alloc, ServiceSpec } from '../scheduler/types.js';
import type { InstanceEvent, Peer, SelfInfo } from './instance-client.js';

export const MAX_BODY_BYTES = 16 * 1024;
export const MAX_STATE_JSON_BYTES = 8192;
/** Event streams one instance may hold open at once. */
export const MAX_STREAMS_PER_ALLOC = 8;
/** A stream whose reader does not keep up (this much unsent) is closed: the instance reconnects and gets hello. */
const MAX_STREAM_BACKLOG = 1024 * 1024;
const KEEPALIVE_MS = 15_000;
/** Scale requests of one instance: at most one write per this many ms (the rest get 429). */
export const SCALE_MIN_INTERVAL_MS = 1000;

export interface ApiInstance {
  readonly alloc: Omit<Alloc, 'status'>;
  readonly spec: ServiceSpec;
}

/** What the instance says in PUT /v1/state (the agent adds `at`). */
export interface StateBody {
  readonly ready?: boolean;
  readonly state?: Readonly<Record<string, unknown>>;
  readonly message?: string;
  readonly urgent?: boolean;
}

export interface InstanceApiBackend {
  /** The instance an alloc id names while this agent runs it (assigned here, or in its stop notice); else undefined. */
  instance(allocId: string): ApiInstance | undefined;
  /** Every alloc id instance() answers for now. */
  ids(): Iterable<string>;
  readonly host: string;
  /** This host's address as peers see it. */
  address(): string;
  /** The healthy instances of a service (service discovery). */
  peers(service: string): Peer[];
  /** Calls cb when the healthy instances of `service` change; returns the unsubscribe. */
  watchPeers(service: string, cb: () => void): () => void;
  /** Relays a state report into the alloc's status record. */
  report(allocId: string, body: StateBody): void;
  /** Writes an accepted scale request (already checked against the bounds); rejects when it cannot. */
  scale(allocId: string, count: number, reason: string | undefined): Promise<void>;
}

export interface InstanceApiOptions {
  readonly backend: InstanceApiBackend;
  readonly log: Logger;
  /**
   * Where the API keeps its secret (the tokens are HMACs of it) and its port, so that an agent restart serves the
   * same URL and tokens: an instance's env is part of its svc, and a new value would restart every instance.
   */
  readonly stateFile: string;
}

interface Stream {
  readonly allocId: string;
  readonly res: ServerResponse;
  readonly unwatch: () => void;
  lastPeers: string;
}

const stateSchema = z.lazy(() => z.strictObject({
  ready: z.boolean().optional(),
  state: z
    .record(z.string(), z.unknown())
    .refine((v) => JSON.stringify(v).length <= MAX_STATE_JSON_BYTES, { message: `state is at most ${MAX_STATE_JSON_BYTES} bytes of JSON` })
    .optional(),
  // eslint-disable-next-line no-control-regex
  message: z.string().max(200, 'message is at most 200 characters').regex(/^[^\u0000-\u001f\u007f]*$/, 'message is one line without control characters').optional(),
  urgent: z.boolean().optional(),
}));

const scaleSchema = z.lazy(() => z.strictObject({
  count: z.number().int('count is a whole number').min(0, 'count is at least 0').max(100_000, 'count is at most 100000'),
  // eslint-disable-next-line no-control-regex
  reason: z.string().max(200, 'reason is at most 200 characters').regex(/^[^\u0000-\u001f\u007f]*$/, 'reason is one line without control characters').optional(),
}));

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly hint: string,
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(message);
  }
}

const ROUTES: Readonly<Record<string, readonly string[]>> = {
  '/v1/self': ['GET'],
  '/v1/peers': ['GET'],
  '/v1/state': ['PUT'],
  '/v1/scale': ['POST'],
  '/v1/events': ['GET'],
  '/v1/openapi.json': ['GET'],
};

export class InstanceApi {
  private server: Server | undefined;
  private secret: Buffer = Buffer.alloc(0);
  private port = 0;
  private readonly streams = new Set<Stream>();
  private readonly tokens = new Map<string, Buffer>();
  private readonly lastScale = new Map<string, number>();
  /** Allocs in their stop notice: a stream that connects meanwhile is told too. */
  private readonly notices = new Map<string, { readonly until: number; readonly reason: string }>();
  private keepalive: NodeJS.Timeout | undefined;

  constructor(private readonly opts: InstanceApiOptions) {}

  /** Listens on 127.0.0.1: on the port of the last run when it is free, else on a new one (saved for the next). */
  async start(): Promise<void> {
    const saved = await this.load();
    this.secret = saved.secret;
    // node:http loaded here, not when the agent starts: only an agent with instances serves this API.
    const { createServer } = await import('node:http');
    const server = createServer({ maxHeaderSize: 8192, requestTimeout: 10_000, headersTimeout: 5000, keepAliveTimeout: 5000 }, (req, res) => this.handle(req, res));
    server.maxHeadersCount = 50;
    server.maxConnections = 512;
    server.on('clientError', (_err, socket) => socket.destroy());
    this.server = server;
    const listen = (port: number): Promise<void> =>
      new Promise((resolve, reject) => {
        const onError = (err: Error): void => reject(err);
        server.once('error', onError);
        server.listen({ host: '127.0.0.1', port, exclusive: true }, () => {
          server.off('error', onError);
          resolve();
        });
      });
    try {
      await listen(saved.port);
    } catch (err) {
      if (saved.port === 0) throw err;
      this.opts.log.warn(`instance API: port ${saved.port} of the last run is taken (${errorMessage(err)}); using another, so instances restart with the new BACKPLANE_API`);
      await listen(0);
    }
    this.port = (server.address() as AddressInfo).port;
    if (this.port !== saved.port) await this.save();
    this.keepalive = setInterval(() => {
      for (const s of this.streams) this.write(s, ': keepalive\n\n');
    }, KEEPALIVE_MS);
    this.keepalive.unref();
    this.opts.log.debug(`instance API on ${this.url}`);
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The token of an alloc: hex HMAC-SHA256 of the agent's secret and the alloc id (stable across agent restarts). */
  tokenFor(allocId: string): string {
    return createHmac('sha256', this.secret).update(`backplane instance api v1\0${allocId}`).digest('hex');
  }

  /** The alloc's config changed (the assignment was rewritten): its streams get a `config` event. */
  configChanged(allocId: string, config: Readonly<Record<string, unknown>> | undefined): void {
    this.emit(allocId, { type: 'config', data: config ?? null });
  }

  /** The agent will stop the instance in inMs: its streams get `stopping` (and any that connect before then). */
  stopping(allocId: string, inMs: number, reason: string): void {
    this.notices.set(allocId, { until: Date.now() + inMs, reason });
    this.emit(allocId, { type: 'stopping', data: { inMs, reason } });
  }

  memory(allocId: string, rss: number, limit: number): void {
    this.emit(allocId, { type: 'memory', data: { rss, limit, ratio: Math.round((rss / limit) * 1000) / 1000 } });
  }

  /** The alloc is no longer this agent's: its streams are closed (its token no longer opens anything anyway). */
  revoke(allocId: string): void {
    this.tokens.delete(allocId);
    this.notices.delete(allocId);
    this.lastScale.delete(allocId);
    for (const s of [...this.streams]) if (s.allocId === allocId) this.endStream(s);
  }

  async close(): Promise<void> {
    if (this.keepalive !== undefined) clearInterval(this.keepalive);
    for (const s of [...this.streams]) this.endStream(s);
    const server = this.server;
    if (server === undefined) return;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  }

  // ---- requests ---------------------------------------------------------------------------------------------------

  private handle(req: IncomingMessage, res: ServerResponse): void {
    this.route(req, res).catch((err: unknown) => {
      const e = err instanceof HttpError ? err : new HttpError(500, 'internal error', 'the agent logged it; try again');
      if (!(err instanceof HttpError)) this.opts.log.warn(`instance API: ${req.method ?? '?'} ${req.url ?? '?'}: ${errorMessage(err)}`);
      if (res.headersSent) {
        res.destroy();
        return;
      }
      // A request refused before its body was read: the connection is not reused for the next one.
      if (!req.complete) res.setHeader('connection', 'close');
      sendJson(res, e.status, { error: e.message, hint: e.hint }, e.headers);
    });
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.checkHost(req);
    const path = pathOf(req.url);
    const methods = ROUTES[path];
    if (methods === undefined) throw new HttpError(404, `no route ${path}`, `the routes are ${Object.keys(ROUTES).join(', ')} (GET /v1/openapi.json describes them)`);
    const method = req.method ?? '';
    if (!methods.includes(method)) throw new HttpError(405, `${method} is not allowed on ${path}`, `use ${methods.join(' or ')}`, { allow: methods.join(', ') });
    if (path === '/v1/openapi.json') {
      sendJson(res, 200, openapi);
      return;
    }
    const who = this.authenticate(req);
    switch (path) {
      case '/v1/self':
        sendJson(res, 200, this.self(who));
        return;
      case '/v1/peers':
        sendJson(res, 200, { peers: this.opts.backend.peers(who.spec.name) });
        return;
      case '/v1/state': {
        const body = parseBody(stateSchema as z.ZodType<StateBody>, await readBody(req));
        if (this.opts.backend.instance(who.alloc.id) === undefined) throw revoked();
        this.opts.backend.report(who.alloc.id, body);
        res.writeHead(204, { 'cache-control': 'no-store' }).end();
        return;
      }
      case '/v1/scale':
        await this.scale(who, await readBody(req), res);
        return;
      case '/v1/events':
        this.events(who, req, res);
        return;
    }
  }

  /** Loopback names only: a DNS-rebound name in a browser's request is refused before the token is looked at. */
  private checkHost(req: IncomingMessage): void {
    const host = req.headers.host;
    const ok = host === undefined || host === `127.0.0.1:${this.port}` || host === `localhost:${this.port}` || host === '127.0.0.1' || host === 'localhost';
    if (!ok) throw new HttpError(421, 'this API answers to 127.0.0.1 only', `connect to ${this.url} (BACKPLANE_API)`);
  }

  private authenticate(req: IncomingMessage): ApiInstance {
    const m = /^Bearer ([0-9a-f]{64})$/i.exec(req.headers.authorization ?? '');
    if (m?.[1] === undefined) throw new HttpError(401, 'a bearer token is required', 'send Authorization: Bearer $BACKPLANE_TOKEN (the token the agent put in the instance\'s environment)', { 'www-authenticate': 'Bearer' });
    const given = Buffer.from(m[1].toLowerCase(), 'hex');
    let found: string | undefined;
    // Every candidate is compared (no early exit): the time taken says nothing about which token came close.
    for (const id of this.opts.backend.ids()) {
      if (timingSafeEqual(given, this.tokenBytes(id)) && found === undefined) found = id;
    }
    const inst = found === undefined ? undefined : this.opts.backend.instance(found);
    if (inst === undefined) throw revoked();
    return inst;
  }

  private tokenBytes(allocId: string): Buffer {
    let t = this.tokens.get(allocId);
    if (t === undefined) {
      t = Buffer.from(this.tokenFor(allocId), 'hex');
      if (this.tokens.size > 10_000) this.tokens.clear();
      this.tokens.set(allocId, t);
    }
    return t;
  }

  private self(who: ApiInstance): SelfInfo {
    const { alloc, spec } = who;
    return {
      allocId: alloc.id,
      service: alloc.service,
      index: alloc.index,
      version: alloc.version,
      host: alloc.host,
      address: this.opts.backend.address(),
      ports: alloc.ports,
      config: alloc.config ?? null,
      scale: spec.scale ?? null,
      app: spec.app ?? null,
      resources: { cpu: alloc.resources.cpu, memory: alloc.resources.memory },
    };
  }

  private async scale(who: ApiInstance, raw: unknown, res: ServerResponse): Promise<void> {
    const body = parseBody(scaleSchema, raw);
    const id = who.alloc.id;
    const bounds = who.spec.scale;
    const refuse = (status: number, reason: string, hint: string): void => sendJson(res, status, { accepted: false, reason, hint });
    if (bounds === undefined) {
      refuse(403, `service ${who.spec.name} has no scale bounds: only the operator changes its count`, 'the operator allows self-scaling with `scale: {min, max}` in the service spec');
      return;
    }
    if (body.count < bounds.min || body.count > bounds.max) {
      refuse(422, `count ${body.count} is outside the bounds of service ${who.spec.name} (min ${bounds.min}, max ${bounds.max})`, `ask for a count from ${bounds.min} to ${bounds.max}`);
      return;
    }
    const last = this.lastScale.get(id);
    const now = Date.now();
    if (last !== undefined && now - last < SCALE_MIN_INTERVAL_MS) {
      const wait = SCALE_MIN_INTERVAL_MS - (now - last);
      throw new HttpError(429, 'too many scale requests', `at most one a second; try again in ${wait} ms`, { 'retry-after': String(Math.ceil(wait / 1000)) });
    }
    this.lastScale.set(id, now);
    if (this.opts.backend.instance(id) === undefined) throw revoked();
    try {
      await this.opts.backend.scale(id, body.count, body.reason);
    } catch (err) {
      this.lastScale.delete(id);
      throw new HttpError(503, `cannot record the scale request: ${errorMessage(err)}`, 'the cluster store is unreachable from this agent; try again');
    }
    sendJson(res, 202, { accepted: true, count: body.count });
  }

  private events(who: ApiInstance, req: IncomingMessage, res: ServerResponse): void {
    const id = who.alloc.id;
    let open = 0;
    for (const s of this.streams) if (s.allocId === id) open++;
    if (open >= MAX_STREAMS_PER_ALLOC)
      throw new HttpError(429, `this instance already has ${open} event streams open`, `at most ${MAX_STREAMS_PER_ALLOC}; close one (one stream gets every event)`);
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no', 'x-content-type-options': 'nosniff' });
    req.socket.setKeepAlive(true);
    req.socket.setTimeout(0);
    const service = who.spec.name;
    const stream: Stream = {
      allocId: id,
      res,
      lastPeers: '',
      unwatch: this.opts.backend.watchPeers(service, () => this.sendPeers(stream, service)),
    };
    this.streams.add(stream);
    const gone = (): void => this.endStream(stream);
    res.on('close', gone);
    res.on('error', gone);
    this.write(stream, 'retry: 1000\n\n');
    this.send(stream, { type: 'hello', data: { config: who.alloc.config ?? null } });
    this.sendPeers(stream, service);
    const notice = this.notices.get(id);
    if (notice !== undefined) this.send(stream, { type: 'stopping', data: { inMs: Math.max(0, notice.until - Date.now()), reason: notice.reason } });
  }

  private sendPeers(stream: Stream, service: string): void {
    const peers = this.opts.backend.peers(service);
    const text = JSON.stringify(peers);
    if (text === stream.lastPeers) return;
    stream.lastPeers = text;
    this.send(stream, { type: 'peers', data: { peers } });
  }

  private emit(allocId: string, e: InstanceEvent): void {
    for (const s of this.streams) if (s.allocId === allocId) this.send(s, e);
  }

  private send(s: Stream, e: InstanceEvent): void {
    this.write(s, `event: ${e.type}\ndata: ${JSON.stringify(e.data)}\n\n`);
  }

  private write(s: Stream, text: string): void {
    if (s.res.destroyed || s.res.writableEnded) return;
    if (s.res.writableLength > MAX_STREAM_BACKLOG) {
      this.endStream(s);
      return;
    }
    s.res.write(text);
  }

  private endStream(s: Stream): void {
    if (!this.streams.delete(s)) return;
    s.unwatch();
    if (!s.res.writableEnded) s.res.end();
  }

  // ---- the secret and the port ------------------------------------------------------------------------------------

  private async load(): Promise<{ secret: Buffer; port: number }> {
    try {
      const data = JSON.parse(await readFile(this.opts.stateFile, 'utf8')) as { secret?: unknown; port?: unknown };
      if (typeof data.secret === 'string' && /^[0-9a-f]{64}$/.test(data.secret)) {
        const port = typeof data.port === 'number' && Number.isInteger(data.port) && data.port > 0 && data.port < 65536 ? data.port : 0;
        return { secret: Buffer.from(data.secret, 'hex'), port };
      }
    } catch {
      // None yet (a first start), or unreadable: a new secret (tokens change, and so the instances' env).
    }
    this.secret = randomBytes(32);
    await this.save();
    return { secret: this.secret, port: 0 };
  }

  private async save(): Promise<void> {
    const file = this.opts.stateFile;
    await mkdir(dirname(file), { recursive: true, mode: 0o700 });
    const tmp = join(dirname(file), `.${randomBytes(6).toString('hex')}.tmp`);
    await writeFile(tmp, JSON.stringify({ secret: this.secret.toString('hex'), port: this.port }), { mode: 0o600, flag: 'wx' });
    await rename(tmp, file);
  }
}

function revoked(): HttpError {
  return new HttpError(401, 'the token is not valid here', 'a token is valid only while its instance runs on this agent; use BACKPLANE_TOKEN from the instance\'s own environment', { 'www-authenticate': 'Bearer error="invalid_token"' });
}

function pathOf(url: string | undefined): string {
  const raw = url ?? '/';
  const q = raw.indexOf('?');
  return q < 0 ? raw : raw.slice(0, q);
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Readonly<Record<string, string>> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    ...headers,
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(text)),
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
  });
  res.end(text);
}

/** The request's JSON body: 415 when it is not declared JSON, 413 past MAX_BODY_BYTES, 400 when it does not parse. */
async function readBody(req: IncomingMessage): Promise<unknown> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  if (type !== 'application/json') throw new HttpError(415, 'the body must be JSON', 'send Content-Type: application/json');
  const declared = Number(req.headers['content-length'] ?? '0');
  if (declared > MAX_BODY_BYTES) throw new HttpError(413, `the body is larger than ${MAX_BODY_BYTES} bytes`, 'state is at most 8 KiB of JSON');
  const chunks: Buffer[] = [];
  await new Promise<void>((resolve, reject) => {
    let size = 0;
    const onData = (b: Buffer): void => {
      size += b.length;
      if (size <= MAX_BODY_BYTES) {
        chunks.push(b);
        return;
      }
      // Stop reading; the answer goes out with connection: close (the rest of the body is never read).
      req.off('data', onData);
      req.pause();
      reject(new HttpError(413, `the body is larger than ${MAX_BODY_BYTES} bytes`, 'state is at most 8 KiB of JSON'));
    };
    req.on('data', onData);
    req.once('end', () => resolve());
    req.once('error', reject);
  });
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch (err) {
    throw new HttpError(400, `the body is not JSON: ${errorMessage(err)}`, 'send one JSON object');
  }
}

function parseBody<T>(schema: z.ZodType<T>, raw: unknown): T {
  const r = schema.safeParse(raw);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const where = issue === undefined || issue.path.length === 0 ? '' : `${issue.path.join('.')}: `;
  throw new HttpError(400, `invalid body: ${where}${issue?.message ?? 'not what this route takes'}`, 'GET /v1/openapi.json describes every route\'s body');
}
