import { copyFile, mkdir, open, rename, stat, truncate } from 'node:fs/promises';
import { dirname } from 'node:path';

/**
 * The process writes its stdout/stderr straight into these files (O_APPEND), so they survive agent restarts. That
 * rules out rename-and-reopen rotation (the process would keep writing to the renamed file), so rotation is
 * copy-then-truncate, as logrotate's copytruncate: x is copied, then cut to zero (thanks to O_APPEND the next write
 * lands at its start), then x.(n-1) -> x.n … and the copy becomes x.1. Lines written between the copy and the
 * truncate are lost; the window is one copy of a file that is checked once a second.
 */

export async function prepareLogFile(path: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
}

/** Rotates `path` if it is a regular file larger than maxSize. Returns true when it rotated. */
export async function rotateIfNeeded(path: string, maxSize: number, keep: number): Promise<boolean> {
  let size: number;
  try {
    const st = await stat(path);
    // /dev/null, a fifo or a tty is somebody else's business.
    if (!st.isFile()) return false;
    size = st.size;
  } catch {
    return false;
  }
  if (size <= maxSize) return false;
  if (keep === 0) {
    await truncate(path, 0);
    return true;
  }
  // The slow copy goes first, under a temporary name, so that readers never find a numbered file missing.
  const copy = `${path}.rotating`;
  await copyFile(path, copy);
  await truncate(path, 0);
  for (let i = keep - 1; i >= 1; i--) {
    try {
      await rename(`${path}.${i}`, `${path}.${i + 1}`);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  await rename(copy, `${path}.1`);
  return true;
}

/** Size of a file, 0 when missing: where this run's output starts, for reporting it later. */
export async function fileSize(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch {
    return 0;
  }
}

const TAIL_BYTES = 16 * 1024;

/**
 * The last `lines` lines written at or after `from` (bytes). After a rotation the file is shorter than `from`;
 * then whatever is there is the newest output.
 */
export async function tailLines(path: string, from: number, lines: number): Promise<string[]> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch {
    return [];
  }
  try {
    const size = (await fh.stat()).size;
    const start = Math.max(size < from ? 0 : from, size - TAIL_BYTES);
    const buf = Buffer.alloc(size - start);
    if (buf.length === 0) return [];
    await fh.read(buf, 0, buf.length, start);
    const all = buf.toString('utf8').split('\n');
    if (all.at(-1) === '') all.pop();
    // A cut first line is noise unless it is all there is.
    if (start > from && start > 0 && all.length > 1) all.shift();
    return all.slice(-lines).map((l) => (l.length > 500 ? `${l.slice(0, 500)} […]` : l));
  } finally {
    await fh.close();
  }
}
