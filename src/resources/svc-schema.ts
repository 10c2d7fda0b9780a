import { constants } from 'node:os';
import { z } from 'zod';
import { absolutePath, duration, isAbsolutePath, isPlainRecord, quickOwner, quickStringArray, quickStringRecord, quickUnit, withUnit } from '../graph/schema-util.js';
import { parseDuration } from '../util/duration.js';
import { once } from '../util/once.js';
import { parseSize } from '../util/size.js';

export { parseSize };

/** Parameters of `svc`; kept apart from the implementation so the schema can be read on its own. */

/** A size field: bytes as a number, or a string with a binary unit (`512K`, `256M`, `10MB`, `1GiB`); parsed to bytes. */
export const size = () =>
  withUnit(parseSize, 'size', 'bytes (1048576) or a value with a unit (512K, 256M, 1G)', 'bytes (number) or a string with a binary unit: 512K, 256M, 10MB, 1G');

/** Signal names as Node knows them; `HUP` is accepted for `SIGHUP`. */
/** `v` as signalName() names it (SIGHUP for hup), known to Node or not. */
const toSignal = (v: string): NodeJS.Signals => (v.toUpperCase().startsWith('SIG') ? v.toUpperCase() : `SIG${v.toUpperCase()}`) as NodeJS.Signals;

const signalName = () =>
  z
    .string()
    .transform((v, ctx) => {
      const name = toSignal(v);
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

// ---- quickSvcParams ----------------------------------------------------------------------------------------------

const QUICK_KEYS = new Set(['cmd', 'env', 'cwd', 'user', 'group', 'state', 'restart', 'backoff', 'crashLoop', 'log', 'stopSignal', 'stopTimeout', 'limits', 'health', 'reload', 'onAgentExit']);

/** Whether `o` is a plain object whose keys are all in `keys`, none of them undefined (as a strictObject wants it). */
function strictKeys(o: unknown, keys: ReadonlySet<string>): o is Readonly<Record<string, unknown>> {
  if (!isPlainRecord(o)) return false;
  for (const k in o) if (!keys.has(k) || o[k] === undefined) return false;
  return true;
}

/** What signalName() makes of v, or undefined. */
function quickSignal(v: unknown): NodeJS.Signals | undefined {
  if (typeof v !== 'string') return undefined;
  const name = toSignal(v);
  return name in constants.signals ? name : undefined;
}

/** What argv() makes of v (a copy), or undefined. */
function quickArgv(v: unknown): string[] | undefined {
  const a = quickStringArray(v, 1, false);
  return a === undefined || a[0] === '' ? undefined : a;
}

/** What duration() makes of v, `dflt` when absent, or undefined. */
const quickDuration = (v: unknown, dflt: number): number | undefined => (v === undefined ? dflt : quickUnit(v, parseDuration));

/** What z.number().int().min(min) makes of v, `dflt` when absent, or undefined. */
const quickInt = (v: unknown, min: number, dflt: number): number | undefined => (v === undefined ? dflt : typeof v === 'number' && Number.isSafeInteger(v) && v >= min ? v : undefined);

const HEALTH_KEYS = new Set(['exec', 'http', 'tcp', 'interval', 'timeout', 'failures', 'startPeriod']);

/** What healthSchema() makes of v, or undefined. */
function quickHealth(h: unknown): HealthParams | undefined {
  if (!strictKeys(h, HEALTH_KEYS)) return undefined;
  let given = 0;
  let exec: string[] | undefined;
  if (h['exec'] !== undefined && (exec = quickArgv(h['exec'])) === undefined) return undefined;
  const http = h['http'];
  // Only URLs z.url() passes through unchanged: nothing for it to trim or strip (no whitespace at all), http or https
  // in lower case followed by "//" (so its protocol check passes), and one the URL parser takes.
  if (http !== undefined && !(typeof http === 'string' && /^https?:\/\/\S+$/.test(http) && URL.canParse(http))) return undefined;
  const tcp = h['tcp'];
  if (tcp !== undefined && !(typeof tcp === 'string' && HOST_PORT.test(tcp))) return undefined;
  for (const x of [exec, http, tcp]) if (x !== undefined) given++;
  if (given !== 1) return undefined;
  const interval = quickDuration(h['interval'], 5000);
  const timeout = quickDuration(h['timeout'], 2000);
  const failures = quickInt(h['failures'], 1, 3);
  const startPeriod = quickDuration(h['startPeriod'], 10_000);
  if (interval === undefined || timeout === undefined || failures === undefined || startPeriod === undefined) return undefined;
  const out: Record<string, unknown> = {};
  if (exec !== undefined) out['exec'] = exec;
  if (http !== undefined) out['http'] = http;
  if (tcp !== undefined) out['tcp'] = tcp;
  out['interval'] = interval;
  out['timeout'] = timeout;
  out['failures'] = failures;
  out['startPeriod'] = startPeriod;
  return out as HealthParams;
}

const BACKOFF_KEYS = new Set(['initial', 'max', 'reset']);
const CRASH_KEYS = new Set(['failures', 'window']);
const LOG_KEYS = new Set(['stdout', 'stderr', 'maxSize', 'keep']);
const LIMIT_KEYS = new Set(['cpu', 'memory']);
const SIGNAL_KEYS = new Set(['signal']);
const CMD_KEYS = new Set(['cmd']);

/**
 * svcSchema's answer without zod, for a svc declared with anything but a fence: building and running this schema
 * (~60 nodes, the health check's URL, the signal names) was ~13 ms of a cold run with one service, and zod's script
 * ~10 ms more. The same checks as the schema's, piece by piece (the helpers above and in schema-util.ts), the
 * schema's key order and defaults (nested ones too), fresh objects and arrays. Anything else (a fence, a health URL
 * z.url() would normalise, any problem) is undefined: the schema decides and reports it with its file:line.
 */
export function quickSvcParams(_name: string, params: Readonly<Record<string, unknown>>): SvcParams | undefined {
  for (const key in params) if (!QUICK_KEYS.has(key) || params[key] === undefined) return undefined;
  let cmd: string[] | undefined;
  if (params['cmd'] !== undefined && (cmd = quickArgv(params['cmd'])) === undefined) return undefined;
  const env = params['env'] === undefined ? {} : quickStringRecord(params['env']);
  if (env === undefined) return undefined;
  const cwd = params['cwd'];
  if (cwd !== undefined && !isAbsolutePath(cwd)) return undefined;
  let user: string | number | undefined;
  if (params['user'] !== undefined && (user = quickOwner(params['user'])) === undefined) return undefined;
  let group: string | number | undefined;
  if (params['group'] !== undefined && (group = quickOwner(params['group'])) === undefined) return undefined;
  // Not `??`: a null is refused by the schema, not defaulted.
  const state = params['state'] === undefined ? 'running' : params['state'];
  if (state !== 'running' && state !== 'stopped') return undefined;
  if (state === 'running' && cmd === undefined) return undefined;
  const restart = params['restart'] === undefined ? 'always' : params['restart'];
  if (restart !== 'always' && restart !== 'on-failure' && restart !== 'never') return undefined;
  const b = params['backoff'] === undefined ? {} : params['backoff'];
  if (!strictKeys(b, BACKOFF_KEYS)) return undefined;
  const backoff = { initial: quickDuration(b['initial'], 100), max: quickDuration(b['max'], 30_000), reset: quickDuration(b['reset'], 10_000) };
  if (backoff.initial === undefined || backoff.max === undefined || backoff.reset === undefined) return undefined;
  const c = params['crashLoop'] === undefined ? {} : params['crashLoop'];
  if (!strictKeys(c, CRASH_KEYS)) return undefined;
  const crashLoop = { failures: quickInt(c['failures'], 1, 5), window: quickDuration(c['window'], 60_000) };
  if (crashLoop.failures === undefined || crashLoop.window === undefined) return undefined;
  const l = params['log'] === undefined ? {} : params['log'];
  if (!strictKeys(l, LOG_KEYS)) return undefined;
  if ((l['stdout'] !== undefined && !isAbsolutePath(l['stdout'])) || (l['stderr'] !== undefined && !isAbsolutePath(l['stderr']))) return undefined;
  const maxSize = l['maxSize'] === undefined ? 10 * 1024 * 1024 : quickUnit(l['maxSize'], parseSize);
  const keep = quickInt(l['keep'], 0, 3);
  if (maxSize === undefined || keep === undefined || keep > 100) return undefined;
  const log: Record<string, unknown> = {};
  if (l['stdout'] !== undefined) log['stdout'] = l['stdout'];
  if (l['stderr'] !== undefined) log['stderr'] = l['stderr'];
  log['maxSize'] = maxSize;
  log['keep'] = keep;
  const stopSignal = params['stopSignal'] === undefined ? 'SIGTERM' : quickSignal(params['stopSignal']);
  const stopTimeout = quickDuration(params['stopTimeout'], 10_000);
  if (stopSignal === undefined || stopTimeout === undefined) return undefined;
  let limits: Record<string, unknown> | undefined;
  const li = params['limits'];
  if (li !== undefined) {
    if (!strictKeys(li, LIMIT_KEYS)) return undefined;
    limits = {};
    const cpu = li['cpu'];
    if (cpu !== undefined) {
      if (!(typeof cpu === 'number' && Number.isFinite(cpu) && cpu > 0)) return undefined;
      limits['cpu'] = cpu;
    }
    if (li['memory'] !== undefined) {
      const memory = quickUnit(li['memory'], parseSize);
      if (memory === undefined) return undefined;
      limits['memory'] = memory;
    }
  }
  let health: HealthParams | undefined;
  if (params['health'] !== undefined && (health = quickHealth(params['health'])) === undefined) return undefined;
  let reload: { signal: NodeJS.Signals } | { cmd: string[] } | undefined;
  const r = params['reload'];
  if (r !== undefined) {
    if (strictKeys(r, SIGNAL_KEYS) && r['signal'] !== undefined) {
      const signal = quickSignal(r['signal']);
      if (signal === undefined) return undefined;
      reload = { signal };
    } else if (strictKeys(r, CMD_KEYS) && r['cmd'] !== undefined) {
      const argv = quickArgv(r['cmd']);
      if (argv === undefined) return undefined;
      reload = { cmd: argv };
    } else return undefined;
  }
  const onAgentExit = params['onAgentExit'] === undefined ? 'keep' : params['onAgentExit'];
  if (onAgentExit !== 'keep' && onAgentExit !== 'stop') return undefined;
  // The schema's shape order, optional keys only when given.
  const out: Record<string, unknown> = {};
  if (cmd !== undefined) out['cmd'] = cmd;
  out['env'] = env;
  if (cwd !== undefined) out['cwd'] = cwd;
  if (user !== undefined) out['user'] = user;
  if (group !== undefined) out['group'] = group;
  out['state'] = state;
  out['restart'] = restart;
  out['backoff'] = backoff;
  out['crashLoop'] = crashLoop;
  out['log'] = log;
  out['stopSignal'] = stopSignal;
  out['stopTimeout'] = stopTimeout;
  if (limits !== undefined) out['limits'] = limits;
  if (health !== undefined) out['health'] = health;
  if (reload !== undefined) out['reload'] = reload;
  out['onAgentExit'] = onAgentExit;
  return out as SvcParams;
}
