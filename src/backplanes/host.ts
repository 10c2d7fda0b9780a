/**
 * Runs backplanes' `react` for the controller, each kind in a worker thread of its own (react-worker.ts) with a
 * time limit per call and a heap limit: a backplane that throws, hangs or returns nonsense gets a clear error in its
 * object's state and an event, and the controller — every other service, every other backplane — goes on. A worker
 * that timed out or died is terminated and started afresh for the next call (after a pause, so a module that hangs
 * on import does not cost a thread start on every pass).
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { BackplaneError, errorMessage } from '../errors.js';
import { findBackplane, searchPath, type ModuleRef } from './registry.js';
import type { WorkerReply } from './react-worker.js';
import { MAX_MEMORY_BYTES, reactOutputSchema, type ReactInput, type ReactOutput } from './sdk.js';

export type ReactResult = { readonly ok: true; readonly output: ReactOutput } | { readonly ok: false; readonly error: string };

export interface HostOptions {
  /** Heap of each backplane's worker (MiB). */
  readonly memoryMb?: number;
  /** Longest a module may take to load. */
  readonly loadTimeoutMs?: number;
  /** After a failure (load error, timeout, crash), how long before the kind's worker is started again. */
  readonly retryMs?: number;
  readonly path?: readonly string[];
}

interface Slot {
  worker: Worker;
  ready: Promise<number>;
  pending: Map<number, (r: ReactResult) => void>;
  dead?: string;
}

export class BackplaneHost {
  private readonly slots = new Map<string, Slot>();
  private readonly failedAt = new Map<string, { at: number; error: string }>();
  private seq = 0;

  constructor(private readonly opts: HostOptions = {}) {}

  /** Calls `kind`'s react with `input`; never throws, never takes longer than the backplane's time limit (+ load). */
  async react(kind: string, input: ReactInput<unknown>): Promise<ReactResult> {
    const recent = this.failedAt.get(kind);
    if (recent !== undefined && Date.now() - recent.at < (this.opts.retryMs ?? 5000)) return { ok: false, error: recent.error };
    let slot: Slot;
    try {
      slot = await this.slot(kind);
    } catch (err) {
      return this.fail(kind, errorMessage(err));
    }
    let timeoutMs: number;
    try {
      timeoutMs = await slot.ready;
    } catch (err) {
      return this.fail(kind, errorMessage(err));
    }
    const id = ++this.seq;
    const result = await new Promise<ReactResult>((resolve) => {
      const timer = setTimeout(() => {
        slot.pending.delete(id);
        resolve({ ok: false, error: `the ${kind} backplane's react did not return within ${timeoutMs} ms (it hangs, or waits on something that never answers); its worker was restarted` });
        this.kill(kind, slot, 'timed out');
      }, timeoutMs);
      slot.pending.set(id, (r) => {
        clearTimeout(timer);
        resolve(r);
      });
      try {
        slot.worker.postMessage({ id, input });
      } catch (err) {
        slot.pending.delete(id);
        clearTimeout(timer);
        resolve({ ok: false, error: `cannot hand the input to the ${kind} backplane: ${errorMessage(err)}` });
      }
    });
    if (!result.ok) {
      if (slot.dead !== undefined) this.failedAt.set(kind, { at: Date.now(), error: result.error });
      return result;
    }
    // The worker is the backplane's: what it returns is checked here, in the controller's thread.
    const parsed = reactOutputSchema.safeParse(result.output);
    if (!parsed.success) {
      const i = parsed.error.issues[0];
      return { ok: false, error: `the ${kind} backplane's react returned nonsense: ${i === undefined ? '?' : `${i.path.join('.') || 'output'}: ${i.message}`}` };
    }
    const out = parsed.data as ReactOutput;
    if (out.memory !== undefined && JSON.stringify(out.memory).length > MAX_MEMORY_BYTES) return { ok: false, error: `the ${kind} backplane's memory is over ${MAX_MEMORY_BYTES} bytes of JSON` };
    return { ok: true, output: out };
  }

  /** Ends every worker. */
  async close(): Promise<void> {
    const all = [...this.slots.values()];
    this.slots.clear();
    await Promise.all(all.map((s) => s.worker.terminate().catch(() => undefined)));
  }

  private fail(kind: string, error: string): ReactResult {
    this.failedAt.set(kind, { at: Date.now(), error });
    const slot = this.slots.get(kind);
    if (slot !== undefined) this.kill(kind, slot, error);
    return { ok: false, error };
  }

  private kill(kind: string, slot: Slot, why: string): void {
    slot.dead = why;
    if (this.slots.get(kind) === slot) this.slots.delete(kind);
    for (const [, resolve] of slot.pending) resolve({ ok: false, error: `the ${kind} backplane's worker ended: ${why}` });
    slot.pending.clear();
    void slot.worker.terminate().catch(() => undefined);
  }

  private async slot(kind: string): Promise<Slot> {
    const have = this.slots.get(kind);
    if (have !== undefined) return have;
    const ref = await findBackplane(kind, this.opts.path ?? searchPath());
    if (ref === undefined) throw new BackplaneError('E_UNKNOWN_KIND', `no backplane for kind "${kind}" (shipped or on BACKPLANE_PATH)`, { hint: 'install it on every host that may be the controller' });
    if (this.slots.has(kind)) return this.slots.get(kind) as Slot;
    const slot = this.start(kind, ref);
    this.slots.set(kind, slot);
    return slot;
  }

  private start(kind: string, ref: ModuleRef): Slot {
    const script = workerScript();
    const worker = new Worker(script.code, { eval: script.eval, workerData: { ref }, resourceLimits: { maxOldGenerationSizeMb: this.opts.memoryMb ?? 256 }, stdin: false, stdout: true, stderr: true });
    // A module's console output is not the controller's log; drop it rather than let it fill a pipe.
    worker.stdout.resume();
    worker.stderr.resume();
    const pending = new Map<number, (r: ReactResult) => void>();
    // Filled in below, once `ready` exists; the handlers that use it run only after that.
    const self: { slot?: Slot } = {};
    const ready = new Promise<number>((resolve, reject) => {
      const t = setTimeout(() => reject(new BackplaneError('E_TIMEOUT', `the ${kind} backplane did not load within ${(this.opts.loadTimeoutMs ?? 10_000) / 1000}s`)), this.opts.loadTimeoutMs ?? 10_000);
      worker.on('message', (m: WorkerReply) => {
        if (m.type === 'ready') {
          clearTimeout(t);
          resolve(m.timeoutMs);
        } else if (m.type === 'failed') {
          clearTimeout(t);
          reject(new BackplaneError('E_APPLY', m.message));
        } else {
          const done = pending.get(m.id);
          pending.delete(m.id);
          done?.(m.ok ? { ok: true, output: m.output as ReactOutput } : { ok: false, error: `the ${kind} backplane: ${m.message}` });
        }
      });
      const died = (why: string): void => {
        clearTimeout(t);
        reject(new BackplaneError('E_APPLY', `the ${kind} backplane's worker ended: ${why}`));
        const slot = self.slot;
        if (slot !== undefined && slot.dead === undefined) {
          this.failedAt.set(kind, { at: Date.now(), error: `the ${kind} backplane's worker ended: ${why}` });
          this.kill(kind, slot, why);
        }
      };
      worker.on('error', (err) => died(errorMessage(err)));
      worker.on('exit', (code) => died(`exit code ${code}`));
    });
    ready.catch(() => undefined);
    self.slot = { worker, ready, pending };
    return self.slot;
  }
}

function workerScript(): { code: string; eval: boolean } {
  const here = import.meta.url;
  if (here.endsWith('.ts')) {
    const entry = new URL('./react-worker.ts', here).href;
    return { code: `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then((m) => m.tsImport(${JSON.stringify(entry)}, ${JSON.stringify(here)}))`, eval: true };
  }
  for (const rel of ['./backplane-react-worker.mjs', '../backplane-react-worker.mjs']) {
    const url = new URL(rel, here);
    if (existsSync(url)) return { code: fileURLToPath(url), eval: false };
  }
  throw new BackplaneError('E_IO', 'the backplane worker (backplane-react-worker.mjs) is missing beside the CLI bundle', { hint: 'rebuild with `node scripts/build.mjs`' });
}
