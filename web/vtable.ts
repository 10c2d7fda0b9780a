import { h, type Child } from './dom.js';

/**
 * A virtualised table: a fixed row height, a scroller whose inner spacer is as tall as every row together, and only
 * the rows in view (plus a few either side) in the DOM. 10,000 instances cost the same to show as 30.
 */

export interface Column<T> {
  readonly title: string;
  /** A CSS class for the column's cells (its width is set in style.css). */
  readonly class: string;
  readonly cell: (row: T) => Child;
  /** The cell's tooltip, for text that may be cut off. */
  readonly tip?: (row: T) => string;
}

export const ROW_HEIGHT = 30;
const OVERSCAN = 8;

export class VTable<T> {
  readonly el: HTMLDivElement;
  private readonly scroller: HTMLDivElement;
  private readonly spacer: HTMLDivElement;
  private readonly body: HTMLDivElement;
  private readonly empty: HTMLDivElement;
  private rows: readonly T[] = [];
  private frame = 0;
  private drawn = '';
  /** The rows in the DOM by key, with what they were drawn from: an unchanged row keeps its element (and a click). */
  private cache = new Map<string, { readonly sig: string; readonly el: HTMLDivElement }>();

  constructor(
    private readonly columns: readonly Column<T>[],
    private readonly key: (row: T) => string,
    emptyText: string,
    name: string,
  ) {
    const head = h('div', { class: 'vt-head', attrs: { role: 'row' } }, ...columns.map((c) => h('div', { class: `vt-cell ${c.class}`, attrs: { role: 'columnheader' } }, c.title)));
    this.body = h('div', { class: 'vt-body' });
    this.spacer = h('div', { class: 'vt-spacer' }, this.body);
    this.scroller = h('div', { class: 'vt-scroll' }, this.spacer);
    this.empty = h('div', { class: 'vt-empty' }, emptyText);
    this.el = h('div', { class: 'vtable', data: { table: name }, attrs: { role: 'table' } }, head, this.scroller, this.empty);
    this.scroller.addEventListener('scroll', () => this.schedule(), { passive: true });
    new ResizeObserver(() => this.schedule()).observe(this.scroller);
  }

  setRows(rows: readonly T[]): void {
    this.rows = rows;
    this.spacer.style.height = `${rows.length * ROW_HEIGHT}px`;
    this.empty.hidden = rows.length > 0;
    this.drawn = '';
    this.draw();
  }

  /** Redraws the rows in view on the next frame (scrolling, resizing). */
  private schedule(): void {
    if (this.frame !== 0) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  private draw(): void {
    const height = this.scroller.clientHeight || 600;
    const first = Math.max(0, Math.floor(this.scroller.scrollTop / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(this.rows.length, Math.ceil((this.scroller.scrollTop + height) / ROW_HEIGHT) + OVERSCAN);
    const span = `${first}:${last}`;
    if (span === this.drawn) return;
    this.drawn = span;
    const out: HTMLDivElement[] = [];
    const cache = new Map<string, { sig: string; el: HTMLDivElement }>();
    for (let i = first; i < last; i++) {
      const row = this.rows[i];
      if (row === undefined) continue;
      const key = this.key(row);
      const sig = `${i}\u0000${JSON.stringify(row)}`;
      const had = cache.has(key) ? undefined : this.cache.get(key);
      const el = had?.sig === sig ? had.el : this.drawRow(row, i, key);
      // Two rows with one key (the data is not trusted) each get their own element.
      if (!cache.has(key)) cache.set(key, { sig, el });
      out.push(el);
    }
    this.cache = cache;
    const now = this.body.children;
    if (now.length !== out.length || out.some((el, i) => now[i] !== el)) this.body.replaceChildren(...out);
  }

  private drawRow(row: T, i: number, key: string): HTMLDivElement {
    const tr = h(
      'div',
      { class: `vt-row${i % 2 === 1 ? ' odd' : ''}`, data: { key }, attrs: { role: 'row' } },
      ...this.columns.map((c) => {
        const tip = c.tip?.(row);
        return h('div', { class: `vt-cell ${c.class}`, attrs: { role: 'cell' }, ...(tip === undefined ? {} : { title: tip }) }, c.cell(row));
      }),
    );
    tr.style.transform = `translateY(${i * ROW_HEIGHT}px)`;
    return tr;
  }
}

/** A case-insensitive filter over the words of a row: every word of the query must occur in one of them. */
export function matches(query: string, fields: readonly string[]): boolean {
  const words = query.toLowerCase().split(/\s+/).filter((w) => w !== '');
  if (words.length === 0) return true;
  const hay = fields.join('\u0000').toLowerCase();
  return words.every((w) => hay.includes(w));
}
