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
    const url = h.http;
    return () => httpProbe(url, h.timeout);
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
async function httpProbe(url: string, timeoutMs: number): Promise<ProbeResult> {
  // Loaded by the first http check, not at start-up: https brings tls, which few graphs need.
  const { request } = url.startsWith('https:') ? await import('node:https') : await import('node:http');
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
 * 160 ms, then every 200 ms. With a flat 200 ms, a server up 20 ms after its start (nginx, measured on a 2-core VM)
 * was found healthy only 200 ms later: most of a cold nginx stack's run. A check is one connection or command, and
 * the next is only scheduled once the last has finished, so the ramp adds at most five checks.
 */
const FIRST_RETRY_MS = 10;
const START_INTERVAL_MS = 200;

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
  private everHealthy = false;
  private readonly started = Date.now();
  lastFailure: string | undefined;

  constructor(
    private readonly h: HealthParams,
    private readonly probe: Probe,
    private readonly events: HealthEvents,
  ) {
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
    this.schedule(Math.min(this.startDelay, START_INTERVAL_MS, this.h.interval));
    this.startDelay *= 2;
  }
}
