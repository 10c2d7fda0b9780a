interface Waiter {
  readonly resolve: () => void;
  readonly reject: (e: Error) => void;
  readonly signal: AbortSignal | undefined;
  readonly onAbort: () => void;
  /** Aborted while queued: skipped when its turn comes (removing it from the middle would cost O(n)). */
  gone: boolean;
}

/**
 * A counting semaphore whose waiters can give up through an AbortSignal. FIFO, so no waiter starves. The queue is an
 * array read from a moving head: Array.shift() copies the whole array once it is big (100,000 file checks waiting
 * for 64 slots made every release O(n), and a cold run quadratic).
 */
export class Semaphore {
  private free: number;
  private queue: (Waiter | undefined)[] = [];
  private head = 0;

  constructor(readonly size: number) {
    this.free = size;
  }

  acquire(signal?: AbortSignal): Promise<void> {
    if (signal?.aborted === true) return Promise.reject(abortReason(signal));
    if (this.free > 0) {
      this.free--;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = {
        resolve,
        reject,
        signal,
        onAbort: () => {
          w.gone = true;
          reject(abortReason(signal));
        },
        gone: false,
      };
      signal?.addEventListener('abort', w.onAbort, { once: true });
      this.queue.push(w);
    });
  }

  /** How many wait for a slot (one that gave up counts until its turn would have come). */
  get waiting(): number {
    return this.queue.length - this.head;
  }

  release(): void {
    for (;;) {
      const next = this.queue[this.head];
      if (next === undefined) {
        this.queue = [];
        this.head = 0;
        this.free = Math.min(this.size, this.free + 1);
        return;
      }
      this.queue[this.head++] = undefined; // let it be collected
      if (this.head > 1024 && this.head * 2 > this.queue.length) {
        this.queue = this.queue.slice(this.head);
        this.head = 0;
      }
      if (next.gone) continue;
      next.signal?.removeEventListener('abort', next.onAbort);
      next.resolve();
      return;
    }
  }
}

/** Named semaphores declared by resources (`meta.sema: ["apt:1"]`), created on first use with their count. */
export class SemaphoreSet {
  private readonly sems = new Map<string, Semaphore>();

  /** Acquires in name order so two resources holding overlapping sets can never deadlock. */
  async acquireAll(specs: readonly string[], signal: AbortSignal): Promise<() => void> {
    const held: Semaphore[] = [];
    const names = [...new Set(specs)].sort();
    try {
      for (const spec of names) {
        const [name = spec, count] = spec.split(':');
        let sem = this.sems.get(name);
        if (sem === undefined) this.sems.set(name, (sem = new Semaphore(count === undefined ? 1 : Math.max(1, Number(count)))));
        await sem.acquire(signal);
        held.push(sem);
      }
    } catch (err) {
      for (const s of held.reverse()) s.release();
      throw err;
    }
    return () => {
      for (const s of held.reverse()) s.release();
    };
  }
}

function abortReason(signal: AbortSignal | undefined): Error {
  const r: unknown = signal?.reason;
  return r instanceof Error ? r : new Error('aborted');
}
