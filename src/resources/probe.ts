import { setTimeout as sleep } from 'node:timers/promises';
import { BackplaneError } from '../errors.js';
import type { ResourceId } from '../graph/ids.js';
import type { CheckApplyContext, CheckResult, Resource, WatchContext } from './types.js';

/**
 * What `http` and `tcp` share: a resource that is converged while something outside answers as expected. It
 * changes nothing, so there is nothing to apply — a failed probe is an error the engine's retry/delay metaparams
 * act on, and dependents wait for it like for any dependency that has not converged.
 */

export interface ProbeResult {
  readonly up: boolean;
  /** One line for a person: what was asked and what came back, e.g. `GET http://x/ answered 503 (expected 200)`. */
  readonly detail: string;
  readonly hint?: string;
}

export interface ProbeOptions {
  /** How often the watch probes. */
  readonly intervalMs: number;
  /** Probe once; resolves with the outcome (never rejects for a failed probe), rejects only when `signal` aborts. */
  readonly probe: (signal: AbortSignal) => Promise<ProbeResult>;
  /**
   * When set, noop mode does not probe but reports this instead: a probe that is not read-only (an HTTP POST)
   * must not run when nothing may change.
   */
  readonly noopSkip?: string | undefined;
}

const DOWN_HINT = 'start the service, or let dependents wait for it with meta: {retry: -1, delay: 1s}';

export function probeResource(id: ResourceId, opts: ProbeOptions): Resource {
  /** The last answer seen by a check or by the watch: the watch reports a flip relative to either. */
  let last: boolean | undefined;
  return {
    async checkApply({ apply, signal, log }: CheckApplyContext): Promise<CheckResult> {
      if (signal.aborted) throw aborted(id);
      if (!apply && opts.noopSkip !== undefined) return { converged: false, changes: [opts.noopSkip] };
      const r = await opts.probe(signal);
      last = r.up;
      if (r.up) {
        log.debug(r.detail);
        return { converged: true, changes: [] };
      }
      // A noop run shows what would happen downstream too; failing here would block every dependent's report.
      if (!apply) return { converged: false, changes: [`not ready: ${r.detail}`] };
      throw new BackplaneError('E_APPLY', r.detail, { resource: id, hint: r.hint ?? DOWN_HINT, retryable: true });
    },
    /**
     * Polls, because there is nothing to subscribe to: whether a remote endpoint answers is only known by asking.
     * Only a flip is an event — dependents re-run when it comes up, the failure is reported when it goes down —
     * so a steady state costs one probe per interval and no engine work.
     */
    async watch({ signal, ready, changed, log }: WatchContext): Promise<void> {
      ready();
      while (!signal.aborted) {
        try {
          await sleep(opts.intervalMs, undefined, { signal });
        } catch {
          return;
        }
        let r: ProbeResult;
        try {
          r = await opts.probe(signal);
        } catch (err) {
          if (signal.aborted) return;
          throw err;
        }
        if (r.up === last) continue;
        const before = last;
        last = r.up;
        log.debug(`${r.up ? 'up' : 'down'}: ${r.detail}`);
        // Before any check there is nothing to flip from; an event then is spurious and harmless.
        changed(before === undefined ? `probed: ${r.detail}` : r.up ? `came up: ${r.detail}` : `went down: ${r.detail}`);
      }
    },
  };
}

/**
 * A signal that aborts at a deadline or when `parent` does. Not AbortSignal.any: combined with a long-lived signal
 * it leaks one dependent per call in Node (nodejs/node#55351), and a watch probes every few seconds for months.
 */
export interface Deadline {
  readonly signal: AbortSignal;
  /** true when the deadline (not the parent) aborted it. */
  timedOut(): boolean;
  dispose(): void;
}

export function deadline(parent: AbortSignal, ms: number): Deadline {
  const ac = new AbortController();
  let timedOut = false;
  const onAbort = (): void => ac.abort(parent.reason);
  parent.addEventListener('abort', onAbort, { once: true });
  const timer = setTimeout(() => {
    timedOut = true;
    ac.abort(new Error(`no answer within ${ms} ms`));
  }, ms);
  if (parent.aborted) onAbort();
  return {
    signal: ac.signal,
    timedOut: () => timedOut && !parent.aborted,
    dispose: () => {
      clearTimeout(timer);
      parent.removeEventListener('abort', onAbort);
    },
  };
}

/** Errno-style code of a network error, also when wrapped (fetch puts it in `cause`). */
export function netErrorCode(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; typeof e === 'object' && e !== null && depth < 4; depth++) {
    const code: unknown = (e as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

/** What a network error means, in words, and what to do about it. */
export function describeNetError(err: unknown, host: string): { readonly text: string; readonly hint?: string } {
  const code = netErrorCode(err);
  switch (code) {
    case 'ECONNREFUSED':
      return { text: 'connection refused', hint: `nothing listens there: ${DOWN_HINT}` };
    case 'ECONNRESET':
      return { text: 'connection reset by the server' };
    case 'EPIPE':
      return { text: 'the server closed the connection while we were sending' };
    case 'ENOTFOUND':
    case 'EAI_NONAME':
      return { text: `host "${host}" not found`, hint: 'check the host name, or /etc/hosts and DNS on this machine' };
    case 'EAI_AGAIN':
      return { text: `cannot resolve "${host}" right now (DNS did not answer)` };
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return { text: 'no route to the host', hint: 'check the address, routes and firewall of this machine' };
    case 'ETIMEDOUT':
      return { text: 'connection timed out' };
    default:
      break;
  }
  const msg = innermostMessage(err);
  if (code !== undefined && /CERT|SSL|TLS|SELF_SIGNED|UNABLE_TO_VERIFY/.test(code))
    return {
      text: `TLS certificate not accepted: ${msg}`,
      hint: 'the certificate must chain to a CA Node trusts; for a private CA set NODE_EXTRA_CA_CERTS for the agent',
    };
  return { text: code === undefined || msg.includes(code) ? msg : `${msg} (${code})` };
}

function innermostMessage(err: unknown): string {
  let msg = err instanceof Error ? err.message : String(err);
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 4; depth++) {
    msg = e.message;
    e = e.cause;
  }
  return msg;
}

/** Text from the network, shown quoted and bounded in one log line. */
export function quote(text: string, max = 80): string {
  const cut = text.length > max ? `${text.slice(0, max)}…` : text;
  return JSON.stringify(cut);
}

export function aborted(id: ResourceId): BackplaneError {
  return new BackplaneError('E_ABORTED', 'stopped before finishing: the agent is shutting down or the graph was replaced', { resource: id });
}
