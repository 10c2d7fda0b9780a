import { readFile } from 'node:fs/promises';
import { posix } from 'node:path';
import { Liquid, LiquidError, type Template, type Variable } from 'liquidjs';
import { z } from 'zod';
import { BackplaneError } from '../errors.js';
import { modeHasSpecialBits } from '../graph/file-mode.js';
import type { ResourceId } from '../graph/ids.js';
import { absolutePath, fileMode, isAbsolutePath, isPlainRecord, quickFileMode, quickOwner, quickStringArray } from '../graph/schema-util.js';
import { watchPath } from '../util/dirwatch.js';
import { closest } from '../util/suggest.js';
import type { FileParams } from './file-schema.js';
import { createFile, fileKind } from './file.js';
import { defineKind, type CheckApplyContext, type CheckResult, type HostFacts, type Resource, type ResourceWorld, type ServiceInstance, type WatchContext } from './types.js';
import { once } from '../util/once.js';

/**
 * A file rendered from a Liquid template with this host's facts and values declared in the graph. Rendering is the
 * only thing this kind does itself: writing (atomic, mode, owner, diff in noop mode) is the `file` kind's.
 *
 * Liquid (liquidjs) because it cannot run code — no eval, no access to the process — and its strict modes make a
 * misspelt variable or filter an error instead of an empty string in a config file. On top of those, every
 * template is checked by name before it renders: a variable must be a known fact or declared in `vars`, so a typo
 * in a branch not taken today is caught too, and an inline template is checked when the graph is loaded.
 */

/** As the scheduler's spec schema has it (src/scheduler/records.ts). */
/** A service, or an application object's discovery entry (`cache.primary`, read as services["cache.primary"]). */
const SERVICE_NAME = /^[a-z0-9][a-z0-9-]{0,62}(\.[a-z0-9][a-z0-9-]{0,62})?$/;

/** The template kind's parameters, built on first use: a graph without a template does not pay for them at start-up. */
export const templateSchema = once(() =>
  z
    .strictObject({
      path: absolutePath().meta({ description: 'absolute path of the rendered file; defaults to the resource name' }),
      state: z.enum(['exists', 'absent']).default('exists'),
      template: z.string().optional().meta({ description: 'inline Liquid template, e.g. "listen {{ vars.port }}"' }),
      source: absolutePath().optional().meta({ description: 'absolute path of a Liquid template file; editing it re-renders' }),
      vars: z.record(z.string(), z.unknown()).default({}).meta({ description: 'values the template sees as vars.*' }),
      services: z
        .array(z.string().regex(SERVICE_NAME, 'a service name is 1-63 characters of a-z, 0-9 and "-", starting with a letter or digit; an application\'s entry is OBJECT.ENTRY (cache.primary)'))
        .default([])
        .meta({ description: 'services whose healthy instances this template sees as services.NAME (a list of {id, index, host, address, ports, version}), and application discovery entries (cache.primary, seen as services["cache.primary"]); re-rendered when they change' }),
      mode: fileMode().optional().meta({ description: 'permission bits in octal as chmod reads them ("0644", 644) or symbolic, absolute ("u=rw,go=r")' }),
      owner: z.union([z.string().min(1), z.number().int().nonnegative()]).optional().meta({ description: 'user name or uid' }),
      group: z.union([z.string().min(1), z.number().int().nonnegative()]).optional().meta({ description: 'group name or gid' }),
      force: z.boolean().default(false).meta({ description: 'replace something of another type at path (e.g. a directory)' }),
    })
    .superRefine((p, ctx) => {
      if (p.template !== undefined && p.source !== undefined)
        ctx.addIssue({ code: 'custom', path: ['source'], message: 'give either template (inline text) or source (a template file), not both' });
      else if (p.state === 'exists' && p.template === undefined && p.source === undefined)
        ctx.addIssue({ code: 'custom', path: [], message: 'a template needs template (inline text) or source (the path of a template file)' });
      if (p.template === undefined) return;
      // Checked here so a broken inline template is a graph error with the file:line of its resource.
      const compiled = compileChecked(p.template, p.vars, p.services);
      checked.set(p, compiled);
      const problems = 'problem' in compiled ? [compiled.problem] : 'plain' in compiled ? [] : checkNames(compiled.templates, p.vars, p.services);
      for (const pr of problems.slice(0, MAX_PROBLEMS))
        ctx.addIssue({ code: 'custom', path: ['template'], message: `template line ${pr.line}, col ${pr.col}: ${pr.message}` });
    }),
);

export type TemplateSchema = ReturnType<typeof templateSchema>;
export type TemplateParams = z.output<TemplateSchema>;

/**
 * templateSchema's answer without zod, for a template declared with any of its parameters: loading zod and building
 * and running this schema was ~5 ms of a cold run with one template. The same checks as the schema's (the path
 * checks, SERVICE_NAME, the file mode, the template-or-source rule, and the inline template compiled and its names
 * checked, kept for create() as the schema's check keeps it), the schema's key order and defaults, fresh objects
 * and arrays. Anything else, or any problem, is undefined: the schema decides and reports it with its file:line.
 */
export function quickTemplateParams(name: string, params: Readonly<Record<string, unknown>>): TemplateParams | undefined {
  for (const key in params) if (!QUICK_KEYS.has(key) || params[key] === undefined) return undefined;
  const path = 'path' in params ? params['path'] : name;
  if (!isAbsolutePath(path)) return undefined;
  // Not `??`: a null is refused by the schema, not defaulted.
  const state = params['state'] === undefined ? 'exists' : params['state'];
  if (state !== 'exists' && state !== 'absent') return undefined;
  const template = params['template'];
  if (template !== undefined && typeof template !== 'string') return undefined;
  const source = params['source'];
  if (source !== undefined && !isAbsolutePath(source)) return undefined;
  if (template !== undefined && source !== undefined) return undefined;
  if (state === 'exists' && template === undefined && source === undefined) return undefined;
  const varsIn = params['vars'];
  if (varsIn !== undefined && !isPlainRecord(varsIn)) return undefined;
  const vars: Record<string, unknown> = {};
  if (varsIn !== undefined) for (const k of Object.keys(varsIn)) vars[k] = varsIn[k];
  const services = params['services'] === undefined ? [] : quickStringArray(params['services'], 0, false);
  if (services === undefined || !services.every((s) => SERVICE_NAME.test(s))) return undefined;
  let mode: number | undefined;
  if (params['mode'] !== undefined && (mode = quickFileMode(params['mode'])) === undefined) return undefined;
  let owner: string | number | undefined;
  if (params['owner'] !== undefined && (owner = quickOwner(params['owner'])) === undefined) return undefined;
  let group: string | number | undefined;
  if (params['group'] !== undefined && (group = quickOwner(params['group'])) === undefined) return undefined;
  const force = params['force'] === undefined ? false : params['force'];
  if (typeof force !== 'boolean') return undefined;
  // The schema's shape order, optional keys only when given.
  const out: Record<string, unknown> = { path, state };
  if (template !== undefined) out['template'] = template;
  if (source !== undefined) out['source'] = source;
  out['vars'] = vars;
  out['services'] = services;
  if (mode !== undefined) out['mode'] = mode;
  if (owner !== undefined) out['owner'] = owner;
  if (group !== undefined) out['group'] = group;
  out['force'] = force;
  const p = out as TemplateParams;
  if (template !== undefined) {
    const compiled = compileChecked(template, vars, services);
    if ('problem' in compiled || ('templates' in compiled && checkNames(compiled.templates, vars, services).length > 0)) return undefined;
    checked.set(p, compiled);
  }
  return p;
}

const QUICK_KEYS = new Set(['path', 'state', 'template', 'source', 'vars', 'services', 'mode', 'owner', 'group', 'force']);

export const templateKind = defineKind<TemplateParams>({
  kind: 'template',
  description: 'a file rendered from a Liquid template (inline or a template file) with host facts, vars and service instances',
  get schema() {
    return templateSchema();
  },
  refreshable: false,
  defaults: (name) => ({ path: name }),
  quickParams: quickTemplateParams,
  // What another host's export may choose here only when the collect rule takes it (see CollectPolicy).
  collect: {
    power: {
      path: 'where root writes',
      source: 'which local file root reads as the template',
      owner: 'who owns the file',
      group: 'which group owns the file',
      mode: { why: 'setuid, setgid and sticky bits', when: modeHasSpecialBits },
    },
    fromName: ['path'],
  },
  autoEdges: (p) => {
    const edges = fileKind.autoEdges?.(toFileParams(p, undefined)) ?? {};
    const wants = [...(edges.wants ?? [])];
    // A template file generated by another resource must be there before it is rendered.
    if (p.source !== undefined) wants.push(`path:${posix.normalize(p.source)}`);
    return { provides: edges.provides ?? [], wants };
  },
  // The same namespace as file's: a template and a file on one path fight just as two files would.
  manages: (p) => fileKind.manages?.(toFileParams(p, undefined)) ?? `path ${p.path}`,
  create: (id, p, world) => createTemplate(id, p, world),
});

/**
 * Inline templates as the schema check compiled them, by the checked parameters: create() takes the same result
 * instead of parsing the text again (a second parse was ~5 ms of a cold run with one template). Held only as long
 * as the parameters are.
 */
const checked = new WeakMap<object, ReturnType<typeof compileChecked>>();

/** Enough to fix a template in one pass without flooding the report. */
const MAX_PROBLEMS = 5;
/** A runaway loop must not stall the agent: liquidjs stops a render after this long. */
const RENDER_LIMIT_MS = 5000;

interface Compiled {
  readonly text: string;
  readonly templates: Template[] | PlainTemplate;
}

function createTemplate(id: ResourceId, p: TemplateParams, world: ResourceWorld): Resource {
  // The schema compiled an inline template already (unless the graph came from the graph cache); it cannot fail
  // here, but if it did the error would say why.
  const inline = p.template === undefined ? undefined : (checked.get(p) ?? compileChecked(p.template, p.vars, p.services));
  // Re-read and re-checked on every run (the file may have been edited); parsed again only when its text changed.
  let lastSource: Compiled | undefined;

  async function sourceTemplates(source: string, signal: AbortSignal): Promise<Template[] | PlainTemplate> {
    let text: string;
    try {
      text = await readFile(source, { encoding: 'utf8', signal });
    } catch (err) {
      if (signal.aborted) throw aborted(id);
      const code = (err as NodeJS.ErrnoException).code;
      throw new BackplaneError('E_APPLY', code === 'ENOENT' ? `template file ${source} does not exist` : `cannot read template file ${source}: ${(err as Error).message}`, {
        resource: id,
        hint: code === 'ENOENT' ? 'create it, or manage it with its own file resource (this one will then wait for it)' : undefined,
        // Another resource may be about to create it; the watch re-runs this one when it appears either way.
        retryable: code === 'ENOENT',
        cause: err,
      });
    }
    if (lastSource?.text === text) return lastSource.templates;
    const compiled = compileChecked(text, p.vars, p.services);
    if ('problem' in compiled) throw templateError(id, source, [compiled.problem]);
    if ('plain' in compiled) {
      lastSource = { text, templates: compiled.plain };
      return compiled.plain;
    }
    const problems = checkNames(compiled.templates, p.vars, p.services);
    if (problems.length > 0) throw templateError(id, source, problems.slice(0, MAX_PROBLEMS));
    lastSource = { text, templates: compiled.templates };
    return compiled.templates;
  }

  async function render(ctx: CheckApplyContext): Promise<string> {
    let templates: Template[] | PlainTemplate;
    if (inline !== undefined) {
      if ('problem' in inline) throw templateError(id, undefined, [inline.problem]);
      templates = 'plain' in inline ? inline.plain : inline.templates;
    } else {
      templates = await sourceTemplates(p.source ?? '', ctx.signal);
    }
    try {
      if (!Array.isArray(templates)) {
        const text = renderPlain(templates, world.facts(), p.vars);
        if (text !== undefined) return text;
        // A value liquidjs would render its own way (or refuse): it renders the template, as it would have (parsed
        // once per plain template, as the other templates are).
        return (await liquid().render(liquidParse(templates), { facts: world.facts(), vars: p.vars, services: await serviceValues(p.services, world, ctx.signal) })) as string;
      }
      return (await liquid().render(templates, { facts: world.facts(), vars: p.vars, services: await serviceValues(p.services, world, ctx.signal) })) as string;
    } catch (err) {
      const problem = toProblem(err);
      if (problem === undefined) throw err;
      throw templateError(id, p.source, [problem]);
    }
  }

  return {
    async watch({ signal, ready, changed }: WatchContext): Promise<void> {
      const cb = (reason: string): void => changed(reason);
      await watchPath(p.path, cb, signal);
      if (p.source !== undefined && p.state === 'exists') await watchPath(p.source, cb, signal);
      // Subscribed before ready(): an instance turning healthy between the first render and here cannot be missed.
      const stops = p.state === 'exists' ? p.services.map((name) => world.services?.watch(name, () => changed(`service ${name}'s healthy instances changed`))) : [];
      ready();
      if (!signal.aborted) await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
      for (const stop of stops) stop?.();
    },
    async checkApply(ctx: CheckApplyContext): Promise<CheckResult> {
      if (ctx.signal.aborted) throw aborted(id);
      // Facts are fixed for the agent's life, vars for the graph's; a template file and service instances change
      // under us, and rendering is cheap next to the comparison the file kind then makes, so every run renders.
      const content = p.state === 'absent' ? undefined : await render(ctx);
      if (ctx.signal.aborted) throw aborted(id);
      return createFile(id, toFileParams(p, content), world).checkApply(ctx);
    },
  };
}

/**
 * The `services` the template sees: only the ones it lists (strict rendering then refuses any other, as the name
 * check did), each [] without an agent (a plain `backplane run` with no scheduler, validation, unit tests).
 */
async function serviceValues(names: readonly string[], world: ResourceWorld, signal: AbortSignal): Promise<Record<string, readonly ServiceInstance[]>> {
  const out: Record<string, readonly ServiceInstance[]> = {};
  const dir = world.services;
  for (const name of names) out[name] = dir === undefined ? [] : await dir.get(name, signal);
  return out;
}

function toFileParams(p: TemplateParams, content: string | undefined): FileParams {
  return {
    path: p.path,
    state: p.state,
    type: 'file',
    ...(content === undefined ? {} : { content }),
    ...(p.mode === undefined ? {} : { mode: p.mode }),
    ...(p.owner === undefined ? {} : { owner: p.owner }),
    ...(p.group === undefined ? {} : { group: p.group }),
    purge: false,
    force: p.force,
  };
}

// ---- plain templates ---------------------------------------------------------------------------------------------

/**
 * A template that is text and `{{ vars.a.b }}` / `{{ facts.x }}` outputs only, every name checked: rendered here
 * without liquidjs. Loading liquidjs, making its engine and parsing and analysing the template were ~14 ms of a cold
 * one-shot run with one such template (a config file with a port and a path in it, the commonest kind), on the way
 * to everything that requires the file. The output is what liquidjs gives: text as written, a string as is, a number
 * or a boolean as String() writes it. Anything else, a tag, a filter, whitespace control, a literal, an index, a
 * `services` name, a name that fails the check, is liquidjs's, and so is a value that is none of those three kinds
 * (null, a list, a map, a missing key) when it renders: liquidjs then renders the template, with its own answer or
 * error.
 */
export interface PlainTemplate {
  readonly text: string;
  /** Text, and the name paths of the outputs between them. */
  readonly parts: readonly (string | readonly string[])[];
}

const PLAIN_OUTPUT = /^[ \t\r\n]*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)[ \t\r\n]*$/;

/** `text` as a plain template, or undefined when liquidjs must read it (see PlainTemplate). */
export function plainTemplate(text: string, vars: Readonly<Record<string, unknown>>): PlainTemplate | undefined {
  if (text.includes('{%')) return undefined;
  const parts: (string | readonly string[])[] = [];
  let pos = 0;
  for (;;) {
    const open = text.indexOf('{{', pos);
    if (open === -1) break;
    const close = text.indexOf('}}', open + 2);
    if (close === -1) return undefined;
    const name = PLAIN_OUTPUT.exec(text.slice(open + 2, close))?.[1];
    if (name === undefined) return undefined;
    const [root, ...rest] = name.split('.');
    if (rest.length === 0) return undefined;
    // The checks liquidjs's path gets (checkNames): a name that fails one is reported by that path, with its position.
    if (root === 'vars' ? walk('vars', rest, vars) !== undefined : root === 'facts' ? walk('facts', rest, FACT_SHAPE) !== undefined : true) return undefined;
    parts.push(text.slice(pos, open), [root ?? '', ...rest]);
    pos = close + 2;
  }
  parts.push(text.slice(pos));
  return { text, parts };
}

/** The plain template rendered, or undefined where a value is not a string, number or boolean (liquidjs's then). */
export function renderPlain(t: PlainTemplate, facts: HostFacts, vars: Readonly<Record<string, unknown>>): string | undefined {
  let out = '';
  for (const part of t.parts) {
    if (typeof part === 'string') {
      out += part;
      continue;
    }
    let node: unknown = part[0] === 'facts' ? facts : vars;
    for (const seg of part.slice(1)) {
      if (!isPlainMap(node) || !Object.hasOwn(node, seg)) return undefined;
      node = node[seg];
    }
    if (typeof node === 'string') out += node;
    else if (typeof node === 'number' || typeof node === 'boolean') out += String(node);
    else return undefined;
  }
  return out;
}

/** liquidjs's parse of a plain template, for the renders it takes over (see renderPlain); made once. */
const plainParsed = new WeakMap<PlainTemplate, Template[]>();
function liquidParse(t: PlainTemplate): Template[] {
  let parsed = plainParsed.get(t);
  if (parsed === undefined) plainParsed.set(t, (parsed = liquid().parse(t.text)));
  return parsed;
}

/** A plain template where the text is one (no liquidjs loaded), else liquidjs's parse. */
function compileChecked(text: string, vars: Readonly<Record<string, unknown>>, services: readonly string[]): { plain: PlainTemplate } | ReturnType<typeof compile> {
  // A template that lists services reads them through liquidjs (their values come from the cluster).
  const plain = services.length === 0 ? plainTemplate(text, vars) : undefined;
  return plain !== undefined ? { plain } : compile(text);
}

// ---- Liquid ------------------------------------------------------------------------------------------------------

/**
 * Made on first use: constructing Liquid costs milliseconds that a graph without templates should not pay. The CLI
 * loads liquidjs itself at the first read of one of its exports, from a script of its own with a code cache
 * (LAZY_PACKAGES in scripts/build.mjs).
 */
let engine: Liquid | undefined;

/**
 * The `date` filter's locale: the host's default, as liquidjs would take it, but resolved only when a date is
 * formatted. Left unset, liquidjs asks Intl for the default locale when the engine is made, and that first use of
 * Intl loads ICU's locale data: 20-45 ms of every run with a template (measured on a 2-core VM), for a filter few
 * templates use. liquidjs hands this value to Intl.DateTimeFormat and Date#toLocale*String untouched, and to Intl an
 * empty list of locales means its default locale: the same names and formats (a test renders dates under another
 * LANG). liquidjs types the option as a string; it is only ever passed on.
 */
const HOST_LOCALE = [] as unknown as string;

function liquid(): Liquid {
  if (engine !== undefined) return engine;
  const l = new Liquid({
    strictVariables: true,
    strictFilters: true,
    // Facts differ between hosts (facts.interfaces.eth1 may not exist): `{% if %}` and `| default` may test for them.
    lenientIf: true,
    // vars.constructor and friends are not values from the graph.
    ownPropertyOnly: true,
    renderLimit: RENDER_LIMIT_MS,
    cache: false,
    locale: HOST_LOCALE,
  });
  // Files a template would pull in are neither watched nor ordered by auto-edges, so an edit there would go unseen.
  for (const name of ['include', 'render', 'layout']) {
    l.registerTag(name, {
      parse() {
        throw new Error(`{% ${name} %} is not supported: a template cannot read other files; put the text in this template or pass it in vars`);
      },
      render() {
        return undefined;
      },
    });
  }
  engine = l;
  return l;
}

interface Problem {
  readonly line: number;
  readonly col: number;
  readonly message: string;
}

function compile(text: string): { templates: Template[] } | { problem: Problem } {
  try {
    return { templates: liquid().parse(text) };
  } catch (err) {
    const problem = toProblem(err);
    if (problem === undefined) throw err;
    return { problem };
  }
}

function toProblem(err: unknown): Problem | undefined {
  // Nothing but liquidjs throws a LiquidError, so without an engine made there is none to recognise (and the CLI
  // need not load liquidjs to find out).
  if (engine === undefined || !(err instanceof LiquidError)) return undefined;
  // RenderError wraps the error a tag or filter threw; the position is in the token either way.
  const [line = 1, col = 1] = err.token.getPosition();
  let message = (err.originalError?.message ?? err.message).replace(/, line:\d+, col:\d+$/, '');
  const undef = /^undefined variable: (.*)$/.exec(message);
  if (undef !== null) message = `undefined variable "${undef[1] ?? ''}"`;
  return { line, col, message };
}

function templateError(id: ResourceId, source: string | undefined, problems: readonly Problem[]): BackplaneError {
  const first = problems[0];
  const where = source === undefined ? 'template' : source;
  const text = problems.map((pr) => `${where} line ${pr.line}, col ${pr.col}: ${pr.message}`).join('; ');
  return new BackplaneError('E_APPLY', `cannot render: ${text}`, {
    resource: id,
    ...(source === undefined || first === undefined ? {} : { where: { file: source, line: first.line, col: first.col } }),
    hint: problems.some((pr) => pr.message.startsWith('undefined variable "facts.'))
      ? 'this host lacks that fact: test for it with {% if facts.… %} or give a fallback with | default: …'
      : `fix the ${source === undefined ? 'template' : 'template file'}; it sees facts.* (${FACT_NAMES.join(', ')}), vars.* (declared in vars) and services.* (listed in services)`,
  });
}

// ---- names a template may use ------------------------------------------------------------------------------------

/** The shape of HostFacts as far as a template name can be checked; `true` = any value (host-specific keys). */
type Shape = true | { readonly [key: string]: Shape };
const FACT_SHAPE: Record<keyof HostFacts, Shape> = {
  hostname: true,
  fqdn: true,
  os: { platform: true, release: true, arch: true },
  cpus: true,
  memory: { total: true, free: true },
  interfaces: true,
  ipv4: true,
};
const FACT_NAMES = Object.keys(FACT_SHAPE);
/** Liquid reads these off arrays, strings and objects that do not have them as keys. */
const SPECIAL = new Set(['size', 'first', 'last']);

/**
 * Every global name the template uses must be `facts.<a fact>` or `vars.<declared>`, checked as deep as the path
 * is literal and the value is a map: what strict rendering would only report for the branch actually taken.
 */
function checkNames(templates: Template[], vars: Readonly<Record<string, unknown>>, services: readonly string[]): Problem[] {
  const problems: Problem[] = [];
  const seen = new Set<string>();
  const analysis = liquid().analyzeSync(templates, { partials: false });
  for (const uses of Object.values(analysis.globals)) {
    for (const v of uses) {
      const message = checkVariable(v, vars, services);
      if (message === undefined) continue;
      const key = `${v.location.row}:${v.location.col}`;
      if (seen.has(key)) continue;
      seen.add(key);
      problems.push({ line: v.location.row, col: v.location.col, message });
    }
  }
  return problems.sort((a, b) => a.line - b.line || a.col - b.col);
}

function checkVariable(v: Variable, vars: Readonly<Record<string, unknown>>, services: readonly string[]): string | undefined {
  const [root, ...rest] = v.segments;
  if (root === 'facts') return walk('facts', rest, FACT_SHAPE);
  if (root === 'vars') return walk('vars', rest, vars);
  // Each listed service is a list: past its name, rendering checks the rest (an instance's fields, a port name).
  if (root === 'services') return walk('services', rest, Object.fromEntries(services.map((s) => [s, []])));
  if (typeof root !== 'string') return undefined;
  const guess = closest(root, ['facts', 'vars', 'services', ...Object.keys(vars), ...FACT_NAMES]);
  const hint =
    guess === 'facts' || guess === 'vars' || guess === 'services'
      ? `did you mean ${guess}?`
      : guess !== undefined && Object.hasOwn(vars, guess)
        ? `did you mean vars.${guess}?`
        : guess !== undefined
          ? `did you mean facts.${guess}?`
          : 'a template sees facts.*, vars.* and services.*';
  return `unknown variable "${root}" (${hint})`;
}

/**
 * Follows literal segments while the value is a map and reports the first key that is not there. Past a list, a
 * scalar, a host-specific fact (`true` in FACT_SHAPE) or a computed key, rendering checks the rest.
 */
function walk(root: 'facts' | 'vars' | 'services', segments: readonly (string | number | Variable)[], start: unknown): string | undefined {
  let node: unknown = start;
  let path: string = root;
  for (const seg of segments) {
    if (typeof seg !== 'string' || !isPlainMap(node)) return undefined;
    if (!Object.hasOwn(node, seg)) {
      if (SPECIAL.has(seg)) return undefined;
      const keys = Object.keys(node);
      const guess = closest(seg, keys);
      if (root === 'services') {
        // A typo of a listed service, or a service the template forgot to list: both are told apart here.
        const mean = guess !== undefined && guess !== seg ? `did you mean services.${guess}? or ` : '';
        return `"services.${seg}" is not listed in this template's services (${mean}add "${seg}" to services: [...])`;
      }
      const what = root === 'facts' ? 'is not a fact' : 'is not declared in vars';
      const known = keys.length === 0 ? '' : guess !== undefined ? `; did you mean ${path}.${guess}?` : `; known: ${keys.slice(0, 10).join(', ')}`;
      return `"${path}.${seg}" ${what}${known}`;
    }
    path = `${path}.${seg}`;
    node = node[seg];
  }
  return undefined;
}

function isPlainMap(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function aborted(id: ResourceId): BackplaneError {
  return new BackplaneError('E_ABORTED', 'stopped before finishing: the agent is shutting down or the graph was replaced', { resource: id });
}
