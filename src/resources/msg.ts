import { z } from 'zod';
import { defineKind, type ResourceLog } from './types.js';
import { once } from '../util/once.js';

/** mgmt's priorities (syslog's), most severe first. */
const PRIORITIES = ['emerg', 'alert', 'crit', 'err', 'warning', 'notice', 'info', 'debug'] as const;
type Priority = (typeof PRIORITIES)[number];

/** The msg kind's parameters, built on first use (a graph without one does not pay for them at start-up). */
const paramsSchema = once(() =>
  z.strictObject({
    body: z.string().meta({ description: 'the message' }),
    priority: z
      .enum(PRIORITIES)
      .default('notice')
      .meta({ description: 'syslog priority: emerg to warning are logged as warnings, debug at debug level, notice and info at info' }),
    fields: z.record(z.string(), z.string()).default({}).meta({ description: 'extra fields on the log line (shown with --log-format json)' }),
  }),
);

/**
 * mgmt's `msg`: writes its body to the agent's log once, when it starts being managed (agent start, or a graph
 * that changed it), and again each time a notify edge refreshes it. Unlike `print`, which logs on every run, a msg
 * says something once per change, and the run that logs it counts as a change, so its notify edges fire then.
 */
export const msgKind = defineKind({
  kind: 'msg',
  description: "logs a message once when it starts being managed and again when refreshed (mgmt's msg)",
  refreshable: true,
  get schema() {
    return paramsSchema();
  },
  create: (_id, params) => {
    let logged = false;
    return {
      checkApply: ({ apply, refresh, log }) => {
        if (logged && !refresh) return Promise.resolve({ converged: true, changes: [] });
        if (!apply) return Promise.resolve({ converged: false, changes: [`log "${params.body}"`] });
        write(log, params.priority, params.body, params.fields);
        logged = true;
        return Promise.resolve({ converged: false, changes: [] });
      },
    };
  },
});

function write(
  log: ResourceLog,
  priority: Priority,
  body: string,
  fields: Record<string, string>,
): void {
  const f = Object.keys(fields).length > 0 ? { fields } : undefined;
  if (priority === 'debug') log.debug(body, f);
  else if (PRIORITIES.indexOf(priority) <= PRIORITIES.indexOf('warning')) log.warn(body, f);
  else log.info(body, f);
}
