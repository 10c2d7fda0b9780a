import type { Command } from 'commander';
import { clusterProblems, servicesGet, servicesList, servicesRemove, servicesScale, type ServiceGet, type ServiceRow } from '../api/ops/services.js';
import { eventsList } from '../api/ops/events.js';
import { hostsDrain, hostsUndrain, type HostRow } from '../api/ops/hosts.js';
import type { OpClient } from '../api/client.js';
import { clientFlags, type StoreFlags } from './cluster.js';
import { parseIntOption, print } from './common.js';
import { ago, size } from './operator.js';
import { policyText } from './namespace.js';
import { printJson, withClient } from './output.js';
import type { ClientFlags } from '../api/client.js';

/**
 * The operator's view of the service backplane and its levers: `services`, `service NAME`, `scale`, `remove`,
 * `drain`, `undrain`, and the capacity table of `hosts`. Each is an op of the operator API (api/ops/services.ts,
 * hosts.ts) called through the client (the local agent, --api, or the store directly), then printed.
 */

type Flags = StoreFlags & ClientFlags;

export function registerServices(program: Command): void {
  clientFlags(program.command('services').description('every service: version, instances wanted, placed and healthy')).action(async (flags: Flags) => {
    process.exitCode = await withClient(flags, async (client, json) => {
      const rows = await client.call(servicesList, {});
      if (json) return printJson(rows);
      if (rows.length === 0) print('no services (deploy one with `backplane deploy -f spec.yaml`)\n');
      else print(`${'NAME'.padEnd(20)} ${'NAMESPACE'.padEnd(12)} ${'VERSION'.padEnd(14)} ${'WANTED'.padStart(6)} ${'PLACED'.padStart(6)} ${'HEALTHY'.padStart(7)}  ${'DEPLOYED'.padEnd(24)}  PLAN\n`);
      for (const r of rows) {
        print(`${r.name.padEnd(20)} ${r.namespace.padEnd(12)} ${(r.removed ? '(removed)' : r.version).slice(0, 14).padEnd(14)} ${`${r.scaledBy === undefined ? '' : '*'}${r.count}`.padStart(6)} ${String(r.placed).padStart(6)} ${String(r.healthy).padStart(7)}  ${r.deployedAt.padEnd(24)}  ${r.plan ?? '-'}\n`);
      }
      const scaled = rows.filter((r) => r.scaledBy !== undefined);
      if (scaled.length > 0) print('\n');
      for (const r of scaled) print(`* ${r.name}: ${countText(r)}\n`);
      await warnProblems(client);
    });
  });

  clientFlags(program.command('service <name>').description('one service: each instance with its host, version, state, health, restarts and since when; its events'))
    .option('--events <n>', 'how many of its latest events to show', parseIntOption('--events', 0), 20)
    .action(async (name: string, flags: Flags & { events: number }) => {
      process.exitCode = await withClient(flags, async (client, json) => {
        const s = await client.call(servicesGet, { name, events: flags.events });
        if (json) return printJson(s);
        printService(s);
        await warnProblems(client);
      });
    });

  clientFlags(program.command('scale <name> <count>').description('set how many instances a service runs (scaling down stops the newest first)')).action(
    async (name: string, countArg: string, flags: Flags) => {
      process.exitCode = await withClient(flags, async (client, json) => {
        const count = parseIntOption('count', 0)(countArg);
        const r = await client.call(servicesScale, { name, count });
        if (json) return printJson(r);
        print(`${name}: ${r.was} -> ${count} instances${r.was !== r.operatorCount ? ` (it ran ${r.was} as scaled by ${r.scaledBy ?? '?'}; this count replaces that)` : ''}\n`);
      });
    },
  );

  clientFlags(program.command('remove <name>').description('stop every instance of a service and forget it')).action(async (name: string, flags: Flags) => {
    process.exitCode = await withClient(flags, async (client, json) => {
      const r = await client.call(servicesRemove, { name });
      if (json) return printJson(r);
      print(`${name}: removed; its instances are being stopped\n`);
    });
  });

  clientFlags(program.command('events').description("the controller's events, oldest first: placements, failures, reschedules, plan steps"))
    .option('--service <name>', 'only the events of this service')
    .option('--limit <n>', 'how many of the latest to show', parseIntOption('--limit', 0), 50)
    .action(async (flags: Flags & { service?: string; limit: number }) => {
      process.exitCode = await withClient(flags, async (client, json) => {
        const events = await client.call(eventsList, { ...(flags.service === undefined ? {} : { service: flags.service }), limit: flags.limit });
        if (json) return printJson(events);
        if (events.length === 0) print('no events\n');
        for (const e of events) print(`${new Date(e.at).toISOString()}  ${e.service.padEnd(20)} ${e.message}\n`);
      });
    });

  clientFlags(program.command('drain <host>').description("move every instance off a host, within each service's disruption budget"))
    .option('--deadline <duration>', 'after this long, stop whatever is still there without waiting (e.g. 10m)')
    .action(async (host: string, flags: Flags & { deadline?: string }) => {
      process.exitCode = await withClient(flags, async (client, json) => {
        const r = await client.call(hostsDrain, { host, ...(flags.deadline === undefined ? {} : { deadline: flags.deadline }) });
        if (json) return printJson(r);
        print(`${host}: draining${flags.deadline === undefined ? '' : `, deadline in ${flags.deadline}`}; follow with \`backplane hosts\`\n`);
      });
    });

  clientFlags(program.command('undrain <host>').description('let the scheduler place instances on a host again')).action(async (host: string, flags: Flags) => {
    process.exitCode = await withClient(flags, async (client, json) => {
      const r = await client.call(hostsUndrain, { host });
      if (json) return printJson(r);
      print(`${host}: accepting instances again\n`);
    });
  });
}

function printService(s: ServiceGet): void {
  const spec = s.spec;
  print(`service ${s.name}: ${s.removed ? 'removed' : `version ${spec?.version ?? '?'}, ${s.scale?.count ?? 0} wanted`}, deployed ${s.deployedAt ?? '?'} by ${s.by ?? '?'}\n`);
  if (spec !== null && s.scale !== undefined) {
    const b = s.scale.bounds;
    print(`  ${countText({ count: s.scale.count, operatorCount: s.scale.operatorCount, ...(b === null ? {} : { bounds: b }), ...(s.scale.scaledBy === undefined ? {} : { scaledBy: s.scale.scaledBy }), ...(s.scale.reason === undefined ? {} : { scaleReason: s.scale.reason }) })}\n`);
  }
  if (spec !== null) print(`  namespace ${s.namespace}${s.policy === undefined ? '' : `; ${policyText(s.policy, spec.count)}`}\n`);
  if (spec !== null) print(`  each: ${spec.resources.cpu} cpu, ${size(spec.resources.memory)} memory${spec.ports.length === 0 ? '' : `, ports ${spec.ports.map((p) => p.name + (p.static === undefined ? '' : `=${p.static}`)).join(' ')}`}\n`);
  if (s.plan !== undefined) print(`  plan: ${s.plan.summary}${s.plan.why === undefined ? '' : ` - ${s.plan.why}`} (backplane plan ${s.name})\n`);
  print(`\n${'INSTANCE'.padEnd(28)} ${'HOST'.padEnd(16)} ${'VERSION'.padEnd(14)} ${'STATE'.padEnd(10)} ${'RESTARTS'.padStart(8)}  SINCE  PORTS\n`);
  for (const i of s.instances) {
    print(`${i.id.padEnd(28)} ${i.host.padEnd(16)} ${i.version.slice(0, 14).padEnd(14)} ${i.state.padEnd(10)} ${String(i.restarts).padStart(8)}  ${(i.since === undefined ? '-' : ago(i.since)).padEnd(5)}  ${Object.entries(i.ports).map(([k, v]) => `${k}=${v}`).join(' ')}${i.message === undefined ? '' : `\n${' '.repeat(30)}${i.message}`}\n`);
  }
  if (s.events.length > 0) print('\nEVENTS\n');
  for (const e of s.events) print(`  ${new Date(e.at).toISOString()}  ${e.message}\n`);
}

/** "count 4 (scaled by instance worker.0.1a2b3c4d: queue length 40; bounds 1..5; operator's count 2)". */
export function countText(r: Pick<ServiceRow, 'count' | 'operatorCount' | 'bounds' | 'scaledBy' | 'scaleReason'>): string {
  const bounds = r.bounds === undefined ? 'no scale bounds: only the operator changes it' : `bounds ${r.bounds.min}..${r.bounds.max}`;
  if (r.scaledBy === undefined) return `count ${r.count} (the operator's; ${bounds})`;
  return `count ${r.count} (scaled by ${r.scaledBy}${r.scaleReason === undefined ? '' : `: ${r.scaleReason}`}; ${bounds}; operator's count ${r.operatorCount})`;
}

export function printHostRows(rows: readonly HostRow[]): void {
  print(`${'HOST'.padEnd(20)} ${'STATE'.padEnd(9)} ${'CPU (free/cap)'.padEnd(15)} ${'MEMORY (free/cap)'.padEnd(18)} ${'INSTANCES'.padStart(9)}  LABELS\n`);
  for (const r of rows) {
    const st = !r.alive ? 'down' : r.draining ? 'draining' : 'ready';
    print(
      `${r.host.padEnd(20)} ${st.padEnd(9)} ${`${r.free.cpu}/${r.capacity.cpu}`.padEnd(15)} ${`${size(Math.max(0, r.free.memory))}/${size(r.capacity.memory)}`.padEnd(18)} ${String(r.instances).padStart(9)}  ${Object.entries(r.labels).map(([k, v]) => `${k}=${v}`).join(' ')}\n`,
    );
  }
}

/** Records that failed verification, under a text table (never in --output json: scripts get the op's answer). */
async function warnProblems(client: OpClient): Promise<void> {
  const { problems } = await client.call(clusterProblems, {});
  if (problems.length === 0) return;
  print(`\n${problems.length} record${problems.length === 1 ? '' : 's'} in the store failed verification and were ignored:\n`);
  for (const p of problems.slice(0, 10)) print(`  ${p}\n`);
}
