import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { hostRowSchema, trustSchema } from '../../src/api/ops/hosts.js';
import { planDocSchema, commandOutcomeSchema } from '../../src/api/ops/plans.js';
import { serviceGetSchema, serviceRowSchema } from '../../src/api/ops/services.js';
import { deployOutput } from '../../src/api/ops/deploy.js';
import { appViewSchema } from '../../src/api/ops/apps.js';
import { eventSchema } from '../../src/api/ops/events.js';
import type { z } from 'zod';
import { deploy, newCluster, op, startAgent, stopCluster, waitFor, workloadSpec, type TestCluster } from '../helpers/services.js';

/**
 * Every converted command on one machine with the embedded store while its agent runs: each goes through the agent's
 * API socket (its audit log records the changes: the proof they did not go around it), keeps its text, and with
 * `--output json` prints the op's answer, which the op's own output schema accepts.
 */

describe('the CLI through the local agent API', { timeout: 300_000 }, () => {
  let work: string;
  let c: TestCluster;
  let stateDir: string;
  let flags: string;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'bp-api-cli-'));
    c = await newCluster(join(work, 'c'), [], 'default');
    stateDir = join(c.root, 'state-solo');
    (c.op as string[]).splice(0, c.op.length, '--state-dir', stateDir);
    flags = join(c.root, 'flags');
    await mkdir(flags, { recursive: true });
    await startAgent(c, 'solo', { capacity: 'cpu=4,memory=1G' });
  });

  after(async () => {
    await stopCluster(c);
    await rm(work, { recursive: true, force: true });
  });

  async function json<T>(args: readonly string[], schema: z.ZodType<T>, output: '--json' | '--output json' = '--output json'): Promise<T> {
    const r = await op(c, [...args, ...output.split(' ')]);
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    return schema.parse(JSON.parse(r.stdout));
  }

  test('deploy --wait: progress lines (not a terminal) only when the numbers change, then the result', async () => {
    const r = await deploy(c, 'web', workloadSpec('web', 2, flags), ['--wait', '60s']);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /web: deployed version \S+, 2 instances\n/);
    assert.match(r.stdout, /all healthy\n$/);
    const lines = r.stderr.split('\n').filter((l) => l.startsWith('instances '));
    assert.ok(lines.length >= 1, r.stderr);
    assert.equal(lines.at(-1), 'instances 2/2 healthy of wanted');
    for (let i = 1; i < lines.length; i++) assert.notEqual(lines[i], lines[i - 1]);
    assert.doesNotMatch(r.stderr, /\r/);
  });

  test('deploy --dry-run --output json is the services.deploy answer', async () => {
    const r = await deploy(c, 'api', workloadSpec('api', 1, flags), ['--dry-run', '--output', 'json']);
    assert.equal(r.code, 0, r.stderr);
    const out = deployOutput.parse(JSON.parse(r.stdout));
    assert.equal(out.dryRun, true);
    assert.deepEqual(out.services.map((s) => [s.name, s.outcome, s.place.length]), [['api', 'dry-run', 1]]);
  });

  test('services, service, hosts, hosts list, plan, events, apps: text and --output json (and --json)', async () => {
    const rows = await json(['services'], serviceRowSchema.array());
    assert.deepEqual(rows.map((r) => [r.name, r.count, r.healthy]), [['web', 2, 2]]);
    assert.deepEqual(await json(['services'], serviceRowSchema.array(), '--json'), rows);
    assert.match((await op(c, ['services'])).stdout, /^NAME +(NAMESPACE +)?VERSION +WANTED +PLACED +HEALTHY/);
    const svc = await json(['service', 'web'], serviceGetSchema);
    assert.equal(svc.instances.length, 2);
    assert.match((await op(c, ['service', 'web'])).stdout, /^service web: version \S+, 2 wanted, deployed .* by solo\n/);
    const hosts = await json(['hosts'], hostRowSchema.array());
    assert.deepEqual(hosts.map((h) => [h.host, h.instances]), [['solo', 2]]);
    const trust = await json(['hosts', 'list'], trustSchema);
    assert.deepEqual(trust.hosts.map((h) => [h.host, h.state, h.operator]), [['solo', 'approved', true]]);
    const plan = await json(['plan', 'web'], planDocSchema);
    assert.equal(plan.plan.service, 'web');
    assert.match((await op(c, ['plan', 'web'])).stdout, /^plan web-1 +deploy/);
    const events = await json(['events', '--service', 'web'], eventSchema.array());
    assert.ok(events.some((e) => /placed web\.0/.test(e.message)));
    assert.deepEqual(await json(['apps'], appViewSchema.array()), []);
  });

  test('scale, a refused rollout command, drain, undrain, remove: through the API (its audit log has them)', async () => {
    const scale = await op(c, ['scale', 'web', '3']);
    assert.equal(scale.code, 0, scale.stderr);
    assert.equal(scale.stdout, 'web: 2 -> 3 instances\n');
    const refused = await op(c, ['plan', 'restart-step', 'web', 'web.99', '--output', 'json']);
    assert.equal(refused.code, 1, refused.stderr);
    assert.equal(refused.stdout, '');
    assert.match(refused.stderr, /^error: .*web\.99/);
    const drain = await op(c, ['drain', 'solo', '--output', 'json']);
    assert.equal(drain.code, 0, drain.stderr);
    assert.deepEqual(JSON.parse(drain.stdout), { host: 'solo', draining: true });
    await waitFor('solo draining', async () => (await json(['hosts'], hostRowSchema.array()))[0]?.draining === true);
    assert.equal((await op(c, ['undrain', 'solo'])).stdout, 'solo: accepting instances again\n');
    const queued = await op(c, ['rollout', 'pause', 'nope']);
    assert.equal(queued.code, 1);
    const removed = await op(c, ['remove', 'web', '--output', 'json']);
    assert.deepEqual(JSON.parse(removed.stdout), { name: 'web', removed: true });
    const audit = (await readFile(join(stateDir, 'audit.log'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { op: string; outcome: string; via: string; input: { files?: unknown } });
    const ops = audit.map((a) => `${a.op}:${a.outcome}`);
    for (const o of ['services.deploy:ok', 'services.scale:ok', 'hosts.drain:ok', 'hosts.undrain:ok', 'services.remove:ok']) assert.ok(ops.includes(o), `${o} not in ${ops.join(', ')}`);
    assert.ok(audit.every((a) => a.via === 'socket'));
    // The deploy files' text stays out of the audit log.
    assert.equal(audit.find((a) => a.op === 'services.deploy')?.input.files, '(redacted)');
  });

  test('a plan command as JSON: the plans.command answer', async () => {
    const r = await deploy(c, 'slow', workloadSpec('slow', 1, flags));
    assert.equal(r.code, 0, r.stderr);
    await waitFor('a plan for slow', async () => (await op(c, ['plan', 'slow'])).code === 0, 30_000);
    const cmd = await op(c, ['rollout', 'abort', 'slow', '--no-wait', '--output', 'json']);
    if (cmd.code === 0) {
      const out = commandOutcomeSchema.parse(JSON.parse(cmd.stdout));
      assert.equal(out.outcome, 'queued');
    } else {
      // The plan finished first: the check refuses it, exit 1, the store unchanged.
      assert.equal(cmd.code, 1, cmd.stderr);
    }
  });
});
