/**
 * A controller pass that changed a plan runs the next pass at once, without waiting for an event: the change may let
 * the reconciler do more. A pass whose output never settles (a plan rebuilt differently each time: it happened, with
 * a comparison that depended on key order) turns that into a loop that writes the store as fast as it answers,
 * a hundred or more times a second, for as long as the plan lasts. Legitimate runs of such passes are a handful in a
 * row, so more than `limit` of them within `windowMs` is taken as that bug: the controller then waits `backoffMs`
 * before each further one, until a pass settles, and says so (once per `warnEveryMs`), instead of hammering the store.
 */
export class SpinGuard {
  private readonly recent: number[] = [];
  private warnedAt = -Infinity;
  /** Slowed until a pass settles: the window alone would let the loop run `limit` passes after every wait. */
  private tripped = false;

  constructor(
    private readonly limit = 20,
    private readonly windowMs = 1000,
    private readonly backoffMs = 1000,
    private readonly warnEveryMs = 60_000,
  ) {}

  /**
   * After a pass that asked for the next one itself (not an event): how long to wait before that next pass (0: at
   * once), and whether to warn now.
   */
  selfRerun(now: number): { readonly waitMs: number; readonly warn: boolean } {
    this.recent.push(now);
    while (this.recent.length > 0 && (this.recent[0] ?? now) <= now - this.windowMs) this.recent.shift();
    if (!this.tripped && this.recent.length <= this.limit) return { waitMs: 0, warn: false };
    this.tripped = true;
    const warn = now - this.warnedAt >= this.warnEveryMs;
    if (warn) this.warnedAt = now;
    return { waitMs: this.backoffMs, warn };
  }

  /** After a pass that did not ask for the next one: whatever looped has settled. */
  settled(): void {
    this.tripped = false;
    this.recent.length = 0;
  }
}
