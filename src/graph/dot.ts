import type { Graph } from './graph.js';
import type { ResourceId } from './ids.js';

const COLORS: Record<string, string> = {
  pending: '#d9d9d9',
  running: '#9ecae1',
  retrying: '#fdd0a2',
  converged: '#a1d99b',
  failed: '#fc9272',
  blocked: '#fdae6b',
  stopped: '#ffffff',
};

/** Graphviz text: each vertex labelled kind[name], filled by its state when one is given; notify edges dashed. */
export function toDot(graph: Graph, states?: ReadonlyMap<ResourceId, string>): string {
  const lines = ['digraph backplane {', '  rankdir=LR;', '  node [shape=box, style="rounded,filled", fontname="Helvetica", fillcolor="#ffffff"];'];
  for (const v of graph.vertices.values()) {
    const state = states?.get(v.id);
    const color = state === undefined ? undefined : COLORS[state];
    const label = state === undefined ? v.id : `${v.id}\\n${state}`;
    lines.push(`  ${q(v.id)} [label=${q(label)}${color === undefined ? '' : `, fillcolor=${q(color)}`}];`);
  }
  for (const e of graph.edges) {
    const attrs: string[] = [];
    if (e.notify) attrs.push('style=dashed', 'label="notify"');
    if (e.auto) attrs.push('color="#999999"');
    lines.push(`  ${q(e.from)} -> ${q(e.to)}${attrs.length > 0 ? ` [${attrs.join(', ')}]` : ''};`);
  }
  lines.push('}');
  return `${lines.join('\n')}\n`;
}

function q(s: string): string {
  return `"${s.replace(/\\(?!n)/g, '\\\\').replace(/"/g, '\\"')}"`;
}
