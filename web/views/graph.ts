import { get, type StreamMessage } from '../api.js';
import { ago, badge, coalesce, h, replace, stateClass, svg } from '../dom.js';
import { layered } from '../layout.js';
import { list, num, str, type AgentGraph, type Vertex } from '../types.js';
import type { Ctx, View } from '../view.js';

const NODE_W = 190;
const NODE_H = 34;
const GAP_X = 70;
const GAP_Y = 14;
const PAD = 16;

/**
 * The graph of the agent that serves the dashboard, drawn left to right in layers (web/layout.ts): each resource a
 * box coloured by its state; a failed or blocked one shows why on hover (its title) and in the panel on click.
 * Notify edges are dashed. It follows the agent's resource events live.
 */
export function graphView(_ctx: Ctx): View {
  const canvas = h('div', { class: 'graph-canvas' });
  const legend = h('div', { class: 'legend' });
  const panel = h('aside', { class: 'node-panel', data: { section: 'node' } }, h('p', { class: 'muted' }, 'Click a resource to see its details.'));
  const title = h('h2', {}, 'Graph');
  let vertices = new Map<string, Vertex>();
  let selected: string | undefined;

  const showNode = (id: string): void => {
    selected = id;
    const v = vertices.get(id);
    canvas.querySelectorAll('g.node.selected').forEach((n) => n.classList.remove('selected'));
    if (v === undefined) {
      replace(panel, h('p', { class: 'muted' }, 'Click a resource to see its details.'));
      return;
    }
    for (const g of canvas.querySelectorAll<SVGGElement>('g.node')) if (g.dataset['id'] === id) g.classList.add('selected');
    replace(
      panel,
      h('h3', {}, str(v.id)),
      badge(str(v.state)),
      h(
        'dl',
        { class: 'facts' },
        h('dt', {}, 'Kind'),
        h('dd', {}, str(v.kind)),
        h('dt', {}, 'Name'),
        h('dd', {}, str(v.name)),
        h('dt', {}, 'Runs'),
        h('dd', {}, num(v.runs)),
        h('dt', {}, 'Changes'),
        h('dd', {}, num(v.changes)),
        h('dt', {}, 'Last change'),
        h('dd', {}, v.lastChange === undefined ? 'never' : ago(num(v.lastChange))),
        v.blockedBy === undefined ? null : h('dt', {}, 'Blocked by'),
        v.blockedBy === undefined ? null : h('dd', {}, str(v.blockedBy)),
      ),
      v.error === undefined ? null : h('pre', { class: 'output error', data: { field: 'error' } }, str(v.error)),
    );
  };

  const draw = (g: AgentGraph): void => {
    const vs = list<Vertex>(g.vertices);
    const es = list<{ from: string; to: string; notify: boolean }>(g.edges);
    vertices = new Map(vs.map((v) => [str(v.id), v]));
    title.textContent = `Graph of ${str(g.host)}`;
    const { pos, layers } = layered({ nodes: [...vertices.keys()], edges: es.map((e) => ({ from: str(e.from), to: str(e.to) })) });
    const tallest = Math.max(1, ...layers.map((l) => l.length));
    const width = PAD * 2 + layers.length * NODE_W + Math.max(0, layers.length - 1) * GAP_X;
    const height = PAD * 2 + tallest * NODE_H + (tallest - 1) * GAP_Y;
    const at = (id: string): { x: number; y: number } => {
      const p = pos.get(id) ?? { layer: 0, order: 0 };
      // Each layer centred on the tallest one.
      const offset = ((tallest - (layers[p.layer]?.length ?? 1)) * (NODE_H + GAP_Y)) / 2;
      return { x: PAD + p.layer * (NODE_W + GAP_X), y: PAD + offset + p.order * (NODE_H + GAP_Y) };
    };
    const edges = es
      .filter((e) => vertices.has(str(e.from)) && vertices.has(str(e.to)))
      .map((e) => {
        const a = at(str(e.from));
        const b = at(str(e.to));
        const x1 = a.x + NODE_W;
        const y1 = a.y + NODE_H / 2;
        const x2 = b.x;
        const y2 = b.y + NODE_H / 2;
        const mx = (x1 + x2) / 2;
        return svg('path', { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, class: `edge${e.notify === true ? ' notify' : ''}`, 'marker-end': 'url(#arrow)' });
      });
    const nodes = vs.map((v) => {
      const id = str(v.id);
      const { x, y } = at(id);
      const label = `${str(v.kind)}[${str(v.name)}]`;
      const tip = `${id}: ${str(v.state)}${v.error === undefined ? '' : `\n${str(v.error)}`}${v.blockedBy === undefined ? '' : `\nblocked by ${str(v.blockedBy)}`}`;
      const node = svg(
        'g',
        { class: `node s-${stateClass(str(v.state))}${id === selected ? ' selected' : ''}`, transform: `translate(${x},${y})`, tabindex: 0, role: 'button' },
        svg('title', {}, tip),
        svg('rect', { width: NODE_W, height: NODE_H, rx: 6 }),
        svg('text', { x: 10, y: NODE_H / 2 + 4 }, label.length > 26 ? `${label.slice(0, 25)}…` : label),
      );
      node.dataset['id'] = id;
      node.dataset['state'] = str(v.state);
      node.addEventListener('click', () => showNode(id));
      node.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' || e.key === ' ') showNode(id);
      });
      return node;
    });
    const defs = svg('defs', {}, svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' }, svg('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrowhead' })));
    const root = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, class: 'graph', role: 'img', 'aria-label': `resource graph of ${str(g.host)}` }, defs, ...edges, ...nodes);
    if (vs.length === 0) replace(canvas, h('p', { class: 'muted' }, 'This agent has no resources.'));
    else replace(canvas, root);
    const counts = new Map<string, number>();
    for (const v of vs) counts.set(str(v.state), (counts.get(str(v.state)) ?? 0) + 1);
    replace(legend, ...[...counts].sort().map(([s, n]) => h('span', { class: 'legend-item' }, badge(s), ` ${n}`)));
    if (selected !== undefined) showNode(selected);
  };

  const view: View = {
    el: h('section', { class: 'view graph-view', data: { view: 'graph' } }, h('div', { class: 'toolbar' }, title, legend), h('div', { class: 'graph-wrap' }, canvas, panel)),
    watches: [],
    async refresh() {
      draw(await get<AgentGraph>('/v1/agent/graph'));
    },
    onMessage: (m: StreamMessage) => {
      if (m.type === 'resource' || m.type === 'repair') later();
    },
  };
  const later = coalesce(() => void view.refresh().catch(() => undefined), 250);
  return view;
}
