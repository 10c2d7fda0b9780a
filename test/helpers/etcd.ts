import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Real etcd members for tests, on loopback addresses 127.0.0.2-4 (one per member, so each could keep the standard
 * ports) with random free ports: never 127.0.0.1:2379, where a developer may run a real etcd, and no clash between
 * test files running at the same time. Members are direct children of the test process, so `exit` tells reliably
 * when one is gone (FACTS 5), and they are SIGKILLed if the test process exits without cleaning up.
 * Fast timings (heartbeat 25 ms, election 250 ms) make a member ready in ~0.2 s and lease TTLs as short as 1 s;
 * `--pre-vote` keeps a restarted member from forcing a re-election.
 */

export interface EtcdMember {
  readonly name: string;
  readonly ip: string;
  readonly clientUrl: string;
  readonly peerUrl: string;
  readonly dataDir: string;
  /** Undefined while the member is stopped. */
  proc: ChildProcess | undefined;
  /** The last lines etcd printed, for failure messages. */
  log: string[];
}

/**
 * Client TLS for the members: https client URLs, this server certificate, and `--client-cert-auth` with `ca` as the
 * trusted CA (mutual TLS: a client needs a certificate signed by `ca`). `probe`: the client certificate the health
 * probe presents. Peer traffic stays plain http (loopback only).
 */
export interface EtcdTls {
  readonly ca: string;
  readonly cert: string;
  readonly key: string;
  readonly probe: { readonly cert: string; readonly key: string };
}

export interface EtcdStartOptions {
  readonly members: 1 | 3;
  readonly tls?: EtcdTls;
  /** Extra etcd flags, e.g. `['--auth-token-ttl', '2']`. */
  readonly args?: readonly string[];
}

export interface EtcdCluster {
  readonly endpoints: string[];
  readonly members: EtcdMember[];
  /** SIGKILLs member i and waits until it has exited. */
  kill(i: number): Promise<void>;
  /**
   * Starts member i again on its old data dir and waits until it reports healthy. `wait: false` only starts it:
   * when every member is down, none is healthy until a quorum of them runs.
   */
  restart(i: number, opts?: { wait?: boolean }): Promise<void>;
  /** Waits until member i answers /health with true. */
  waitHealthy(i: number, timeoutMs?: number): Promise<void>;
  /** Kills every member and deletes the data dirs. */
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

export function etcdAvailable(): boolean {
  return spawnSync('etcd', ['--version'], { stdio: 'ignore' }).status === 0;
}

async function freePort(ip: string): Promise<number> {
  const server = createServer();
  server.listen(0, ip);
  await once(server, 'listening');
  const addr = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (addr === null || typeof addr === 'string') throw new Error(`no port on ${ip}`);
  return addr.port;
}

async function probeHealth(clientUrl: string, timeoutMs: number, tls: EtcdTls | undefined): Promise<boolean> {
  // /health hangs when there is no leader (FACTS 4), so every probe has its own timeout.
  if (tls !== undefined) return probeHealthTls(clientUrl, timeoutMs, tls);
  try {
    const res = await fetch(`${clientUrl}/health`, { signal: AbortSignal.timeout(timeoutMs) });
    const body = (await res.json()) as { health?: string };
    return body.health === 'true';
  } catch {
    return false;
  }
}

function probeHealthTls(clientUrl: string, timeoutMs: number, tls: EtcdTls): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request(
      `${clientUrl}/health`,
      { ca: readFileSync(tls.ca), cert: readFileSync(tls.probe.cert), key: readFileSync(tls.probe.key), timeout: timeoutMs },
      (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve(/"health":\s*"true"/.test(body)));
        res.on('error', () => resolve(false));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => resolve(false));
    req.end();
  });
}

export async function startEtcd(opts: EtcdStartOptions): Promise<EtcdCluster> {
  const scheme = opts.tls === undefined ? 'http' : 'https';
  const root = await mkdtemp(join(tmpdir(), 'bp-etcd-'));
  const token = `bp-test-${randomBytes(6).toString('hex')}`;
  const members: EtcdMember[] = [];
  for (let i = 0; i < opts.members; i++) {
    const ip = `127.0.0.${i + 2}`;
    const clientPort = await freePort(ip);
    let peerPort = await freePort(ip);
    while (peerPort === clientPort) peerPort = await freePort(ip);
    members.push({
      name: `m${i}`,
      ip,
      clientUrl: `${scheme}://${ip}:${clientPort}`,
      peerUrl: `http://${ip}:${peerPort}`,
      dataDir: join(root, `m${i}`),
      proc: undefined,
      log: [],
    });
  }
  const initialCluster = members.map((m) => `${m.name}=${m.peerUrl}`).join(',');

  const spawnMember = (m: EtcdMember): void => {
    const args = [
      '--name', m.name,
      '--data-dir', m.dataDir,
      '--listen-client-urls', m.clientUrl,
      '--advertise-client-urls', m.clientUrl,
      '--listen-peer-urls', m.peerUrl,
      '--initial-advertise-peer-urls', m.peerUrl,
      '--initial-cluster', initialCluster,
      '--initial-cluster-token', token,
      '--initial-cluster-state', 'new',
      '--heartbeat-interval', '25',
      '--election-timeout', '250',
      '--pre-vote',
      '--logger', 'zap',
      '--log-level', 'error',
      ...(opts.tls === undefined
        ? []
        : ['--cert-file', opts.tls.cert, '--key-file', opts.tls.key, '--client-cert-auth', '--trusted-ca-file', opts.tls.ca]),
      ...(opts.args ?? []),
    ];
    const proc = spawn('etcd', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    m.proc = proc;
    live.add(proc);
    const keep = (chunk: Buffer): void => {
      m.log.push(...chunk.toString('utf8').split('\n').filter((l) => l !== ''));
      if (m.log.length > 40) m.log.splice(0, m.log.length - 40);
    };
    proc.stdout?.on('data', keep);
    proc.stderr?.on('data', keep);
    proc.on('exit', () => {
      live.delete(proc);
      if (m.proc === proc) m.proc = undefined;
    });
  };

  const waitHealthy = async (i: number, timeoutMs = 20_000): Promise<void> => {
    const m = members[i];
    if (m === undefined) throw new Error(`no etcd member ${i}`);
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (m.proc === undefined) throw new Error(`etcd member ${m.name} exited:\n${m.log.join('\n')}`);
      if (await probeHealth(m.clientUrl, 500, opts.tls)) return;
      await sleep(50);
    }
    throw new Error(`etcd member ${m.name} (${m.clientUrl}) not healthy after ${timeoutMs} ms:\n${m.log.join('\n')}`);
  };

  const kill = async (i: number): Promise<void> => {
    const m = members[i];
    const proc = m?.proc;
    if (proc === undefined) return;
    const exited = once(proc, 'exit');
    proc.kill('SIGKILL');
    await exited;
  };

  const stop = async (): Promise<void> => {
    await Promise.all(members.map((_, i) => kill(i)));
    await rm(root, { recursive: true, force: true });
  };

  try {
    for (const m of members) spawnMember(m);
    // Members of a new cluster wait for each other, so all start before any is awaited.
    await Promise.all(members.map((_, i) => waitHealthy(i)));
  } catch (err) {
    await stop();
    throw err;
  }

  return {
    endpoints: members.map((m) => m.clientUrl),
    members,
    kill,
    restart: async (i: number, opts: { wait?: boolean } = {}) => {
      const m = members[i];
      if (m === undefined) throw new Error(`no etcd member ${i}`);
      if (m.proc !== undefined) throw new Error(`etcd member ${m.name} is still running`);
      // The data dir holds the membership; --initial-cluster* flags are ignored for an existing member.
      spawnMember(m);
      if (opts.wait !== false) await waitHealthy(i);
    },
    waitHealthy,
    stop,
  };
}
