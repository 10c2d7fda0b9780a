import { enc, get, HttpError, post } from '../api.js';
import { ago, badge, h, replace } from '../dom.js';
import { list, num, str, type EventRecord, type InstanceRow, type Plan, type PlanAnswer, type ServiceDetail } from '../types.js';
import { roleTitle, type Ctx, type View } from '../view.js';
import { VTable } from '../vtable.js';

const ACTIVE = ['running', 'paused', 'waiting'];

/** One service: its instances with their health, its plan with live progress and its controls, its events. */
export function serviceView(ctx: Ctx, name: string): View {
  const head = h('div', { class: 'svc-head' });
  const planBox = h('div', { class: 'plan', data: { section: 'plan' } });
  const events = h('ol', { class: 'events' });
  const instances = new VTable<InstanceRow>(
    [
      { title: 'Instance', class: 'c-name', cell: (r) => str(r.id), tip: (r) => str(r.id) },
      { title: 'Host', class: 'c-host', cell: (r) => str(r.host) },
      { title: 'Version', class: 'c-version', cell: (r) => str(r.version), tip: (r) => str(r.version) },
      { title: 'State', class: 'c-state', cell: (r) => badge(str(r.state)) },
      { title: 'Restarts', class: 'c-num', cell: (r) => num(r.restarts) },
      { title: 'Since', class: 'c-since', cell: (r) => (r.since === undefined ? '-' : ago(num(r.since))) },
      { title: 'Ports', class: 'c-ports', cell: (r) => ports(r) },
      { title: 'Message', class: 'c-msg', cell: (r) => str(r.message ?? ''), tip: (r) => str(r.message ?? '') },
    ],
    (r) => str(r.id),
    'no instances',
    'instances',
  );
  instances.el.classList.add('short');
  let plan: Plan | undefined;

  const command = (action: string): void => {
    if (plan === undefined) return;
    if (action === 'abort' && !confirm(`Abort plan ${plan.id}? It rolls back to the last healthy version.`)) return;
    setBusy(true);
    post<{ message?: unknown; outcome?: unknown }>(`/v1/services/${enc(name)}/plan/${enc(action)}`, {}).then(
      (r) => {
        // The controller may refuse it (the plan moved on) or not get to it in time: both are said, in its words.
        const outcome = str(r.outcome);
        ctx.notify(`${name}: ${action} ${outcome === '' ? 'sent' : outcome}: ${str(r.message)}`, outcome === 'refused' || outcome === 'dropped' ? 'error' : 'info');
        void view.refresh();
      },
      (e: unknown) => {
        setBusy(false);
        ctx.notify(e instanceof Error ? e.message : String(e), 'error');
      },
    );
  };
  const setBusy = (busy: boolean): void => {
    planBox.classList.toggle('busy', busy);
  };

  let drawnPlan = '';
  const drawPlan = (p: Plan | undefined, missing?: string): void => {
    setBusy(false);
    // Unchanged: keep the buttons as they are (one being clicked must not be replaced under the pointer).
    const sig = JSON.stringify(p ?? missing ?? '');
    if (sig === drawnPlan) return;
    drawnPlan = sig;
    if (p === undefined) {
      replace(planBox, h('h3', {}, 'Plan'), h('p', { class: 'muted' }, missing ?? 'no plan'));
      return;
    }
    const steps = (p.phases ?? []).flatMap((ph) => ph.steps ?? []);
    const done = steps.filter((s) => s.state === 'complete').length;
    const active = ACTIVE.includes(str(p.status));
    const waitingOp = steps.some((s) => s.state === 'waiting-operator');
    const can: Record<string, boolean> = {
      pause: active && p.paused !== true,
      resume: active && p.paused === true,
      promote: active && p.promote === 'no' && (waitingOp || num(p.strategy?.canary) > 0),
      abort: active,
    };
    const title = roleTitle(ctx, 'Steering a plan');
    const buttons = (['pause', 'resume', 'promote', 'abort'] as const).map((a) =>
      h(
        'button',
        {
          class: `btn${a === 'abort' ? ' danger' : a === 'promote' ? ' primary' : ''}`,
          data: { action: a },
          disabled: !ctx.canOperate || can[a] !== true,
          ...(title === undefined ? {} : { title }),
          on: { click: () => command(a) },
        },
        a[0]?.toUpperCase() + a.slice(1),
      ),
    );
    const pct = steps.length === 0 ? 100 : (done / steps.length) * 100;
    const fill = h('span', { class: 'fill' });
    fill.style.width = `${pct}%`;
    const versions = p.fromVersion === undefined ? str(p.toVersion) : `${str(p.fromVersion)} → ${str(p.toVersion)}`;
    replace(
      planBox,
      h(
        'div',
        { class: 'plan-head' },
        h('h3', {}, `Plan ${str(p.id)}`),
        badge(p.paused === true && active ? 'paused' : str(p.status)),
        h('span', { class: 'muted' }, `${str(p.kind)} ${versions}`),
        h('span', { class: 'controls' }, ...buttons),
      ),
      p.why === undefined ? null : h('p', { class: 'why' }, str(p.why)),
      h('div', { class: 'progress', data: { done: String(done), total: String(steps.length) } }, h('span', { class: 'bar wide' }, fill), `${done} of ${steps.length} steps complete`),
      ...(p.phases ?? []).map((ph) =>
        h(
          'div',
          { class: 'phase', data: { phase: str(ph.name) } },
          h('h4', {}, str(ph.name), h('span', { class: 'muted' }, ` · ${str(ph.strategy)}`)),
          h(
            'ol',
            { class: 'steps' },
            ...(ph.steps ?? []).map((s) =>
              h(
                'li',
                { class: 'step', data: { step: str(s.name), state: str(s.state) } },
                badge(str(s.state)),
                h('span', { class: 'step-name' }, str(s.name)),
                h('span', { class: 'muted' }, `${str(s.action)}${s.from === undefined ? '' : ` from ${str(s.from.host)}`}${s.to === undefined ? '' : ` to ${str(s.to.host)}`}`),
                s.why === undefined ? null : h('span', { class: 'step-why' }, str(s.why)),
                s.output === undefined ? null : h('pre', { class: 'output' }, str(s.output)),
              ),
            ),
          ),
        ),
      ),
      (p.log ?? []).length === 0
        ? null
        : h('details', { class: 'log' }, h('summary', {}, `Log (${(p.log ?? []).length})`), h('ol', {}, ...[...(p.log ?? [])].reverse().map((l) => h('li', {}, h('time', {}, ago(num(l.at))), ' ', str(l.message))))),
    );
  };

  const drawHead = (d: ServiceDetail): void => {
    const inst = list<InstanceRow>(d.instances);
    const healthy = inst.filter((i) => i.state === 'healthy').length;
    replace(
      head,
      h('a', { href: '#/services', class: 'back' }, '← Services'),
      h('h2', {}, name),
      d.removed === true ? badge('removed') : null,
      h(
        'dl',
        { class: 'facts' },
        h('dt', {}, 'Version'),
        h('dd', {}, str(d.spec?.version ?? '?')),
        h('dt', {}, 'Namespace'),
        h('dd', {}, str(d.namespace ?? d.spec?.namespace ?? 'default')),
        h('dt', {}, 'Instances'),
        h('dd', { data: { field: 'healthy' } }, `${healthy} healthy of ${inst.length} placed, ${num(d.scale?.count ?? d.spec?.count)} wanted`),
        h('dt', {}, 'Deployed'),
        h('dd', {}, `${str(d.deployedAt ?? '?')} by ${str(d.by ?? '?')}`),
      ),
    );
  };

  const drawEvents = (list_: readonly EventRecord[]): void => {
    replace(events, ...[...list_].reverse().slice(0, 100).map((e) => h('li', {}, h('time', { title: new Date(num(e.at)).toISOString() }, ago(num(e.at))), ' ', str(e.message))));
    if (list_.length === 0) replace(events, h('li', { class: 'muted' }, 'no events'));
  };

  const view: View = {
    el: h(
      'section',
      { class: 'view detail', data: { view: 'service', service: name } },
      head,
      planBox,
      h('h3', {}, 'Instances'),
      instances.el,
      h('h3', {}, 'Events'),
      events,
    ),
    watches: ['services', 'allocs', 'plans', 'events'],
    async refresh() {
      const [detail, planAnswer] = await Promise.all([
        get<ServiceDetail>(`/v1/services/${enc(name)}`),
        get<PlanAnswer>(`/v1/services/${enc(name)}/plan`).then(
          (a) => ({ plan: a.plan }),
          (e: unknown) => ({ missing: e instanceof HttpError && e.status !== 401 ? e.message : 'no plan' }),
        ),
      ]);
      drawHead(detail);
      instances.setRows(list<InstanceRow>(detail.instances));
      drawEvents(list<EventRecord>(detail.events));
      plan = 'plan' in planAnswer ? planAnswer.plan : undefined;
      drawPlan(plan, 'missing' in planAnswer ? planAnswer.missing : undefined);
    },
  };
  return view;
}

function ports(r: InstanceRow): string {
  return Object.entries(r.ports ?? {})
    .map(([k, v]) => `${k}=${num(v)}`)
    .join(' ');
}
