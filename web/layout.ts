/**
 * A layered drawing of a resource graph (no DOM here, so it is tested in Node): longest-path layering (a resource
 * sits one layer right of its furthest prerequisite; an edge goes from -> to, from first), then the order within each
 * layer by the barycentre of each node's neighbours in the layer before, a few sweeps down and up. Edges that close
 * a cycle (the agent refuses cyclic graphs, but the data is not trusted) are ignored for layering.
 */

export interface LayoutInput {
  readonly nodes: readonly string[];
  readonly edges: readonly { readonly from: string; readonly to: string }[];
}

export interface Layout {
  /** Layer and position within it, per node. */
  readonly pos: ReadonlyMap<string, { readonly layer: number; readonly order: number }>;
  /** The nodes of each layer, in order. */
  readonly layers: readonly (readonly string[])[];
}

export function layered(input: LayoutInput): Layout {
  const ids = [...new Set(input.nodes)];
  const known = new Set(ids);
  const preds = new Map<string, string[]>(ids.map((id) => [id, []]));
  const succs = new Map<string, string[]>(ids.map((id) => [id, []]));
  for (const e of input.edges) {
    if (!known.has(e.from) || !known.has(e.to) || e.from === e.to) continue;
    preds.get(e.to)?.push(e.from);
    succs.get(e.from)?.push(e.to);
  }

  // Longest path from a source, by an iterative depth-first walk; an edge back to a node on the current path is a
  // cycle's and does not count.
  const layer = new Map<string, number>();
  const onPath = new Set<string>();
  for (const root of ids) {
    if (layer.has(root)) continue;
    const stack: { id: string; i: number }[] = [{ id: root, i: 0 }];
    onPath.add(root);
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      const ps = preds.get(top.id) ?? [];
      if (top.i < ps.length) {
        const p = ps[top.i++]!;
        if (!layer.has(p) && !onPath.has(p)) {
          onPath.add(p);
          stack.push({ id: p, i: 0 });
        }
        continue;
      }
      let l = 0;
      for (const p of ps) {
        const pl = layer.get(p);
        if (pl !== undefined) l = Math.max(l, pl + 1);
      }
      layer.set(top.id, l);
      onPath.delete(top.id);
      stack.pop();
    }
  }

  const count = ids.length === 0 ? 0 : Math.max(...layer.values()) + 1;
  const layers: string[][] = Array.from({ length: count }, () => []);
  for (const id of ids) layers[layer.get(id) ?? 0]!.push(id);
  for (const l of layers) l.sort();

  const order = new Map<string, number>();
  const index = (): void => layers.forEach((l) => l.forEach((id, i) => order.set(id, i)));
  index();
  const bary = (id: string, nbrs: ReadonlyMap<string, string[]>): number | undefined => {
    const ns = (nbrs.get(id) ?? []).map((n) => order.get(n)).filter((x): x is number => x !== undefined);
    return ns.length === 0 ? undefined : ns.reduce((a, b) => a + b, 0) / ns.length;
  };
  const sweep = (l: string[], nbrs: ReadonlyMap<string, string[]>): void => {
    const keyed = l.map((id, i) => ({ id, k: bary(id, nbrs) ?? i }));
    keyed.sort((a, b) => a.k - b.k || a.id.localeCompare(b.id));
    keyed.forEach((x, i) => {
      l[i] = x.id;
      order.set(x.id, i);
    });
  };
  for (let pass = 0; pass < 4; pass++) {
    for (let i = 1; i < layers.length; i++) sweep(layers[i]!, preds);
    for (let i = layers.length - 2; i >= 0; i--) sweep(layers[i]!, succs);
  }

  const pos = new Map<string, { layer: number; order: number }>();
  layers.forEach((l, li) => l.forEach((id, oi) => pos.set(id, { layer: li, order: oi })));
  return { pos, layers };
}
