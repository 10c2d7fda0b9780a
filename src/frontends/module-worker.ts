import { pathToFileURL } from 'node:url';
import { parentPort, workerData } from 'node:worker_threads';
import type { GraphContext } from '../api.js';
import { NOT_A_FUNCTION, type ModuleReply, type ModuleRequest } from './module-protocol.js';

/**
 * Evaluates one graph module off the agent's main thread (see typescript.ts): a module that loops for ever or eats
 * memory is stopped by the agent (terminate, resourceLimits) while the main thread keeps answering signals.
 * It posts back one message: the function's result as plain data, or what went wrong and where in the module.
 */
async function evaluate({ file, ctx }: ModuleRequest): Promise<ModuleReply> {
  let stage: 'load' | 'call' = 'load';
  try {
    let mod: unknown;
    if (/\.(m|c)?ts$/.test(file)) {
      // Loaded only for TypeScript graphs: tsx registers a loader (with source maps, so stacks name the .ts lines).
      const { tsImport } = await import('tsx/esm/api');
      mod = await tsImport(file, import.meta.url);
    } else {
      // A fresh worker per evaluation: no module cache to bust.
      mod = await import(pathToFileURL(file).href);
    }
    // A module tsx treats as CommonJS arrives as { default: { default: fn } }.
    let fn: unknown = isRecord(mod) ? mod['default'] : undefined;
    if (isRecord(fn) && typeof fn['default'] === 'function') fn = fn['default'];
    if (typeof fn !== 'function') return { ok: true, out: NOT_A_FUNCTION };
    stage = 'call';
    return { ok: true, out: await (fn as (c: GraphContext) => unknown)(ctx) };
  } catch (err) {
    return { ok: false, stage, message: err instanceof Error ? err.message : String(err), stack: err instanceof Error ? (err.stack ?? '') : '' };
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return v !== null && (typeof v === 'object' || typeof v === 'function');
}

const reply = await evaluate(workerData as ModuleRequest);
try {
  parentPort?.postMessage(reply);
} catch (err) {
  // A function, a class instance with private state, a symbol...: the graph must be plain data.
  parentPort?.postMessage({ ok: false, stage: 'result', message: err instanceof Error ? err.message : String(err), stack: '' } satisfies ModuleReply);
}
