/**
 * When to restart a process that exited on its own, and when to give up. Pure: times come in as arguments.
 *
 * - The first crash after a stable run (one that lasted `reset`) restarts at once: a one-off crash costs only the
 *   process's own start-up time.
 * - Each further crash in a row waits initial, 2·initial, 4·initial … up to max.
 * - `failures` crashes within `window` is a crash loop: restarting stops until a fresh start (a notify, or a new
 *   definition of the resource).
 */
export interface RestartPolicyOptions {
  readonly initial: number;
  readonly max: number;
  readonly reset: number;
  readonly failures: number;
  readonly window: number;
}

export type RestartDecision =
  | { readonly action: 'restart'; readonly delayMs: number }
  | { readonly action: 'crash-loop'; readonly failures: number };

export class RestartPolicy {
  private streak = 0;
  private recent: number[] = [];

  constructor(private readonly opts: RestartPolicyOptions) {}

  /** A process that ran for `ranMs` failed at `now`. */
  onFailure(now: number, ranMs: number): RestartDecision {
    if (ranMs >= this.opts.reset) this.streak = 0;
    this.streak++;
    this.recent.push(now);
    this.recent = this.recent.filter((t) => t > now - this.opts.window);
    if (this.recent.length >= this.opts.failures) return { action: 'crash-loop', failures: this.recent.length };
    return { action: 'restart', delayMs: this.delayFor(this.streak) };
  }

  /** Delay before the restart after the n-th crash in a row (n >= 1). */
  delayFor(n: number): number {
    if (n <= 1) return 0;
    return Math.min(this.opts.max, this.opts.initial * 2 ** (n - 2));
  }

  /** A fresh start: forget past failures. */
  clear(): void {
    this.streak = 0;
    this.recent = [];
  }
}
