import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { syncDirectory } from './dirsync.js';

/**
 * Creates `path`, which must not exist yet, with `text`: O_CREAT|O_EXCL|O_NOFOLLOW (a name planted by someone else —
 * a file or a symlink — is refused, never written through), fsync'd; removed again if the write fails.
 */
export async function writeNewFile(path: string, text: string, mode: number): Promise<void> {
  const fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } catch (err) {
    await fh.close();
    await rm(path, { force: true });
    throw err;
  }
  await fh.close();
}

/**
 * Replaces `path` with `text` atomically and durably: a new temp file under a random name next to it (writeNewFile),
 * renamed over the target, and the directory fsync'd so the rename survives a crash. For the agent's own small files
 * (keys, the hosts list, /etc/hostname); managed files go through the file kind, which also guards the directory
 * against races.
 */
export async function writeFileAtomic(path: string, text: string, mode: number): Promise<void> {
  const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  await writeNewFile(tmp, text, mode);
  try {
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  await syncDirectory(dirname(path));
}
