/**
 * A token bucket for the `limit`/`burst` metaparams (mgmt's, after Go's x/time/rate): it holds up to `burst`
 * tokens, starts full, and refills at `limit` tokens per second. Each check/apply takes one token, so a resource
 * runs at most `burst` times back to back and then at `limit` runs per second, however many events arrive. Events
 * that arrive while it waits are coalesced into the one run it is waiting for.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    private readonly perSecond: number,
    private readonly burst: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.tokens = burst;
    this.last = now();
  }

  /** Milliseconds until a token is available: 0 when one is available now. */
  waitMs(): number {
    this.refill();
    if (this.tokens >= 1) return 0;
    return Math.ceil(((1 - this.tokens) / this.perSecond) * 1000);
  }

  /** Takes a token; call only after waitMs() returned 0. */
  take(): void {
    this.refill();
    this.tokens = Math.max(0, this.tokens - 1);
  }

  private refill(): void {
    const t = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((t - this.last) / 1000) * this.perSecond);
    this.last = t;
  }
}
