import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { makeFiles } from '../lib/fileset.js';
import { fmtMs, fmtSeconds } from '../lib/report.js';
import type { LiveResults } from '../lib/results.js';
import { backplaneGraph } from '../tools/backplane.js';
import type { Desired, FileSpec } from '../tools/types.js';
import { startAgent, stopAgent, waitConverged, type Agent } from './agent.js';
import { measureDrift } from './drift.js';
import { measureIdle } from './idle.js';

const CONVERGE_TIMEOUT_MS = 5 * 60_000;

interface Setup {
  readonly dir: string;
  readonly files: FileSpec[];
  readonly graph: string;
  /** The agent's --state-dir: its keys and embedded store stay in the bench's temp dir, not /var/lib/backplane. */
  readonly stateDir: string;
}

/** A graph of `count` files in a fresh directory; the directory is left for the agent to create. */
function setUp(tmp: string, name: string, count: number): Setup {
  const base = join(tmp, 'live', name);
  mkdirSync(base, { recursive: true });
  const dir = join(base, 'target');
  const files = makeFiles(dir, count);
  const graph = join(base, 'graph.yaml');
  const desired: Desired = { dir, files, execs: [] };
  writeFileSync(graph, backplaneGraph(desired));
  return { dir, files, graph, stateDir: join(base, 'state') };
}

/** Runs `body` against a started, converged agent and always stops the agent afterwards. */
async function withAgent<T>(s: Setup, body: (agent: Agent, convergedS: number) => Promise<T>): Promise<T> {
  const agent = startAgent(s.graph, ['--state-dir', s.stateDir]);
  try {
    const convergedS = await waitConverged(agent, s.files, CONVERGE_TIMEOUT_MS);
    return await body(agent, convergedS);
  } finally {
    await stopAgent(agent);
  }
}

export async function measureDriftRepair(tmp: string, samples: number): Promise<NonNullable<LiveResults['drift']>> {
  console.log(`\nDrift repair: agent managing 1,000 files, ${samples} damages`);
  const s = setUp(tmp, 'drift', 1000);
  return withAgent(s, async (_agent, convergedS) => {
    console.log(`  converged ${fmtSeconds(convergedS)} after start`);
    // Let the agent settle after converging, so the first samples do not measure its start-up tail.
    await sleep(500);
    const d = await measureDrift(s.dir, s.files, samples, 20, 10_000);
    console.log(`  median ${fmtMs(d.medianMs)}, p99 ${fmtMs(d.p99Ms)}, max ${fmtMs(d.maxMs)}, not repaired ${d.unrepaired}`);
    return { ...d, files: s.files.length, convergedS };
  });
}

export async function measureIdleCost(tmp: string): Promise<NonNullable<LiveResults['idle']>> {
  console.log('\nIdle cost: agent managing 10,000 files');
  const s = setUp(tmp, 'idle', 10_000);
  const agent = startAgent(s.graph, ['--state-dir', s.stateDir]);
  let stopped = false;
  try {
    const convergedS = await waitConverged(agent, s.files, CONVERGE_TIMEOUT_MS);
    console.log(`  converged ${fmtSeconds(convergedS)} after start`);
    // The steady state: an agent compacts its heap once, about 16 s after it went idle (src/agent/idle-compaction.ts),
    // and a window over that one-time collection measured it (0.5-0.7% of a core) rather than the idle agent (0.1%).
    // Then two seconds more for late timers.
    const deadline = performance.now() + 60_000;
    while (agent.compactedAt === undefined && performance.now() < deadline) await sleep(100);
    if (agent.compactedAt === undefined) console.log('  (no "heap compacted once idle" line within 60 s: measuring anyway)');
    await sleep(2000);
    const idle = await measureIdle(agent.pid, 10);
    const stopS = await stopAgent(agent);
    stopped = true;
    console.log(`  RSS ${idle.rssMiB.toFixed(0)} MiB, CPU ${idle.cpuPercent.toFixed(2)}% of one core, stopped in ${fmtSeconds(stopS)}`);
    return { ...idle, files: s.files.length, convergedS, stopS };
  } finally {
    if (!stopped) await stopAgent(agent);
  }
}
