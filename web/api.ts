/**
 * The dashboard's only door to the cluster: the agent's HTTP API, with the token the operator typed in. Every fetch
 * sends `Authorization: Bearer`; the live stream is read with fetch and a ReadableStream, because EventSource cannot
 * send a header.
 */

const TOKEN_KEY = 'backplane.token';

export function savedToken(): string | undefined {
  return sessionStorage.getItem(TOKEN_KEY) ?? undefined;
}

export function saveToken(token: string): void {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function forgetToken(): void {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** A refusal or failure the server answered, with its message (the API's `{error: {message, hint}}`). */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly hint?: string,
  ) {
    super(message);
  }
}

/** Called on every 401: the token is gone, expired or revoked; the app goes back to its login form. */
let onUnauthorized: (e: HttpError) => void = () => undefined;
export function setUnauthorizedHandler(fn: (e: HttpError) => void): void {
  onUnauthorized = fn;
}

function headers(extra: Record<string, string> = {}): Record<string, string> {
  const t = savedToken();
  return { ...(t === undefined ? {} : { Authorization: `Bearer ${t}` }), Accept: 'application/json', ...extra };
}

async function errorOf(res: Response): Promise<HttpError> {
  let message = `${res.status} ${res.statusText}`;
  let hint: string | undefined;
  try {
    const body = (await res.json()) as { error?: { message?: unknown; hint?: unknown } };
    if (typeof body.error?.message === 'string') message = body.error.message;
    if (typeof body.error?.hint === 'string') hint = body.error.hint;
  } catch {
    // not JSON: the status line says it
  }
  return new HttpError(res.status, message, hint);
}

/** How long one API call may take before the dashboard gives up on it and says so (the stream is not a call). */
export const CALL_TIMEOUT_MS = 30_000;

/**
 * One API call: the parsed JSON, or an HttpError (a 401 also sends the app back to its login form). A call that gets
 * no answer within `timeoutMs` fails (status 0) rather than wait forever: a view refreshes one call at a time, so a
 * hung one would freeze it.
 */
export async function call<T>(method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, body?: unknown, signal?: AbortSignal, timeoutMs = CALL_TIMEOUT_MS): Promise<T> {
  const timeout = AbortSignal.timeout(timeoutMs);
  const both = signal === undefined ? timeout : AbortSignal.any([signal, timeout]);
  const timedOut = (): HttpError => new HttpError(0, `the agent did not answer ${method} ${path.split('?')[0] ?? ''} within ${timeoutMs / 1000} s`);
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers: headers(body === undefined ? {} : { 'Content-Type': 'application/json' }),
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: both,
      credentials: 'omit',
      cache: 'no-store',
    });
  } catch (e) {
    if (signal?.aborted === true) throw e;
    if (timeout.aborted) throw timedOut();
    throw new HttpError(0, `the agent did not answer (${e instanceof Error ? e.message : String(e)})`);
  }
  try {
    if (!res.ok) {
      const err = await errorOf(res);
      if (res.status === 401) onUnauthorized(err);
      throw err;
    }
    return (await res.json()) as T;
  } catch (e) {
    // The body can stall too, after the headers came.
    if (timeout.aborted && signal?.aborted !== true) throw timedOut();
    throw e;
  }
}

export const get = <T>(path: string, signal?: AbortSignal): Promise<T> => call<T>('GET', path, undefined, signal);
export const post = <T>(path: string, body: unknown = {}): Promise<T> => call<T>('POST', path, body);

/** `/v1/services/${enc(name)}`: a path segment from data. */
export const enc = encodeURIComponent;

export interface StreamMessage {
  readonly type: string;
  readonly data: unknown;
}

export type StreamStatus = { readonly state: 'connecting' } | { readonly state: 'live' } | { readonly state: 'retrying'; readonly inMs: number; readonly why: string };

/** The server sends a ping every 15 s: a connection silent for this long is dead, even if TCP has not noticed. */
export const STREAM_IDLE_MS = 40_000;

export interface StreamOptions {
  /** Where the stream is (an absolute URL outside a page). */
  readonly url?: string;
  /** Silence after which the connection is given up and made again. */
  readonly idleMs?: number;
}

/**
 * Reads GET /v1/stream (server-sent events) until stopped: each message to `onMessage`; reconnects with backoff
 * (0.5 s doubling to 15 s, reset once a connection says hello) and says so through `onStatus`. After a reconnect the
 * caller refetches what it shows: events of the gap are lost. A 401 stops it (the token is no longer good). A
 * connection that goes silent (no message and no ping for `idleMs`: a suspended laptop, a dropped NAT entry, a
 * proxy that stopped forwarding) is dropped and made again, instead of showing "live" over a dead line.
 */
export function openStream(onMessage: (m: StreamMessage) => void, onStatus: (s: StreamStatus) => void, opts: StreamOptions = {}): () => void {
  const ac = new AbortController();
  const url = opts.url ?? '/v1/stream';
  const idleMs = opts.idleMs ?? STREAM_IDLE_MS;
  let delay = 500;
  const run = async (): Promise<void> => {
    while (!ac.signal.aborted) {
      onStatus({ state: 'connecting' });
      let why = 'the stream ended';
      // One controller per connection: the watchdog ends this one, `ac` ends them all.
      const conn = new AbortController();
      const stopConn = (): void => conn.abort();
      ac.signal.addEventListener('abort', stopConn, { once: true });
      let idle: ReturnType<typeof setTimeout> | undefined;
      let silent = false;
      const alive = (): void => {
        if (idle !== undefined) clearTimeout(idle);
        idle = setTimeout(() => {
          silent = true;
          conn.abort();
        }, idleMs);
      };
      try {
        alive();
        const res = await fetch(url, { headers: headers({ Accept: 'text/event-stream' }), signal: conn.signal, credentials: 'omit', cache: 'no-store' });
        if (res.status === 401) {
          onUnauthorized(await errorOf(res));
          return;
        }
        if (!res.ok || res.body === null) {
          why = (await errorOf(res)).message;
        } else {
          await readEvents(
            res.body,
            (m) => {
              if (m.type === 'hello') {
                delay = 500;
                onStatus({ state: 'live' });
              }
              onMessage(m);
            },
            alive,
          );
        }
      } catch (e) {
        if (ac.signal.aborted) return;
        why = silent ? `no message or ping for ${idleMs / 1000} s` : e instanceof Error ? e.message : String(e);
      } finally {
        if (idle !== undefined) clearTimeout(idle);
        ac.signal.removeEventListener('abort', stopConn);
      }
      if (ac.signal.aborted) return;
      onStatus({ state: 'retrying', inMs: delay, why });
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 15_000);
    }
  };
  void run();
  return () => ac.abort();
}

/**
 * Parses a text/event-stream body: `event: T` and `data: ...` lines, a blank line ends a message, `:` lines are
 * comments. `onBytes` hears of every chunk (a ping included): the caller's sign of life.
 */
export async function readEvents(body: ReadableStream<Uint8Array>, onMessage: (m: StreamMessage) => void, onBytes?: () => void): Promise<void> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  let type = 'message';
  let data: string[] = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onBytes?.();
    buf += decoder.decode(value, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, '');
      buf = buf.slice(nl + 1);
      if (line === '') {
        if (data.length > 0) {
          let parsed: unknown;
          try {
            parsed = JSON.parse(data.join('\n'));
          } catch {
            parsed = data.join('\n');
          }
          onMessage({ type, data: parsed });
        }
        type = 'message';
        data = [];
      } else if (line.startsWith(':')) {
        // a comment: the server's keep-alive ping
      } else {
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') type = val;
        else if (field === 'data') data.push(val);
      }
    }
    // A line longer than 1 MB is no event of ours: drop it rather than grow without bound.
    if (buf.length > 1_048_576) buf = '';
  }
}
