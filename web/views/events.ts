import { get, type StreamMessage } from '../api.js';
import { h } from '../dom.js';
import { list, num, str, type EventRecord } from '../types.js';
import type { Ctx, FeedEntry, View } from '../view.js';
import { matches, VTable } from '../vtable.js';

/**
 * The event stream: the controller's recent events (GET /v1/events), then everything the live stream brings while
 * the page is open (controller events, this agent's resource state changes and repairs, store changes), newest first.
 */
export function eventsView(ctx: Ctx): View {
  let history: FeedEntry[] = [];
  const search = h('input', { type: 'search', class: 'search', attrs: { placeholder: 'filter events', 'aria-label': 'filter events' } });
  const kind = h(
    'select',
    { attrs: { 'aria-label': 'event type' } },
    ...[
      ['', 'all types'],
      ['event', 'controller events'],
      ['resource', 'resource states'],
      ['repair', 'repairs'],
      ['cluster', 'store changes'],
    ].map(([v, t]) => h('option', { attrs: { value: v ?? '' } }, t ?? '')),
  );
  const summary = h('span', { class: 'summary' });
  const table = new VTable<FeedEntry>(
    [
      { title: 'Time', class: 'c-time', cell: (r) => new Date(r.at).toLocaleTimeString(), tip: (r) => new Date(r.at).toISOString() },
      { title: 'Type', class: 'c-type', cell: (r) => r.type },
      { title: 'Where', class: 'c-where', cell: (r) => r.where, tip: (r) => r.where },
      { title: 'What', class: 'c-msg', cell: (r) => r.text, tip: (r) => r.text },
    ],
    (r) => `${r.at}-${r.type}-${r.where}-${r.text.slice(0, 40)}`,
    'no events yet',
    'events',
  );
  const draw = (): void => {
    const all = [...history, ...ctx.feed.filter((f) => f.type !== 'hello')];
    const q = search.value;
    const shown = all.filter((e) => (kind.value === '' || e.type === kind.value) && matches(q, [e.type, e.where, e.text])).reverse();
    table.setRows(shown);
    summary.textContent = `${shown.length} events`;
  };
  search.addEventListener('input', draw);
  kind.addEventListener('change', draw);
  let pending = false;
  return {
    el: h('section', { class: 'view', data: { view: 'events' } }, h('div', { class: 'toolbar' }, h('h2', {}, 'Events'), search, kind, summary), table.el),
    watches: [],
    async refresh() {
      const since = ctx.feed[0]?.at ?? Date.now();
      history = list<EventRecord>(await get<unknown>('/v1/events?limit=500'), 'events')
        .filter((e) => num(e.at) < since)
        .map((e) => ({ at: num(e.at), type: 'event', where: str(e.service ?? ''), text: str(e.message) }));
      draw();
    },
    onMessage: (_m: StreamMessage) => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        draw();
      });
    },
  };
}
