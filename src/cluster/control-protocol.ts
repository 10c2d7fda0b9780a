import { join } from 'node:path';
import { z } from 'zod';
import { DEFAULT_LIMITS, StoreError, type StoreErrorReason, type StoreLimits } from './store.js';

/**
 * The agent's control socket: what the server (control-server.ts) and the client (remote-store.ts) agree on.
 *
 * HTTP/1.1 over a Unix socket in the state directory, one POST per store operation: `POST /v1/<op>` with a JSON body,
 * answered with `{ "result": ... }` (200) or `{ "error": { reason, message, hint } }` (4xx/5xx), which the client turns
 * back into the StoreError the store threw. `POST /v1/watch` answers with newline-delimited JSON: `{"established":
 * revision}` once the watch is in place, then one `{"batch": WatchBatch}` per line. HTTP rather than a private framing
 * because Node has a hardened parser and client for it, and the HTTP API planned for later can grow from it.
 */

export const CONTROL_SOCKET = 'control.sock';
/** Sent on every answer, so a client can tell our server from some other program listening on the path. */
export const CONTROL_HEADER = 'x-backplane-control';
export const CONTROL_VERSION = '1';

export function controlSocketPath(stateDir: string): string {
  return join(stateDir, CONTROL_SOCKET);
}

/**
 * The largest request body the server reads. The store's own limits apply to the operation inside; JSON escaping
 * can make a value longer on the wire (a `"` becomes `\"`), so there is room for twice the store's request size.
 * A value made mostly of control characters (6 bytes each once escaped) can exceed it while under the store's
 * limit: such a request is refused as too large, with this limit named.
 */
export function maxBodyBytes(limits: StoreLimits = DEFAULT_LIMITS): number {
  return 2 * limits.maxRequestBytes + 64 * 1024;
}

/** Operations the socket serves; leases and elections are not among them (see RemoteStore). */
export const OPS = ['get', 'list', 'put', 'delete', 'cas', 'txn', 'compact', 'health', 'watch'] as const;
export type ControlOp = (typeof OPS)[number];

const key = z.string();
const revision = z.number().int().nonnegative();
const txnOp = z.union([z.object({ put: key, value: z.string() }).strict(), z.object({ delete: key }).strict()]);
const compare = z.union([
  z.object({ key, createRevision: revision }).strict(),
  z.object({ key, modRevision: revision }).strict(),
  z.object({ key, absent: z.literal(true) }).strict(),
]);

/** Request bodies, checked by the server before anything reaches the store. Leases cannot be named: see RemoteStore. */
export const REQUESTS = {
  get: z.object({ key }).strict(),
  list: z.object({ prefix: z.string() }).strict(),
  put: z.object({ key, value: z.string() }).strict(),
  delete: z.object({ key: z.string(), prefix: z.boolean().optional() }).strict(),
  cas: z.object({ key, expectedModRevision: revision, value: z.string().nullable() }).strict(),
  txn: z.object({ ops: z.array(txnOp), if: z.array(compare).optional() }).strict(),
  compact: z.object({ revision }).strict(),
  health: z.object({ timeoutMs: z.number().positive().max(60_000).optional() }).strict(),
  watch: z.object({ prefix: z.string(), fromRevision: z.number().int() }).strict(),
} as const satisfies Record<ControlOp, z.ZodType>;

export interface WireError {
  readonly reason: StoreErrorReason;
  readonly message: string;
  readonly hint?: string;
}

const REASONS: ReadonlySet<string> = new Set<StoreErrorReason>([
  'unreachable',
  'too-large',
  'invalid',
  'locked',
  'disk-full',
  'io',
  'corrupt',
  'closed',
  'aborted',
  'lease-lost',
  'compacted',
  'auth',
  'permission',
  'tls',
  'unsupported',
]);

export function toWire(err: unknown): WireError {
  if (err instanceof StoreError) return { reason: err.reason, message: err.message, ...(err.hint === undefined ? {} : { hint: err.hint }) };
  return { reason: 'io', message: `the agent failed the request: ${err instanceof Error ? err.message : String(err)}` };
}

export function fromWire(raw: unknown, socket: string): StoreError {
  const e = (typeof raw === 'object' && raw !== null ? raw : {}) as Partial<Record<keyof WireError, unknown>>;
  const reason = typeof e.reason === 'string' && REASONS.has(e.reason) ? (e.reason as StoreErrorReason) : 'io';
  const message = typeof e.message === 'string' ? e.message : `the agent's control socket ${socket} answered with an error it did not explain`;
  return new StoreError(reason, message, typeof e.hint === 'string' ? { hint: e.hint } : {});
}

/** HTTP status for an error reason: only for people reading a trace; the client goes by the body. */
export function statusFor(reason: StoreErrorReason): number {
  switch (reason) {
    case 'invalid':
      return 400;
    case 'too-large':
      return 413;
    case 'unsupported':
      return 501;
    case 'unreachable':
    case 'closed':
      return 503;
    default:
      return 500;
  }
}
