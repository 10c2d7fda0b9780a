import { BackplaneError, type SourceLocation } from '../errors.js';
import type { RawEdge, RawGraph, RawResource } from '../graph/raw.js';
import { isEmpty, isMap, type GraphDocument } from './document.js';
import { locator, rawResource } from './raw-builders.js';

/**
 * mgmt's YAML graph format, so graphs written for mgmt run unchanged:
 *
 *   graph: mygraph
 *   resources:
 *     file:
 *     - name: file1
 *       path: /tmp/mgmt/f1
 *       content: "i am f1\n"
 *       state: exists
 *   edges:
 *   - name: e1
 *     from: { kind: file, name: file1 }
 *     to: { kind: file, name: file2 }
 *     notify: false
 *
 * mgmt's parameters are translated to ours per kind; fields mgmt writes out with their zero value (watchcmd: '',
 * pollint: 0, ...) are dropped rather than rejected.
 */
export function isMgmtGraph(doc: GraphDocument): boolean {
  const root = doc.data;
  if (!isMap(root)) return false;
  return 'graph' in root || isMap(root['resources']) || isMap(root['types']) || isMap(root['res']);
}

type Translate = (p: Record<string, unknown>, meta: Record<string, unknown>, name: string) => Record<string, unknown>;

const translators: Record<string, Translate> = {
  file: (p, _meta, name) => {
    const out: Record<string, unknown> = { ...p };
    // Old mgmt split a path into dirname + basename.
    if (out['path'] === undefined && typeof out['dirname'] === 'string') {
      out['path'] = `${String(out['dirname']).replace(/\/$/, '')}/${typeof out['basename'] === 'string' ? out['basename'] : ''}`;
    }
    // mgmt: the path defaults to the name (before the "/" rule below, so `name: /srv/www/` is a directory too).
    if (out['path'] === undefined || out['path'] === '') out['path'] = name;
    delete out['dirname'];
    delete out['basename'];
    // mgmt: a path ending in "/" is a directory.
    if (typeof out['path'] === 'string' && out['path'].length > 1 && out['path'].endsWith('/')) {
      out['path'] = out['path'].replace(/\/+$/, '');
      out['type'] = 'directory';
    }
    if (out['state'] === 'present' || out['state'] === '') out['state'] = 'exists';
    dropZero(out, ['recurse', 'fragments', 'source', 'owner', 'group', 'mode']);
    if (out['recurse'] === false) delete out['recurse'];
    return out;
  },
  exec: (p, meta) => {
    const out: Record<string, unknown> = {};
    const shell = typeof p['shell'] === 'string' ? p['shell'] : '';
    const cmd = p['cmd'];
    if (typeof cmd === 'string') {
      // mgmt runs a cmd without a shell by splitting it into words.
      if (shell === '') out['cmd'] = cmd.split(/\s+/).filter((w) => w !== '');
      else {
        out['cmd'] = cmd;
        out['shell'] = shell;
      }
    } else if (cmd !== undefined) out['cmd'] = cmd;
    if (typeof p['timeout'] === 'number' && p['timeout'] > 0) out['timeout'] = p['timeout'];
    const watchcmd = typeof p['watchcmd'] === 'string' ? p['watchcmd'] : '';
    if (watchcmd !== '') {
      const wshell = typeof p['watchshell'] === 'string' ? p['watchshell'] : '';
      out['watch'] = { cmd: wshell === '' ? watchcmd.split(/\s+/).filter((w) => w !== '') : watchcmd };
    }
    const ifcmd = typeof p['ifcmd'] === 'string' ? p['ifcmd'] : '';
    if (ifcmd !== '') {
      const ishell = typeof p['ifshell'] === 'string' ? p['ifshell'] : '';
      // A guard string always runs in the shell; without ifshell mgmt splits words, so pass an argv.
      out['onlyif'] = ishell === '' ? ifcmd.split(/\s+/).filter((w) => w !== '') : ifcmd;
    }
    if (typeof p['pollint'] === 'number' && p['pollint'] > 0 && meta['poll'] === undefined) meta['poll'] = p['pollint'];
    for (const key of Object.keys(p)) {
      if (!['cmd', 'shell', 'timeout', 'watchcmd', 'watchshell', 'ifcmd', 'ifshell', 'pollint', 'state', 'cwd', 'env'].includes(key)) {
        out[key] = p[key]; // unknown to us: let the schema report it with its line
      }
    }
    if (typeof p['cwd'] === 'string' && p['cwd'] !== '') out['cwd'] = p['cwd'];
    if (p['env'] !== undefined && p['env'] !== null) out['env'] = p['env'];
    return out;
  },
  noop: (p) => {
    const out = { ...p };
    delete out['comment'];
    return out;
  },
  print: (p) => p,
  timer: (p) => p,
};

/** mgmt metaparams we have no equivalent for yet; accepted and ignored so mgmt graphs still load. */
const IGNORED_META = new Set(['autogroup', 'limit', 'burst', 'rewatch', 'realize', 'reverse', 'hidden', 'export', 'dollar', 'rate']);

function translateMeta(m: unknown): Record<string, unknown> {
  if (m === null || typeof m !== 'object' || Array.isArray(m)) return {};
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(m as Record<string, unknown>)) {
    if (IGNORED_META.has(k)) continue;
    // mgmt's delay is in milliseconds; ours is seconds or a string with a unit.
    if (k === 'delay' && typeof v === 'number') out[k] = `${v}ms`;
    else out[k] = v;
  }
  return out;
}

function dropZero(o: Record<string, unknown>, keys: readonly string[]): void {
  for (const k of keys) if (o[k] === '' || o[k] === null) delete o[k];
}

export function readMgmtGraph(doc: GraphDocument): RawGraph {
  const errors: BackplaneError[] = [];
  const resources: RawResource[] = [];
  const edges: RawEdge[] = [];
  const root = isMap(doc.data) ? doc.data : {};
  const fail = (msg: string, where: SourceLocation, hint: string): void => {
    errors.push(new BackplaneError('E_SCHEMA', msg, { where, hint }));
  };
  for (const key of Object.keys(root)) {
    if (!['graph', 'resources', 'types', 'res', 'edges', 'comment', 'hostname', 'remote', 'collect'].includes(key))
      fail(`unknown top-level key "${key}" in an mgmt graph`, doc.locate([key]), 'mgmt graphs have graph, resources and edges');
  }
  // The first mgmt releases (and its announcement's examples) called the resources map `types`, later `res`.
  const kindsKey = ['resources', 'types', 'res'].find((k) => isMap(root[k]));
  const kinds = kindsKey === undefined ? undefined : root[kindsKey];
  if (kindsKey !== undefined && isMap(kinds)) {
    for (const [kind, list] of Object.entries(kinds)) {
      if (isEmpty(list)) continue;
      if (!Array.isArray(list)) {
        fail(`resources.${kind} must be a list`, doc.locateValue([kindsKey, kind]), 'list each resource under its kind with "- name: ..."');
        continue;
      }
      list.forEach((item: unknown, i) => {
        const at = locator(doc.locate, [kindsKey, kind, i]);
        if (!isMap(item)) {
          fail(`each ${kind} resource must be a map`, at(), 'e.g. "- name: file1"');
          return;
        }
        const nameVal = item['name'];
        if (!isRefName(nameVal) || nameVal === '') {
          fail(`${kind} resource has no "name"`, at(), 'add a name, unique among resources of its kind');
          return;
        }
        const name = String(nameVal);
        const p: Record<string, unknown> = {};
        for (const [k, v] of Object.entries(item)) if (k !== 'name' && k !== 'meta' && k !== 'kind') p[k] = v;
        const meta = translateMeta(item['meta']);
        const translate = translators[kind];
        const params = translate === undefined ? p : translate(p, meta, name);
        resources.push(rawResource({ kind, name, params, meta }, at));
      });
    }
  }
  const edgeList = root['edges'];
  if (Array.isArray(edgeList)) {
    edgeList.forEach((e: unknown, i) => {
      const where = locator(doc.locate, ['edges', i]);
      const v = isMap(e) ? (e as { from?: MgmtEndpoint; to?: MgmtEndpoint; notify?: unknown }) : undefined;
      const from = endpoint(v?.from);
      const to = endpoint(v?.to);
      if (typeof from?.kind !== 'string' || !isRefName(from.name) || typeof to?.kind !== 'string' || !isRefName(to.name)) {
        fail('an edge needs from: {kind, name} and to: {kind, name}', where(), "see mgmt's edge format in the README");
        return;
      }
      edges.push({
        from: `${from.kind}[${String(from.name)}]`,
        to: `${to.kind}[${String(to.name)}]`,
        notify: v?.notify === true || v?.notify === 'true',
        get loc() {
          return where();
        },
      });
    });
  } else if (!isEmpty(edgeList)) {
    fail('"edges" must be a list', doc.locateValue(['edges']), 'list edges with "- name: e1"');
  }
  return { source: doc.file, resources, edges, errors };
}

interface MgmtEndpoint {
  kind?: unknown;
  res?: unknown;
  type?: unknown;
  name?: unknown;
}

/** mgmt named an edge end's kind `type` (2016), then `res`, then `kind`: accept all three. */
function endpoint(e: MgmtEndpoint | undefined): { kind?: unknown; name?: unknown } | undefined {
  if (e === undefined || e === null || typeof e !== 'object') return undefined;
  return { kind: e.kind ?? e.res ?? e.type, name: e.name };
}

function isRefName(v: unknown): v is string | number {
  return typeof v === 'string' || typeof v === 'number';
}
