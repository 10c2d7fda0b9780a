/**
 * A Redis object on a real cluster, for the end-to-end test (redis-etcd.test.ts) and the failover bench
 * (bench/failover-redis.ts): agents on a real etcd, `backplane deploy` of `{kind: redis, name: cache, ...}`, a client
 * that writes through the discovery entry `cache.primary` (read from the store by the agent's own Discovery, which
 * verifies every record), and a sampler of every member's role.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Discovery } from '../../../src/agent/discovery.js';
import { EtcdStore } from '../../../src/cluster/etcd-store.js';
import { operatorContext } from '../../../src/cli/operator.js';
import { createLogger } from '../../../src/log.js';
import { parseInfo, RedisConnection } from '../../../src/backplanes/redis/resp.js';
import { opJson, type TestCluster } from '../../helpers/services.js';

export interface AppJson {
  readonly summary?: string;
  readonly error?: string;
  readonly fields: Record<string, string | number | boolean>;
  readonly discovery: Record<string, string[]>;
  readonly members: { allocId: string; host: string; state: string; role?: string; message?: string; report?: Record<string, unknown> }[];
  readonly lastFailover?: { at: number; from?: string; to: string; reason: string; timeline: { at: number; message: string }[] };
}

export function appOf(c: TestCluster, name = 'cache'): Promise<AppJson> {
  return opJson<AppJson>(c, ['app', name]);
}

/** One redis command on a short-lived connection; an error (or no connection) comes back as text "ERR ...". */
export async function redisCmd(port: number, args: readonly (string | number)[], host = '127.0.0.1', timeoutMs = 1000): Promise<string> {
  let conn: RedisConnection;
  try {
    conn = await RedisConnection.open(port, host, timeoutMs);
  } catch (err) {
    return `ERR ${err instanceof Error ? err.message : String(err)}`;
  }
  try {
    return String(await conn.command(args, timeoutMs));
  } catch (err) {
    return `ERR ${err instanceof Error ? err.message : String(err)}`;
  } finally {
    conn.close();
  }
}

/** The store, as the operator host h1 reads it, and a Discovery over it (the same code agents run). */
export async function openDiscovery(c: TestCluster): Promise<{ store: EtcdStore; discovery: Discovery; close(): Promise<void> }> {
  const store = new EtcdStore({ endpoints: c.etcd, cluster: c.name });
  const ctx = await operatorContext(store, { stateDir: join(c.root, 'state-h1'), etcd: c.etcd.join(','), cluster: c.name });
  const discovery = new Discovery({ store, trust: () => ctx.view, log: createLogger({ level: 'silent' }), debounceMs: 1 });
  await discovery.start();
  return {
    store,
    discovery,
    close: async () => {
      discovery.close();
      await store.close();
    },
  };
}

export interface Target {
  readonly id: string;
  readonly address: string;
  readonly port: number;
}

export function primaryOf(d: Discovery, name = 'cache'): Target | undefined {
  const p = d.current()[`${name}.primary`]?.[0];
  const port = p?.ports['redis'];
  return p === undefined || port === undefined ? undefined : { id: p.id, address: p.address, port };
}

/**
 * A client that writes `SET w:<n> <n>` in a loop to whatever `cache.primary` names, reconnecting when it changes or a
 * write fails; each accepted write is recorded with its time.
 */
export class Writer {
  readonly accepted: { at: number; n: number; to: string }[] = [];
  readonly refused: { at: number; why: string; to: string }[] = [];
  private running = true;
  private readonly loop: Promise<void>;

  constructor(
    private readonly d: Discovery,
    private readonly everyMs = 10,
  ) {
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    let n = 0;
    let conn: RedisConnection | undefined;
    let connTo = '';
    while (this.running) {
      const t = primaryOf(this.d);
      const key = t === undefined ? '' : `${t.id} ${t.address}:${t.port}`;
      if (key !== connTo) {
        conn?.close();
        conn = undefined;
        connTo = key;
      }
      if (t === undefined) {
        await sleep(this.everyMs);
        continue;
      }
      try {
        conn ??= await RedisConnection.open(t.port, t.address, 500);
        n++;
        const r = await conn.command(['SET', `w:${n}`, n], 1000);
        if (r === 'OK') this.accepted.push({ at: Date.now(), n, to: t.id });
        else this.refused.push({ at: Date.now(), why: String(r), to: t.id });
      } catch (err) {
        this.refused.push({ at: Date.now(), why: err instanceof Error ? err.message : String(err), to: t.id });
        conn?.close();
        conn = undefined;
      }
      await sleep(this.everyMs);
    }
    conn?.close();
  }

  /** The first write accepted after `t`. */
  firstAfter(t: number): { at: number; n: number; to: string } | undefined {
    return this.accepted.find((w) => w.at > t);
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }
}

/** Samples every member's role every ~20 ms: a sample with two masters is split brain. */
export class RoleSampler {
  samples = 0;
  readonly violations: string[] = [];
  private running = true;
  private readonly loop: Promise<void>;

  constructor(private readonly ports: () => readonly { id: string; port: number }[]) {
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    while (this.running) {
      const ms = this.ports();
      const roles = await Promise.all(ms.map(async (m) => ({ id: m.id, role: parseInfo(await redisCmd(m.port, ['INFO', 'replication'], '127.0.0.1', 300)).get('role') })));
      this.samples++;
      const masters = roles.filter((r) => r.role === 'master');
      if (masters.length > 1) this.violations.push(`${new Date().toISOString()}: ${masters.map((m) => m.id).join(' and ')} are both masters`);
      await sleep(20);
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }
}

/** kill -9 of the redis-server behind `port` (its pid from INFO server); resolves with the time of the kill. */
export async function killRedis(port: number): Promise<number> {
  const pid = Number(parseInfo(await redisCmd(port, ['INFO', 'server'])).get('process_id'));
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`no redis answers on port ${port}`);
  const at = Date.now();
  process.kill(pid, 'SIGKILL');
  return at;
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 === 1 ? (s[(s.length - 1) / 2] ?? NaN) : ((s[s.length / 2 - 1] ?? 0) + (s[s.length / 2] ?? 0)) / 2;
}

export function percentile(xs: readonly number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : (s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] ?? NaN);
}

/**
 * The redis-servers a test saw, by pid and port: what a killed agent's members may leave behind. Killed at the end
 * only while /proc still shows that redis-server on that port (a pid may have been reused by then).
 */
export class RedisLeftovers {
  private readonly seen = new Map<number, number>();

  async record(port: number): Promise<void> {
    const pid = Number(parseInfo(await redisCmd(port, ['INFO', 'server'])).get('process_id'));
    if (Number.isInteger(pid) && pid > 0) this.seen.set(pid, port);
  }

  killAll(): void {
    for (const [pid, port] of this.seen) {
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
        if (cmd.startsWith('redis-server') && cmd.includes(`:${port}`)) process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
}
