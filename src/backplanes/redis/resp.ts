/**
 * A tiny Redis client (RESP2 over one TCP connection): enough for the member to run INFO, REPLICAOF, FAILOVER, PING
 * and SHUTDOWN without spawning redis-cli every 200 ms, and without an npm dependency in the member's bundle.
 * Commands are pipelined in order; each has its own timeout (a timed-out command closes the connection, since its
 * reply would otherwise answer the next one).
 */
import { connect, type Socket } from 'node:net';

export type RespValue = string | number | null | RespValue[];

/** A `-ERR ...` reply. */
export class RespError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RespError';
  }
}

interface Pending {
  resolve(v: RespValue): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

/** Parses one value at `at`: [value, next offset], or undefined when the buffer does not hold all of it yet. */
export function parseResp(buf: Buffer, at: number): [RespValue | RespError, number] | undefined {
  if (at >= buf.length) return undefined;
  const eol = buf.indexOf('\r\n', at);
  if (eol < 0) return undefined;
  const type = String.fromCharCode(buf[at] ?? 0);
  const line = buf.toString('utf8', at + 1, eol);
  const next = eol + 2;
  switch (type) {
    case '+':
      return [line, next];
    case '-':
      return [new RespError(line), next];
    case ':':
      return [Number(line), next];
    case '$': {
      const n = Number(line);
      if (n < 0) return [null, next];
      if (buf.length < next + n + 2) return undefined;
      return [buf.toString('utf8', next, next + n), next + n + 2];
    }
    case '*': {
      const n = Number(line);
      if (n < 0) return [null, next];
      const out: RespValue[] = [];
      let pos = next;
      for (let i = 0; i < n; i++) {
        const r = parseResp(buf, pos);
        if (r === undefined) return undefined;
        const [v, p] = r;
        out.push(v instanceof RespError ? v.message : v);
        pos = p;
      }
      return [out, pos];
    }
    default:
      throw new Error(`not RESP: ${JSON.stringify(buf.toString('utf8', at, Math.min(buf.length, at + 40)))}`);
  }
}

export function encodeCommand(args: readonly (string | number)[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = Buffer.from(String(a), 'utf8');
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

export class RedisConnection {
  private buf: Buffer = Buffer.alloc(0);
  private readonly queue: Pending[] = [];
  private closedWith: Error | undefined;

  private constructor(private readonly socket: Socket) {
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('error', (e) => this.fail(e));
    socket.on('close', () => this.fail(new Error('connection closed')));
  }

  /** Connects to redis at host:port, or rejects within timeoutMs. */
  static open(port: number, host = '127.0.0.1', timeoutMs = 1000): Promise<RedisConnection> {
    return new Promise((resolve, reject) => {
      const s = connect({ port, host });
      s.setNoDelay(true);
      const timer = setTimeout(() => {
        s.destroy();
        reject(new Error(`connect ${host}:${port}: timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        s.removeAllListeners('error');
        resolve(new RedisConnection(s));
      });
      s.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  }

  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  /** Sends one command; resolves with its reply, rejects with a RespError for an error reply. */
  command(args: readonly (string | number)[], timeoutMs = 2000): Promise<RespValue> {
    if (this.closedWith !== undefined) return Promise.reject(this.closedWith);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new Error(`${String(args[0])}: no reply within ${timeoutMs} ms`)), timeoutMs);
      this.queue.push({ resolve, reject, timer });
      this.socket.write(encodeCommand(args));
    });
  }

  close(): void {
    this.fail(new Error('connection closed'));
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    let at = 0;
    for (;;) {
      let r: ReturnType<typeof parseResp>;
      try {
        r = parseResp(this.buf, at);
      } catch (e) {
        this.fail(e instanceof Error ? e : new Error(String(e)));
        return;
      }
      if (r === undefined) break;
      at = r[1];
      const p = this.queue.shift();
      if (p === undefined) continue;
      clearTimeout(p.timer);
      if (r[0] instanceof RespError) p.reject(r[0]);
      else p.resolve(r[0]);
    }
    this.buf = at >= this.buf.length ? Buffer.alloc(0) : this.buf.subarray(at);
  }

  private fail(e: Error): void {
    if (this.closedWith === undefined) this.closedWith = e;
    this.socket.destroy();
    for (const p of this.queue.splice(0)) {
      clearTimeout(p.timer);
      p.reject(e);
    }
  }
}

/** `INFO` text as a map of its `key:value` lines. */
export function parseInfo(text: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of text.split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i > 0 && !line.startsWith('#')) m.set(line.slice(0, i), line.slice(i + 1));
  }
  return m;
}
