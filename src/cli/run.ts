import { addApiFlags, apiOption, type ApiFlags } from './api-flags.js';
import { VERSION } from '../version.js';
import { Option, type Command } from 'commander';
import { printJson } from './output.js';
import { readFile } from 'node:fs/promises';
import { Agent, type AgentResult } from '../agent/agent.js';
import { parseLabels } from '../agent/graph-source.js';
import { BackplaneError } from '../errors.js';
import { createLogger, useColour, type LogFormat, type LogLevel, type Logger } from '../log.js';
import { parseDuration } from '../util/duration.js';
import { stderrIsTTY } from '../util/stderr.js';
import { gatherFacts } from '../facts.js';
import { parseSize } from '../util/size.js';
import { defaultCapacity } from '../scheduler/capacity.js';
import { followConvergence, stderrProgress, type Progress } from './progress.js';
import { EXIT, checkWritableFile, parseIntOption, parseSecondsOption, reportError } from './common.js';
import { addStoreFlags, etcdConnection, type EtcdConnection, type EtcdFlags } from './etcd-flags.js';

export { splitUrls } from './etcd-flags.js';

interface RunFlags extends EtcdFlags, ApiFlags {
  output?: string;
  file: string;
  convergedTimeout: number;
  noop?: boolean;
  graphviz?: string;
  parallel: number;
  logFormat: string;
  logLevel: string;
  watchGraph: boolean;
  stateDir?: string;
  hostname?: string;
  label: string[];
  leaseTtl: string;
  joinToken?: string;
  joinTokenFile?: string;
  caFingerprint?: string;
  capacity?: string;
  ports?: string;
  fence?: string;
  keepStoppedInstances?: string;
  stoppedInstanceMaxAge?: string;
  services: boolean;
}

const STOP_GRACE_MS = 1500;

/**
 * --keep-stopped-instances and --stopped-instance-max-age; what is not given is the agent's default (DEFAULT_RETENTION
 * in src/agent/instance-gc.ts, not imported here: a run that holds no instances does not load it).
 */
function retentionOption(flags: Pick<RunFlags, 'keepStoppedInstances' | 'stoppedInstanceMaxAge'>): { keep?: number; maxAgeMs?: number } {
  const out: { keep?: number; maxAgeMs?: number } = {};
  const keepText = flags.keepStoppedInstances;
  if (keepText !== undefined) {
    const keep = Number(keepText);
    if (keepText.trim() === '' || !Number.isInteger(keep) || keep < 0)
      throw new BackplaneError('E_USAGE', `--keep-stopped-instances "${keepText}" is not a whole number of at least 0`, { hint: "e.g. --keep-stopped-instances 5 (0 deletes a stopped instance's directory as soon as it is stopped)" });
    out.keep = keep;
  }
  const ageText = flags.stoppedInstanceMaxAge;
  if (ageText !== undefined) {
    const ms = parseDuration(ageText);
    if (ms === undefined) throw new BackplaneError('E_USAGE', `--stopped-instance-max-age "${ageText}" is not a duration`, { hint: 'e.g. --stopped-instance-max-age 24h, 30m or 3600 (seconds)' });
    out.maxAgeMs = ms;
  }
  return out;
}

export function registerRun(program: Command): void {
  // --etcd, --cluster and the etcd TLS and user flags: etcd-flags.ts, shared with `backplane cluster` and `hosts`.
  const run = addStoreFlags(program.command('run'), 'join a cluster through these etcd client URLs (comma-separated); default: embedded store')
    .description('apply a graph and keep it converged, repairing drift as it happens')
    .requiredOption('-f, --file <path>', 'graph file (YAML)')
    .option('--converged-timeout <duration>', 'exit once everything is converged and quiet this long (30s, 500ms, or seconds); -1 = run until stopped', parseSecondsOption('--converged-timeout', 'runs until stopped'), -1)
    .option('--noop', `check everything once, change nothing, print what would change; exit ${EXIT.changesPending} if anything would`)
    .option('--graphviz <file>', 'keep a Graphviz dot file of the graph and each resource state up to date')
    .option('--parallel <n>', 'at most n resources checked/applied at once; 0 = no limit', parseIntOption('--parallel', 0), 0)
    .option('--log-format <format>', 'human or json', 'human')
    .option('--log-level <level>', 'debug, info, warn or error', 'info')
    .option('--no-watch-graph', 'do not reload the graph file when it changes')
    .option('--state-dir <dir>', 'where the agent keeps state across restarts (default /var/lib/backplane as root)')
    .option('--hostname <name>', "this host's name in the cluster (default: the machine's hostname)")
    .option('--lease-ttl <duration>', 'how long after this agent dies the others notice (its lease TTL): 3s, 10s, ...', '3s')
    .option('--join-token <token>', 'join the cluster with a token from `backplane hosts token` (prefer --join-token-file or $BACKPLANE_JOIN_TOKEN: other users can read command lines)')
    .option('--join-token-file <file>', 'read the join token from this file')
    .option('--ca-fingerprint <sha256:...>', "trust the cluster CA with this fingerprint; the host then waits for `backplane hosts approve`")
    .option('--label <key=value>', 'a label published with this host (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--capacity <cpu=N,memory=SIZE>', "what this host offers scheduled services (default: its cpus, and its memory less 10%, at least 256M)")
    .option('--ports <from-to>', 'the range dynamic ports of instances placed here come from (default 20000-32767); give agents sharing one machine ranges of their own')
    .option('--fence <duration>', "how long this host's instances outlive its last confirmed place in the cluster (default: --lease-ttl); the controller replaces them that long (less the TTL) after the host's lease is gone")
    .option('--keep-stopped-instances <n>', "state directories (logs included) of stopped instances kept per service, the most recently written first; 0 keeps none (default 5)")
    .option('--stopped-instance-max-age <duration>', "a stopped instance's state directory not written for this long goes even if it is among the kept ones (default 24h)")
    .option('--no-services', 'do not take part in the service backplane (no controller, no instances here)')
    .addOption(new Option('--output <format>', 'text or json: json prints the run\'s summary as JSON on stdout when it ends (logs stay on stderr)').choices(['text', 'json']));
  addApiFlags(run).action(async (flags: RunFlags) => {
      // Exit explicitly: a graph may leave handles behind (a child a kind failed to reap) that must not keep us up.
      process.exit(await runCommand(flags));
    });
}

async function runCommand(flags: RunFlags): Promise<number> {
  let log: Logger;
  // A one-shot run shows its progress on stderr (a line rewritten in place on a terminal, log lines above it).
  let progress: Progress | undefined;
  try {
    const format = logFormat(flags.logFormat);
    const level = logLevel(flags.logLevel);
    if (flags.convergedTimeout >= 0 && flags.noop !== true && format === 'human' && (level === 'info' || level === 'debug')) progress = stderrProgress();
    const p = progress;
    log = createLogger({ format, level, ...(p === undefined || !stderrIsTTY() ? {} : { write: (line: string) => p.log(line), colour: useColour(process.stderr) }) });
  } catch (err) {
    return reportError(err);
  }
  let labels: Record<string, string>;
  let etcd: EtcdConnection | undefined;
  let capacity: { cpu: number; memory: number } | undefined;
  let fenceMs: number | undefined;
  let retention: { keep?: number; maxAgeMs?: number } = {};
  let ports: { from: number; to: number } | undefined;
  const leaseTtlMs = parseDuration(flags.leaseTtl);
  try {
    labels = parseLabels(flags.label);
    capacity = flags.capacity === undefined ? undefined : parseCapacity(flags.capacity);
    fenceMs = flags.fence === undefined ? undefined : parseDuration(flags.fence);
    if (flags.ports !== undefined) {
      const m = /^(\d{1,5})-(\d{1,5})$/.exec(flags.ports.trim());
      const from = Number(m?.[1]);
      const to = Number(m?.[2]);
      if (m === null || from < 1 || to > 65535 || from > to) throw new BackplaneError('E_USAGE', `--ports "${flags.ports}" is not a port range`, { hint: 'e.g. --ports 21000-21999' });
      ports = { from, to };
    }
    if (flags.fence !== undefined && (fenceMs === undefined || fenceMs < 300)) {
      throw new BackplaneError('E_USAGE', `--fence "${flags.fence}" is not a duration of at least 300ms (the svc fence minimum)`, { hint: "e.g. --fence 3s" });
    }
    retention = retentionOption(flags);
    etcd = etcdConnection(flags);
    if (flags.graphviz !== undefined) checkWritableFile('--graphviz', flags.graphviz);
    if (leaseTtlMs === undefined || leaseTtlMs < 1000)
      throw new BackplaneError('E_USAGE', `--lease-ttl "${flags.leaseTtl}" is not a duration of at least 1s`, { hint: 'e.g. --lease-ttl 5s' });
  } catch (err) {
    return reportError(err);
  }
  let joinToken: string | undefined;
  try {
    joinToken = await readJoinToken(flags);
  } catch (err) {
    return reportError(err);
  }
  let api: Awaited<ReturnType<typeof apiOption>>;
  try {
    api = await apiOption(flags);
  } catch (err) {
    return reportError(err);
  }
  // Metrics only where something can scrape them for long enough to matter: an agent that stays up. A one-shot run
  // (--converged-timeout, --noop) answers `backplane status` on its socket (a run that checks once: from its first
  // second on, Agent.deferApi), but does not load prom-client.
  const oneShot = flags.convergedTimeout >= 0 || flags.noop === true;
  const metrics = api === false || (oneShot && api.tls === undefined) ? undefined : new (await import('../api/metrics.js')).Metrics({ version: VERSION });
  const agent = new Agent({
    api,
    metrics,
    file: flags.file,
    log,
    noop: flags.noop === true,
    parallel: flags.parallel,
    convergedTimeout: flags.convergedTimeout,
    graphviz: flags.graphviz,
    watchGraph: flags.watchGraph,
    stateDir: flags.stateDir,
    hostname: flags.hostname,
    cluster: {
      etcd: etcd?.endpoints ?? [],
      ...(etcd?.tls === undefined ? {} : { etcdTls: etcd.tls }),
      ...(etcd?.auth === undefined ? {} : { etcdAuth: etcd.auth }),
      cluster: flags.cluster,
      labels,
      leaseTtlMs,
      joinToken,
      caFingerprint: flags.caFingerprint,
      capacity,
      ports,
      fenceMs,
      retention,
      // Only an agent that stays up can hold instances; a one-shot or noop run must not be elected controller.
      services: flags.services && flags.convergedTimeout < 0 && flags.noop !== true,
    },
  });

  let signals = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    signals++;
    if (signals > 1) {
      log.warn(`${sig} again: exiting now`);
      process.exit(EXIT.interrupted);
    }
    log.info(`${sig}: stopping (in-flight work is aborted; send it again to exit at once)`);
    void agent.stop();
    // If something refuses to stop, the user still gets their shell back.
    setTimeout(() => {
      log.warn('still stopping after the grace period; exiting');
      process.exit(EXIT.interrupted);
    }, STOP_GRACE_MS * 2).unref();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const stopProgress = progress === undefined ? undefined : followConvergence(agent.engine, progress);
  try {
    const result = await agent.run();
    stopProgress?.();
    await agent.close();
    printSummary(result, flags.noop === true, log);
    if (flags.output === 'json') printJson(summaryJson(result));
    if (result.reason === 'stopped') return EXIT.ok;
    if (!result.summary.ok) return EXIT.failed;
    return flags.noop === true && result.summary.wouldChange.length > 0 ? EXIT.changesPending : EXIT.ok;
  } catch (err) {
    stopProgress?.();
    await agent.close().catch(() => undefined);
    return reportError(err);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** `run --output json`: how the run ended, each failed and blocked resource with why, what noop would change. */
function summaryJson(result: AgentResult): object {
  const s = result.summary;
  return {
    reason: result.reason,
    ok: s.ok,
    converged: s.converged,
    failed: s.failed.map((f) => ({ id: f.id, ...(f.error === undefined ? {} : { error: f.error }) })),
    blocked: s.blocked.map((b) => ({ id: b.id, ...(b.blockedBy === undefined ? {} : { blockedBy: b.blockedBy }) })),
    wouldChange: s.wouldChange.map((w) => w.id),
  };
}

function printSummary(result: AgentResult, noop: boolean, log: Logger): void {
  const s = result.summary;
  for (const f of s.failed) log.error(`${f.id} failed: ${f.error ?? 'unknown error'}`);
  for (const b of s.blocked) log.error(`${b.id} not applied: it depends on ${b.blockedBy ?? 'a resource'} which did not converge`);
  if (noop) {
    const n = s.wouldChange.length;
    log.info(`noop: ${n} resource${n === 1 ? '' : 's'} would change${n === 0 ? '' : `: ${s.wouldChange.map((w) => w.id).join(', ')}`}`);
    for (const r of result.wouldRefresh) log.info(`noop: ${r.id} would be refreshed (notified by ${r.by})`);
  }
  if (!s.ok) log.error(`${s.failed.length} failed, ${s.blocked.length} blocked, ${s.converged} converged`);
}

/** The join token from --join-token, --join-token-file or $BACKPLANE_JOIN_TOKEN (in that order). */
async function readJoinToken(flags: RunFlags): Promise<string | undefined> {
  if (flags.joinToken !== undefined) return flags.joinToken;
  if (flags.joinTokenFile !== undefined) {
    try {
      return (await readFile(flags.joinTokenFile, 'utf8')).trim();
    } catch (err) {
      throw new BackplaneError('E_USAGE', `cannot read --join-token-file ${flags.joinTokenFile}: ${(err as Error).message}`, { cause: err });
    }
  }
  const env = process.env['BACKPLANE_JOIN_TOKEN'];
  return env === undefined || env === '' ? undefined : env;
}

/** `cpu=4,memory=8G` (either may be left out: it then defaults from the host). */
export function parseCapacity(text: string): { cpu: number; memory: number } {
  const facts = gatherFacts();
  const def = defaultCapacity(facts.cpus, facts.memory.total);
  let cpu = def.cpu;
  let memory = def.memory;
  for (const part of text.split(',')) {
    const [k, v] = part.split('=', 2).map((x) => x.trim());
    const bad = (why: string): never => {
      throw new BackplaneError('E_USAGE', `--capacity "${text}": ${why}`, { hint: 'e.g. --capacity cpu=4,memory=8G (cpu in cores, memory with a unit)' });
    };
    if (k === undefined || v === undefined || v === '') return bad(`"${part}" is not key=value`);
    if (k === 'cpu') {
      const n = v.endsWith('m') ? Number(v.slice(0, -1)) / 1000 : Number(v);
      if (!Number.isFinite(n) || n < 0) bad(`cpu "${v}" is not a number of cores`);
      cpu = n;
    } else if (k === 'memory') {
      const n = parseSize(v);
      if (n === undefined) bad(`memory "${v}" is not a size`);
      memory = n ?? 0;
    } else bad(`unknown resource "${k}" (cpu and memory are known)`);
  }
  return { cpu, memory };
}

function logFormat(v: string): LogFormat {
  if (v === 'human' || v === 'json') return v;
  throw new BackplaneError('E_USAGE', `unknown --log-format "${v}"`, { hint: 'use human or json' });
}

function logLevel(v: string): LogLevel {
  if (v === 'debug' || v === 'info' || v === 'warn' || v === 'error' || v === 'silent') return v;
  throw new BackplaneError('E_USAGE', `unknown --log-level "${v}"`, { hint: 'use debug, info, warn or error' });
}
