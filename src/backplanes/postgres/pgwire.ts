/**
 * A minimal PostgreSQL client (frontend/backend protocol 3.0, simple queries, trust authentication only): what the
 * member needs to ask its own server and its primary a few questions every half second without spawning `psql`
 * each time, and what the tests use to commit in a loop and sample writability every few ms. Not a general driver:
 * no TLS, no passwords, no extended protocol; values come back as text (or null).
 */
import net from 'node:net';

export interface PgConnectOptions {
  readonly host: string;
  readonly port: number;
  readonly user?: string;
  readonly database?: string;
  readonly applicationName?: string;
  /** Gives up connecting after this many ms (default 2000). */
  readonly connectTimeoutMs?: number;
}

export interface PgResult {
  readonly rows: readonly (readonly (string | null)[])[];
  /** The command tag: "SELECT 1", "INSERT 0 1", "COMMIT". */
  readonly command: string;
}

export class PgError extends Error {
  constructor(
    message: string,
    /** The SQLSTATE ('57P01' admin shutdown, '25006' read-only transaction, ...); '' for a connection failure. */
    readonly code: string,
  ) {
    super(message);
    this.name = 'PgError';
  }
}

interface Pending {
  readonly resolve: (r: PgResult) => void;
  readonly reject: (e: Error) => void;
  rows: (string | null)[][];
  command: string;
  error?: PgError;
}

export class PgConn {
  private buf: Buffer = Buffer.alloc(0);
  private readonly queue: { sql: string; pending: Pending }[] = [];
  private current: Pending | undefined;
  private closedWith: Error | undefined;
  private ready: ((e?: Error) => void) | undefined;

  private constructor(private readonly socket: net.Socket) {}

  static connect(o: PgConnectOptions): Promise<PgConn> {
    return new Promise<PgConn>((resolve, reject) => {
      const socket = net.connect({ host: o.host, port: o.port });
      const conn = new PgConn(socket);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new PgError(`connecting to ${o.host}:${o.port} timed out`, ''));
      }, o.connectTimeoutMs ?? 2000);
      conn.ready = (e?: Error) => {
        clearTimeout(timer);
        conn.ready = undefined;
        if (e === undefined) resolve(conn);
        else {
          socket.destroy();
          reject(e);
        }
      };
      socket.setNoDelay(true);
      socket.on('connect', () => {
        const params: string[] = ['user', o.user ?? 'postgres', 'database', o.database ?? 'postgres'];
        if (o.applicationName !== undefined) params.push('application_name', o.applicationName);
        const body = Buffer.concat([...params.map((p) => Buffer.from(`${p}\0`)), Buffer.from([0])]);
        const head = Buffer.alloc(8);
        head.writeInt32BE(8 + body.length, 0);
        head.writeInt32BE(196608, 4);
        socket.write(Buffer.concat([head, body]));
      });
      socket.on('data', (d: Buffer) => conn.onData(d));
      socket.on('error', (e) => conn.fail(new PgError(e.message, '')));
      socket.on('close', () => conn.fail(new PgError('connection closed', '')));
    });
  }

  /** Runs one simple query (several statements allowed: the rows of all are concatenated). */
  query(sql: string): Promise<PgResult> {
    return new Promise<PgResult>((resolve, reject) => {
      if (this.closedWith !== undefined) {
        reject(this.closedWith);
        return;
      }
      this.queue.push({ sql, pending: { resolve, reject, rows: [], command: '' } });
      this.next();
    });
  }

  /** The first column of the first row, or undefined. */
  async value(sql: string): Promise<string | null | undefined> {
    const r = await this.query(sql);
    return r.rows[0]?.[0];
  }

  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  close(): void {
    if (this.closedWith !== undefined) return;
    const t = Buffer.alloc(5);
    t.write('X', 0);
    t.writeInt32BE(4, 1);
    this.socket.end(t);
    this.fail(new PgError('connection closed', ''));
  }

  private next(): void {
    if (this.current !== undefined || this.ready !== undefined) return;
    const item = this.queue.shift();
    if (item === undefined) return;
    this.current = item.pending;
    const sql = Buffer.from(`${item.sql}\0`);
    const head = Buffer.alloc(5);
    head.write('Q', 0);
    head.writeInt32BE(4 + sql.length, 1);
    this.socket.write(Buffer.concat([head, sql]));
  }

  private fail(e: Error): void {
    if (this.closedWith === undefined) this.closedWith = e;
    this.ready?.(e);
    this.current?.reject(e);
    this.current = undefined;
    for (const q of this.queue.splice(0)) q.pending.reject(e);
    this.socket.destroy();
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    while (this.buf.length >= 5) {
      const len = this.buf.readInt32BE(1);
      if (this.buf.length < 1 + len) return;
      const type = String.fromCharCode(this.buf[0] ?? 0);
      const body = this.buf.subarray(5, 1 + len);
      this.buf = this.buf.subarray(1 + len);
      this.onMessage(type, body);
    }
  }

  private onMessage(type: string, body: Buffer): void {
    switch (type) {
      case 'R': {
        const code = body.readInt32BE(0);
        if (code !== 0) this.fail(new PgError(`the server asks for authentication method ${code}; only trust is supported`, '28000'));
        return;
      }
      case 'E': {
        const err = parseError(body);
        if (this.ready !== undefined) this.fail(err);
        else if (this.current !== undefined) this.current.error = err;
        else this.fail(err); // e.g. FATAL at shutdown with nothing in flight
        return;
      }
      case 'T':
        return;
      case 'D': {
        if (this.current === undefined) return;
        const n = body.readInt16BE(0);
        const row: (string | null)[] = [];
        let at = 2;
        for (let i = 0; i < n; i++) {
          const l = body.readInt32BE(at);
          at += 4;
          if (l < 0) row.push(null);
          else {
            row.push(body.toString('utf8', at, at + l));
            at += l;
          }
        }
        this.current.rows.push(row);
        return;
      }
      case 'C':
        if (this.current !== undefined) this.current.command = body.toString('utf8', 0, Math.max(0, body.length - 1));
        return;
      case 'Z': {
        if (this.ready !== undefined) {
          this.ready();
          this.next();
          return;
        }
        const p = this.current;
        this.current = undefined;
        if (p !== undefined) {
          if (p.error !== undefined) p.reject(p.error);
          else p.resolve({ rows: p.rows, command: p.command });
        }
        this.next();
        return;
      }
      default:
        return; // S (parameter status), K (key data), N (notice), I (empty query), A (notification)
    }
  }
}

function parseError(body: Buffer): PgError {
  let message = '';
  let code = '';
  let severity = '';
  let at = 0;
  while (at < body.length && body[at] !== 0) {
    const field = String.fromCharCode(body[at] ?? 0);
    const end = body.indexOf(0, at + 1);
    const text = body.toString('utf8', at + 1, end < 0 ? body.length : end);
    if (field === 'M') message = text;
    else if (field === 'C') code = text;
    else if (field === 'S') severity = text;
    at = end < 0 ? body.length : end + 1;
  }
  return new PgError(severity !== '' ? `${severity}: ${message}` : message, code);
}

/** Connects, runs one query, closes. */
export async function pgQueryOnce(o: PgConnectOptions, sql: string): Promise<PgResult> {
  const c = await PgConn.connect(o);
  try {
    return await c.query(sql);
  } finally {
    c.close();
  }
}

/** 'X/Y' (hex) -> bytes as a number (exact below 2^53: 8 PiB of WAL). */
export function lsnToNumber(lsn: string | null | undefined): number | undefined {
  if (lsn === null || lsn === undefined) return undefined;
  const m = /^([0-9A-Fa-f]+)\/([0-9A-Fa-f]+)$/.exec(lsn);
  if (m === null) return undefined;
  return parseInt(m[1] ?? '0', 16) * 4294967296 + parseInt(m[2] ?? '0', 16);
}

/** A SQL string literal. */
export function sqlString(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}
