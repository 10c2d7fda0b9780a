import type { z } from 'zod';
import { BackplaneError, ValidationErrors, formatLocation, type SourceLocation } from '../errors.js';
import { canonicalJson } from '../util/canonical.js';
import { closest } from '../util/suggest.js';
import type { AnyResourceKind, AutoEdges } from '../resources/types.js';
import { findCycles } from './cycles.js';
import { AUTO, csr, EdgeTable, Graph, NOTIFY, PlaceIndex, TableAdjacency, VertexList, type ExportedResource, type Vertex } from './graph.js';
import { idHash, parseRef, resourceId, textHash, type ResourceId } from './ids.js';
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
  // Every vertex by its place (declaration order): an array, and an index of places by the hash of each id (see
  // PlaceIndex), the rest typed arrays.
  const index = new PlaceIndex(raw.resources.length);
  // Sized for every resource at once (trimmed below): grown by push, its copies were ~10 ms at 100,000.
  const list = new Array<Vertex>(raw.resources.length);
  let count = 0;
  /** Puts `v` at the next place, indexed under `h` (its idHash). */
  const put = (v: Vertex, h: number): number => {
    list[count] = v;
    index.add(count, h);
    return count++;
  };

  /** Resources of each kind checked by its schema so far (see JIT_AFTER). */
  const schemaChecks = new Map<AnyResourceKind, number>();

  const exports: ExportedResource[] = [];
  const exportedIds = new Set<ResourceId>();
  // What each vertex manages and its auto-edge hints are worked out as it is made, in the same pass (see Hints): the
  // errors about overlaps still come after every resource's own, as when they were a pass of their own.
  const overlapErrors: BackplaneError[] = [];
  const owners = new Owners(raw.resources.length, (p) => {
    const v = list[p] as Vertex;
    return registry.get(v.kind)?.manages?.(v.params);
  });
  // Asked again only for a key of a wanted length (see Hints): the kind's own answer, the same for the same parameters.
  const hints = new Hints(raw.resources.length, (i) => {
    const v = list[i] as Vertex;
    const k = registry.get(v.kind);
    if (k === undefined) return NO_KEYS;
    return (reuse === undefined ? k.autoEdges?.(v.params) : derive(reuse, v, k).hints)?.provides ?? NO_KEYS;
  });
  for (const r of raw.resources) {
    // No id string: only an error names the resource (see PlaceIndex).
    const h = idHash(r.kind, r.name);
    const priorAt = index.find(list, r.kind, r.name, h);
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
      if (priorAt < 0) put({ id: resourceId(r.kind, r.name), kind: r.kind, name: r.name, params: {}, meta: metaSchema().parse(undefined), loc: r.loc, fingerprint: '' }, h);
      continue;
    }
    if (priorAt >= 0) {
      errors.push(
        new BackplaneError('E_DUPLICATE', `${resourceId(r.kind, r.name)} is declared twice`, {
          where: r.loc,
          hint: `it was first declared at ${formatLocation(list[priorAt]?.loc)}; give each resource of a kind a unique name`,
        }),
      );
      continue;
    }
    const known = r.export === undefined ? reuse?.vertices.get(r) : undefined;
    let v: Vertex;
    // The kind as well: a vertex validated by another registry's kind says nothing about this one.
    if (known !== undefined && known.kind === kind) {
      v = known.vertex;
    } else {
      // The kind's shortcut first (the schema's own answer for its common shapes, without zod), else the schema.
      // No result object made around the shortcut's answer: one less object per resource (4 MB at 100,000).
      let data: unknown = kind.quickParams?.(r.name, r.params);
      let valid = data !== undefined;
      if (!valid) {
        const checks = (schemaChecks.get(kind) ?? 0) + 1;
        schemaChecks.set(kind, checks);
        const params = kind.schema.safeParse(kind.defaults === undefined ? r.params : { ...kind.defaults(r.name), ...r.params }, checks <= JIT_AFTER ? NO_JIT : undefined);
        if (params.success) {
          data = params.data;
          valid = true;
        } else {
          for (const e of issuesToErrors(params.error.issues, resourceId(r.kind, r.name), (p) => r.locate(p), 'parameter', Object.keys(schemaShape(kind.schema))))
            errors.push(e);
        }
      }
      // Most resources declare no meta: they share one frozen default instead of 100,000 equal copies.
      const meta = r.meta === undefined ? DEFAULT_META : metaSchema().safeParse(r.meta);
      if (!meta.success) {
        for (const e of issuesToErrors(meta.error.issues, resourceId(r.kind, r.name), (p) => r.locateMeta(p), 'meta', Object.keys(schemaShape(metaSchema()))))
          errors.push(e);
      }
      if (!valid || !meta.success) {
        // Keep a placeholder so edges to it do not produce a second, misleading "missing resource" error.
        put(vertex(r, {}, metaSchema().parse(undefined), ''), h);
        continue;
      }
      if (r.export !== undefined) {
        // Not managed here: given no place.
        const id = resourceId(r.kind, r.name);
        if (exportedIds.has(id)) {
          errors.push(new BackplaneError('E_DUPLICATE', `${id} is exported twice`, { where: r.loc, hint: 'give each exported resource of a kind a unique name' }));
          continue;
        }
        // Published as written, not as defaulted here: each collector validates and defaults with its own kinds.
        exports.push({ kind: r.kind, name: r.name, params: r.params, meta: r.meta, to: r.export });
        exportedIds.add(id);
        continue;
      }
      v = vertex(r, data, meta.data, undefined);
      reuse?.vertices.set(r, { kind, vertex: v });
    }
    const i = put(v, h);
    if (kind.manages === undefined && kind.autoEdges === undefined) continue;
    // Without `reuse` nothing is kept (each is worked out here, once): a graph built once, a 100,000-file run, would
    // only carry it around.
    const d = reuse === undefined ? undefined : derive(reuse, v, kind);
    const thing = kind.manages === undefined ? undefined : d === undefined ? kind.manages(v.params) : d.manages;
    if (thing !== undefined) {
      const prior = owners.claim(thing, i);
      if (prior >= 0) overlapErrors.push(overlap(v, thing, list[prior] as Vertex));
    }
    if (kind.autoEdges !== undefined) hints.add(i, d === undefined ? kind.autoEdges(v.params) : (d.hints ?? {}), v.meta.autoedge, kind.autoEdgesReadHost === true);
  }
  for (const e of overlapErrors) errors.push(e);

  list.length = count;
  const vertices = new VertexList(list, index);
  const edges = new EdgeBuffer(list.length + raw.edges.length);
  for (const e of raw.edges) {
    // The two ends' places (-1: not found); a self-loop has the same reference at both ends.
    const ends = [-1, -1];
    for (let k = 0; k < 2; k++) {
      const ref = k === 0 ? e.from : e.to;
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
      if (exportedIds.size > 0 && exportedIds.has(resourceId(parsed.kind, parsed.name))) {
        errors.push(
          new BackplaneError('E_MISSING_REF', `edge refers to ${resourceId(parsed.kind, parsed.name)}, which is exported, not managed on this host`, {
            where: e.loc,
            hint: 'an exported resource is applied only where it is collected; remove the edge or the export',
          }),
        );
        continue;
      }
      const at = index.find(list, parsed.kind, parsed.name, idHash(parsed.kind, parsed.name));
      if (at < 0) {
        const id = resourceId(parsed.kind, parsed.name);
        const guess = closest(id, vertices.keys());
        errors.push(
          new BackplaneError('E_MISSING_REF', `edge refers to ${id}, which is not declared in this graph`, {
            where: e.loc,
            hint: guess === undefined ? 'declare that resource or remove the edge' : `did you mean ${guess}?`,
          }),
        );
        continue;
      }
      ends[k] = at;
    }
    const [from = -1, to = -1] = ends;
    if (from >= 0 && to >= 0) edges.push(from, to, e.notify ? NOTIFY : 0);
  }

  hints.addEdges(edges, list.length);
  // The owners' index is done with: its slots (at least two a vertex) are the scratch of the passes over the edges
  // below, which made four arrays of their own (~1.6 MB of fresh memory at 100,000 files, ~400 page faults).
  const scratch = owners.slotsForScratch();
  let table = edges.merged(list.length, scratch);

  // Cycles are looked for even when other errors were found, so one run reports every problem in the file. Edges
  // with a bad end were dropped above, so any cycle found here is made of relations the user really declared —
  // or of automatic edges, which give way: an auto-edge that would close a cycle is a guess that was wrong (a
  // package's directories only become known once it is installed), so it is dropped instead of failing the graph.
  // Dropping it changes the order things run in, so it is said (a warning with the cycle it would have closed).
  const warnings: BackplaneError[] = [];
  for (;;) {
    // Nearly every graph has no cycle: a topological pass over the table says so (at 100,000 files ~2 ms, where
    // Tarjan over maps of ids was ~180), and Tarjan then runs only to name the cycles.
    const cycles = isAcyclic(table, scratch) ? [] : findCycles([...vertices.keys()], successors(vertices, table));
    let dropped = false;
    for (const cycle of cycles) {
      for (let k = 0; k + 1 < cycle.length; k++) {
        const from = cycle[k];
        const to = cycle[k + 1];
        if (from === undefined || to === undefined) continue;
        const j = findEdge(table, vertices.indexOf(from), vertices.indexOf(to));
        if (j >= 0 && ((table.flags[j] as number) & AUTO) !== 0) {
          table = withoutEdge(table, j);
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
  if (errors.length > 0) throw new ValidationErrors(errors);
  return new Graph(vertices, new TableAdjacency(vertices, table), raw.source, exports, collect, [...rules.warnings, ...warnings]);
}

function derive(reuse: VertexReuse, v: Vertex, kind: AnyResourceKind): Derived {
  const known = reuse.derived.get(v);
  if (known !== undefined) return known;
  const d = { manages: kind.manages?.(v.params), hints: kind.autoEdges?.(v.params) };
  reuse.derived.set(v, d);
  return d;
}

/**
 * Two resources that manage the same thing under different names (file[a] and file[b], both path /srv/x) validate
 * one by one, then undo each other's work forever. Refused, each pair with both locations.
 */
function overlap(v: Vertex, thing: string, prior: Vertex): BackplaneError {
  const id = v.id;
  const at = formatLocation(prior.loc);
  return new BackplaneError('E_OVERLAP', `${id} manages ${thing}, which ${prior.id}${at === '' ? '' : ` (${at})`} already manages`, {
    where: v.loc,
    resource: id,
    hint: `the two would undo each other's changes forever; keep one resource for ${thing} and remove or rename the other`,
  });
}

/**
 * Which vertex (by place) manages each thing: the first to claim it. An index by the things' hashes in typed arrays,
 * as PlaceIndex, that keeps no thing: on a hash that matches, the claimant's thing is asked for again (thingAt), so
 * each thing (a concatenation, copied flat to be hashed) dies young instead of living through the build. At 100,000
 * files a Set of them was ~14 MB (the strings, their flat copies, the set's tables grown by copying) and ~3,000 page
 * faults.
 */
class Owners {
  /** Per slot, a place + 1 (0: free). */
  private readonly slots: Int32Array;
  private readonly mask: number;
  /** Per place, the hash of the thing it claimed. */
  private readonly hashes: Int32Array;
  constructor(
    n: number,
    /** The thing the vertex at a place claimed. */
    private readonly thingAt: (p: number) => string | undefined,
  ) {
    let size = 16;
    while (size < n * 2) size *= 2;
    this.slots = new Int32Array(size);
    this.mask = size - 1;
    this.hashes = new Int32Array(n);
  }

  /** The index's slots, at least two a vertex, for other use: no claim may follow. */
  slotsForScratch(): Int32Array {
    return this.slots;
  }

  /** -1 when `thing` was not claimed before (now it is, by `i`); else the place that claimed it first. */
  claim(thing: string, i: number): number {
    const h = textHash(thing);
    for (let s = h & this.mask; ; s = (s + 1) & this.mask) {
      const p = (this.slots[s] as number) - 1;
      if (p < 0) {
        this.slots[s] = i + 1;
        this.hashes[i] = h;
        return -1;
      }
      if (this.hashes[p] === h && this.thingAt(p) === thing) return p;
    }
  }
}

/**
 * The edges as they are added (declared ones, then automatic ones), by vertex place, in growing typed arrays. A
 * second edge between the same two resources is merged into the first (see merged).
 */
class EdgeBuffer {
  size = 0;
  from: Int32Array;
  to: Int32Array;
  flags: Uint8Array;
  constructor(capacity: number) {
    const c = Math.max(16, capacity);
    this.from = new Int32Array(c);
    this.to = new Int32Array(c);
    this.flags = new Uint8Array(c);
  }

  push(from: number, to: number, flags: number): void {
    if (this.size === this.from.length) {
      const c = this.size * 2;
      const grow = <T extends Int32Array | Uint8Array>(a: T, b: T): T => (b.set(a), b);
      this.from = grow(this.from, new Int32Array(c));
      this.to = grow(this.to, new Int32Array(c));
      this.flags = grow(this.flags, new Uint8Array(c));
    }
    const j = this.size++;
    this.from[j] = from;
    this.to[j] = to;
    this.flags[j] = flags;
  }

  /**
   * One edge per (from, to), in the order first added; a later edge between the same two is merged into the first
   * (notify if either notifies, auto only if both are). Found per source with a mark per target, in one pass over
   * the edges grouped by source (CSR): no map, no key string per edge.
   */
  merged(n: number, scratch: Int32Array): EdgeTable {
    const e = this.size;
    const out = csr(n, e, this.from);
    const { start, order } = out;
    const seenFrom = scratch.subarray(0, n).fill(-1);
    const firstAt = scratch.subarray(n, 2 * n);
    const flags = this.flags;
    const dead = new Uint8Array(e);
    let dups = 0;
    for (let u = 0; u < n; u++) {
      for (let k = start[u] as number; k < (start[u + 1] as number); k++) {
        const j = order[k] as number;
        const t = this.to[j] as number;
        if (seenFrom[t] !== u) {
          seenFrom[t] = u;
          firstAt[t] = j;
          continue;
        }
        const first = firstAt[t] as number;
        const a = flags[first] as number;
        const b = flags[j] as number;
        flags[first] = ((a | b) & NOTIFY) | (a & b & AUTO);
        dead[j] = 1;
        dups++;
      }
    }
    // Without duplicates (nearly always) the index by source just made is the table's own.
    if (dups === 0) return new EdgeTable(n, e, this.from.subarray(0, e), this.to.subarray(0, e), flags.subarray(0, e), out);
    return compact(new EdgeTable(n, e, this.from, this.to, flags), dead, e - dups);
  }
}

/** `t` without the edges marked dead (`left` of them stay), in the same order. */
function compact(t: EdgeTable, dead: Uint8Array, left: number): EdgeTable {
  const from = new Int32Array(left);
  const to = new Int32Array(left);
  const flags = new Uint8Array(left);
  let o = 0;
  for (let j = 0; j < t.size; j++) {
    if (dead[j] === 1) continue;
    from[o] = t.from[j] as number;
    to[o] = t.to[j] as number;
    flags[o++] = t.flags[j] as number;
  }
  return new EdgeTable(t.n, left, from, to, flags);
}

function withoutEdge(t: EdgeTable, j: number): EdgeTable {
  const dead = new Uint8Array(t.size);
  dead[j] = 1;
  return compact(t, dead, t.size - 1);
}

/** The place of the edge from -> to in `t`, or -1. Only when naming cycles: a scan. */
function findEdge(t: EdgeTable, from: number | undefined, to: number | undefined): number {
  for (let j = 0; j < t.size; j++) if (t.from[j] === from && t.to[j] === to) return j;
  return -1;
}

/** Each vertex's successors by id, in edge order, for findCycles (only when there is a cycle to name). */
function successors(vertices: VertexList, t: EdgeTable): (id: ResourceId) => readonly ResourceId[] {
  const succ = new Map<ResourceId, ResourceId[]>();
  for (let j = 0; j < t.size; j++) {
    const from = vertices.at(t.from[j] as number).id;
    const to = vertices.at(t.to[j] as number).id;
    const l = succ.get(from);
    if (l === undefined) succ.set(from, [to]);
    else l.push(to);
  }
  return (id) => succ.get(id) ?? NO_IDS;
}

/**
 * zod compiles an object schema's fast path (a `new Function` per object in it) at its first parse unless told
 * `jitless`: milliseconds per kind that only many parses repay (4.5 ms of the 48 ms buildGraph of a cold nginx-stack
 * run, which checks one pkg, template and svc; measured 2026-12-03). A kind's first JIT_AFTER resources of a build
 * are checked without it, the rest with it. Either way the same checks run and the same issues come out.
 */
const JIT_AFTER = 32;
const NO_JIT = { jitless: true } as const;

const NO_IDS: readonly ResourceId[] = Object.freeze([]);
const NO_KEYS: readonly string[] = Object.freeze([]);

/**
 * Whether following the edges from every vertex never comes back (Kahn's algorithm): a count per vertex and a queue,
 * in typed arrays, where finding the cycles themselves (Tarjan) keeps two numbers, a stack flag and a frame each.
 */
function isAcyclic(t: EdgeTable, scratch: Int32Array): boolean {
  const n = t.n;
  const { start, order } = t.out;
  // Each vertex's count of incoming edges is the length of its list in the index by target (which the Graph keeps).
  const ins = t.in.start;
  const indeg = scratch.subarray(0, n);
  const queue = scratch.subarray(n, 2 * n);
  let tail = 0;
  for (let i = 0; i < n; i++) {
    const d = (ins[i + 1] as number) - (ins[i] as number);
    indeg[i] = d;
    if (d === 0) queue[tail++] = i;
  }
  for (let h = 0; h < tail; h++) {
    const u = queue[h] as number;
    for (let k = start[u] as number; k < (start[u + 1] as number); k++) {
      const w = t.to[order[k] as number] as number;
      const d = (indeg[w] as number) - 1;
      indeg[w] = d;
      if (d === 0) queue[tail++] = w;
    }
  }
  // Every vertex never queued has incoming edges left: it sits on or behind a cycle (then findCycles says which).
  return tail === n;
}

/**
 * The auto-edge hints of a graph's vertices, gathered as each vertex is made: who provides what, and who wants what.
 * Only keys somebody wants are ever indexed (every file provides its own path, and 100,000 files meant a map of
 * 100,000 keys of which one, their directory, was ever looked up). Files of one directory share one list of wants
 * (their ancestors): each distinct list is numbered once, its keys added to the wanted set once, and its providers
 * resolved once, not per file.
 *
 * What a vertex provides is not kept, only each key's length: a key of a length no wanted key has is not wanted, and
 * the few of a wanted length are asked of the vertex's kind again (providedAt) once every want is known. At 100,000
 * files each file's key (`path:<its path>`, a concatenation) lived through the whole build to be dropped at its end:
 * ~3 MB promoted to the old generation, ~800 page faults.
 */
class Hints {
  /** Who provides each key, one entry a key, a vertex's keys in a row; the key's length (255: 255 or more). */
  private provIdx: Int32Array;
  private provLen: Uint8Array;
  private provCount = 0;
  /** Per vertex place, which of `lists` it wants (-1: none). */
  private readonly wantOf: Int32Array;
  private readonly lists: (readonly string[])[] = [];
  private readonly listId = new Map<readonly string[], number>();
  private lastList: readonly string[] | undefined;
  private lastId = -1;
  private readonly wanted = new Set<string>();
  /** What the vertices of kinds whose answer reads the host provide, kept from the one ask (autoEdgesReadHost). */
  private readonly keptProvides = new Map<number, readonly string[]>();
  /** A flag per length of a wanted key (as provLen has it). */
  private readonly wantedLengths = new Uint8Array(256);

  /**
   * `n`: at most this many vertices (the raw resources). Typed arrays: nothing in them for the scavenger to copy.
   * `providedAt`: what the vertex at a place provides, as its kind said when it was added.
   */
  constructor(
    n: number,
    private readonly providedAt: (i: number) => readonly string[],
  ) {
    this.wantOf = new Int32Array(n).fill(-1);
    // Most kinds provide a key or none: room for one a vertex (grown when full).
    this.provIdx = new Int32Array(Math.max(16, n));
    this.provLen = new Uint8Array(this.provIdx.length);
  }

  /** `keep`: the kind's answer may differ if asked again (autoEdgesReadHost), so it is kept rather than asked again. */
  add(i: number, hints: AutoEdges, autoedge: boolean, keep = false): void {
    if (keep && hints.provides !== undefined && hints.provides.length > 0) this.keptProvides.set(i, hints.provides);
    for (const key of hints.provides ?? NO_KEYS) {
      if (this.provCount === this.provIdx.length) {
        const idx = new Int32Array(this.provCount * 2);
        idx.set(this.provIdx);
        this.provIdx = idx;
        const len = new Uint8Array(this.provCount * 2);
        len.set(this.provLen);
        this.provLen = len;
      }
      this.provLen[this.provCount] = Math.min(key.length, 255);
      this.provIdx[this.provCount++] = i;
    }
    const wants = hints.wants;
    if (!autoedge || wants === undefined) return;
    let id = this.lastId;
    if (wants !== this.lastList) {
      const known = this.listId.get(wants);
      if (known !== undefined) id = known;
      else {
        id = this.lists.push(wants) - 1;
        this.listId.set(wants, id);
        for (const key of wants) {
          this.wanted.add(key);
          this.wantedLengths[Math.min(key.length, 255)] = 1;
        }
      }
      this.lastList = wants;
      this.lastId = id;
    }
    this.wantOf[i] = id;
  }

  /** The wanting vertex depends on every provider of each key it wants: in vertex order, keys in order, providers in order. */
  addEdges(edges: EdgeBuffer, n: number): void {
    const providers = new Map<string, number[]>();
    // The keys of the vertex whose entries these are (asked for once a vertex), and where its entries begin.
    let at = -1;
    let first = 0;
    let keys: readonly string[] = NO_KEYS;
    for (let k = 0; k < this.provCount; k++) {
      if (this.wantedLengths[this.provLen[k] as number] === 0) continue;
      const i = this.provIdx[k] as number;
      if (i !== at) {
        at = i;
        for (first = k; first > 0 && this.provIdx[first - 1] === i; first--);
        keys = this.keptProvides.get(i) ?? this.providedAt(i);
      }
      const key = keys[k - first];
      if (key === undefined || !this.wanted.has(key)) continue;
      const l = providers.get(key);
      if (l === undefined) providers.set(key, [i]);
      else l.push(i);
    }
    // Each list's providers, in the order its keys give them.
    const resolved = this.lists.map((wants) => wants.flatMap((key) => providers.get(key) ?? []));
    for (let to = 0; to < n; to++) {
      const l = this.wantOf[to] as number;
      if (l < 0) continue;
      for (const from of resolved[l] ?? NO_PLACES) if (from !== to) edges.push(from, to, AUTO);
    }
  }
}

const NO_PLACES: readonly number[] = Object.freeze([]);

/**
 * Made outside buildGraph on purpose: a getter created in its loop would keep buildGraph's whole scope (the raw
 * graph, every error, every edge) alive as long as the vertex lives. The location is lazy because finding a line
 * means parsing the file for positions, which only errors and `graph` output need.
 */
function vertex(r: RawResource, params: unknown, meta: Meta, fingerprint: string | undefined): Vertex {
  return new BuiltVertex(r, params, meta, fingerprint);
}

/** A class for the same reason as the frontends' raw resources: a literal with getters is a dictionary in V8. */
class BuiltVertex implements Vertex {
  /** Made when first asked for (see PlaceIndex). */
  private i: ResourceId | undefined = undefined;
  constructor(
    private readonly raw: RawResource,
    readonly params: unknown,
    readonly meta: Meta,
    // Computed when first asked for (a graph swap compares them): a one-shot run never needs one, and a string per
    // resource holding its whole definition again was a good part of an idle agent's memory.
    private fp: string | undefined,
  ) {}
  get id(): ResourceId {
    return (this.i ??= resourceId(this.raw.kind, this.raw.name));
  }
  // Read from the raw resource rather than copied: two fields less on each of 100,000 vertices.
  get kind(): string {
    return this.raw.kind;
  }
  get name(): string {
    return this.raw.name;
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
