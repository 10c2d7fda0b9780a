import { z } from 'zod';
import type { Store } from '../cluster/store.js';
import type { TrustView } from '../cluster/trust.js';
import { BackplaneError, type BackplaneErrorOptions, type ErrorCode } from '../errors.js';
import type { Signer } from '../cli/operator.js';
import type { SchedState } from '../scheduler/state.js';

/**
 * The operator interface's one seam. Everything an operator can do is an op: an entry with its path, the least role
 * that may call it, the input it takes and the output it answers, both as zod schemas. Three callers use the same
 * table: the HTTP server (server.ts: routes, access checks, audit), the CLI (client.ts: over the agent's socket or
 * HTTPS, or directly on a store) and the OpenAPI document (openapi.ts, generated, so it cannot drift from the code).
 */

export const ROLES = ['viewer', 'operator', 'admin'] as const;
export type Role = (typeof ROLES)[number];
const RANK: Readonly<Record<Role, number>> = { viewer: 0, operator: 1, admin: 2 };

/** Does `has` include everything `needs` may do? Each role includes the ones before it. */
export function roleAllows(has: Role, needs: Role): boolean {
  return RANK[has] >= RANK[needs];
}

export interface Caller {
  /** The token's name, or `root@<host>` on the agent's Unix socket, or `cli@<host>` for a direct store. */
  readonly name: string;
  readonly role: Role;
  /** A namespace-scoped token: sees and touches only services of this namespace. */
  readonly namespace?: string;
  readonly via: 'socket' | 'token' | 'direct';
  readonly tokenId?: string;
}

/** An error the API answers with an HTTP status; the CLI shows it like any other error. */
export class ApiError extends BackplaneError {
  readonly status: number;
  /** `code`: the BackplaneError code (the CLI's exit code follows it); default: the one the status stands for. */
  constructor(status: number, message: string, opts: BackplaneErrorOptions & { readonly code?: ErrorCode } = {}) {
    super(opts.code ?? codeFor(status), message, opts);
    this.status = status;
  }
}

function codeFor(status: number): ErrorCode {
  switch (status) {
    case 400:
    case 405:
    case 413:
      return 'E_USAGE';
    case 401:
      return 'E_AUTH';
    case 403:
      return 'E_DENIED';
    case 404:
      return 'E_NOT_FOUND';
    case 409:
      return 'E_CONFLICT';
    case 503:
      return 'E_UNAVAILABLE';
    default:
      return 'E_APPLY';
  }
}

export const errorBody = z.lazy(() => z.object({
  error: z.object({ status: z.number().int(), code: z.string(), message: z.string(), hint: z.string().optional() }),
}));
export type ErrorBody = z.infer<typeof errorBody>;

/** The cluster as this agent (or the CLI, on a direct store) sees it. */
export interface ClusterAccess {
  readonly store: Store;
  /** Whom to believe: the hosts the CA approved, as this host knows them. */
  readonly view: TrustView;
  readonly host: string;
  readState(): Promise<SchedState>;
  /** This host as an operator: signs operator records. Throws (403, with a hint) when this host is not an operator. */
  signer(): Promise<Signer>;
}

/** This agent's own graph, for agent.* ops; absent when the CLI works on a store directly. */
export interface AgentView {
  readonly host: string;
  readonly stateDir: string;
  status(): AgentStatus;
  graph(): AgentGraph;
  /** Subscribes to this agent's resource events; returns the unsubscribe. */
  onEvent(cb: (e: AgentEvent) => void): () => void;
}

export const vertexSchema = z.lazy(() => z.object({
  id: z.string(),
  kind: z.string(),
  name: z.string(),
  state: z.string(),
  error: z.string().optional(),
  blockedBy: z.string().optional(),
  changes: z.number().int(),
  runs: z.number().int(),
  /** When it last changed something (ms since the epoch). */
  lastChange: z.number().optional(),
}));
export const agentGraphSchema = z.lazy(() => z.object({
  host: z.string(),
  vertices: z.array(vertexSchema),
  edges: z.array(z.object({ from: z.string(), to: z.string(), notify: z.boolean() })),
}));
export type AgentGraph = z.infer<typeof agentGraphSchema>;

export const agentStatusSchema = z.lazy(() => z.object({
  host: z.string(),
  version: z.string(),
  pid: z.number().int(),
  startedAt: z.string(),
  graphFile: z.string(),
  noop: z.boolean(),
  settled: z.boolean(),
  resources: z.number().int(),
  byState: z.record(z.string(), z.number().int()),
  failed: z.array(z.object({ id: z.string(), error: z.string().optional() })),
  blocked: z.array(z.object({ id: z.string(), blockedBy: z.string().optional() })),
  repairs: z.array(z.object({ id: z.string(), at: z.number() })),
  cluster: z.object({ connected: z.boolean(), store: z.string().optional(), leader: z.boolean(), services: z.boolean() }),
}));
export type AgentStatus = z.infer<typeof agentStatusSchema>;

export type AgentEvent =
  | { readonly type: 'resource'; readonly host: string; readonly id: string; readonly state: string; readonly prev: string; readonly at: number }
  | { readonly type: 'repair'; readonly host: string; readonly id: string; readonly at: number };

export interface OpContext {
  readonly caller: Caller;
  /** The cluster; throws ApiError 503 when this agent has no store connection (yet). */
  cluster(): Promise<ClusterAccess>;
  readonly agent?: AgentView | undefined;
  readonly signal: AbortSignal;
  /** The agent's state directory (audit log, tokens); undefined in direct CLI mode. */
  readonly stateDir?: string | undefined;
}

export type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';

export interface Op<I = unknown, O = unknown> {
  readonly name: string;
  readonly method: Method;
  /** `/v1/services/{name}`: each `{param}` is taken from the path into the input. */
  readonly path: string;
  readonly role: Role;
  readonly summary: string;
  /** Path params, query (GET/DELETE) or path params + JSON body (POST/PUT), merged into one object. */
  readonly input: z.ZodType<I>;
  readonly output: z.ZodType<O>;
  /** Changes something: audited, refused to viewers. */
  readonly mutates: boolean;
  /**
   * The namespace(s) the call touches, for namespace-scoped tokens. Undefined (or no scope function) means
   * cluster-wide: a scoped token may read it (a list op filters what it answers with `visibleTo`) but not change it.
   */
  readonly scope?: (input: I, ctx: OpContext) => Promise<string | readonly string[] | undefined>;
  /** Input fields never written to the audit log (a token's secret, file contents). */
  readonly redact?: readonly string[];
  run(ctx: OpContext, input: I): Promise<O>;
}

/** Declares an op with its types inferred from its schemas. */
export function defineOp<I, O>(op: Op<I, O>): Op<I, O> {
  return op;
}

/** Erases an op's types for tables of ops of different types (the schemas still check every call). */
export type AnyOp = Op<never, unknown> & { run(ctx: OpContext, input: never): Promise<unknown> };

/** May this caller see something in namespace `ns`? */
export function visibleTo(caller: Caller, ns: string | undefined): boolean {
  return caller.namespace === undefined || (ns ?? 'default') === caller.namespace;
}

/**
 * Whether `caller` may call `op` with `input` (already validated): throws ApiError 403 saying why. The role first,
 * then the namespace of a scoped caller.
 */
export async function authorize<I, O>(op: Op<I, O>, caller: Caller, input: I, ctx: OpContext): Promise<void> {
  if (!roleAllows(caller.role, op.role)) {
    throw new ApiError(403, `${caller.name} has the ${caller.role} role; ${op.name} (${op.summary}) needs the ${op.role} role`, {
      hint: op.role === 'admin' ? 'ask an admin, or use an admin token' : `use a token with the ${op.role} role (backplane token create --role ${op.role})`,
    });
  }
  if (caller.namespace === undefined) return;
  const scope = op.scope === undefined ? undefined : await op.scope(input, ctx);
  if (scope === undefined) {
    if (op.mutates) {
      throw new ApiError(403, `${caller.name} is scoped to namespace ${caller.namespace}; ${op.name} changes the whole cluster, not one namespace`, {
        hint: 'use a token that is not scoped to a namespace',
      });
    }
    return;
  }
  const outside = (typeof scope === 'string' ? [scope] : scope).filter((ns) => ns !== caller.namespace);
  if (outside.length > 0) {
    throw new ApiError(403, `${caller.name} is scoped to namespace ${caller.namespace}; this ${op.mutates ? 'change' : 'read'} touches namespace ${[...new Set(outside)].join(', ')}`, {
      hint: `use a token of namespace ${outside[0] ?? ''} or one not scoped to a namespace`,
    });
  }
}

/** Parses an op's input, answering 400 with every problem and where it is. */
export function parseInput<I, O>(op: Op<I, O>, raw: unknown): I {
  const r = op.input.safeParse(raw);
  if (r.success) return r.data;
  const problems = r.error.issues.map((i) => `${i.path.length === 0 ? 'input' : i.path.join('.')}: ${i.message}`);
  throw new ApiError(400, `${op.name}: ${problems.join('; ')}`, { hint: `see ${op.method} ${op.path} in /openapi.json` });
}

/** The input with secrets and bulky fields replaced, for the audit log. */
export function redacted(op: { readonly redact?: readonly string[] }, input: unknown): unknown {
  if (op.redact === undefined || input === null || typeof input !== 'object') return input;
  const out: Record<string, unknown> = { ...(input as Record<string, unknown>) };
  for (const k of op.redact) if (k in out) out[k] = '(redacted)';
  return out;
}

/**
 * Query parameters arrive as strings: these accept a string or the typed value (a direct CLI call passes the value),
 * so one schema serves both. `z.coerce.boolean()` would read "false" as true.
 */
export const q = {
  bool: () => z.union([z.boolean(), z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1')]),
  int: (min = 0, max = Number.MAX_SAFE_INTEGER) =>
    z.union([z.number(), z.string().regex(/^-?\d+$/, 'a whole number').transform(Number)]).pipe(z.number().int().min(min).max(max)),
};

/** `/v1/services/{name}` with `{name: 'web'}` -> `/v1/services/web`, and the input fields the path did not take. */
export function fillPath(path: string, input: Record<string, unknown>): { path: string; rest: Record<string, unknown> } {
  const rest = { ...input };
  const filled = path.replace(/\{([a-zA-Z]+)\}/g, (_m, name: string) => {
    const v = rest[name];
    delete rest[name];
    if (typeof v !== 'string' && typeof v !== 'number') throw new ApiError(400, `missing ${name}`);
    return encodeURIComponent(String(v));
  });
  return { path: filled, rest };
}

/** Matches a request path against an op's path template: the params, or undefined. */
export function matchPath(template: string, path: string): Record<string, string> | undefined {
  const t = template.split('/');
  const p = path.split('/');
  if (t.length !== p.length) return undefined;
  const params: Record<string, string> = {};
  for (let i = 0; i < t.length; i++) {
    const seg = t[i] ?? '';
    const got = p[i] ?? '';
    const m = /^\{([a-zA-Z]+)\}$/.exec(seg);
    if (m !== null) {
      if (got === '') return undefined;
      try {
        params[m[1] ?? ''] = decodeURIComponent(got);
      } catch {
        return undefined;
      }
    } else if (seg !== got) return undefined;
  }
  return params;
}
