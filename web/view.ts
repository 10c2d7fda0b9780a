import type { StreamMessage } from './api.js';
import type { WhoAmI } from './types.js';

/** What every view gets from the app. */
export interface Ctx {
  readonly me: WhoAmI;
  /** Operator buttons are enabled only for operators and admins (the server refuses the rest anyway). */
  readonly canOperate: boolean;
  /** A message in the notice bar: the server's own words on a refusal. */
  notify(message: string, kind?: 'info' | 'error'): void;
  /** Every stream message since the page loaded, oldest first (at most 10,000). */
  readonly feed: readonly FeedEntry[];
}

export interface FeedEntry {
  readonly at: number;
  readonly type: string;
  readonly where: string;
  readonly text: string;
}

export interface View {
  readonly el: HTMLElement;
  /** The `cluster` stream events (`what`) after which it refetches. */
  readonly watches: readonly string[];
  /** Fetches and draws; the app serialises calls and shows a failure in the notice bar. */
  refresh(): Promise<void>;
  /** Every stream message, for views that follow one more closely (the graph, the event list). */
  onMessage?(m: StreamMessage): void;
  dispose?(): void;
}

/** The title of a button a viewer cannot press. */
export function roleTitle(ctx: Ctx, what: string): string | undefined {
  return ctx.canOperate ? undefined : `${what} needs the operator role; ${ctx.me.name} is a ${ctx.me.role}`;
}
