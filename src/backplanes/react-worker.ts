/**
 * The worker thread a backplane's `react` runs in (host.ts): one per backplane kind, inside the controller's
 * process. The module is imported here, never in the controller's own thread, so a module that throws at import, loops
 * forever or allocates without end is terminated (time and heap limits) without touching the controller.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { errorMessage } from '../errors.js';
import { loadBackplane, type ModuleRef } from './registry.js';
import type { BackplaneDefinition } from './sdk.js';

export type WorkerReply =
  | { readonly type: 'ready'; readonly timeoutMs: number }
  | { readonly type: 'failed'; readonly message: string }
  | { readonly type: 'result'; readonly id: number; readonly ok: true; readonly output: unknown }
  | { readonly type: 'result'; readonly id: number; readonly ok: false; readonly message: string };

export interface WorkerCall {
  readonly id: number;
  readonly input: unknown;
}

const port = parentPort;
if (port !== null) {
  const ref = (workerData as { ref: ModuleRef }).ref;
  let def: BackplaneDefinition<unknown> | undefined;
  const post = (m: WorkerReply): void => {
    try {
      port.postMessage(m);
    } catch (err) {
      // Functions, symbols, class instances with private state: not data the controller can store.
      if (m.type === 'result') port.postMessage({ type: 'result', id: m.id, ok: false, message: `react returned something that is not plain data (${errorMessage(err)})` } satisfies WorkerReply);
    }
  };
  port.on('message', (call: WorkerCall) => {
    if (def === undefined) return;
    const d = def;
    void (async () => {
      try {
        post({ type: 'result', id: call.id, ok: true, output: await d.react(call.input as Parameters<typeof d.react>[0]) });
      } catch (err) {
        post({ type: 'result', id: call.id, ok: false, message: `react threw: ${errorMessage(err)}` });
      }
    })();
  });
  loadBackplane(ref).then(
    (d) => {
      def = d;
      const t = d.reactTimeoutMs;
      post({ type: 'ready', timeoutMs: typeof t === 'number' && Number.isFinite(t) && t > 0 ? Math.min(t, 30_000) : 2000 });
    },
    (err: unknown) => post({ type: 'failed', message: errorMessage(err) }),
  );
}
