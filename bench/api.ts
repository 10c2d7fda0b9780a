/**
 * Operator API latency under 100 concurrent clients (#12 Proof): a real agent (embedded store, services deployed, the
 * API on TLS with a viewer token) answering GET /v1/services (the whole cluster's service table, read from the store
 * and verified record by record) and GET /v1/agent (this agent's graph), each client sending its next request as soon
 * as the last is answered, over keep-alive TLS connections (after a 1 s warm-up that is not counted: connections made,
 * caches filled).
 *
 *   node --import tsx bench/api.ts [--clients 100] [--seconds 10] [--services 20]
 *
 * The peer, measured the same way in the same run: Debian's nginx serving the same answers as static files over TLS
 * with the same certificate. nginx does no work per request but a file read: it is the floor of what HTTP+TLS costs on
 * this machine, and the ratio says what our answer costs above it. Exits 1 past a p99 of 250 ms for /v1/services,
 * or on any failed request.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { Agent as HttpsAgent, request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureBuilt } from '../test/helpers/cli.js';
import { startApiAgent } from '../test/helpers/api.js';
import { freePort } from '../test/helpers/net.js';
import { percentile } from '../test/backplanes/redis/cluster.js';

const arg = (name: string, dflt: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const CLIENTS = arg('clients', 100);
const SECONDS = arg('seconds', 10);
const SERVICES = arg('services', 20);
const P99_LIMIT_MS = 250;
const WARMUP_MS = 1000;

interface Result {
  readonly ok: number;
  readonly failed: number;
  readonly ms: number[];
  readonly rps: number;
}

/** `clients` loops, each sending its next GET as soon as the last is answered, for `seconds`. */
async function load(port: number, ca: string, path: string, token: string | undefined): Promise<Result> {
  const agent = new HttpsAgent({ keepAlive: true, maxSockets: CLIENTS, ca });
  let ms: number[] = [];
  let ok = 0;
  let failed = 0;
  let end = performance.now() + WARMUP_MS;
  const one = (): Promise<void> =>
    new Promise((resolve) => {
      const t0 = performance.now();
      const req = request({ host: '127.0.0.1', port, path, agent, headers: token === undefined ? {} : { authorization: `Bearer ${token}` } }, (res) => {
        res.on('data', () => undefined);
        res.on('end', () => {
          ms.push(performance.now() - t0);
          if (res.statusCode === 200) ok++;
          else failed++;
          resolve();
        });
      });
      req.on('error', () => {
        failed++;
        resolve();
      });
      req.end();
    });
  // Warm-up (not counted): every client's TLS connection made, caches filled.
  await Promise.all(Array.from({ length: CLIENTS }, async () => {
    while (performance.now() < end) await one();
  }));
  ms = [];
  ok = 0;
  failed = 0;
  end = performance.now() + SECONDS * 1000;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: CLIENTS }, async () => {
      while (performance.now() < end) await one();
    }),
  );
  const secs = (performance.now() - t0) / 1000;
  agent.destroy();
  return { ok, failed, ms, rps: ok / secs };
}

async function startNginx(dir: string, cert: string, key: string, port: number): Promise<ChildProcess> {
  const conf = join(dir, 'nginx.conf');
  await writeFile(
    conf,
    `worker_processes 1;
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'error.log')};
daemon off;
events { worker_connections 1024; }
http {
  access_log off;
  default_type application/json;
  client_body_temp_path ${join(dir, 'tmp')};
  server {
    listen 127.0.0.1:${port} ssl;
    ssl_certificate ${cert};
    ssl_certificate_key ${key};
    ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_requests 1000000;
    root ${join(dir, 'www')};
    location / { try_files $uri $uri.json =404; }
  }
}
`,
  );
  const p = spawn('/usr/sbin/nginx', ['-c', conf, '-e', join(dir, 'error.log')], { stdio: 'ignore' });
  for (let i = 0; i < 100; i++) {
    await new Promise((r) => setTimeout(r, 50));
    const { answers } = await import('../test/helpers/net.js');
    if (await answers(port)) break;
  }
  return p;
}

function row(name: string, r: Result): string {
  const s = [...r.ms].sort((a, b) => a - b);
  const f = (v: number): string => v.toFixed(1).padStart(8);
  return `${name.padEnd(34)} ${String(r.ok).padStart(8)} ${String(r.failed).padStart(6)} ${r.rps.toFixed(0).padStart(8)} ${f(percentile(s, 50))} ${f(percentile(s, 95))} ${f(percentile(s, 99))}`;
}

ensureBuilt();
const work = await mkdtemp(join(tmpdir(), 'bp-bench-api-'));
let failed = false;
let nginx: ChildProcess | undefined;
const agentDir = join(work, 'agent');
await mkdir(agentDir);
await writeFile(join(agentDir, 'g.yaml'), `resources:\n${Array.from({ length: 50 }, (_, i) => `  - kind: file\n    name: ${join(agentDir, `f${i}`)}\n    content: "${i}\\n"\n`).join('')}`);
const agent = await startApiAgent(agentDir, join(agentDir, 'g.yaml'), { extra: ['--capacity', 'cpu=64,memory=64G'] });
try {
  // Services to list: each a spec, a plan, and one instance that sleeps.
  const files = Array.from({ length: SERVICES }, (_, i) => ({ name: `svc${i}.yaml`, text: `name: svc${i}\ncount: 1\nresources: {cpu: 10m, memory: 16M}\nrun:\n  cmd: [/bin/sleep, "3600"]\n` }));
  const d = await agent.socket('POST', '/v1/deploy', { files });
  if (d.status !== 200) throw new Error(`deploy: ${d.status} ${d.text}`);
  const token = await agent.token('bench', 'viewer');
  for (let i = 0; i < 200; i++) {
    const rows = (await agent.socket('GET', '/v1/services')).json<{ healthy: number }[]>();
    if (rows.length === SERVICES && rows.every((r) => r.healthy === 1)) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  const paths = ['/v1/services', '/v1/agent'];
  // The peer serves exactly what the agent answered.
  const www = join(work, 'nginx', 'www');
  await mkdir(join(www, 'v1'), { recursive: true });
  await mkdir(join(work, 'nginx', 'tmp'), { recursive: true });
  for (const p of paths) await writeFile(join(www, `${p}.json`), (await agent.socket('GET', p)).text);
  await chmod(work, 0o755);
  const haveNginx = existsSync('/usr/sbin/nginx');
  const nginxPort = await freePort();
  if (haveNginx) nginx = await startNginx(join(work, 'nginx'), join(agentDir, 'api.crt'), join(agentDir, 'api.key'), nginxPort);

  console.log(`\nOperator API latency: ${CLIENTS} concurrent clients, ${SECONDS} s per row, keep-alive TLS, ${SERVICES} services (${new Date().toISOString().slice(0, 10)})\n`);
  console.log(`${'what'.padEnd(34)} ${'ok'.padStart(8)} ${'failed'.padStart(6)} ${'req/s'.padStart(8)} ${'p50 ms'.padStart(8)} ${'p95 ms'.padStart(8)} ${'p99 ms'.padStart(8)}`);
  const ours: Record<string, Result> = {};
  for (const p of paths) {
    const r = await load(agent.port, agent.cert, p, token);
    ours[p] = r;
    console.log(row(`backplane GET ${p}`, r));
    if (r.failed > 0) failed = true;
    if (haveNginx) {
      const n = await load(nginxPort, agent.cert, p, undefined);
      console.log(row(`nginx (static copy) GET ${p}`, n));
      const s = (x: Result): number => percentile([...x.ms].sort((a, b) => a - b), 99);
      console.log(`${''.padEnd(34)} p99 ratio backplane/nginx: ${(s(r) / Math.max(0.001, s(n))).toFixed(1)}x`);
    }
  }
  const svc = ours['/v1/services'];
  const p99 = svc === undefined ? Infinity : percentile([...svc.ms].sort((a, b) => a - b), 99);
  console.log(`\nGET /v1/services p99 ${p99.toFixed(1)} ms (limit ${P99_LIMIT_MS} ms)${failed ? '; some requests FAILED' : ''}`);
  if (p99 > P99_LIMIT_MS) failed = true;
} finally {
  nginx?.kill('SIGTERM');
  await agent.stop();
  await rm(work, { recursive: true, force: true, maxRetries: 5 });
}
if (failed) {
  console.error('FAIL: past the limit, or requests failed');
  process.exit(1);
}
