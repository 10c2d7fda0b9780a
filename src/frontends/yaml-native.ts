import { isMap, isScalar, isSeq, type Node, type YAMLMap } from 'yaml';
import { BackplaneError, type SourceLocation } from '../errors.js';
import type { RawEdge, RawGraph, RawResource } from '../graph/raw.js';
import { closest } from '../util/suggest.js';
import { plain, type YamlSource } from './yaml-source.js';

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

export function readNativeGraph(src: YamlSource): RawGraph {
  const errors: BackplaneError[] = [];
  const resources: RawResource[] = [];
  const edges: RawEdge[] = [];
  const root = src.doc.contents;

  const fail = (msg: string, where: SourceLocation, hint: string): void => {
    errors.push(new BackplaneError('E_SCHEMA', msg, { where, hint }));
  };

  if (root === null || (isScalar(root) && (root.value === null || root.value === undefined))) {
    return { source: src.file, resources, edges, errors };
  }
  if (!isMap(root)) {
    fail('a graph file must be a map with a "resources" list', src.at(root), 'start the file with "resources:" and list resources below it');
    return { source: src.file, resources, edges, errors };
  }
  for (const pair of root.items) {
    const key = isScalar(pair.key) ? String(pair.key.value) : '';
    if (!TOP_LEVEL.includes(key)) {
      const guess = closest(key, TOP_LEVEL);
      fail(`unknown top-level key "${key}"`, src.at(pair), guess === undefined ? `allowed: ${TOP_LEVEL.join(', ')}` : `did you mean "${guess}"?`);
    }
  }
  const list = root.get('resources', true);
  if (list === undefined || list === null || (isScalar(list) && list.value === null)) {
    return { source: src.file, resources, edges, errors };
  }
  if (!isSeq(list)) {
    fail('"resources" must be a list', src.at(list), 'write each resource as a list item starting with "- kind: ..."');
    return { source: src.file, resources, edges, errors };
  }
  for (const item of list.items) {
    if (!isMap(item)) {
      fail('each resource must be a map with kind and name', src.at(item as Node), 'e.g. "- kind: file" then "name: /etc/motd" on the next line');
      continue;
    }
    const kind = scalarString(item, 'kind');
    const name = scalarString(item, 'name');
    const here = src.at(item);
    if (kind === undefined) {
      fail('resource has no "kind"', here, 'add e.g. "kind: file"; `backplane kinds` lists them');
      continue;
    }
    if (name === undefined || name === '') {
      fail(`${kind} resource has no "name"`, here, 'add a name, unique among resources of its kind');
      continue;
    }
    const params: Record<string, unknown> = {};
    for (const pair of item.items) {
      const key = isScalar(pair.key) ? String(pair.key.value) : '';
      if (!RESERVED.has(key)) params[key] = plain(pair.value);
    }
    const metaNode = item.get('meta', true) as Node | undefined;
    resources.push({
      kind,
      name,
      params,
      meta: plain(metaNode),
      loc: here,
      locate: (path) => src.locate(item, path),
      locateMeta: (path) => src.locate(item, ['meta', ...path]),
    });
    const self = `${kind}[${name}]`;
    for (const rel of RELATION_KEYS) {
      const node = item.get(rel, true) as Node | undefined;
      if (node === undefined || node === null) continue;
      const refs: { ref: unknown; node: Node }[] = isSeq(node)
        ? node.items.map((n) => ({ ref: plain(n), node: n as Node }))
        : [{ ref: plain(node), node }];
      for (const { ref, node: refNode } of refs) {
        const loc = src.at(refNode);
        if (typeof ref !== 'string') {
          fail(`"${rel}" entries must be resource references`, loc, 'write kind[name] or kind:name, e.g. file[/etc/motd]');
          continue;
        }
        edges.push(relationEdge(rel, self, ref, loc));
      }
    }
  }
  return { source: src.file, resources, edges, errors };
}

function relationEdge(rel: (typeof RELATION_KEYS)[number], self: string, other: string, loc: SourceLocation): RawEdge {
  switch (rel) {
    case 'require':
      return { from: other, to: self, notify: false, loc };
    case 'subscribe':
      return { from: other, to: self, notify: true, loc };
    case 'before':
      return { from: self, to: other, notify: false, loc };
    case 'notify':
      return { from: self, to: other, notify: true, loc };
  }
}

function scalarString(map: YAMLMap, key: string): string | undefined {
  const v: unknown = map.get(key);
  return typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean' ? String(v) : undefined;
}
