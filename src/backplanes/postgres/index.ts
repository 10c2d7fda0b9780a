/**
 * The PostgreSQL backplane: `{kind: postgres, name: main, replicas: 2, synchronous: true, memory: 256M}` becomes one
 * service `main` of replicas + 1 members, one per host, each running member.ts (which runs postgres as its child, as
 * the `postgres` user). react.ts keeps exactly one of them primary: docs/backplanes/postgres.md says how.
 */
import { z } from 'zod';
import { cpuParam, sizeParam } from '../kit.js';
import { defineBackplane, type AppObject, type ExpandEnv, type ServiceDocument } from '../sdk.js';
import { PG_PORT, reactPostgres } from './react.js';

const MiB = 1024 * 1024;
/** What the member (a Node process, ~50 MB) and postgres's own processes need besides shared_buffers and work areas. */
const MEMBER_OVERHEAD = 96 * MiB;
/** Where members keep their data directories (one per alloc) unless `dataDir` says otherwise. */
export const DEFAULT_DATA_DIR = '/var/lib/backplane/postgres';

const size = sizeParam('postgres', 64 * MiB);

const cpu = cpuParam;

/**
 * postgresql.conf settings an operator may set. The member owns the rest (port, listen addresses, replication,
 * WAL, synchronous_standby_names, data layout): a role or durability setting given by hand would break failover or
 * the zero-loss guarantee (synchronous_commit is not here for that reason).
 */
export const ALLOWED_SETTINGS = [
  'max_connections',
  'shared_buffers',
  'work_mem',
  'maintenance_work_mem',
  'effective_cache_size',
  'random_page_cost',
  'effective_io_concurrency',
  'default_statistics_target',
  'checkpoint_timeout',
  'max_wal_size',
  'min_wal_size',
  'statement_timeout',
  'lock_timeout',
  'idle_in_transaction_session_timeout',
  'log_min_duration_statement',
  'log_statement',
  'log_connections',
  'log_disconnections',
  'timezone',
  'datestyle',
  'jit',
] as const;

const settingValue = z.union([z.number(), z.boolean(), z.string().regex(/^[A-Za-z0-9 ._:/+-]{0,100}$/, 'a setting value: letters, digits, spaces and . _ : / + - only')]);

/** The object's parameters (everything besides kind and name). */
export const postgresParams = z.strictObject({
  replicas: z.number().int('replicas is a whole number').min(0, 'replicas is at least 0').max(15, 'replicas is at most 15').default(1),
  /** The instance's memory for postgres (shared_buffers is a quarter of it unless set); the member's own is added. */
  memory: size.meta({ description: 'memory for postgres, e.g. 256M (shared_buffers a quarter of it); the instance reserves this plus 96M' }),
  cpu: cpu.optional().meta({ description: 'cores per member (0.5 or "500m"); default 0.5' }),
  /** Commits wait for a standby's flush (`synchronous_standby_names = FIRST 1 (...)`): no acknowledged commit is lost in a failover. */
  synchronous: z.boolean().default(false),
  version: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, 'version is a label: letters, digits, ".", "_", "-"').optional(),
  /** A few postgresql.conf settings (ALLOWED_SETTINGS); a change rolls the members, standbys first. */
  settings: z
    .record(z.string(), settingValue)
    .superRefine((v, ctx) => {
      for (const k of Object.keys(v)) {
        if (!(ALLOWED_SETTINGS as readonly string[]).includes(k)) ctx.addIssue({ code: 'custom', message: `settings: ${k} is not one the postgres backplane lets you set (allowed: ${ALLOWED_SETTINGS.join(', ')})` });
      }
    })
    .optional(),
  /** Where the members keep their data directories on each host (one per instance). */
  dataDir: z.string().regex(/^\/[A-Za-z0-9._/-]*$/, 'dataDir is an absolute path').optional(),
  /** Host label conditions, as a service's placement.constraints. */
  constraints: z.array(z.record(z.string(), z.unknown())).optional(),
});
export type PostgresParams = z.infer<typeof postgresParams>;

function expand(object: AppObject<PostgresParams>, env: ExpandEnv): ServiceDocument[] {
  const p = object.params;
  const limit = Math.ceil((p.memory + MEMBER_OVERHEAD) / MiB) * MiB;
  const root = (p.dataDir ?? DEFAULT_DATA_DIR).replace(/\/+$/, '');
  const memberEnv: Record<string, string> = {
    PG_ROOT: root,
    PG_MEMORY: String(p.memory),
  };
  if (p.settings !== undefined && Object.keys(p.settings).length > 0) memberEnv.PG_SETTINGS = JSON.stringify(p.settings);
  const service: Record<string, unknown> = {
    name: object.name,
    count: p.replicas + 1,
    ...(p.version === undefined ? {} : { version: p.version }),
    // run.user stays root: the member itself runs postgres, initdb, pg_basebackup and pg_rewind as `postgres`.
    run: { cmd: env.script('member'), env: memberEnv, stopTimeout: '15s' },
    resources: { cpu: p.cpu ?? 0.5, memory: limit },
    ports: { [PG_PORT]: {} },
    // The member is alive (it touches its heartbeat every 500 ms), whatever postgres is doing: a former primary may
    // wait, stopped, for a new primary, and a base backup may take long. Readiness (streaming, writable) goes through
    // the instance API's `ready`.
    health: {
      exec: ['sh', '-c', `test $(( $(date +%s) - $(stat -c %Y ${root}/{{ instance.id }}/heartbeat) )) -lt 10`],
      interval: '2s',
      timeout: '1s',
      failures: 3,
      grace: '20s',
    },
    placement: { distinctHosts: true, ...(p.constraints === undefined ? {} : { constraints: p.constraints }) },
    // A crashed member restarts in place quickly, keeping its data directory (it comes back a standby, or waits).
    restart: { attempts: 5, interval: '10m', delay: '200ms' },
    // One member at a time, stopped before its replacement starts (one per host); react orders standbys first and
    // holds the primary until it has stepped down for an up-to-date standby.
    update: { strategy: 'rolling', maxParallel: 1, startFirst: false, minHealthy: '2s' },
  };
  return [{ ...service, name: object.name }];
}

export default defineBackplane<PostgresParams>({
  kind: 'postgres',
  description: 'PostgreSQL with streaming standbys: automatic failover (highest LSN wins), synchronous mode, switchover on rolling update',
  params: postgresParams,
  expand,
  react: (input) => reactPostgres(input),
  reactTimeoutMs: 2000,
});
