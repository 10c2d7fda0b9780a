import type { ResourceId } from './ids.js';

/**
 * Every dependency cycle, one per strongly connected component (Tarjan), each given as the path that closes it:
 * [a, b, c, a]. Iterative so a 10k-vertex chain cannot overflow the stack.
 */
export function findCycles(ids: readonly ResourceId[], next: (id: ResourceId) => readonly ResourceId[]): ResourceId[][] {
  const index = new Map<ResourceId, number>();
  const low = new Map<ResourceId, number>();
  const onStack = new Set<ResourceId>();
  const stack: ResourceId[] = [];
  const cycles: ResourceId[][] = [];
  let counter = 0;

  for (const root of ids) {
    if (index.has(root)) continue;
    const work: { id: ResourceId; i: number }[] = [{ id: root, i: 0 }];
    index.set(root, counter);
    low.set(root, counter++);
    stack.push(root);
    onStack.add(root);
    while (work.length > 0) {
      const frame = work[work.length - 1] as { id: ResourceId; i: number };
      const succ = next(frame.id);
      if (frame.i < succ.length) {
        const w = succ[frame.i++] as ResourceId;
        if (!index.has(w)) {
          index.set(w, counter);
          low.set(w, counter++);
          stack.push(w);
          onStack.add(w);
          work.push({ id: w, i: 0 });
        } else if (onStack.has(w)) {
          low.set(frame.id, Math.min(low.get(frame.id) ?? 0, index.get(w) ?? 0));
        }
        continue;
      }
      work.pop();
      const parent = work[work.length - 1];
      if (parent !== undefined) low.set(parent.id, Math.min(low.get(parent.id) ?? 0, low.get(frame.id) ?? 0));
      if (low.get(frame.id) === index.get(frame.id)) {
        const scc: ResourceId[] = [];
        let w: ResourceId | undefined;
        do {
          w = stack.pop();
          if (w === undefined) break;
          onStack.delete(w);
          scc.push(w);
        } while (w !== frame.id);
        const selfLoop = scc.length === 1 && next(frame.id).includes(frame.id);
        if (scc.length > 1 || selfLoop) cycles.push(cyclePath(new Set(scc), frame.id, next));
      }
    }
  }
  return cycles;
}

/** A concrete cycle through `start` inside one strongly connected component (BFS back to start). */
function cyclePath(scc: Set<ResourceId>, start: ResourceId, next: (id: ResourceId) => readonly ResourceId[]): ResourceId[] {
  const prev = new Map<ResourceId, ResourceId>();
  const queue: ResourceId[] = [start];
  for (let qi = 0; qi < queue.length; qi++) {
    const cur = queue[qi] as ResourceId;
    for (const n of next(cur)) {
      if (!scc.has(n)) continue;
      if (n === start) {
        const path: ResourceId[] = [start];
        for (let p: ResourceId | undefined = cur; p !== undefined && p !== start; p = prev.get(p)) path.push(p);
        path.push(start);
        // path was collected backwards from the closing edge: start, cur, ..., start
        return [start, ...path.slice(1, -1).reverse(), start];
      }
      if (!prev.has(n)) {
        prev.set(n, cur);
        queue.push(n);
      }
    }
  }
  return [start, start];
}
