import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { keys, segment } from '../cluster/keys.js';
import type { Store } from '../cluster/store.js';
import type { TrustView } from '../cluster/trust.js';
import { unwrapSigned } from '../scheduler/records.js';
import type { Signer } from '../cli/operator.js';
import { ApiError, ROLES, type Caller } from './ops.js';

/**
 * API tokens. A token is `bpt_<id>_<secret>`: the id names its record, `api/tokens/<id>` in the store, which an
 * operator host signed and which holds the token's name, role, namespace, expiry and the SHA-256 of its secret (never
 * the secret: a reader of the store cannot use a token it sees there). Every agent checks a presented token itself:
 * the record's signature against an operator host it believes now, not expired, not revoked, and the secret's hash
 * compared in constant time. Revoking writes a signed tombstone; a deleted record is as good as revoked (fail closed).
 * The secret has 256 bits, so guessing is not an attack; a token is shown once, when it is made.
 */

const TOKEN = /^bpt_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;
/** Verified records are kept this long: a revocation reaches every agent within it, and a burst of requests costs one read. */
const CACHE_MS = 2000;

export const tokenRecordSchema = z.strictObject({
  id: z.string().regex(/^[0-9a-f]{16}$/),
  name: z.string().min(1).max(100),
  role: z.enum(ROLES),
  namespace: z.string().min(1).max(63).optional(),
  createdAt: z.string(),
  createdBy: z.string(),
  expiresAt: z.string().optional(),
  secretHash: z.string().regex(/^[0-9a-f]{64}$/),
});
export type TokenRecord = z.infer<typeof tokenRecordSchema>;
const revokedSchema = z.strictObject({ id: z.string(), revokedAt: z.string(), revokedBy: z.string() });
const valueSchema = z.union([z.strictObject({ token: tokenRecordSchema }), z.strictObject({ revoked: revokedSchema })]);

/** What `tokens.list` shows of a token (never its hash). */
export const tokenInfoSchema = z.object({
  id: z.string(),
  name: z.string(),
  role: z.enum(ROLES),
  namespace: z.string().optional(),
  createdAt: z.string(),
  createdBy: z.string(),
  expiresAt: z.string().optional(),
  state: z.enum(['active', 'expired', 'revoked', 'forged']),
  why: z.string().optional(),
});
export type TokenInfo = z.infer<typeof tokenInfoSchema>;

export function tokenKey(id: string): string {
  return `${keys.apiTokensPrefix}${segment(id)}`;
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

type Opened = { ok: true; value: z.infer<typeof valueSchema>; by: string } | { ok: false; why: string };

/** A token key's value, believed only when an operator host signed it. */
function openToken(view: TrustView, id: string, value: string): Opened {
  const w = unwrapSigned(value);
  if (w === undefined) return { ok: false, why: 'not a signed record' };
  if (!view.mayOperate(w.by)) return { ok: false, why: `signed by ${w.by}, which is not an operator host` };
  const v = view.verify(w.by, tokenKey(id), w.record);
  if (!v.ok) return { ok: false, why: v.why };
  let json: unknown;
  try {
    json = JSON.parse(v.body);
  } catch {
    return { ok: false, why: 'the signed body is not JSON' };
  }
  const r = valueSchema.safeParse(json);
  if (!r.success) return { ok: false, why: `not a token record: ${r.error.issues[0]?.message ?? ''}` };
  const recId = 'token' in r.data ? r.data.token.id : r.data.revoked.id;
  if (recId !== id) return { ok: false, why: `the record is for token ${recId}, not ${id}` };
  return { ok: true, value: r.data, by: w.by };
}

export interface NewToken {
  readonly name: string;
  readonly role: Caller['role'];
  readonly namespace?: string | undefined;
  readonly ttlSeconds?: number | undefined;
}

/** Makes a token: writes its signed record and answers the token text, which is never stored. */
export async function createToken(store: Store, signer: Signer, t: NewToken, now = Date.now()): Promise<{ token: string; info: TokenInfo }> {
  if (t.role === 'admin' && t.namespace !== undefined) {
    throw new ApiError(400, 'an admin token cannot be scoped to a namespace: admins set policy and tokens for the whole cluster', { hint: 'make it a viewer or operator token of the namespace' });
  }
  const id = randomBytes(8).toString('hex');
  const secret = randomBytes(32).toString('base64url');
  const record: TokenRecord = {
    id,
    name: t.name,
    role: t.role,
    ...(t.namespace === undefined ? {} : { namespace: t.namespace }),
    createdAt: new Date(now).toISOString(),
    createdBy: signer.name,
    ...(t.ttlSeconds === undefined ? {} : { expiresAt: new Date(now + t.ttlSeconds * 1000).toISOString() }),
    secretHash: sha256(secret),
  };
  const key = tokenKey(id);
  await store.put(key, signer.sign(key, JSON.stringify({ token: record })));
  return { token: `bpt_${id}_${secret}`, info: infoOf(record, 'active') };
}

export async function revokeToken(store: Store, view: TrustView, signer: Signer, id: string): Promise<TokenInfo> {
  const key = tokenKey(id);
  const cur = await store.get(key);
  const opened = cur === undefined ? undefined : openToken(view, id, cur.value);
  if (opened === undefined || !opened.ok || !('token' in opened.value)) {
    throw new ApiError(404, `no token ${id}${opened !== undefined && opened.ok ? ' (already revoked)' : ''}`, { hint: 'see backplane token list' });
  }
  const body = JSON.stringify({ revoked: { id, revokedAt: new Date().toISOString(), revokedBy: signer.name } });
  await store.put(key, signer.sign(key, body));
  return infoOf(opened.value.token, 'revoked');
}

function infoOf(r: TokenRecord, state: TokenInfo['state'], why?: string): TokenInfo {
  return {
    id: r.id,
    name: r.name,
    role: r.role,
    ...(r.namespace === undefined ? {} : { namespace: r.namespace }),
    createdAt: r.createdAt,
    createdBy: r.createdBy,
    ...(r.expiresAt === undefined ? {} : { expiresAt: r.expiresAt }),
    state,
    ...(why === undefined ? {} : { why }),
  };
}

export async function listTokens(store: Store, view: TrustView, now = Date.now()): Promise<TokenInfo[]> {
  const { kvs } = await store.list(keys.apiTokensPrefix);
  const out: TokenInfo[] = [];
  for (const kv of kvs) {
    const id = kv.key.slice(keys.apiTokensPrefix.length);
    const o = openToken(view, id, kv.value);
    if (!o.ok) {
      out.push({ id, name: '?', role: 'viewer', createdAt: '?', createdBy: '?', state: 'forged', why: o.why });
      continue;
    }
    if ('revoked' in o.value) {
      out.push({ id, name: '?', role: 'viewer', createdAt: '?', createdBy: o.value.revoked.revokedBy, state: 'revoked', why: `revoked ${o.value.revoked.revokedAt} by ${o.value.revoked.revokedBy}` });
      continue;
    }
    const r = o.value.token;
    out.push(infoOf(r, r.expiresAt !== undefined && Date.parse(r.expiresAt) <= now ? 'expired' : 'active'));
  }
  return out;
}

/** Checks presented tokens; one per agent, shared by its requests. */
export class TokenVerifier {
  private readonly cache = new Map<string, { at: number; opened: Opened | undefined }>();

  constructor(private readonly source: () => Promise<{ store: Store; view: TrustView }>) {}

  /** The caller a bearer token stands for, or ApiError 401 saying why not. */
  async verify(header: string | undefined, now = Date.now()): Promise<Caller> {
    if (header === undefined || header === '') {
      throw new ApiError(401, 'no token: this API needs `Authorization: Bearer <token>`', { hint: 'make one with `backplane token create --name NAME --role viewer` on an operator host' });
    }
    const m = /^Bearer (.+)$/.exec(header);
    const parsed = m === null ? null : TOKEN.exec(m[1] ?? '');
    if (parsed === null) throw new ApiError(401, 'the Authorization header is not `Bearer bpt_<id>_<secret>`');
    const id = parsed[1] ?? '';
    const secret = parsed[2] ?? '';
    const opened = await this.open(id, now);
    if (opened === undefined) throw new ApiError(401, `token ${id} does not exist (it was never made here, or it was deleted)`);
    if (!opened.ok) throw new ApiError(401, `token ${id} is not believed: ${opened.why}`, { hint: 'a token record must be signed by an operator host; make a new token' });
    if ('revoked' in opened.value) throw new ApiError(401, `token ${id} was revoked at ${opened.value.revoked.revokedAt} by ${opened.value.revoked.revokedBy}`);
    const r = opened.value.token;
    const want = Buffer.from(r.secretHash, 'hex');
    const got = Buffer.from(sha256(secret), 'hex');
    if (want.length !== got.length || !timingSafeEqual(want, got)) throw new ApiError(401, `token ${id}: wrong secret`);
    if (r.expiresAt !== undefined && Date.parse(r.expiresAt) <= now) throw new ApiError(401, `token ${id} (${r.name}) expired at ${r.expiresAt}`, { hint: 'make a new one' });
    return { name: r.name, role: r.role, via: 'token', tokenId: id, ...(r.namespace === undefined ? {} : { namespace: r.namespace }) };
  }

  private async open(id: string, now: number): Promise<Opened | undefined> {
    const hit = this.cache.get(id);
    if (hit !== undefined && now - hit.at < CACHE_MS) return hit.opened;
    const { store, view } = await this.source();
    const kv = await store.get(tokenKey(id));
    const opened = kv === undefined ? undefined : openToken(view, id, kv.value);
    if (this.cache.size > 10_000) this.cache.clear();
    this.cache.set(id, { at: now, opened });
    return opened;
  }
}
