import { pathToFileURL } from 'node:url';
import type { GraphContext, GraphFn } from '../api.js';
import { BackplaneError, type SourceLocation } from '../errors.js';
import type { CollectRule, ExportTarget, RawEdge, RawGraph, RawResource } from '../graph/raw.js';
import { isMap } from './document.js';
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

let generation = 0;

export async function readModuleGraph(file: string, ctx: GraphContext): Promise<RawGraph> {
  const fn = await importGraphFn(file);
  let out: unknown;
  try {
    out = await fn(ctx);
  } catch (err) {
    throw new BackplaneError('E_SCHEMA', `the graph function threw: ${err instanceof Error ? err.message : String(err)}`, {
      where: { file, line: 0, col: 0 },
      hint: 'fix the module; the running graph (if any) is kept',
      cause: err,
    });
  }
  return toRawGraph(file, out);
}

async function importGraphFn(file: string): Promise<GraphFn> {
  let mod: unknown;
  try {
    if (/\.(m|c)?ts$/.test(file)) {
      // Loaded only for TypeScript graphs: tsx registers a loader, which YAML users never pay for.
      const { tsImport } = await import('tsx/esm/api');
      mod = await tsImport(file, import.meta.url);
    } else {
      mod = await import(`${pathToFileURL(file).href}?v=${++generation}`);
    }
  } catch (err) {
    throw new BackplaneError('E_SCHEMA', `cannot load graph module: ${err instanceof Error ? err.message : String(err)}`, {
      where: { file, line: 0, col: 0 },
      hint: 'check the module for syntax errors (run it through tsc) and that its imports resolve',
      cause: err,
    });
  }
  // A module tsx treats as CommonJS arrives as { default: { default: fn } }.
  let fn: unknown = isMap(mod) ? mod['default'] : undefined;
  if (isMap(fn) && typeof fn['default'] === 'function') fn = fn['default'];
  if (typeof fn !== 'function') {
    throw new BackplaneError('E_SCHEMA', 'a graph module must export a function as its default export', {
      where: { file, line: 0, col: 0 },
      hint: 'export default ((ctx) => ({ resources: [...] })) satisfies GraphFn;',
    });
  }
  return fn as GraphFn;
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
      if (!['kind', 'name', 'meta', 'export', ...RELATION_KEYS].includes(k)) params[k] = v;
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
