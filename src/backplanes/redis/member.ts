/**
 * The Redis backplane's member: the task of every instance of a redis object's service (dist/backplanes/redis/member.mjs).
 *
 * It runs `redis-server` as its child and keeps it in the role its config says, through the instance API
 * (src/api/instance-client.ts): reads its config from /v1/self and `config` events, reports
 * `{role, epoch, runId, offset, link, lagMs}` with PUT /v1/state (at once on a role, link, epoch or run id change,
 * every 500 ms otherwise).
 *
 * Safety (docs/backplanes.md, "Rules that prevent split brain"):
 *  - redis always starts read-only: a replica of the configured primary, or of nothing (127.0.0.1:0) when there is
 *    none or when it is itself the configured primary. Roles live only in memory (no config file, no persistence).
 *  - it becomes writable (REPLICAOF NO ONE) only for a config `role: primary` whose epoch is above the one it found at
 *    start and above any it already applied, and whose runId is the run id of the redis it runs now: a promotion meant
 *    for a redis that has since restarted is never applied to its empty successor.
 *  - when redis exits it reports `down` at once, then restarts it read-only (a new run id, which tells the backplane).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { InstanceApiError, InstanceClient, type InstanceEvent, type SelfInfo } from '../../api/instance-client.js';
import type { RedisConfig, RedisMemberState } from './react.js';
import { parseInfo, RedisConnection, RespError } from './resp.js';
import { selfWithRetry } from '../kit.js';

const POLL_MS = 100;
const REPORT_EVERY_MS = 500;
/** "Replica of nothing": read-only, never reaches anyone (port 0 refuses at once). */
const NOWHERE = { address: '127.0.0.1', port: 0 };
const REDIS_BIN = process.env.REDIS_SERVER_BIN ?? 'redis-server';

function log(msg: string): void {
  process.stdout.write(`[redis-member] ${new Date().toISOString()} ${msg}\n`);
}

function parseConfig(v: unknown): RedisConfig | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const c = v as Record<string, unknown>;
  if (typeof c.epoch !== 'number' || (c.role !== 'primary' && c.role !== 'replica')) return undefined;
  return c as unknown as RedisConfig;
}

class Member {
  private child: ChildProcess | undefined;
  private conn: RedisConnection | undefined;
  private runId: string | undefined;
  private config: RedisConfig | undefined;
  /** Promotions for epochs up to this one are never applied (the epoch in force when this process started). */
  private readonly floorEpoch: number;
  private appliedPrimaryEpoch = 0;
  /** The epoch of the last config applied: what the report says it follows. */
  private appliedEpoch = 0;
  private stopping = false;
  private startedAt = 0;
  private restartDelay = 100;
  private lastReport: { key: string; at: number } = { key: '', at: 0 };
  private applying: Promise<void> = Promise.resolve();
  private reapply = false;
  private readonly events = new AbortController();
  private readonly dir: string;

  constructor(
    private readonly api: InstanceClient,
    private readonly self: SelfInfo,
    private readonly port: number,
  ) {
    this.config = parseConfig(self.config);
    this.floorEpoch = this.config?.epoch ?? 0;
    this.appliedEpoch = this.config?.epoch ?? 0;
    this.dir = mkdtempSync(join(tmpdir(), `bp-redis-${self.allocId}-`));
  }

  async run(): Promise<void> {
    process.on('SIGTERM', () => this.stop('SIGTERM'));
    process.on('SIGINT', () => this.stop('SIGINT'));
    await this.killStale();
    this.startRedis();
    void this.api
      .events((e) => this.onEvent(e), this.events.signal, { onError: (err) => log(`events: ${err.message}`) })
      .catch((err: unknown) => {
        if (err instanceof InstanceApiError && err.status === 401) {
          log('the instance API no longer knows this instance: stopping');
          this.stop('SIGTERM');
        }
      });
    for (;;) {
      await sleep(POLL_MS);
      if (this.stopping) return;
      await this.poll();
    }
  }

  private onEvent(e: InstanceEvent): void {
    if (e.type === 'hello' || e.type === 'config') {
      const c = parseConfig(e.type === 'hello' ? e.data.config : e.data);
      if (c === undefined || JSON.stringify(c) === JSON.stringify(this.config)) return;
      log(`config: ${JSON.stringify(c)}`);
      this.config = c;
      this.apply();
    } else if (e.type === 'stopping') {
      log(`stopping in ${e.data.inMs} ms: ${e.data.reason}`);
    }
  }

  /** A redis left on our port by a previous life of this member (killed with its parent gone) is shut down first. */
  private async killStale(): Promise<void> {
    try {
      const c = await RedisConnection.open(this.port, '127.0.0.1', 300);
      log(`a redis still answers on port ${this.port} (a previous life's): SHUTDOWN NOSAVE`);
      await c.command(['SHUTDOWN', 'NOSAVE'], 1000).catch(() => undefined);
      c.close();
      for (let i = 0; i < 50; i++) {
        await sleep(50);
        const again = await RedisConnection.open(this.port, '127.0.0.1', 200).catch(() => undefined);
        if (again === undefined) return;
        again.close();
      }
    } catch {
      // Nothing there: the usual case.
    }
  }

  private startRedis(): void {
    const c = this.config;
    // Never writable at start: follow the configured primary, or nobody.
    const follow = c?.role === 'replica' && c.primary !== undefined ? c.primary : NOWHERE;
    const binds = ['127.0.0.1'];
    if (this.self.address !== '' && this.self.address !== '127.0.0.1' && this.self.address !== 'localhost') binds.unshift(this.self.address);
    const args = [
      '--port', String(this.port),
      '--bind', ...binds,
      '--dir', this.dir,
      '--save', '',
      '--appendonly', 'no',
      '--daemonize', 'no',
      '--repl-diskless-sync', 'yes',
      '--repl-diskless-sync-delay', '0',
      '--repl-ping-replica-period', '1',
      '--replica-read-only', 'yes',
      '--maxmemory', process.env.REDIS_MAXMEMORY ?? '0',
      '--maxmemory-policy', process.env.REDIS_MAXMEMORY_POLICY ?? 'noeviction',
      '--replicaof', follow.address, String(follow.port),
    ];
    // Peers on other hosts reach it on the host's address: protected mode (no password) would refuse them.
    // FAILOVER TO names a replica by the address it announces: the one peers reach it on.
    if (binds.length > 1) args.push('--protected-mode', 'no', '--replica-announce-ip', this.self.address);
    const settings = process.env.REDIS_SETTINGS;
    if (settings !== undefined && settings !== '') {
      for (const [k, v] of Object.entries(JSON.parse(settings) as Record<string, string | number>)) args.push(`--${k}`, String(v));
    }
    log(`starting redis-server on port ${this.port}, read-only, replica of ${follow === NOWHERE ? 'nobody yet' : `${follow.address}:${follow.port}`}`);
    const child = spawn(REDIS_BIN, args, { cwd: this.dir, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    this.startedAt = Date.now();
    this.runId = undefined;
    // Redis logs a failed connection every second while it follows nobody: keep those out of the instance's log.
    const quiet = /MASTER 127\.0\.0\.1:0\b|SYNC: Connection refused|MASTER <-> REPLICA sync started/;
    for (const s of [child.stdout, child.stderr]) {
      if (s === null) continue;
      createInterface({ input: s }).on('line', (line) => {
        if (!quiet.test(line)) process.stdout.write(`${line}\n`);
      });
    }
    child.on('error', (err) => log(`redis-server: ${err.message}`));
    child.on('exit', (code, signal) => this.onExit(child, code, signal));
  }

  private onExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.child !== child) return;
    this.child = undefined;
    this.conn?.close();
    this.conn = undefined;
    const how = signal === null ? `exit ${code ?? '?'}` : signal;
    if (this.stopping) {
      log(`redis exited (${how}); stopping`);
      this.finish();
      return;
    }
    const lived = Date.now() - this.startedAt;
    this.restartDelay = lived > 10_000 ? 100 : Math.min(this.restartDelay * 2, 5000);
    log(`redis exited (${how}) after ${lived} ms; restarting it read-only in ${this.restartDelay} ms`);
    const state: RedisMemberState = { role: 'down', epoch: this.appliedEpoch, ...(this.runId === undefined ? {} : { runId: this.runId }) };
    void this.send({ ready: false, state, message: `redis exited (${how}); restarting read-only`, urgent: true });
    setTimeout(() => {
      if (!this.stopping) this.startRedis();
    }, this.restartDelay);
  }

  private async connection(): Promise<RedisConnection | undefined> {
    if (this.conn !== undefined && !this.conn.closed) return this.conn;
    if (this.child === undefined) return undefined;
    try {
      this.conn = await RedisConnection.open(this.port, '127.0.0.1', 500);
      return this.conn;
    } catch {
      return undefined;
    }
  }

  private async poll(): Promise<void> {
    const conn = await this.connection();
    if (conn === undefined) return;
    let info: Map<string, string>;
    try {
      info = parseInfo(String(await conn.command(['INFO', 'server', 'replication'], 1000)));
    } catch (err) {
      if (err instanceof RespError && /LOADING/.test(err.message)) return;
      log(`INFO: ${err instanceof Error ? err.message : String(err)}`);
      return;
    }
    const runId = info.get('run_id');
    const newRedis = runId !== undefined && runId !== this.runId;
    if (newRedis) this.runId = runId;
    const master = info.get('role') === 'master';
    const offset = Number(info.get('master_repl_offset') ?? 0);
    const link = master ? undefined : info.get('master_link_status') === 'up' ? 'up' : 'down';
    const lastIo = Number(info.get('master_last_io_seconds_ago') ?? -1);
    const state: RedisMemberState = {
      role: master ? 'primary' : 'replica',
      epoch: master && this.appliedPrimaryEpoch > 0 ? this.appliedPrimaryEpoch : this.appliedEpoch,
      ...(this.runId === undefined ? {} : { runId: this.runId }),
      offset,
      ...(link === undefined ? {} : { link }),
      ...(link === 'up' && lastIo >= 0 ? { lagMs: lastIo * 1000 } : {}),
    };
    const message = master
      ? `primary at epoch ${state.epoch}, ${info.get('connected_slaves') ?? '0'} replicas, offset ${offset}`
      : info.get('master_port') === '0'
        ? 'read-only, waiting for a primary'
        : `replica of ${info.get('master_host') ?? '?'}:${info.get('master_port') ?? '?'}, link ${link ?? '?'}, offset ${offset}`;
    const key = JSON.stringify([state.role, state.epoch, state.runId, state.link]);
    const now = Date.now();
    const urgent = key !== this.lastReport.key;
    if (urgent || now - this.lastReport.at >= REPORT_EVERY_MS) {
      this.lastReport = { key, at: now };
      await this.send({ ready: true, state, message, urgent });
    }
    // A new redis (a restart) has not had the current config applied yet, nor any config that came while it started.
    if (newRedis) this.apply();
  }

  private async send(r: { ready: boolean; state: RedisMemberState; message: string; urgent: boolean }): Promise<void> {
    try {
      await this.api.report({ ready: r.ready, state: r.state as unknown as Record<string, unknown>, message: r.message.slice(0, 200), urgent: r.urgent });
    } catch (err) {
      log(`report: ${err instanceof Error ? err.message : String(err)}`);
      this.lastReport = { key: '', at: 0 };
    }
  }

  /** Applies the current config, one application at a time; a config that arrives meanwhile is applied after. */
  private apply(): void {
    if (this.reapply) return;
    this.reapply = true;
    this.applying = this.applying.then(async () => {
      this.reapply = false;
      try {
        const done = await this.applyOnce();
        if (!done && !this.stopping) setTimeout(() => this.apply(), 200);
      } catch (err) {
        log(`applying config: ${err instanceof Error ? err.message : String(err)}`);
        if (!this.stopping) setTimeout(() => this.apply(), 200);
      }
    });
  }

  /** false: not now (no redis yet), try again. */
  private async applyOnce(): Promise<boolean> {
    const c = this.config;
    if (c === undefined) return true;
    const conn = await this.connection();
    if (conn === undefined || this.runId === undefined) return false;
    const info = parseInfo(String(await conn.command(['INFO', 'replication'], 1000)));
    const master = info.get('role') === 'master';
    if (c.role === 'primary') {
      if (c.epoch <= this.floorEpoch || c.epoch <= this.appliedPrimaryEpoch) return true;
      if (c.runId !== this.runId) {
        log(`config says primary at epoch ${c.epoch} for redis ${c.runId ?? '?'}, but this redis is ${this.runId}: staying read-only`);
        return true;
      }
      await conn.command(['REPLICAOF', 'NO', 'ONE']);
      this.appliedPrimaryEpoch = c.epoch;
      this.appliedEpoch = c.epoch;
      log(`promoted: primary at epoch ${c.epoch}`);
      this.lastReport = { key: '', at: 0 };
      return true;
    }
    const to = c.primary ?? NOWHERE;
    if (master && c.failover === true && c.primary !== undefined) {
      // Switchover: hand over without losing writes (redis pauses writers until the target has caught up).
      try {
        await conn.command(['FAILOVER', 'TO', to.address, to.port, 'TIMEOUT', 5000]);
        for (let i = 0; i < 70; i++) {
          const r = parseInfo(String(await conn.command(['INFO', 'replication'], 1000)));
          if (r.get('role') === 'slave') break;
          await sleep(100);
        }
      } catch (err) {
        log(`FAILOVER TO ${to.address}:${to.port}: ${err instanceof Error ? err.message : String(err)}; demoting with REPLICAOF`);
      }
    }
    const now = parseInfo(String(await conn.command(['INFO', 'replication'], 1000)));
    if (now.get('role') === 'master' || now.get('master_host') !== to.address || now.get('master_port') !== String(to.port)) {
      await conn.command(['REPLICAOF', to.address, to.port]);
      log(`replica of ${to === NOWHERE ? 'nobody' : `${to.address}:${to.port}`} (epoch ${c.epoch})`);
    }
    this.appliedEpoch = c.epoch;
    this.lastReport = { key: '', at: 0 };
    return true;
  }

  private stop(signal: NodeJS.Signals): void {
    if (this.stopping) return;
    this.stopping = true;
    this.events.abort();
    const child = this.child;
    if (child === undefined) {
      this.finish();
      return;
    }
    log(`${signal}: stopping redis`);
    child.kill('SIGTERM');
    // A replica busy right after a full sync may ignore SIGTERM: resend, then SIGKILL (FACTS: Redis).
    setTimeout(() => child.kill('SIGTERM'), 3000).unref();
    setTimeout(() => child.kill('SIGKILL'), 6000).unref();
  }

  private finish(): void {
    try {
      rmSync(this.dir, { recursive: true, force: true });
    } catch {
      // best effort
    }
    process.exit(0);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function main(): Promise<void> {
  const api = InstanceClient.fromEnv();
  const self = await selfWithRetry(api, 50);
  const port = self.ports.redis;
  if (port === undefined) throw new Error(`the service has no port named "redis" (ports: ${Object.keys(self.ports).join(', ') || 'none'})`);
  await new Member(api, self, port).run();
}

main().catch((err: unknown) => {
  log(`fatal: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
