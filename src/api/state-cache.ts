import type { Store, WatchBatch } from '../cluster/store.js';
import type { TrustView } from '../cluster/trust.js';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { readSchedState, type SchedState } from '../scheduler/state.js';

/**
 * The cluster's state for the operator API, read once and shared. Reading it lists the store and verifies every
 * record's signature — tens of milliseconds on a big cluster — and a dashboard or a script polling many agents asks
 * for it far more often than it changes. So: one read in flight at a time (concurrent requests wait for the same
 * one), and its answer kept until a watch on the store sees a change (or the trust view is replaced). A change that
 * lands while a read runs marks the cache stale again, so no answer is older than the request that asked.
 */
export class StateCache {
  private cached: { state: SchedState; view: TrustView } | undefined;
  private inflight: Promise<SchedState> | undefined;
  private inflightView: TrustView | undefined;
  /** Bumped by every store change the watch sees. */
  private generation = 0;
  private readonly ac = new AbortController();
  private watching = false;
  /** Caching starts once the watch is in place: a change before that would go unseen. */
  private established = false;

  constructor(
    private readonly store: Store,
    private readonly log: Logger,
  ) {}

  read(view: TrustView): Promise<SchedState> {
    this.watch();
    const c = this.cached;
    if (c !== undefined && c.view === view) return Promise.resolve(c.state);
    if (this.inflight !== undefined && this.inflightView === view) return this.inflight;
    const gen = this.generation;
    const established = this.established;
    const p = readSchedState(this.store, view).then(
      (state) => {
        // Kept only when the watch was already in place and nothing changed while it was read; shared with the
        // requests that came meanwhile either way (they asked after it started).
        if (established && gen === this.generation) this.cached = { state, view };
        return state;
      },
      (err: unknown) => {
        throw err;
      },
    );
    this.inflight = p;
    this.inflightView = view;
    void p.finally(() => {
      if (this.inflight === p) {
        this.inflight = undefined;
        this.inflightView = undefined;
      }
    }).catch(() => undefined);
    return p;
  }

  private watch(): void {
    if (this.watching || this.ac.signal.aborted) return;
    this.watching = true;
    const onBatch = (_b: WatchBatch): void => {
      this.generation++;
      this.cached = undefined;
      this.inflight = undefined;
      this.inflightView = undefined;
    };
    this.store.watch('', 0, onBatch, this.ac.signal).then(
      () => {
        this.established = true;
      },
      (err: unknown) => {
      // Without a watch nothing tells us about changes: stop caching rather than answer stale.
      this.established = false;
      this.cached = undefined;
      if (!this.ac.signal.aborted) this.log.warn(`api: cannot watch the store for the state cache: ${errorMessage(err)}; reading it per request`);
      },
    );
  }

  close(): void {
    this.ac.abort();
    this.cached = undefined;
  }
}
