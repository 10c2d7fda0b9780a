import { closeSync, constants as fsc, fstatSync, openSync, readFileSync } from 'node:fs';
import { request as httpRequest, type IncomingMessage, type RequestOptions } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect } from 'node:net';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { Store } from '../cluster/store.js';
import { BackplaneError, errorMessage, type ErrorCode } from '../errors.js';
import { defaultStateDir } from '../state-dir.js';
import type { StoreFlags } from '../cli/cluster.js';
import { ApiError, authorize, errorBody, fillPath, parseInput, type Caller, type ClusterAccess, type Op, type OpContext } from './ops.js';

/**
 * The CLI's way to the operator API: one `call(op, input)` whichever door it goes through.
 *
 *   --api https://host:port   the API of an agent elsewhere, over TLS, with a bearer token (--token-file FILE or
 *                             $BACKPLANE_TOKEN, never on the command line where `ps` shows it); --api-ca FILE trusts
 *                             a (self-signed) certificate
 *   --etcd URLS               no agent in between: the op runs here, on the etcd store, as `cli@<host>` (admin) —
 *                             for operators who have etcd credentials
 *   (neither)                 the local agent's Unix socket `<state dir>/api.sock` when an agent answers on it (as
 *                             root, admin); else the op runs here on the embedded store of --state-dir (no agent)
 *
 * Answers are checked against the op's output schema: an agent of another version that answers something else is a
 * clear error naming the op, not a crash in the rendering. Error bodies become ApiError (status, message, hint; the
 * BackplaneError code, so the CLI's exit codes are the same whichever door was used).
 *
 * The commands get their client from `clientFor(flags)` (and `withClient` in cli/api-flags.ts).
 */

export const TOKEN_ENV = 'BACKPLANE_TOKEN';
export const API_SOCKET_FILE = 'api.sock';

export interface ClientFlags extends StoreFlags {
  /** https://host:port of an agent's API. */
  api?: string;
  /** PEM file of the CA (or the self-signed certificate) to trust for --api. */
  apiCa?: string;
  /** File holding the API token (first line). */
  tokenFile?: string;
}

export interface StreamEvent {
  readonly event: string;
  readonly data: unknown;
}

export interface OpClient {
  /** socket: the local agent; https: --api; direct: the op runs in this process on the store. */
  readonly mode: 'socket' | 'https' | 'direct';
  /** Where calls go, for messages: the socket, the URL, or the store. */
  readonly where: string;
  call<I, O>(op: Op<I, O>, input: I, opts?: { readonly signal?: AbortSignal }): Promise<O>;
  /** The live stream (GET /v1/stream, server-sent events) until `signal` aborts or the server ends it. */
  stream(signal: AbortSignal): AsyncIterable<StreamEvent>;
  close(): Promise<void>;
}

/** The client the flags select (see the module comment). */
export async function clientFor(flags: ClientFlags, env: NodeJS.ProcessEnv = process.env): Promise<OpClient> {
  if (flags.api !== undefined) {
    if ((flags.etcd ?? '') !== '') throw new BackplaneError('E_USAGE', '--api and --etcd both given', { hint: 'use the API of an agent (--api) or the etcd store directly (--etcd), not both' });
    return new HttpClient({ kind: 'https', url: apiUrl(flags.api), token: readToken(flags, env), ...(flags.apiCa === undefined ? {} : { ca: readCa(flags.apiCa) }) });
  }
  if (flags.apiCa !== undefined || flags.tokenFile !== undefined) throw new BackplaneError('E_USAGE', '--api-ca and --token-file only apply with --api', { hint: 'pass the agent\'s API with --api https://host:port' });
  if ((flags.etcd ?? '') !== '') return new DirectClient(flags);
  const socketPath = join(flags.stateDir ?? defaultStateDir(), API_SOCKET_FILE);
  return (await answers(socketPath)) ? new HttpClient({ kind: 'socket', socketPath }) : new DirectClient(flags);
}

/** Does something accept connections on the socket? No socket or a stale one (no agent): no. */
function answers(socketPath: string): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const s = connect(socketPath);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', (err: NodeJS.ErrnoException) => {
      s.destroy();
      if (err.code === 'EACCES' || err.code === 'EPERM') {
        reject(new BackplaneError('E_USAGE', `no permission to connect to the agent's API socket ${socketPath}`, { hint: 'run the command as the user the agent runs as (root), or use its API over TLS with --api and a token', cause: err }));
      } else resolve(false);
    });
  });
}

function apiUrl(text: string): URL {
  let url: URL | undefined;
  try {
    url = new URL(text);
  } catch {
    url = undefined;
  }
  if (url === undefined || url.protocol !== 'https:' || url.hostname === '' || url.username !== '' || url.search !== '' || url.hash !== '') {
    throw new BackplaneError('E_USAGE', `--api "${text}" is not an https URL of an agent's API`, { hint: 'e.g. --api https://web1:8443 (the agent serves TCP only with TLS: run --api-listen ... --api-tls-cert ... --api-tls-key ...)' });
  }
  return url;
}

/** The token from --token-file (first line; refused when group or others may read it) or $BACKPLANE_TOKEN. */
function readToken(flags: ClientFlags, env: NodeJS.ProcessEnv): string {
  if (flags.tokenFile !== undefined) {
    let mode: number;
    let text: string;
    // One descriptor for the mode check and the read (a file swapped between two lookups would pass the check), not
    // following a symlink: the mode checked is the token file's own.
    let fd: number | undefined;
    try {
      fd = openSync(flags.tokenFile, fsc.O_RDONLY | fsc.O_NOFOLLOW);
      const st = fstatSync(fd);
      if (!st.isFile()) throw new Error('not a regular file');
      mode = st.mode;
      text = readFileSync(fd, 'utf8');
    } catch (err) {
      throw new BackplaneError('E_USAGE', `cannot read the token file ${flags.tokenFile}: ${errorMessage(err)}`, { cause: err, hint: 'give a regular file (not a symlink) holding the token on its first line' });
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
    if ((mode & 0o077) !== 0) {
      throw new BackplaneError('E_USAGE', `the token file ${flags.tokenFile} is accessible by group or others (mode ${(mode & 0o777).toString(8).padStart(4, '0')})`, { hint: `chmod 600 ${flags.tokenFile}` });
    }
    const token = (text.split(/\r?\n/)[0] ?? '').trim();
    if (token === '') throw new BackplaneError('E_USAGE', `the token file ${flags.tokenFile} is empty`, { hint: 'the token is its first line' });
    return token;
  }
  const token = (env[TOKEN_ENV] ?? '').trim();
  if (token === '') {
    throw new BackplaneError('E_USAGE', `--api needs a token: --token-file FILE or $${TOKEN_ENV}`, { hint: 'an admin makes one with `backplane token create --name NAME --role viewer|operator|admin`' });
  }
  return token;
}

function readCa(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new BackplaneError('E_USAGE', `cannot read --api-ca ${file}: ${errorMessage(err)}`, { cause: err });
  }
}

const ERROR_CODES: ReadonlySet<string> = new Set<ErrorCode>([
  'E_YAML', 'E_SCHEMA', 'E_UNKNOWN_KIND', 'E_DUPLICATE', 'E_MISSING_REF', 'E_BAD_REF', 'E_CYCLE', 'E_IO', 'E_APPLY', 'E_TIMEOUT', 'E_ABORTED', 'E_USAGE', 'E_LIMIT', 'E_OVERLAP', 'E_OSCILLATION', 'E_AUTH', 'E_DENIED', 'E_NOT_FOUND', 'E_CONFLICT', 'E_UNAVAILABLE',
]);

/** An error body (`{error: {status, code, message, hint?}}`) as the ApiError it was on the other side. */
export function errorFromBody(status: number, text: string, what: string): ApiError {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  const body = errorBody.safeParse(json);
  if (!body.success) {
    const snippet = text.trim().slice(0, 200);
    return new ApiError(status, `${what}: HTTP ${status}${snippet === '' ? '' : `: ${snippet}`}`, { hint: 'is that a Backplane agent\'s API?' });
  }
  const e = body.data.error;
  // The server's message is the error's one-line form, which may end with its hint: say it once.
  const suffix = e.hint === undefined ? undefined : `\n  hint: ${e.hint}`;
  const message = suffix !== undefined && e.message.endsWith(suffix) ? e.message.slice(0, -suffix.length) : e.message;
  return new ApiError(e.status, message, { ...(e.hint === undefined ? {} : { hint: e.hint }), ...(ERROR_CODES.has(e.code) ? { code: e.code as ErrorCode } : {}) });
}

/** Checks an answer against the op's output schema; answers it as it came (a newer agent's extra fields stay). */
function checked<I, O>(op: Op<I, O>, answer: unknown, where: string): O {
  const r = op.output.safeParse(answer);
  if (r.success) return answer as O;
  const problems = r.error.issues.slice(0, 5).map((i) => `${i.path.length === 0 ? 'answer' : i.path.join('.')}: ${i.message}`);
  throw new BackplaneError('E_APPLY', `${op.name}: the answer from ${where} does not match what this CLI expects: ${problems.join('; ')}`, {
    hint: 'the agent runs another version of Backplane than this CLI (`backplane status` shows its version)',
  });
}

// ---- over HTTP: the local socket, or HTTPS with a token ---------------------------------------------------------------

type HttpTarget = { readonly kind: 'socket'; readonly socketPath: string } | { readonly kind: 'https'; readonly url: URL; readonly token: string; readonly ca?: string };

class HttpClient implements OpClient {
  readonly mode: 'socket' | 'https';
  readonly where: string;

  constructor(private readonly target: HttpTarget) {
    this.mode = target.kind;
    this.where = target.kind === 'socket' ? target.socketPath : target.url.origin;
  }

  async call<I, O>(op: Op<I, O>, input: I, opts: { readonly signal?: AbortSignal } = {}): Promise<O> {
    const { path, rest } = fillPath(op.path, input as Record<string, unknown>);
    let full = path;
    let body: string | undefined;
    if (op.method === 'GET' || op.method === 'DELETE') {
      const qs = new URLSearchParams();
      for (const [k, v] of Object.entries(rest)) {
        for (const x of Array.isArray(v) ? (v as unknown[]) : [v]) if (x !== undefined) qs.append(k, queryValue(x));
      }
      const s = qs.toString();
      if (s !== '') full += `?${s}`;
    } else {
      body = JSON.stringify(rest);
    }
    const res = await this.send(op.method, full, body, opts.signal, `${op.name} (${op.method} ${path})`);
    const text = await readAll(res);
    if (res.statusCode !== 200) throw errorFromBody(res.statusCode ?? 0, text, `${op.name} at ${this.where}`);
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new BackplaneError('E_APPLY', `${op.name}: ${this.where} answered something that is not JSON`, { cause: err, hint: "is that a Backplane agent's API?" });
    }
    return checked(op, json, this.where);
  }

  async *stream(signal: AbortSignal): AsyncIterable<StreamEvent> {
    const res = await this.send('GET', '/v1/stream', undefined, signal, 'the live stream (GET /v1/stream)');
    if (res.statusCode !== 200) throw errorFromBody(res.statusCode ?? 0, await readAll(res), `the live stream at ${this.where}`);
    res.setEncoding('utf8');
    let buf = '';
    try {
      for await (const chunk of res) {
        buf += chunk as string;
        for (let end = buf.indexOf('\n\n'); end !== -1; end = buf.indexOf('\n\n')) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          let event = 'message';
          const data: string[] = [];
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) continue;
            if (line.startsWith('event:')) event = line.slice(6).trim();
            else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
          }
          if (data.length === 0) continue;
          let parsed: unknown;
          try {
            parsed = JSON.parse(data.join('\n'));
          } catch {
            parsed = data.join('\n');
          }
          yield { event, data: parsed };
        }
      }
    } catch (err) {
      if (signal.aborted) return;
      throw err;
    } finally {
      res.destroy();
    }
  }

  async close(): Promise<void> {
    // Every request has its own connection (agent: false): nothing to close.
  }

  private send(method: string, path: string, body: string | undefined, signal: AbortSignal | undefined, what: string): Promise<IncomingMessage> {
    const t = this.target;
    const headers: Record<string, string | number> = { accept: 'application/json' };
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = Buffer.byteLength(body);
    }
    if (t.kind === 'https') headers['authorization'] = `Bearer ${t.token}`;
    const base: RequestOptions = { method, path, headers, agent: false, ...(signal === undefined ? {} : { signal }) };
    return new Promise((resolve, reject) => {
      const req =
        t.kind === 'socket'
          ? httpRequest({ ...base, socketPath: t.socketPath })
          : httpsRequest({ ...base, host: t.url.hostname.replace(/^\[(.*)\]$/, '$1'), port: t.url.port === '' ? 443 : Number(t.url.port), servername: t.url.hostname, ...(t.ca === undefined ? {} : { ca: t.ca }) });
      req.once('response', resolve);
      req.once('error', (err: NodeJS.ErrnoException) => reject(this.transportError(err, what, signal)));
      req.end(body);
    });
  }

  private transportError(err: NodeJS.ErrnoException, what: string, signal: AbortSignal | undefined): BackplaneError {
    if (signal?.aborted === true) return new BackplaneError('E_ABORTED', `${what}: stopped`, { cause: err });
    const t = this.target;
    if (t.kind === 'socket') {
      const why = err.code === 'ENOENT' ? 'it does not exist' : err.code === 'ECONNREFUSED' ? 'nothing is listening on it' : err.message;
      return new BackplaneError('E_IO', `${what}: the agent's API socket ${t.socketPath} is not answering (${why})`, { hint: 'is the agent running with this --state-dir?', cause: err });
    }
    const tls = /certificate|self[- ]signed|CERT_|unable to verify/i.test(`${err.code ?? ''} ${err.message}`);
    return new BackplaneError('E_IO', `${what}: cannot reach ${t.url.origin}: ${err.message}`, {
      hint: tls ? "the agent's certificate is not trusted here: pass its CA (or the certificate itself) with --api-ca FILE" : 'is the agent serving its API there (run --api-listen)?',
      cause: err,
    });
  }
}

/** A query parameter's text: the value as typed (q.int/q.bool read them back), anything else as JSON. */
function queryValue(v: unknown): string {
  return typeof v === 'string' ? v : typeof v === 'number' || typeof v === 'boolean' ? String(v) : JSON.stringify(v);
}

function readAll(res: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    res.on('data', (c: Buffer) => chunks.push(c));
    res.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    res.once('error', reject);
  });
}

// ---- direct: the op runs here, on the store --------------------------------------------------------------------------

/** The op runs here on the store the flags select (--etcd, or the embedded store of --state-dir), never on an agent. */
export function directClient(flags: ClientFlags): OpClient {
  return new DirectClient(flags);
}

/** `cli@<host>` on a store it opened itself: an admin, as whoever can read the store's keys and this host's key is. */
export function directCaller(): Caller {
  return { name: `cli@${hostname()}`, role: 'admin', via: 'direct' };
}

class DirectClient implements OpClient {
  readonly mode = 'direct' as const;
  readonly where: string;
  private store: Store | undefined;
  private access: Promise<ClusterAccess> | undefined;
  private readonly caller = directCaller();

  constructor(private readonly flags: ClientFlags) {
    this.where = (flags.etcd ?? '') !== '' ? `etcd ${flags.etcd ?? ''}` : `the embedded store in ${flags.stateDir ?? defaultStateDir()}`;
  }

  /** The store is opened on the first op that needs it (agent-less ops never do). */
  private cluster(): Promise<ClusterAccess> {
    this.access ??= (async () => {
      const { openStore } = await import('../cli/etcd-flags.js');
      const { operatorContext, operatorSigner } = await import('../cli/operator.js');
      const store = await openStore(this.flags);
      this.store = store;
      const ctx = await operatorContext(store, this.flags);
      let signer: ReturnType<typeof operatorSigner> | undefined;
      return { store, view: ctx.view, host: hostname(), readState: () => ctx.readState(), signer: () => (signer ??= operatorSigner(ctx)) };
    })();
    return this.access;
  }

  async call<I, O>(op: Op<I, O>, input: I, opts: { readonly signal?: AbortSignal } = {}): Promise<O> {
    const ctx: OpContext = { caller: this.caller, cluster: () => this.cluster(), signal: opts.signal ?? new AbortController().signal };
    const parsed = parseInput(op, input);
    await authorize(op, this.caller, parsed, ctx);
    const out = await op.run(ctx, parsed);
    return checked(op, out, 'this process');
  }

  // eslint-disable-next-line require-yield
  async *stream(): AsyncIterable<StreamEvent> {
    throw new ApiError(400, 'the live stream comes from an agent, and none was reached', { hint: "run it on the agent's host (its --state-dir), or against its API with --api URL" });
  }

  async close(): Promise<void> {
    const store = this.store;
    this.store = undefined;
    await store?.close().catch(() => undefined);
  }
}
