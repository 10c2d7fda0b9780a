import { forgetToken, get, HttpError, openStream, savedToken, saveToken, setUnauthorizedHandler, type StreamMessage, type StreamStatus } from './api.js';
import { coalesce, h, replace } from './dom.js';
import { str, type WhoAmI } from './types.js';
import type { Ctx, FeedEntry, View } from './view.js';
import { eventsView } from './views/events.js';
import { graphView } from './views/graph.js';
import { hostsView } from './views/hosts.js';
import { serviceView } from './views/service.js';
import { servicesView } from './views/services.js';

/**
 * Backplane's dashboard: plain TypeScript and DOM, served by the agent (GET / and /assets/*) and talking to the
 * agent's API with the token the operator types in (kept in sessionStorage, gone with the tab). Views are chosen by
 * the URL's hash; the live stream (GET /v1/stream) makes the shown view refetch when what it shows changed.
 */

const FEED_MAX = 10_000;
const root = document.getElementById('app') ?? document.body;

let stopStream: (() => void) | undefined;
let current: { view: View; route: string } | undefined;
const feed: FeedEntry[] = [];

setUnauthorizedHandler((e) => signOut(e.message));

function signOut(message?: string): void {
  forgetToken();
  stopStream?.();
  stopStream = undefined;
  current?.view.dispose?.();
  current = undefined;
  showLogin(message);
}

function showLogin(message?: string): void {
  const input = h('input', { type: 'password', attrs: { id: 'token', name: 'token', autocomplete: 'off', spellcheck: 'false', placeholder: 'bpt_…', required: '', 'aria-label': 'API token' } });
  const error = h('p', { class: 'login-error', attrs: { role: 'alert' } }, message ?? '');
  const button = h('button', { type: 'submit', class: 'btn primary' }, 'Sign in');
  const form = h(
    'form',
    { class: 'login' },
    h('h1', {}, 'Backplane'),
    h('p', { class: 'muted' }, 'Sign in with an API token. An admin makes one with `backplane token create --role viewer` (or operator).'),
    h('label', { attrs: { for: 'token' } }, 'Token'),
    input,
    button,
    error,
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const token = input.value.trim();
    if (token === '') return;
    saveToken(token);
    button.disabled = true;
    start().catch((err: unknown) => {
      forgetToken();
      button.disabled = false;
      error.textContent = err instanceof Error ? err.message : String(err);
    });
  });
  replace(root, form);
  input.focus();
}

async function start(): Promise<void> {
  const me = await get<WhoAmI>('/v1/whoami');
  const role = str(me.role);
  const canOperate = role === 'operator' || role === 'admin';
  const notice = h('div', { class: 'notice', attrs: { role: 'status', 'aria-live': 'polite' } });
  let noticeTimer: ReturnType<typeof setTimeout> | undefined;
  const ctx: Ctx = {
    me,
    canOperate,
    feed,
    notify(message, kind = 'info') {
      notice.textContent = message;
      notice.className = `notice show ${kind}`;
      if (noticeTimer !== undefined) clearTimeout(noticeTimer);
      noticeTimer = setTimeout(() => (notice.className = 'notice'), kind === 'error' ? 15_000 : 5000);
    },
  };
  const live = h('span', { class: 'live', attrs: { 'data-state': 'connecting', title: 'the live stream' } }, 'connecting');
  const nav = h(
    'nav',
    {},
    ...[
      ['hosts', 'Hosts'],
      ['services', 'Services'],
      ['graph', 'Graph'],
      ['events', 'Events'],
    ].map(([r, t]) => h('a', { href: `#/${r ?? ''}`, data: { route: r ?? '' } }, t ?? '')),
  );
  const who = h('span', { class: 'who', data: { role } }, `${str(me.name)} · ${role}${me.namespace === undefined ? '' : ` · namespace ${str(me.namespace)}`}`);
  const out = h('button', { class: 'btn small', on: { click: () => signOut() } }, 'Sign out');
  const main = h('main', {});
  replace(root, h('header', {}, h('span', { class: 'brand' }, 'Backplane'), nav, live, who, out), notice, main);

  const refresh = serialised(() => (current === undefined ? Promise.resolve() : current.view.refresh()), (e) => {
    if (e instanceof HttpError && e.status === 401) return;
    ctx.notify(e instanceof Error ? e.message : String(e), 'error');
  });

  const route = (): void => {
    const hash = location.hash.replace(/^#\/?/, '') || 'hosts';
    if (current?.route === hash) return;
    current?.view.dispose?.();
    const [top, arg] = splitRoute(hash);
    const view = top === 'services' && arg !== undefined ? serviceView(ctx, arg) : top === 'services' ? servicesView(ctx) : top === 'graph' ? graphView(ctx) : top === 'events' ? eventsView(ctx) : hostsView(ctx);
    current = { view, route: hash };
    for (const a of nav.querySelectorAll('a')) a.classList.toggle('active', a.dataset['route'] === top);
    replace(main, view.el);
    refresh();
  };
  window.onhashchange = route;
  route();

  // Stream: a `cluster` change refetches the view if it shows that kind of thing (coalesced: a rollout writes many).
  const dirty = coalesce(refresh, 150);
  const onMessage = (m: StreamMessage): void => {
    const entry = feedEntry(m);
    if (entry !== undefined) {
      feed.push(entry);
      if (feed.length > FEED_MAX) feed.splice(0, feed.length - FEED_MAX);
    }
    if (m.type === 'hello') refresh();
    const what = m.type === 'cluster' ? str((m.data as { what?: unknown } | null)?.what) : m.type === 'event' ? 'events' : '';
    if (what !== '' && current?.view.watches.includes(what) === true) dirty();
    current?.view.onMessage?.(m);
  };
  const onStatus = (s: StreamStatus): void => {
    live.dataset['state'] = s.state;
    live.textContent = s.state === 'live' ? 'live' : s.state === 'connecting' ? 'connecting' : `reconnecting in ${Math.round(s.inMs / 100) / 10}s`;
    live.title = s.state === 'retrying' ? `the live stream: ${s.why}` : 'the live stream';
  };
  stopStream?.();
  stopStream = openStream(onMessage, onStatus);
}

function splitRoute(hash: string): [string, string | undefined] {
  const i = hash.indexOf('/');
  if (i < 0) return [hash, undefined];
  let arg: string;
  try {
    arg = decodeURIComponent(hash.slice(i + 1));
  } catch {
    arg = hash.slice(i + 1);
  }
  return [hash.slice(0, i), arg === '' ? undefined : arg];
}

function feedEntry(m: StreamMessage): FeedEntry | undefined {
  const d = (m.data !== null && typeof m.data === 'object' ? m.data : {}) as Record<string, unknown>;
  const at = typeof d['at'] === 'number' ? d['at'] : Date.now();
  switch (m.type) {
    case 'event':
      return { at, type: 'event', where: str(d['service'] ?? ''), text: str(d['message']) };
    case 'resource':
      return { at, type: 'resource', where: str(d['host']), text: `${str(d['id'])}: ${str(d['prev'])} → ${str(d['state'])}` };
    case 'repair':
      return { at, type: 'repair', where: str(d['host']), text: `${str(d['id'])} changed something` };
    case 'cluster':
      return { at, type: 'cluster', where: 'store', text: `${str(d['what'])} changed` };
    case 'hello':
      return { at, type: 'hello', where: str(d['host']), text: 'connected' };
    default:
      return undefined;
  }
}

/** Runs `fn` one at a time: a call while one runs makes one more run after it, never two at once. */
function serialised(fn: () => Promise<void>, onError: (e: unknown) => void): () => void {
  let running = false;
  let again = false;
  const go = (): void => {
    if (running) {
      again = true;
      return;
    }
    running = true;
    fn()
      .catch(onError)
      .finally(() => {
        running = false;
        if (again) {
          again = false;
          go();
        }
      });
  };
  return go;
}

if (savedToken() === undefined) showLogin();
else
  start().catch((e: unknown) => {
    if (e instanceof HttpError && e.status === 401) return;
    showLogin(e instanceof Error ? e.message : String(e));
  });
