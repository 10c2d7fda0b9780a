/**
 * A PostgreSQL object on a real cluster, for the end-to-end test (postgres-etcd.test.ts) and the failover bench
 * (bench/failover-postgres.ts): a client that commits in a loop through the discovery entry `<name>.primary` (the
 * agents' own Discovery over the store, as in the Redis helper), a sampler of every member's writability, and a
 * kill -9 of a member's postmaster.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Discovery } from '../../../src/agent/discovery.js';
import { PgConn } from '../../../src/backplanes/postgres/pgwire.js';

export interface Target {
  readonly id: string;
  readonly address: string;
  readonly port: number;
}

export function pgPrimaryOf(d: Discovery, name: string): Target | undefined {
  const p = d.current()[`${name}.primary`]?.[0];
  const port = p?.ports['pg'];
  return p === undefined || port === undefined ? undefined : { id: p.id, address: p.address, port };
}

/**
 * Commits `INSERT INTO <table> VALUES (n)` one at a time (autocommit) to whatever `<name>.primary` names, reconnecting
 * when it changes or a commit fails. Only a commit the server answered is counted as acknowledged.
 */
export class Committer {
  readonly acked: { at: number; n: number; to: string }[] = [];
  failures = 0;
  private running = true;
  private readonly loop: Promise<void>;

  constructor(
    private readonly d: Discovery,
    private readonly name: string,
    private readonly table: string,
    private n: number,
  ) {
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    let conn: PgConn | undefined;
    let connTo = '';
    while (this.running) {
      const t = pgPrimaryOf(this.d, this.name);
      const key = t === undefined ? '' : `${t.id} ${t.address}:${t.port}`;
      if (key !== connTo) {
        conn?.close();
        conn = undefined;
        connTo = key;
      }
      if (t === undefined) {
        await sleep(5);
        continue;
      }
      try {
        if (conn === undefined || conn.closed) conn = await PgConn.connect({ host: t.address, port: t.port, connectTimeoutMs: 500 });
        const n = this.n++;
        await conn.query(`INSERT INTO ${this.table} VALUES (${n})`);
        this.acked.push({ at: Date.now(), n, to: t.id });
      } catch {
        this.failures++;
        conn?.close();
        conn = undefined;
        await sleep(10);
      }
    }
    conn?.close();
  }

  get next(): number {
    return this.n;
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }
}

/** Asks every member `SELECT pg_is_in_recovery()` every ~20 ms; a sample with two writable members is split brain. */
export class WritableSampler {
  samples = 0;
  readonly violations: string[] = [];
  private running = true;
  private readonly loop: Promise<void>;
  private readonly conns = new Map<string, PgConn | undefined>();

  constructor(private readonly members: () => readonly Target[]) {
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    while (this.running) {
      const ms = this.members();
      const w = await Promise.all(
        ms.map(async (m) => {
          try {
            let c = this.conns.get(m.id);
            if (c === undefined || c.closed) {
              c = await PgConn.connect({ host: m.address, port: m.port, connectTimeoutMs: 200 });
              this.conns.set(m.id, c);
            }
            return (await c.value('SELECT pg_is_in_recovery()')) === 'f' ? m.id : undefined;
          } catch {
            this.conns.set(m.id, undefined);
            return undefined;
          }
        }),
      );
      this.samples++;
      const writable = w.filter((x) => x !== undefined);
      if (writable.length > 1) this.violations.push(`${new Date().toISOString()}: ${writable.join(' and ')} are both writable`);
      await sleep(20);
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
    for (const c of this.conns.values()) c?.close();
  }
}

export function postmasterPid(dataDir: string, allocId: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(dataDir, allocId, 'data', 'postmaster.pid'), 'utf8').split('\n')[0]);
    return Number.isInteger(pid) && pid > 1 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** kill -9 of a member's postmaster; resolves with the time of the kill. */
export function killPostmaster(dataDir: string, allocId: string): number {
  const pid = postmasterPid(dataDir, allocId);
  if (pid === undefined) throw new Error(`no postmaster.pid for ${allocId}`);
  const at = Date.now();
  process.kill(pid, 'SIGKILL');
  return at;
}

/** The acknowledged commits missing from `table` on the server at `t`. */
export async function missing(t: Target, table: string, acked: readonly { n: number }[]): Promise<number[]> {
  const c = await PgConn.connect({ host: t.address, port: t.port });
  try {
    const have = new Set((await c.query(`SELECT i FROM ${table}`)).rows.map((r) => Number(r[0])));
    return acked.filter((a) => !have.has(a.n)).map((a) => a.n);
  } finally {
    c.close();
  }
}
