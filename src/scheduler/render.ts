import { BackplaneError, ValidationErrors, type SourceLocation } from '../errors.js';
import { pathText } from '../frontends/limits.js';
import type { RawEdge, RawResource } from '../graph/raw.js';
import { resourceId } from '../graph/ids.js';
import type { HostFacts } from '../resources/types.js';
import { closest } from '../util/suggest.js';
import type { Alloc, ServiceSpec } from './types.js';

/**
 * One instance of a service, rendered into graph resources for the agent that runs it: the task becomes a `svc`
 * named after the alloc id, each `files` entry a resource of its kind, with notify edges from the files to the svc
 * (a changed config file restarts the instance, as a changed nginx.conf would with a hand-written graph).
 *
 * Per-instance values are written `{{ instance.port.http }}` in any string of the spec. This is a small exact
 * substitution, not Liquid: a spec string is a value (an argv element, a path, a URL), and a value should not be
 * able to loop or branch; every `{{ a.b.c }}` must name a known value or the spec is refused, so a typo is an error
 * at deploy time and never an empty string on a host. A literal `{{` is written `{{ "{{" }}`.
 *
 * The one exception is a `template` resource's `template` text: it is Liquid already, rendered by the template kind
 * on the host, so it is left alone and gets the values as Liquid variables instead: `{{ vars.instance.port.http }}`,
 * `{{ vars.service.name }}`, `{{ vars.host.labels.zone }}` (and the host's facts as `{{ facts.ipv4 }}`, as in any
 * template). Substituting into Liquid source would let a host label's value become template code.
 */

export interface InstanceHost {
  readonly name: string;
  readonly facts: HostFacts;
  readonly labels: Readonly<Record<string, string>>;
}

export interface RenderOptions {
  /** The agent's heartbeat fence (see /tmp/design.md "Fence"): the svc kind kills the instance when it goes stale. */
  readonly fence?: { readonly heartbeat: string; readonly maxAgeMs: number };
  /** The agent's instance API (src/api/instance-api.ts): BACKPLANE_API and BACKPLANE_TOKEN in the instance's env. */
  readonly api?: InstanceApiEnv;
}

/** Where an instance reaches its agent's instance API, and its token there (scoped to its alloc). */
export interface InstanceApiEnv {
  readonly url: string;
  readonly token: string;
}

export interface RenderedInstance {
  readonly resources: RawResource[];
  readonly edges: RawEdge[];
}

/**
 * Where something in the spec is, by its path as the operator wrote it (`files[0].content`, `run.cmd[2]`): the key's
 * position, or with `value` the value's own (for "this value is wrong" errors).
 */
export type SpecLocator = (path: readonly PropertyKey[], value?: boolean) => SourceLocation;

/** Values in a template's `vars` that the scheduler sets; a spec may not declare them itself. */
export const RESERVED_TEMPLATE_VARS = ['instance', 'service', 'host'] as const;
/** Environment the scheduler sets for every instance (plus PORT_<NAME>). */
export const RESERVED_ENV = ['INSTANCE_INDEX', 'INSTANCE_ID', 'SERVICE_NAME', 'SERVICE_VERSION', 'BACKPLANE_API', 'BACKPLANE_TOKEN'] as const;

/**
 * Kinds whose change means the instance must restart to see it (a config file, a package, a user it runs as).
 * Checks (http, tcp), messages and a sidecar svc change nothing the instance reads, so they only run beside it.
 */
const NOTIFY_KINDS = new Set(['file', 'template', 'pkg', 'exec', 'user', 'group']);

export function portEnvName(port: string): string {
  return `PORT_${port.toUpperCase().replace(/-/g, '_')}`;
}

/** The id every error and log line about this instance's resources carries. */
export function instanceLabel(service: string, allocId: string): string {
  return `service ${service} (alloc ${allocId})`;
}

/**
 * Renders one alloc of `spec` for `host`. Throws ValidationErrors when a string names a value this instance does
 * not have (a host label the host lacks, a port the alloc was not given): the agent reports the alloc failed.
 */
export function renderInstance(spec: ServiceSpec, alloc: Alloc, host: InstanceHost, opts: RenderOptions = {}): RenderedInstance {
  const label = instanceLabel(spec.name, alloc.id);
  const at: SpecLocator = (path) => ({ file: path.length === 0 ? label : `${label}: ${pathText(path)}`, line: 0, col: 0 });
  return renderWith(spec, alloc, host, opts, at, false);
}

/**
 * The renderer itself. `lenient` is for the deploy-time check with placeholder values (spec.ts): any host label and
 * any network interface fact resolve, since which host an instance lands on is not known yet.
 */
export function renderWith(spec: ServiceSpec, alloc: Alloc, host: InstanceHost, opts: RenderOptions, at: SpecLocator, lenient: boolean): RenderedInstance {
  const errors: BackplaneError[] = [];
  const scope = new Scope(spec, alloc, host, lenient);
  const str = (s: string, path: readonly PropertyKey[]): string => {
    const out = substitute(s, scope);
    if (typeof out === 'string') return out;
    errors.push(new BackplaneError('E_SCHEMA', out.error, { where: at(path, true), hint: out.hint }));
    return s;
  };
  const deep = (v: unknown, path: readonly PropertyKey[], skip: (p: readonly PropertyKey[]) => boolean): unknown => {
    if (skip(path)) return v;
    if (typeof v === 'string') return str(v, path);
    if (Array.isArray(v)) return v.map((x: unknown, i) => deep(x, [...path, i], skip));
    if (v !== null && typeof v === 'object') {
      const out: Record<string, unknown> = {};
      for (const [k, x] of Object.entries(v)) out[k] = deep(x, [...path, k], skip);
      return out;
    }
    return v;
  };
  const never = (): boolean => false;

  // ---- the task: one svc named after the alloc
  const t = spec.task;
  const env = taskEnv(spec, alloc, str, errors, at, opts.api);
  const ms = (n: number): string => `${n}ms`;
  const params: Record<string, unknown> = {
    cmd: t.cmd.map((c, i) => str(c, ['run', 'cmd', i])),
    env,
    restart: 'always',
    // The svc kind's crash loop is the restart policy: `attempts` restarts in `interval`, the next failure is final
    // and the controller reschedules the instance elsewhere.
    crashLoop: { failures: spec.restart.attempts + 1, window: ms(spec.restart.intervalMs) },
    backoff: { initial: ms(spec.restart.delayMs) },
    limits: { cpu: spec.resources.cpu, memory: spec.resources.memory },
    // An agent restart (an upgrade) must not restart every instance it runs: the next agent adopts them.
    onAgentExit: 'keep',
  };
  Object.assign(params, taskIdentity(spec, str));
  if (t.stopSignal !== undefined) params['stopSignal'] = t.stopSignal;
  if (t.stopTimeoutMs !== undefined) params['stopTimeout'] = ms(t.stopTimeoutMs);
  const h = spec.health;
  if (h !== undefined) {
    const check: Record<string, unknown> = { interval: ms(h.intervalMs), timeout: ms(h.timeoutMs), failures: h.failures, startPeriod: ms(h.graceMs) };
    if (h.http !== undefined) check['http'] = str(h.http, ['health', 'http']);
    if (h.tcp !== undefined) check['tcp'] = str(h.tcp, ['health', 'tcp']);
    if (h.exec !== undefined) check['exec'] = h.exec.map((c, i) => str(c, ['health', 'exec', i]));
    params['health'] = check;
  }
  if (opts.fence !== undefined) {
    params['fence'] = { heartbeat: opts.fence.heartbeat, maxAge: ms(opts.fence.maxAgeMs) };
  }
  const svcName = alloc.id;
  const resources: RawResource[] = [svcResource(svcName, params, at)];
  const edges: RawEdge[] = [];
  const svcRef = resourceId('svc', svcName);

  // ---- the files
  spec.files.forEach((f, i) => {
    const base = ['files', i] as const;
    const name = str(f.name, [...base, 'name']);
    // A template's own text is Liquid, rendered on the host with the values as vars (see the top of this file).
    const skip = f.kind === 'template' ? (p: readonly PropertyKey[]): boolean => p.length === 3 && p[2] === 'template' : never;
    const params = deep(f.params, base, skip) as Record<string, unknown>;
    if (f.kind === 'template') {
      const vars = params['vars'] ?? {};
      if (vars !== null && typeof vars === 'object' && !Array.isArray(vars)) {
        for (const key of RESERVED_TEMPLATE_VARS) {
          if (Object.hasOwn(vars, key))
            errors.push(
              new BackplaneError('E_SCHEMA', `vars.${key} is set by the scheduler`, {
                where: at([...base, 'vars', key]),
                hint: `the template sees this instance's values as vars.${key}; rename your variable`,
              }),
            );
        }
        params['vars'] = { ...vars, ...scope.templateVars() };
      }
    }
    const meta = f.meta === undefined ? undefined : deep(f.meta, [...base, 'meta'], never);
    resources.push(fileResource(f.kind, name, params, meta, at, i));
    if (NOTIFY_KINDS.has(f.kind)) edges.push(notifyEdge(resourceId(f.kind, name), svcRef, at, i));
  });
  if (errors.length > 0) throw new ValidationErrors(errors);
  return { resources, edges };
}

type Str = (s: string, path: readonly PropertyKey[]) => string;

/**
 * The instance's environment: the task's env, then INSTANCE_INDEX, INSTANCE_ID, SERVICE_NAME, SERVICE_VERSION,
 * BACKPLANE_API and BACKPLANE_TOKEN (when the agent serves the instance API), PORT_<NAME>.
 */
function taskEnv(spec: ServiceSpec, alloc: Alloc, str: Str, errors: BackplaneError[], at: SpecLocator, api?: InstanceApiEnv): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(spec.task.env)) env[k] = str(v, ['run', 'env', k]);
  env['INSTANCE_INDEX'] = String(alloc.index);
  env['INSTANCE_ID'] = alloc.id;
  env['SERVICE_NAME'] = spec.name;
  env['SERVICE_VERSION'] = spec.version;
  if (api !== undefined) {
    env['BACKPLANE_API'] = api.url;
    env['BACKPLANE_TOKEN'] = api.token;
  }
  for (const p of spec.ports) {
    const n = alloc.ports[p.name];
    if (n === undefined) errors.push(new BackplaneError('E_SCHEMA', `the alloc has no port "${p.name}"`, { where: at(['ports']), hint: 'the controller assigns every declared port; this assignment is stale or broken' }));
    else env[portEnvName(p.name)] = String(n);
  }
  return env;
}

/** Where and as whom the task runs (each only when the spec says). */
function taskIdentity(spec: ServiceSpec, str: Str): { cwd?: string; user?: string | number; group?: string | number } {
  const t = spec.task;
  const out: { cwd?: string; user?: string | number; group?: string | number } = {};
  if (t.cwd !== undefined) out.cwd = str(t.cwd, ['run', 'cwd']);
  if (t.user !== undefined) out.user = typeof t.user === 'string' ? str(t.user, ['run', 'user']) : t.user;
  if (t.group !== undefined) out.group = typeof t.group === 'string' ? str(t.group, ['run', 'group']) : t.group;
  return out;
}

/** What a command run in an instance's context (a hook) gets: the svc's env, cwd, user and group, exactly as rendered for it. */
export interface InstanceContext {
  readonly env: Readonly<Record<string, string>>;
  readonly cwd?: string;
  readonly user?: string | number;
  readonly group?: string | number;
}

/**
 * The environment, cwd, user and group renderInstance gives the alloc's svc, for commands run beside it (hooks.ts).
 * Throws ValidationErrors as renderInstance does.
 */
export function instanceContext(spec: ServiceSpec, alloc: Alloc, host: InstanceHost, opts: Pick<RenderOptions, 'api'> = {}): InstanceContext {
  const label = instanceLabel(spec.name, alloc.id);
  const at: SpecLocator = (path) => ({ file: path.length === 0 ? label : `${label}: ${pathText(path)}`, line: 0, col: 0 });
  const errors: BackplaneError[] = [];
  const scope = new Scope(spec, alloc, host, false);
  const str: Str = (s, path) => {
    const out = substitute(s, scope);
    if (typeof out === 'string') return out;
    errors.push(new BackplaneError('E_SCHEMA', out.error, { where: at(path, true), hint: out.hint }));
    return s;
  };
  const env = taskEnv(spec, alloc, str, errors, at, opts.api);
  const id = taskIdentity(spec, str);
  if (errors.length > 0) throw new ValidationErrors(errors);
  return { env, ...id };
}

/** Where each svc parameter came from in the spec, so a deploy-time error about it points at the operator's line. */
function svcParamPath(p: readonly PropertyKey[]): PropertyKey[] {
  const [head, ...rest] = p;
  switch (head) {
    case 'cmd':
    case 'env':
    case 'cwd':
    case 'user':
    case 'group':
    case 'stopSignal':
    case 'stopTimeout':
      return ['run', head, ...rest];
    case 'limits':
      return ['resources', ...rest];
    case 'health':
      return ['health', ...(rest[0] === 'startPeriod' ? ['grace'] : rest)];
    case 'crashLoop':
    case 'backoff':
      return ['restart'];
    default:
      return [];
  }
}

// Made outside renderWith so their closures keep only what they need (see raw-builders.ts).
function svcResource(name: string, params: Record<string, unknown>, at: SpecLocator): RawResource {
  return {
    kind: 'svc',
    name,
    params,
    meta: undefined,
    get loc() {
      return at([]);
    },
    locate: (p) => at(svcParamPath(p)),
    locateMeta: () => at([]),
  };
}

function fileResource(kind: string, name: string, params: Record<string, unknown>, meta: unknown, at: SpecLocator, i: number): RawResource {
  return {
    kind,
    name,
    params,
    meta,
    get loc() {
      return at(['files', i]);
    },
    locate: (p) => at(['files', i, ...p]),
    locateMeta: (p) => at(['files', i, 'meta', ...p]),
  };
}

function notifyEdge(from: string, to: string, at: SpecLocator, i: number): RawEdge {
  return {
    from,
    to,
    notify: true,
    get loc() {
      return at(['files', i]);
    },
  };
}

// ---- substitution -------------------------------------------------------------------------------------------------

/** `{{ a.b.c }}` (a value) or `{{ "text" }}` (literal text, the way to write `{{`). */
const PLACEHOLDER = /\{\{\s*(?:"([^"]*)"|([A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*))\s*\}\}/g;

type Resolved = string | { readonly error: string; readonly hint: string };

/** Every `{{ ... }}` replaced, or the first one that names nothing. */
export function substitute(s: string, scope: Scope): Resolved {
  if (!s.includes('{{')) return s;
  let problem: { error: string; hint: string } | undefined;
  const out = s.replace(PLACEHOLDER, (whole, literal: string | undefined, path: string | undefined) => {
    if (literal !== undefined) return literal;
    const r = scope.resolve((path ?? '').split('.'));
    if (typeof r === 'string') return r;
    problem ??= { error: `${whole}: ${r.error}`, hint: r.hint };
    return whole;
  });
  return problem ?? out;
}

const ROOTS = ['instance', 'service', 'host'];
const PLACEHOLDER_VALUE = 'placeholder';

export class Scope {
  constructor(
    private readonly spec: ServiceSpec,
    private readonly alloc: Alloc,
    private readonly host: InstanceHost,
    private readonly lenient: boolean,
  ) {}

  /** What a template sees as vars.instance, vars.service and vars.host. */
  templateVars(): Record<string, unknown> {
    return {
      instance: { index: this.alloc.index, id: this.alloc.id, port: { ...this.alloc.ports } },
      service: { name: this.spec.name, version: this.spec.version },
      host: { name: this.host.name, labels: { ...this.host.labels } },
    };
  }

  resolve(segs: readonly string[]): Resolved {
    const [root, a, b, ...rest] = segs;
    const known = (what: string, names: readonly string[]): Resolved => ({
      error: `${what}`,
      hint: names.length === 0 ? 'see docs/services.md for the values a spec can use' : `known: ${names.join(', ')}`,
    });
    switch (root) {
      case 'instance': {
        if (a === 'index' && b === undefined) return String(this.alloc.index);
        if (a === 'id' && b === undefined) return this.alloc.id;
        if (a === 'port' && b !== undefined && rest.length === 0) {
          const n = this.alloc.ports[b];
          if (n !== undefined) return String(n);
          const names = this.spec.ports.map((p) => p.name);
          const guess = closest(b, names);
          return {
            error: `the service declares no port "${b}"`,
            hint: guess !== undefined ? `did you mean instance.port.${guess}?` : names.length === 0 ? 'declare it under ports:, e.g. ports: { http: {} }' : `ports: ${names.join(', ')}`,
          };
        }
        return known(`"${segs.join('.')}" is not an instance value`, ['instance.index', 'instance.id', 'instance.port.NAME']);
      }
      case 'service':
        if (a === 'name' && b === undefined) return this.spec.name;
        if (a === 'version' && b === undefined) return this.spec.version;
        return known(`"${segs.join('.')}" is not a service value`, ['service.name', 'service.version']);
      case 'host': {
        if (a === 'name' && b === undefined) return this.host.name;
        if (a === 'labels' && b !== undefined && rest.length === 0) {
          const v = this.host.labels[b];
          if (v !== undefined && Object.hasOwn(this.host.labels, b)) return v;
          if (this.lenient) return PLACEHOLDER_VALUE;
          return { error: `host ${this.host.name} has no label "${b}"`, hint: `give the host the label (--label ${b}=...) or constrain the service to hosts that have it` };
        }
        if (a === 'facts' && b !== undefined) return this.fact([b, ...rest]);
        return known(`"${segs.join('.')}" is not a host value`, ['host.name', 'host.labels.NAME', 'host.facts.ipv4', 'host.facts.hostname', 'host.facts.cpus']);
      }
      default: {
        const guess = closest(root ?? '', ROOTS);
        return {
          error: `unknown variable "${root ?? ''}"`,
          hint: `${guess === undefined ? '' : `did you mean ${guess}? `}a spec can use instance.*, service.* and host.*; write {{ "{{" }} for a literal {{`,
        };
      }
    }
  }

  private fact(path: readonly string[]): Resolved {
    let node: unknown = this.host.facts;
    for (const [i, seg] of path.entries()) {
      // Interfaces differ between hosts: at deploy time any name is taken, the host decides.
      if (this.lenient && i === 1 && path[0] === 'interfaces') return PLACEHOLDER_VALUE;
      if (node === null || typeof node !== 'object' || !Object.hasOwn(node, seg)) {
        const keys = node !== null && typeof node === 'object' ? Object.keys(node) : [];
        const guess = closest(seg, keys);
        return {
          error: `"host.facts.${path.slice(0, i + 1).join('.')}" is not a fact${this.lenient ? '' : ` of host ${this.host.name}`}`,
          hint: guess !== undefined ? `did you mean host.facts.${[...path.slice(0, i), guess].join('.')}?` : `facts: ${keys.join(', ')}`,
        };
      }
      node = (node as Record<string, unknown>)[seg];
    }
    if (typeof node === 'string' || typeof node === 'number' || typeof node === 'boolean') return String(node);
    const keys = node !== null && typeof node === 'object' ? Object.keys(node) : [];
    return { error: `"host.facts.${path.join('.')}" is not a single value`, hint: keys.length === 0 ? 'name a value inside it' : `name one inside it: ${keys.join(', ')}` };
  }
}
