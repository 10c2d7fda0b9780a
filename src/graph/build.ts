import type { z } from 'zod';
import { BackplaneError, ValidationErrors, formatLocation, type SourceLocation } from '../errors.js';
import { canonicalJson } from '../util/canonical.js';
import { closest } from '../util/suggest.js';
import type { AnyResourceKind, AutoEdges } from '../resources/types.js';
import { findCycles } from './cycles.js';
import { Graph, type Edge, type ExportedResource, type Vertex } from './graph.js';
import { parseRef, resourceId, type ResourceId } from './ids.js';
import { checkCollectRules } from './collect.js';
import { META_DEFAULTS, metaSchema, type Meta } from './meta.js';
import type { RawGraph, RawResource } from './raw.js';
import { schemaShape } from './schema-util.js';

export interface KindRegistry {
  get(kind: string): AnyResourceKind | undefined;
  names(): Iterable<string>;
  /** Loads the kinds named that this registry knows, so that get() has them: before a graph of them is built (src/resources/registry.ts). */
  prepare(kinds: Iterable<string>): Promise<void>;
}

/**
 * What one build leaves for the next of the same caller (see buildGraph's `reuse`): the vertex built from each raw
 * resource object (a raw resource is never changed once made, so the same object validates to the same vertex again,
 * as long as it is the same kind), and what each vertex's kind made of its parameters (what it manages, its
 * auto-edge hints). Weak: what no graph holds any more goes.
 */
export interface VertexReuse {
  readonly vertices: WeakMap<RawResource, { readonly kind: AnyResourceKind; readonly vertex: Vertex }>;
  readonly derived: WeakMap<Vertex, Derived>;
}

export function vertexReuse(): VertexReuse {
  return { vertices: new WeakMap(), derived: new WeakMap() };
}

interface Derived {
  readonly manages: string | undefined;
  readonly hints: AutoEdges | undefined;
}

/**
 * Turns a frontend's raw declarations into a validated, acyclic Graph, or throws ValidationErrors listing every
 * problem with its file:line. Pure: reads nothing but its arguments, so `validate` and `run` reject exactly the same
 * input and nothing is ever applied from a graph that did not build.
 *
 * `reuse` carries vertices from one build to the next of the same caller: a resource given as the very object it
 * was given before keeps its vertex instead of being validated again. An agent re-renders its graph on every export
 * any host changes; with 30 hosts exporting two files each that was 60 parameter checks (and, in the engine's swap,
 * 60 fingerprints) per change per agent, for one or two resources that changed.
 */
export function buildGraph(raw: RawGraph, registry: KindRegistry, reuse?: VertexReuse): Graph {
  const errors: BackplaneError[] = [...raw.errors];
  const vertices = new Map<ResourceId, Vertex>();
  const kindOf = new Map<ResourceId, AnyResourceKind>();

  const exports: ExportedResource[] = [];
  const exportedIds = new Set<ResourceId>();
  for (const r of raw.resources) {
    const id = resourceId(r.kind, r.name);
    const kind = registry.get(r.kind);
    if (kind === undefined) {
      const guess = closest(r.kind, registry.names());
      errors.push(
        new BackplaneError('E_UNKNOWN_KIND', `unknown resource kind "${r.kind}"`, {
          where: r.loc,
          hint: `${guess === undefined ? '' : `did you mean "${guess}"? `}known kinds: ${[...registry.names()].sort().join(', ')}`,
        }),
      );
      // A placeholder, as for bad parameters below: edges to it must not claim it was never declared.
      if (!vertices.has(id)) vertices.set(id, { id, kind: r.kind, name: r.name, params: {}, meta: metaSchema().parse(undefined), loc: r.loc, fingerprint: '' });
      continue;
    }
    const prior = vertices.get(id);
    if (prior !== undefined) {
      errors.push(
        new BackplaneError('E_DUPLICATE', `${id} is declared twice`, {
          where: r.loc,
          hint: `it was first declared at ${formatLocation(prior.loc)}; give each resource of a kind a unique name`,
        }),
      );
      continue;
    }
    const known = r.export === undefined ? reuse?.vertices.get(r) : undefined;
    // The kind as well: a vertex validated by another registry's kind says nothing about this one.
    if (known !== undefined && known.kind === kind) {
      vertices.set(id, known.vertex);
      kindOf.set(id, kind);
      continue;
    }
    // The kind's shortcut first (the schema's own answer for its common shapes, without zod), else the schema.
    const quick = kind.quickParams?.(r.name, r.params);
    const params =
      quick !== undefined ? { success: true as const, data: quick } : kind.schema.safeParse(kind.defaults === undefined ? r.params : { ...kind.defaults(r.name), ...r.params });
    if (!params.success) {
      for (const e of issuesToErrors(params.error.issues, id, (p) => r.locate(p), 'parameter', Object.keys(schemaShape(kind.schema))))
        errors.push(e);
    }
    // Most resources declare no meta: they share one frozen default instead of 100,000 equal copies.
    const meta = r.meta === undefined ? DEFAULT_META : metaSchema().safeParse(r.meta);
    if (!meta.success) {
      for (const e of issuesToErrors(meta.error.issues, id, (p) => r.locateMeta(p), 'meta', Object.keys(schemaShape(metaSchema()))))
        errors.push(e);
    }
    if (!params.success || !meta.success) {
      // Keep a placeholder so edges to it do not produce a second, misleading "missing resource" error.
      vertices.set(id, vertex(id, r, {}, metaSchema().parse(undefined), ''));
      continue;
    }
    if (r.export !== undefined) {
      if (exportedIds.has(id)) {
        errors.push(new BackplaneError('E_DUPLICATE', `${id} is exported twice`, { where: r.loc, hint: 'give each exported resource of a kind a unique name' }));
        continue;
      }
      // Published as written, not as defaulted here: each collector validates and defaults with its own kinds.
      exports.push({ kind: r.kind, name: r.name, params: r.params, meta: r.meta, to: r.export });
      exportedIds.add(id);
      vertices.delete(id);
      continue;
    }
    const v = vertex(id, r, params.data, meta.data, undefined);
    vertices.set(id, v);
    kindOf.set(id, kind);
    reuse?.vertices.set(r, { kind, vertex: v });
  }

  // Without `reuse` nothing is kept (each is worked out where it is needed): a graph built once, a 100,000-file run,
  // would only carry it around.
  const derive =
    reuse === undefined
      ? undefined
      : (v: Vertex, kind: AnyResourceKind): Derived => {
          const known = reuse.derived.get(v);
          if (known !== undefined) return known;
          const d = { manages: kind.manages?.(v.params), hints: kind.autoEdges?.(v.params) };
          reuse.derived.set(v, d);
          return d;
        };
  errors.push(...overlaps(vertices, kindOf, derive));

  const edgeSet = new EdgeSet();
  const addEdge = (e: Edge): void => edgeSet.add(e);
  for (const e of raw.edges) {
    const ends: ResourceId[] = [];
    for (const ref of [e.from, e.to]) {
      const parsed = parseRef(ref);
      if (parsed === undefined) {
        errors.push(
          new BackplaneError('E_BAD_REF', `"${ref}" is not a resource reference`, {
            where: e.loc,
            hint: 'write references as kind[name] or kind:name, e.g. file[/etc/motd]',
          }),
        );
        continue;
      }
      const id = resourceId(parsed.kind, parsed.name);
      if (exportedIds.has(id)) {
        errors.push(
          new BackplaneError('E_MISSING_REF', `edge refers to ${id}, which is exported, not managed on this host`, {
            where: e.loc,
            hint: 'an exported resource is applied only where it is collected; remove the edge or the export',
          }),
        );
        continue;
      }
      if (!vertices.has(id)) {
        const guess = closest(id, vertices.keys());
        errors.push(
          new BackplaneError('E_MISSING_REF', `edge refers to ${id}, which is not declared in this graph`, {
            where: e.loc,
            hint: guess === undefined ? 'declare that resource or remove the edge' : `did you mean ${guess}?`,
          }),
        );
        continue;
      }
      ends.push(id);
    }
    const [from, to] = ends;
    if (ends.length !== 2 || from === undefined || to === undefined) continue;
    addEdge({ from, to, notify: e.notify, auto: false });
  }

  addAutoEdges(vertices, kindOf, derive, addEdge);

  // Cycles are looked for even when other errors were found, so one run reports every problem in the file. Edges
  // with a bad end were dropped above, so any cycle found here is made of relations the user really declared —
  // or of automatic edges, which give way: an auto-edge that would close a cycle is a guess that was wrong (a
  // package's directories only become known once it is installed), so it is dropped instead of failing the graph.
  // Dropping it changes the order things run in, so it is said (a warning with the cycle it would have closed).
  const warnings: BackplaneError[] = [];
  for (;;) {
    const succ = new Map<ResourceId, ResourceId[]>();
    for (const e of edgeSet.values()) {
      const list = succ.get(e.from);
      if (list === undefined) succ.set(e.from, [e.to]);
      else list.push(e.to);
    }
    const next = (id: ResourceId): readonly ResourceId[] => succ.get(id) ?? NO_IDS;
    // Nearly every graph has no cycle: a topological pass says so for about two thirds of Tarjan's cost (one
    // directory of 100,000 files: 115 against 178 ms), and Tarjan then runs only to name the cycles.
    const cycles = isAcyclic(vertices.keys(), succ) ? [] : findCycles([...vertices.keys()], next);
    let dropped = false;
    for (const cycle of cycles) {
      for (let i = 0; i + 1 < cycle.length; i++) {
        const from = cycle[i];
        const to = cycle[i + 1];
        if (from !== undefined && to !== undefined && edgeSet.get(from, to)?.auto === true) {
          edgeSet.delete(from, to);
          dropped = true;
          warnings.push(
            new BackplaneError('W_AUTOEDGE_DROPPED', `automatic edge ${from} -> ${to} left out: it would close the cycle ${cycle.join(' -> ')}`, {
              where: vertices.get(to)?.loc,
              resource: to,
              hint: `${to} is no longer ordered after ${from}; if it must be, remove the declared edge that closes the cycle, or set meta: { autoedge: false } on ${to} to silence this`,
            }),
          );
          break;
        }
      }
    }
    if (dropped) continue;
    for (const cycle of cycles) {
      const first = cycle[0] === undefined ? undefined : vertices.get(cycle[0]);
      errors.push(
        new BackplaneError('E_CYCLE', `dependency cycle: ${cycle.join(' -> ')}`, {
          where: first?.loc,
          hint: 'a resource cannot (even indirectly) depend on itself; remove one of these edges',
        }),
      );
    }
    break;
  }
  const collect = raw.collect ?? [];
  const rules = checkCollectRules(collect, registry);
  errors.push(...rules.errors);
  const edges = edgeSet.values();
  if (errors.length > 0) throw new ValidationErrors(errors);
  return new Graph(vertices, edges, raw.source, exports, collect, [...rules.warnings, ...warnings]);
}

const NO_IDS: readonly ResourceId[] = Object.freeze([]);

/**
 * The graph's edges, one per (from, to), in the order first added; a second edge between the same two resources is
 * merged into the first (notify if either notifies, auto only if both are). Indexed by a map per source rather than
 * by a `${from}\0${to}` string: 100,000 files under one directory made 100,000 such strings of ~130 characters, each
 * hashed into one map, a good part of a cold start's validation.
 */
class EdgeSet {
  private readonly list: (Edge | undefined)[] = [];
  private readonly at = new Map<ResourceId, Map<ResourceId, number>>();
  private dropped = false;

  add(e: Edge): void {
    let byTo = this.at.get(e.from);
    if (byTo === undefined) this.at.set(e.from, (byTo = new Map<ResourceId, number>()));
    const i = byTo.get(e.to);
    const prior = i === undefined ? undefined : this.list[i];
    if (i === undefined || prior === undefined) {
      byTo.set(e.to, this.list.length);
      this.list.push(e);
    } else {
      this.list[i] = { ...prior, notify: prior.notify || e.notify, auto: prior.auto && e.auto };
    }
  }

  get(from: ResourceId, to: ResourceId): Edge | undefined {
    const i = this.at.get(from)?.get(to);
    return i === undefined ? undefined : this.list[i];
  }

  delete(from: ResourceId, to: ResourceId): void {
    const byTo = this.at.get(from);
    const i = byTo?.get(to);
    if (byTo === undefined || i === undefined) return;
    byTo.delete(to);
    this.list[i] = undefined;
    this.dropped = true;
  }

  values(): Edge[] {
    return this.dropped ? this.list.filter((e): e is Edge => e !== undefined) : (this.list as Edge[]);
  }
}

/**
 * Whether following `succ` from every vertex never comes back (Kahn's algorithm): one count per vertex with incoming
 * edges and a queue, where finding the cycles themselves (Tarjan) keeps two numbers, a stack flag and a frame each.
 */
function isAcyclic(ids: Iterable<ResourceId>, succ: ReadonlyMap<ResourceId, readonly ResourceId[]>): boolean {
  const indeg = new Map<ResourceId, number>();
  for (const list of succ.values()) for (const to of list) indeg.set(to, (indeg.get(to) ?? 0) + 1);
  const queue: ResourceId[] = [];
  for (const id of ids) if (!indeg.has(id)) queue.push(id);
  for (let i = 0; i < queue.length; i++) {
    for (const to of succ.get(queue[i] as ResourceId) ?? NO_IDS) {
      const d = (indeg.get(to) ?? 0) - 1;
      if (d === 0) {
        indeg.delete(to);
        queue.push(to);
      } else indeg.set(to, d);
    }
  }
  // Every vertex left with incoming edges sits on or behind a cycle (then findCycles says which).
  return indeg.size === 0;
}

/**
 * Made outside buildGraph on purpose: a getter created in its loop would keep buildGraph's whole scope (the raw
 * graph, every error, every edge) alive as long as the vertex lives. The location is lazy because finding a line
 * means parsing the file for positions, which only errors and `graph` output need.
 */
function vertex(id: ResourceId, r: RawResource, params: unknown, meta: Meta, fingerprint: string | undefined): Vertex {
  return new BuiltVertex(id, r, params, meta, fingerprint);
}

/** A class for the same reason as the frontends' raw resources: a literal with getters is a dictionary in V8. */
class BuiltVertex implements Vertex {
  readonly kind: string;
  readonly name: string;
  constructor(
    readonly id: ResourceId,
    private readonly raw: RawResource,
    readonly params: unknown,
    readonly meta: Meta,
    // Computed when first asked for (a graph swap compares them): a one-shot run never needs one, and a string per
    // resource holding its whole definition again was a good part of an idle agent's memory.
    private fp: string | undefined,
  ) {
    this.kind = raw.kind;
    this.name = raw.name;
  }
  get loc(): SourceLocation | undefined {
    return this.raw.loc;
  }
  get fingerprint(): string {
    return (this.fp ??= canonicalJson({ k: this.kind, p: this.params, m: this.meta }));
  }
}

/** The meta of a resource that declares none: frozen, since every such vertex shares it. */
const DEFAULT_META = { success: true as const, data: deepFreeze(structuredClone(META_DEFAULTS)) };

/**
 * The one meta object every vertex without declared meta shares (frozen): the validated-graph cache stores such a
 * vertex's meta as "the shared one" and gives it back this very object (src/agent/graph-cache.ts).
 */
export const SHARED_DEFAULT_META: Meta = DEFAULT_META.data;

function deepFreeze<T>(v: T): T {
  if (v !== null && typeof v === 'object') {
    for (const c of Object.values(v)) deepFreeze(c);
    Object.freeze(v);
  }
  return v;
}

/**
 * Two resources that manage the same thing under different names (file[a] and file[b], both path /srv/x) validate
 * one by one, then undo each other's work forever. Refused here, each pair with both locations.
 */
function overlaps(
  vertices: ReadonlyMap<ResourceId, Vertex>,
  kindOf: ReadonlyMap<ResourceId, AnyResourceKind>,
  derive: ((v: Vertex, kind: AnyResourceKind) => Derived) | undefined,
): BackplaneError[] {
  const errors: BackplaneError[] = [];
  const owner = new Map<string, Vertex>();
  for (const [id, v] of vertices) {
    const kind = kindOf.get(id);
    const thing = kind?.manages === undefined ? undefined : derive === undefined ? kind.manages(v.params) : derive(v, kind).manages;
    if (thing === undefined) continue;
    const prior = owner.get(thing);
    if (prior === undefined) {
      owner.set(thing, v);
      continue;
    }
    const at = formatLocation(prior.loc);
    errors.push(
      new BackplaneError('E_OVERLAP', `${id} manages ${thing}, which ${prior.id}${at === '' ? '' : ` (${at})`} already manages`, {
        where: v.loc,
        resource: id,
        hint: `the two would undo each other's changes forever; keep one resource for ${thing} and remove or rename the other`,
      }),
    );
  }
  return errors;
}

function addAutoEdges(
  vertices: ReadonlyMap<ResourceId, Vertex>,
  kindOf: ReadonlyMap<ResourceId, AnyResourceKind>,
  derive: ((v: Vertex, kind: AnyResourceKind) => Derived) | undefined,
  addEdge: (e: Edge) => void,
): void {
  // Several resources may provide one key (a package and a directory resource both provide path:/etc/nginx):
  // the wanting resource depends on all of them. Only keys somebody wants are indexed: every file provides its own
  // path, and 100,000 files meant a map of 100,000 keys of which one (their directory) was ever looked up. Kept in
  // parallel arrays rather than a tuple per resource, for the same reason.
  const ids: ResourceId[] = [];
  const provides: (readonly string[] | undefined)[] = [];
  const wantIds: ResourceId[] = [];
  const wantKeys: (readonly string[])[] = [];
  const wanted = new Set<string>();
  const wantLists = new Set<readonly string[]>();
  for (const [id, v] of vertices) {
    const kind = kindOf.get(id);
    if (kind?.autoEdges === undefined) continue;
    const hints = derive === undefined ? kind.autoEdges(v.params) : (derive(v, kind).hints ?? {});
    if (hints.provides !== undefined && hints.provides.length > 0) {
      ids.push(id);
      provides.push(hints.provides);
    }
    if (v.meta.autoedge && hints.wants !== undefined) {
      wantIds.push(id);
      wantKeys.push(hints.wants);
      // Files in one directory share one list of wants (their ancestors): its keys are added once.
      if (!wantLists.has(hints.wants)) {
        wantLists.add(hints.wants);
        for (const key of hints.wants) wanted.add(key);
      }
    }
  }
  const providers = new Map<string, ResourceId[]>();
  for (let i = 0; i < ids.length; i++) {
    for (const key of provides[i] ?? []) {
      if (!wanted.has(key)) continue;
      const id = ids[i] as ResourceId;
      const list = providers.get(key);
      if (list === undefined) providers.set(key, [id]);
      else list.push(id);
    }
  }
  for (let i = 0; i < wantIds.length; i++) {
    const id = wantIds[i] as ResourceId;
    for (const key of wantKeys[i] ?? []) {
      for (const from of providers.get(key) ?? []) if (from !== id) addEdge({ from, to: id, notify: false, auto: true });
    }
  }
}

function issuesToErrors(
  issues: readonly z.core.$ZodIssue[],
  id: ResourceId,
  locate: (path: readonly PropertyKey[]) => SourceLocation,
  what: 'parameter' | 'meta',
  known: readonly string[],
): BackplaneError[] {
  const out: BackplaneError[] = [];
  for (const issue of issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) {
        const guess = closest(key, known);
        out.push(
          new BackplaneError('E_SCHEMA', `unknown ${what} "${[...issue.path, key].join('.')}"`, {
            where: locate([...issue.path, key]),
            resource: id,
            hint: guess === undefined ? `known ${what}s: ${known.join(', ') || '(none)'}` : `did you mean "${guess}"?`,
          }),
        );
      }
      continue;
    }
    const path = issue.path.map(String).join('.');
    out.push(
      new BackplaneError('E_SCHEMA', `${what}${path === '' ? 's' : ` "${path}"`}: ${issue.message}`, {
        where: locate(issue.path),
        resource: id,
        hint: 'see the kind in the README, or `backplane schema` for the JSON Schema',
      }),
    );
  }
  return out;
}
