import type { BackplaneError, SourceLocation } from '../errors.js';
import type { ResourceId } from './ids.js';
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
}

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
