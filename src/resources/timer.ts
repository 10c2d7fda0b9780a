import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { duration } from '../graph/schema-util.js';
import { defineKind } from './types.js';
import { once } from '../util/once.js';

/** The timer kind's parameters, built on first use (a graph without one does not pay for them at start-up). */
const paramsSchema = once(() =>
  z.strictObject({
    interval: duration().refine((ms) => ms >= 10, 'must be at least 10ms').meta({ description: 'time between ticks' }),
  }),
);

/**
 * Emits an event every `interval`: each tick counts as a change, so dependents re-run and notify edges fire.
 * This is how a graph says "re-run this exec every 10 minutes" without polling everything else.
 */
export const timerKind = defineKind({
  kind: 'timer',
  description: 'ticks every interval; each tick re-runs dependents and fires notify edges',
  get schema() {
    return paramsSchema();
  },
  create: (_id, params) => {
    let ticks = 0;
    return {
      async watch({ signal, ready, changed }) {
        ready();
        for (;;) {
          try {
            await sleep(params.interval, undefined, { signal });
          } catch {
            return; // aborted
          }
          ticks++;
          changed('tick');
        }
      },
      checkApply: ({ apply }) => {
        if (ticks === 0) return Promise.resolve({ converged: true, changes: [] });
        if (apply) ticks = 0;
        return Promise.resolve({ converged: false, changes: ['tick'] });
      },
    };
  },
});
