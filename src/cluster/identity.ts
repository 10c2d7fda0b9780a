import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { constants } from 'node:fs';
import { mkdir, open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { BackplaneError } from '../errors.js';
import { writeFileAtomic, writeNewFile } from '../util/atomic-write.js';

/**
 * Ed25519 key pairs: one per host (it signs everything the host writes to the store) and one for the cluster's
 * authority (it signs the list of approved hosts). Keys are kept in `<state dir>/trust/`, a directory only the agent's
 * user can enter, as files created exclusively with mode 0600 and read without following symlinks; a key file that
 * someone else owns or can read is refused rather than trusted.
 *
 * Public keys travel as base64url of the raw 32 bytes (JWK `x`): short, copy-pasteable, and the same bytes a
 * fingerprint hashes.
 */

export interface KeyPair {
  readonly privateKey: KeyObject;
  /** base64url of the raw 32-byte public key. */
  readonly publicKey: string;
}

const RAW_KEY = /^[A-Za-z0-9_-]{43}$/;

/** `sha256:<base64url>` of a raw public key: what an operator compares and what a join token pins. */
export function fingerprint(publicKey: string): string {
  return `sha256:${createHash('sha256').update(Buffer.from(publicKey, 'base64url')).digest('base64url')}`;
}

export function isPublicKey(v: unknown): v is string {
  return typeof v === 'string' && RAW_KEY.test(v);
}

const publicKeys = new Map<string, KeyObject>();

/** The KeyObject of a raw public key, cached: verifying is the hot path of every collected export. */
export function publicKeyObject(publicKey: string): KeyObject {
  let k = publicKeys.get(publicKey);
  if (k === undefined) {
    k = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: publicKey }, format: 'jwk' });
    if (publicKeys.size > 10_000) publicKeys.clear();
    publicKeys.set(publicKey, k);
  }
  return k;
}

/**
 * What is signed: a purpose, the store key the value lives under, and the exact text. Binding the key means a signed
 * value cannot be moved to another key (another host's, or another resource's) and still verify; the purpose keeps a
 * record signature from ever passing as a signature of the hosts list, and the other way round.
 */
function signedBytes(purpose: string, key: string, text: string): Buffer {
  return Buffer.from(`backplane/v1\n${purpose}\n${key}\n${text}`);
}

export function signText(pair: KeyPair, purpose: string, key: string, text: string): string {
  return sign(null, signedBytes(purpose, key, text), pair.privateKey).toString('base64url');
}

export function verifyText(publicKey: string, purpose: string, key: string, text: string, signature: string): boolean {
  if (typeof signature !== 'string' || signature.length !== 86) return false;
  try {
    return verify(null, signedBytes(purpose, key, text), publicKeyObject(publicKey), Buffer.from(signature, 'base64url'));
  } catch {
    return false;
  }
}

export function generateKeyPair(): KeyPair {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return { privateKey, publicKey: rawPublic(publicKey) };
}

function rawPublic(k: KeyObject): string {
  const jwk = k.export({ format: 'jwk' });
  if (typeof jwk.x !== 'string') throw new Error('not an Ed25519 key');
  return jwk.x;
}

/** `<state dir>/trust`, created 0700. */
export async function trustDir(stateDir: string): Promise<string> {
  const dir = join(stateDir, 'trust');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  return dir;
}

/** Reads a private key file, or undefined when there is none. */
export async function readKeyFile(path: string): Promise<KeyPair | undefined> {
  const text = await readPrivateFile(path);
  if (text === undefined) return undefined;
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(text);
  } catch (err) {
    throw new BackplaneError('E_IO', `${path} is not a private key`, { cause: err, hint: 'move it away; a new key is made on the next start (the host must then be approved again)' });
  }
  if (privateKey.asymmetricKeyType !== 'ed25519') throw new BackplaneError('E_IO', `${path} is not an Ed25519 key`, { hint: 'move it away and start again' });
  return { privateKey, publicKey: rawPublic(createPublicKey(privateKey)) };
}

/** The key in `path`, made (0600, exclusively) when there is none yet. */
export async function loadOrCreateKey(path: string): Promise<KeyPair> {
  const existing = await readKeyFile(path);
  if (existing !== undefined) return existing;
  const pair = generateKeyPair();
  const pem = pair.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
  try {
    await writePrivateFile(path, pem, { exclusive: true });
  } catch (err) {
    // Two starts at once: the other one made it first; use theirs.
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      const theirs = await readKeyFile(path);
      if (theirs !== undefined) return theirs;
    }
    throw err;
  }
  return pair;
}

/**
 * Reads a file that must be private to the agent's user: opened without following a symlink, and refused unless it is
 * a regular file owned by this user that nobody else can read or write. Undefined when it does not exist.
 */
export async function readPrivateFile(path: string): Promise<string | undefined> {
  let fh: FileHandle;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    if (code === 'ELOOP') throw new BackplaneError('E_IO', `${path} is a symlink; refusing to read a key through it`, { hint: `remove ${path}` });
    throw new BackplaneError('E_IO', `cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const st = await fh.stat();
    const uid = process.getuid?.() ?? st.uid;
    if (!st.isFile()) throw new BackplaneError('E_IO', `${path} is not a regular file`, { hint: `remove ${path}` });
    if (st.uid !== uid || (st.mode & 0o077) !== 0) {
      throw new BackplaneError('E_IO', `${path} is owned by uid ${st.uid} with mode ${(st.mode & 0o777).toString(8)}; a key must be private to uid ${uid}`, {
        hint: `if you made it yourself: chown ${uid} ${path} && chmod 600 ${path}; otherwise someone else may know it: remove it`,
      });
    }
    return await fh.readFile('utf8');
  } finally {
    await fh.close();
  }
}

/**
 * Writes a private file (0600) atomically (writeFileAtomic: exclusive no-follow temp, fsync, rename). With
 * `exclusive`, the final name must not exist yet (link-free "create once": rename would replace, so the final step is
 * an exclusive open of the target instead).
 */
export async function writePrivateFile(path: string, text: string, opts: { exclusive?: boolean } = {}): Promise<void> {
  if (opts.exclusive === true) await writeNewFile(path, text, 0o600);
  else await writeFileAtomic(path, text, 0o600);
}
