import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { serveControl, type ControlServer } from '../../src/cluster/control-server.js';
import { EmbeddedStore } from '../../src/cluster/embedded-store.js';
import { generateKeyPair, type KeyPair } from '../../src/cluster/identity.js';
import { keys, parseCmdKey } from '../../src/cluster/keys.js';
import { sealRecord, TrustFiles, trustScope, type TrustView } from '../../src/cluster/trust.js';
import { loadTrust } from '../../src/cli/hosts.js';
import { createLogger } from '../../src/log.js';
import { applyCommand } from '../../src/scheduler/commands.js';
import type { CommandResult, PlanCommand, PlanStep, ServicePlan, SpecRef, StepState } from '../../src/scheduler/plan-types.js';
import { openCommandRecord, unwrapSigned, wrapSigned } from '../../src/scheduler/records.js';
import { runCli, startCli, type CliResult } from '../helpers/cli.js';

/**
 * `backplane plan` and `backplane rollout` against the embedded store, with no agent: this process holds the store
 * and serves it on the control socket as an agent would, writes the plan records a controller would (signed by the
 * approved host h1, with targets that are real operator-signed specs deployed through the CLI), and plays the
 * controller that consumes commands when a test needs one.
 */

const SVC = 'web';
const re = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('backplane plan / rollout (embedded store, no controller)', { timeout: 180_000 }, () => {
  let work: string;
  let stateDir: string;
  let store: EmbeddedStore;
  let server: ControlServer;
  let hostKey: KeyPair;
  let view: TrustView;
  let v1: SpecRef;
  let v2: SpecRef;
  let seq = Date.now();

  const cli = (args: readonly string[], timeoutMs = 30_000): Promise<CliResult> => runCli([...args, '--state-dir', stateDir], { timeoutMs });
  const sign = (key: string, body: string, pair: KeyPair = hostKey): string => wrapSigned('h1', sealRecord(pair, key, ++seq, body));
  const putPlan = (p: ServicePlan, key = keys.plan(SVC)): Promise<unknown> => store.put(key, sign(key, JSON.stringify(p)));
  const cmdKeys = async (): Promise<string[]> => (await store.list(keys.cmdPrefix)).kvs.map((kv) => kv.key);

  async function specRef(version: string): Promise<SpecRef> {
    const file = join(work, `web-${version}.yaml`);
    await writeFile(file, `name: ${SVC}\ncount: 6\nversion: ${version}\nrun: { cmd: [/bin/true] }\n`);
    const r = await cli(['deploy', '-f', file]);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const kv = await store.get(keys.service(SVC));
    const w = kv === undefined ? undefined : unwrapSigned(kv.value);
    assert.ok(w !== undefined);
    // The version is the label plus a hash of the spec (docs/services.md "Versions").
    const body = JSON.parse((JSON.parse(w.record) as { body: string }).body) as { deployedAt: string; spec: { version: string } };
    assert.ok(body.spec.version.startsWith(version), body.spec.version);
    return { version: body.spec.version, record: w.record, by: w.by, deployedAt: body.deployedAt };
  }

  function step(index: number, state: StepState, extra: Partial<PlanStep> = {}): PlanStep {
    return { name: `${SVC}.${index}`, index, action: 'replace', state, since: Date.now() - 12_000, ...extra };
  }

  /** web-4: v1 -> v2, count 6; the canary web.0 healthy and waiting for promote; web.1-5 pending. */
  function plan(over: Partial<ServicePlan> = {}): ServicePlan {
    const now = Date.now();
    return {
      id: `${SVC}-4`,
      seq: 4,
      service: SVC,
      kind: 'update',
      fromVersion: v1.version,
      toVersion: v2.version,
      fromCount: 6,
      toCount: 6,
      target: v2,
      trigger: { deployedAt: v2.deployedAt, version: v2.version },
      stable: v1,
      strategy: { canary: 1, maxParallel: 2, startFirst: false, autoPromote: false, autoRevert: true, minHealthyMs: 10_000, healthyDeadlineMs: 300_000, progressDeadlineMs: 600_000, maxUnavailable: 2 },
      status: 'waiting',
      paused: false,
      promote: 'no',
      createdAt: now - 12_000,
      updatedAt: now,
      lastProgressAt: now - 12_000,
      phases: [
        { name: 'canary', strategy: 'canary: waits for promote', steps: [step(0, 'waiting-operator', { why: 'canary healthy for 12s; waiting for promote', to: { allocId: 'web.0.5e6f7a8b', host: 'h1' } })] },
        { name: 'rollout', strategy: '2 at a time, stop first', steps: [1, 2, 3, 4, 5].map((i) => step(i, 'pending', { why: 'waiting for promote' })) },
      ],
      forced: [],
      restarted: {},
      log: [{ at: now - 12_000, message: 'started (update v1 -> v2)' }],
      commands: [],
      ...over,
    };
  }

  /**
   * Plays the controller once: waits for a command of `web`, checks it as the controller does (operator-signed),
   * and answers with `decide` — by default applyCommand on the current plan, stored with the key's delete in one
   * transaction.
   */
  async function consumeOne(current: ServicePlan, decide?: (cmd: PlanCommand) => { plan: ServicePlan; alsoPut?: [string, ServicePlan] }): Promise<PlanCommand> {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const kv = (await store.list(keys.cmdPrefix)).kvs[0];
      if (kv !== undefined) {
        const where = parseCmdKey(kv.key);
        assert.ok(where !== undefined);
        const r = openCommandRecord(view, where.service, where.id, kv.value);
        assert.ok(r.ok, r.ok ? '' : r.why);
        const out = decide?.(r.value) ?? { plan: applyCommand(current, r.value, Date.now()).plan ?? current };
        const ops = [
          { delete: kv.key },
          { put: keys.plan(SVC), value: sign(keys.plan(SVC), JSON.stringify(out.plan)) },
          ...(out.alsoPut === undefined ? [] : [{ put: out.alsoPut[0], value: sign(out.alsoPut[0], JSON.stringify(out.alsoPut[1])) }]),
        ];
        assert.ok((await store.txn(ops)).ok);
        return r.value;
      }
      if (Date.now() > deadline) throw new Error('no command was written');
      await sleep(50);
    }
  }

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'bp-plan-cli-'));
    stateDir = join(work, 'state-h1');
    const init = await runCli(['cluster', 'init', '--state-dir', stateDir, '--hostname', 'h1']);
    assert.equal(init.code, 0, init.stderr);
    // This process is the "agent": it holds the store, and the CLI reaches it through the control socket.
    store = await EmbeddedStore.open({ dir: join(stateDir, 'store') });
    server = await serveControl(store, stateDir, createLogger({ level: 'silent' }));
    const files = await TrustFiles.open(stateDir, trustScope(false, 'default'));
    hostKey = await files.hostKey();
    const v = await loadTrust(store, files);
    assert.ok(v !== undefined);
    view = v;
    v1 = await specRef('v1');
    v2 = await specRef('v2');
  });

  after(async () => {
    await server?.close();
    await store?.close();
    await rm(work, { recursive: true, force: true });
  });

  beforeEach(async () => {
    await store.delete(keys.schedPrefix, { prefix: true });
  });

  test('no plan: a clear error, exit 1', async () => {
    const r = await cli(['plan', SVC]);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, /service web has no plan yet/);
    assert.match(r.stderr, /is an agent running\?/);
    const other = await cli(['plan', 'nosuch']);
    assert.equal(other.code, 1);
    assert.match(other.stderr, /service nosuch has no plan yet\n.*no service "nosuch" was deployed/);
  });

  test('plan NAME prints the tree: header, strategy, phases and steps with why, log; --json the record', async () => {
    await putPlan(plan());
    const r = await cli(['plan', SVC]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.split('\n');
    assert.match(lines[0] ?? '', new RegExp(`^plan web-4 {2}update ${re(v1.version)} -> ${re(v2.version)} \\(count 6\\) {2}waiting {2}started \\d+s ago$`));
    assert.match(r.stdout, /\n {2}strategy: canary 1 \(waits for promote\), then 2 at a time, stop first; healthy 10s; deadline 5m;/);
    assert.match(r.stdout, new RegExp(`\\n {2}rollback target: ${re(v1.version)} `));
    assert.match(r.stdout, /\n {2}canary {2}\[0 of 1 complete, 1 waiting for operator\]/);
    assert.match(r.stdout, /\n {4}web\.0 {2}replace {2}waiting-operator {2}\d+s +canary healthy for 12s; waiting for promote \(backplane rollout promote web\)\n/);
    assert.match(r.stdout, /\n {2}rollout {2}\[0 of 5 complete\]/);
    assert.match(r.stdout, /\n {4}web\.5 {2}replace {2}pending +waiting for promote\n/);
    assert.match(r.stdout, /\n {2}log:\n {4}\d\d:\d\d:\d\d {2}started \(update v1 -> v2\)\n$/);
    const j = await cli(['plan', SVC, '--json']);
    assert.equal(j.code, 0, j.stderr);
    const doc = JSON.parse(j.stdout) as { plan: ServicePlan };
    assert.equal(doc.plan.id, 'web-4');
    assert.equal(doc.plan.phases[1]?.steps.length, 5);
  });

  test('a forged, unsigned or mis-targeted plan record is refused with why, exit 1', async () => {
    const cases: [string, string][] = [
      [sign(keys.plan(SVC), JSON.stringify(plan()), generateKeyPair()), "the signature is not h1's"],
      [JSON.stringify(plan()), 'not a signed plan'],
      // Signed by an approved host, but its target is not what an operator deployed as v3.
      [sign(keys.plan(SVC), JSON.stringify(plan({ target: { ...v2, version: 'v3' }, toVersion: 'v3' }))), 'its target spec is not version v3'],
      // A plan signed for another key, moved here.
      [sign(keys.plan('api'), JSON.stringify(plan())), "the signature is not h1's"],
    ];
    for (const [value, why] of cases) {
      await store.put(keys.plan(SVC), value);
      const r = await cli(['plan', SVC]);
      assert.equal(r.code, 1, `${why}: ${r.stdout}`);
      assert.equal(r.stdout, '');
      assert.match(r.stderr, new RegExp(`the plan record of web \\(sched/plan/web\\) failed verification: ${why.replace(/[()]/g, '\\$&')}`));
      // Nor is anything steered by it.
      const c = await cli(['rollout', 'promote', SVC]);
      assert.equal(c.code, 1);
      assert.match(c.stderr, /failed verification/);
      assert.deepEqual(await cmdKeys(), []);
    }
  });

  test('--history lists finished plans oldest first, then the current plan', async () => {
    const t = Date.now() - 3_600_000;
    const { fromVersion: _v, fromCount: _c, stable: _s, ...first } = plan({ id: 'web-2', seq: 2, kind: 'deploy', toVersion: v1.version, target: v1, status: 'complete', phases: [], createdAt: t, finishedAt: t + 30_000 });
    await putPlan(first, keys.history(SVC, 2));
    await putPlan(plan({ id: 'web-3', seq: 3, status: 'rolled-back', why: 'web.2 not healthy within 5m; rolled back to v1', phases: [], createdAt: t + 60_000, finishedAt: t + 360_000 }), keys.history(SVC, 3));
    // A forged entry is left out and reported.
    await store.put(keys.history(SVC, 1), sign(keys.history(SVC, 1), JSON.stringify(plan({ id: 'web-1', seq: 1 })), generateKeyPair()));
    await putPlan(plan());
    const r = await cli(['plan', SVC, '--history']);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.split('\n');
    const pad = ' '.repeat(' -> '.length + v2.version.length); // the versions column is as wide as web-3's
    assert.match(lines[0] ?? '', new RegExp(`^web-2 {2}deploy {2}${re(v1.version)}${pad} {2}count 6 {2}complete {5}started .*, finished .*, took 30s$`));
    assert.match(lines[1] ?? '', new RegExp(`^web-3 {2}update {2}${re(v1.version)} -> ${re(v2.version)} {2}count 6 {2}rolled-back {2}started .*, took 5m {2}web\\.2 not healthy within 5m; rolled back to v1$`));
    assert.equal(lines[2], '');
    assert.match(lines[3] ?? '', /^plan web-4 /);
    assert.match(r.stdout, /1 history record failed verification and were left out:\n {2}sched\/history\/web\/0000000001: the signature is not h1's/);
  });

  test('--watch prints a block per change and ends by itself when the plan is finished', async () => {
    const p = plan();
    await putPlan(p);
    const w = startCli(['plan', SVC, '--watch', '--state-dir', stateDir], { timeoutMs: 30_000 });
    let out = '';
    w.proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    const blocks = (): number => out.split('\n').filter((l) => /^plan web-\d+ {2}/.test(l)).length;
    const until = async (n: number): Promise<void> => {
      const deadline = Date.now() + 10_000;
      while (blocks() < n) {
        if (Date.now() > deadline) throw new Error(`${n} blocks expected; stdout:\n${out}\nstderr:\n${w.output()}`);
        await sleep(50);
      }
    };
    await until(1);
    // The canary is promoted: a new block. A write that changes nothing prints nothing.
    const promoted = { ...p, status: 'running' as const, promote: 'done' as const, phases: [{ ...p.phases[0]!, steps: [step(0, 'complete')] }, p.phases[1]!] };
    await putPlan(promoted);
    await until(2);
    assert.match(out, /\n\nplan web-4 {2}update v1\+\w+ -> v2\+\w+ \(count 6\) {2}running/);
    // A newer spec supersedes it (the controller archives web-4 and puts web-5 in its place): the watch follows
    // the service's plan, says so, and goes on until that one is finished.
    const next = plan({ id: 'web-5', seq: 5, status: 'running', log: [] });
    await putPlan(next);
    await until(3);
    assert.match(out, /plan web-4 is over; the service's plan is now web-5\nplan web-5 /);
    await putPlan({ ...next, status: 'complete', finishedAt: Date.now() });
    const r = await w.exited;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(blocks(), 4);
    assert.match(out, /plan web-5 .* complete {2}started/);
  });

  test('--watch stops on Ctrl-C with exit 0; on a finished plan it prints once and returns', async () => {
    await putPlan(plan());
    const w = startCli(['plan', SVC, '--watch', '--state-dir', stateDir], { timeoutMs: 30_000 });
    let out = '';
    w.proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    const deadline = Date.now() + 10_000;
    while (!out.includes('plan web-4')) {
      if (Date.now() > deadline) throw new Error(`no block: ${w.output()}`);
      await sleep(50);
    }
    w.proc.kill('SIGINT');
    const r = await w.exited;
    assert.equal(r.code, 0, r.stderr);
    await putPlan(plan({ status: 'complete', finishedAt: Date.now() }));
    const done = await cli(['plan', SVC, '--watch'], 10_000);
    assert.equal(done.code, 0, done.stderr);
    assert.equal(done.stdout.split('\n').filter((l) => l.startsWith('plan web-')).length, 1);
  });

  test('bad commands are refused with why, exit 1, and write nothing', async () => {
    const cases: [string, ServicePlan | undefined, string[], RegExp][] = [
      ['no plan', undefined, ['rollout', 'pause', SVC], /service web has no plan yet/],
      ['unknown service', plan(), ['rollout', 'pause', 'nosuch'], /service nosuch has no plan yet/],
      ['unknown step', plan(), ['plan', 'restart-step', SVC, 'web.9'], /plan web-4 has no step "web\.9"; its steps: web\.0, web\.1, web\.2, web\.3, web\.4, web\.5/],
      ['step not started', plan(), ['plan', 'restart-step', SVC, 'web.3'], /step web\.3 has not started: nothing to restart/],
      ['step not started (rollout restart-step)', plan(), ['rollout', 'restart-step', SVC, 'web.3'], /step web\.3 has not started: nothing to restart/],
      ['complete step', plan({ phases: [{ name: 'rollout', strategy: '', steps: [step(1, 'complete')] }] }), ['plan', 'force-complete', SVC, 'web.1'], /step web\.1 is already complete/],
      [
        'promote, canary not healthy yet',
        plan({ status: 'running', phases: [{ name: 'canary', strategy: '', steps: [step(0, 'waiting-health')] }] }),
        ['rollout', 'promote', SVC],
        /0 of 1 canaries are healthy and waiting/,
      ],
      ['promote without canaries', plan({ kind: 'scale', status: 'running', phases: [{ name: 'scale', strategy: '', steps: [step(6, 'starting', { action: 'place' })] }] }), ['rollout', 'promote', SVC], /has no canaries to promote/],
      ['promote twice', plan({ promote: 'requested', status: 'running' }), ['rollout', 'promote', SVC], /already being promoted/],
      ['abort twice', plan({ status: 'aborted', finishedAt: Date.now() }), ['rollout', 'abort', SVC], /plan web-4 was already aborted/],
      ['pause a finished plan', plan({ status: 'complete', finishedAt: Date.now() }), ['rollout', 'pause', SVC], /plan web-4 is complete: nothing to pause/],
      ['resume, not paused', plan(), ['rollout', 'resume', SVC], /plan web-4 is not paused/],
    ];
    for (const [what, p, args, message] of cases) {
      await store.delete(keys.plan(SVC));
      if (p !== undefined) await putPlan(p);
      const before = (await store.list('')).revision;
      const r = await cli(args);
      assert.equal(r.code, 1, `${what}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, message, what);
      assert.deepEqual(await cmdKeys(), [], what);
      assert.equal((await store.list('')).revision, before, `${what}: the store is unchanged`);
    }
  });

  test('plan restart-step NAME STEP is the subcommand; plan NAME the view; --service reaches a service named like a subcommand', async () => {
    await putPlan(plan());
    const missing = await cli(['plan', 'restart-step', SVC]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /missing required argument 'step'/);
    assert.deepEqual(await cmdKeys(), []);
    const view = await cli(['plan', SVC]);
    assert.equal(view.code, 0);
    assert.match(view.stdout, /^plan web-4 /);
    const named = await cli(['plan', '--service', 'restart-step']);
    assert.equal(named.code, 1);
    assert.match(named.stderr, /service restart-step has no plan yet/);
    const both = await cli(['plan', SVC, '--service', 'api']);
    assert.equal(both.code, 2);
    assert.match(both.stderr, /two services given/);
    // `help` is no subcommand of plan: it could be a service.
    const help = await cli(['plan', 'help']);
    assert.equal(help.code, 1);
    assert.match(help.stderr, /service help has no plan yet/);
  });

  test('--no-wait writes one operator-signed command for the plan seen, and returns', async () => {
    await putPlan(plan({ status: 'waiting', phases: [{ name: 'rollout', strategy: '', steps: [step(2, 'error', { why: 'not healthy within 5m' })] }] }));
    const r = await cli(['plan', 'restart-step', SVC, 'web.2', '--no-wait']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^web: restart-step web\.2 queued for plan web-4 \(command [0-9a-f]{16}\); follow with `backplane plan web --watch`\n$/);
    const { kvs } = await store.list(keys.cmdPrefix);
    assert.equal(kvs.length, 1);
    const where = parseCmdKey(kvs[0]!.key);
    assert.ok(where !== undefined && /^[0-9a-f]{16}$/.test(where.id));
    const cmd = openCommandRecord(view, SVC, where.id, kvs[0]!.value);
    assert.ok(cmd.ok, cmd.ok ? '' : cmd.why);
    assert.deepEqual({ ...cmd.value, at: '' }, { id: where.id, service: SVC, action: 'restart-step', planId: 'web-4', step: 'web.2', at: '', by: 'h1' });
    assert.equal(unwrapSigned(kvs[0]!.value)?.by, 'h1');
  });

  test('waits for the controller: applied -> its message, exit 0', async () => {
    const p = plan();
    await putPlan(p);
    const run = cli(['rollout', 'promote', SVC]);
    const cmd = await consumeOne(p);
    const r = await run;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `web: promote requested by h1 (plan web-4)\n`);
    assert.equal(cmd.action, 'promote');
    assert.deepEqual(await cmdKeys(), []);
  });

  test('waits for the controller: refused by it (the plan moved on) -> its message, exit 1; --json says so', async () => {
    const p = plan({ status: 'running', paused: false });
    await putPlan(p);
    const run = cli(['rollout', 'pause', SVC, '--json']);
    await consumeOne(p, (cmd) => {
      const result: CommandResult = { id: cmd.id, action: cmd.action, ok: false, message: 'plan web-4 is not the current plan of web (web-5 is)', at: Date.now() };
      return { plan: { ...p, id: 'web-5', seq: 5, commands: [result] } };
    });
    const r = await run;
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, /the controller refused pause: plan web-4 is not the current plan of web \(web-5 is\)/);
    const doc = JSON.parse(r.stdout) as { outcome: string; planId: string; action: string; message: string };
    assert.deepEqual([doc.outcome, doc.planId, doc.action, doc.message], ['refused', 'web-4', 'pause', 'plan web-4 is not the current plan of web (web-5 is)']);
  });

  test('waits for the controller: a result in a plan archived meanwhile counts (abort, then a rollback plan)', async () => {
    const p = plan();
    await putPlan(p);
    const run = cli(['rollout', 'abort', SVC]);
    await consumeOne(p, (cmd) => {
      const aborted = applyCommand(p, cmd, Date.now()).plan;
      assert.ok(aborted !== undefined);
      const rollback = plan({ id: 'web-5', seq: 5, kind: 'rollback', fromVersion: v2.version, toVersion: v1.version, target: v1, status: 'running', log: [] });
      return { plan: rollback, alsoPut: [keys.history(SVC, 4), aborted] };
    });
    const r = await run;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'web: aborted by h1 (plan web-4)\n');
  });

  test('no controller: after --wait it says the command is queued, exit 3, and the command stays', async () => {
    await putPlan(plan({ status: 'running' }));
    const r = await cli(['rollout', 'pause', SVC, '--wait', '1s']);
    assert.equal(r.code, 3, r.stdout + r.stderr);
    assert.match(r.stderr, /^web: pause queued \(command [0-9a-f]{16}\); the controller has not applied it yet — is an agent running\?\n/);
    assert.match(r.stderr, /it stays queued in sched\/cmd\/web\/[0-9a-f]{16}: a controller applies it when it gets to it, if plan web-4 is still current then/);
    assert.equal((await cmdKeys()).length, 1);
  });

  test('a command removed with no result anywhere is reported as not known to be applied, exit 1', async () => {
    await putPlan(plan({ status: 'running' }));
    const run = cli(['rollout', 'pause', SVC, '--wait', '8s']);
    for (let i = 0; (await cmdKeys()).length === 0; i++) {
      assert.ok(i < 300, 'no command was written');
      await sleep(50);
    }
    await store.delete(keys.cmdPrefix, { prefix: true });
    const r = await run;
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, /pause was removed from the store \(sched\/cmd\/web\/[0-9a-f]{16}\) without a result in the plan: it may not have been applied/);
  });
});
