import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { BackplaneError } from '../errors.js';
import { fingerprint, isPublicKey, loadOrCreateKey, readKeyFile, readPrivateFile, signText, trustDir, verifyText, writePrivateFile, type KeyPair } from './identity.js';
import { keys } from './keys.js';
import type { Store } from './store.js';

/**
 * Who may speak in the cluster. The cluster has an authority (CA): a key pair made by `backplane cluster init` (or,
 * on the embedded store, by the one agent itself). The CA signs one document, `trust/hosts`: every host it approved
 * or revoked, with its public key, under a serial number that only grows. Every record a host writes (its membership,
 * its exports) is a signed envelope; a reader believes it only when the host it claims to come from is approved in
 * the newest hosts document it has seen and the signature verifies against that host's key.
 *
 * The CA's public key is never learned from the store (a writer of the store could put its own there): a host pins it
 * from its join token's fingerprint, from --ca-fingerprint, or from its own CA key, and keeps it in its state dir.
 * The newest hosts document is kept there too, so a store writer cannot roll back to an older one (un-revoking a host)
 * and an agent restarted while the store is down still knows whom to believe.
 */

export type HostState = 'approved' | 'revoked';

export interface HostEntry {
  readonly publicKey: string;
  readonly state: HostState;
  /** When it was approved or revoked (ISO). */
  readonly since: string;
  /**
   * May this host's key sign operator records (service specs, drains)? A spec says what every host runs as root, so
   * being an approved host is not enough: the CA's own host is an operator, others only when approved --operator.
   */
  readonly operator?: boolean;
}

export interface HostsDoc {
  readonly serial: number;
  readonly issuedAt: string;
  readonly hosts: Readonly<Record<string, HostEntry>>;
}

/** A signed value in the store: `body` is the exact JSON text that was signed, so no re-serialisation can break it. */
interface Envelope {
  readonly v: 1;
  readonly seq: number;
  readonly body: string;
  readonly sig: string;
}

const RECORD = 'record';
const HOSTS = 'hosts';

export function sealRecord(pair: KeyPair, key: string, seq: number, body: string): string {
  return JSON.stringify({ v: 1, seq, body, sig: signText(pair, RECORD, key, `${seq}\n${body}`) } satisfies Envelope);
}

function parseEnvelope(value: string): Envelope | string {
  let v: unknown;
  try {
    v = JSON.parse(value);
  } catch {
    return 'value is not JSON';
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return 'value is not a signed record';
  const e = v as Record<string, unknown>;
  if (e['v'] !== 1 || typeof e['body'] !== 'string' || typeof e['sig'] !== 'string' || typeof e['seq'] !== 'number' || !Number.isSafeInteger(e['seq'])) {
    return 'value is not a signed record (unsigned data is never applied)';
  }
  return { v: 1, seq: e['seq'], body: e['body'], sig: e['sig'] };
}

/** The body of a record at `key` if `publicKey` signed it (a host reading back its own records), else undefined. */
export function openRecord(publicKey: string, key: string, value: string): string | undefined {
  const env = parseEnvelope(value);
  if (typeof env === 'string') return undefined;
  return verifyText(publicKey, RECORD, key, `${env.seq}\n${env.body}`, env.sig) ? env.body : undefined;
}

/** Seals the hosts document with the CA key. */
export function sealHosts(ca: KeyPair, doc: HostsDoc): string {
  const body = JSON.stringify(doc);
  return JSON.stringify({ v: 1, seq: doc.serial, body, sig: signText(ca, HOSTS, keys.trustHosts, `${doc.serial}\n${body}`) } satisfies Envelope);
}

/** The hosts document in `value` if the CA signed it, else why not. */
export function openHosts(caPublicKey: string, value: string): HostsDoc | string {
  const env = parseEnvelope(value);
  if (typeof env === 'string') return env;
  if (!verifyText(caPublicKey, HOSTS, keys.trustHosts, `${env.seq}\n${env.body}`, env.sig)) return 'the signature is not the cluster CA\'s';
  let doc: unknown;
  try {
    doc = JSON.parse(env.body);
  } catch {
    return 'the signed body is not JSON';
  }
  if (!isHostsDoc(doc) || doc.serial !== env.seq) return 'the signed body is not a hosts document';
  return doc;
}

function isHostsDoc(v: unknown): v is HostsDoc {
  if (v === null || typeof v !== 'object') return false;
  const d = v as Record<string, unknown>;
  const hosts = d['hosts'];
  if (typeof d['serial'] !== 'number' || typeof d['issuedAt'] !== 'string' || hosts === null || typeof hosts !== 'object' || Array.isArray(hosts)) return false;
  return Object.values(hosts as Record<string, unknown>).every((h) => {
    if (h === null || typeof h !== 'object') return false;
    const e = h as Record<string, unknown>;
    return isPublicKey(e['publicKey']) && (e['state'] === 'approved' || e['state'] === 'revoked') && typeof e['since'] === 'string';
  });
}

export type Verified = { readonly ok: true; readonly body: string; readonly seq: number } | { readonly ok: false; readonly why: string; readonly hostLevel: boolean };

/**
 * The reader's side: the pinned CA key and the newest hosts document. `verify` is what every value read from the
 * store under a host's name goes through before anything else looks at it.
 */
export class TrustView {
  private doc: HostsDoc = { serial: 0, issuedAt: '', hosts: {} };
  private docValue: string | undefined;
  /**
   * Store revision of the last list this process wrote (the CA's holder): the watch still delivers the lists written
   * before it, which are older but no rollback.
   */
  writtenRevision = 0;

  constructor(readonly caPublicKey: string) {}

  get serial(): number {
    return this.doc.serial;
  }

  get hosts(): HostsDoc {
    return this.doc;
  }

  /** The sealed value of the current document (to cache it, or to put it back in the store). */
  get sealed(): string | undefined {
    return this.docValue;
  }

  /**
   * Takes a hosts document read from the store or the cache. Returns 'newer' when adopted, 'same' when it is the one
   * held, or why it was refused: not signed by the CA, or older than one already seen (a rollback).
   */
  adopt(value: string): string {
    const doc = openHosts(this.caPublicKey, value);
    if (typeof doc === 'string') return doc;
    if (doc.serial < this.doc.serial) return `it is serial ${doc.serial}, older than serial ${this.doc.serial} already seen (a rollback)`;
    if (doc.serial === this.doc.serial) {
      if (this.docValue === undefined || JSON.stringify(doc) === JSON.stringify(this.doc)) {
        this.docValue ??= value;
        return 'same';
      }
      return `it differs from the document with the same serial ${doc.serial} already seen`;
    }
    this.doc = doc;
    this.docValue = value;
    return 'newer';
  }

  state(host: string): HostState | 'unknown' {
    return Object.hasOwn(this.doc.hosts, host) ? (this.doc.hosts[host]?.state ?? 'unknown') : 'unknown';
  }

  /** The approved key of `host`, or undefined. */
  keyOf(host: string): string | undefined {
    const e = Object.hasOwn(this.doc.hosts, host) ? this.doc.hosts[host] : undefined;
    return e?.state === 'approved' ? e.publicKey : undefined;
  }

  /** Whether `host` is approved and may sign operator records (see HostEntry.operator). */
  mayOperate(host: string): boolean {
    const e = Object.hasOwn(this.doc.hosts, host) ? this.doc.hosts[host] : undefined;
    return e?.state === 'approved' && e.operator === true;
  }

  /** Checks that `value` at `key` was signed by `host` and that `host` is approved now. */
  verify(host: string, key: string, value: string): Verified {
    const state = this.state(host);
    if (state === 'revoked') return { ok: false, why: `host "${host}" is revoked`, hostLevel: true };
    const publicKey = this.keyOf(host);
    if (publicKey === undefined) return { ok: false, why: `host "${host}" is not approved (run \`backplane hosts approve ${host}\` if it should be)`, hostLevel: true };
    const env = parseEnvelope(value);
    if (typeof env === 'string') return { ok: false, why: env, hostLevel: false };
    if (!verifyText(publicKey, RECORD, key, `${env.seq}\n${env.body}`, env.sig)) {
      return { ok: false, why: `the signature is not ${host}'s (forged, or moved from another key)`, hostLevel: false };
    }
    return { ok: true, body: env.body, seq: env.seq };
  }
}

/** A new hosts document: `doc` with `host` set to `entry`, issued now, one serial later. */
export function withHost(doc: HostsDoc, host: string, entry: HostEntry): HostsDoc {
  return { serial: doc.serial + 1, issuedAt: new Date().toISOString(), hosts: { ...doc.hosts, [host]: entry } };
}

// ---------------------------------------------------------------------------------------------------------------
// Join tokens

/**
 * A join token is `bp1.<id>.<secret>.<CA fingerprint>` (like kubeadm's token plus its CA hash, in one string). The
 * secret never enters the store: the joining host proves it holds it with an HMAC over its name and public key, which
 * the CA's holder checks before it approves. The fingerprint lets the joining host pin the CA's key without trusting
 * the store.
 */
export interface JoinToken {
  readonly id: string;
  readonly secret: string;
  readonly caFingerprint: string;
}

const TOKEN = /^bp1\.([0-9a-f]{8})\.([0-9a-f]{32})\.([A-Za-z0-9_-]{43})$/;

export function parseToken(text: string): JoinToken {
  const m = TOKEN.exec(text.trim());
  if (m?.[1] === undefined || m[2] === undefined || m[3] === undefined) {
    throw new BackplaneError('E_USAGE', 'the join token is not valid', { hint: 'copy it whole from `backplane hosts token` on the host that holds the cluster CA' });
  }
  return { id: m[1], secret: m[2], caFingerprint: `sha256:${m[3]}` };
}

export function formatToken(t: JoinToken): string {
  return `bp1.${t.id}.${t.secret}.${t.caFingerprint.slice('sha256:'.length)}`;
}

export function joinMac(secret: string, host: string, publicKey: string): string {
  return createHmac('sha256', Buffer.from(secret, 'hex')).update(`backplane-join\n${host}\n${publicKey}`).digest('hex');
}

/** What a host asks under `joins/<host>`: unsigned by the CA, so only a hint until the CA's holder checks it. */
export interface JoinRequest {
  readonly host: string;
  readonly publicKey: string;
  readonly token?: string;
  readonly mac?: string;
  readonly at: string;
}

export function parseJoinRequest(value: string): JoinRequest | undefined {
  try {
    const v = JSON.parse(value) as Record<string, unknown>;
    if (typeof v['host'] !== 'string' || !isPublicKey(v['publicKey']) || typeof v['at'] !== 'string') return undefined;
    return {
      host: v['host'],
      publicKey: v['publicKey'],
      at: v['at'],
      ...(typeof v['token'] === 'string' ? { token: v['token'] } : {}),
      ...(typeof v['mac'] === 'string' ? { mac: v['mac'] } : {}),
    };
  } catch {
    return undefined;
  }
}

interface TokenRecord {
  readonly id: string;
  readonly secret: string;
  readonly expires: string;
  usesLeft: number;
  /** "<host> <public key>" of every join that took a use of this token. */
  redeemedBy?: string[];
}

// ---------------------------------------------------------------------------------------------------------------
// The files in <state dir>/trust

/**
 * This host's trust material on disk: its own key, the pinned CA key, the newest hosts document, and — on the host
 * that holds the CA — the CA key and the join tokens it handed out.
 */
export class TrustFiles {
  private constructor(
    private readonly root: string,
    readonly dir: string,
  ) {}

  /**
   * `<state dir>/trust/host.key` is the host's one identity; the rest is kept per store (`embedded`, or
   * `etcd-<cluster>`), so a host that ran on its embedded store and later joins an etcd cluster does not take its
   * private CA for the cluster's.
   */
  static async open(stateDir: string, scope: string): Promise<TrustFiles> {
    const root = await trustDir(stateDir);
    const dir = join(root, scope);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    return new TrustFiles(root, dir);
  }

  hostKey(): Promise<KeyPair> {
    return loadOrCreateKey(join(this.root, 'host.key'));
  }

  caKey(): Promise<KeyPair | undefined> {
    return readKeyFile(join(this.dir, 'ca.key'));
  }

  createCaKey(): Promise<KeyPair> {
    return loadOrCreateKey(join(this.dir, 'ca.key'));
  }

  /** The CA public key this host believes in, if it has pinned one. */
  async pinnedCa(): Promise<string | undefined> {
    const text = await readPrivateFile(join(this.dir, 'ca.pub'));
    const key = text?.trim();
    if (key === undefined) return undefined;
    if (!isPublicKey(key)) throw new BackplaneError('E_IO', `${join(this.dir, 'ca.pub')} does not hold a public key`, { hint: 'remove it and join again with a token' });
    return key;
  }

  async pinCa(publicKey: string): Promise<void> {
    await writePrivateFile(join(this.dir, 'ca.pub'), `${publicKey}\n`);
  }

  /** The newest sealed hosts document seen (undefined before the first). */
  cachedHosts(): Promise<string | undefined> {
    return readPrivateFile(join(this.dir, 'hosts.json'));
  }

  async saveHosts(sealed: string): Promise<void> {
    await writePrivateFile(join(this.dir, 'hosts.json'), sealed);
  }

  async createToken(ttlMs: number, uses: number): Promise<{ token: string; expires: string }> {
    const ca = await this.caKey();
    if (ca === undefined) throw notCaHolder(this.dir);
    const tokens = await this.tokens();
    const t: JoinToken = { id: randomBytes(4).toString('hex'), secret: randomBytes(16).toString('hex'), caFingerprint: fingerprint(ca.publicKey) };
    const expires = new Date(Date.now() + ttlMs).toISOString();
    const live = tokens.filter((x) => Date.parse(x.expires) > Date.now() && x.usesLeft > 0);
    live.push({ id: t.id, secret: t.secret, expires, usesLeft: uses });
    await writePrivateFile(join(this.dir, 'tokens.json'), JSON.stringify(live, null, 2));
    return { token: formatToken(t), expires };
  }

  /**
   * Checks a join request against the tokens handed out; on success uses the token up once. Returns why not
   * otherwise. The MAC comparison is constant-time.
   */
  async redeem(req: JoinRequest): Promise<true | string> {
    return (await this.redeemTokens([req], false))[0] ?? 'no verdict';
  }

  /**
   * redeem() for the join requests the CA's holder handles together, in order, with one read and (when any token was
   * used) one write of the tokens file: a token with one use left approves the first of two hosts and not the second.
   * A request from a host and key that already took a use of the same token is the same join asked again (its
   * approval could not be written: the store went away) and takes no second use; its proof is checked all the same.
   */
  redeemAll(reqs: readonly JoinRequest[]): Promise<(true | string)[]> {
    return this.redeemTokens(reqs, true);
  }

  private async redeemTokens(reqs: readonly JoinRequest[], repeatIsFree: boolean): Promise<(true | string)[]> {
    if (reqs.length === 0) return [];
    const tokens = await this.tokens();
    let used = false;
    const out = reqs.map((req): true | string => {
      if (req.token === undefined || req.mac === undefined) return 'it carries no join token';
      const t = tokens.find((x) => x.id === req.token);
      if (t === undefined) return `token ${req.token} is unknown here`;
      if (Date.parse(t.expires) <= Date.now()) return `token ${req.token} expired at ${t.expires}`;
      const who = `${req.host} ${req.publicKey}`;
      const repeat = repeatIsFree && t.redeemedBy?.includes(who) === true;
      if (!repeat && t.usesLeft <= 0) return `token ${req.token} is used up`;
      const want = Buffer.from(joinMac(t.secret, req.host, req.publicKey), 'hex');
      const got = Buffer.from(req.mac, 'hex');
      if (got.length !== want.length || !timingSafeEqual(got, want)) return `its proof of token ${req.token} is wrong (not made with the token's secret for this host and key)`;
      if (repeat) return true;
      t.usesLeft -= 1;
      t.redeemedBy = [...(t.redeemedBy ?? []), who];
      used = true;
      return true;
    });
    // Written before anyone is approved with them: a crash after this loses the uses, never grants extra ones.
    if (used) await writePrivateFile(join(this.dir, 'tokens.json'), JSON.stringify(tokens, null, 2));
    return out;
  }

  private async tokens(): Promise<TokenRecord[]> {
    const text = await readPrivateFile(join(this.dir, 'tokens.json'));
    if (text === undefined) return [];
    try {
      const v = JSON.parse(text) as unknown;
      return Array.isArray(v)
        ? (v as TokenRecord[]).filter(
            (t) =>
              typeof t.id === 'string' &&
              typeof t.secret === 'string' &&
              typeof t.expires === 'string' &&
              typeof t.usesLeft === 'number' &&
              (t.redeemedBy === undefined || (Array.isArray(t.redeemedBy) && t.redeemedBy.every((x) => typeof x === 'string'))),
          )
        : [];
    } catch {
      return [];
    }
  }
}

/** The trust scope of a store: see TrustFiles.open. */
export function trustScope(etcd: boolean, cluster: string): string {
  return etcd ? `etcd-${cluster}` : 'embedded';
}

export function notCaHolder(dir: string): BackplaneError {
  return new BackplaneError('E_USAGE', `this host does not hold the cluster CA (no ${join(dir, 'ca.key')})`, {
    hint: 'run this on the host where `backplane cluster init` was run, with the same --state-dir',
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Changing the hosts document (the CA holder only)

/**
 * Reads the current document (the newer of the store's and the view's), applies `change`, seals it with the CA key and
 * writes it with compare-and-swap, retrying on a concurrent change. A store document that is not the CA's, or older
 * than what the view holds, is overwritten: the CA's holder is the one writer of this key.
 */
export async function updateHosts(
  store: Store,
  ca: KeyPair,
  view: TrustView,
  change: (doc: HostsDoc) => HostsDoc | undefined,
  opts: { signal?: AbortSignal } = {},
): Promise<HostsDoc | undefined> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const kv = await store.get(keys.trustHosts, opts);
    if (kv !== undefined) view.adopt(kv.value);
    const next = change(view.hosts);
    if (next === undefined) return undefined;
    const sealed = sealHosts(ca, next);
    const res = await store.cas(keys.trustHosts, kv?.modRevision ?? 0, sealed, opts);
    if (res.ok) {
      view.adopt(sealed);
      view.writtenRevision = Math.max(view.writtenRevision, res.revision);
      return next;
    }
  }
  throw new BackplaneError('E_IO', 'the hosts list kept changing while it was being updated', { retryable: true, hint: 'try again' });
}

/** Approves `host` with `publicKey`; refuses to replace another key of an approved host unless `replace`. */
export function approve(host: string, publicKey: string, replace: boolean, operator?: boolean): (doc: HostsDoc) => HostsDoc | undefined {
  return (doc) => {
    const cur = Object.hasOwn(doc.hosts, host) ? doc.hosts[host] : undefined;
    // Not given: keep what the host had (re-approving a key must not silently take operator rights away).
    const op = operator ?? (cur?.publicKey === publicKey && cur.operator === true);
    if (cur?.state === 'approved' && cur.publicKey === publicKey && (cur.operator === true) === op) return undefined;
    if (cur !== undefined && cur.publicKey !== publicKey && !replace) {
      throw new BackplaneError('E_USAGE', `host "${host}" is ${cur.state} with another key (${fingerprint(cur.publicKey)}); the new one is ${fingerprint(publicKey)}`, {
        hint: `if ${host} was reinstalled and this is its new key, approve it with --replace`,
      });
    }
    return withHost(doc, host, { publicKey, state: 'approved', since: new Date().toISOString(), ...(op ? { operator: true } : {}) });
  };
}

/**
 * Approves several hosts that joined with tokens in one new hosts list (one serial later). A host that meanwhile has
 * an entry (approved or revoked, with any key) is left as it is: a token never replaces or un-revokes anyone.
 */
export function approveAll(joiners: readonly { readonly host: string; readonly publicKey: string }[]): (doc: HostsDoc) => HostsDoc | undefined {
  return (doc) => {
    const add = joiners.filter((j) => !Object.hasOwn(doc.hosts, j.host));
    if (add.length === 0) return undefined;
    const since = new Date().toISOString();
    const hosts: Record<string, HostEntry> = { ...doc.hosts };
    for (const j of add) hosts[j.host] = { publicKey: j.publicKey, state: 'approved', since };
    return { serial: doc.serial + 1, issuedAt: since, hosts };
  };
}

export function revoke(host: string): (doc: HostsDoc) => HostsDoc | undefined {
  return (doc) => {
    const cur = Object.hasOwn(doc.hosts, host) ? doc.hosts[host] : undefined;
    if (cur === undefined) throw new BackplaneError('E_USAGE', `host "${host}" was never approved`, { hint: 'see `backplane hosts list`' });
    if (cur.state === 'revoked') return undefined;
    return withHost(doc, host, { publicKey: cur.publicKey, state: 'revoked', since: new Date().toISOString() });
  };
}
