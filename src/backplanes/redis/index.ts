/**
 * The Redis backplane: `{kind: redis, name: cache, replicas: 2, memory: 256M}` becomes one service `cache` of
 * replicas + 1 members, one per host, each running member.ts (which runs redis-server as its child). react.ts keeps
 * exactly one of them primary: docs/backplanes/redis.md says how, docs/backplanes.md is the guide it illustrates.
 */
import { z } from 'zod';
import { cpuParam, sizeParam } from '../kit.js';
import { defineBackplane, type AppObject, type ExpandEnv, type ServiceDocument } from '../sdk.js';
import { REDIS_PORT, reactRedis } from './react.js';

const MiB = 1024 * 1024;
/** What the member (a Node process, ~50 MB) needs besides redis's own data. */
const MEMBER_OVERHEAD = 96 * MiB;

const POLICIES = ['noeviction', 'allkeys-lru', 'allkeys-lfu', 'allkeys-random', 'volatile-lru', 'volatile-lfu', 'volatile-random', 'volatile-ttl'] as const;

const size = sizeParam('redis', 8 * MiB);

const cpu = cpuParam;

/** The object's parameters (everything besides kind and name). */
export const redisParams = z.strictObject({
  replicas: z.number().int('replicas is a whole number').min(0, 'replicas is at least 0').max(15, 'replicas is at most 15').default(1),
  /** Redis's own memory (maxmemory); the instance's limit adds room for replication buffers and the member. */
  memory: size.meta({ description: 'the data redis may hold (maxmemory), e.g. 256M; the instance reserves 1.5x this plus 96M' }),
  cpu: cpu.optional().meta({ description: 'cores per member (0.5 or "500m"); default 0.25' }),
  version: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, 'version is a label: letters, digits, ".", "_", "-"').optional(),
  maxmemoryPolicy: z.enum(POLICIES).default('noeviction'),
  /** Other redis settings, passed as `--name value` (the ones the member owns are refused). */
  settings: z.record(z.string().regex(/^[a-z][a-z0-9-]*$/, 'a redis setting name, e.g. hz'), z.union([z.string(), z.number()])).optional(),
  /** Host label conditions, as a service's placement.constraints. */
  constraints: z.array(z.record(z.string(), z.unknown())).optional(),
});
export type RedisParams = z.infer<typeof redisParams>;

/** Settings the member sets itself: a role, a port or persistence given by hand would break failover. */
export const OWNED_SETTINGS = ['port', 'bind', 'dir', 'replicaof', 'slaveof', 'save', 'appendonly', 'maxmemory', 'maxmemory-policy', 'daemonize', 'logfile', 'pidfile', 'repl-diskless-sync-delay', 'replica-read-only', 'slave-read-only', 'unixsocket', 'include', 'rename-command'];

function expand(object: AppObject<RedisParams>, env: ExpandEnv): ServiceDocument[] {
  const p = object.params;
  const owned = Object.keys(p.settings ?? {}).filter((k) => OWNED_SETTINGS.includes(k));
  if (owned.length > 0) throw new Error(`settings: ${owned.join(', ')} ${owned.length === 1 ? 'is' : 'are'} set by the redis backplane itself (role, port, persistence); leave ${owned.length === 1 ? 'it' : 'them'} out`);
  const limit = Math.ceil((p.memory * 1.5 + MEMBER_OVERHEAD) / MiB) * MiB;
  const memberEnv: Record<string, string> = {
    REDIS_MAXMEMORY: String(p.memory),
    REDIS_MAXMEMORY_POLICY: p.maxmemoryPolicy,
  };
  if (p.settings !== undefined && Object.keys(p.settings).length > 0) memberEnv.REDIS_SETTINGS = JSON.stringify(p.settings);
  const service: Record<string, unknown> = {
    name: object.name,
    count: p.replicas + 1,
    ...(p.version === undefined ? {} : { version: p.version }),
    run: { cmd: env.script('member'), env: memberEnv, stopTimeout: '10s' },
    resources: { cpu: p.cpu ?? 0.25, memory: limit },
    ports: { [REDIS_PORT]: {} },
    health: { tcp: { port: REDIS_PORT }, interval: '1s', timeout: '1s', failures: 3, grace: '10s' },
    placement: { distinctHosts: true, ...(p.constraints === undefined ? {} : { constraints: p.constraints }) },
    // A crashed member restarts in place quickly (its redis comes back read-only and resyncs as a replica).
    restart: { attempts: 5, interval: '10m', delay: '200ms' },
    // One member at a time, stopped before its replacement starts (one per host); react orders replicas first and
    // holds the primary until a switchover has handed its role to an up-to-date replica.
    update: { strategy: 'rolling', maxParallel: 1, startFirst: false, minHealthy: '2s' },
  };
  return [service as ServiceDocument];
}

export default defineBackplane<RedisParams>({
  kind: 'redis',
  description: 'Redis with replicas: one primary, automatic failover (highest offset wins), switchover on rolling upgrade',
  params: redisParams,
  expand,
  react: (input) => reactRedis(input),
  reactTimeoutMs: 2000,
});
