/** A counting semaphore whose waiters can give up through an AbortSignal. FIFO, so no waiter starves. */
export class Semaphore {
  private free: number;
  private readonly waiters: { resolve: () => void; reject: (e: Error) => void; signal: AbortSignal | undefined; onAbort: () => void }[] = [];

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
      const w = {
        resolve,
        reject,
        signal,
        onAbort: () => {
          const i = this.waiters.indexOf(w);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(abortReason(signal));
        },
      };
      signal?.addEventListener('abort', w.onAbort, { once: true });
      this.waiters.push(w);
    });
  }

  release(): void {
    const next = this.waiters.shift();
    if (next === undefined) {
      this.free = Math.min(this.size, this.free + 1);
      return;
    }
    next.signal?.removeEventListener('abort', next.onAbort);
    next.resolve();
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
