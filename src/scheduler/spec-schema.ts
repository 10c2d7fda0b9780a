import { z } from 'zod';
import { duration, withUnit } from '../graph/schema-util.js';
import { parseSize } from '../resources/svc-schema.js';
import { DEFAULT_NAMESPACE, NAMESPACE_NAME, namespaceName, parseCpu } from './names.js';

/**
 * The service spec as an operator writes it (YAML or a TypeScript module), as one zod schema: validation, defaults
 * and the JSON Schema for editors all come from here. spec.ts turns the parsed value into a ServiceSpec (types.ts),
 * derives what depends on other fields (the version, the update strategy's parallelism), checks what spans fields
 * (canary against count, the deadlines, beforePromote without canaries) and what needs the resource kinds (files).
 *
 * Defaults follow Nomad's service jobs, scaled for a pool that aims to react in seconds (see docs/services.md for
 * the reasoning behind each).
 */

export const SERVICE_NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;
// Kept apart so that reading a record or a namespace policy does not build this module's schemas (names.ts).
export { DEFAULT_NAMESPACE, NAMESPACE_NAME, namespaceName, parseCpu };

/** Port names end up in env names (PORT_<NAME>) and in `{{ instance.port.NAME }}`. */
export const PORT_NAME = /^[a-z][a-z0-9_-]{0,31}$/;
const VERSION_LABEL = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

export const DEFAULTS = {
  count: 1,
  cpu: 0.1,
  memory: 128 * 1024 * 1024,
  health: { intervalMs: 2000, timeoutMs: 1000, failures: 3, graceMs: 10_000 },
  restart: { attempts: 2, intervalMs: 30 * 60_000, delayMs: 1000 },
  reschedule: { attempts: 0, intervalMs: 60 * 60_000, delayMs: 5000, maxDelayMs: 60 * 60_000, unlimited: true },
  update: { maxParallel: 1, minHealthyMs: 2000, healthyDeadlineMs: 5 * 60_000, progressDeadlineMs: 10 * 60_000, canary: 0, autoPromote: false, autoRevert: true },
  hookTimeoutMs: 30_000,
  hookMaxTimeoutMs: 60 * 60_000,
} as const;

const serviceName = () =>
  z.string().regex(SERVICE_NAME, 'must be 1-63 characters of a-z, 0-9 and "-", starting with a letter or digit (it names store keys and instance ids)');

const portName = () => z.string().regex(PORT_NAME, 'a port name is a-z, 0-9, "_" and "-", starting with a letter, at most 32 characters');

const portNumber = () =>
  z
    .number({ error: (i) => (i.input === undefined ? undefined : 'a port is a number from 1 to 65535') })
    .int('a port is a whole number')
    .min(1, 'a port is a number from 1 to 65535')
    .max(65535, 'a port is a number from 1 to 65535');

const argv = (what: string, example = '[python3, -m, http.server, "8080"]') =>
  z
    .array(z.string(), { error: (i) => (i.input === undefined ? undefined : `${what} is a list of strings (argv, no shell), e.g. ${example}`) })
    .min(1, { message: `${what} needs at least the program`, abort: true })
    .refine((a) => (a[0] ?? '') !== '', 'the program (first element) must not be empty');

/** YAML writes `PORT: 8080` and `DEBUG: true` unquoted; the environment only holds text. */
const scalarText = () => z.union([z.string(), z.number(), z.boolean()]).transform(String);

const uid = () => z.union([z.string().min(1), z.number().int().nonnegative()]);

const runSchema = z.strictObject({
  cmd: argv('cmd').meta({ description: 'argv of the instance\'s process; no shell, it must stay in the foreground. Strings may use {{ instance.port.http }} etc.' }),
  env: z
    .record(z.string().regex(ENV_NAME, 'an environment variable name is letters, digits and "_", not starting with a digit'), scalarText())
    .default({})
    .meta({ description: 'extra environment; INSTANCE_INDEX, INSTANCE_ID, SERVICE_NAME, SERVICE_VERSION, BACKPLANE_API, BACKPLANE_TOKEN and PORT_<NAME> are set by the scheduler' }),
  cwd: z.string().min(1).optional().meta({ description: 'working directory (absolute; default /)' }),
  user: uid().optional().meta({ description: 'run as this user (name or uid); default root' }),
  group: uid().optional().meta({ description: "run with this group (name or gid); default the user's primary group" }),
  stopSignal: z.string().min(1).optional().meta({ description: 'signal that asks the process to stop (default SIGTERM)' }),
  stopTimeout: duration().optional().meta({ description: 'after stopSignal, wait this long before SIGKILL (default 10s)' }),
  stopNotice: duration()
    .optional()
    .meta({ description: 'before stopping an instance the agent sends it a `stopping` event through the instance API and waits this long before stopSignal (default 0)' }),
});

const resourcesSchema = z.strictObject({
  cpu: withUnit(parseCpu, 'cpu amount', 'cores (0.5) or millicores ("500m")', 'cores (number) or millicores: 0.5, "500m"')
    .default(DEFAULTS.cpu)
    .meta({ description: `CPU reserved in placement and enforced as a cgroup limit (default ${DEFAULTS.cpu} cores)` }),
  memory: withUnit(parseSize, 'size', 'bytes (268435456) or a value with a unit (256M, 1G)', 'bytes (number) or a string with a binary unit: 256M, 1G')
    .refine((n) => n >= 1024 * 1024, 'memory below 1M cannot run a process; write e.g. 64M')
    .default(DEFAULTS.memory)
    .meta({ description: 'memory reserved in placement and enforced as a cgroup limit (default 128M)' }),
});

const portEntry = z.strictObject({
  static: portNumber().optional().meta({ description: 'a fixed port; left out, a free port from the host\'s dynamic range is picked per instance' }),
});

const portsSchema = z
  .union([
    z.record(portName(), z.union([z.null(), portNumber(), portEntry])).meta({ description: 'name -> {} (dynamic) or { static: N } or N' }),
    z.array(z.strictObject({ name: portName(), static: portNumber().optional() })),
  ])
  .default({})
  .meta({ description: 'named ports: { http: {}, admin: { static: 9000 } } or [{ name: http }, { name: admin, static: 9000 }]' });

/** `{ port: http, path: /healthz }`: the check's URL is built for each instance from its port. */
const httpCheck = z.union([
  z.string().min(1),
  z.strictObject({
    port: portName(),
    path: z.string().startsWith('/', 'a path starts with "/"').default('/'),
    host: z.string().min(1).default('127.0.0.1'),
    scheme: z.enum(['http', 'https']).default('http'),
  }),
]);

const tcpCheck = z.union([z.string().min(1), z.strictObject({ port: portName(), host: z.string().min(1).default('127.0.0.1') })]);

const healthSchema = z
  .strictObject({
    http: httpCheck
      .optional()
      .meta({ description: 'healthy when a GET answers 2xx/3xx: a URL ("http://127.0.0.1:{{ instance.port.http }}/health") or { port: http, path: /health }' }),
    tcp: tcpCheck.optional().meta({ description: 'healthy when a TCP connection succeeds: "host:port" or { port: NAME }' }),
    exec: argv('exec').optional().meta({ description: 'healthy when this command exits 0' }),
    interval: duration().default(DEFAULTS.health.intervalMs).meta({ description: 'between checks (default 2s)' }),
    timeout: duration().default(DEFAULTS.health.timeoutMs).meta({ description: 'a check that takes longer failed (default 1s)' }),
    failures: z.number().int().min(1).default(DEFAULTS.health.failures).meta({ description: 'consecutive failures that make an instance unhealthy (default 3)' }),
    grace: duration()
      .default(DEFAULTS.health.graceMs)
      .meta({ description: 'after a start, failed checks do not count for this long; checks run until the first success: at once, then 10 ms later, the wait doubling up to 200ms (default 10s)' }),
  })
  .superRefine((h, ctx) => {
    const given = [h.exec, h.http, h.tcp].filter((x) => x !== undefined).length;
    if (given !== 1) ctx.addIssue({ code: 'custom', message: 'give exactly one of http, tcp or exec' });
  });

const labelName = () => z.string().regex(/^[^=\s]+$/, 'a label name is non-empty, without "=" or spaces');

const constraintSchema = z
  .strictObject({
    label: labelName(),
    eq: scalarText().optional(),
    in: z.array(scalarText()).min(1).optional(),
    notIn: z.array(scalarText()).min(1).optional(),
  })
  .superRefine((c, ctx) => {
    const given = [c.eq, c.in, c.notIn].filter((x) => x !== undefined).length;
    if (given !== 1) ctx.addIssue({ code: 'custom', message: 'give exactly one of eq, in or notIn' });
  });

const placementSchema = z.strictObject({
  constraints: z.array(constraintSchema).default([]).meta({ description: 'host label conditions: [{ label: zone, in: [a, b] }, { label: disk, eq: ssd }]' }),
  distinctHosts: z.boolean().default(false).meta({ description: 'at most one instance per host' }),
  spread: labelName().optional().meta({ description: 'spread instances evenly over the values of this host label (e.g. zone)' }),
  maxPerHost: z.number().int().min(1).optional(),
  antiAffinity: z.array(serviceName()).default([]).meta({ description: 'never on a host that runs an instance of one of these services' }),
  strategy: z.enum(['binpack', 'spread']).default('binpack').meta({ description: 'binpack: the fullest host that fits; spread: the emptiest' }),
});

const restartSchema = z.strictObject({
  attempts: z.number().int().min(0).default(DEFAULTS.restart.attempts).meta({ description: 'restarts in place within interval before the instance has failed (default 2)' }),
  interval: duration().refine((n) => n > 0, 'must be more than 0').default(DEFAULTS.restart.intervalMs).meta({ description: 'window the attempts are counted in (default 30m)' }),
  delay: duration().default(DEFAULTS.restart.delayMs).meta({ description: 'before the first restart; doubled for each further quick one (default 1s)' }),
});

const rescheduleSchema = z
  .strictObject({
    attempts: z.number().int().min(0).optional().meta({ description: 'reschedules allowed within interval; giving it makes unlimited default to false' }),
    interval: duration().default(DEFAULTS.reschedule.intervalMs).meta({ description: 'window the attempts are counted in (default 1h)' }),
    delay: duration().default(DEFAULTS.reschedule.delayMs).meta({ description: 'before the first reschedule; doubled for each further one (default 5s)' }),
    maxDelay: duration().default(DEFAULTS.reschedule.maxDelayMs).meta({ description: 'the delay never grows beyond this (default 1h)' }),
    unlimited: z.boolean().optional().meta({ description: 'reschedule a failed instance for ever (default true unless attempts is given)' }),
  })
  .superRefine((r, ctx) => {
    if (r.unlimited === true && r.attempts !== undefined)
      ctx.addIssue({ code: 'custom', path: ['attempts'], message: 'attempts has no effect with unlimited: true; give one of them' });
  });

/** How a spec change rolls: `rolling` replaces maxParallel at a time; `serial` is maxParallel 1, `parallel` all at once. */
export const UPDATE_STRATEGIES = ['rolling', 'serial', 'parallel'] as const;

const updateSchema = z
  .strictObject({
    strategy: z
      .enum(UPDATE_STRATEGIES)
      .optional()
      .meta({ description: 'rolling (default): maxParallel instances at a time; serial: one at a time; parallel: all at once' }),
    maxParallel: z
      .number()
      .int()
      .min(1)
      .optional()
      .meta({ description: 'with strategy rolling: instances replaced at a time on a spec change (default 1)' }),
    minHealthy: duration().default(DEFAULTS.update.minHealthyMs).meta({ description: 'a new instance must be healthy this long before it counts and the next step starts (default 2s)' }),
    healthyDeadline: duration()
      .default(DEFAULTS.update.healthyDeadlineMs)
      .meta({ description: 'a new instance not healthy within this fails its step, and so the rollout (default 5m)' }),
    progressDeadline: duration()
      .default(DEFAULTS.update.progressDeadlineMs)
      .meta({ description: 'no step completed for this long fails the rollout; 0 = no deadline; at least healthyDeadline (default 10m)' }),
    canary: z
      .number({ error: (i) => (i.input === undefined ? undefined : 'canary is a whole number >= 0') })
      .int('canary is a whole number >= 0')
      .min(0, 'canary is a whole number >= 0')
      .default(DEFAULTS.update.canary)
      .meta({ description: 'new-version instances started next to the old ones first; the rest roll once they are promoted (default 0: no canaries)' }),
    autoPromote: z.boolean().default(DEFAULTS.update.autoPromote).meta({ description: 'promote healthy canaries without `backplane rollout promote` (default false)' }),
    autoRevert: z
      .boolean()
      .default(DEFAULTS.update.autoRevert)
      .meta({ description: 'a failed rollout goes back by itself to the last version that was healthy (default true)' }),
    startFirst: z
      .boolean()
      .optional()
      .meta({ description: 'start the new instance before stopping the old one (default: true for a service of one instance, false otherwise)' }),
  })
  .superRefine((u, ctx) => {
    if (u.maxParallel === undefined) return;
    if (u.strategy === 'parallel')
      ctx.addIssue({ code: 'custom', path: ['maxParallel'], message: 'strategy parallel replaces every instance at once; leave maxParallel out, or use strategy rolling' });
    else if (u.strategy === 'serial' && u.maxParallel !== 1)
      ctx.addIssue({ code: 'custom', path: ['maxParallel'], message: `strategy serial replaces one instance at a time, not ${u.maxParallel}; leave maxParallel out, or use strategy rolling` });
  });

/** A hook: argv, or `{ cmd: argv, timeout }`. */
const hookSchema = z
  .union([
    argv('a hook', '[/srv/api/bin/warm, --port, "8080"] or { cmd: [...], timeout: 30s }'),
    z.strictObject({
      cmd: argv('cmd', '[/srv/api/bin/warm, --port, "8080"]'),
      timeout: duration()
        .refine((n) => n > 0 && n <= DEFAULTS.hookMaxTimeoutMs, 'a hook\'s timeout is more than 0 and at most 1h')
        .default(DEFAULTS.hookTimeoutMs)
        .meta({ description: 'the hook is killed (its process group) after this and has failed (default 30s, at most 1h)' }),
    }),
  ])
  .meta({ description: 'argv (no shell) run in the instance\'s context (its user, cwd, env and PORT_<NAME>), or { cmd: argv, timeout: 30s }' });

const hooksSchema = z.strictObject({
  afterStart: hookSchema.optional().meta({ description: 'runs once a new instance is up (healthy, or running without a health check); its step completes only when it succeeded' }),
  beforeStop: hookSchema.optional().meta({ description: 'runs before an instance is stopped by a rollout, a drain or a scale-down' }),
  beforePromote: hookSchema.optional().meta({ description: 'runs on each canary before promotion; needs update.canary' }),
});

/** `scale: { min, max }`: how far the count may be moved without the operator (min <= count <= max is checked in spec.ts). */
const boundNumber = (what: string) =>
  z
    .number({ error: (i) => (i.input === undefined ? `scale.${what} is required` : `scale.${what} is a whole number from 0 to 100000`) })
    .int(`scale.${what} is a whole number from 0 to 100000`)
    .min(0, `scale.${what} is a whole number from 0 to 100000`)
    .max(100_000, `scale.${what} is at most 100000`);

const scaleSchema = z.strictObject({
  min: boundNumber('min').meta({ description: 'the fewest instances an instance or backplane may ask for' }),
  max: boundNumber('max').meta({ description: 'the most instances an instance or backplane may ask for (at most 100000)' }),
});

/**
 * A graph resource per instance: `kind`, `name`, the kind's parameters inline (as in a graph file) and `meta`.
 * The parameters are checked against the kind's own schema once rendered (spec.ts), where every kind is known.
 */
const fileSchema = z.looseObject({
  kind: z.string().min(1).meta({ description: 'a resource kind: file, template, pkg, exec, ...' }),
  name: z.string().min(1).meta({ description: 'unique among resources of its kind on a host: put {{ instance.id }} in it when instances may share a host' }),
  meta: z.unknown().optional(),
});

export const serviceSchema = z.strictObject({
  name: serviceName(),
  count: z
    .number({ error: (i) => (i.input === undefined ? undefined : 'count is a whole number >= 0') })
    .int('count is a whole number >= 0')
    .min(0, 'count is a whole number >= 0')
    .max(100_000, 'count is at most 100000')
    .default(DEFAULTS.count),
  namespace: namespaceName()
    .optional()
    .meta({ description: `the namespace the service belongs to: its quota counts the service's instances, and its defaults fill the update policy fields and maxUnavailable the spec does not write (default "${DEFAULT_NAMESPACE}"; see docs/namespaces.md)` }),
  version: z
    .string()
    .regex(VERSION_LABEL, 'a version label is letters, digits, ".", "_" and "-", at most 63 characters')
    .optional()
    .meta({ description: 'a label shown in status; the version also carries a hash of the spec, so every edit rolls the instances' }),
  run: runSchema,
  resources: resourcesSchema.prefault({}),
  ports: portsSchema,
  health: healthSchema.optional(),
  placement: placementSchema.prefault({}),
  restart: restartSchema.prefault({}),
  reschedule: rescheduleSchema.prefault({}),
  update: updateSchema.prefault({}),
  maxUnavailable: z
    .number({ error: (i) => (i.input === undefined ? undefined : 'maxUnavailable is a whole number >= 0') })
    .int('maxUnavailable is a whole number >= 0')
    .min(0, 'maxUnavailable is a whole number >= 0')
    .optional()
    .meta({ description: 'the disruption budget: instances that may be down at once before a rollout step, a drain move or a scale-down waits (default the update\'s parallelism)' }),
  hooks: hooksSchema.optional().meta({ description: 'commands run at points of an instance\'s life: afterStart, beforeStop, beforePromote' }),
  actions: z
    .record(z.string().regex(/^[a-z][a-z0-9-]{0,31}$/, 'an action name is 1-32 characters of a-z, 0-9 and "-", starting with a letter'), hookSchema)
    .optional()
    .meta({ description: 'named commands its application backplane may run in an instance (argv or { cmd, timeout }, in the instance\'s context); only these can be run, and changing them rolls nothing' }),
  scale: scaleSchema.optional().meta({ description: 'bounds within which the service\'s own instances (through the instance API) or its application backplane may change count; count must lie within them' }),
  files: z.array(fileSchema).default([]).meta({ description: 'graph resources each instance needs (files, templates, packages...), rendered per instance' }),
});

export type ServiceInput = z.input<typeof serviceSchema>;
export type ParsedService = z.output<typeof serviceSchema>;
