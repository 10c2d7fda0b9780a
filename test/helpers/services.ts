import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { agentCgroups, cgroupsOfPid, killCgroups, removeCgroups } from './cgroups.js';
import { ROOT, runCli, startCli, type CliResult, type RunningCli } from './cli.js';

/**
 * A service-backplane cluster for tests: agents as separate `backplane run` processes with declared capacity, on a
 * real etcd (or alone on the embedded store), driven through the CLI as an operator would, and checked against
 * the truth of /proc: which workload processes really run, for which service and instance index.
 */

export const WORKLOAD = join(ROOT, 'test', 'fixtures', 'workload.mjs');

export interface TestAgent {
  readonly host: string;
  readonly stateDir: string;
  readonly graph: string;
  cli: RunningCli;
}

export interface TestCluster {
  readonly root: string;
  readonly etcd: readonly string[];
  readonly name: string;
  readonly agents: Map<string, TestAgent>;
  readonly tokenFile: string;
  /** Store flags for CLI commands run as the operator (host h1, which holds the CA). */
  readonly op: readonly string[];
}

export interface AgentOptions {
  readonly capacity?: string;
  readonly labels?: Readonly<Record<string, string>>;
  readonly leaseTtl?: string;
  readonly graph?: string;
  /** The agent is SIGKILLed after this long (default 10 min), so a hung test cannot leave it behind. */
  readonly timeoutMs?: number;
  /** More `backplane run` flags, e.g. `['--fence', '8s']`. */
  readonly args?: readonly string[];
}

/**
 * Agents share one machine: each gets ports of its own, as separate hosts would. The range follows the host name and
 * the cluster's temp dir, so two test files that both name their agent `solo` and run side by side do not hand out
 * the same ports (an instance whose port is taken exits at start and looks like a crash loop). Ranges stay below the
 * ephemeral ports.
 */
function portRange(root: string, host: string): string {
  let h = 0;
  // 21000-32749: below Linux's ephemeral ports (32768 and up), which any outgoing connection may take.
  for (const ch of `${root}\0${host}`) h = (h * 31 + ch.charCodeAt(0)) % 235;
  const from = 21000 + h * 50;
  return `${from}-${from + 49}`;
}

export async function newCluster(root: string, etcd: readonly string[], name: string): Promise<TestCluster> {
  await mkdir(root, { recursive: true });
  const stateDir = join(root, 'state-h1');
  const store = etcd.length > 0 ? ['--etcd', etcd.join(','), '--cluster', name] : [];
  const tokenFile = join(root, 'join-token');
  if (etcd.length > 0) {
    const init = await runCli(['cluster', 'init', ...store, '--state-dir', stateDir, '--hostname', 'h1']);
    assert.equal(init.code, 0, init.stderr);
    const token = await runCli(['hosts', 'token', ...store, '--state-dir', stateDir, '--uses', '50']);
    assert.equal(token.code, 0, token.stderr);
    await writeFile(tokenFile, token.stdout, { mode: 0o600 });
  }
  return { root, etcd, name, agents: new Map(), tokenFile, op: [...store, '--state-dir', stateDir] };
}

export async function startAgent(c: TestCluster, host: string, opts: AgentOptions = {}): Promise<TestAgent> {
  const stateDir = join(c.root, `state-${host}`);
  const graph = join(c.root, `${host}.yaml`);
  await writeAtomic(graph, opts.graph ?? 'resources: []\n');
  const store = c.etcd.length > 0 ? ['--etcd', c.etcd.join(','), '--cluster', c.name, ...(host === 'h1' ? [] : ['--join-token-file', c.tokenFile])] : [];
  const labels = Object.entries(opts.labels ?? {}).flatMap(([k, v]) => ['--label', `${k}=${v}`]);
  const cli = startCli(
    ['run', '-f', graph, '--hostname', host, '--state-dir', stateDir, '--capacity', opts.capacity ?? 'cpu=2,memory=1G', '--lease-ttl', opts.leaseTtl ?? '3s', '--ports', portRange(c.root, host), ...labels, ...store, ...(opts.args ?? [])],
    { timeoutMs: opts.timeoutMs ?? 600_000 },
  );
  const agent = { host, stateDir, graph, cli };
  c.agents.set(host, agent);
  await cli.waitFor(/cluster store: embedded|joined cluster/, 30_000);
  return agent;
}

export async function stopAgent(a: TestAgent, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  const p = a.cli.proc;
  if (p.exitCode !== null || p.signalCode !== null) return;
  if (signal === 'SIGKILL') {
    p.kill('SIGKILL');
    await a.cli.exited;
    return;
  }
  const killer = setTimeout(() => p.kill('SIGKILL'), 15_000);
  p.kill('SIGCONT');
  p.kill(signal);
  await a.cli.exited;
  clearTimeout(killer);
}

export async function stopCluster(c: TestCluster): Promise<void> {
  const cgroups = await agentCgroups(c.root);
  await Promise.all([...c.agents.values()].map((a) => stopAgent(a)));
  // What a killed agent left behind (its instances die by their fence, but do not wait on it here): the workload
  // processes, and whatever else ran in the cluster's svc cgroups (a redis, a postgres), then those cgroups.
  await killWorkloads(c.root);
  await killCgroups(cgroups);
  await removeCgroups(cgroups);
}

/** Runs a CLI command as the operator (h1's state dir). */
export function op(c: TestCluster, args: readonly string[]): Promise<CliResult> {
  return runCli([...args, ...c.op], { timeoutMs: 120_000 });
}

export async function opJson<T>(c: TestCluster, args: readonly string[]): Promise<T> {
  const r = await op(c, [...args, '--json']);
  assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

export async function deploy(c: TestCluster, name: string, yaml: string, extra: readonly string[] = []): Promise<CliResult> {
  const file = join(c.root, `${name}-${Date.now()}.yaml`);
  await writeFile(file, yaml);
  return op(c, ['deploy', '-f', file, ...extra]);
}

export interface Instance {
  readonly id: string;
  readonly index: number;
  readonly host: string;
  readonly version: string;
  readonly state: string;
  readonly restarts: number;
  readonly ports: Record<string, number>;
}

export async function instances(c: TestCluster, service: string): Promise<Instance[]> {
  return (await opJson<{ instances: Instance[] }>(c, ['service', service])).instances;
}

/** A workload spec: the fixture's HTTP server with a health check, steered by files in `flagDir`. */
export function workloadSpec(name: string, count: number, flagDir: string, extra = ''): string {
  return `name: ${name}
count: ${count}
run:
  cmd: ["${process.execPath}", "${WORKLOAD}"]
  env: { FLAG_DIR: "${flagDir}" }
resources: { cpu: 0.5, memory: 128M }
ports: { http: {} }
health:
  http: "http://127.0.0.1:{{ instance.port.http }}/health"
  interval: 500ms
  timeout: 1s
  failures: 2
  grace: 10s
${extra}`;
}

/**
 * The workload processes alive right now (not zombies), per service and index, from /proc: the ground truth a
 * duplicate would show up in, whatever the store or the agents believe.
 */
export async function liveWorkloads(root?: string): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>();
  for (const pid of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8');
      if (!cmd.includes(WORKLOAD)) continue;
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
      const st = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      if (st === 'Z' || st === 'X') continue;
      const env = (await readFile(`/proc/${pid}/environ`, 'utf8')).split('\0');
      const get = (k: string): string | undefined => env.find((e) => e.startsWith(`${k}=`))?.slice(k.length + 1);
      if (root !== undefined && !(get('FLAG_DIR') ?? '').startsWith(root)) continue;
      const key = `${get('SERVICE_NAME') ?? '?'}.${get('INSTANCE_INDEX') ?? '?'}`;
      out.set(key, [...(out.get(key) ?? []), Number(pid)]);
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

export async function killWorkloads(root: string): Promise<void> {
  const cgroups = new Set<string>();
  for (const pids of (await liveWorkloads(root)).values()) for (const pid of pids) {
    for (const dir of await cgroupsOfPid(pid)) cgroups.add(dir);
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  // Their svc cgroups too, once empty: an agent removes them when it stops a service, but these were killed behind
  // its back (638 empty ones had piled up on the test machine in two days of suites).
  await removeCgroups([...cgroups]);
}

/**
 * Polls `fn` until it returns a value. On a timeout, `explain` (if given) adds what the cluster looked like then: a
 * wait that fails once in CI and never on a developer's machine is only fixable from that.
 */
export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 30_000, everyMs = 200, explain?: () => Promise<string>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const why = last === undefined ? '' : `: ${last instanceof Error ? last.message : JSON.stringify(last)}`;
      const state = explain === undefined ? '' : `\n${await explain().catch((err: unknown) => `(no diagnosis: ${String(err)})`)}`;
      throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}${why}${state}`);
    }
    await sleep(everyMs);
  }
}

/** What `service NAME` says (its plan and instances) and the last lines of each agent's log: for a failed wait. */
export async function diagnose(c: TestCluster, service: string, lines = 25): Promise<string> {
  const svc = await op(c, ['service', service]);
  const logs = [...c.agents.values()].map((a) => `--- ${a.host}'s agent, last ${lines} lines:\n${a.cli.output().trimEnd().split('\n').slice(-lines).join('\n')}`);
  return [`--- backplane service ${service} (exit ${svc.code}):`, svc.stdout.trimEnd(), svc.stderr.trimEnd(), ...logs].join('\n');
}

/** Healthy instances of `service` of `version` (any, when undefined), one per index. */
export async function healthyIndexes(c: TestCluster, service: string, version?: string): Promise<Set<number>> {
  const list = await instances(c, service);
  return new Set(list.filter((i) => i.state === 'healthy' && (version === undefined || i.version === version)).map((i) => i.index));
}

async function writeAtomic(path: string, text: string): Promise<void> {
  await writeFile(`${path}.tmp`, text);
  await rename(`${path}.tmp`, path);
}

/** A live workload process (from /proc), with what its environment says about it. */
export interface LiveWorkload {
  readonly pid: number;
  readonly service: string;
  readonly index: number;
  readonly id: string;
  readonly port: number;
  readonly release: string;
  readonly flagDir: string;
}

/** Like liveWorkloads, with each process's instance id, HTTP port, RELEASE and FLAG_DIR. */
export function liveWorkloadDetails(root?: string): Promise<LiveWorkload[]> {
  return workloadScanner(root)();
}

/**
 * A scan of /proc for live workload processes that remembers what it read, for samplers that scan every 100 ms on a
 * loaded machine: a process known to be a workload only has its state re-read (a zombie is gone); one known not to
 * be is skipped, unless it was first seen in the last few seconds (a child the supervisor just forked still shows
 * the agent's command line until it execs the workload).
 */
export function workloadScanner(root?: string): () => Promise<LiveWorkload[]> {
  const known = new Map<number, { readonly w: LiveWorkload | undefined; readonly at: number }>();
  const RECHECK_MS = 5000;
  return async () => {
    const out: LiveWorkload[] = [];
    const now = Date.now();
    const seen = new Set<number>();
    for (const name of await readdir('/proc').catch(() => [] as string[])) {
      if (!/^\d+$/.test(name)) continue;
      const pid = Number(name);
      seen.add(pid);
      try {
        let k = known.get(pid);
        if (k === undefined || (k.w === undefined && now - k.at < RECHECK_MS)) {
          const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8');
          let w: LiveWorkload | undefined;
          if (cmd.includes(WORKLOAD)) {
            const env = (await readFile(`/proc/${pid}/environ`, 'utf8')).split('\0');
            const get = (key: string): string => env.find((e) => e.startsWith(`${key}=`))?.slice(key.length + 1) ?? '';
            w = { pid, service: get('SERVICE_NAME'), index: Number(get('INSTANCE_INDEX')), id: get('INSTANCE_ID'), port: Number(get('PORT_HTTP')), release: get('RELEASE'), flagDir: get('FLAG_DIR') };
          }
          k = { w, at: k?.at ?? now };
          known.set(pid, k);
        }
        const w = k.w;
        if (w === undefined || (root !== undefined && !w.flagDir.startsWith(root))) continue;
        const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
        const st = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
        if (st === 'Z' || st === 'X') continue;
        out.push(w);
      } catch {
        // gone meanwhile
      }
    }
    for (const pid of known.keys()) if (!seen.has(pid)) known.delete(pid);
    return out;
  };
}

/**
 * The indexes of `service` that really serve right now: a live process (from /proc) whose /health answers 200 —
 * what a load balancer would see, whatever the store or the agents believe.
 */
export async function servingIndexes(root: string, service: string, opts: { timeoutMs?: number; scan?: () => Promise<LiveWorkload[]> } = {}): Promise<Set<number>> {
  const timeoutMs = opts.timeoutMs ?? 2000;
  const procs = (await (opts.scan ?? workloadScanner(root))()).filter((p) => p.service === service && Number.isInteger(p.port) && p.port > 0);
  const ok = await Promise.all(
    procs.map(async (p) => {
      try {
        const res = await fetch(`http://127.0.0.1:${p.port}/health`, { signal: AbortSignal.timeout(timeoutMs) });
        await res.arrayBuffer();
        return res.status === 200;
      } catch {
        return false;
      }
    }),
  );
  return new Set(procs.filter((_, i) => ok[i] === true).map((p) => p.index));
}
