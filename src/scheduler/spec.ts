import { createHash } from 'node:crypto';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { z } from 'zod';
import { DEFAULT_LIMITS } from '../cluster/store.js';
import { BackplaneError, ValidationErrors, type SourceLocation } from '../errors.js';
import { isEmpty, isMap, parseYamlDocument } from '../frontends/document.js';
import { graphJsonSchema } from '../frontends/json-schema.js';
import { checkExpansion, pathText, PRECISE_MAX_BYTES, readGraphText } from '../frontends/limits.js';
import { DEFAULT_MODULE_MEMORY_MB, DEFAULT_MODULE_TIMEOUT_MS, isModuleGraph } from '../frontends/typescript.js';
import { YamlSource } from '../frontends/yaml-source.js';
import { RELATION_KEYS } from '../frontends/yaml-native.js';
import { buildGraph, type KindRegistry } from '../graph/build.js';
import { builtinKinds } from '../resources/builtin-kinds.js';
import { createRegistry } from '../resources/registry.js';
import type { HostFacts } from '../resources/types.js';
import { canonicalJson } from '../util/canonical.js';
import { closest } from '../util/suggest.js';
import { portEnvName, renderWith, RESERVED_ENV, type InstanceHost, type SpecLocator } from './render.js';
import { DEFAULT_NAMESPACE, DEFAULTS, serviceSchema, type ParsedService } from './spec-schema.js';
import { HOOK_NAMES, INHERITABLE_FIELDS, type Alloc, type InheritableField, type HealthSpec, type HookName, type HookSpec, type InstanceResource, type LabelConstraint, type PortSpec, type ServiceSpec, type UpdatePolicy } from './types.js';

/**
 * The service spec frontend: a YAML file (one service, or `services: [...]`) or a TypeScript/JavaScript module whose
 * default export is a ServiceDecl, a list of them, or a function returning either. Everything an operator can get
 * wrong is found here, before anything is deployed, with the file:line:col of the value (a module's errors name the
 * value's path): unknown keys, values that do not parse, clashing ports, a misspelt `{{ variable }}`, and — by
 * rendering an instance with placeholder values and building it with the real resource kinds — a wrong parameter
 * of any `files` resource.
 */

/**
 * The registry a spec's instances are checked with: every built-in kind, loaded (the check builds a graph of them
 * synchronously; a spec may name any kind).
 */
function allKinds(): KindRegistry {
  return createRegistry(builtinKinds);
}

/** Where a value of the input is, by its path from the document's root. */
interface SpecSource {
  readonly file: string;
  readonly data: unknown;
  readonly locate: (path: readonly PropertyKey[]) => SourceLocation;
  readonly locateValue: (path: readonly PropertyKey[]) => SourceLocation;
}

export function parseServiceText(file: string, text: string, registry: KindRegistry = allKinds()): ServiceSpec[] {
  const doc = parseYamlDocument(file, text);
  fixUnquotedModes(doc.data, file, text);
  return readServices(doc, registry);
}

/** Reads a YAML spec or a TS/JS module spec. Throws ValidationErrors (bad input) or BackplaneError E_IO. */
export async function readServiceFile(path: string, registry: KindRegistry = allKinds()): Promise<ServiceSpec[]> {
  const file = resolve(path);
  if (isModuleGraph(file)) {
    const out = await evaluateModule(file);
    checkExpansion(out, (p) => ({ file: `${file}: ${pathText(p)}`, line: 0, col: 0 }));
    const locate = (p: readonly PropertyKey[]): SourceLocation => ({ file: `${file}: ${pathText(p)}`, line: 0, col: 0 });
    return readServices({ file, data: out, locate, locateValue: locate }, registry);
  }
  return parseServiceText(file, await readGraphText(file), registry);
}

/** An application object in a deploy file (a document with `kind:`, see src/backplanes/), and where it is. */
export interface ObjectDoc {
  readonly data: Readonly<Record<string, unknown>>;
  readonly file: string;
  readonly at: (path: readonly PropertyKey[]) => SourceLocation;
}

/**
 * A deploy file: its services, and its application objects (left for src/backplanes/objects.ts to validate and
 * expand with their backplanes). Throws ValidationErrors for any invalid service.
 */
export async function readDeployFile(path: string, registry: KindRegistry = allKinds()): Promise<{ services: ServiceSpec[]; objects: ObjectDoc[] }> {
  const file = resolve(path);
  if (isModuleGraph(file)) return readDeployData(file, await evaluateModule(file), registry);
  return readDeployText(file, await readGraphText(file), registry);
}

/** A YAML deploy file given as its text (the API's deploy: the CLI sends it); errors point at `file`:line:col. */
export function readDeployText(file: string, text: string, registry: KindRegistry = allKinds()): { services: ServiceSpec[]; objects: ObjectDoc[] } {
  const objects: ObjectDoc[] = [];
  const doc = parseYamlDocument(file, text);
  fixUnquotedModes(doc.data, file, text);
  return { services: readServices(doc, registry, objects), objects };
}

/** What a TS/JS deploy module evaluated to (evaluateModule): errors name `file` and the value's path. */
export function readDeployData(file: string, data: unknown, registry: KindRegistry = allKinds()): { services: ServiceSpec[]; objects: ObjectDoc[] } {
  const objects: ObjectDoc[] = [];
  checkExpansion(data, (p) => ({ file: `${file}: ${pathText(p)}`, line: 0, col: 0 }));
  const locate = (p: readonly PropertyKey[]): SourceLocation => ({ file: `${file}: ${pathText(p)}`, line: 0, col: 0 });
  return { services: readServices({ file, data, locate, locateValue: locate }, registry, objects), objects };
}

/**
 * The services a backplane expanded an object into, validated exactly like an operator's; an error points at the
 * object (the generated document has no lines of its own) and names the path inside the generated service.
 */
export function readExpandedServices(docs: readonly unknown[], where: SourceLocation, what: string, registry: KindRegistry = allKinds()): ServiceSpec[] {
  const errors: BackplaneError[] = [];
  const specs: ServiceSpec[] = [];
  docs.forEach((d, i) => {
    const locate = (p: readonly PropertyKey[]): SourceLocation => ({ ...where, file: `${where.file} (${what}, service ${i}${p.length === 0 ? '' : `: ${pathText(p)}`})` });
    const spec = readService(d, (p) => locate(p), where.file, registry, errors);
    if (spec !== undefined) specs.push(spec);
  });
  if (errors.length > 0) throw new ValidationErrors(errors);
  return specs;
}

// ---- reading --------------------------------------------------------------------------------------------------------

function readServices(src: SpecSource, registry: KindRegistry, objects?: ObjectDoc[]): ServiceSpec[] {
  const errors: BackplaneError[] = [];
  const fail = (msg: string, where: SourceLocation, hint: string): void => {
    errors.push(new BackplaneError('E_SCHEMA', msg, { where, hint }));
  };
  const root = src.data;
  let items: [unknown, PropertyKey[]][] = [];
  if (isEmpty(root)) {
    fail('the service file is empty', { file: src.file, line: 1, col: 1 }, 'declare a service: name, count, run: { cmd: [...] }; nothing was deployed');
  } else if (Array.isArray(root)) {
    // A module may export a list of services.
    items = root.map((s: unknown, i) => [s, [i]]);
  } else if (isMap(root) && 'services' in root) {
    for (const key of Object.keys(root)) if (key !== 'services') fail(`unknown top-level key "${key}"`, src.locate([key]), 'a file with "services:" holds only that list');
    const list = root['services'];
    if (!Array.isArray(list) || list.length === 0) fail('"services" must be a non-empty list of services', src.locate(['services']), 'e.g. services: [{ name: web, run: { cmd: [...] } }]');
    else items = list.map((s: unknown, i) => [s, ['services', i]]);
  } else if (isMap(root)) {
    items = [[root, []]];
  } else {
    fail('a service file must be a map (one service) or hold "services: [...]"', src.locate([]), 'start with "name: web"');
  }
  const specs: ServiceSpec[] = [];
  const seen = new Map<string, SourceLocation>();
  for (const [item, prefix] of items) {
    if (objects !== undefined && isMap(item) && 'kind' in item) {
      objects.push({ data: item, file: src.file, at: (p) => src.locate([...prefix, ...p]) });
      continue;
    }
    const at = specLocator(src, prefix, item);
    const spec = readService(item, at, src.file, registry, errors);
    if (spec === undefined) continue;
    const first = seen.get(spec.name);
    if (first !== undefined) {
      fail(`service "${spec.name}" is declared twice`, at(['name']), `it was first declared at line ${first.line}; give each service its own name`);
      continue;
    }
    seen.set(spec.name, at(['name']));
    specs.push(spec);
  }
  if (errors.length > 0) throw new ValidationErrors(errors);
  return specs;
}

/**
 * Locations inside one service. A files entry's parameter that is not written (a file's `path`, which defaults to its
 * name) is pointed at the entry's name: that is the value the operator has to change.
 */
function specLocator(src: SpecSource, prefix: readonly PropertyKey[], item: unknown): SpecLocator {
  const files = isMap(item) && Array.isArray(item['files']) ? (item['files'] as unknown[]) : [];
  return (p, value = false) => {
    const [head, i, key] = p;
    const entry = head === 'files' && typeof i === 'number' ? files[i] : undefined;
    if (typeof key === 'string' && isMap(entry) && !(key in entry)) return src.locateValue([...prefix, 'files', i as number, 'name']);
    // A value's own position for a scalar; a whole map or list is pointed at by its key (its first line otherwise).
    return (value && !isCollection(valueAt(item, p)) ? src.locateValue : src.locate)([...prefix, ...p]);
  };
}

function valueAt(v: unknown, path: readonly PropertyKey[]): unknown {
  let cur = v;
  for (const seg of path) {
    if (Array.isArray(cur) && typeof seg === 'number') cur = cur[seg];
    else if (isMap(cur) && typeof seg === 'string') cur = cur[seg];
    else return undefined;
  }
  return cur;
}

function isCollection(v: unknown): boolean {
  return v !== null && typeof v === 'object';
}

function readService(item: unknown, at: SpecLocator, file: string, registry: KindRegistry, errors: BackplaneError[]): ServiceSpec | undefined {
  const before = errors.length;
  const parsed = serviceSchema.safeParse(item);
  if (!parsed.success) {
    errors.push(...issuesToErrors(parsed.error.issues, at));
    return undefined;
  }
  const p = parsed.data;
  const fail = (msg: string, path: readonly PropertyKey[], hint: string): void => {
    errors.push(new BackplaneError('E_SCHEMA', msg, { where: at(path, true), hint }));
  };
  const ports = readPorts(p, fail);
  const health = readHealth(p, ports, fail);
  for (const key of Object.keys(p.run.env)) {
    if ((RESERVED_ENV as readonly string[]).includes(key) || key.startsWith('PORT_'))
      errors.push(
        new BackplaneError('E_SCHEMA', `run.env.${key} is set by the scheduler`, {
          where: at(['run', 'env', key]),
          hint: 'INSTANCE_INDEX, INSTANCE_ID, SERVICE_NAME, SERVICE_VERSION, BACKPLANE_API, BACKPLANE_TOKEN and PORT_<NAME> are set for every instance; use another name',
        }),
      );
  }
  const files: InstanceResource[] = [];
  p.files.forEach((f, i) => {
    for (const key of [...RELATION_KEYS, 'export']) {
      if (key in f)
        fail(`"${key}" is not supported on an instance's files`, ['files', i, key], 'files are applied before the instance starts and a change to one restarts it; order between files comes from their paths');
    }
    const { kind, name, meta, ...params } = f;
    files.push({ kind, name, params, ...(meta === undefined ? {} : { meta }) });
  });
  const update = readUpdate(p, item, fail);
  const hooks = readHooks(p, fail);
  const actions = p.actions === undefined ? undefined : Object.fromEntries(Object.entries(p.actions).map(([n, h]) => [n, Array.isArray(h) ? { cmd: h, timeoutMs: DEFAULTS.hookTimeoutMs } : { cmd: h.cmd, timeoutMs: h.timeout }]));
  const scale = readScale(p, item, fail);
  if (errors.length > before) return undefined;

  const constraints: LabelConstraint[] = p.placement.constraints.map((c) =>
    c.eq !== undefined ? { label: c.label, op: 'eq', values: [c.eq] } : c.in !== undefined ? { label: c.label, op: 'in', values: c.in } : { label: c.label, op: 'not_in', values: c.notIn ?? [] },
  );
  const inherits = inheritedFields(item);
  const unversioned: Omit<ServiceSpec, 'version'> = {
    name: p.name,
    ...(p.namespace === undefined || p.namespace === DEFAULT_NAMESPACE ? {} : { namespace: p.namespace }),
    count: p.count,
    task: {
      cmd: p.run.cmd,
      env: p.run.env,
      ...(p.run.cwd === undefined ? {} : { cwd: p.run.cwd }),
      ...(p.run.user === undefined ? {} : { user: p.run.user }),
      ...(p.run.group === undefined ? {} : { group: p.run.group }),
      ...(p.run.stopSignal === undefined ? {} : { stopSignal: p.run.stopSignal }),
      ...(p.run.stopTimeout === undefined ? {} : { stopTimeoutMs: p.run.stopTimeout }),
      ...(p.run.stopNotice === undefined || p.run.stopNotice === 0 ? {} : { stopNoticeMs: p.run.stopNotice }),
    },
    resources: { cpu: p.resources.cpu, memory: p.resources.memory },
    ports,
    ...(health === undefined ? {} : { health }),
    placement: {
      constraints,
      distinctHosts: p.placement.distinctHosts,
      ...(p.placement.spread === undefined ? {} : { spread: p.placement.spread }),
      ...(p.placement.maxPerHost === undefined ? {} : { maxPerHost: p.placement.maxPerHost }),
      antiAffinity: p.placement.antiAffinity,
      strategy: p.placement.strategy,
    },
    restart: { attempts: p.restart.attempts, intervalMs: p.restart.interval, delayMs: p.restart.delay },
    reschedule: {
      attempts: p.reschedule.attempts ?? DEFAULTS.reschedule.attempts,
      intervalMs: p.reschedule.interval,
      delayMs: p.reschedule.delay,
      maxDelayMs: p.reschedule.maxDelay,
      // Giving a number of attempts means a limit: Nomad ignores attempts while unlimited stays true, a known trap.
      unlimited: p.reschedule.unlimited ?? p.reschedule.attempts === undefined,
    },
    update,
    files,
    ...(p.maxUnavailable === undefined ? {} : { maxUnavailable: p.maxUnavailable }),
    ...(hooks === undefined ? {} : { hooks }),
    ...(actions === undefined || Object.keys(actions).length === 0 ? {} : { actions }),
    ...(scale === undefined ? {} : { scale }),
    ...(inherits.length === 0 ? {} : { inherits }),
  };
  const spec: ServiceSpec = { ...unversioned, version: specVersion(unversioned, p.version) };
  checkInstances(spec, at, registry, errors);
  const size = specSize(spec);
  if (size > MAX_SPEC_RECORD_BYTES)
    errors.push(
      new BackplaneError('E_LIMIT', `service "${spec.name}" in ${file} is ${size} bytes once signed and assigned; the store takes at most ${MAX_SPEC_RECORD_BYTES}`, {
        where: at([]),
        hint: 'move large file contents out of the spec (a template source or a package on the host); nothing was deployed',
      }),
    );
  return errors.length > before ? undefined : spec;
}

type Fail = (msg: string, path: readonly PropertyKey[], hint: string) => void;

/**
 * Which fields a namespace's defaults may fill: those the operator's document does not write (the parsed spec holds
 * the built-in default for them, which is what applies when the namespace sets none). `strategy` and `maxParallel`
 * are one field: either one written decides the parallelism.
 */
function inheritedFields(item: unknown): InheritableField[] {
  const written = (...path: string[]): boolean => valueAt(item, path) !== undefined;
  const given: Record<InheritableField, boolean> = {
    maxParallel: written('update', 'strategy') || written('update', 'maxParallel'),
    minHealthyMs: written('update', 'minHealthy'),
    healthyDeadlineMs: written('update', 'healthyDeadline'),
    progressDeadlineMs: written('update', 'progressDeadline'),
    canary: written('update', 'canary'),
    autoPromote: written('update', 'autoPromote'),
    autoRevert: written('update', 'autoRevert'),
    startFirst: written('update', 'startFirst'),
    maxUnavailable: written('maxUnavailable'),
  };
  return INHERITABLE_FIELDS.filter((f) => !given[f]);
}

/**
 * The update policy: the strategy's parallelism (serial 1, parallel 0 = all at once, rolling maxParallel) and the
 * checks that span fields. A deadline the operator did not write is the default: a check that fails on it points
 * at the one that was written.
 */
function readUpdate(p: ParsedService, item: unknown, fail: Fail): UpdatePolicy {
  const u = p.update;
  const maxParallel = u.strategy === 'serial' ? 1 : u.strategy === 'parallel' ? 0 : (u.maxParallel ?? DEFAULTS.update.maxParallel);
  if (u.progressDeadline !== 0 && u.healthyDeadline !== 0 && u.progressDeadline < u.healthyDeadline) {
    const written = valueAt(item, ['update', 'progressDeadline']) !== undefined ? 'progressDeadline' : 'healthyDeadline';
    fail(
      `update.progressDeadline (${formatMs(u.progressDeadline)}) is shorter than update.healthyDeadline (${formatMs(u.healthyDeadline)})`,
      ['update', written],
      'a step may take up to healthyDeadline, so the rollout would fail while a step is still within its deadline; raise progressDeadline (or 0: none) or lower healthyDeadline',
    );
  }
  // A service scaled to 0 keeps its update policy: nothing rolls, so its canaries are no contradiction.
  if (p.count > 0 && u.canary > p.count)
    fail(
      `update.canary (${u.canary}) is more than count (${p.count})`,
      ['update', 'canary'],
      `at most count instances can be canaries (canary: ${p.count} tries the new version on every instance before the old ones go); lower it or raise count`,
    );
  return {
    maxParallel,
    minHealthyMs: u.minHealthy,
    healthyDeadlineMs: u.healthyDeadline,
    progressDeadlineMs: u.progressDeadline,
    canary: u.canary,
    autoPromote: u.autoPromote,
    autoRevert: u.autoRevert,
    ...(u.startFirst === undefined ? {} : { startFirst: u.startFirst }),
  };
}

function readHooks(p: ParsedService, fail: Fail): ServiceSpec['hooks'] {
  if (p.hooks === undefined) return undefined;
  const out: Partial<Record<HookName, HookSpec>> = {};
  for (const name of HOOK_NAMES) {
    const h = p.hooks[name];
    if (h === undefined) continue;
    out[name] = Array.isArray(h) ? { cmd: h, timeoutMs: DEFAULTS.hookTimeoutMs } : { cmd: h.cmd, timeoutMs: h.timeout };
  }
  if (out.beforePromote !== undefined && p.update.canary === 0)
    fail('hooks.beforePromote is given but the service has no canaries', ['hooks', 'beforePromote'], 'beforePromote runs on canaries before promotion; set update.canary');
  return Object.keys(out).length === 0 ? undefined : out;
}

/**
 * `scale: { min, max }`: the operator's count must lie within the bounds, since it is the count a deploy starts from
 * (and the one a new deploy goes back to); min above max bounds nothing.
 */
function readScale(p: ParsedService, item: unknown, fail: Fail): ServiceSpec['scale'] {
  if (p.scale === undefined) return undefined;
  const { min, max } = p.scale;
  if (min > max) {
    fail(`scale.min (${min}) is more than scale.max (${max})`, ['scale', 'min'], 'min is the fewest instances and max the most that may be asked for; swap them');
    return undefined;
  }
  const written = valueAt(item, ['count']) !== undefined;
  if (p.count < min || p.count > max)
    fail(
      `count (${p.count}${written ? '' : ', the default'}) is outside the scale bounds ${min}..${max}`,
      written ? ['count'] : ['scale'],
      `the operator's count must lie within scale.min..scale.max: it is where the service starts after each deploy, and instances may then move it only within the bounds; set count to a value from ${min} to ${max}, or widen the bounds`,
    );
  return { min, max };
}

/** 600000 -> "10m", 90000 -> "90s", 250 -> "250ms": as an operator would write it. */
function formatMs(ms: number): string {
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

function readPorts(p: ParsedService, fail: Fail): PortSpec[] {
  const entries: [string, number | undefined, PropertyKey[]][] = Array.isArray(p.ports)
    ? p.ports.map((e, i) => [e.name, e.static, ['ports', i]])
    : Object.entries(p.ports).map(([name, v]) => [name, v === null ? undefined : typeof v === 'number' ? v : v.static, ['ports', name]]);
  const byName = new Map<string, string>();
  const byStatic = new Map<number, string>();
  const byEnv = new Map<string, string>();
  const out: PortSpec[] = [];
  for (const [name, fixed, path] of entries) {
    if (byName.has(name)) {
      fail(`port "${name}" is declared twice`, path, 'give each port its own name');
      continue;
    }
    const env = portEnvName(name);
    const clash = byEnv.get(env);
    if (clash !== undefined) {
      fail(`ports "${clash}" and "${name}" both become ${env} in the environment`, path, 'rename one of them');
      continue;
    }
    if (fixed !== undefined) {
      const other = byStatic.get(fixed);
      if (other !== undefined) {
        fail(`static port ${fixed} is given to both "${other}" and "${name}"`, [...path, ...(Array.isArray(p.ports) || typeof (p.ports as Record<string, unknown>)[name] === 'object' ? ['static'] : [])], 'an instance cannot listen twice on one port');
        continue;
      }
      byStatic.set(fixed, name);
    }
    byName.set(name, name);
    byEnv.set(env, name);
    out.push(fixed === undefined ? { name } : { name, static: fixed });
  }
  return out;
}

function readHealth(p: ParsedService, ports: readonly PortSpec[], fail: Fail): HealthSpec | undefined {
  const h = p.health;
  if (h === undefined) return undefined;
  const names = ports.map((x) => x.name);
  const port = (name: string, path: PropertyKey[]): string => {
    if (!names.includes(name)) {
      const guess = closest(name, names);
      fail(`the service declares no port "${name}"`, path, guess !== undefined ? `did you mean "${guess}"?` : names.length === 0 ? 'declare it under ports:' : `ports: ${names.join(', ')}`);
    }
    return `{{ instance.port.${name} }}`;
  };
  const hostPart = (host: string): string => (host.includes(':') && !host.startsWith('[') ? `[${host}]` : host);
  const timing = { intervalMs: h.interval, timeoutMs: h.timeout, failures: h.failures, graceMs: h.grace };
  if (h.http !== undefined) {
    const url = typeof h.http === 'string' ? h.http : `${h.http.scheme}://${hostPart(h.http.host)}:${port(h.http.port, ['health', 'http', 'port'])}${h.http.path}`;
    return { http: url, ...timing };
  }
  if (h.tcp !== undefined) {
    const addr = typeof h.tcp === 'string' ? h.tcp : `${hostPart(h.tcp.host)}:${port(h.tcp.port, ['health', 'tcp', 'port'])}`;
    return { tcp: addr, ...timing };
  }
  return { exec: h.exec ?? [], ...timing };
}

// ---- version and size -----------------------------------------------------------------------------------------------

/**
 * What an instance *is*: everything that reaches the rendered graph or decides where it may run. Left out are
 * count (scaling must never roll the instances), and the update and reschedule policies, the disruption budget
 * (maxUnavailable) and the hooks (changing how a rollout goes, or what runs around an instance's start and stop,
 * must not itself be a rollout). The fields are picked by name, so a new field of ServiceSpec stays out until added.
 */
export function specHash(spec: Omit<ServiceSpec, 'version'>): string {
  const { name, task, resources, ports, health, placement, restart, files } = spec;
  return createHash('sha256').update(canonicalJson({ name, task, resources, ports, health, placement, restart, files })).digest('hex').slice(0, 12);
}

/**
 * The operator's label, when given, keeps the hash beside it (`v2+3fa9c0d1e2b4`): an edit that forgets to bump the
 * label still rolls the instances, since two different specs under one version would leave the controller unable to
 * tell old instances from new ones.
 */
export function specVersion(spec: Omit<ServiceSpec, 'version'>, label?: string): string {
  const hash = specHash(spec);
  return label === undefined ? hash : `${label}+${hash}`;
}

/**
 * The largest store value that carries a spec: an assignment (`sched/assign/<host>/<alloc>`) holds the operator's
 * signed service record verbatim inside its own signed body, so the spec's JSON is escaped four times over (each
 * level doubles a backslash). Measured on the real encoding with placeholder signatures.
 */
export function specSize(spec: ServiceSpec): number {
  const sig = 'S'.repeat(128);
  const seal = (body: string): string => JSON.stringify({ v: 1, seq: Number.MAX_SAFE_INTEGER, body, sig });
  const record = seal(JSON.stringify({ spec, source: '/'.repeat(4096), deployedAt: new Date(0).toISOString() }));
  const alloc = { id: `${spec.name}.100000.00000000`, service: spec.name, index: 100_000, version: spec.version, host: 'h'.repeat(255), resources: spec.resources, ports: Object.fromEntries(spec.ports.map((p) => [p.name, 65535])), createdAt: Number.MAX_SAFE_INTEGER, previous: `${spec.name}.100000.00000000`, reschedules: [] };
  return Buffer.byteLength(seal(JSON.stringify({ alloc, epoch: Number.MAX_SAFE_INTEGER, controller: 'h'.repeat(255), specRecord: record, specBy: 'h'.repeat(255) })));
}

/** One store request's limit less its framing and the key (see validateOps in src/cluster/store.ts). */
export const MAX_SPEC_RECORD_BYTES = DEFAULT_LIMITS.maxRequestBytes - 4096 - 64 - 1024;

// ---- instances, rendered with placeholders ---------------------------------------------------------------------------

const SAMPLE_FACTS: HostFacts = {
  hostname: 'host',
  fqdn: 'host.example',
  os: { platform: 'linux', release: '6.0.0', arch: 'x64' },
  cpus: 1,
  memory: { total: 1024 ** 3, free: 1024 ** 3 },
  interfaces: {},
  ipv4: '127.0.0.1',
};

function placeholderAlloc(spec: ServiceSpec, index: number): Alloc {
  let next = 20_000 + index * 1000;
  const ports = Object.fromEntries(spec.ports.map((p) => [p.name, p.static ?? next++]));
  return { id: `${spec.name}.${index}.${index.toString(16).padStart(8, '0')}`, service: spec.name, index, version: spec.version, host: 'host', resources: spec.resources, ports, createdAt: 0, reschedules: [] };
}

/**
 * Renders instances with placeholder values (any host label resolves) and builds them with the real kinds, so a
 * wrong parameter, an unknown kind or a misspelt variable is refused at deploy time with the operator's line. When
 * two instances may share a host, two are built together: resources whose names do not vary per instance would be
 * declared twice in that host's graph. (Old and new instances of one index may share a host during an update, so
 * only `{{ instance.id }}` tells them apart for sure.)
 */
function checkInstances(spec: ServiceSpec, at: SpecLocator, registry: KindRegistry, errors: BackplaneError[]): void {
  const labels: Record<string, string> = {};
  for (const f of spec.files) {
    const t = f.params['template'];
    if (f.kind === 'template' && typeof t === 'string') for (const m of t.matchAll(/vars\.host\.labels\.([A-Za-z0-9_-]+)/g)) labels[m[1] ?? ''] = 'placeholder';
  }
  const host: InstanceHost = { name: 'host', facts: SAMPLE_FACTS, labels };
  const svcLabel = `service ${spec.name}`;
  const build = (indexes: readonly number[]): BackplaneError[] => {
    try {
      const rendered = indexes.map((i) => renderWith(spec, placeholderAlloc(spec, i), host, {}, at, true));
      // Placeholder ids mean nothing to the operator: errors name the task as the service, a file as written.
      const ids = new Map<string, string>(indexes.map((i) => [`svc[${placeholderAlloc(spec, i).id}]`, svcLabel]));
      for (const r of rendered)
        r.resources.forEach((res, j) => {
          const f = j === 0 ? undefined : spec.files[j - 1];
          if (f !== undefined) ids.set(`${res.kind}[${res.name}]`, `${f.kind}[${f.name}]`);
        });
      try {
        buildGraph({ source: at([]).file, resources: rendered.flatMap((r) => r.resources), edges: rendered.flatMap((r) => r.edges), errors: [] }, registry);
        return [];
      } catch (err) {
        if (!(err instanceof ValidationErrors)) throw err;
        return err.errors.map((e) => {
          const resource = e.resource === undefined ? undefined : ids.get(e.resource);
          if (resource === undefined) return e;
          const message = resource === svcLabel ? e.message.replace(/^parameter "([^"]+)"/, (_m, p: string) => `"${svcParamName(p)}"`) : e.message;
          return new BackplaneError(e.code, message, { where: e.where, resource, hint: e.hint });
        });
      }
    } catch (err) {
      if (err instanceof ValidationErrors) return [...err.errors];
      throw err;
    }
  };
  const one = build([0]);
  if (one.length > 0) {
    errors.push(...one);
    return;
  }
  if (spec.placement.distinctHosts || spec.placement.maxPerHost === 1) return;
  for (const e of build([0, 1])) {
    if (e.code !== 'E_DUPLICATE' && e.code !== 'E_OVERLAP') continue;
    errors.push(
      new BackplaneError(e.code, `two instances on one host would both declare this resource (${e.message})`, {
        where: e.where,
        hint: 'put {{ instance.id }} in its name (and path), or set placement.distinctHosts: true; a resource every instance shares (a package) belongs in the host\'s graph',
      }),
    );
  }
}

/** `limits.memory` -> `resources.memory`: the spec's own name for what the svc kind refused. */
function svcParamName(p: string): string {
  const [head, ...rest] = p.split('.');
  if (head === 'limits') return ['resources', ...rest].join('.');
  if (head === 'health') return ['health', ...rest.map((r) => (r === 'startPeriod' ? 'grace' : r))].join('.');
  if (head === 'crashLoop' || head === 'backoff') return 'restart';
  return ['run', ...(head === undefined ? [] : [head]), ...rest].join('.');
}

// ---- errors ------------------------------------------------------------------------------------------------------------

/** Top-level keys an earlier spec format had: what replaced each, said plainly rather than "unknown key". */
const REPLACED_KEYS: Readonly<Record<string, { message: string; hint: string }>> = {
  minHealthy: {
    message: '"minHealthy" was replaced by "maxUnavailable": how many instances may be down at once (a rollout step, a drain move and a scale-down all respect it)',
    hint: 'write maxUnavailable: count - the old minHealthy, or leave it out (default: the update\'s parallelism); update.minHealthy (a duration) is unchanged',
  },
};

/** Known keys at each level of a spec, for "did you mean". */
function knownKeys(path: readonly PropertyKey[]): readonly string[] {
  const shape = (s: z.ZodType): string[] => {
    let def = (s as { def?: { shape?: object; innerType?: z.ZodType; in?: z.ZodType } }).def;
    while (def !== undefined && def.shape === undefined && (def.innerType ?? def.in) !== undefined) def = ((def.innerType ?? def.in) as { def?: typeof def }).def;
    return Object.keys(def?.shape ?? {});
  };
  const top = serviceSchema.shape;
  const [head, second] = path;
  if (head === undefined) return Object.keys(top);
  if (head === 'ports') return ['name', 'static'];
  if (head === 'placement' && second === 'constraints') return ['label', 'eq', 'in', 'notIn'];
  if (head === 'health' && (second === 'http' || second === 'tcp')) return ['port', 'path', 'host', 'scheme'];
  if (head === 'hooks' && second !== undefined) return ['cmd', 'timeout'];
  const sub = typeof head === 'string' && Object.hasOwn(top, head) ? (top as Record<string, z.ZodType>)[head] : undefined;
  return sub === undefined ? [] : shape(sub);
}

/**
 * A union's issues, from the branch the input was meant for (the one that did not fail on the value's type at the
 * union itself), with full paths; a record's bad key as an issue about that key.
 */
function flatten(issue: z.core.$ZodIssue, base: readonly PropertyKey[]): { issue: z.core.$ZodIssue; path: PropertyKey[]; key: boolean }[] {
  const path = [...base, ...issue.path];
  if (issue.code === 'invalid_union' && issue.errors.length > 0) {
    const branches = issue.errors;
    const meant = branches.find((b) => !b.some((i) => i.code === 'invalid_type' && i.path.length === 0)) ?? branches[0] ?? [];
    return meant.flatMap((i) => flatten(i, path));
  }
  if (issue.code === 'invalid_key') return issue.issues.map((i) => ({ issue: i, path, key: true }));
  return [{ issue, path, key: false }];
}

function issuesToErrors(issues: readonly z.core.$ZodIssue[], at: SpecLocator): BackplaneError[] {
  const out: BackplaneError[] = [];
  for (const { issue, path: full, key } of issues.flatMap((i) => flatten(i, []))) {
    if (issue.code === 'unrecognized_keys') {
      const known = knownKeys(full);
      for (const key of issue.keys) {
        const replaced = full.length === 0 && Object.hasOwn(REPLACED_KEYS, key) ? REPLACED_KEYS[key] : undefined;
        if (replaced !== undefined) {
          out.push(new BackplaneError('E_SCHEMA', replaced.message, { where: at([key]), hint: replaced.hint }));
          continue;
        }
        const guess = closest(key, known);
        out.push(
          new BackplaneError('E_SCHEMA', `unknown key "${[...full, key].map(String).join('.')}"`, {
            where: at([...full, key]),
            hint: guess !== undefined ? `did you mean "${guess}"?` : `known here: ${known.join(', ')}`,
          }),
        );
      }
      continue;
    }
    const path = full.map(String).join('.');
    const message = issue.code === 'invalid_type' && / received undefined$/.test(issue.message) ? `"${path}" is required` : `${path === '' ? 'the service' : `"${path}"`}: ${issue.message}`;
    out.push(new BackplaneError('E_SCHEMA', message, { where: at(full, !key), hint: 'see docs/services.md, or `backplane schema --service` for the JSON Schema' }));
  }
  return out;
}

// ---- YAML modes ------------------------------------------------------------------------------------------------------

/**
 * `mode: 0644` unquoted is the decimal 644 in YAML 1.2, which is not what anyone writing it means (document.ts
 * explains); the graph reader puts back the text for its own resources, and this does the same for a spec's files.
 */
function fixUnquotedModes(data: unknown, file: string, text: string): void {
  const lists: [unknown, PropertyKey[]][] = [];
  if (isMap(data) && Array.isArray(data['services'])) data['services'].forEach((s: unknown, i) => lists.push([isMap(s) ? s['files'] : undefined, ['services', i, 'files']]));
  else if (isMap(data)) lists.push([data['files'], ['files']]);
  let src: YamlSource | undefined;
  for (const [list, path] of lists) {
    if (!Array.isArray(list)) continue;
    list.forEach((f: unknown, i) => {
      if (!isMap(f) || typeof f['mode'] !== 'number') return;
      if (text.length > PRECISE_MAX_BYTES) throw new ValidationErrors([new BackplaneError('E_YAML', 'quote the modes in a spec this large', { where: { file, line: 0, col: 0 }, hint: 'write mode: "0644"' })]);
      src ??= new YamlSource(file, text);
      f['mode'] = src.scalarSource([...path, i, 'mode']) ?? f['mode'];
    });
  }
}

// ---- modules ---------------------------------------------------------------------------------------------------------

/**
 * Evaluates a spec module in a worker thread with the graph modules' time and heap limits (typescript.ts explains
 * why a worker). The worker is inline code rather than a file of its own so the CLI bundle needs no second entry:
 * graph modules' worker insists on a function, while a spec module may export the spec itself.
 */
export async function evaluateModule(file: string): Promise<unknown> {
  const code = `
(async () => {
  const { parentPort, workerData } = await import('node:worker_threads');
  const { file, tsx, url } = workerData;
  let stage = 'load';
  try {
    const mod = /\\.(m|c)?ts$/.test(file) ? await (await import(tsx)).tsImport(file, url) : await import(url);
    let v = mod === null || typeof mod !== 'object' ? undefined : mod.default;
    // A module tsx compiles as CommonJS arrives as { default: { default: x } }.
    if (v !== null && typeof v === 'object' && !Array.isArray(v) && 'default' in v && !('name' in v)) v = v.default;
    stage = 'call';
    if (typeof v === 'function') v = await v();
    stage = 'result';
    parentPort.postMessage({ ok: true, out: v === undefined ? null : v });
  } catch (err) {
    parentPort.postMessage({ ok: false, stage, message: err instanceof Error ? err.message : String(err), stack: err instanceof Error ? String(err.stack) : '' });
  }
})();`;
  const worker = new Worker(code, {
    eval: true,
    workerData: { file, tsx: import.meta.resolve('tsx/esm/api'), url: pathToFileURL(file).href },
    resourceLimits: { maxOldGenerationSizeMb: DEFAULT_MODULE_MEMORY_MB },
    stdin: false,
  });
  const at = { file, line: 0, col: 0 };
  const fail = (code: 'E_SCHEMA' | 'E_LIMIT', message: string, hint: string): ValidationErrors => new ValidationErrors([new BackplaneError(code, message, { where: at, hint: `${hint}; nothing was deployed` })]);
  type Reply = { ok: true; out: unknown } | { ok: false; stage: string; message: string; stack: string };
  try {
    const reply = await new Promise<Reply>((res, rej) => {
      const timer = setTimeout(() => rej(fail('E_LIMIT', `the service module did not return within ${DEFAULT_MODULE_TIMEOUT_MS / 1000}s`, 'fix the module (an endless loop?)')), DEFAULT_MODULE_TIMEOUT_MS);
      worker.once('message', (m: Reply) => {
        clearTimeout(timer);
        res(m);
      });
      worker.once('error', (err: Error & { code?: string }) => {
        clearTimeout(timer);
        rej(err.code === 'ERR_WORKER_OUT_OF_MEMORY' ? fail('E_LIMIT', `the service module used more than ${DEFAULT_MODULE_MEMORY_MB} MB of memory`, 'fix the module') : fail('E_SCHEMA', `the service module failed: ${err.message}`, 'fix the module'));
      });
      worker.once('exit', (code) => {
        clearTimeout(timer);
        rej(fail('E_SCHEMA', `the service module exited (code ${code}) without returning a spec`, 'a service module must not call process.exit'));
      });
    });
    if (!reply.ok) {
      const frame = new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:(\\d+):(\\d+)`).exec(reply.stack);
      const where = frame === null ? at : { file, line: Number(frame[1]), col: Number(frame[2]) };
      const what = reply.stage === 'load' ? 'cannot load the service module' : reply.stage === 'call' ? 'the service function threw' : 'the service module returned something that is not plain data';
      throw new ValidationErrors([new BackplaneError('E_SCHEMA', `${what}: ${reply.message}`, { where, hint: 'export default a ServiceDecl, a list of them, or a function returning them; nothing was deployed' })]);
    }
    return reply.out;
  } finally {
    void worker.terminate();
  }
}

// ---- JSON Schema -------------------------------------------------------------------------------------------------------

/** The JSON Schema of a service file (one service, or `services: [...]`) for editors. */
export function serviceJsonSchema(): Record<string, unknown> {
  const service = z.toJSONSchema(serviceSchema, { io: 'input', unrepresentable: 'any' });
  delete service['$schema'];
  // Each entry of files is a graph resource of a known kind, without relations (the graph's variants, trimmed).
  const graph = graphJsonSchema(builtinKinds) as { properties: { resources: { items: { oneOf: { properties: Record<string, unknown> }[] } } } };
  const variants = graph.properties.resources.items.oneOf.map((v) => {
    const properties = { ...v.properties };
    for (const key of [...RELATION_KEYS, 'export']) delete properties[key];
    return { ...v, properties };
  });
  const props = service['properties'] as Record<string, Record<string, unknown>>;
  props['files'] = { ...props['files'], type: 'array', items: { oneOf: variants } };
  return {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    $id: 'https://backplane.dev/schema/service.schema.json',
    title: 'Backplane service',
    $defs: { service },
    oneOf: [
      { $ref: '#/$defs/service' },
      { type: 'object', properties: { services: { type: 'array', minItems: 1, items: { $ref: '#/$defs/service' } } }, required: ['services'], additionalProperties: false },
    ],
  };
}
