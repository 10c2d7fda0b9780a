import { stderrIsTTY, writeStderr } from '../util/stderr.js';
import { terminalSafe } from '../util/terminal.js';

/**
 * Progress of a long wait (`run --converged-timeout`, `deploy --wait`) in one line. On a terminal the line is
 * rewritten in place (\r, and spaces over what was longer: no escape sequences) on every change and blanked when
 * done; other output meanwhile (already made safe by its writer) goes above it.
 * Not on a terminal (a pipe, a log file, CI), a plain line is printed only when it says something new, at most one
 * per `minIntervalMs` (a change within that time is printed when the interval is over, or at the end): a log of the
 * wait reads as a short list of steps, not thousands of repeats.
 */

export interface ProgressOptions {
  readonly isTTY: boolean;
  /** Where the text goes (process.stderr.write, or a test's collector). */
  readonly write: (text: string) => void;
  /** Plain lines: at most one this often (default 1000 ms). */
  readonly minIntervalMs?: number;
  readonly now?: () => number;
  /** Terminal width: a longer line is cut, or \r would not return to its start. */
  readonly columns?: number;
}

/** Blanks out `n` columns of the current line: \r and spaces, no escape sequence (NO_COLOR terminals, dumb ones). */
function erase(n: number): string {
  return n === 0 ? '\r' : `\r${' '.repeat(n)}\r`;
}

export class Progress {
  private shown: string | undefined;
  /** Plain mode: the last line printed, when, and a newer one waiting for the interval. */
  private printed: string | undefined;
  private printedAt = -Infinity;
  private pending: string | undefined;
  private ended = false;
  private readonly minIntervalMs: number;
  private readonly now: () => number;

  constructor(private readonly opts: ProgressOptions) {
    this.minIntervalMs = opts.minIntervalMs ?? 1000;
    this.now = opts.now ?? Date.now;
  }

  /** The wait's state now, e.g. "resources 37/120 converged, 2 failed". */
  update(line: string): void {
    if (this.ended) return;
    const text = terminalSafe(line).replace(/\n/g, ' ');
    if (this.opts.isTTY) {
      if (text === this.shown) return;
      const was = this.shown === undefined ? 0 : this.fit(this.shown).length;
      this.shown = text;
      this.opts.write(`${erase(was)}${this.fit(text)}`);
      return;
    }
    if (text === this.printed) {
      this.pending = undefined;
      return;
    }
    if (this.now() - this.printedAt >= this.minIntervalMs) this.print(text);
    else this.pending = text;
  }

  /** Other output while the line shows (a log line, a note): above the progress line, which is then drawn again. */
  log(text: string): void {
    if (!this.opts.isTTY || this.shown === undefined || this.ended) {
      this.opts.write(text);
      return;
    }
    this.opts.write(`${erase(this.fit(this.shown).length)}${text}${text.endsWith('\n') ? '' : '\n'}${this.fit(this.shown)}`);
  }

  /** The wait is over: the terminal line is erased; a plain line not yet printed is printed now. */
  done(): void {
    if (this.ended) return;
    this.ended = true;
    if (this.opts.isTTY) {
      if (this.shown !== undefined) this.opts.write(erase(this.fit(this.shown).length));
      this.shown = undefined;
      return;
    }
    if (this.pending !== undefined) this.print(this.pending);
  }

  private print(text: string): void {
    this.printed = text;
    this.printedAt = this.now();
    this.pending = undefined;
    this.opts.write(`${text}\n`);
  }

  private fit(text: string): string {
    const cols = this.opts.columns;
    return cols === undefined || cols <= 1 || text.length < cols ? text : `${text.slice(0, cols - 2)}…`;
  }
}

/** A Progress on stderr, in its terminal mode when stderr is a terminal. */
export function stderrProgress(): Progress {
  if (!stderrIsTTY()) return new Progress({ isTTY: false, write: writeStderr });
  const err = process.stderr;
  return new Progress({ isTTY: err.isTTY, write: writeStderr, ...(err.isTTY && err.columns !== undefined ? { columns: err.columns } : {}) });
}

/** What `run --converged-timeout` follows: the engine's resources by state. */
export interface ConvergenceSource {
  /** How many resources there are and how many are in each state, kept by the engine as states change. */
  counts(): StateCounts;
}

export interface StateCounts {
  readonly total: number;
  readonly converged: number;
  readonly failed: number;
  readonly blocked: number;
}

/** "resources 37/120 converged, 2 failed" (failed and blocked only when there are some). */
export function convergenceLine(states: readonly { readonly state: string }[] | StateCounts): string {
  let c: StateCounts;
  if ('total' in states) c = states;
  else {
    let converged = 0;
    let failed = 0;
    let blocked = 0;
    for (const s of states) {
      if (s.state === 'converged') converged++;
      else if (s.state === 'failed') failed++;
      else if (s.state === 'blocked') blocked++;
    }
    c = { total: states.length, converged, failed, blocked };
  }
  return `resources ${c.converged}/${c.total} converged${c.failed === 0 ? '' : `, ${c.failed} failed`}${c.blocked === 0 ? '' : `, ${c.blocked} blocked`}`;
}

/** Updates `progress` from `engine` every `everyMs` until the returned stop (which ends the progress too). */
export function followConvergence(engine: ConvergenceSource, progress: Progress, everyMs = 200): () => void {
  // Counts, not engine.status(): a status object per resource five times a second was a quarter of a
  // 100,000-resource run.
  const tick = (): void => {
    const counts = engine.counts();
    if (counts.total > 0) progress.update(convergenceLine(counts));
  };
  const timer = setInterval(tick, everyMs);
  timer.unref();
  return () => {
    clearInterval(timer);
    tick();
    progress.done();
  };
}
