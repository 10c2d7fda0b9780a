import { fstatSync, writeSync } from 'node:fs';

/**
 * stderr, written once per turn of the event loop: everything written during one turn goes out in a single write.
 * A one-shot run that creates 1,000 files logs 1,000 lines in a few turns; through the stream one by one that was
 * ~15 ms of the run, batched ~1 ms. Lines wait at most for the end of the turn; nothing is lost at exit (flushed on
 * the process's exit, process.exit() included) and nothing reorders with the error report (reportError flushes
 * first). A process killed by a signal loses at most the lines of the turn it was killed in.
 *
 * The batch is written to fd 2 directly: process.stderr is a stream whose first use loads Node's stream modules (and
 * for a terminal or pipe, net), milliseconds of every start for what is one write(2) per turn.
 */
let pending = '';
let scheduled = false;
let hooked = false;
/** Set once fd 2 refuses a direct write (non-blocking and full): from then on the stream, which waits, takes it all. */
let viaStream = false;

export function writeStderr(text: string): void {
  pending += text;
  if (scheduled) return;
  scheduled = true;
  if (!hooked) {
    hooked = true;
    process.on('exit', flushStderr);
  }
  setImmediate(flushStderr);
}

/** Writes out what is pending now (before anything else writes to stderr directly). */
export function flushStderr(): void {
  scheduled = false;
  if (pending === '') return;
  const text = pending;
  pending = '';
  if (viaStream) {
    process.stderr.write(text);
    return;
  }
  const bytes = Buffer.from(text);
  let off = 0;
  try {
    while (off < bytes.length) off += writeSync(2, bytes, off);
  } catch {
    // EAGAIN: a non-blocking stderr (shared with a parent) is full; the stream queues and waits. Anything else (EPIPE,
    // EBADF: nobody reads stderr) is what process.stderr would have met too: it decides, as it did before.
    viaStream = true;
    process.stderr.write(bytes.subarray(off));
  }
}

/**
 * Whether stderr is a terminal, without process.stderr (see above): only a character device can be one, and only
 * for one is Node's tty module (which loads net) asked. /dev/null, where cron's `2>/dev/null` sends it, is a
 * character device too; on Linux the memory devices (major 1: null, zero, full) are never terminals.
 */
export function stderrIsTTY(): boolean {
  let rdev: number;
  try {
    const st = fstatSync(2);
    if (!st.isCharacterDevice()) return false;
    rdev = st.rdev;
  } catch {
    return false;
  }
  if (process.platform === 'linux' && rdev < 2 ** 32 && ((rdev >>> 8) & 0xfff) === 1) return false;
  return process.stderr.isTTY;
}
