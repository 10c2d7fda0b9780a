/**
 * How fast does the dashboard show a big cluster? (#12 Proof)
 *
 *   node --import tsx bench/dashboard.ts [--hosts 1000] [--instances 10000] [--services 1000] [--runs 3]
 *                                        [--max-ms 2000] [--max-heap-mb 100] [--serve PORT]
 *
 * This measures the browser side: the real web bundle (dist/web, built by scripts/build.mjs, served by the agent's
 * own serveWebAsset from src/api/web-assets.ts) in Debian's Chromium driven by playwright-core, against a tiny
 * local HTTP server that answers the API's JSON shapes (src/api/ops/*.ts, each generated row checked against the
 * op's zod output schema) with generated rows: --hosts hosts, --services services holding --instances instances
 * between them, and one service ("big") holding all --instances instances for its detail view.
 *
 * For each view it times, in the page (performance.now(), from navigation start for the first view and from the
 * route change for the others): the rows in the DOM (a MutationObserver sees the first `.vt-row`) and the frame
 * after (a double requestAnimationFrame: the rows painted). Then: the time to filter the hosts to one, and to
 * scroll the hosts table to its end and see the last host. The page's JS heap and DOM node count come from the
 * DevTools protocol (Performance.getMetrics) after the views were shown: a table that rendered every row would
 * show tens of thousands of nodes.
 *
 * Limits (a FAIL line and exit 1): first paint of the hosts, services and service-detail rows within --max-ms
 * (default 2000, the median of --runs fresh pages), JS heap within --max-heap-mb. Prints a table and a JSON line;
 * writes bench/results/dashboard-latest.json. `--serve PORT` only serves the synthetic cluster (for working on the
 * dashboard: open http://127.0.0.1:PORT/ with any token).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import { chromium, type Page } from 'playwright-core';
import { z } from 'zod';
import { hostRowSchema, type HostRow } from '../src/api/ops/hosts.js';
import { instanceRowSchema, serviceRowSchema, type InstanceRow, type ServiceRow } from '../src/api/ops/services.js';
import { agentGraphSchema, type AgentGraph } from '../src/api/ops.js';
import { serveWebAsset, webRoot } from '../src/api/web-assets.js';
import { ensureBuilt, ROOT } from '../test/helpers/cli.js';

const CHROMIUM = '/usr/bin/chromium';

interface Options {
  hosts: number;
  instances: number;
  services: number;
  runs: number;
  maxMs: number;
  maxHeapMb: number;
  serve?: number;
}

function parse(argv: readonly string[]): Options {
  const int = (flag: string, dflt: number): number => {
    const i = argv.indexOf(`--${flag}`);
    if (i === -1) return dflt;
    const v = Number(argv[i + 1]);
    if (!Number.isInteger(v) || v < 1) throw new Error(`--${flag} takes a whole number of at least 1`);
    return v;
  };
  const serve = argv.includes('--serve') ? int('serve', 8080) : undefined;
  return {
    hosts: int('hosts', 1000),
    instances: int('instances', 10_000),
    services: int('services', 1000),
    runs: int('runs', 3),
    maxMs: int('max-ms', 2000),
    maxHeapMb: int('max-heap-mb', 100),
    ...(serve === undefined ? {} : { serve }),
  };
}

// ---- the synthetic cluster -------------------------------------------------------------------------------------------

interface Synthetic {
  readonly hosts: HostRow[];
  readonly services: ServiceRow[];
  readonly big: InstanceRow[];
  readonly graph: AgentGraph;
}

const G = 1024 ** 3;
const STATES = ['healthy', 'healthy', 'healthy', 'healthy', 'healthy', 'healthy', 'running', 'starting', 'unhealthy', 'host-down'];

export function synthetic(o: Pick<Options, 'hosts' | 'instances' | 'services'>): Synthetic {
  const hostName = (i: number): string => `host-${String(i).padStart(4, '0')}`;
  const perHost = new Array<number>(o.hosts).fill(0);
  const big: InstanceRow[] = [];
  for (let i = 0; i < o.instances; i++) {
    const h = (i * 7919) % o.hosts;
    perHost[h] = (perHost[h] ?? 0) + 1;
    big.push({
      id: `big.${i}.${(i * 2654435761 >>> 0).toString(16).padStart(8, '0')}`,
      index: i,
      host: hostName(h),
      version: i % 5 === 0 ? 'v2' : 'v1',
      state: STATES[i % STATES.length] ?? 'healthy',
      restarts: i % 13 === 0 ? 2 : 0,
      since: Date.now() - (i % 600) * 1000,
      ...(i % 10 === 8 ? { message: 'health check: HTTP 500 from /health' } : {}),
      ports: { http: 20000 + (i % 10000) },
      hostAlive: i % 10 !== 9,
    });
  }
  const hosts: HostRow[] = perHost.map((n, i) => {
    const cap = { cpu: 16, memory: 64 * G };
    const reserved = { cpu: Math.round(n * 0.5 * 1000) / 1000, memory: n * 512 * 1024 ** 2 };
    return {
      host: hostName(i),
      alive: i % 97 !== 0,
      draining: i % 50 === 1,
      capacity: cap,
      reserved,
      free: { cpu: Math.round((cap.cpu - reserved.cpu) * 1000) / 1000, memory: cap.memory - reserved.memory },
      instances: n,
      labels: { zone: `zone-${i % 4}`, rack: `r${i % 40}` },
    };
  });
  const per = Math.floor(o.instances / o.services);
  const services: ServiceRow[] = Array.from({ length: o.services }, (_, i) => {
    const count = per + (i < o.instances % o.services ? 1 : 0);
    return {
      name: `svc-${String(i).padStart(4, '0')}`,
      namespace: ['default', 'payments', 'search', 'batch'][i % 4] ?? 'default',
      version: `v${1 + (i % 3)}`,
      count,
      operatorCount: count,
      placed: count,
      healthy: i % 17 === 0 ? Math.max(0, count - 2) : count,
      removed: false,
      deployedAt: new Date(Date.now() - i * 60_000).toISOString(),
      ...(i % 25 === 0 ? { plan: `svc-${i}-3 update v1 -> v2 running 3/${count}` } : {}),
    };
  });
  const vertices = Array.from({ length: 60 }, (_, i) => ({
    id: `file[/etc/app/${i}.conf]`,
    kind: 'file',
    name: `/etc/app/${i}.conf`,
    state: i === 17 ? 'failed' : 'converged',
    ...(i === 17 ? { error: 'EACCES: permission denied' } : {}),
    changes: i % 3,
    runs: 4,
  }));
  const graph: AgentGraph = { host: 'host-0000', vertices, edges: vertices.slice(1).map((v, i) => ({ from: vertices[Math.floor(i / 3)]?.id ?? '', to: v.id, notify: i % 5 === 0 })) };
  // The generated rows have the API's shapes: checked against the ops' own output schemas.
  z.array(hostRowSchema).parse(hosts);
  z.array(serviceRowSchema).parse(services);
  z.array(instanceRowSchema).parse(big.slice(0, 100));
  agentGraphSchema.parse(graph);
  return { hosts, services, big, graph };
}

/** Answers GET / and /assets/* with the real dashboard, and the read ops the views call with the synthetic cluster. */
export function syntheticServer(data: Synthetic): Server {
  const bodies = new Map<string, string>([
    ['/v1/whoami', JSON.stringify({ name: 'bench', role: 'viewer', via: 'token' })],
    ['/v1/hosts', JSON.stringify(data.hosts)],
    ['/v1/services', JSON.stringify(data.services)],
    ['/v1/agent/graph', JSON.stringify(data.graph)],
    ['/v1/events', JSON.stringify(data.big.slice(0, 200).map((i, n) => ({ at: Date.now() - (200 - n) * 1000, service: 'big', message: `${i.id} placed on ${i.host}` })))],
    [
      '/v1/services/big',
      JSON.stringify({ name: 'big', namespace: 'default', spec: { name: 'big', version: 'v2', count: data.big.length }, removed: false, deployedAt: new Date().toISOString(), by: 'h1', instances: data.big, events: [] }),
    ],
  ]);
  const root = webRoot();
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (await serveWebAsset(req, res, root)) return;
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (!/^Bearer bpt_/.test(req.headers.authorization ?? '')) {
      res.writeHead(401, { 'Content-Type': 'application/json' }).end(JSON.stringify({ error: { status: 401, code: 'E_AUTH', message: 'no token: send Authorization: Bearer bpt_...' } }));
      return;
    }
    if (path === '/v1/stream') {
      res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
      res.write(`event: hello\ndata: ${JSON.stringify({ host: 'host-0000', at: Date.now() })}\n\n`);
      const ping = setInterval(() => res.write(': ping\n\n'), 15_000);
      req.on('close', () => clearInterval(ping));
      return;
    }
    const body = bodies.get(path);
    if (body === undefined) {
      res.writeHead(404, { 'Content-Type': 'application/json' }).end(JSON.stringify({ error: { status: 404, code: 'E_USAGE', message: `nothing at ${path} in the synthetic cluster` } }));
      return;
    }
    res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' }).end(body);
  };
  return createServer((req, res) => {
    handle(req, res).catch((e: unknown) => res.destroy(e instanceof Error ? e : new Error(String(e))));
  });
}

// ---- measuring -------------------------------------------------------------------------------------------------------

/** Installed in every page before its scripts: notes when the first rows of each table reach the DOM and the screen. */
const OBSERVER = `
  window.__rows = {};
  window.__mark = performance.now();
  new MutationObserver(() => {
    for (const t of document.querySelectorAll('[data-table]')) {
      const name = t.getAttribute('data-table');
      const r = window.__rows[name];
      if (r !== undefined && r.mark === window.__mark) continue;
      if (t.querySelector('.vt-row') === null) continue;
      const entry = { mark: window.__mark, dom: performance.now() - window.__mark };
      window.__rows[name] = entry;
      requestAnimationFrame(() => requestAnimationFrame(() => { entry.paint = performance.now() - window.__mark; }));
    }
  }).observe(document, { childList: true, subtree: true });
`;

interface Timing {
  readonly dom: number;
  readonly paint: number;
}

/**
 * The code run in the page is given as text (page.evaluate runs it through the DevTools protocol, which the page's
 * CSP does not govern): the bench is type-checked for Node, without DOM types.
 */
async function rowsOf(page: Page, table: string): Promise<Timing> {
  // A function, not text: waitForFunction evaluates a text predicate with eval, which the page's CSP forbids.
  const h = await page.waitForFunction(
    (t: string) => {
      const w = globalThis as unknown as { __rows: Record<string, { mark: number; dom: number; paint?: number } | undefined>; __mark: number };
      const r = w.__rows[t];
      return r !== undefined && r.mark === w.__mark && r.paint !== undefined ? { dom: r.dom, paint: r.paint } : undefined;
    },
    table,
    { timeout: 60_000 },
  );
  return (await h.jsonValue()) as Timing;
}

/** Goes to a route and times its table's first rows from the route change. */
async function route(page: Page, hash: string, table: string): Promise<Timing> {
  await page.evaluate(`window.__mark = performance.now(); location.hash = ${JSON.stringify(hash)};`);
  return rowsOf(page, table);
}

/** Runs `act` in the page, then waits frame by frame until `done` holds: the ms it took. */
async function timed(page: Page, act: string, done: string, what: string): Promise<number> {
  return page.evaluate(`(async () => {
    const t0 = performance.now();
    ${act};
    for (;;) {
      await new Promise((r) => requestAnimationFrame(r));
      if (${done}) return performance.now() - t0;
      if (performance.now() - t0 > 10000) throw new Error(${JSON.stringify(`timed out: ${what}`)});
    }
  })()`);
}

interface RunResult {
  hosts: Timing;
  services: Timing;
  detail: Timing;
  filterMs: number;
  scrollMs: number;
  heapMb: number;
  domNodes: number;
}

async function measure(page: Page, base: string, o: Options): Promise<RunResult> {
  await page.goto(`${base}/#/hosts`);
  const hosts = await rowsOf(page, 'hosts');
  const last = `host-${String(o.hosts - 1).padStart(4, '0')}`;
  const lastRow = `document.querySelector('[data-table=hosts] .vt-row[data-key="${last}"]') !== null`;
  const scrollMs = await timed(page, `const s = document.querySelector('[data-table=hosts] .vt-scroll'); s.scrollTop = s.scrollHeight`, lastRow, 'the last host never showed');
  const filterMs = await timed(
    page,
    `const i = document.querySelector('[data-view=hosts] input.search'); i.value = ${JSON.stringify(last)}; i.dispatchEvent(new Event('input'))`,
    `document.querySelectorAll('[data-table=hosts] .vt-row').length === 1`,
    'the filter never narrowed to one host',
  );
  const services = await route(page, '#/services', 'services');
  const detail = await route(page, '#/services/big', 'instances');
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('HeapProfiler.collectGarbage');
  await cdp.send('Performance.enable');
  const { metrics } = await cdp.send('Performance.getMetrics');
  const metric = (n: string): number => metrics.find((m) => m.name === n)?.value ?? 0;
  await cdp.detach();
  return { hosts, services, detail, filterMs, scrollMs, heapMb: metric('JSHeapUsedSize') / 1024 ** 2, domNodes: metric('Nodes') };
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[m] ?? 0) : ((s[m - 1] ?? 0) + (s[m] ?? 0)) / 2;
}

async function main(): Promise<number> {
  const o = parse(process.argv.slice(2));
  ensureBuilt();
  const t0 = performance.now();
  const data = synthetic(o);
  const genMs = performance.now() - t0;
  const server = syntheticServer(data);
  await new Promise<void>((r) => server.listen(o.serve ?? 0, '127.0.0.1', r));
  const addr = server.address();
  if (addr === null || typeof addr === 'string') throw new Error('no address');
  const base = `http://127.0.0.1:${addr.port}`;
  if (o.serve !== undefined) {
    console.log(`serving the synthetic cluster (${o.hosts} hosts, ${o.instances} instances) at ${base}/ (any token bpt_...); Ctrl-C stops`);
    await new Promise(() => undefined);
  }
  console.log(`dashboard bench: ${o.hosts} hosts, ${o.services} services, ${o.instances} instances (one service "big" with all of them), ${o.runs} fresh pages; data made in ${genMs.toFixed(0)} ms`);
  const browser = await chromium.launch({ executablePath: CHROMIUM });
  const runs: RunResult[] = [];
  try {
    for (let i = 0; i < o.runs; i++) {
      const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
      await context.addInitScript(`sessionStorage.setItem('backplane.token', 'bpt_bench_x'); ${OBSERVER}`);
      const page = await context.newPage();
      const errors: string[] = [];
      page.on('pageerror', (e) => errors.push(e.message));
      runs.push(await measure(page, base, o));
      if (errors.length > 0) throw new Error(`the page threw: ${errors.join('; ')}`);
      await context.close();
    }
  } finally {
    await browser.close();
    server.close();
  }

  const row = (what: string, xs: readonly number[], unit: string, digits = 0): string =>
    `${what.padEnd(44)} ${median(xs).toFixed(digits).padStart(8)} ${unit}   (runs: ${xs.map((x) => x.toFixed(digits)).join(', ')})`;
  const paint = { hosts: median(runs.map((r) => r.hosts.paint)), services: median(runs.map((r) => r.services.paint)), detail: median(runs.map((r) => r.detail.paint)) };
  const heap = median(runs.map((r) => r.heapMb));
  const lines = [
    row(`hosts (${o.hosts}): rows in the DOM, from navigation`, runs.map((r) => r.hosts.dom), 'ms'),
    row(`hosts (${o.hosts}): rows painted, from navigation`, runs.map((r) => r.hosts.paint), 'ms'),
    row(`services (${o.services}): rows painted, from route`, runs.map((r) => r.services.paint), 'ms'),
    row(`service with ${o.instances} instances: rows painted`, runs.map((r) => r.detail.paint), 'ms'),
    row('hosts: filter to one host', runs.map((r) => r.filterMs), 'ms', 1),
    row('hosts: scroll to the last host', runs.map((r) => r.scrollMs), 'ms', 1),
    row('JS heap after all views (after GC)', runs.map((r) => r.heapMb), 'MB', 1),
    row('DOM nodes in the page', runs.map((r) => r.domNodes), ''),
  ];
  console.log(lines.join('\n'));
  const failures: string[] = [];
  for (const [view, ms] of Object.entries(paint)) if (ms > o.maxMs) failures.push(`FAIL: ${view} rows painted in ${ms.toFixed(0)} ms, over the ${o.maxMs} ms limit`);
  if (heap > o.maxHeapMb) failures.push(`FAIL: JS heap ${heap.toFixed(1)} MB, over the ${o.maxHeapMb} MB limit`);
  for (const f of failures) console.error(f);
  if (failures.length === 0) console.log(`OK: every view painted its rows within ${o.maxMs} ms; heap within ${o.maxHeapMb} MB`);
  const result = { date: new Date().toISOString(), options: o, paintMs: paint, heapMb: heap, runs, failures };
  const dir = join(ROOT, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'dashboard-latest.json'), `${JSON.stringify(result, null, 2)}\n`);
  console.log(JSON.stringify({ bench: 'dashboard', paintMs: paint, heapMb: Math.round(heap * 10) / 10, failures: failures.length }));
  return failures.length === 0 ? 0 : 1;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    console.error(`dashboard bench: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
    process.exitCode = 2;
  },
);
