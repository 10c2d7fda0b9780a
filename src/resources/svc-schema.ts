import { constants } from 'node:os';
import { z } from 'zod';
import { absolutePath, duration, withUnit } from '../graph/schema-util.js';
import { once } from '../util/once.js';
import { parseSize } from '../util/size.js';

export { parseSize };

/** Parameters of `svc`; kept apart from the implementation so the schema can be read on its own. */

/** A size field: bytes as a number, or a string with a binary unit (`512K`, `256M`, `10MB`, `1GiB`); parsed to bytes. */
export const size = () =>
  withUnit(parseSize, 'size', 'bytes (1048576) or a value with a unit (512K, 256M, 1G)', 'bytes (number) or a string with a binary unit: 512K, 256M, 10MB, 1G');

/** Signal names as Node knows them; `HUP` is accepted for `SIGHUP`. */
const signalName = () =>
  z
    .string()
    .transform((v, ctx) => {
      const name = (v.toUpperCase().startsWith('SIG') ? v.toUpperCase() : `SIG${v.toUpperCase()}`) as NodeJS.Signals;
      if (!(name in constants.signals)) {
        ctx.addIssue({ code: 'custom', message: `"${v}" is not a signal name; use e.g. SIGTERM, SIGHUP, SIGINT, SIGUSR1` });
        return z.NEVER;
      }
      return name;
    })
    .meta({ description: 'a signal name such as SIGTERM or HUP' });

const argv = () => z.array(z.string()).min(1).refine((a) => (a[0] ?? '') !== '', 'the program (first element) must not be empty');

const HOST_PORT = /^(?:\[[0-9a-fA-F:.]+\]|[^:\s[\]]+):(\d{1,5})$/;

/** A svc's health check, built on first use (as svcSchema). */
export const healthSchema = once(() =>
  z
    .strictObject({
      exec: argv().optional().meta({ description: 'healthy when this command exits 0' }),
      http: z
        .url({ protocol: /^https?$/ })
        .optional()
        .meta({ description: 'healthy when a GET of this URL answers with a 2xx or 3xx status' }),
      tcp: z
        .string()
        .regex(HOST_PORT, 'must be host:port, e.g. 127.0.0.1:8080 or [::1]:8080')
        .optional()
        .meta({ description: 'healthy when a TCP connection to host:port succeeds' }),
      interval: duration().default(5000).meta({ description: 'time between checks once healthy (or once startPeriod is over)' }),
      timeout: duration().default(2000).meta({ description: 'a check that takes longer has failed' }),
      failures: z.number().int().min(1).default(3).meta({ description: 'consecutive failed checks that make the process unhealthy (it is then restarted)' }),
      startPeriod: duration()
        .default(10_000)
        .meta({ description: 'for this long after a start, failed checks do not count, and checks run until the first success: at once, then 10 ms later, the wait doubling up to 200ms' }),
    })
    .superRefine((h, ctx) => {
      const given = [h.exec, h.http, h.tcp].filter((x) => x !== undefined).length;
      if (given !== 1) ctx.addIssue({ code: 'custom', message: 'give exactly one of exec, http or tcp' });
    }),
);

/** The svc kind's parameters, built on first use: a graph without a svc does not pay for them at start-up. */
export const svcSchema = once(() =>
  z
    .strictObject({
      cmd: argv()
        .optional()
        .meta({ description: 'argv of the process, e.g. ["/usr/sbin/nginx", "-g", "daemon off;"]; no shell — it must stay in the foreground. Not needed for state: stopped' }),
      env: z.record(z.string(), z.string()).default({}).meta({ description: "extra environment variables, merged over the agent's" }),
      cwd: absolutePath().optional().meta({ description: 'working directory (default /)' }),
      user: z.union([z.string().min(1), z.number().int().nonnegative()]).optional().meta({ description: 'run as this user (name or uid)' }),
      group: z
        .union([z.string().min(1), z.number().int().nonnegative()])
        .optional()
        .meta({ description: "run with this group (name or gid); default: the user's primary group" }),
      state: z.enum(['running', 'stopped']).default('running'),
      restart: z
        .enum(['always', 'on-failure', 'never'])
        .default('always')
        .meta({ description: 'when the supervisor restarts a process that exited on its own' }),
      backoff: z
        .strictObject({
          initial: duration().default(100).meta({ description: 'delay before the second quick restart; doubled for each further one' }),
          max: duration().default(30_000).meta({ description: 'the delay never grows beyond this' }),
          reset: duration().default(10_000).meta({ description: 'a process that ran this long was stable: its next crash restarts at once' }),
        })
        .prefault({}),
      crashLoop: z
        .strictObject({
          failures: z.number().int().min(1).default(5).meta({ description: 'this many failures within window stop the restarts' }),
          window: duration().default(60_000),
        })
        .prefault({}),
      log: z
        .strictObject({
          stdout: absolutePath().optional().meta({ description: "file for the process's stdout (default: stdout.log in the resource's state directory)" }),
          stderr: absolutePath().optional().meta({ description: "file for the process's stderr (default: stderr.log in the resource's state directory)" }),
          maxSize: size().default(10 * 1024 * 1024).meta({ description: 'rotate a log file once it is larger than this' }),
          keep: z.number().int().min(0).max(100).default(3).meta({ description: 'rotated files kept: file.1 (newest) … file.keep' }),
        })
        .prefault({}),
      stopSignal: signalName().default('SIGTERM'),
      stopTimeout: duration().default(10_000).meta({ description: 'after stopSignal, wait this long before SIGKILL' }),
      limits: z
        .strictObject({
          cpu: z.number().positive().optional().meta({ description: 'CPU cores, e.g. 0.5' }),
          memory: size().optional().meta({ description: 'memory limit, e.g. 256M' }),
        })
        .optional()
        .meta({ description: 'cgroup limits; where they cannot be applied a warning is logged and the process runs without them' }),
      health: healthSchema().optional(),
      reload: z
        .union([
          z.strictObject({ signal: signalName() }),
          z.strictObject({ cmd: argv().meta({ description: 'reload command; $MAINPID holds the pid of the process' }) }),
        ])
        .optional()
        .meta({ description: 'how a refresh (notify) reloads the process; without it a refresh restarts it' }),
      fence: z
        .strictObject({
          heartbeat: absolutePath().meta({ description: 'file the agent touches while it can confirm its place in the cluster' }),
          maxAge: duration()
            .refine((ms) => ms >= 300, 'must be at least 300ms: the watchdog looks every 100ms and a heartbeat is touched every ~250ms')
            .meta({ description: 'once the heartbeat is older than this, the process is killed and not started again until it is fresh' }),
        })
        .optional()
        .meta({
          description:
            'never run twice: a watchdog outside the agent kills the process once the heartbeat file is older than maxAge (also while the agent is frozen or dead), and the supervisor does not start it while it is',
        }),
      onAgentExit: z
        .enum(['keep', 'stop'])
        .default('keep')
        .meta({ description: 'keep: the process survives agent restarts and is adopted by the next agent; stop: stopping the agent stops it' }),
    })
    // Stopping needs no command: what to stop is found through the record and the cgroup, not by what would be run.
    .superRefine((p, ctx) => {
      if (p.state === 'running' && p.cmd === undefined) ctx.addIssue({ code: 'custom', path: ['cmd'], message: 'a running service needs cmd (only state: stopped can do without it)' });
    }),
);

export type SvcSchema = ReturnType<typeof svcSchema>;
export type SvcParams = z.output<SvcSchema>;
export type HealthParams = z.output<ReturnType<typeof healthSchema>>;
