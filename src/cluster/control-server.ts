import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { listenPrivate } from './private-socket.js';
import {
  CONTROL_HEADER,
  CONTROL_SOCKET,
  CONTROL_VERSION,
  OPS,
  REQUESTS,
  maxBodyBytes,
  statusFor,
  toWire,
  type ControlOp,
} from './control-protocol.js';
import { DEFAULT_LIMITS, StoreError, type Store, type StoreLimits, type TxnCompare, type WatchBatch } from './store.js';

/**
 * The agent's control socket (protocol: control-protocol.ts): the store the agent holds, served to the CLI on the
 * same machine. The embedded store is single-process (its flock), so without this no command could read or write
 * the cluster while an agent runs.
 *
 * Who can connect: only the agent's user (private-socket.ts). Serve only while holding the store in `stateDir`
 * (its flock): a socket left on the path is then a stale one of an earlier agent, and is replaced.
 */

export interface ControlServer {
  readonly path: string;
  /** Stops serving: ends watches, closes connections and removes the socket. Idempotent. */
  close(): Promise<void>;
}

/** A watch whose consumer stops reading is cut off past this much unsent output; the client resumes from where it was. */
const WATCH_BACKLOG_BYTES = 16 * 1024 * 1024;

export async function serveControl(store: Store, stateDir: string, log: Logger, opts: { limits?: StoreLimits } = {}): Promise<ControlServer> {
  const limits = opts.limits ?? DEFAULT_LIMITS;
  const maxBody = maxBodyBytes(limits);
  const watches = new Set<AbortController>();

  const server = createServer({ requestTimeout: 30_000, headersTimeout: 10_000 }, (req, res) => {
    res.setHeader(CONTROL_HEADER, CONTROL_VERSION);
    void handle(req, res).catch((err: unknown) => {
      log.debug(`control socket: request failed: ${errorMessage(err)}`);
      if (!res.headersSent) fail(res, err);
      else res.destroy();
    });
  });
  // A local user of our own: the limit only keeps a runaway script from taking every fd of the agent.
  server.maxConnections = 256;

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const op = /^\/v1\/([a-z]+)$/.exec(req.url ?? '')?.[1];
    if (req.method !== 'POST' || op === undefined || !(OPS as readonly string[]).includes(op)) {
      req.resume();
      fail(res, new StoreError('invalid', `the control socket serves POST /v1/<${OPS.join('|')}>, not ${req.method ?? '?'} ${req.url ?? '?'}`));
      return;
    }
    const body = await readBody(req, res, maxBody);
    if (body === undefined) return;
    const parsed = parseRequest(op as ControlOp, body);
    // Gone before the answer: a client that gave up (or was aborted) need not be waited for.
    const ac = new AbortController();
    res.once('close', () => {
      if (!res.writableFinished) ac.abort(new StoreError('aborted', 'the control socket client went away'));
    });
    const signal = ac.signal;
    let result: unknown;
    switch (parsed.op) {
      case 'get':
        result = (await store.get(parsed.body.key, { signal })) ?? null;
        break;
      case 'list':
        result = await store.list(parsed.body.prefix, { signal });
        break;
      case 'put':
        result = await store.put(parsed.body.key, parsed.body.value, { signal });
        break;
      case 'delete':
        result = await store.delete(parsed.body.key, { signal, ...(parsed.body.prefix === undefined ? {} : { prefix: parsed.body.prefix }) });
        break;
      case 'cas':
        result = await store.cas(parsed.body.key, parsed.body.expectedModRevision, parsed.body.value, { signal });
        break;
      case 'txn': {
        const conds: TxnCompare[] | undefined = parsed.body.if;
        result = await store.txn(parsed.body.ops, conds === undefined ? { signal } : { signal, if: conds });
        break;
      }
      case 'compact':
        await store.compact(parsed.body.revision, { signal });
        result = null;
        break;
      case 'health': {
        const h = await store.health({ signal, ...(parsed.body.timeoutMs === undefined ? {} : { timeoutMs: parsed.body.timeoutMs }) });
        result = { ok: h.ok, detail: `${h.detail} (served by agent pid ${process.pid})` };
        break;
      }
      case 'watch':
        await serveWatch(parsed.body.prefix, parsed.body.fromRevision, res, ac);
        return;
    }
    const text = JSON.stringify({ result });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }

  async function serveWatch(prefix: string, fromRevision: number, res: ServerResponse, ac: AbortController): Promise<void> {
    watches.add(ac);
    ac.signal.addEventListener('abort', () => watches.delete(ac), { once: true });
    let from = fromRevision;
    if (from <= 0) {
      // "From now" made concrete, so a client that reconnects resumes exactly after it instead of from a later now.
      from = (await store.list(prefix, { signal: ac.signal })).revision + 1;
    }
    const pending: WatchBatch[] = [];
    let established = false;
    const send = (batch: WatchBatch): void => {
      if (ac.signal.aborted) return;
      if (res.writableLength > WATCH_BACKLOG_BYTES) {
        // The client reconnects from its last revision and gets the rest (or a resync) then.
        log.warn(`control socket: a watch on "${prefix}" is not being read; cutting it off`);
        ac.abort();
        res.destroy();
        return;
      }
      res.write(`${JSON.stringify({ batch })}\n`);
    };
    await store.watch(
      prefix,
      from,
      (batch) => {
        if (established) send(batch);
        else pending.push(batch);
      },
      ac.signal,
    );
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    res.write(`${JSON.stringify({ established: from - 1 })}\n`);
    established = true;
    for (const b of pending.splice(0)) send(b);
    ac.signal.addEventListener('abort', () => res.end(), { once: true });
  }

  const socket = await listenPrivate(server, stateDir, CONTROL_SOCKET, 'control socket');
  server.on('error', (err) => log.warn(`control socket ${socket.path}: ${err.message}`));
  log.debug(`control socket: serving the store on ${socket.path}`);

  let closing: Promise<void> | undefined;
  return {
    path: socket.path,
    close: () => {
      closing ??= (async () => {
        for (const w of watches) w.abort(new StoreError('closed', 'the agent is closing its control socket'));
        await socket.close();
      })();
      return closing;
    },
  };
}

type Parsed = { [K in ControlOp]: { op: K; body: ReturnType<(typeof REQUESTS)[K]['parse']> } }[ControlOp];

function parseRequest(op: ControlOp, body: Buffer): Parsed {
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw new StoreError('invalid', `control socket request ${op}: the body is not JSON (${errorMessage(err)})`);
  }
  const r = REQUESTS[op].safeParse(json);
  if (!r.success) {
    const lease = JSON.stringify(json).includes('"lease"');
    throw new StoreError(lease ? 'unsupported' : 'invalid', `control socket request ${op}: ${r.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; ')}`, {
      ...(lease ? { hint: 'leases belong to the process that holds them and cannot be used through the control socket' } : {}),
    });
  }
  return { op, body: r.data } as Parsed;
}

/** The request body, or undefined when it was over `max` (then the answer has been sent and the connection ends). */
async function readBody(req: IncomingMessage, res: ServerResponse, max: number): Promise<Buffer | undefined> {
  const tooLarge = (): undefined => {
    res.setHeader('connection', 'close');
    fail(res, new StoreError('too-large', `a request to the control socket may carry at most ${max} bytes`, {
      hint: 'the store takes at most about 1.5 MiB per request; store large content elsewhere and put a reference in the store',
    }));
    // Stop reading the rest: the answer is on its way, and the connection closes after it.
    req.pause();
    res.once('finish', () => req.destroy());
    return undefined;
  };
  const declared = Number(req.headers['content-length'] ?? '0');
  if (declared > max) return tooLarge();
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    const b = chunk as Buffer;
    size += b.length;
    if (size > max) return tooLarge();
    chunks.push(b);
  }
  return Buffer.concat(chunks);
}

function fail(res: ServerResponse, err: unknown): void {
  const error = toWire(err);
  const text = JSON.stringify({ error });
  res.writeHead(statusFor(error.reason), { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
