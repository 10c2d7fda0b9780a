/**
 * The PostgreSQL backplane's member: the task of each instance. It runs postgres as its child (as the `postgres`
 * user), with the role its config says, applies config changes (promote, re-point, step down, synchronous standby
 * names) and reports {role, epoch, runId, offset (LSN), link, ...} through the instance API (react.ts reads them).
 *
 * Its one rule (design rule 1): postgres is never started writable. A member starts a standby, or nothing; it makes
 * postgres writable only when its config says `role: primary` with an epoch it has not applied in this life and the
 * run id it reports now. The run id is `<member start>-<generation>`, and the generation moves on every exit of
 * postgres and every start of a standby: a primary whose postgres died, or whose member restarted, never becomes
 * writable again on the strength of an old promotion — react must choose it again, at a new epoch, knowing it was down.
 *
 * Layout on the host: <PG_ROOT>/<alloc id>/{data, backplane.json, heartbeat, socket}; <PG_ROOT>/.template-15-v2 is an
 * initdb'ed directory copied for each first primary (initdb once: ~2 s, a copy ~0.1 s).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants as fsConstants, existsSync, readFileSync } from 'node:fs';
import { chmod, chown, cp, lutimes, mkdir, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InstanceClient, type InstanceEvent, type SelfInfo } from '../../api/instance-client.js';
import { PgConn, pgQueryOnce, sqlString, type PgConnectOptions } from './pgwire.js';
import type { PgConfig, PgMemberState, PgStandbyReport, PgTarget } from './react.js';
import { selfWithRetry } from '../kit.js';

const BIN = process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin';
const ROOT = process.env.PG_ROOT ?? (process.cwd() === '/' ? '/var/lib/backplane/postgres' : process.cwd());
const MEMORY = Number(process.env.PG_MEMORY ?? String(128 * 1024 * 1024));
/** How long a standby may fail to stream from a reachable primary before it rewinds (a diverged timeline). */
const STREAM_GRACE_MS = 10_000;

function log(msg: string): void {
  process.stderr.write(`[pg-member ${new Date().toISOString()}] ${msg}\n`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function postgresIds(): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('postgres:'));
  const f = line?.split(':');
  if (f === undefined || f.length < 4) throw new Error('there is no postgres user on this host (Debian: apt-get install postgresql)');
  return { uid: Number(f[2]), gid: Number(f[3]) };
}

interface Persisted {
  /** The data directory was a primary's since it was last seeded or rewound: it must rewind before following anyone. */
  wasPrimary: boolean;
}

function parseConfig(c: Readonly<Record<string, unknown>> | null | undefined): PgConfig | undefined {
  if (c === null || c === undefined || typeof c.epoch !== 'number' || (c.role !== 'primary' && c.role !== 'replica')) return undefined;
  return c as unknown as PgConfig;
}

function sameTarget(a: PgTarget | undefined, b: PgTarget | undefined): boolean {
  return a !== undefined && b !== undefined && a.allocId === b.allocId && a.address === b.address && a.port === b.port;
}

function conninfo(t: PgTarget, name?: string): string {
  return `host=${t.address} port=${t.port} user=postgres dbname=postgres connect_timeout=2${name === undefined ? '' : ` application_name=${name}`}`;
}

function quoteIdent(s: string): string {
  return `"${s.replace(/"/g, '""')}"`;
}

function syncValue(names: readonly string[] | undefined): string {
  return names === undefined || names.length === 0 ? '' : `FIRST 1 (${names.map(quoteIdent).join(', ')})`;
}

function confValue(v: string | number | boolean): string {
  if (typeof v === 'boolean') return v ? 'on' : 'off';
  if (typeof v === 'number') return String(v);
  return sqlString(v);
}

class Member {
  private readonly dir: string;
  private readonly data: string;
  private readonly ids = postgresIds();
  private readonly boot = randomBytes(4).toString('hex');
  private gen = 0;
  private config: PgConfig | undefined;
  private appliedEpoch = 0;
  private pg: ChildProcess | undefined;
  private pgUp = false;
  private following: PgTarget | undefined;
  private followSince = 0;
  private syncApplied: string | undefined;
  private persisted: Persisted = { wasPrimary: false };
  private stopping = false;
  private phase = 'starting';
  private last: PgMemberState = { role: 'starting', epoch: 0 };
  private lastStandbys: PgStandbyReport[] = [];
  private lastOffset: number | undefined;
  private lastSent: { role: string; link?: string; runId?: string } | undefined;
  private local: PgConn | undefined;
  private wakeUp: (() => void) | undefined;
  private woken = false;
  private reporting: Promise<void> = Promise.resolve();
  private pending = false;
  private reportError = '';
  private lastSentAt = 0;
  private readonly abort = new AbortController();
  private child: ChildProcess | undefined;

  constructor(
    private readonly api: InstanceClient,
    private readonly self: SelfInfo,
  ) {
    this.dir = join(ROOT, self.allocId);
    this.data = join(this.dir, 'data');
    this.config = parseConfig(self.config);
  }

  get runId(): string {
    return `${this.boot}-${this.gen}`;
  }

  private get port(): number {
    const p = this.self.ports.pg;
    if (p === undefined) throw new Error('the instance has no port "pg"');
    return p;
  }

  private get name(): string {
    return this.config?.name ?? this.self.allocId.replace(/[^a-z0-9_]/g, '_');
  }

  private get hasData(): boolean {
    return existsSync(join(this.data, 'PG_VERSION'));
  }

  async run(): Promise<void> {
    await mkdir(ROOT, { recursive: true, mode: 0o755 });
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await chown(this.dir, this.ids.uid, this.ids.gid);
    await this.beat();
    const hb = setInterval(() => void this.beat(), 500);
    try {
      this.persisted = JSON.parse(await readFile(join(this.dir, 'backplane.json'), 'utf8')) as Persisted;
    } catch {
      this.persisted = { wasPrimary: false };
    }
    await this.killOrphan();
    void this.api
      .events((e) => this.onEvent(e), this.abort.signal, { onError: (err) => log(`events: ${err.message}`) })
      .catch((err: unknown) => {
        log(`events stopped: ${err instanceof Error ? err.message : String(err)}`);
      });
    // Observed every 100 ms (a standby's lost link is reported at once: react waits for it); sent every 500 ms otherwise.
    const rep = setInterval(() => this.report(false), 100);
    this.report(true);
    while (!this.stopping) {
      try {
        await this.step();
      } catch (err) {
        log(`step: ${err instanceof Error ? err.message : String(err)}`);
        this.phase = `error: ${err instanceof Error ? err.message : String(err)}`.slice(0, 150);
        await sleep(500);
      }
      await this.idle(500);
    }
    clearInterval(rep);
    clearInterval(hb);
  }

  private onEvent(e: InstanceEvent): void {
    if (e.type === 'hello') this.config = parseConfig(e.data.config) ?? this.config;
    else if (e.type === 'config') this.config = parseConfig(e.data) ?? this.config;
    else return;
    this.wake();
  }

  private wake(): void {
    this.woken = true;
    this.wakeUp?.();
  }

  private idle(ms: number): Promise<void> {
    if (this.woken) {
      this.woken = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(t);
        this.wakeUp = undefined;
        this.woken = false;
        resolve();
      };
      const t = setTimeout(done, ms);
      this.wakeUp = done;
    });
  }

  private async beat(): Promise<void> {
    const f = join(this.dir, 'heartbeat');
    const now = new Date();
    try {
      // lutimes: the postgres user owns this directory and could put a symlink here; never follow it as root.
      await lutimes(f, now, now);
    } catch {
      await writeNoFollow(f, '').catch(() => undefined);
    }
  }

  private async persist(p: Persisted): Promise<void> {
    this.persisted = p;
    const tmp = join(this.dir, 'backplane.json.tmp');
    await writeNoFollow(tmp, JSON.stringify(p));
    await rename(tmp, join(this.dir, 'backplane.json'));
  }

  /** A postgres left running by a previous member process of this instance (the member was killed): stop it first. */
  private async killOrphan(): Promise<void> {
    let pid: number;
    try {
      pid = Number((await readFile(join(this.data, 'postmaster.pid'), 'utf8')).split('\n')[0]);
    } catch {
      return;
    }
    if (!Number.isInteger(pid) || pid <= 1) return;
    const alive = (): boolean => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('postgres');
      } catch {
        return false;
      }
    };
    if (!alive()) return;
    log(`a postgres (pid ${pid}) of a previous member is still running: immediate shutdown`);
    try {
      process.kill(pid, 'SIGQUIT');
    } catch {
      return;
    }
    for (let i = 0; i < 100 && alive(); i++) await sleep(50);
    if (alive()) process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 100 && alive(); i++) await sleep(50);
  }

  // ----------------------------------------------------------------------------------------------------------------
  // Child processes

  private runAs(bin: string, args: string[], timeoutMs = 600_000): Promise<{ code: number; out: string }> {
    return new Promise((resolve) => {
      const child = spawn(join(BIN, bin), args, {
        uid: this.ids.uid,
        gid: this.ids.gid,
        cwd: this.dir,
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: this.dir, LC_ALL: 'C', PGCONNECT_TIMEOUT: '3' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      this.child = child;
      let out = '';
      const add = (d: Buffer): void => {
        out = (out + d.toString()).slice(-4000);
      };
      child.stdout.on('data', add);
      child.stderr.on('data', add);
      const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      child.on('error', (e) => {
        clearTimeout(t);
        resolve({ code: -1, out: e.message });
      });
      child.on('close', (code) => {
        clearTimeout(t);
        this.child = undefined;
        resolve({ code: code ?? -1, out });
      });
    });
  }

  /** A file in a directory the postgres user owns: opened without following a symlink there, chowned by handle. */
  private async writeOwned(path: string, text: string): Promise<void> {
    await writeNoFollow(path, text, { uid: this.ids.uid, gid: this.ids.gid });
  }

  /** initdb once per host (into a template), then a copy per first primary. */
  private async initData(): Promise<void> {
    // Versioned: a template made by an older member (other pg_hba.conf) is not reused.
    const template = join(ROOT, '.template-15-v2');
    if (!existsSync(join(template, 'PG_VERSION'))) {
      const tmp = join(ROOT, `.template-15-v2.tmp-${process.pid}-${this.boot}`);
      await rm(tmp, { recursive: true, force: true });
      await mkdir(tmp, { mode: 0o700 });
      await chown(tmp, this.ids.uid, this.ids.gid);
      this.phase = 'initdb';
      const r = await this.runAs('initdb', ['-D', tmp, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--no-locale', '--no-instructions']);
      if (r.code !== 0) throw new Error(`initdb failed: ${r.out.trim().split('\n').slice(-3).join(' / ')}`);
      await writeFile(join(tmp, 'postgresql.conf'), `${await readFile(join(tmp, 'postgresql.conf'), 'utf8')}\n# Backplane: the member writes its settings here before every start.\ninclude_if_exists = 'backplane.conf'\n`);
      await writeFile(
        join(tmp, 'pg_hba.conf'),
        `${await readFile(join(tmp, 'pg_hba.conf'), 'utf8')}\n# Backplane: members and clients on this host's own subnets only (no passwords yet: docs/backplanes/postgres.md)\nhost all all samenet trust\nhost replication all samenet trust\n`,
      );
      try {
        await rename(tmp, template);
      } catch {
        await rm(tmp, { recursive: true, force: true }); // another member on this host made it first
      }
    }
    await rm(this.data, { recursive: true, force: true });
    await cp(template, this.data, { recursive: true, preserveTimestamps: true });
    await this.chownTree(this.data);
    await chmod(this.data, 0o700);
  }

  private async chownTree(path: string): Promise<void> {
    const r = await new Promise<number>((resolve) => {
      const c = spawn('chown', ['-R', `${this.ids.uid}:${this.ids.gid}`, path], { stdio: 'ignore' });
      c.on('close', (code) => resolve(code ?? -1));
      c.on('error', () => resolve(-1));
    });
    if (r !== 0) throw new Error(`chown -R ${path} failed`);
  }

  private async basebackup(from: PgTarget): Promise<void> {
    const tmp = join(this.dir, 'data.new');
    await rm(tmp, { recursive: true, force: true });
    this.phase = `pg_basebackup from ${from.allocId}`;
    log(this.phase);
    const r = await this.runAs('pg_basebackup', ['-h', from.address, '-p', String(from.port), '-U', 'postgres', '-D', tmp, '-X', 'stream', '-c', 'fast']);
    if (r.code !== 0) {
      await rm(tmp, { recursive: true, force: true });
      throw new Error(`pg_basebackup from ${from.allocId} failed: ${r.out.trim().split('\n').slice(-2).join(' / ')}`);
    }
    await rm(this.data, { recursive: true, force: true });
    await rename(tmp, this.data);
    await this.persist({ wasPrimary: false });
  }

  /** A former primary (or a standby that diverged) rejoins `to`: pg_rewind after a CHECKPOINT there, else a fresh base backup. */
  private async rejoin(to: PgTarget): Promise<boolean> {
    // Rewind against the new primary only once it is one (its timeline is final).
    this.phase = `waiting for ${to.allocId} to be primary before rewinding`;
    for (;;) {
      if (this.stopping) return false;
      const c = this.config;
      if (c?.role !== 'replica' || !sameTarget(c.primary, to)) return false;
      try {
        const r = await pgQueryOnce(this.target(to), 'SELECT pg_is_in_recovery()');
        if (r.rows[0]?.[0] === 'f') break;
      } catch {
        // not up yet
      }
      await this.idle(200);
    }
    try {
      await pgQueryOnce(this.target(to), 'CHECKPOINT');
    } catch (err) {
      log(`CHECKPOINT on ${to.allocId}: ${err instanceof Error ? err.message : String(err)}`);
      return false;
    }
    this.phase = `pg_rewind from ${to.allocId}`;
    log(this.phase);
    const r = await this.runAs('pg_rewind', ['-D', this.data, `--source-server=${conninfo(to)}`]);
    if (r.code === 0) {
      log(`pg_rewind: ${r.out.trim().split('\n').slice(-1).join('')}`);
      await this.persist({ wasPrimary: false });
      return true;
    }
    log(`pg_rewind failed (${r.out.trim().split('\n').slice(-2).join(' / ')}): a fresh base backup`);
    await this.basebackup(to);
    return true;
  }

  /** Writes what postgres reads at start: backplane.conf, postgresql.auto.conf and standby.signal. */
  private async writeConf(c: PgConfig, standby: boolean): Promise<void> {
    const settings: Record<string, string | number | boolean> = {
      port: this.port,
      listen_addresses: '*',
      unix_socket_directories: this.dir,
      cluster_name: c.name,
      wal_level: 'replica',
      hot_standby: true,
      hot_standby_feedback: true,
      wal_log_hints: true,
      wal_keep_size: '128MB',
      wal_retrieve_retry_interval: '200ms',
      wal_receiver_status_interval: '1s',
      max_wal_senders: 10,
      max_replication_slots: 10,
      recovery_target_timeline: 'latest',
      shared_buffers: `${Math.max(16, Math.floor(MEMORY / 4 / 1024 / 1024))}MB`,
      max_connections: 50,
      logging_collector: false,
      log_line_prefix: '%m [%p] ',
      ...(JSON.parse(process.env.PG_SETTINGS ?? '{}') as Record<string, string | number | boolean>),
    };
    await this.writeOwned(join(this.data, 'backplane.conf'), `# Written by the Backplane member before each start.\n${Object.entries(settings).map(([k, v]) => `${k} = ${confValue(v)}`).join('\n')}\n`);
    const auto = ['# Do not edit this file manually!', '# It will be overwritten by the ALTER SYSTEM command.'];
    if (standby && c.primary !== undefined) auto.push(`primary_conninfo = ${sqlString(conninfo(c.primary, c.name))}`);
    if (!standby && c.sync !== undefined && c.sync.length > 0) auto.push(`synchronous_standby_names = ${sqlString(syncValue(c.sync))}`);
    await this.writeOwned(join(this.data, 'postgresql.auto.conf'), `${auto.join('\n')}\n`);
    const signal = join(this.data, 'standby.signal');
    if (standby) await this.writeOwned(signal, '');
    else await rm(signal, { force: true });
    await rm(join(this.data, 'recovery.signal'), { force: true });
    this.following = standby ? c.primary : undefined;
    this.followSince = Date.now();
    this.syncApplied = standby ? undefined : syncValue(c.sync);
  }

  /** Starts postgres and waits until it accepts connections. `applying`: for a promotion (the run id stays). */
  private async startPg(applying: boolean): Promise<boolean> {
    if (!applying) this.gen += 1;
    this.phase = 'starting postgres';
    const child = spawn(join(BIN, 'postgres'), ['-D', this.data], {
      uid: this.ids.uid,
      gid: this.ids.gid,
      cwd: this.dir,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: this.dir, LC_ALL: 'C' },
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    this.pg = child;
    child.on('error', (e) => log(`postgres: ${e.message}`));
    child.on('exit', (code, signal) => {
      if (this.pg !== child) return;
      this.pg = undefined;
      this.pgUp = false;
      this.gen += 1;
      this.following = undefined;
      this.local?.close();
      this.local = undefined;
      log(`postgres exited (${signal ?? `code ${code ?? '?'}`})`);
      this.last = { ...this.last, role: 'down', runId: this.runId };
      this.report(true);
      this.wake();
    });
    for (let i = 0; i < 1200; i++) {
      if (this.pg !== child) return false;
      try {
        await pgQueryOnce(this.localOpts(), 'SELECT 1');
        this.pgUp = true;
        this.followSince = Date.now(); // the grace to start streaming counts from here
        return true;
      } catch {
        await sleep(50);
      }
    }
    return false;
  }

  private async stopPg(signal: NodeJS.Signals, why: string): Promise<void> {
    const child = this.pg;
    if (child === undefined) return;
    log(`stopping postgres (${signal}): ${why}`);
    const gone = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill(signal);
    const t = setTimeout(() => child.kill('SIGQUIT'), 12_000);
    await gone;
    clearTimeout(t);
  }

  private localOpts(): PgConnectOptions {
    return { host: '127.0.0.1', port: this.port, connectTimeoutMs: 1000 };
  }

  private target(t: PgTarget): PgConnectOptions {
    return { host: t.address, port: t.port, connectTimeoutMs: 1000 };
  }

  private async q(sql: string): Promise<(string | null)[][]> {
    if (this.local === undefined || this.local.closed) this.local = await PgConn.connect(this.localOpts());
    const conn = this.local;
    let timer: NodeJS.Timeout | undefined;
    try {
      const r = await Promise.race([
        conn.query(sql),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            conn.close();
            reject(new Error(`query timed out: ${sql.slice(0, 60)}`));
          }, 3000);
        }),
      ]);
      return r.rows.map((row) => [...row]);
    } finally {
      clearTimeout(timer);
    }
  }

  // ----------------------------------------------------------------------------------------------------------------
  // The reconciling step: one action towards what the config says.

  private async step(): Promise<void> {
    const c = this.config;
    if (c === undefined) {
      this.phase = 'waiting for a config from the backplane';
      return;
    }
    if (this.pg !== undefined) {
      if (!this.pgUp) {
        // Still starting (a standby replays until consistent, which may take longer than startPg waited): probe.
        try {
          await pgQueryOnce(this.localOpts(), 'SELECT 1');
          this.pgUp = true;
          this.followSince = Date.now();
        } catch {
          return;
        }
      }
      const inRecovery = (await this.q('SELECT pg_is_in_recovery()'))[0]?.[0] === 't';
      if (c.role === 'primary') {
        if (inRecovery) {
          if (c.runId === this.runId && c.epoch > this.appliedEpoch) await this.promote(c);
          else this.phase = `standby; told primary at epoch ${c.epoch} for another run (${c.runId ?? '?'}, mine ${this.runId}): waiting for a new epoch`;
          return;
        }
        await this.applySync(c);
        return;
      }
      // role replica
      if (!inRecovery) {
        await this.persist({ wasPrimary: true });
        await this.stopPg('SIGINT', `told to be a standby of ${c.primary?.allocId ?? 'nobody yet'} at epoch ${c.epoch}: stepping down`);
        return;
      }
      if (c.primary === undefined) return;
      if (!sameTarget(this.following, c.primary)) {
        this.phase = `re-pointing to ${c.primary.allocId}`;
        log(this.phase);
        await this.q(`ALTER SYSTEM SET primary_conninfo = ${sqlString(conninfo(c.primary, c.name))}`);
        await this.q('SELECT pg_reload_conf()');
        this.following = c.primary;
        this.followSince = Date.now();
        this.report(true);
        return;
      }
      if (this.last.link !== 'up' && Date.now() - this.followSince > STREAM_GRACE_MS) {
        // Not streaming from a reachable primary: its timeline forked before our WAL ends. Rewind.
        let isPrimary = false;
        try {
          isPrimary = (await pgQueryOnce(this.target(c.primary), 'SELECT pg_is_in_recovery()')).rows[0]?.[0] === 'f';
        } catch {
          isPrimary = false;
        }
        if (isPrimary) {
          await this.persist({ wasPrimary: true });
          await this.stopPg('SIGINT', `not streaming from ${c.primary.allocId} after ${STREAM_GRACE_MS} ms: rewinding`);
        } else this.followSince = Date.now();
      }
      return;
    }

    // postgres is not running.
    if (c.role === 'primary') {
      if (c.runId !== this.runId || c.epoch <= this.appliedEpoch) {
        this.phase = `down; told primary at epoch ${c.epoch} for another run (${c.runId ?? '?'}, mine ${this.runId}): waiting for a new epoch`;
        return;
      }
      this.appliedEpoch = c.epoch;
      log(`becoming primary at epoch ${c.epoch}`);
      if (!this.hasData) await this.initData();
      const wasStandby = existsSync(join(this.data, 'standby.signal'));
      if (wasStandby) {
        // Start it a standby of nobody (it replays its WAL), then promote: a new timeline.
        await this.writeConf({ ...c, role: 'replica' }, true);
        if (!(await this.startPg(true))) return;
        await this.promote(c, true);
      } else {
        await this.persist({ wasPrimary: true });
        await this.writeConf(c, false);
        if (await this.startPg(true)) this.report(true);
      }
      return;
    }
    if (c.primary === undefined) {
      this.phase = 'waiting for a primary to follow';
      return;
    }
    if (!this.hasData) {
      await this.basebackup(c.primary);
    } else if (this.persisted.wasPrimary) {
      if (!(await this.rejoin(c.primary))) return;
    }
    const now = this.config;
    if (now?.role !== 'replica' || !sameTarget(now.primary, c.primary)) return;
    await this.writeConf(c, true);
    await this.startPg(false);
    this.report(true);
  }

  private async promote(c: PgConfig, alreadyApplied = false): Promise<void> {
    if (!alreadyApplied && c.epoch <= this.appliedEpoch) return;
    this.appliedEpoch = c.epoch;
    this.phase = `promoting at epoch ${c.epoch}`;
    log(this.phase);
    await this.persist({ wasPrimary: true });
    // The synchronous standbys first, so that the first commit it accepts already waits for one.
    const sync = syncValue(c.sync);
    await this.q(sync === '' ? 'ALTER SYSTEM RESET synchronous_standby_names' : `ALTER SYSTEM SET synchronous_standby_names = ${sqlString(sync)}`);
    await this.q('SELECT pg_reload_conf()');
    this.syncApplied = sync;
    await this.q('SELECT pg_promote(wait => false)');
    for (let i = 0; i < 3000; i++) {
      if (this.pg === undefined) return;
      if ((await this.q('SELECT pg_is_in_recovery()'))[0]?.[0] === 'f') break;
      await sleep(10);
    }
    this.following = undefined;
    log(`primary at epoch ${c.epoch}`);
    this.report(true);
  }

  private async applySync(c: PgConfig): Promise<void> {
    const want = syncValue(c.sync);
    if (want === this.syncApplied) return;
    await this.q(want === '' ? 'ALTER SYSTEM RESET synchronous_standby_names' : `ALTER SYSTEM SET synchronous_standby_names = ${sqlString(want)}`);
    await this.q('SELECT pg_reload_conf()');
    this.syncApplied = want;
    log(`synchronous_standby_names = '${want}'`);
  }

  // ----------------------------------------------------------------------------------------------------------------
  // Reports

  private async observe(): Promise<PgMemberState> {
    const base = { epoch: this.config?.role === 'primary' ? this.appliedEpoch : (this.config?.epoch ?? 0), runId: this.runId, hasData: this.hasData };
    if (this.pg === undefined || !this.pgUp) {
      return { ...base, role: this.pg !== undefined ? 'starting' : this.hasData ? 'down' : 'starting', ...(this.lastOffset === undefined ? {} : { offset: this.lastOffset }) };
    }
    const rows = await this.q(
      `SELECT pg_is_in_recovery(),
        CASE WHEN pg_is_in_recovery() THEN pg_wal_lsn_diff(coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), '0/0')
             ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') END,
        CASE WHEN pg_is_in_recovery() THEN (SELECT received_tli FROM pg_stat_wal_receiver)
             ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
        (SELECT status || ' ' || coalesce(sender_host, '') || ' ' || coalesce(sender_port::text, '') FROM pg_stat_wal_receiver)`,
    );
    const [rec, lsn, tli, recv] = rows[0] ?? [];
    const offset = lsn === null || lsn === undefined ? undefined : Math.floor(Number(lsn));
    if (offset !== undefined) this.lastOffset = offset;
    const timeline = tli === null || tli === undefined ? undefined : Number(tli);
    if (rec === 'f') {
      const sb = await this.q(`SELECT application_name, state, sync_state, pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(flush_lsn, '0/0')) FROM pg_stat_replication`);
      this.lastStandbys = sb.map((r) => ({ name: r[0] ?? '', state: r[1] ?? '', sync: r[2] ?? '', lagBytes: Math.max(0, Math.floor(Number(r[3] ?? 0))) }));
      return { ...base, role: 'primary', ...(offset === undefined ? {} : { offset }), ...(timeline === undefined ? {} : { timeline }), standbys: this.lastStandbys };
    }
    const [status, host, port] = (recv ?? '').split(' ');
    const f = this.following;
    const link = status === 'streaming' && f !== undefined && host === f.address && Number(port) === f.port ? 'up' : 'down';
    return {
      ...base,
      role: 'replica',
      ...(offset === undefined ? {} : { offset }),
      ...(timeline === undefined || Number.isNaN(timeline) ? {} : { timeline }),
      link,
      ...(f === undefined ? {} : { following: f.allocId }),
    };
  }

  private message(s: PgMemberState): string {
    switch (s.role) {
      case 'primary':
        return `primary at epoch ${s.epoch} (timeline ${s.timeline ?? '?'}), LSN ${s.offset ?? '?'}, ${s.standbys?.length ?? 0} standby(s)`;
      case 'replica':
        return `standby of ${s.following ?? 'nobody'} (${s.link === 'up' ? 'streaming' : 'not streaming'}), LSN ${s.offset ?? '?'}`;
      default:
        return `${s.role}: ${this.phase}`;
    }
  }

  /** Reports the state (urgent: written at once; also when the role, link or run changed). Serialized. */
  report(urgent: boolean): void {
    if (!urgent && this.pending) return;
    this.pending = true;
    this.reporting = this.reporting.then(async () => {
      this.pending = false;
      if (this.stopping && this.pg === undefined && this.last.role === 'down') urgent = true;
      let s: PgMemberState;
      try {
        s = await this.observe();
      } catch (err) {
        s = { ...this.last, role: this.pg === undefined ? 'down' : 'starting', runId: this.runId };
        this.phase = `cannot query postgres: ${err instanceof Error ? err.message : String(err)}`.slice(0, 150);
      }
      this.last = s;
      const changed = this.lastSent === undefined || this.lastSent.role !== s.role || this.lastSent.link !== s.link || this.lastSent.runId !== s.runId;
      const ready = s.role === 'primary' || (s.role === 'replica' && s.link === 'up');
      if (!urgent && !changed && Date.now() - this.lastSentAt < 500) return;
      this.lastSentAt = Date.now();
      try {
        // One line for humans: tool output (pg_basebackup's "\tIs the server running...") must not make the API refuse the report.
        const message = [...this.message(s)].map((ch) => (ch.charCodeAt(0) < 32 || ch.charCodeAt(0) === 127 ? ' ' : ch)).join('').slice(0, 200);
        await this.api.report({ ready, state: s as unknown as Record<string, unknown>, message, urgent: urgent || changed });
        this.reportError = '';
        this.lastSent = { role: s.role, ...(s.link === undefined ? {} : { link: s.link }), ...(s.runId === undefined ? {} : { runId: s.runId }) };
      } catch (err) {
        const why = err instanceof Error ? err.message : String(err);
        if (why !== this.reportError) log(`report: ${why}`);
        this.reportError = why;
      }
      if (changed && s.role === 'replica' && s.link === 'up') this.wake();
    });
  }

  async shutdown(signal: string): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    log(`${signal}: fast shutdown`);
    this.wake();
    this.child?.kill('SIGTERM');
    await this.stopPg('SIGINT', signal);
    this.report(true);
    await this.reporting;
    this.abort.abort();
  }
}

async function main(): Promise<void> {
  const api = InstanceClient.fromEnv();
  const self = await selfWithRetry(api, 100);
  const member = new Member(api, self);
  let exiting = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (exiting) return;
    exiting = true;
    void member.shutdown(sig).finally(() => process.exit(0));
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  await member.run();
}

main().catch((err: unknown) => {
  log(`fatal: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  process.exit(1);
});

/**
 * Writes `text` to `path` as root without following a symlink at `path` (O_NOFOLLOW; an existing one is an error),
 * truncating what is there, and optionally hands the file to `owner` through the open handle, so nothing the postgres
 * user plants in its own directories can redirect a root write or chown.
 */
async function writeNoFollow(path: string, text: string, owner?: { uid: number; gid: number }): Promise<void> {
  const fh = await open(path, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_TRUNC | fsConstants.O_NOFOLLOW, 0o600);
  try {
    await fh.writeFile(text);
    if (owner !== undefined) await fh.chown(owner.uid, owner.gid);
  } finally {
    await fh.close();
  }
}
