import { enc, get, post } from '../api.js';
import { badge, h, size } from '../dom.js';
import { list, num, str, type HostRow } from '../types.js';
import { roleTitle, type Ctx, type View } from '../view.js';
import { matches, VTable } from '../vtable.js';

/** Hosts as a pool: capacity and what is reserved of it, drain state, and drain/undrain for operators. */
export function hostsView(ctx: Ctx): View {
  let rows: HostRow[] = [];
  const search = h('input', { type: 'search', class: 'search', attrs: { placeholder: 'filter hosts: name, label, state', 'aria-label': 'filter hosts' } });
  const summary = h('span', { class: 'summary' });
  const table = new VTable<HostRow>(
    [
      { title: 'Host', class: 'c-name', cell: (r) => str(r.host), tip: (r) => str(r.host) },
      { title: 'State', class: 'c-state', cell: (r) => badge(stateOf(r)) },
      { title: 'CPU reserved / capacity', class: 'c-use', cell: (r) => usage(num(r.reserved?.cpu), num(r.capacity?.cpu), (n) => String(Math.round(n * 100) / 100)) },
      { title: 'Memory reserved / capacity', class: 'c-use', cell: (r) => usage(num(r.reserved?.memory), num(r.capacity?.memory), size) },
      { title: 'Instances', class: 'c-num', cell: (r) => num(r.instances) },
      { title: 'Labels', class: 'c-labels', cell: (r) => labelText(r), tip: (r) => labelText(r) },
      { title: '', class: 'c-actions', cell: (r) => action(r) },
    ],
    (r) => str(r.host),
    'no hosts match',
    'hosts',
  );

  const action = (r: HostRow): HTMLButtonElement => {
    const draining = r.draining === true;
    const verb = draining ? 'undrain' : 'drain';
    const title = roleTitle(ctx, `${verb[0]?.toUpperCase() ?? ''}${verb.slice(1)}ing a host`);
    return h(
      'button',
      {
        class: `btn small${draining ? '' : ' warn'}`,
        data: { action: verb },
        disabled: !ctx.canOperate,
        ...(title === undefined ? { title: draining ? 'let the scheduler place instances here again' : "move every instance off this host, within each service's disruption budget" } : { title }),
        on: {
          click: () => {
            const host = str(r.host);
            if (verb === 'drain' && !confirm(`Drain ${host}? Its instances move to other hosts.`)) return;
            post(`/v1/hosts/${enc(host)}/${verb}`, {}).then(
              () => {
                ctx.notify(`${host}: ${verb === 'drain' ? 'draining' : 'accepting instances again'}`);
                void view.refresh();
              },
              (e: unknown) => ctx.notify(e instanceof Error ? e.message : String(e), 'error'),
            );
          },
        },
      },
      draining ? 'Undrain' : 'Drain',
    );
  };

  const draw = (): void => {
    const q = search.value;
    const shown = rows.filter((r) => matches(q, [str(r.host), stateOf(r), labelText(r)]));
    table.setRows(shown);
    const down = rows.filter((r) => r.alive !== true).length;
    const draining = rows.filter((r) => r.draining === true).length;
    summary.textContent = `${shown.length === rows.length ? '' : `${shown.length} of `}${rows.length} hosts · ${draining} draining · ${down} down`;
  };
  search.addEventListener('input', draw);

  const view: View = {
    el: h('section', { class: 'view', data: { view: 'hosts' } }, h('div', { class: 'toolbar' }, h('h2', {}, 'Hosts'), search, summary), table.el),
    watches: ['hosts', 'allocs', 'drains'],
    async refresh() {
      rows = list<HostRow>(await get<unknown>('/v1/hosts'), 'hosts');
      draw();
    },
  };
  return view;
}

function stateOf(r: HostRow): string {
  return r.alive !== true ? 'down' : r.draining === true ? 'draining' : 'ready';
}

function labelText(r: HostRow): string {
  return Object.entries(r.labels ?? {})
    .map(([k, v]) => `${k}=${str(v)}`)
    .join(' ');
}

/** "1.5 / 4" with a bar of how full it is. */
function usage(used: number, cap: number, fmt: (n: number) => string): HTMLElement {
  const pct = cap > 0 ? Math.min(100, Math.max(0, (used / cap) * 100)) : 0;
  const fill = h('span', { class: `fill${pct >= 90 ? ' hot' : ''}` });
  fill.style.width = `${pct}%`;
  return h('span', { class: 'use' }, h('span', { class: 'bar' }, fill), `${fmt(used)} / ${fmt(cap)}`);
}
