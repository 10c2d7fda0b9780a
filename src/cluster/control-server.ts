import { randomBytes } from 'node:crypto';
import { chmod, lstat, rename, stat, unlink } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import { BackplaneError, errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { ensureStateDir } from '../state-dir.js';
import {
  CONTROL_HEADER,
  CONTROL_VERSION,
  OPS,
  REQUESTS,
  controlSocketPath,
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
 * Who can connect: Node exposes neither SO_PEERCRED nor getpeereid, so the server cannot ask the kernel who is on the
 * other end. It relies on the file system instead, which Linux checks on connect(2): the socket is made only in a
 * state directory that is the agent user's own and closed to group and others (0700: nobody else can even reach the
 * path), and the socket itself is chmod 0600 (connect needs write permission on it). Both are checked or set before
 * the first connection can be accepted; a state directory that lets others in is refused rather than served.
 *
 * Serve only while holding the store in `stateDir` (its flock): a socket left on the path is then a stale one of an
 * earlier agent (kill -9 leaves it behind), never a live one, and is replaced.
 */

export interface ControlServer {
  readonly path: string;
  /** Stops serving: ends watches, closes connections and removes the socket. Idempotent. */
  close(): Promise<void>;
}

/** A watch whose consumer stops reading is cut off past this much unsent output; the client resumes from where it was. */
const WATCH_BACKLOG_BYTES = 16 * 1024 * 1024;
/** sun_path is 108 bytes on Linux, including the terminating NUL. */
const MAX_SOCKET_PATH = 107;

export async function serveControl(store: Store, stateDir: string, log: Logger, opts: { limits?: StoreLimits } = {}): Promise<ControlServer> {
  const path = controlSocketPath(stateDir);
  // Bound under a temporary name, then renamed into place: the rename replaces a stale socket atomically, and
  // libuv, which unlinks the name it bound when the server closes, then unlinks nothing that matters (a later
  // agent's socket on the path, say). close() removes ours itself, after checking it is still ours.
  const bindPath = join(stateDir, `.control-${randomBytes(4).toString('hex')}.sock`);
  await checkPrivate(stateDir, bindPath);
  await checkReplaceable(path);
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

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(bindPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => log.warn(`control socket ${path}: ${err.message}`));
  let ino: number;
  try {
    // Before anyone can know the name: the directory already keeps everyone else out (checkPrivate).
    await chmod(bindPath, 0o600);
    ino = (await stat(bindPath)).ino;
    await rename(bindPath, path);
  } catch (err) {
    server.close();
    await unlink(bindPath).catch(() => undefined);
    throw new BackplaneError('E_IO', `cannot set up the control socket ${path}: ${errorMessage(err)}`, { cause: err });
  }
  log.debug(`control socket: serving the store on ${path}`);

  let closing: Promise<void> | undefined;
  return {
    path,
    close: () => {
      closing ??= (async () => {
        // Only our own socket: a later server may already have put its own on the path. Checked while ours still
        // listens, so its inode number cannot have been reused by another file.
        const st = await lstat(path).catch(() => undefined);
        if (st?.isSocket() === true && st.ino === ino) await unlink(path).catch(() => undefined);
        const done = new Promise<void>((resolve) => server.close(() => resolve()));
        for (const w of watches) w.abort(new StoreError('closed', 'the agent is closing its control socket'));
        server.closeAllConnections();
        await done;
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

/**
 * The state directory must be the agent user's own and closed to everyone else: that is what keeps other users
 * away from the socket (see the file comment). ensureStateDir refuses one others can write; a socket needs more.
 */
async function checkPrivate(stateDir: string, bindPath: string): Promise<void> {
  await ensureStateDir(stateDir);
  const st = await lstat(stateDir);
  if ((st.mode & 0o077) !== 0) {
    throw new BackplaneError('E_USAGE', `the state directory ${stateDir} is open to group or others (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}); the agent's control socket there could be reached by other users`, {
      hint: `chmod 700 ${stateDir}`,
    });
  }
  if (Buffer.byteLength(bindPath) > MAX_SOCKET_PATH) {
    throw new BackplaneError('E_USAGE', `the state directory ${stateDir} is too long a path for the agent's control socket: a Unix socket address holds ${MAX_SOCKET_PATH} bytes, and ${bindPath} is ${Buffer.byteLength(bindPath)}`, {
      hint: 'use a shorter --state-dir',
    });
  }
}

/** A socket left by an earlier agent is replaced; anything else on the path is the user's and is left alone. */
async function checkReplaceable(path: string): Promise<void> {
  const st = await lstat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (st === undefined) return;
  if (!st.isSocket()) {
    throw new BackplaneError('E_USAGE', `${path} exists and is not a socket; refusing to replace it with the agent's control socket`, {
      hint: `move ${path} away`,
    });
  }
}
