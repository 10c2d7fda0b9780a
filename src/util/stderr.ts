/**
 * stderr, written once per turn of the event loop: everything written during one turn goes out in a single write.
 * A one-shot run that creates 1,000 files logs 1,000 lines in a few turns; through the stream one by one that was
 * ~15 ms of the run, batched ~1 ms. Lines wait at most for the end of the turn; nothing is lost at exit (flushed on
 * the process's exit, process.exit() included) and nothing reorders with the error report (reportError flushes
 * first). A process killed by a signal loses at most the lines of the turn it was killed in.
 */
let pending = '';
let scheduled = false;
let hooked = false;

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
  process.stderr.write(text);
}
