import { connect } from 'node:net';
import { z } from 'zod';
import type { ResourceId } from '../graph/ids.js';
import { duration } from '../graph/schema-util.js';
import { formatDuration } from '../util/duration.js';
import { aborted, deadline, describeNetError, probeResource, quote, type ProbeResult } from './probe.js';
import { defineKind, type Resource } from './types.js';
import { once } from '../util/once.js';

/**
 * Converged while a TCP port accepts connections — and, with send/expect, answers as expected (a Redis PING, an
 * SMTP banner). Like `http`, a gate for dependents rather than something to change.
 */

const MIN_INTERVAL_MS = 100;
/** An expected answer comes in the first bytes; a server that streams must not fill the agent's memory. */
const MAX_READ_BYTES = 64 * 1024;
/** `host:port` or `[v6]:port`. */
const ADDRESS = /^(?:\[([^\]]+)\]|([^\s:[\]]+)):(\d{1,5})$/;

const port = () => z.number().int().min(1).max(65535);

/** The tcp kind's parameters, built on first use: a graph without a tcp does not pay for them at start-up. */
export const tcpSchema = once(() =>
  z
    .strictObject({
      address: z
        .string()
        .regex(ADDRESS, 'must be host:port, e.g. 127.0.0.1:6379 or [::1]:6379')
        .refine((a) => validPort(a), { message: 'the port must be 1-65535' })
        .optional()
        .meta({ description: 'host:port to connect to; defaults to the name when the name is host:port' }),
      host: z.string().min(1).optional().meta({ description: 'host name or address (with port); default 127.0.0.1' }),
      port: port().optional().meta({ description: 'port (with host); takes precedence over address' }),
      send: z.string().min(1).optional().meta({ description: 'text to send once connected, e.g. "PING\\r\\n"' }),
      expect: z.string().min(1).optional().meta({ description: 'the first bytes the server sends must contain this text' }),
      timeout: duration()
        .refine((ms) => ms > 0, { message: 'must be more than 0' })
        .default(2000)
        .meta({ description: 'how long connecting (and the expected answer) may take' }),
      interval: duration()
        .refine((ms) => ms >= MIN_INTERVAL_MS, { message: `must be at least ${MIN_INTERVAL_MS}ms` })
        .default(5000)
        .meta({ description: 'how often the watch probes to notice the port going down or coming up' }),
    })
    .superRefine((p, ctx) => {
      if (p.port === undefined && p.address === undefined)
        ctx.addIssue({ code: 'custom', path: [], message: 'give address (host:port), or port (and host), or name the resource host:port' });
      if (p.host !== undefined && p.port === undefined)
        ctx.addIssue({ code: 'custom', path: ['host'], message: 'host needs a port' });
    }),
);

export type TcpSchema = ReturnType<typeof tcpSchema>;
export type TcpParams = z.output<TcpSchema>;

export const tcpKind = defineKind<TcpParams>({
  kind: 'tcp',
  description: 'converged while a TCP port accepts connections (and answers send/expect); dependents wait for it',
  get schema() {
    return tcpSchema();
  },
  refreshable: false,
  defaults: (name) => (ADDRESS.test(name) && validPort(name) ? { address: name } : {}),
  // What another host's export may choose here only when the collect rule takes it (see CollectPolicy).
  collect: {
    power: {
      address: 'which address this host connects to (services only it can reach)',
      host: 'which host this host connects to',
      port: 'which port this host connects to',
      send: 'what this host sends there',
    },
    fromName: ['address'],
  },
  create: (id, p) => createTcp(id, p),
});

function validPort(address: string): boolean {
  const m = ADDRESS.exec(address);
  const n = Number(m?.[3]);
  return n >= 1 && n <= 65535;
}

function target(p: TcpParams): { host: string; port: number } {
  if (p.port !== undefined) return { host: p.host ?? '127.0.0.1', port: p.port };
  // The schema guarantees an address when there is no port.
  const m = ADDRESS.exec(p.address ?? '');
  return { host: m?.[1] ?? m?.[2] ?? '127.0.0.1', port: Number(m?.[3]) };
}

function createTcp(id: ResourceId, p: TcpParams): Resource {
  const { host, port } = target(p);
  const where = `${host.includes(':') ? `[${host}]` : host}:${port}`;

  function probe(signal: AbortSignal): Promise<ProbeResult> {
    const d = deadline(signal, p.timeout);
    return new Promise<ProbeResult>((resolve, reject) => {
      let connected = false;
      let received = Buffer.alloc(0);
      let settled = false;
      const sock = connect({ host, port });
      const finish = (r: ProbeResult | Error): void => {
        if (settled) return;
        settled = true;
        d.signal.removeEventListener('abort', onAbort);
        d.dispose();
        sock.destroy();
        if (r instanceof Error) reject(r);
        else resolve(r);
      };
      const got = (): string => quote(received.toString('utf8'));
      const onAbort = (): void => {
        if (!d.timedOut()) return finish(aborted(id));
        const within = formatDuration(p.timeout);
        if (!connected) return finish({ up: false, detail: `${where} did not accept a connection within ${within}` });
        finish({
          up: false,
          detail: `${where} accepted the connection but did not send ${quote(p.expect ?? '')} within ${within}${received.length > 0 ? ` (got ${got()})` : ''}`,
        });
      };
      d.signal.addEventListener('abort', onAbort, { once: true });
      if (d.signal.aborted) return onAbort();
      sock.once('connect', () => {
        connected = true;
        if (p.send !== undefined) sock.write(p.send);
        if (p.expect === undefined) finish({ up: true, detail: `${where} accepted a connection` });
      });
      sock.on('data', (chunk: Buffer) => {
        if (p.expect === undefined) return;
        received = Buffer.concat([received, chunk]);
        if (received.includes(p.expect)) return finish({ up: true, detail: `${where} answered ${quote(p.expect)}` });
        if (received.length >= MAX_READ_BYTES)
          finish({ up: false, detail: `${where} sent ${received.length} bytes without ${quote(p.expect)} (it starts ${got()})` });
      });
      sock.once('end', () => {
        finish({ up: false, detail: `${where} closed the connection without sending ${quote(p.expect ?? '')}${received.length > 0 ? ` (got ${got()})` : ''}` });
      });
      sock.once('error', (err) => {
        const e = describeNetError(err, host);
        finish({ up: false, detail: `connect to ${where} failed: ${e.text}`, ...(e.hint === undefined ? {} : { hint: e.hint }) });
      });
    });
  }

  return probeResource(id, { intervalMs: p.interval, probe });
}
