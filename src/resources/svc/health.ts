import { connect } from 'node:net';
import type { HealthParams } from '../svc-schema.js';
import { runCommand } from './run-command.js';

/**
 * Health checks of a supervised process: one probe (exec, http or tcp) run on a schedule by a HealthMonitor that
 * turns results into two events, "healthy for the first time" and "unhealthy" (failures in a row past the threshold).
 */

export type ProbeResult = { readonly ok: true } | { readonly ok: false; readonly reason: string };
export type Probe = (signal: AbortSignal) => Promise<ProbeResult>;

export function makeProbe(h: HealthParams, env: NodeJS.ProcessEnv, cwd: string): Probe {
  if (h.exec !== undefined) {
    const argv = h.exec;
    return async (signal) => {
      const o = await runCommand(argv, { env, cwd, timeoutMs: h.timeout, signal });
      switch (o.kind) {
        case 'exited':
          if (o.code === 0) return OK;
          return fail(`${argv.join(' ')} ${o.code !== null ? `exited with code ${o.code}` : `was killed by ${o.signal ?? 'a signal'}`}${lastLine(o.output)}`);
        case 'timeout':
          return fail(`${argv.join(' ')} timed out after ${h.timeout}ms${lastLine(o.output)}`);
        case 'aborted':
          return fail('aborted');
        case 'spawn-error':
          return fail(`could not run ${argv[0] ?? ''}: ${o.error.message}`);
      }
    };
  }
  if (h.http !== undefined) {
    return httpProbe(h.http, h.timeout);
  }
  if (h.tcp !== undefined) {
    const target = h.tcp;
    return () => tcpProbe(target, h.timeout);
  }
  // The schema demands exactly one kind of check.
  throw new Error('health: no check given');
}

const OK: ProbeResult = { ok: true };
const fail = (reason: string): ProbeResult => ({ ok: false, reason });

function lastLine(output: string): string {
  const line = output.split('\n').at(-1) ?? '';
  return line === '' ? '' : `: ${line.slice(0, 200)}`;
}

// http and tcp probes are bounded by their timeout and not aborted: a stopped monitor just ignores the result.
function httpProbe(url: string, timeoutMs: number): Probe {
  let u: URL;
  try {
    u = new URL(url);
  } catch (err) {
    // The schema only passes URLs that parse; this is for a caller that bypassed it.
    return () => Promise.resolve(fail(`GET ${url} failed: ${(err as Error).message}`));
  }
  if (u.protocol === 'https:') return () => httpsProbe(url, timeoutMs);
  let head: string;
  try {
    head = requestHead(u);
  } catch (err) {
    return () => Promise.resolve(fail(`GET ${url} failed: ${(err as Error).message}`));
  }
  // node:http's URL handling: brackets off an IPv6 literal (for the connect, not the Host header), port 80 by default.
  const host = u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname;
  const port = u.port === '' ? 80 : Number(u.port);
  return () => plainHttpProbe(url, host, port, head, timeoutMs);
}

/**
 * The request node:http sends for `GET url` with agent:false (checked against it): path and query (the fragment is
 * not sent), Host as the URL has it (IPv6 in brackets, the port unless 80), and the URL's userinfo as basic auth,
 * percent-decoded. WHATWG URL parsing has already percent-encoded or refused anything that could break a header line.
 */
function requestHead(u: URL): string {
  const auth =
    u.username !== '' || u.password !== ''
      ? `Authorization: Basic ${Buffer.from(`${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`).toString('base64')}\r\n`
      : '';
  return `GET ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\nUser-Agent: backplane-health\r\n${auth}Connection: close\r\n\r\n`;
}

/** https keeps node's client: TLS is rare in a health check, and not worth a second implementation. */
async function httpsProbe(url: string, timeoutMs: number): Promise<ProbeResult> {
  const { request } = await import('node:https');
  return new Promise((resolve) => {
    // A fresh connection each time: a kept-alive socket to a dead process would say nothing about the new one.
    const req = request(url, { method: 'GET', timeout: timeoutMs, agent: false, headers: { 'user-agent': 'backplane-health' } }, (res) => {
      res.resume();
      const status = res.statusCode ?? 0;
      resolve(status >= 200 && status < 400 ? OK : fail(`GET ${url} answered ${status}`));
    });
    req.on('timeout', () => {
      req.destroy();
      resolve(fail(`GET ${url} timed out after ${timeoutMs}ms`));
    });
    req.on('error', (err: NodeJS.ErrnoException) => resolve(fail(`GET ${url} failed: ${err.code ?? err.message}`)));
    req.end();
  });
}

/** `HTTP/1.x NNN` and an optional reason phrase: what llhttp accepts of an HTTP/1 status line. */
const STATUS_LINE = /^HTTP\/1\.\d (\d{3})(?:[ \t][^\r\n]*)?$/;
/** Bytes an answer may take before its final status line (1xx interim answers and their headers): node's header limit. */
const MAX_HEAD_BYTES = 16 * 1024;

/**
 * `GET url` over node:net, reading nothing but status lines. node:http's client cost the main thread of a cold run
 * its first check's worth of compiling (_http_agent, _http_client, _http_common, _http_incoming, _http_outgoing and
 * the request plumbing), on the path to "the service is up": a fresh process's first check took 13.0 ms of CPU
 * through node:http, 5.7 ms through net (medians of 15, load ~2.3); net is loaded by then (child_process uses it).
 * Same meaning as that client: healthy on a final status of 200-399, 1xx interim answers (100 Continue, 103 Early
 * Hints) skipped with their headers; 101 is final (nothing asked to switch protocols). The timeout bounds the whole
 * check, connect and answer.
 */
function plainHttpProbe(url: string, host: string, port: number, head: string, timeoutMs: number): Promise<ProbeResult> {
  return new Promise((resolve) => {
    // A fresh connection each time: a kept-alive socket to a dead process would say nothing about the new one.
    const sock = connect({ host, port });
    let settled = false;
    const done = (r: ProbeResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(r);
    };
    const timer = setTimeout(() => {
      sock.destroy();
      done(fail(`GET ${url} timed out after ${timeoutMs}ms`));
    }, timeoutMs);
    let buf = '';
    let seen = 0;
    /** Inside a 1xx answer's headers: lines are skipped up to the blank one. */
    let interim = false;
    const onData = (chunk: Buffer): void => {
      seen += chunk.length;
      buf += chunk.toString('latin1');
      for (let nl = buf.indexOf('\n'); nl !== -1; nl = buf.indexOf('\n')) {
        const line = buf.charCodeAt(nl - 1) === 13 ? buf.slice(0, nl - 1) : buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (interim) {
          if (line === '') interim = false;
          continue;
        }
        const m = STATUS_LINE.exec(line);
        if (m === null) return malformed(line);
        const status = Number(m[1]);
        if (status >= 100 && status < 200 && status !== 101) {
          interim = true;
          continue;
        }
        // A polite close (FIN, not RST) that reads and drops the rest of the answer: a reset makes some servers log
        // an error on every check. Bounded like the check, so a server that never closes cannot keep the socket.
        sock.off('data', onData);
        sock.resume();
        sock.end();
        const linger = setTimeout(() => sock.destroy(), timeoutMs).unref();
        sock.once('close', () => clearTimeout(linger));
        return done(status >= 200 && status < 400 ? OK : fail(`GET ${url} answered ${status}`));
      }
      // Garbage is told at once, not at the timeout: a status line starts with "HTTP/".
      if (!interim && !'HTTP/'.startsWith(buf.slice(0, 5))) return malformed(buf);
      if (seen > MAX_HEAD_BYTES) {
        sock.destroy();
        done(fail(`GET ${url} answered more than ${MAX_HEAD_BYTES} bytes without a final status line`));
      }
    };
    const malformed = (line: string): void => {
      sock.destroy();
      done(fail(`GET ${url} answered with a malformed status line: ${JSON.stringify(line.slice(0, 80))}`));
    };
    sock.once('connect', () => sock.write(head));
    sock.on('data', onData);
    sock.on('error', (err: NodeJS.ErrnoException) => done(fail(`GET ${url} failed: ${err.code ?? err.message}`)));
    // An end (or a close without an error) before the final status line; after it, done() ignores this.
    const early = (): void => {
      if (settled) return;
      sock.destroy();
      done(fail(`GET ${url} failed: the connection was closed ${seen === 0 ? 'without an answer' : 'before a full status line'}`));
    };
    sock.once('end', early);
    sock.once('close', early);
  });
}

function tcpProbe(target: string, timeoutMs: number): Promise<ProbeResult> {
  const colon = target.lastIndexOf(':');
  const host = target.slice(0, colon).replace(/^\[(.*)\]$/, '$1');
  const port = Number(target.slice(colon + 1));
  return new Promise((resolve) => {
    const sock = connect({ host, port, timeout: timeoutMs });
    let connected = false;
    sock.once('connect', () => {
      connected = true;
      // A polite close (FIN, not RST): a reset makes some servers log an error, or even crash, on every check.
      sock.resume();
      sock.end();
      resolve(OK);
    });
    sock.once('timeout', () => {
      sock.destroy();
      resolve(fail(`connect to ${target} timed out after ${timeoutMs}ms`));
    });
    sock.on('error', (err: NodeJS.ErrnoException) => {
      if (!connected) resolve(fail(`connect to ${target} failed: ${err.code ?? err.message}`));
    });
  });
}

export interface HealthEvents {
  /** The first successful check of this process (it is now up). */
  healthy(): void;
  /** `failures` checks in a row failed (outside the start period). */
  unhealthy(reason: string): void;
}

/**
 * Check cadence until the first success: dependents wait for it, so it must be found quickly. The first check runs
 * at once, when the process has usually not even reached its listen(); the next ones follow after 10, 20, 40, 80 and
 * 160 ms, then every 200 ms (http and tcp checks: after 20 more every 5 ms first, below). With a flat 200 ms, a
 * server up 20 ms after its start (nginx, measured on a 2-core VM) was found healthy only 200 ms later: most of a
 * cold nginx stack's run. A check is one connection or command, and the next is only scheduled once the last has
 * finished, so the ramp adds at most five checks (and the fast retries twenty).
 */
const FIRST_RETRY_MS = 10;
const START_INTERVAL_MS = 200;
/**
 * An http or tcp check is a connect on (usually) loopback: refused in microseconds while nothing listens, answered
 * as soon as something does. Those checks run every FAST_RETRY_MS for their first FAST_RETRIES retries (~0.1 s),
 * then on the ramp: with the ramp alone, nginx up 25-30 ms after its start on a busy 2-core host was found only at
 * the check 30 ms in or the one 70 ms in, up to 40 ms late on a ~170 ms cold run. An exec check is a fork of the
 * agent (6-15 ms of its main thread) and a process: it keeps the ramp.
 */
const FAST_RETRY_MS = 5;
const FAST_RETRIES = 20;

/**
 * Runs the probe for one process: at once, then on the ramp above until the first success (failures during
 * startPeriod do not count), then every `interval`. Stops at the first "unhealthy" (the supervisor replaces the
 * process) or on stop().
 */
export class HealthMonitor {
  private readonly ac = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  private failuresInRow = 0;
  /** The next delay while starting (the ramp above). */
  private startDelay = FIRST_RETRY_MS;
  /** Fast retries left (see FAST_RETRIES): none for an exec check. */
  private fastLeft: number;
  private everHealthy = false;
  private readonly started = Date.now();
  lastFailure: string | undefined;

  constructor(
    private readonly h: HealthParams,
    private readonly probe: Probe,
    private readonly events: HealthEvents,
  ) {
    this.fastLeft = h.exec === undefined ? FAST_RETRIES : 0;
    this.schedule(0);
  }

  /** Passed a check since the process started (a failure or two below the threshold does not undo that). */
  get up(): boolean {
    return this.everHealthy;
  }

  stop(): void {
    this.ac.abort();
    clearTimeout(this.timer);
  }

  private schedule(ms: number): void {
    if (this.ac.signal.aborted) return;
    // Not unref'd: a checkApply may be waiting for this very check.
    this.timer = setTimeout(() => void this.tick(), ms);
  }

  private async tick(): Promise<void> {
    const r = await this.probe(this.ac.signal).catch((err: unknown): ProbeResult => fail(String(err)));
    if (this.ac.signal.aborted) return;
    if (r.ok) {
      this.failuresInRow = 0;
      this.lastFailure = undefined;
      if (!this.everHealthy) {
        this.everHealthy = true;
        this.events.healthy();
      }
      this.schedule(this.h.interval);
      return;
    }
    this.lastFailure = r.reason;
    const starting = !this.everHealthy && Date.now() - this.started < this.h.startPeriod;
    if (!starting) this.failuresInRow++;
    if (this.failuresInRow >= this.h.failures) {
      this.stop();
      this.events.unhealthy(`${this.failuresInRow} health checks failed in a row; last: ${r.reason}`);
      return;
    }
    if (!starting) {
      this.schedule(this.h.interval);
      return;
    }
    if (this.fastLeft > 0) {
      this.fastLeft--;
      this.schedule(Math.min(FAST_RETRY_MS, this.h.interval));
      return;
    }
    this.schedule(Math.min(this.startDelay, START_INTERVAL_MS, this.h.interval));
    this.startDelay *= 2;
  }
}
