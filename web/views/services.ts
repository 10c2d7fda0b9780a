import { get } from '../api.js';
import { badge, h } from '../dom.js';
import { list, num, str, type ServiceRow } from '../types.js';
import type { Ctx, View } from '../view.js';
import { matches, VTable } from '../vtable.js';

/** Every service: version, instances wanted / placed / healthy, namespace, its current plan; a row opens it. */
export function servicesView(_ctx: Ctx): View {
  let rows: ServiceRow[] = [];
  const search = h('input', { type: 'search', class: 'search', attrs: { placeholder: 'filter services: name, namespace, version', 'aria-label': 'filter services' } });
  const ns = h('select', { class: 'ns', attrs: { 'aria-label': 'namespace' } });
  const troubled = h('input', { type: 'checkbox', attrs: { 'aria-label': 'only services with fewer healthy instances than wanted' } });
  const summary = h('span', { class: 'summary' });
  const table = new VTable<ServiceRow>(
    [
      { title: 'Service', class: 'c-name', cell: (r) => h('a', { href: `#/services/${encodeURIComponent(str(r.name))}` }, str(r.name)), tip: (r) => str(r.name) },
      { title: 'Namespace', class: 'c-ns', cell: (r) => nsOf(r) },
      { title: 'Version', class: 'c-version', cell: (r) => (r.removed === true ? '(removed)' : str(r.version)), tip: (r) => str(r.version) },
      { title: 'Wanted', class: 'c-num', cell: (r) => num(r.count) },
      { title: 'Placed', class: 'c-num', cell: (r) => num(r.placed) },
      { title: 'Healthy', class: 'c-num', cell: (r) => num(r.healthy) },
      { title: 'Health', class: 'c-health', cell: (r) => health(r) },
      { title: 'Plan', class: 'c-plan', cell: (r) => str(r.plan ?? '-'), tip: (r) => str(r.plan ?? '') },
    ],
    (r) => str(r.name),
    'no services match',
    'services',
  );

  const draw = (): void => {
    const names = [...new Set(rows.map(nsOf))].sort();
    const chosen = ns.value;
    ns.replaceChildren(h('option', { attrs: { value: '' } }, 'all namespaces'), ...names.map((n) => h('option', { attrs: { value: n } }, n)));
    ns.value = names.includes(chosen) ? chosen : '';
    const q = search.value;
    const shown = rows.filter((r) => (ns.value === '' || nsOf(r) === ns.value) && (!troubled.checked || num(r.healthy) < num(r.count)) && matches(q, [str(r.name), nsOf(r), str(r.version), str(r.plan ?? '')]));
    table.setRows(shown);
    const instances = rows.reduce((a, r) => a + num(r.placed), 0);
    const healthy = rows.reduce((a, r) => a + num(r.healthy), 0);
    summary.textContent = `${shown.length === rows.length ? '' : `${shown.length} of `}${rows.length} services · ${healthy} of ${instances} instances healthy`;
  };
  search.addEventListener('input', draw);
  ns.addEventListener('change', draw);
  troubled.addEventListener('change', draw);

  return {
    el: h(
      'section',
      { class: 'view', data: { view: 'services' } },
      h('div', { class: 'toolbar' }, h('h2', {}, 'Services'), search, ns, h('label', { class: 'check' }, troubled, 'unhealthy only'), summary),
      table.el,
    ),
    watches: ['services', 'allocs', 'plans', 'policy'],
    async refresh() {
      rows = list<ServiceRow>(await get<unknown>('/v1/services'), 'services');
      draw();
    },
  };
}

function nsOf(r: ServiceRow): string {
  return str(r.namespace ?? 'default') || 'default';
}

function health(r: ServiceRow): HTMLElement {
  const want = num(r.count);
  const ok = num(r.healthy);
  if (r.removed === true) return badge('removed');
  if (want === 0) return badge('idle');
  return badge(ok >= want ? 'healthy' : ok === 0 ? 'down' : 'degraded', `${ok} of ${want} healthy`);
}
