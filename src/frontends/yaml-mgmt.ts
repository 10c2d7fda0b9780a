import { BackplaneError, type SourceLocation } from '../errors.js';
import { setParam, type CollectRule, type RawEdge, type RawGraph, type RawResource } from '../graph/raw.js';
import { isEmpty, isMap, type GraphDocument } from './document.js';
import { locator, rawResource } from './raw-builders.js';

/**
 * mgmt's YAML graph format, so graphs written for mgmt run as mgmt would run them:
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
 * pollint: 0, ...) are dropped rather than rejected. Whatever has no faithful translation (a graph meant for another
 * host, a systemd unit, a kind needing machinery we lack, a package state we cannot honour) is refused by name with
 * what to use instead: a graph that loads must never do something other than what it says.
 */
export function isMgmtGraph(doc: GraphDocument): boolean {
  const root = doc.data;
  if (!isMap(root)) return false;
  return 'graph' in root || isMap(root['resources']) || isMap(root['types']) || isMap(root['res']);
}

/** Refuse a parameter (by its mgmt key, for the location) that has no faithful translation. */
type Refuse = (key: string, message: string, hint: string) => void;
/** Returns the translated parameters, or undefined when the whole resource was refused (nothing more to report). */
type Translate = (p: Record<string, unknown>, meta: Record<string, unknown>, name: string, refuse: Refuse) => Record<string, unknown> | undefined;

/**
 * mgmt kinds that need machinery Backplane does not have. Left to the generic "unknown kind" error they would get a
 * did-you-mean guess at one of ours, which would suggest something that does a different thing.
 */
const REFUSED_KINDS: Readonly<Record<string, string>> = {
  virt: 'libvirt virtual machines: manage them with an exec of virsh, or outside Backplane',
  nspawn: 'systemd-nspawn containers need systemd, which Backplane does not use; supervise the container with a svc (cmd: [systemd-nspawn, ...]) instead',
  augeas: 'Augeas edits need libaugeas; write the whole file with a file or template resource instead',
  'aws:ec2': 'AWS EC2 instances need the AWS API; create them outside Backplane',
  password: "mgmt's password generates a secret in its cluster store; Backplane has no secret store: provide the secret as a file",
  docker: 'Docker needs the Docker API; supervise the container with a svc (cmd: [docker, run, ...]) instead',
  'docker:container': 'Docker needs the Docker API; supervise the container with a svc (cmd: [docker, run, ...]) instead',
  'consul:kv': 'Consul is not a store Backplane talks to',
};

/** mgmt's pkg fields that are PackageKit policy; false is apt's own behaviour, true has no apt equivalent we honour. */
const PACKAGEKIT_FLAGS = ['allowuntrusted', 'allownonfree', 'allowunsupported'];

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
        setParam(out, key, p[key]); // unknown to us: let the schema report it with its line
      }
    }
    if (typeof p['cwd'] === 'string' && p['cwd'] !== '') out['cwd'] = p['cwd'];
    if (p['env'] !== undefined && p['env'] !== null) out['env'] = p['env'];
    return out;
  },
  // mgmt's kv is one cluster-wide namespace; ours is the host's own (kv/<host>/<key>, signed): the same key set by
  // two hosts is two values, which `backplane cluster kv` lists side by side.
  kv: (p, _meta, name, refuse) => {
    const out: Record<string, unknown> = { key: typeof p['key'] === 'string' && p['key'] !== '' ? p['key'] : name };
    // mgmt: a nil value means the key is unset.
    if (p['value'] === undefined || p['value'] === null) out['state'] = 'absent';
    else if (typeof p['value'] === 'string' || typeof p['value'] === 'number' || typeof p['value'] === 'boolean') out['value'] = String(p['value']);
    else out['value'] = p['value']; // not a scalar: the schema reports it at its line
    if (p['skiplessthan'] === true) {
      refuse('skiplessthan', "mgmt's kv skiplessthan (only write a value greater than the stored one) is not supported", 'leave it out: the value is always written as given');
    }
    for (const key of Object.keys(p)) if (!['key', 'value', 'skiplessthan', 'skipcmpstyle'].includes(key)) setParam(out, key, p[key]);
    return out;
  },
  noop: (p) => {
    const out = { ...p };
    delete out['comment'];
    return out;
  },
  pkg: (p, _meta, _name, refuse) => {
    const out: Record<string, unknown> = { ...p };
    // mgmt's states are words; ours are "installed", "absent" or a version, and a word left as it is would be read
    // as a version string ("newest" is a valid Debian version).
    const state = out['state'];
    if (state === 'uninstalled') out['state'] = 'absent';
    else if (state === 'newest') {
      refuse(
        'state',
        'mgmt\'s pkg state "newest" (keep the package upgraded to the newest version) is not supported',
        'use state: installed (any version) or an exact version, e.g. state: "1.22.1-9"',
      );
      delete out['state'];
    } else if (state === '' || state === null) delete out['state'];
    for (const flag of PACKAGEKIT_FLAGS) {
      if (out[flag] === false || out[flag] === null) delete out[flag];
      else if (out[flag] !== undefined) {
        refuse(flag, `mgmt's pkg ${flag} (a PackageKit policy) is not supported`, "leave it out: apt-get's own trust and component rules apply");
        delete out[flag]; // reported once, not again as an unknown parameter
      }
    }
    return out;
  },
  svc: (_p, _meta, name, refuse) => {
    // mgmt's svc is a systemd unit; ours is a process the agent supervises. Translating one into the other would
    // need a command we do not have; without this the user gets a confusing "cmd is required" instead.
    refuse(
      'name',
      `mgmt's svc "${name}" manages a systemd unit; Backplane's svc supervises a process itself and has no systemd`,
      'write the service as a Backplane svc with cmd: [the daemon, its arguments] in the native format, or run "systemctl" from an exec',
    );
    return undefined;
  },
  msg: (p, _meta, _name, refuse) => {
    const out: Record<string, unknown> = { ...p };
    for (const key of ['journal', 'syslog']) {
      if (out[key] === false || out[key] === null) delete out[key];
      else if (out[key] !== undefined) {
        refuse(key, `mgmt's msg ${key}: true is not supported`, "leave it out: the message goes to the agent's log; run the agent under journald or syslog to have it there");
        delete out[key];
      }
    }
    if (out['fields'] === null || (isMap(out['fields']) && Object.keys(out['fields']).length === 0)) delete out['fields'];
    if (out['priority'] === '' || out['priority'] === null) delete out['priority'];
    // mgmt spells priorities capitalised ("Warning"), ours are syslog's lower-case names.
    else if (typeof out['priority'] === 'string') out['priority'] = out['priority'].toLowerCase();
    return out;
  },
  hostname: (p, _meta, _name, refuse) => {
    const out: Record<string, unknown> = {};
    const host = typeof p['hostname'] === 'string' && p['hostname'] !== '' ? p['hostname'] : undefined;
    for (const key of ['statichostname', 'transienthostname']) {
      const v = p[key];
      if (v === undefined || v === null || v === '' || v === host) continue;
      if (host !== undefined || typeof v !== 'string')
        refuse(key, `mgmt's hostname ${key} different from hostname is not supported`, 'Backplane sets the static and the running hostname together: give one hostname');
    }
    const chosen = host ?? [p['statichostname'], p['transienthostname']].find((v) => typeof v === 'string' && v !== '');
    if (chosen !== undefined) out['hostname'] = chosen;
    const pretty = p['prettyhostname'];
    if (pretty !== undefined && pretty !== null && pretty !== '')
      refuse('prettyhostname', "mgmt's hostname prettyhostname is not supported", 'write PRETTY_HOSTNAME into /etc/machine-info with a file resource');
    for (const [k, v] of Object.entries(p)) {
      if (!['hostname', 'statichostname', 'transienthostname', 'prettyhostname'].includes(k)) setParam(out, k, v);
    }
    return out;
  },
  print: (p) => p,
  timer: (p) => p,
};

/**
 * mgmt metaparams whose every value runs the same here: autogroup (apt work is batched anyway), rewatch (our
 * watches always restart), realize (a swap never drops a resource's run in progress), dollar (names are not
 * interpolated here).
 */
const IGNORED_META = new Set(['autogroup', 'rewatch', 'realize', 'dollar']);

/** mgmt metaparams with no equivalent: accepted at their zero value only, refused otherwise. */
const REFUSED_META: Readonly<Record<string, { zero: (v: unknown) => boolean; message: string; hint: string }>> = {
  reverse: {
    zero: (v) => v === false || v === null,
    message: "mgmt's reverse metaparam (undo a resource when it leaves the graph) is not supported",
    hint: 'declare the undoing yourself, e.g. keep the resource with state: absent',
  },
  hidden: {
    zero: (v) => v === false || v === null,
    message: "mgmt's hidden metaparam is not supported",
    hint: 'to publish a resource without managing it here, export it: prefix its name with @@',
  },
  export: {
    zero: (v) => v === null || (Array.isArray(v) && v.length === 0),
    message: "mgmt's export metaparam (manage here and also export) is not supported",
    hint: 'prefix the name with @@ to export to every host (then it is not managed here), or use the native format\'s export: [hosts]',
  },
};

function translateMeta(m: unknown, refuse: Refuse): Record<string, unknown> {
  if (m === null || typeof m !== 'object' || Array.isArray(m)) return {};
  const out: Record<string, unknown> = {};
  const given = m as Record<string, unknown>;
  // mgmt's default limit is +Inf ("no limit", where its burst means nothing); we leave both out then.
  const unlimited = given['limit'] === undefined || given['limit'] === Number.POSITIVE_INFINITY;
  for (const [k, v] of Object.entries(given)) {
    if (IGNORED_META.has(k)) continue;
    const refused = REFUSED_META[k];
    if (refused !== undefined) {
      if (!refused.zero(v)) refuse(`meta.${k}`, refused.message, refused.hint);
      continue;
    }
    if ((k === 'limit' || k === 'burst') && unlimited) continue;
    // mgmt's delay is in milliseconds; ours is seconds or a string with a unit.
    if (k === 'delay' && typeof v === 'number') out[k] = `${v}ms`;
    else setParam(out, k, v);
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
  // Both say the graph is meant for some other host; applying it here instead would be the worst translation.
  if (!isEmpty(root['remote']) && root['remote'] !== '')
    fail(
      "mgmt's remote (apply this graph on another host over SSH) is not supported",
      doc.locate(['remote']),
      'run backplane on that host with this graph, or export the resources to it (prefix their names with @@ and collect them there)',
    );
  if (!isEmpty(root['hostname']) && root['hostname'] !== '')
    fail(
      "mgmt's top-level hostname is not supported: Backplane applies a graph on the host that runs it",
      doc.locate(['hostname']),
      'remove it and run this graph on that host (its name in the cluster is set with --hostname)',
    );
  // The first mgmt releases (and its announcement's examples) called the resources map `types`, later `res`.
  const kindsKey = ['resources', 'types', 'res'].find((k) => isMap(root[k]));
  const kinds = kindsKey === undefined ? undefined : root[kindsKey];
  if (kindsKey !== undefined && isMap(kinds)) {
    for (const [kind, list] of Object.entries(kinds)) {
      if (isEmpty(list)) continue;
      const refusedKind = REFUSED_KINDS[kind];
      if (refusedKind !== undefined) {
        fail(`mgmt's ${kind} resources are not supported`, doc.locate([kindsKey, kind]), refusedKind);
        continue;
      }
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
        let name = String(nameVal);
        // mgmt exports a resource whose name starts with "@@" (to every host, under the name without it) instead of
        // managing it here: exactly our `export: true`.
        const exported = name.startsWith('@@');
        if (exported) name = name.slice(2);
        if (name === '') {
          fail(`${kind} resource "@@" has no name after the @@`, at('name'), 'e.g. name: "@@file1"');
          return;
        }
        const p: Record<string, unknown> = {};
        for (const [k, v] of Object.entries(item)) if (k !== 'name' && k !== 'meta' && k !== 'kind') setParam(p, k, v);
        const refuse: Refuse = (key, message, hint) => fail(message, key.startsWith('meta.') ? at('meta', key.slice(5)) : at(key), hint);
        const meta = translateMeta(item['meta'], refuse);
        const translate = translators[kind];
        const params = translate === undefined ? p : translate(p, meta, name, refuse);
        if (params === undefined) return;
        resources.push(rawResource({ kind, name, params, meta, ...(exported ? { export: '*' as const } : {}) }, doc.locate, [kindsKey, kind, i]));
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
  const collect = readMgmtCollect(doc, root['collect'], fail);
  return { source: doc.file, resources, edges, errors, ...(collect.length > 0 ? { collect } : {}) };
}

/**
 * mgmt's `collect: [{kind, pattern}]` takes every host's exports of that kind, this host's included. A pattern
 * applies only to files, where it replaces the exported file's directory. A file collected without a pattern would
 * be written wherever the exporting host chose, as root, so that is refused rather than translated.
 */
function readMgmtCollect(doc: GraphDocument, value: unknown, fail: (msg: string, where: SourceLocation, hint: string) => void): CollectRule[] {
  const out: CollectRule[] = [];
  if (isEmpty(value)) return out;
  if (!Array.isArray(value)) {
    fail('"collect" must be a list', doc.locateValue(['collect']), 'e.g. collect: [{ kind: file, pattern: /srv/collected/ }]');
    return out;
  }
  value.forEach((rule: unknown, i) => {
    const at = (...rest: PropertyKey[]): SourceLocation => doc.locate(['collect', i, ...rest]);
    if (!isMap(rule) || typeof rule['kind'] !== 'string' || rule['kind'] === '') {
      fail('each collect entry needs a "kind"', at(), 'e.g. { kind: file, pattern: /srv/collected/ }');
      return;
    }
    for (const key of Object.keys(rule)) {
      if (key !== 'kind' && key !== 'pattern')
        fail(`unknown key "${key}" in an mgmt collect entry`, at(key), "mgmt's collect entries have kind and pattern; Backplane's set/take need the native format");
    }
    const kind = rule['kind'].toLowerCase(); // mgmt lower-cases the kind
    const pattern = rule['pattern'];
    const hasPattern = typeof pattern === 'string' && pattern !== '';
    if (kind === 'file') {
      if (!hasPattern) {
        fail(
          'collecting mgmt files without a pattern would let any host choose where root writes on this one',
          at(),
          'give a pattern (the directory collected files go into), e.g. pattern: /srv/collected/',
        );
        return;
      }
      // mgmt's pattern replaces the file's directory and keeps its base name.
      out.push({ kind, from: '*', set: { path: `${pattern.replace(/\/+$/, '')}/{basename}` }, take: undefined, loc: at() });
      return;
    }
    if (pattern !== undefined && pattern !== null && pattern !== '')
      fail(`a collect pattern only applies to files, not to ${kind}`, at('pattern'), 'remove the pattern');
    out.push({ kind, from: '*', set: {}, take: undefined, loc: at() });
  });
  return out;
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
