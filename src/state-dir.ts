import { mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { sha256Hex } from './util/hash.js';
import { ensurePrivateDir } from './util/private-dir.js';

/** Where an agent keeps its state when not told: the system location as root, the user's XDG state dir otherwise. */
export function defaultStateDir(): string {
  if (process.getuid?.() === 0) return '/var/lib/backplane';
  return join(process.env['XDG_STATE_HOME'] ?? join(homedir(), '.local', 'state'), 'backplane');
}

/**
 * Creates the state directory 0700, or checks that an existing one is private: a real directory owned by the agent's
 * user, writable by nobody else, under directories nobody else can rename it out of. Rejects with E_USAGE and what
 * to fix otherwise. Cheap after the first call for a directory.
 */
export function ensureStateDir(root: string): Promise<void> {
  return ensurePrivateDir(root, 'state directory');
}

/**
 * A private directory per resource: readable name plus a hash, so `file[/etc/x]` and `file[/etc_x]` never share
 * one and the name stays within filesystem limits. It lies inside the checked state directory, so nobody but the
 * agent's user can plant anything in it (svc pid records, their temp files).
 */
export async function resourceStateDir(root: string, id: string): Promise<string> {
  await ensureStateDir(root);
  const safe = id.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 80);
  const hash = sha256Hex(id).slice(0, 12);
  const dir = join(root, 'resources', `${safe}-${hash}`);
  // Synchronous, as the state directory's own check: a svc's first step on the way to its start, and a thread-pool
  // round trip there waited behind the other resources' reads and fsyncs.
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  return dir;
}
