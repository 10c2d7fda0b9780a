import { z } from 'zod';
import { AuditLog, auditEntrySchema } from '../audit.js';
import { ApiError, ROLES, defineOp, q } from '../ops.js';
import { createToken, listTokens, revokeToken, tokenInfoSchema } from '../tokens.js';

const NAMESPACE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export const whoami = defineOp({
  name: 'auth.whoami',
  method: 'GET',
  path: '/v1/whoami',
  role: 'viewer',
  summary: 'Show who the caller is: its name, role and namespace',
  input: z.object({}),
  output: z.object({ name: z.string(), role: z.enum(ROLES), namespace: z.string().optional(), via: z.string() }),
  mutates: false,
  run: async (ctx) => ({
    name: ctx.caller.name,
    role: ctx.caller.role,
    via: ctx.caller.via,
    ...(ctx.caller.namespace === undefined ? {} : { namespace: ctx.caller.namespace }),
  }),
});

export const tokensList = defineOp({
  name: 'tokens.list',
  method: 'GET',
  path: '/v1/tokens',
  role: 'admin',
  summary: 'List API tokens (never their secrets)',
  input: z.object({}),
  output: z.array(tokenInfoSchema),
  mutates: false,
  run: async (ctx) => {
    const c = await ctx.cluster();
    return listTokens(c.store, c.view);
  },
});

export const tokensCreate = defineOp({
  name: 'tokens.create',
  method: 'POST',
  path: '/v1/tokens',
  role: 'admin',
  summary: 'Make an API token; its text is answered once and never stored',
  input: z.strictObject({
    name: z.string().min(1).max(100).regex(/^[\w.@-]+$/, 'letters, digits, _ . @ -'),
    role: z.enum(ROLES),
    namespace: z.string().regex(NAMESPACE, 'a namespace name: a-z, 0-9 and -, at most 63').optional(),
    ttlSeconds: z.number().int().min(1).max(10 * 365 * 86400).optional(),
  }),
  output: z.object({ token: z.string(), info: tokenInfoSchema }),
  mutates: true,
  run: async (ctx, input) => {
    const c = await ctx.cluster();
    return createToken(c.store, await c.signer(), input);
  },
});

export const tokensRevoke = defineOp({
  name: 'tokens.revoke',
  method: 'DELETE',
  path: '/v1/tokens/{id}',
  role: 'admin',
  summary: 'Revoke an API token: every agent refuses it within seconds',
  input: z.object({ id: z.string().regex(/^[0-9a-f]{16}$/, 'a token id: 16 hex digits (see backplane token list)') }),
  output: tokenInfoSchema,
  mutates: true,
  run: async (ctx, input) => {
    const c = await ctx.cluster();
    return revokeToken(c.store, c.view, await c.signer(), input.id);
  },
});

export const auditList = defineOp({
  name: 'audit.list',
  method: 'GET',
  path: '/v1/audit',
  role: 'admin',
  summary: "Read this agent's audit log: every change made through its API, who made it and when",
  input: z.object({ limit: q.int(1, 100_000).optional() }),
  output: z.array(auditEntrySchema),
  mutates: false,
  run: async (ctx, input) => {
    if (ctx.stateDir === undefined) throw new ApiError(400, 'the audit log is kept by an agent', { hint: "ask the agent's API (its --state-dir)" });
    return new AuditLog(ctx.stateDir).read(input.limit ?? 100);
  },
});
