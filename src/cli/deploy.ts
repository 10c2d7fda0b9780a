import type { Command } from 'commander';
import { resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ClientFlags, OpClient } from '../api/client.js';
import { servicesDeploy, type DeployOutput, type DeployService } from '../api/ops/deploy.js';
import { servicesProgress, type ServiceProgress } from '../api/ops/services.js';
import { BackplaneError } from '../errors.js';
import { readGraphText } from '../frontends/limits.js';
import { isModuleGraph } from '../frontends/typescript.js';
import { parseDuration } from '../util/duration.js';
import { terminalSafe } from '../util/terminal.js';
import { clientFlags, type StoreFlags } from './cluster.js';
import { print } from './common.js';
import { printJson, withClient } from './output.js';
import { stderrProgress, type Progress } from './progress.js';

interface DeployFlags extends StoreFlags, ClientFlags {
  file: string;
  dryRun?: boolean;
  wait?: string | boolean;
}

/**
 * `backplane deploy -f web.yaml`: the `services.deploy` op (api/ops/deploy.ts) validates the spec (every error with
 * its file:line; nothing is written unless all of it is valid), says what the controller would do with it, and
 * writes it signed by the host that runs the op. The file is read here and sent as text (a TS/JS module is evaluated
 * here and sent as what it evaluated to). `--wait` then follows `services.progress` until every instance of the new
 * version is healthy, with a progress line on a terminal.
 */
export function registerDeploy(program: Command): void {
  clientFlags(program.command('deploy').description('declare or change services: the cluster places, runs and heals their instances'))
    .requiredOption('-f, --file <path>', 'service spec (YAML, or a TypeScript module)')
    .option('--dry-run', 'print what would change (instances to start, stop, move or replace, and where) and change nothing')
    .option('--wait [timeout]', 'wait until every instance of the new version is healthy (default timeout 5m); shows instances healthy of wanted')
    .action(async (flags: DeployFlags) => {
      let infeasible = false;
      const code = await withClient(flags, async (client, json) => {
        const timeoutMs = flags.wait === undefined || flags.wait === false ? undefined : flags.wait === true ? 300_000 : parseDuration(flags.wait);
        if (flags.wait !== undefined && flags.wait !== false && timeoutMs === undefined) throw new BackplaneError('E_USAGE', `--wait "${String(flags.wait)}" is not a duration`, { hint: 'e.g. --wait 60s' });
        const file = resolve(flags.file);
        const entry = isModuleGraph(file) ? { name: file, data: await (await import('../scheduler/spec.js')).evaluateModule(file) } : { name: file, text: await readGraphText(file) };
        const out = await client.call(servicesDeploy, { files: [entry], ...(flags.dryRun === true ? { dryRun: true } : {}) });
        infeasible = out.infeasible;
        if (json) printJson(out);
        else printDeploy(out);
        if (out.dryRun || timeoutMs === undefined) return;
        await waitHealthy(client, out.services, timeoutMs, json);
      });
      // A dry run that finds instances it cannot place exits 1, so a pipeline can stop before deploying.
      process.exitCode = code === 0 && infeasible && flags.dryRun === true ? 1 : code;
    });
}

function printDeploy(out: DeployOutput): void {
  for (const o of out.objects) {
    print(`${o.name}: ${o.kind} object${o.status === 'unchanged' ? ', unchanged' : `, ${o.status}`}: ${o.services.map((x) => `${x.name} (${x.count} instance${x.count === 1 ? '' : 's'})`).join(', ')}\n`);
  }
  for (const s of out.services) {
    printPlan(s);
    if (s.outcome === 'unchanged') print(`${s.name}: unchanged (version ${s.version})\n`);
    else if (s.outcome === 'deployed') print(`${s.name}: deployed version ${s.version}, ${s.count} instance${s.count === 1 ? '' : 's'}${s.current === undefined ? '' : ` (was ${s.current.version}, ${s.current.count})`}\n`);
  }
  if (out.dryRun) print('dry run: nothing was changed\n');
}

function printPlan(s: DeployService): void {
  const versions = s.current === undefined ? 'new service' : s.from === s.version ? `version ${s.version}` : `version ${s.from ?? '?'} -> ${s.version}`;
  print(`${s.name}: ${versions}, count ${s.current?.count ?? 0} -> ${s.count} (${s.running} placed now)\n`);
  for (const p of s.place) {
    const from = p.instead === undefined ? '' : ` (instead of ${p.instead}${p.insteadHost === undefined ? '' : ` on ${p.insteadHost}`})`;
    print(`  ${p.verb.padEnd(20)} ${p.instance} on ${p.host}${from}\n`);
  }
  for (const st of s.stop) print(`  ${'stop'.padEnd(20)} ${st.allocId} on ${st.host}: ${st.reason}\n`);
  for (const i of s.infeasible) print(`  CANNOT PLACE: ${i}\n`);
  for (const w of s.warnings) print(`  warning: ${w}\n`);
  const sp = s.plan;
  if (sp !== undefined) {
    print(`  plan: ${sp.kind}${sp.fromVersion === undefined || sp.kind === 'deploy' ? '' : ` ${sp.fromVersion} ->`} ${sp.toVersion}; ${sp.autoRevert ? 'rolls back by itself if it fails' : 'auto-revert off'}\n`);
    for (const ph of sp.phases) print(`    ${ph.name}: ${ph.steps} step${ph.steps === 1 ? '' : 's'}, ${ph.strategy}\n`);
  }
  if (s.place.length === 0 && s.stop.length === 0 && s.infeasible.length === 0) print('  no change to instances now\n');
}

/** "instances 3/5 healthy of wanted (web 2/3, api 1/2)". */
export function progressLine(all: readonly ServiceProgress[]): string {
  const healthy = all.reduce((n, p) => n + Math.min(p.healthy, p.wanted), 0);
  const wanted = all.reduce((n, p) => n + p.wanted, 0);
  const each = all.length > 1 ? ` (${all.map((p) => `${p.name} ${p.healthy}/${p.wanted}`).join(', ')})` : '';
  return `instances ${healthy}/${wanted} healthy of wanted${each}`;
}

/**
 * Waits until each deployed service's plan is complete (every instance on the new version, healthy for minHealthy,
 * the old ones stopped), or, before the controller has made a plan, until every instance runs it healthy. Ends early,
 * with an error, when a plan failed (rolled back, or waiting for the operator after a failed step), and with success
 * when healthy canaries wait for promote (there is nothing more to wait for without the operator).
 */
async function waitHealthy(client: OpClient, services: readonly DeployService[], timeoutMs: number, json: boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const promotable = new Set<string>();
  const progress: Progress = stderrProgress();
  try {
    for (;;) {
      const all = await Promise.all(services.map((s) => client.call(servicesProgress, { name: s.name, version: s.version, ...(s.deployedAt === undefined ? {} : { deployedAt: s.deployedAt }) })));
      progress.update(progressLine(all));
      const missing: string[] = [];
      for (const p of all) {
        if (p.state === 'failed') throw new BackplaneError('E_APPLY', `${p.name}: ${p.message ?? 'failed'}`, p.hint === undefined ? {} : { hint: p.hint });
        if (p.state === 'promote') {
          if (!promotable.has(p.name) && !json) note(progress, `${p.name}: ${p.message ?? 'waiting for promote'}\n`);
          promotable.add(p.name);
        } else if (p.state === 'waiting') missing.push(`${p.name}: ${p.message ?? `${p.healthy} of ${p.wanted} healthy`}`);
      }
      if (missing.length === 0) {
        progress.done();
        if (!json) print(promotable.size === services.length ? 'canaries healthy; the rest waits for promote\n' : promotable.size > 0 ? 'all healthy, except what waits for promote\n' : 'all healthy\n');
        return;
      }
      if (Date.now() > deadline) throw new BackplaneError('E_TIMEOUT', `not healthy within ${Math.round(timeoutMs / 1000)}s: ${missing.join('; ')}`, { hint: 'see `backplane service NAME` for each instance and its events' });
      await sleep(200);
    }
  } finally {
    progress.done();
  }
}

/** A line of the result on stdout; on a terminal above the progress line (on stderr, the same terminal). */
function note(progress: Progress, text: string): void {
  if (process.stderr.isTTY && process.stdout.isTTY) progress.log(terminalSafe(text));
  else print(text);
}
