import { z } from 'zod';
import { defineKind } from './types.js';

/** Does nothing: a join point for edges, and the smallest example of a kind. */
export const noopKind = defineKind({
  kind: 'noop',
  description: 'does nothing; a join point for edges',
  refreshable: true,
  schema: z.strictObject({}),
  create: () => ({
    checkApply: ({ refresh, log }) => {
      if (refresh) log.debug('refreshed');
      return Promise.resolve({ converged: true, changes: [] });
    },
  }),
});
