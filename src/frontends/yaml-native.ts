import { BackplaneError, type SourceLocation } from '../errors.js';
import { setParam, type CollectRule, type ExportTarget, type RawEdge, type RawGraph, type RawResource } from '../graph/raw.js';
import { closest } from '../util/suggest.js';
import { isEmpty, isMap, yamlPlaces, type GraphDocument } from './document.js';
import { readFastYamlList } from './fast-yaml.js';
import { locator, nativeResource, type At, type Locate } from './raw-builders.js';

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
const RESERVED = new Set<string>(['kind', 'name', 'meta', 'export', ...RELATION_KEYS]);
const TOP_LEVEL = ['resources', 'collect'];

export function readNativeGraph(doc: GraphDocument): RawGraph {
  const errors: BackplaneError[] = [];
  const resources: RawResource[] = [];
  const edges: RawEdge[] = [];
  const collect: CollectRule[] = [];
  const root = doc.data;
  const done = (): RawGraph => ({ source: doc.file, resources, edges, errors, collect });
  const fail = (msg: string, where: SourceLocation, hint: string): void => {
    errors.push(new BackplaneError('E_SCHEMA', msg, { where, hint }));
  };

  // An empty file is what an editor or a `>` redirect leaves for a moment while it writes: taken as an empty graph it
  // would stop every service and leave every file unmanaged. A graph that manages nothing says so: `resources: []`.
  if (isEmpty(root)) {
    fail('the graph file is empty', { file: doc.file, line: 1, col: 1 }, 'write "resources: []" for a graph that manages nothing; nothing was applied');
    return done();
  }
  if (!isMap(root)) {
    fail('a graph file must be a map with a "resources" list', doc.locate([]), 'start the file with "resources:" and list resources below it');
    return done();
  }
  for (const key of Object.keys(root)) {
    if (TOP_LEVEL.includes(key)) continue;
    const guess = closest(key, TOP_LEVEL);
    fail(`unknown top-level key "${key}"`, doc.locate([key]), guess === undefined ? `allowed: ${TOP_LEVEL.join(', ')}` : `did you mean "${guess}"?`);
  }
  readCollect(doc, root['collect'], collect, fail);
  const list = root['resources'];
  if (list === null) {
    // `resources:` with nothing after it: as likely a file cut short after its first line as a deliberate choice.
    fail('"resources" is empty', doc.locate(['resources']), 'write "resources: []" for a graph that manages nothing, or list resources below it');
    return done();
  }
  if (isEmpty(list)) return done();
  if (!Array.isArray(list)) {
    fail('"resources" must be a list', doc.locateValue(['resources']), 'write each resource as a list item starting with "- kind: ..."');
    return done();
  }
  const out = { resources, edges };
  list.forEach((item: unknown, i) => {
    if (!isMap(item)) {
      fail('each resource must be a map with kind and name', doc.locate(['resources', i]), 'e.g. "- kind: file" then "name: /etc/motd" on the next line');
      return;
    }
    const params: Record<string, unknown> = {};
    // for-in, not Object.keys: no array of keys made for each of 100,000 resources (8 MB at 100,000 files; a parsed
    // map has no inherited keys, and a `__proto__` key is its own property, kept so by setParam).
    for (const key in item) if (!RESERVED.has(key)) setParam(params, key, item[key]);
    readItem(doc.locate, item, params, i, out, (msg, where, hint) => fail(msg, typeof where === 'function' ? where() : doc.locate(where), hint));
  });
  return done();
}

/**
 * Resource `i` of the list: `item` holds the values of its RESERVED keys (kind, name, meta, export, relations),
 * `params` the others. Shared by readNativeGraph and readFastNativeGraph, so both read an item alike by construction.
 */
function readItem(
  locate: Locate,
  item: Readonly<Record<string, unknown>>,
  params: Record<string, unknown>,
  i: number,
  out: { readonly resources: RawResource[]; readonly edges: RawEdge[] },
  // Where the problem is: a path from the root, made only when there is one (no closure per resource read).
  fail: (msg: string, where: readonly PropertyKey[] | (() => SourceLocation), hint: string) => void,
): void {
  const kind = scalarString(item['kind']);
  const name = scalarString(item['name']);
  if (kind === undefined) {
    fail('resource has no "kind"', ['resources', i], 'add e.g. "kind: file"; `backplane kinds` lists them');
    return;
  }
  if (name === undefined || name === '') {
    fail(`${kind} resource has no "name"`, ['resources', i], 'add a name, unique among resources of its kind');
    return;
  }
  const exportTo = exportTarget(item['export']);
  if (exportTo === 'invalid') {
    fail('"export" must be true, "*", a host name or a list of host names', ['resources', i, 'export'], 'e.g. export: true (to every host) or export: [web1, web2]');
    return;
  }
  out.resources.push(nativeResource(kind, name, params, item['meta'] ?? undefined, exportTo, locate, i));
  for (const rel of RELATION_KEYS) {
    if (!isEmpty(item[rel])) {
      readRelations(locate, item, kind, name, i, out.edges, fail);
      return;
    }
  }
}

/**
 * The edges of resource `i`'s relation keys. Apart from readItem: the closures here would make every call of readItem
 * allocate a context for them, one object per resource read, most of which have no relations.
 */
function readRelations(
  locate: Locate,
  item: Readonly<Record<string, unknown>>,
  kind: string,
  name: string,
  i: number,
  edges: RawEdge[],
  fail: (msg: string, where: readonly PropertyKey[] | (() => SourceLocation), hint: string) => void,
): void {
  const self = `${kind}[${name}]`;
  for (const rel of RELATION_KEYS) {
    const value = item[rel];
    if (isEmpty(value)) continue;
    const refs: [unknown, At][] = Array.isArray(value)
      ? value.map((ref: unknown, j) => [ref, locator(locate, ['resources', i, rel, j])])
      : [[value, locator(locate, ['resources', i, rel])]];
    for (const [ref, where] of refs) {
      if (typeof ref !== 'string') {
        fail(`"${rel}" entries must be resource references`, where, 'write kind[name] or kind:name, e.g. file[/etc/motd]');
        continue;
      }
      edges.push(relationEdge(rel, self, ref, where));
    }
  }
}

/**
 * readNativeGraph(parseYamlDocument(file, text)) for the graphs the fast YAML reader reads whole, made as the text is
 * read (readFastYamlList): no mapping per resource and no list of them, which at 100,000 resources were ~15 MB the
 * young-generation collections copied and promoted (measured: see the commit). Undefined for any other text,
 * including every one with a problem to report: those take the general path, which reports it.
 */
export function readFastNativeGraph(file: string, text: string): RawGraph | undefined {
  const places = yamlPlaces(file, text);
  const resources: RawResource[] = [];
  const edges: RawEdge[] = [];
  const out = { resources, edges };
  let failed = false;
  const fail = (): void => {
    failed = true;
  };
  // What unquoteModes would put back: resources whose own mode YAML read as a number.
  const numericModes: number[] = [];
  // RESERVED's keys, each set back to undefined after an item by name: a loop over the keys was ~5 ms at 100,000.
  const fields: Record<string, unknown> = { kind: undefined, name: undefined, meta: undefined, export: undefined, require: undefined, before: undefined, notify: undefined, subscribe: undefined };
  const read = readFastYamlList(text, {
    key: 'resources',
    fields,
    item: (i, params) => {
      readItem(places.locate, fields, params, i, out, fail);
      if (typeof params['mode'] === 'number') numericModes.push(i);
      fields['kind'] = fields['name'] = fields['meta'] = fields['export'] = undefined;
      fields['require'] = fields['before'] = fields['notify'] = fields['subscribe'] = undefined;
      return !failed;
    },
  });
  if (read === undefined) return undefined;
  // Any other top-level key is an error the general path reports; collect rules are read as it reads them.
  const collect: CollectRule[] = [];
  for (const key in read.rest) if (key !== 'collect') return undefined;
  const doc: GraphDocument = { file, data: undefined, locate: places.locate, locateValue: places.locateValue };
  readCollect(doc, read.rest['collect'], collect, fail);
  if (failed) return undefined;
  // As unquoteModes (src/frontends/document.ts), in its order: the resources' own modes, then the collect rules'.
  for (const i of numericModes) {
    const params = (resources[i] as RawResource).params;
    const value = params['mode'] as number;
    params['mode'] = places.modeText(['resources', i, 'mode'], value) ?? value;
  }
  const rules = read.rest['collect'];
  if (Array.isArray(rules)) {
    for (let i = 0; i < rules.length; i++) {
      const set: unknown = isMap(rules[i]) ? (rules[i] as Record<string, unknown>)['set'] : undefined;
      if (isMap(set) && typeof set['mode'] === 'number') set['mode'] = places.modeText(['collect', i, 'set', 'mode'], set['mode']) ?? set['mode'];
    }
  }
  return { source: file, resources, edges, errors: [], collect };
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

function exportTarget(v: unknown): ExportTarget | undefined | 'invalid' {
  if (v === undefined || v === null || v === false) return undefined;
  if (v === true || v === '*') return '*';
  if (typeof v === 'string' && v !== '') return [v];
  if (Array.isArray(v) && v.length > 0 && v.every((h) => typeof h === 'string' && h !== '')) return v as string[];
  return 'invalid';
}

const COLLECT_KEYS = ['kind', 'from', 'set', 'take'];

function readCollect(doc: GraphDocument, value: unknown, out: CollectRule[], fail: (msg: string, where: SourceLocation, hint: string) => void): void {
  if (isEmpty(value)) return;
  if (!Array.isArray(value)) {
    fail('"collect" must be a list', doc.locateValue(['collect']), 'e.g. collect: [{ kind: file, set: { path: "/srv/in/{basename}" } }]');
    return;
  }
  value.forEach((rule: unknown, i) => {
    const at = (...rest: PropertyKey[]): SourceLocation => doc.locate(['collect', i, ...rest]);
    if (!isMap(rule) || typeof rule['kind'] !== 'string') {
      fail('each collect rule needs a "kind"', at(), 'e.g. { kind: file }');
      return;
    }
    for (const key of Object.keys(rule)) {
      if (!COLLECT_KEYS.includes(key)) fail(`unknown collect key "${key}"`, at(key), `allowed: ${COLLECT_KEYS.join(', ')}`);
    }
    const from = rule['from'] === undefined || rule['from'] === '*' ? '*' : exportTarget(rule['from']);
    if (from === undefined || from === 'invalid') {
      fail('"from" must be a host name or a list of host names', at('from'), 'leave it out to collect from every host');
      return;
    }
    const set = rule['set'] ?? {};
    if (!isMap(set)) {
      fail('"set" must be a map of parameters', at('set'), 'e.g. set: { path: "/srv/in/{basename}" }');
      return;
    }
    const take = rule['take'];
    if (take !== undefined && take !== null && !(Array.isArray(take) && take.every((t) => typeof t === 'string' && t !== ''))) {
      fail('"take" must be a list of parameter names', at('take'), 'e.g. take: [content, mode]; leave it out to take the parameters that give no power');
      return;
    }
    out.push({ kind: rule['kind'], from, set, take: Array.isArray(take) ? (take as string[]) : undefined, loc: at() });
  });
}

function scalarString(v: unknown): string | undefined {
  return typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean' ? String(v) : undefined;
}
