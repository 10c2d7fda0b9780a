import { BackplaneError, type SourceLocation } from '../errors.js';
import type { RawEdge, RawGraph, RawResource } from '../graph/raw.js';
import { closest } from '../util/suggest.js';
import { isEmpty, isMap, type GraphDocument } from './document.js';

/**
 * Backplane's own graph format: a flat list of resources, each naming its kind, its name, its parameters inline,
 * and its relations to others:
 *
 *   resources:
 *     - kind: file
 *       name: /etc/motd
 *       content: "hello\n"
 *       require: [file:/etc]        # this runs after those
 *       before: ["exec[reload]"]    # this runs before those
 *       notify: [svc:nginx]         # before + refresh the target when this changed something
 *       subscribe: [file:/x]        # require + refresh this when that changed something
 *       meta: { retry: 3, delay: 2s }
 */
export const RELATION_KEYS = ['require', 'before', 'notify', 'subscribe'] as const;
const RESERVED = new Set<string>(['kind', 'name', 'meta', ...RELATION_KEYS]);
const TOP_LEVEL = ['resources'];

export function readNativeGraph(doc: GraphDocument): RawGraph {
  const errors: BackplaneError[] = [];
  const resources: RawResource[] = [];
  const edges: RawEdge[] = [];
  const root = doc.data;
  const done = (): RawGraph => ({ source: doc.file, resources, edges, errors });
  const fail = (msg: string, where: SourceLocation, hint: string): void => {
    errors.push(new BackplaneError('E_SCHEMA', msg, { where, hint }));
  };

  if (isEmpty(root)) return done();
  if (!isMap(root)) {
    fail('a graph file must be a map with a "resources" list', doc.locate([]), 'start the file with "resources:" and list resources below it');
    return done();
  }
  for (const key of Object.keys(root)) {
    if (TOP_LEVEL.includes(key)) continue;
    const guess = closest(key, TOP_LEVEL);
    fail(`unknown top-level key "${key}"`, doc.locate([key]), guess === undefined ? `allowed: ${TOP_LEVEL.join(', ')}` : `did you mean "${guess}"?`);
  }
  const list = root['resources'];
  if (isEmpty(list)) return done();
  if (!Array.isArray(list)) {
    fail('"resources" must be a list', doc.locateValue(['resources']), 'write each resource as a list item starting with "- kind: ..."');
    return done();
  }
  list.forEach((item: unknown, i) => {
    const at = (...rest: PropertyKey[]): SourceLocation => doc.locate(['resources', i, ...rest]);
    if (!isMap(item)) {
      fail('each resource must be a map with kind and name', at(), 'e.g. "- kind: file" then "name: /etc/motd" on the next line');
      return;
    }
    const kind = scalarString(item['kind']);
    const name = scalarString(item['name']);
    if (kind === undefined) {
      fail('resource has no "kind"', at(), 'add e.g. "kind: file"; `backplane kinds` lists them');
      return;
    }
    if (name === undefined || name === '') {
      fail(`${kind} resource has no "name"`, at(), 'add a name, unique among resources of its kind');
      return;
    }
    const params: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(item)) if (!RESERVED.has(key)) params[key] = value;
    resources.push({
      kind,
      name,
      params,
      meta: item['meta'] ?? undefined,
      get loc() {
        return at();
      },
      locate: (path) => at(...path),
      locateMeta: (path) => at('meta', ...path),
    });
    const self = `${kind}[${name}]`;
    for (const rel of RELATION_KEYS) {
      const value = item[rel];
      if (isEmpty(value)) continue;
      const refs: [unknown, () => SourceLocation][] = Array.isArray(value)
        ? value.map((ref: unknown, j) => [ref, () => at(rel, j)])
        : [[value, () => at(rel)]];
      for (const [ref, where] of refs) {
        if (typeof ref !== 'string') {
          fail(`"${rel}" entries must be resource references`, where(), 'write kind[name] or kind:name, e.g. file[/etc/motd]');
          continue;
        }
        edges.push(relationEdge(rel, self, ref, where));
      }
    }
  });
  return done();
}

function relationEdge(rel: (typeof RELATION_KEYS)[number], self: string, other: string, where: () => SourceLocation): RawEdge {
  const [from, to] = rel === 'require' || rel === 'subscribe' ? [other, self] : [self, other];
  return {
    from,
    to,
    notify: rel === 'notify' || rel === 'subscribe',
    get loc() {
      return where();
    },
  };
}

function scalarString(v: unknown): string | undefined {
  return typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean' ? String(v) : undefined;
}
