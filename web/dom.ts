/**
 * Building DOM without innerHTML: every piece of data (host names, labels, error messages, event text) comes from
 * the cluster and is hostile, so it only ever becomes a text node or an attribute value set through the DOM API.
 */

export type Child = Node | string | number | null | undefined | false;

export interface Props {
  readonly class?: string;
  readonly title?: string;
  readonly href?: string;
  readonly type?: string;
  readonly disabled?: boolean;
  readonly data?: Readonly<Record<string, string>>;
  readonly attrs?: Readonly<Record<string, string>>;
  readonly on?: { readonly [K in keyof HTMLElementEventMap]?: (e: HTMLElementEventMap[K]) => void };
}

/** `h('td', {class: 'n'}, text)`: an element whose children are text nodes (strings) or nodes. */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, props: Props = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (props.class !== undefined) el.className = props.class;
  if (props.title !== undefined) el.title = props.title;
  if (props.href !== undefined && el instanceof HTMLAnchorElement) el.href = safeHref(props.href);
  if (props.type !== undefined) el.setAttribute('type', props.type);
  if (props.disabled === true) el.setAttribute('disabled', '');
  for (const [k, v] of Object.entries(props.data ?? {})) el.dataset[k] = v;
  for (const [k, v] of Object.entries(props.attrs ?? {})) {
    // No event-handler attributes and no style attribute (the CSP forbids inline style anyway).
    if (/^on/i.test(k) || k.toLowerCase() === 'style') continue;
    el.setAttribute(k, v);
  }
  for (const [ev, fn] of Object.entries(props.on ?? {})) el.addEventListener(ev, fn as EventListener);
  append(el, children);
  return el;
}

export function append(el: Node, children: readonly Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
}

/** Replaces every child of `el`. */
export function replace(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}

/** Only in-app links (`#/...`) and same-origin paths: a `javascript:` URL in data never becomes a link. */
export function safeHref(href: string): string {
  return href.startsWith('#') || href.startsWith('/') ? href : '#';
}

const SVG = 'http://www.w3.org/2000/svg';

export function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Readonly<Record<string, string | number>> = {}, ...children: Child[]): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (/^on/i.test(k) || k.toLowerCase() === 'style' || k.toLowerCase().endsWith('href')) continue;
    el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

/** A CSS class name part from a state word: only [a-z0-9-], so data cannot pick arbitrary classes. */
export function stateClass(state: string): string {
  return state.toLowerCase().replace(/[^a-z0-9-]/g, '').slice(0, 32) || 'unknown';
}

export function badge(state: string, title?: string): HTMLSpanElement {
  return h('span', { class: `badge s-${stateClass(state)}`, ...(title === undefined ? {} : { title }) }, state);
}

/** 1.5G, 512M: memory in bytes for people. */
export function size(bytes: number): string {
  if (!Number.isFinite(bytes)) return '?';
  const neg = bytes < 0;
  let n = Math.abs(bytes);
  const units = ['B', 'K', 'M', 'G', 'T'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  const s = n >= 10 || i === 0 ? String(Math.round(n)) : n.toFixed(1).replace(/\.0$/, '');
  return `${neg ? '-' : ''}${s}${units[i] ?? ''}`;
}

/** "12s ago", "3m ago", from ms since the epoch. */
export function ago(ms: number | undefined, now = Date.now()): string {
  if (ms === undefined || !Number.isFinite(ms)) return '-';
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

/**
 * Calls `fn` once, `ms` after the first call of a burst; the calls meanwhile ride along. Not a debounce that restarts
 * its timer on each call: a cluster that changes more often than every `ms` (a flapping health check, a busy
 * rollout) would then never be redrawn. So the view lags a change by at most `ms` and redraws at most once per `ms`.
 */
export function coalesce(fn: () => void, ms: number): () => void {
  let t: ReturnType<typeof setTimeout> | undefined;
  return () => {
    if (t !== undefined) return;
    t = setTimeout(() => {
      t = undefined;
      fn();
    }, ms);
  };
}
