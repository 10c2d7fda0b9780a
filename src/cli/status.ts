import type { Command } from 'commander';
import { join } from 'node:path';
import { API_SOCKET_FILE, type ClientFlags } from '../api/client.js';
import { BackplaneError } from '../errors.js';
import { defaultStateDir } from '../state-dir.js';
import { agentGraph, agentStatus } from '../api/ops/agent.js';
import type { AgentGraph, AgentStatus } from '../api/ops.js';
import { EXIT, print } from './common.js';
import { ago } from './operator.js';
import { apiFlags, outputFlags, printJson, withClient, type OutputFlags } from './output.js';

/**
 * `backplane status`: the local agent (its --state-dir's API socket), or one elsewhere with --api: its graph's
 * resources by state, what failed and why, what is blocked and by what, the latest repairs, its cluster link.
 * Exit 1 when something failed, 0 otherwise (2: no agent answered, or bad flags).
 */

interface StatusFlags extends ClientFlags, OutputFlags {
  graph?: boolean;
  repairs: string;
}

export function registerStatus(program: Command): void {
  apiFlags(outputFlags(program.command('status').description("the local agent: its graph's states, what failed and why, what is blocked, the last repairs, its cluster link (exit 1 when something failed)")))
    .option('--state-dir <dir>', 'the state directory of the agent to ask (its API socket is <dir>/api.sock)')
    .option('--graph', 'also list every resource with its state and when it last changed something')
    .option('--repairs <n>', 'how many of the latest repairs to show', '10')
    .action(async (flags: StatusFlags) => {
      process.exitCode = await withClient({ ...flags, cluster: 'default' }, async (client, json) => {
        const n = Number(flags.repairs);
        if (client.mode === 'direct') {
          throw new BackplaneError('E_USAGE', `no agent answers on ${join(flags.stateDir ?? defaultStateDir(), API_SOCKET_FILE)}`, {
            hint: 'is one running with this --state-dir? (backplane run -f graph.yaml --state-dir DIR); or ask one elsewhere with --api https://host:port',
          });
        }
        const s = await client.call(agentStatus, {});
        const g = flags.graph === true ? await client.call(agentGraph, {}) : undefined;
        if (json) printJson(g === undefined ? s : { ...s, graph: g });
        else printStatus(s, g, Number.isInteger(n) && n >= 0 ? n : 10);
        return s.failed.length > 0 ? EXIT.failed : EXIT.ok;
      });
    });
}

export function printStatus(s: AgentStatus, g: AgentGraph | undefined, repairs: number, now = Date.now()): void {
  const started = Date.parse(s.startedAt);
  print(`host ${s.host}: backplane ${s.version}, up ${Number.isNaN(started) ? '?' : ago(started, now)} (pid ${s.pid})${s.noop ? ', noop' : ''}\n`);
  print(`graph ${s.graphFile}\n`);
  const states = Object.entries(s.byState)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${v} ${k}`);
  print(`resources: ${s.resources}${states.length === 0 ? '' : ` (${states.join(', ')})`}${s.settled ? '' : '; still working'}\n`);
  if (s.failed.length > 0) {
    print(`\nFAILED ${s.failed.length}\n`);
    for (const f of s.failed) print(`  ${f.id}: ${(f.error ?? 'unknown error').replace(/\n/g, '\n    ')}\n`);
  }
  if (s.blocked.length > 0) {
    print(`\nBLOCKED ${s.blocked.length}\n`);
    for (const b of s.blocked) print(`  ${b.id}: waits for ${b.blockedBy ?? 'a resource'}, which did not converge\n`);
  }
  const shown = s.repairs.slice(0, repairs);
  print(`\nlast repairs${shown.length === 0 ? ': none since the agent started' : ''}\n`);
  for (const r of shown) print(`  ${r.id.padEnd(40)} ${ago(r.at, now)} ago\n`);
  const c = s.cluster;
  print(
    `\ncluster: ${c.connected ? `connected to ${c.store ?? 'the store'}` : c.store === undefined ? 'not in a cluster' : `NOT connected to ${c.store}`}` +
      `${c.connected ? (c.leader ? ', controller (leader)' : ', not the controller') : ''}${c.services ? ', runs instances' : ', no service backplane here'}\n`,
  );
  if (g !== undefined) {
    print(`\n${'RESOURCE'.padEnd(40)} ${'STATE'.padEnd(10)} ${'CHANGES'.padStart(7)}  LAST CHANGE\n`);
    for (const v of g.vertices) {
      print(`${v.id.padEnd(40)} ${v.state.padEnd(10)} ${String(v.changes).padStart(7)}  ${v.lastChange === undefined ? '-' : `${ago(v.lastChange, now)} ago`}${v.error === undefined ? '' : `  ${v.error.split('\n')[0] ?? ''}`}\n`);
    }
  }
}
