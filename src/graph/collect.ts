import { posix } from 'node:path';
import { BackplaneError } from '../errors.js';
import type { AnyResourceKind, PowerParam } from '../resources/types.js';
import { closest } from '../util/suggest.js';
import type { KindRegistry } from './build.js';
import type { ExportedResource } from './graph.js';
import { setParam, type CollectRule, type RawResource } from './raw.js';
import { schemaShape } from './schema-util.js';

/** An exported resource as found in the cluster store: who exported it, and what. */
export interface ExportEntry {
  readonly host: string;
  readonly resource: ExportedResource;
}

/**
 * A resource collected for this host. `refused` says why it must not be applied (an export that chooses a power
 * parameter the rule does not take); the caller logs it once and leaves the resource out.
 */
export interface CollectedResource extends RawResource {
  readonly refused?: string;
  /** The name the exporter gave it, when this host names it otherwise (see collectedName). */
  readonly exportedAs: string;
}

/**
 * Which of the cluster's exports this host collects, as raw resources for the graph builder. Pure: the same
 * exports and rules always give the same resources, in a stable order, so a re-render changes only what changed.
 * An export is collected when it is addressed to this host (or to all) and some rule matches its kind and
 * exporter. The first matching rule decides what the resource is: its `set`, plus the exporter's parameters it
 * takes (see CollectRule), on top of the kind's defaults. The exporter's metaparams are not taken, except
 * `noop: true`, which only ever makes a resource do less.
 */
export function collectResources(
  self: string,
  rules: readonly CollectRule[],
  entries: readonly ExportEntry[],
  kinds: KindRegistry,
  memo?: CollectMemo,
): CollectedResource[] {
  if (rules.length === 0) return [];
  const out: CollectedResource[] = [];
  const sorted = [...entries].sort((a, b) => cmp(a.host, b.host) || cmp(a.resource.kind, b.resource.kind) || cmp(a.resource.name, b.resource.name));
  if (memo !== undefined) {
    // By what the rules say, not by the array: an edit of the graph file parses the same rules into new objects.
    const said = JSON.stringify(rules.map((x) => [x.kind, x.from, x.set, x.take ?? null]));
    if (memo.rules !== said) {
      memo.rules = said;
      memo.byEntry = new WeakMap();
    }
  }
  for (const entry of sorted) {
    const known = memo?.byEntry.get(entry);
    if (known !== undefined) {
      if (known !== null) out.push(known);
      continue;
    }
    const made = collectOne(self, rules, entry, kinds);
    memo?.byEntry.set(entry, made ?? null);
    if (made !== undefined) out.push(made);
  }
  return out;
}

/**
 * What collectResources made of each export entry (null: nothing), for one set of rules (`rules`: what they say), so
 * an entry seen again — the very object, as the cluster link hands unchanged exports over again — gives the very
 * resource it gave before (which buildGraph's `reuse` then need not validate again). Only for one caller's host and
 * kinds.
 */
export interface CollectMemo {
  rules: string | undefined;
  byEntry: WeakMap<ExportEntry, CollectedResource | null>;
}

export function collectMemo(): CollectMemo {
  return { rules: undefined, byEntry: new WeakMap() };
}

function collectOne(self: string, rules: readonly CollectRule[], { host, resource: r }: ExportEntry, kinds: KindRegistry): CollectedResource | undefined {
  if (r.to !== '*' && !r.to.includes(self)) return undefined;
  const rule = rules.find((x) => x.kind === r.kind && (x.from === '*' || x.from.includes(host)));
  if (rule === undefined) return undefined;
  const kind = kinds.get(r.kind);
  const taken = kind === undefined ? { refused: `unknown kind "${r.kind}"` } : takeParams(kind, rule, r.params, host);
  const params: Record<string, unknown> = 'refused' in taken ? { ...r.params } : taken.params;
  for (const [k, v] of Object.entries(rule.set)) setParam(params, k, substitute(v, host, r.name));
  const loc = { file: `exported by ${host}`, line: 0, col: 0 };
  return {
    kind: r.kind,
    name: collectedName(kind, params, r.name),
    exportedAs: r.name,
    params,
    meta: isNoop(r.meta) ? { noop: true } : undefined,
    origin: host,
    loc,
    locate: () => loc,
    locateMeta: () => loc,
    ...('refused' in taken ? { refused: taken.refused } : {}),
  };
}

/**
 * A collected resource is named by what it manages here when that is not its name: a file is `file[<path>]` with
 * the path the rule set (`/srv/in/b-motd`), not the exporter's `/etc/motd`. Log lines print `kind[name]`, and a
 * reader of this host's log must see the file that was written; two hosts exporting the same name to different
 * paths are then two resources, not a clash. Derived from the export and the rule alone, so the name is the same on
 * every re-render and the graph swap leaves an unchanged resource alone.
 */
function collectedName(kind: AnyResourceKind | undefined, params: Readonly<Record<string, unknown>>, exported: string): string {
  const from = kind?.collect?.fromName ?? [];
  const p = from.length === 1 ? params[from[0] ?? ''] : undefined;
  return typeof p === 'string' && p !== '' ? p : exported;
}

/**
 * The exporter's parameters a rule takes. A parameter the rule sets is the rule's; one it does not take is dropped,
 * unless it gives power — then the whole resource is refused, since applying the rest could do what nobody asked.
 */
function takeParams(
  kind: AnyResourceKind,
  rule: CollectRule,
  exported: Readonly<Record<string, unknown>>,
  host: string,
): { params: Record<string, unknown> } | { refused: string } {
  const power = kind.collect?.power ?? {};
  for (const p of kind.collect?.fromName ?? []) {
    if (!(p in rule.set) && rule.take?.includes(p) !== true)
      return { refused: `the collect rule neither sets nor takes '${p}', so ${host} would choose ${why(power[p]) ?? p} by naming the resource` };
  }
  const known = new Set(Object.keys(schemaShape(kind.schema)));
  const params: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(exported)) {
    if (k in rule.set) continue;
    const p = power[k];
    if (rule.take !== undefined) {
      if (rule.take.includes(k)) setParam(params, k, v);
      else if (p !== undefined && isPowerful(p, v)) return { refused: notTaken(k, p, v) };
      continue;
    }
    if (p !== undefined && isPowerful(p, v)) return { refused: notTaken(k, p, v) };
    if (known.has(k)) setParam(params, k, v);
  }
  return { params };
}

function notTaken(param: string, p: PowerParam, v: unknown): string {
  const what = typeof p === 'string' ? `'${param}' (${p})` : `'${param}' ${JSON.stringify(v)} (${p.why})`;
  return `the collect rule does not take ${what}; add '${param}' to its take, or set it`;
}

function isPowerful(p: PowerParam, v: unknown): boolean {
  return typeof p === 'string' || p.when(v);
}

function why(p: PowerParam | undefined): string | undefined {
  return p === undefined ? undefined : typeof p === 'string' ? p : p.why;
}

function isNoop(meta: unknown): boolean {
  return typeof meta === 'object' && meta !== null && (meta as { noop?: unknown }).noop === true;
}

/** `{host}`, `{name}` and `{basename}` in the rule's strings, also inside lists and maps (an argv, an env). */
function substitute(v: unknown, host: string, name: string): unknown {
  if (Array.isArray(v)) return v.map((x: unknown) => substitute(x, host, name));
  if (typeof v === 'object' && v !== null) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, substitute(x, host, name)]));
  if (typeof v !== 'string') return v;
  return v.replace(/\{(host|name|basename)\}/g, (_m, key: string) => (key === 'host' ? host : key === 'name' ? name : posix.basename(name)));
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Validation of collect rules, for the graph builder: an unknown kind or parameter (in `take` or `set`) is an
 * error; so is a rule that leaves a parameter the kind derives from the resource's name (a file's path) to the
 * exporter without saying so. Taking a power parameter is allowed, with a warning naming who can then choose it.
 */
export function checkCollectRules(
  rules: readonly CollectRule[],
  kinds: KindRegistry,
): { errors: BackplaneError[]; warnings: BackplaneError[] } {
  const errors: BackplaneError[] = [];
  const warnings: BackplaneError[] = [];
  rules.forEach((rule, i) => {
    const kind = kinds.get(rule.kind);
    if (kind === undefined) {
      const guess = closest(rule.kind, kinds.names());
      errors.push(
        new BackplaneError('E_UNKNOWN_KIND', `collect[${i}]: unknown resource kind "${rule.kind}"`, {
          where: rule.loc,
          hint: `${guess === undefined ? '' : `did you mean "${guess}"? `}known kinds: ${[...kinds.names()].sort().join(', ')}`,
        }),
      );
      return;
    }
    const known = Object.keys(schemaShape(kind.schema));
    const power = kind.collect?.power ?? {};
    const unknown = (what: 'take' | 'set', key: string): void => {
      const guess = closest(key, known);
      errors.push(
        new BackplaneError('E_SCHEMA', `collect[${i}].${what}: ${rule.kind} has no parameter "${key}"`, {
          where: rule.loc,
          hint: guess === undefined ? `${rule.kind} parameters: ${known.join(', ') || '(none)'}` : `did you mean "${guess}"?`,
        }),
      );
    };
    for (const key of Object.keys(rule.set)) if (!known.includes(key)) unknown('set', key);
    const who = rule.from === '*' ? 'any host' : rule.from.length === 1 ? `host ${rule.from[0] ?? ''}` : `any of ${rule.from.join(', ')}`;
    for (const key of rule.take ?? []) {
      if (!known.includes(key)) {
        unknown('take', key);
        continue;
      }
      const p = power[key];
      if (p === undefined || key in rule.set) continue;
      warnings.push(
        new BackplaneError('W_POWER_TAKE', `collect[${i}].take: '${key}' lets ${who} exporting ${rule.kind} choose ${why(p) ?? key} on this host`, {
          where: rule.loc,
          hint: rule.from === '*' ? 'restrict `from` to hosts you trust, or set it instead of taking it' : 'take it only from hosts you trust with it, or set it instead',
        }),
      );
    }
    for (const p of kind.collect?.fromName ?? []) {
      if (p in rule.set || rule.take?.includes(p) === true) continue;
      errors.push(
        new BackplaneError('E_SCHEMA', `collect[${i}]: a ${rule.kind} rule must set or take '${p}'`, {
          where: rule.loc,
          hint:
            `'${p}' defaults to the resource's name, which the exporter chooses; ` +
            (p === 'path'
              ? `set it per exporter, e.g. set: { path: "/srv/collected/{host}-{basename}" }, or take: [path] to let exporters choose ${why(power[p]) ?? p}`
              : `take: [${p}] to let exporters choose it (restrict \`from\` to hosts you trust), or set it`),
        }),
      );
    }
  });
  return { errors, warnings };
}
