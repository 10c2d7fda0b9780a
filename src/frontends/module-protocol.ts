import type { GraphContext } from '../api.js';

/** The messages between typescript.ts and the worker that evaluates a graph module (module-worker.ts). */
export interface ModuleRequest {
  readonly file: string;
  readonly ctx: GraphContext;
}

export type ModuleReply =
  | { readonly ok: true; readonly out: unknown }
  | { readonly ok: false; readonly stage: 'load' | 'call' | 'result'; readonly message: string; readonly stack: string };

/** Marks "the default export is not a function" without a second message type. */
export const NOT_A_FUNCTION = '\u0000backplane:not-a-function';

