import type { BackplaneError, SourceLocation } from '../errors.js';
import { textHash, type ResourceId } from './ids.js';
import type { Meta } from './meta.js';
import type { CollectRule, ExportTarget } from './raw.js';

export interface Vertex {
  readonly id: ResourceId;
  readonly kind: string;
  readonly name: string;
  /** Parameters after validation, defaults applied. */
  readonly params: unknown;
  readonly meta: Meta;
  readonly loc: SourceLocation | undefined;
  /** Canonical text of kind, params and meta: equal fingerprints mean an unchanged definition across graph swaps. */
  readonly fingerprint: string;
}

/** An exported resource as published to the cluster: the user's own parameters, re-validated by each collector. */
export interface ExportedResource {
  readonly kind: string;
  readonly name: string;
  readonly params: Readonly<Record<string, unknown>>;
  readonly meta: unknown;
  readonly to: ExportTarget;
}

export interface Edge {
  readonly from: ResourceId;
  readonly to: ResourceId;
  readonly notify: boolean;
  /** Added by the builder from a kind's auto-edge hints rather than written by the user. */
  readonly auto: boolean;
}

/**
 * How a graph finds its edges. A built graph indexes its edge list (ListAdjacency); a graph rebuilt from the
 * validated-graph cache (src/agent/graph-cache.ts) reads them from a compact form, making each list when first asked:
 * at 100,000 files, 100,000 one-edge lists made before the first worker could start were a good part of a cache hit.
 */
export interface Adjacency {
  readonly edges: readonly Edge[];
  dependents(id: ResourceId): readonly Edge[];
  dependencies(id: ResourceId): readonly Edge[];
  /**
   * The ids of `id`'s dependents read one at a time, without making its list of edges (see DependentIds); undefined
   * (or no such method): Graph reads them from dependents().
   */
  dependentIds?(id: ResourceId): DependentIds | undefined;
}

/**
 * The ids of a vertex's dependents, in the order of `dependents()`, read one at a time. The engine wakes the 100,000
 * files of a directory in turns once the directory has converged: their list of edges, made whole, was 100,000 edge
 * objects and 100,000 id strings (~15 MB of fresh memory and a mark-compact, ~40-120 ms) before the first file could
 * start; read one at a time, each id is made as its vertex is woken.
 */
export interface DependentIds {
  readonly length: number;
  at(k: number): ResourceId;
}

const NO_DEPENDENT_IDS: DependentIds = Object.freeze({
  length: 0,
  at: (k: number): ResourceId => {
    throw new RangeError(`no dependent at ${k}: there are none`);
  },
});

/** A validated, acyclic resource graph. Immutable once built; a new graph replaces it whole. */
export class Graph {
  readonly vertices: ReadonlyMap<ResourceId, Vertex>;
  private readonly adjacency: Adjacency;

  constructor(
    vertices: ReadonlyMap<ResourceId, Vertex>,
    edges: readonly Edge[] | Adjacency,
    readonly source: string,
    /** Resources this host exports for others to collect (validated, not managed here). */
    readonly exports: readonly ExportedResource[] = [],
    /** What this host collects from the cluster. */
    readonly collect: readonly CollectRule[] = [],
    /** Things the graph allows that deserve a second look (a collect rule taking a power parameter), with file:line. */
    readonly warnings: readonly BackplaneError[] = [],
  ) {
    this.vertices = vertices;
    this.adjacency = isEdgeList(edges) ? new ListAdjacency(vertices, edges) : edges;
  }

  get edges(): readonly Edge[] {
    return this.adjacency.edges;
  }

  /** Edges leaving `id`: the resources that depend on it. */
  dependents(id: ResourceId): readonly Edge[] {
    return this.adjacency.dependents(id);
  }

  /** Edges entering `id`: the resources it depends on. */
  dependencies(id: ResourceId): readonly Edge[] {
    return this.adjacency.dependencies(id);
  }

  /** The ids of the resources that depend on `id`, as dependents() has them, made as each is read. */
  dependentIds(id: ResourceId): DependentIds {
    const own = this.adjacency.dependentIds?.(id);
    if (own !== undefined) return own;
    const list = this.dependents(id);
    return list.length === 0 ? NO_DEPENDENT_IDS : { length: list.length, at: (k) => (list[k] as Edge).to };
  }

  /** Kahn's order; stable with respect to declaration order. The builder guarantees there is no cycle. */
  topoOrder(): ResourceId[] {
    const indeg = new Map<ResourceId, number>();
    for (const id of this.vertices.keys()) indeg.set(id, this.dependencies(id).length);
    const queue: ResourceId[] = [...this.vertices.keys()].filter((id) => indeg.get(id) === 0);
    const order: ResourceId[] = [];
    for (let i = 0; i < queue.length; i++) {
      const id = queue[i] as ResourceId;
      order.push(id);
      for (const e of this.dependents(id)) {
        const d = (indeg.get(e.to) ?? 0) - 1;
        indeg.set(e.to, d);
        if (d === 0) queue.push(e.to);
      }
    }
    return order;
  }

  /** Every resource that (transitively) depends on one of `roots`, roots included. */
  downstream(roots: Iterable<ResourceId>): Set<ResourceId> {
    const seen = new Set<ResourceId>();
    const stack = [...roots];
    while (stack.length > 0) {
      const id = stack.pop() as ResourceId;
      if (seen.has(id) || !this.vertices.has(id)) continue;
      seen.add(id);
      for (const e of this.dependents(id)) stack.push(e.to);
    }
    return seen;
  }
}

export const NO_EDGES: readonly Edge[] = Object.freeze([]);

function isEdgeList(e: readonly Edge[] | Adjacency): e is readonly Edge[] {
  return Array.isArray(e);
}

class ListAdjacency implements Adjacency {
  private readonly outEdges = new Map<ResourceId, Edge[]>();
  private readonly inEdges = new Map<ResourceId, Edge[]>();
  constructor(
    vertices: ReadonlyMap<ResourceId, Vertex>,
    readonly edges: readonly Edge[],
  ) {
    // Only vertices with edges get lists: two empty arrays per resource were 100,000s of objects in a big graph.
    for (const e of edges) {
      if (vertices.has(e.from)) push(this.outEdges, e.from, e);
      if (vertices.has(e.to)) push(this.inEdges, e.to, e);
    }
  }
  dependents(id: ResourceId): readonly Edge[] {
    return this.outEdges.get(id) ?? NO_EDGES;
  }
  dependencies(id: ResourceId): readonly Edge[] {
    return this.inEdges.get(id) ?? NO_EDGES;
  }
}

function push(map: Map<ResourceId, Edge[]>, id: ResourceId, e: Edge): void {
  const list = map.get(id);
  if (list === undefined) map.set(id, [e]);
  else list.push(e);
}

/**
 * A graph's vertices by place (0..size-1, declaration order) as well as by id: the Map a graph hands out, made of an
 * array and a PlaceIndex. The builder names every vertex by its place (edges, cycle check, adjacency), and nothing
 * in it needs an id string: a vertex makes its own when first asked (the engine asks as it starts each worker), not
 * 100,000 of them before the first change.
 */
export class VertexList implements ReadonlyMap<ResourceId, Vertex> {
  constructor(
    private readonly list: readonly Vertex[],
    private readonly index: PlaceIndex,
  ) {}
  get size(): number {
    return this.list.length;
  }
  at(i: number): Vertex {
    return this.list[i] as Vertex;
  }
  indexOf(id: ResourceId): number | undefined {
    const i = this.index.findId(this.list, id);
    return i < 0 ? undefined : i;
  }
  get(id: ResourceId): Vertex | undefined {
    const i = this.index.findId(this.list, id);
    return i < 0 ? undefined : this.list[i];
  }
  has(id: ResourceId): boolean {
    return this.index.findId(this.list, id) >= 0;
  }
  forEach(cb: (value: Vertex, key: ResourceId, map: ReadonlyMap<ResourceId, Vertex>) => void, thisArg?: unknown): void {
    for (const v of this.list) cb.call(thisArg, v, v.id, this);
  }
  *keys(): MapIterator<ResourceId> {
    for (const v of this.list) yield v.id;
    return undefined;
  }
  values(): MapIterator<Vertex> {
    return this.list.values();
  }
  *entries(): MapIterator<[ResourceId, Vertex]> {
    for (const v of this.list) yield [v.id, v];
    return undefined;
  }
  [Symbol.iterator](): MapIterator<[ResourceId, Vertex]> {
    return this.entries();
  }
}

/**
 * Where each vertex of a list is, by the hash of its id (idHash: from its kind and name, no id string made), in
 * typed arrays: open addressing, linear probing, at most half full. At 100,000 files a Map of id strings was ~110 ms
 * and ~5,500 page faults of building (the strings, their flat copies, the map's tables as it grew); this is ~1.4 MB
 * of two arrays. A lookup by id text hashes it (~55 ns for a 30-character id, where a Map has the hash in the string:
 * a lookup is ~100 ns here, ~80 in a Map, measured in declaration order) and compares it with the vertex's id.
 */
export class PlaceIndex {
  /** Per slot, a place + 1 (0: free). */
  private readonly slots: Int32Array;
  private readonly mask: number;
  /** Per place, its hash: a probe passes over other vertices without reading them. */
  private readonly hashes: Int32Array;

  /** `capacity`: the most places it will hold. */
  constructor(capacity: number) {
    let size = 16;
    while (size < capacity * 2) size *= 2;
    this.slots = new Int32Array(size);
    this.mask = size - 1;
    this.hashes = new Int32Array(capacity);
  }

  /** The place of `kind[name]` in `list` (`h`: its idHash), or -1. */
  find(list: readonly Vertex[], kind: string, name: string, h: number): number {
    for (let s = h & this.mask; ; s = (s + 1) & this.mask) {
      const p = (this.slots[s] as number) - 1;
      if (p < 0) return -1;
      if (this.hashes[p] !== h) continue;
      const v = list[p] as Vertex;
      if (v.name === name && v.kind === kind) return p;
    }
  }

  /** The place of the vertex whose id is `id` in `list`, or -1. */
  findId(list: readonly Vertex[], id: string): number {
    const h = textHash(id);
    for (let s = h & this.mask; ; s = (s + 1) & this.mask) {
      const p = (this.slots[s] as number) - 1;
      if (p < 0) return -1;
      if (this.hashes[p] !== h) continue;
      // The vertex's own id: the engine looks vertices up by the very strings they gave it, equal at a glance, and
      // once the hashes match it is the vertex asked for (its id is made here if it was not yet).
      if ((list[p] as Vertex).id === id) return p;
    }
  }

  /** Indexes place `p` under `h` (its idHash), which no place in the index has the id of. */
  add(p: number, h: number): void {
    this.hashes[p] = h;
    let s = h & this.mask;
    while (this.slots[s] !== 0) s = (s + 1) & this.mask;
    this.slots[s] = p + 1;
  }
}

/** Edge flags in an EdgeTable. */
export const NOTIFY = 1;
export const AUTO = 2;

/**
 * Edges by vertex place, in three typed arrays (from, to, flags), indexed both ways as CSR (out, in), each made once
 * when first needed: for vertex i, its edges leaving are out.order[out.start[i] .. out.start[i + 1]), entering
 * in.order[in.start[i] .. in.start[i + 1]), each list in edge order. A few flat arrays instead of an Edge object, a
 * list and a map entry per edge: at 100,000 files the builder's edge set, cycle check and adjacency lists were ~300
 * ms of a cold start, a good part of it the scavenger copying objects that lived through the whole build.
 */
export class EdgeTable {
  private o: Csr | undefined;
  private i: Csr | undefined;
  constructor(
    /** The number of vertices the edges are between. */
    readonly n: number,
    readonly size: number,
    readonly from: Int32Array,
    readonly to: Int32Array,
    readonly flags: Uint8Array,
    /** The index by source when the caller has it already (the same edges, the same order). */
    out?: Csr,
  ) {
    this.o = out;
  }
  get out(): Csr {
    return (this.o ??= csr(this.n, this.size, this.from));
  }
  get in(): Csr {
    return (this.i ??= csr(this.n, this.size, this.to));
  }
}

/** For each vertex i, the edges whose end (in `end`) it is: order[start[i] .. start[i + 1]), in edge order. */
export interface Csr {
  readonly start: Int32Array;
  readonly order: Int32Array;
}

/** A counting sort of the edges by `end`, stable. One pass to count, one to sum, one (backwards) to place. */
export function csr(n: number, e: number, end: Int32Array): Csr {
  const start = new Int32Array(n + 1);
  for (let j = 0; j < e; j++) {
    const v = end[j] as number;
    start[v] = (start[v] as number) + 1;
  }
  // start[i] becomes where vertex i's edges end; placing from the last edge back moves it to where they begin.
  for (let i = 1; i < n; i++) start[i] = (start[i] as number) + (start[i - 1] as number);
  start[n] = e;
  const order = new Int32Array(e);
  for (let j = e - 1; j >= 0; j--) {
    const v = end[j] as number;
    const k = (start[v] as number) - 1;
    start[v] = k;
    order[k] = j;
  }
  return { start, order };
}

/**
 * The adjacency of a built graph: an EdgeTable, each Edge object and each vertex's list made when first asked for
 * (the engine asks as it starts each worker) and then kept, so a list is the same array every time. A vertex's
 * dependents can also be read one id at a time without making its list (dependentIds).
 */
/** Vertices by place as well as by id: a built graph's VertexList, or the graph cache's vertices made as they are read. */
export interface PlacedVertices {
  readonly size: number;
  at(i: number): Vertex;
  indexOf(id: ResourceId): number | undefined;
}

export class TableAdjacency implements Adjacency {
  private readonly made: (Edge | undefined)[];
  private readonly out: Csr;
  private readonly in: Csr;
  private readonly outLists: (readonly Edge[] | undefined)[];
  private readonly inLists: (readonly Edge[] | undefined)[];
  private all: readonly Edge[] | undefined;

  constructor(
    private readonly vertices: PlacedVertices,
    private readonly table: EdgeTable,
  ) {
    const n = vertices.size;
    this.out = table.out;
    this.in = table.in;
    this.made = new Array<Edge | undefined>(table.size);
    this.outLists = new Array<readonly Edge[] | undefined>(n);
    this.inLists = new Array<readonly Edge[] | undefined>(n);
  }

  private edge(j: number): Edge {
    let made = this.made[j];
    if (made === undefined) {
      const t = this.table;
      const flags = t.flags[j] as number;
      made = { from: this.vertices.at(t.from[j] as number).id, to: this.vertices.at(t.to[j] as number).id, notify: (flags & NOTIFY) !== 0, auto: (flags & AUTO) !== 0 };
      this.made[j] = made;
    }
    return made;
  }

  get edges(): readonly Edge[] {
    if (this.all === undefined) {
      const all: Edge[] = [];
      for (let j = 0; j < this.table.size; j++) all.push(this.edge(j));
      this.all = all;
    }
    return this.all;
  }

  private list(lists: (readonly Edge[] | undefined)[], { start, order }: Csr, id: ResourceId): readonly Edge[] {
    const i = this.vertices.indexOf(id);
    if (i === undefined) return NO_EDGES;
    let made = lists[i];
    if (made === undefined) {
      const a = start[i] as number;
      const b = start[i + 1] as number;
      if (a === b) return NO_EDGES;
      // Sized at once: an array grown by push from empty reserves 17 slots, and most lists here hold one edge.
      const out = new Array<Edge>(b - a);
      for (let k = a; k < b; k++) out[k - a] = this.edge(order[k] as number);
      lists[i] = made = out;
    }
    return made;
  }

  dependents(id: ResourceId): readonly Edge[] {
    return this.list(this.outLists, this.out, id);
  }

  dependencies(id: ResourceId): readonly Edge[] {
    return this.list(this.inLists, this.in, id);
  }

  dependentIds(id: ResourceId): DependentIds {
    const i = this.vertices.indexOf(id);
    if (i === undefined) return NO_DEPENDENT_IDS;
    const made = this.outLists[i];
    if (made !== undefined) return { length: made.length, at: (k) => (made[k] as Edge).to };
    const a = this.out.start[i] as number;
    const b = this.out.start[i + 1] as number;
    if (a === b) return NO_DEPENDENT_IDS;
    const { order } = this.out;
    const { to } = this.table;
    const vertices = this.vertices;
    return { length: b - a, at: (k) => vertices.at(to[order[a + k] as number] as number).id };
  }
}
