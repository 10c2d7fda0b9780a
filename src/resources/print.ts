import { z } from 'zod';
import { defineKind } from './types.js';
import { once } from '../util/once.js';

/** The print kind's parameters, built on first use (a graph without one does not pay for them at start-up). */
const paramsSchema = once(() =>
  z.strictObject({
    msg: z.string().meta({ description: 'the message' }),
  }),
);

/** Writes a message to the log each time it is checked: handy to see when a part of the graph (re-)ran. */
export const printKind = defineKind({
  kind: 'print',
  description: 'writes a message to the log each time it runs',
  refreshable: true,
  get schema() {
    return paramsSchema();
  },
  create: (_id, params) => ({
    checkApply: ({ apply, refresh, log }) => {
      if (apply) log.info(refresh ? `${params.msg} (refreshed)` : params.msg);
      return Promise.resolve({ converged: true, changes: [] });
    },
  }),
});
