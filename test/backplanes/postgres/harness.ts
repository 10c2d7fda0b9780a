/**
 * A bench for the PostgreSQL member without agents: each member process (src/backplanes/postgres/member.ts, run by
 * tsx) talks to a small fake of the instance API (self, state, events), and a loop plays the controller: it builds
 * the members' view from their reports, calls the real reactPostgres, and pushes configs back as `config` events.
 * Real postgres, real pg_basebackup/pg_rewind; only the store and the agents are left out.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Member, ReactOutput, ServiceView } from '../../../src/backplanes/sdk.js';
import { reactPostgres } from '../../../src/backplanes/postgres/react.js';
import type { AppReport } from '../../../src/scheduler/types.js';
import { freePort } from '../../helpers/net.js';

export interface SimMember {
  readonly allocId: string;
  readonly index: number;
  version: string;
  readonly port: number;
  readonly token: string;
  config: Record<string, unknown> | null;
  report: AppReport | undefined;
  proc: ChildProcess | undefined;
  stopping: boolean;
  log: string;
  readonly streams: Set<http.ServerResponse>;
}

export class Sim {
  readonly root = mkdtempSync(join(tmpdir(), 'pg-sim-'));
  readonly members: SimMember[] = [];
  memory: unknown;
  out: ReactOutput | undefined;
  events: string[] = [];
  version = 'v1';
  private server: http.Server | undefined;
  private url = '';
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly name: string,
    readonly params: { synchronous: boolean },
  ) {
    chmodSync(this.root, 0o755);
  }

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => this.handle(req, res));
    await new Promise<void>((r) => this.server?.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    this.timer = setInterval(() => this.pass(), 100);
  }

  async add(): Promise<SimMember> {
    const index = this.members.length;
    const m: SimMember = {
      allocId: `${this.name}.${index}.${randomBytes(4).toString('hex')}`,
      index,
      version: this.version,
      port: await freePort(),
      token: randomBytes(8).toString('hex'),
      config: null,
      report: undefined,
      proc: undefined,
      stopping: false,
      log: '',
      streams: new Set(),
    };
    this.members.push(m);
    this.spawn(m);
    return m;
  }

  spawn(m: SimMember): void {
    const proc = spawn(process.execPath, ['--import', 'tsx', 'src/backplanes/postgres/member.ts'], {
      env: { ...process.env, BACKPLANE_API: this.url, BACKPLANE_TOKEN: m.token, PG_ROOT: this.root, PG_MEMORY: String(64 * 1024 * 1024) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const add = (d: Buffer): void => {
      m.log = (m.log + d.toString()).slice(-20000);
      if (process.env.PG_SIM_LOG !== undefined) process.stderr.write(`[${m.allocId}] ${d.toString()}`);
    };
    proc.stdout.on('data', add);
    proc.stderr.on('data', add);
    m.proc = proc;
  }

  /** The postmaster's pid of a member (from its postmaster.pid). */
  postmasterPid(m: SimMember): number {
    return Number(readFileSync(join(this.root, m.allocId, 'data', 'postmaster.pid'), 'utf8').split('\n')[0]);
  }

  private view(): Member[] {
    return this.members.map((m) => ({
      allocId: m.allocId,
      service: this.name,
      index: m.index,
      version: m.version,
      host: `h${m.index}`,
      address: '127.0.0.1',
      ports: { pg: m.port },
      state: m.proc?.exitCode === null ? 'running' : 'failed',
      restarts: 0,
      hostAlive: true,
      fenced: false,
      stopping: m.stopping,
      ...(m.config === null ? {} : { config: m.config }),
      ...(m.report === undefined ? {} : { report: m.report }),
    }));
  }

  pass(): void {
    const services: ServiceView[] = [{ name: this.name, count: this.members.length, version: this.version }];
    const out = reactPostgres({ now: Date.now(), object: { kind: 'postgres', name: this.name, params: this.params }, deployedAt: 'x', services, members: this.view(), memory: this.memory });
    this.out = out;
    this.memory = out.memory;
    if (out.events !== undefined) this.events.push(...out.events);
    for (const [id, c] of Object.entries(out.config ?? {})) {
      const m = this.members.find((x) => x.allocId === id);
      if (m === undefined || JSON.stringify(m.config) === JSON.stringify(c)) continue;
      m.config = { ...c };
      for (const s of m.streams) s.write(`event: config\ndata: ${JSON.stringify(m.config)}\n\n`);
    }
  }

  /** The port discovery says is the primary now, or undefined. */
  primaryPort(): number | undefined {
    const t = this.out?.discovery?.primary?.[0];
    return t === undefined ? undefined : this.members.find((m) => m.allocId === t.allocId)?.port;
  }

  state(m: SimMember): Record<string, unknown> | undefined {
    return m.report?.state;
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const token = (req.headers.authorization ?? '').replace(/^Bearer /, '');
    const m = this.members.find((x) => x.token === token);
    if (m === undefined) {
      res.writeHead(401).end('{}');
      return;
    }
    if (req.method === 'GET' && req.url === '/v1/self') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ allocId: m.allocId, service: this.name, index: m.index, version: m.version, host: `h${m.index}`, address: '127.0.0.1', ports: { pg: m.port }, config: m.config, scale: null, app: { kind: 'postgres', name: this.name }, resources: { cpu: 0.5, memory: 1 << 28 } }));
      return;
    }
    if (req.method === 'PUT' && req.url === '/v1/state') {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        const r = JSON.parse(body) as { ready?: boolean; state?: Record<string, unknown>; message?: string };
        m.report = { ...(r.ready === undefined ? {} : { ready: r.ready }), ...(r.state === undefined ? {} : { state: r.state }), ...(r.message === undefined ? {} : { message: r.message }), at: Date.now() };
        res.writeHead(204).end();
        this.pass();
      });
      return;
    }
    if (req.method === 'GET' && req.url === '/v1/events') {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(`event: hello\ndata: ${JSON.stringify({ config: m.config })}\n\n`);
      m.streams.add(res);
      req.on('close', () => m.streams.delete(res));
      return;
    }
    res.writeHead(404).end('{}');
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await Promise.all(
      this.members.map(
        (m) =>
          new Promise<void>((resolve) => {
            const p = m.proc;
            if (p === undefined || p.exitCode !== null || p.signalCode !== null) {
              resolve();
              return;
            }
            p.once('exit', () => resolve());
            p.kill('SIGTERM');
            setTimeout(() => p.kill('SIGKILL'), 15000).unref();
          }),
      ),
    );
    for (const m of this.members) for (const s of m.streams) s.end();
    this.server?.closeAllConnections();
    this.server?.close();
    // Any postgres left behind (a member killed by the test): immediate shutdown.
    for (const m of this.members) {
      try {
        process.kill(this.postmasterPid(m), 'SIGQUIT');
      } catch {
        // gone
      }
    }
    rmSync(this.root, { recursive: true, force: true });
  }
}

export async function until<T>(what: string, f: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 30000, everyMs = 50): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
