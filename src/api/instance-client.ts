/**
 * A small typed client of the instance API (docs/instance-api.md): what an instance's own process (a backplane's
 * member, an example worker) uses to read its spec and peers, report its state, ask for scaling and hear the
 * platform's callbacks.
 *
 *   const api = InstanceClient.fromEnv();          // BACKPLANE_API, BACKPLANE_TOKEN
 *   const me = await api.self();                    // {allocId, service, index, config, scale, ...}
 *   await api.report({ ready: true, state: { role: 'replica', offset: 1234 }, message: 'replica of h1' });
 *   await api.report({ state: { role: 'primary', epoch: 3 }, urgent: true });  // written at once
 *   const answer = await api.scale(4, 'queue length 900');  // {accepted: true, count: 4} | {accepted: false, reason, status}
 *   const ac = new AbortController();
 *   void api.events((e) => { if (e.type === 'config') apply(e.data); }, ac.signal);  // reconnects by itself
 *
 * No dependencies beyond Node's fetch; type-only imports, so it bundles into a member file on its own.
 */
import type { AppRef, ScaleBounds } from '../scheduler/types.js';

/** GET /v1/self */
export interface SelfInfo {
  readonly allocId: string;
  readonly service: string;
  readonly index: number;
  readonly version: string;
  readonly host: string;
  /** The host's address peers reach this instance on. */
  readonly address: string;
  readonly ports: Readonly<Record<string, number>>;
  /** What the application backplane tells this member now (alloc.config); null when nothing. */
  readonly config: Readonly<Record<string, unknown>> | null;
  readonly scale: ScaleBounds | null;
  readonly app: AppRef | null;
  /** cpu in cores, memory in bytes. */
  readonly resources: { readonly cpu: number; readonly memory: number };
}

/** One healthy instance of the same service (GET /v1/peers, the `peers` event). */
export interface Peer {
  readonly allocId: string;
  readonly index: number;
  readonly host: string;
  readonly address: string;
  readonly ports: Readonly<Record<string, number>>;
}

/** PUT /v1/state. Each field given replaces the last reported one; a field left out keeps its last value. */
export interface StateReport {
  /** false keeps an otherwise healthy instance out of discovery (its state stays 'running'). */
  readonly ready?: boolean;
  /** The application's state, JSON, at most 8 KiB. */
  readonly state?: Readonly<Record<string, unknown>>;
  /** One line for humans, at most 200 characters. */
  readonly message?: string;
  /** Write it to the store at once (a role change); otherwise reports are coalesced to one write a second. */
  readonly urgent?: boolean;
}

export type ScaleAnswer =
  | { readonly accepted: true; readonly count: number }
  /** status: 403 (the service has no scale bounds), 422 (outside them; the reason names them), 4xx/5xx otherwise. */
  | { readonly accepted: false; readonly reason: string; readonly status: number };

export interface StoppingNotice {
  /** The stop signal comes this many ms after the notice. */
  readonly inMs: number;
  readonly reason: string;
}

export interface MemoryNotice {
  /** The instance's process tree's resident memory, bytes. */
  readonly rss: number;
  /** resources.memory, bytes. */
  readonly limit: number;
  readonly ratio: number;
}

/** What GET /v1/events sends. `hello` is the first event of every connection (after a reconnect too). */
export type InstanceEvent =
  | { readonly type: 'hello'; readonly data: { readonly config: Readonly<Record<string, unknown>> | null } }
  | { readonly type: 'config'; readonly data: Readonly<Record<string, unknown>> | null }
  | { readonly type: 'peers'; readonly data: { readonly peers: readonly Peer[] } }
  | { readonly type: 'stopping'; readonly data: StoppingNotice }
  | { readonly type: 'memory'; readonly data: MemoryNotice };

/** A request the API refused (other than a refused scale request, which is an answer) or could not be made. */
export class InstanceApiError extends Error {
  constructor(
    message: string,
    /** HTTP status; 0 when the API could not be reached. */
    readonly status: number,
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'InstanceApiError';
  }
}

export interface InstanceClientOptions {
  /** e.g. http://127.0.0.1:43121 */
  readonly url: string;
  readonly token: string;
  /** Per request (not for events), default 5000. */
  readonly timeoutMs?: number;
}

export interface EventsOptions {
  /** Wait before reconnecting after the stream ends or fails, default 500 ms. */
  readonly retryMs?: number;
  /** Told about each failed or ended connection (the stream is retried anyway). */
  readonly onError?: (err: Error) => void;
}

const EVENT_TYPES = new Set(['hello', 'config', 'peers', 'stopping', 'memory']);

export class InstanceClient {
  readonly url: string;
  private readonly token: string;
  private readonly timeoutMs: number;

  constructor(opts: InstanceClientOptions) {
    this.url = opts.url.replace(/\/+$/, '');
    this.token = opts.token;
    this.timeoutMs = opts.timeoutMs ?? 5000;
  }

  /** From BACKPLANE_API and BACKPLANE_TOKEN (set by the agent in every instance's environment). */
  static fromEnv(env: NodeJS.ProcessEnv = process.env): InstanceClient {
    const url = env.BACKPLANE_API;
    const token = env.BACKPLANE_TOKEN;
    if (url === undefined || url === '' || token === undefined || token === '')
      throw new InstanceApiError('BACKPLANE_API and BACKPLANE_TOKEN are not set: not running as an instance of a Backplane service', 0);
    return new InstanceClient({ url, token });
  }

  self(): Promise<SelfInfo> {
    return this.json<SelfInfo>('GET', '/v1/self');
  }

  async peers(): Promise<Peer[]> {
    const r = await this.json<{ peers: Peer[] }>('GET', '/v1/peers');
    return r.peers;
  }

  async report(report: StateReport): Promise<void> {
    await this.request('PUT', '/v1/state', report);
  }

  /** Asks for the service's count to become `count`; a refusal is an answer (accepted: false), not an error. */
  async scale(count: number, reason?: string): Promise<ScaleAnswer> {
    const res = await this.send('POST', '/v1/scale', reason === undefined ? { count } : { count, reason });
    const body = await readJson(res);
    if (res.status === 202 && isRecord(body) && typeof body.count === 'number') return { accepted: true, count: body.count };
    if (res.status === 401) throw apiError(res.status, body);
    const why = isRecord(body) ? (typeof body.reason === 'string' ? body.reason : typeof body.error === 'string' ? body.error : undefined) : undefined;
    return { accepted: false, reason: why ?? `HTTP ${res.status}`, status: res.status };
  }

  /**
   * Streams the platform's events to onEvent until signal aborts, reconnecting after a failure or the end of a
   * stream (each connection starts with `hello`, which carries the config in force). Resolves when aborted; a 401
   * (the alloc is no longer this agent's) rejects with an InstanceApiError.
   */
  async events(onEvent: (e: InstanceEvent) => void, signal: AbortSignal, opts: EventsOptions = {}): Promise<void> {
    const retryMs = opts.retryMs ?? 500;
    while (!signal.aborted) {
      try {
        const res = await fetch(`${this.url}/v1/events`, { headers: { authorization: `Bearer ${this.token}`, accept: 'text/event-stream' }, signal });
        if (res.status === 401) throw apiError(401, await readJson(res));
        if (res.status !== 200 || res.body === null) throw apiError(res.status, await readJson(res));
        await parseSse(res.body, onEvent, signal);
        if (!signal.aborted) opts.onError?.(new InstanceApiError('the event stream ended', 0));
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof InstanceApiError && err.status === 401) throw err;
        opts.onError?.(err instanceof Error ? err : new Error(String(err)));
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, retryMs);
        function done(): void {
          clearTimeout(t);
          signal.removeEventListener('abort', done);
          resolve();
        }
        signal.addEventListener('abort', done, { once: true });
      });
    }
  }

  private async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.request(method, path, body);
    return (await res.json()) as T;
  }

  private async request(method: string, path: string, body?: unknown): Promise<Response> {
    const res = await this.send(method, path, body);
    if (res.status >= 200 && res.status < 300) return res;
    throw apiError(res.status, await readJson(res));
  }

  private async send(method: string, path: string, body?: unknown): Promise<Response> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    try {
      return await fetch(`${this.url}${path}`, {
        method,
        headers,
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (err) {
      throw new InstanceApiError(`${method} ${path}: ${err instanceof Error ? err.message : String(err)}`, 0);
    }
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

async function readJson(res: Response): Promise<unknown> {
  try {
    return await res.json();
  } catch {
    return undefined;
  }
}

function apiError(status: number, body: unknown): InstanceApiError {
  const error = isRecord(body) && typeof body.error === 'string' ? body.error : `HTTP ${status}`;
  const hint = isRecord(body) && typeof body.hint === 'string' ? body.hint : undefined;
  return new InstanceApiError(error, status, hint);
}

/** Reads a text/event-stream body, calling onEvent for each complete event of a known type. */
async function parseSse(body: ReadableStream<Uint8Array>, onEvent: (e: InstanceEvent) => void, signal: AbortSignal): Promise<void> {
  const decoder = new TextDecoder();
  let buf = '';
  let type = 'message';
  let data: string[] = [];
  const reader = body.getReader();
  const abort = (): void => void reader.cancel().catch(() => undefined);
  signal.addEventListener('abort', abort, { once: true });
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).replace(/\r$/, '');
        buf = buf.slice(nl + 1);
        if (line === '') {
          if (data.length > 0 && EVENT_TYPES.has(type)) {
            let parsed: unknown;
            try {
              parsed = JSON.parse(data.join('\n'));
            } catch {
              parsed = undefined;
            }
            if (parsed !== undefined) onEvent({ type, data: parsed } as InstanceEvent);
          }
          type = 'message';
          data = [];
        } else if (line.startsWith(':')) continue;
        else {
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') type = val;
          else if (field === 'data') data.push(val);
        }
      }
    }
  } finally {
    signal.removeEventListener('abort', abort);
  }
}
