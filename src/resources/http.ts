import { z } from 'zod';
import type { ResourceId } from '../graph/ids.js';
import { duration } from '../graph/schema-util.js';
import { formatDuration } from '../util/duration.js';
import { aborted, deadline, describeNetError, probeResource, quote, type ProbeResult } from './probe.js';
import { defineKind, type Resource } from './types.js';
import { once } from '../util/once.js';

/**
 * Converged while an HTTP(S) endpoint answers as expected: a status, and optionally something in the body. It is a
 * gate, not a change: dependents (a service's clients, a load-balancer entry) run once it answers, and with
 * `meta: {retry: -1, delay: 1s}` a graph waits for a service it just started to come up.
 */

const MIN_INTERVAL_MS = 100;
/** Only the start of a body is searched: a health page is small, and a huge one must not fill the agent's memory. */
const MAX_BODY_BYTES = 1 << 20;
const SAFE_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS']);

/** `200`, `"2xx"`, or a list of them; kept as inclusive ranges. Built with httpSchema, not at start-up (see there). */
const statusItem = () =>
  z.union([
    z.number().int().min(100).max(599),
    z
      .string()
      .regex(/^[1-5](xx|\d\d)$/, 'must be a status such as 200 or a class such as "2xx"')
      .transform((s) => (s.endsWith('xx') ? s : Number(s))),
  ]);

/** The http kind's parameters, built on first use: a graph without a http does not pay for them at start-up. */
export const httpSchema = once(() =>
  z
    .strictObject({
      // Optional only to the JSON Schema, which cannot express "defaults to the name when that is a URL".
      url: z
        .string()
        .refine(isHttpUrl, { message: 'must be an http:// or https:// URL, e.g. http://127.0.0.1:8080/health' })
        .optional()
        .meta({ description: 'the URL to probe; defaults to the name when the name is an http(s) URL' }),
      method: z.enum(['GET', 'HEAD', 'OPTIONS', 'POST', 'PUT', 'PATCH', 'DELETE']).default('GET'),
      status: z
        .union([statusItem(), z.array(statusItem()).min(1)])
        .default(200)
        .meta({ description: 'expected status: 200, "2xx", or a list such as [200, 204, "3xx"]' }),
      body: z.string().min(1).optional().meta({ description: 'the body must contain this text' }),
      bodyMatch: z
        .string()
        .min(1)
        .refine(isRegExp, { message: 'must be a valid JavaScript regular expression' })
        .optional()
        .meta({ description: 'the body must match this regular expression (JavaScript syntax)' }),
      headers: z.record(z.string(), z.string()).default({}).meta({ description: 'request headers' }),
      followRedirects: z.boolean().default(true).meta({ description: 'follow 3xx answers; false to expect the redirect itself' }),
      timeout: duration()
        .refine((ms) => ms > 0, { message: 'must be more than 0' })
        .default(2000)
        .meta({ description: 'how long one request (with its body) may take' }),
      interval: duration()
        .refine((ms) => ms >= MIN_INTERVAL_MS, { message: `must be at least ${MIN_INTERVAL_MS}ms` })
        .default(5000)
        .meta({ description: 'how often the watch probes to notice the endpoint going down or coming up' }),
    })
    .superRefine((p, ctx) => {
      if (p.url === undefined) ctx.addIssue({ code: 'custom', path: ['url'], message: 'give url, or name the resource by its http:// or https:// URL' });
    }),
);

export type HttpSchema = ReturnType<typeof httpSchema>;
export type HttpParams = z.output<HttpSchema>;

export const httpKind = defineKind<HttpParams>({
  kind: 'http',
  description: 'converged while an HTTP(S) endpoint answers with the expected status (and body); dependents wait for it',
  get schema() {
    return httpSchema();
  },
  refreshable: false,
  defaults: (name) => (/^https?:\/\//i.test(name) ? { url: name } : {}),
  // What another host's export may choose here only when the collect rule takes it (see CollectPolicy).
  collect: {
    power: {
      url: 'which URL this host requests (services only it can reach)',
      method: 'the request method (POST, DELETE)',
      headers: 'the request headers',
    },
    fromName: ['url'],
  },
  create: (id, p) => createHttp(id, p),
});

function isHttpUrl(s: string): boolean {
  try {
    const u = new URL(s);
    return (u.protocol === 'http:' || u.protocol === 'https:') && u.hostname !== '';
  } catch {
    return false;
  }
}

function isRegExp(s: string): boolean {
  try {
    new RegExp(s);
    return true;
  } catch {
    return false;
  }
}

function createHttp(id: ResourceId, p: HttpParams): Resource {
  // The schema requires a URL; it is optional in the type only for the JSON Schema's sake.
  const raw = p.url ?? '';
  const url = new URL(raw);
  const headers = new Headers(p.headers);
  // A fresh connection per probe: a pooled one could still answer after the service stopped accepting new ones,
  // and could be closed by the server just as a probe reuses it, reporting a failure that is not there.
  if (!headers.has('connection')) headers.set('connection', 'close');
  // fetch refuses URLs with credentials; send them the way a browser would, and never print the password.
  if (url.username !== '' || url.password !== '') {
    if (!headers.has('authorization')) {
      const user = decodeURIComponent(url.username);
      const pass = decodeURIComponent(url.password);
      headers.set('authorization', `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`);
    }
    if (url.password !== '') url.password = '';
    url.username = '';
  }
  const shown = displayUrl(raw);
  const what = `${p.method} ${shown}`;
  const ranges = toRanges(p.status);
  const expected = describeStatus(p.status);
  const re = p.bodyMatch === undefined ? undefined : new RegExp(p.bodyMatch);
  const readBody = p.body !== undefined || re !== undefined;

  async function probe(signal: AbortSignal): Promise<ProbeResult> {
    const d = deadline(signal, p.timeout);
    try {
      const res = await fetch(url, { method: p.method, headers, redirect: p.followRedirects ? 'follow' : 'manual', signal: d.signal });
      const status = `${res.status}${res.statusText === '' ? '' : ` ${res.statusText}`}`;
      if (!ranges.some(([lo, hi]) => res.status >= lo && res.status <= hi)) {
        await res.body?.cancel().catch(() => undefined);
        return { up: false, detail: `${what} answered ${status} (expected ${expected})`, hint: ANSWERED_HINT('status') };
      }
      if (!readBody) {
        // Not reading the body would keep the connection busy until the server gives up on it.
        await res.body?.cancel().catch(() => undefined);
        return { up: true, detail: `${what} answered ${status}` };
      }
      const text = await bodyPrefix(res);
      if (p.body !== undefined && !text.includes(p.body))
        return { up: false, detail: `${what} answered ${status}, but the body does not contain ${quote(p.body)} (it starts ${quote(text)})`, hint: ANSWERED_HINT('body') };
      if (re !== undefined && !re.test(text))
        return { up: false, detail: `${what} answered ${status}, but the body does not match /${p.bodyMatch ?? ''}/ (it starts ${quote(text)})`, hint: ANSWERED_HINT('bodyMatch') };
      return { up: true, detail: `${what} answered ${status} with the expected body` };
    } catch (err) {
      if (signal.aborted) throw aborted(id);
      if (d.timedOut()) return { up: false, detail: `${what} did not answer within ${formatDuration(p.timeout)}` };
      const e = describeNetError(err, url.hostname);
      return { up: false, detail: `${what} failed: ${e.text}`, ...(e.hint === undefined ? {} : { hint: e.hint }) };
    } finally {
      d.dispose();
    }
  }

  return probeResource(id, {
    intervalMs: p.interval,
    probe,
    noopSkip: SAFE_METHODS.has(p.method) ? undefined : `would send ${what} (not sent in noop mode: ${p.method} may change something)`,
  });
}

/**
 * The server is up and answering, just not as this check expects: "start the service" would send the reader the
 * wrong way (the service runs); what differs is what it serves, or what the check asks for.
 */
const ANSWERED_HINT = (param: 'status' | 'body' | 'bodyMatch'): string =>
  `the server runs and answers, but serves something else: fix what it serves, or change this check's ${param} to what it should serve`;

/** Up to MAX_BODY_BYTES of the body as text; the rest is not downloaded. */
async function bodyPrefix(res: Response): Promise<string> {
  if (res.body === null) return '';
  // Node's fetch types its body loosely; it yields bytes.
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let text = '';
  let bytes = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      const chunk = bytes + value.byteLength > MAX_BODY_BYTES ? value.subarray(0, MAX_BODY_BYTES - bytes) : value;
      bytes += chunk.byteLength;
      text += decoder.decode(chunk, { stream: true });
      if (bytes >= MAX_BODY_BYTES) break;
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
  return text + decoder.decode();
}

type StatusItem = number | string;
type StatusSpec = StatusItem | readonly StatusItem[];

function statusItems(spec: StatusSpec): readonly StatusItem[] {
  return typeof spec === 'number' || typeof spec === 'string' ? [spec] : spec;
}

function toRanges(spec: StatusSpec): [number, number][] {
  return statusItems(spec).map((s): [number, number] => {
    if (typeof s === 'number') return [s, s];
    const base = Number(s[0]) * 100;
    return [base, base + 99];
  });
}

function describeStatus(spec: StatusSpec): string {
  return statusItems(spec).map(String).join(' or ');
}

/** The URL as logged: without a password. */
function displayUrl(raw: string): string {
  const u = new URL(raw);
  if (u.password !== '') u.password = '***';
  return u.href;
}
