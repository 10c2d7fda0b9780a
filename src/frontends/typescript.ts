import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { GraphContext } from '../api.js';
import { BackplaneError, ValidationErrors, type SourceLocation } from '../errors.js';
import { setParam, type CollectRule, type ExportTarget, type RawEdge, type RawGraph, type RawResource } from '../graph/raw.js';
import { isMap } from './document.js';
import { checkExpansion, pathText } from './limits.js';
import { NOT_A_FUNCTION, type ModuleReply, type ModuleRequest } from './module-protocol.js';
import { RELATION_KEYS } from './yaml-native.js';

/**
 * Graphs written as TypeScript (or JavaScript) modules: the default export is a function from the host's facts and
 * collected data to resources. It is re-evaluated on every call — the module is imported afresh — so the agent can
 * re-render the graph when the file or the cluster data changes. Type errors are the editor's job; what the function
 * returns is validated exactly like YAML, with locations such as `graph.ts: resources[2].content`.
 */
export function isModuleGraph(file: string): boolean {
  return /\.(m|c)?(t|j)s$/.test(file);
}

/** How long a graph module may take to load and return, and how much heap it may use (BACKPLANE_MODULE_*). */
export const DEFAULT_MODULE_TIMEOUT_MS = 30_000;
export const DEFAULT_MODULE_MEMORY_MB = 512;

function envNumber(name: string, fallback: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n <= 0) throw new BackplaneError('E_USAGE', `${name}="${v}" is not a positive whole number`, { hint: `unset it for the default (${fallback})` });
  return n;
}

/**
 * Where the worker's code is: beside this file in the bundle (dist/graph-module-worker.mjs, see scripts/build.mjs),
 * or the TypeScript source when running from src/ under tsx, which a worker must load through tsx itself.
 */
function workerScript(): { code: string; eval: boolean } {
  const here = import.meta.url;
  if (here.endsWith('.ts')) {
    const entry = new URL('./module-worker.ts', here).href;
    return { code: `process.setSourceMapsEnabled(true); import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then((m) => m.tsImport(${JSON.stringify(entry)}, ${JSON.stringify(here)}))`, eval: true };
  }
  for (const rel of ['./graph-module-worker.mjs', '../graph-module-worker.mjs']) {
    const url = new URL(rel, here);
    if (existsSync(url)) return { code: fileURLToPath(url), eval: false };
  }
  throw new BackplaneError('E_IO', 'the graph module worker (graph-module-worker.mjs) is missing beside the CLI bundle', { hint: 'rebuild with `node scripts/build.mjs`' });
}

/**
 * Renders a graph module in a worker thread with a time and a heap limit: an endless loop or a runaway allocation in
 * the user's module ends in a clear error (exit 2) instead of a hung agent or a V8 abort of the whole process, and
 * the main thread keeps handling SIGINT/SIGTERM meanwhile. `signal` terminates the worker at once. A fresh worker per
 * evaluation also means the module is imported afresh every time, with no module cache to bust.
 */
export async function readModuleGraph(file: string, ctx: GraphContext, signal?: AbortSignal): Promise<RawGraph> {
  const timeoutMs = envNumber('BACKPLANE_MODULE_TIMEOUT_MS', DEFAULT_MODULE_TIMEOUT_MS);
  const memoryMb = envNumber('BACKPLANE_MODULE_MEMORY_MB', DEFAULT_MODULE_MEMORY_MB);
  signal?.throwIfAborted();
  const script = workerScript();
  const worker = new Worker(script.code, {
    eval: script.eval,
    workerData: { file, ctx } satisfies ModuleRequest,
    resourceLimits: { maxOldGenerationSizeMb: memoryMb },
    stdin: false,
  });
  const at = { file, line: 0, col: 0 };
  const limit = (message: string, hint: string): ValidationErrors => new ValidationErrors([new BackplaneError('E_LIMIT', message, { where: at, hint })]);
  let reply: ModuleReply;
  try {
    reply = await new Promise<ModuleReply>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(limit(`the graph module did not return within ${timeoutMs / 1000}s (an endless loop, or waiting on something that never answers)`, 'fix the module; raise the limit with BACKPLANE_MODULE_TIMEOUT_MS if it really needs longer; nothing was applied')),
        timeoutMs,
      );
      const onAbort = (): void => reject(new BackplaneError('E_ABORTED', 'stopped while evaluating the graph module'));
      signal?.addEventListener('abort', onAbort, { once: true });
      const done = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      worker.once('message', (m: ModuleReply) => {
        done();
        resolve(m);
      });
      worker.once('error', (err: Error & { code?: string }) => {
        done();
        if (err.code === 'ERR_WORKER_OUT_OF_MEMORY') {
          reject(limit(`the graph module used more than ${memoryMb} MB of memory`, 'fix the module; raise the limit with BACKPLANE_MODULE_MEMORY_MB if it really needs more; nothing was applied'));
        } else {
          reject(moduleError(file, `the graph module failed: ${err.message}`, err.stack ?? '', 'fix the module', err));
        }
      });
      worker.once('exit', (code) => {
        done();
        reject(moduleError(file, `the graph module exited (code ${code}) without returning a graph`, '', 'a graph module must not call process.exit'));
      });
    });
  } finally {
    // Whatever it left running (timers, sockets, a loop) ends with it.
    void worker.terminate();
  }
  if (!reply.ok) {
    if (reply.stage === 'load') {
      throw moduleError(file, `cannot load graph module: ${reply.message}`, reply.stack, 'check the module for syntax errors (run it through tsc) and that its imports resolve');
    }
    if (reply.stage === 'result') {
      throw moduleError(file, `the graph function returned something that is not plain data: ${reply.message}`, '', 'return objects, arrays, strings, numbers and booleans only (no functions or class instances)');
    }
    throw moduleError(file, `the graph function threw: ${reply.message}`, reply.stack, 'fix the module; the running graph (if any) is kept');
  }
  if (reply.out === NOT_A_FUNCTION) {
    throw new ValidationErrors([
      new BackplaneError('E_SCHEMA', 'a graph module must export a function as its default export', { where: at, hint: 'export default ((ctx) => ({ resources: [...] })) satisfies GraphFn;' }),
    ]);
  }
  // Shared objects and cycles survive the structured clone: the same bounds as YAML aliases.
  checkExpansion(reply.out, (path) => ({ file: `${file}: ${pathText(path)}`, line: 0, col: 0 }));
  return toRawGraph(file, reply.out);
}

/**
 * An error in the user's module, at the module's own line when the stack shows one (tsx's source maps give the .ts
 * line). A module tsx compiles as CommonJS (a .ts file outside a "type": "module" package) runs from a data: URL
 * without a map, so its line is unknown.
 */
function moduleError(file: string, message: string, stack: string, hint: string, cause?: unknown): ValidationErrors {
  const re = new RegExp(`(?:file://)?${escapeRegExp(file)}:(\\d+):(\\d+)`);
  const frame = stack.split('\n').map((l) => re.exec(l)).find((m) => m !== null);
  const where = frame === undefined || frame === null ? { file, line: 0, col: 0 } : { file, line: Number(frame[1]), col: Number(frame[2]) };
  return new ValidationErrors([new BackplaneError('E_SCHEMA', message, { where, hint: `${hint}; nothing was applied`, cause })]);
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function toRawGraph(file: string, out: unknown): RawGraph {
  const errors: BackplaneError[] = [];
  const resources: RawResource[] = [];
  const edges: RawEdge[] = [];
  const collect: CollectRule[] = [];
  const where = (path: string): SourceLocation => ({ file: `${file}: ${path}`, line: 0, col: 0 });
  const fail = (msg: string, path: string, hint: string): void => {
    errors.push(new BackplaneError('E_SCHEMA', msg, { where: where(path), hint }));
  };
  const graph = Array.isArray(out) ? { resources: out } : out;
  if (!isMap(graph) || !Array.isArray(graph['resources'])) {
    fail('the graph function must return { resources: [...] } or an array of resources', 'return value', 'see GraphFn in the README');
    return { source: file, resources, edges, errors, collect };
  }
  graph['resources'].forEach((item: unknown, i) => {
    const base = `resources[${i}]`;
    if (!isMap(item) || typeof item['kind'] !== 'string' || typeof item['name'] !== 'string' || item['name'] === '') {
      fail('each resource needs a string kind and a non-empty name', base, "e.g. { kind: 'file', name: '/etc/motd' }");
      return;
    }
    const { kind, name } = item as { kind: string; name: string };
    const params: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(item)) {
      if (!['kind', 'name', 'meta', 'export', ...RELATION_KEYS].includes(k)) setParam(params, k, v);
    }
    const exp = item['export'];
    const exportTo: ExportTarget | undefined =
      exp === true ? '*' : Array.isArray(exp) && exp.every((h) => typeof h === 'string') ? exp : undefined;
    const at = (path: readonly PropertyKey[]): SourceLocation => where(path.length === 0 ? base : `${base}.${path.map(String).join('.')}`);
    resources.push({
      kind,
      name,
      params,
      meta: item['meta'],
      loc: at([]),
      locate: at,
      locateMeta: (path) => at(['meta', ...path]),
      ...(exportTo === undefined ? {} : { export: exportTo }),
    });
    const self = `${kind}[${name}]`;
    for (const rel of RELATION_KEYS) {
      const v = item[rel];
      if (v === undefined) continue;
      const refs: unknown[] = Array.isArray(v) ? v : [v];
      for (const ref of refs) {
        if (typeof ref !== 'string') {
          fail(`"${rel}" entries must be resource references`, `${base}.${rel}`, "write 'kind[name]' or 'kind:name'");
          continue;
        }
        const before = rel === 'before' || rel === 'notify';
        edges.push({ from: before ? self : ref, to: before ? ref : self, notify: rel === 'notify' || rel === 'subscribe', loc: at([rel]) });
      }
    }
  });
  const rules = graph['collect'];
  if (Array.isArray(rules)) {
    rules.forEach((r: unknown, i) => {
      if (!isMap(r) || typeof r['kind'] !== 'string') {
        fail('each collect rule needs a kind', `collect[${i}]`, "e.g. { kind: 'file' }");
        return;
      }
      const from = r['from'];
      const take = r['take'];
      if (take !== undefined && !(Array.isArray(take) && take.every((t) => typeof t === 'string' && t !== ''))) {
        fail('"take" must be a list of parameter names', `collect[${i}].take`, "e.g. take: ['content', 'mode']");
        return;
      }
      collect.push({
        kind: r['kind'],
        from: Array.isArray(from) && from.every((h) => typeof h === 'string') ? from : '*',
        set: isMap(r['set']) ? r['set'] : {},
        take: Array.isArray(take) ? (take as string[]) : undefined,
        loc: where(`collect[${i}]`),
      });
    });
  }
  return { source: file, resources, edges, errors, collect };
}
