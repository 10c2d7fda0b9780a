import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { runCli } from '../helpers/cli.js';
import { deploy, instances, newCluster, op, opJson, startAgent, stopCluster, waitFor, WORKLOAD, workloadSpec, type TestCluster } from '../helpers/services.js';

/**
 * A broken application backplane cannot take the controller down: one agent (embedded store) runs the controller;
 * an object's backplane — a third-party module found on BACKPLANE_PATH — is made to hang, throw and exit by a file
 * it reads, and meanwhile the controller goes on placing another service, the object's error shows in
 * `backplane app`, and once the module behaves again its state comes back.
 */

interface AppJson {
  readonly summary?: string;
  readonly fields: Record<string, string>;
  readonly error?: string;
  readonly discovery: Record<string, string[]>;
  readonly members: { allocId: string }[];
}

describe('a broken backplane and the controller', { timeout: 240_000 }, () => {
  let work: string;
  let c: TestCluster;
  let mode: string;
  const saved = process.env['BACKPLANE_PATH'];

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'bp-isolation-'));
    const mods = join(work, 'mods');
    mode = join(work, 'mode');
    await writeFile(mode, 'ok');
    await mkdir(join(mods, 'flaky'), { recursive: true, mode: 0o755 });
    // Plain JS, as a third party would ship it; it steers itself by a file so the test can break it at will.
    await writeFile(
      join(mods, 'flaky', 'index.mjs'),
      `import { readFileSync } from 'node:fs';
export default {
  kind: 'flaky', description: 'a backplane that misbehaves on request', reactTimeoutMs: 500,
  params: { safeParse: (v) => ({ success: true, data: v }) },
  expand: (o) => [{ name: o.name, count: 1, run: { cmd: [${JSON.stringify(process.execPath)}, ${JSON.stringify(WORKLOAD)}], env: { FLAG_DIR: ${JSON.stringify(work)} } }, resources: { cpu: 0.25, memory: '64M' }, ports: { http: {} },
    actions: { mark: [${JSON.stringify(process.execPath)}, '-e', 'require("fs").writeFileSync(process.argv[1], process.env.ACTION + " " + process.env.ACTION_ID + " " + process.env.INSTANCE_ID)', ${JSON.stringify(join(work, 'marked'))}] } }],
  react: (i) => {
    const m = readFileSync(${JSON.stringify(mode)}, 'utf8').trim();
    if (m === 'hang') for (;;) {}
    if (m === 'throw') throw new Error('flaky is throwing');
    if (m === 'exit') process.exit(7);
    const first = i.members[0];
    const exec = first === undefined ? {} : m === 'evil' ? { [first.allocId]: { action: 'wipe', id: 'e1' } } : { [first.allocId]: { action: 'mark', id: 'm1' } };
    return { exec, status: { summary: 'flaky ok with ' + i.members.length + ' member(s)', fields: { action: first?.action === undefined ? 'none' : first.action.name + ' ' + first.action.id + ' ' + first.action.state } }, discovery: { main: i.members.map((x) => ({ allocId: x.allocId, port: 'http' })) } };
  },
};
`,
      { mode: 0o644 },
    );
    process.env['BACKPLANE_PATH'] = mods;
    c = await newCluster(join(work, 'c'), [], 'default');
    (c.op as string[]).splice(0, c.op.length, '--state-dir', join(c.root, 'state-solo'));
    await startAgent(c, 'solo', { capacity: 'cpu=4,memory=2G' });
  });

  after(async () => {
    if (saved === undefined) delete process.env['BACKPLANE_PATH'];
    else process.env['BACKPLANE_PATH'] = saved;
    await stopCluster(c);
    await rm(work, { recursive: true, force: true });
  });

  test('mistakes in an object are refused with file:line, and nothing is deployed', async () => {
    const r = await deploy(c, 'bad', 'kind: redis\nname: cache\nreplicas: -1\nmemory: lots\n');
    assert.equal(r.code, 2, r.stdout);
    assert.match(r.stderr, /:3:\d+.*replicas/);
    assert.match(r.stderr, /:4:\d+.*"lots" is not a size/);
    const typo = await deploy(c, 'typo', 'kind: rediss\nname: cache\nmemory: 64M\n');
    assert.equal(typo.code, 2);
    assert.match(typo.stderr, /:1:\d+.*no backplane for kind "rediss"/);
    assert.match(typo.stderr, /did you mean "redis"/);
    assert.deepEqual(await opJson<unknown[]>(c, ['apps']), []);
    assert.deepEqual(await opJson<unknown[]>(c, ['services']), []);
    const schema = await runCli(['schema', '--backplane', 'redis']);
    assert.equal(schema.code, 0, schema.stderr);
    const s = JSON.parse(schema.stdout) as { required: string[]; properties: Record<string, unknown> };
    assert.deepEqual(s.required.slice(0, 2), ['kind', 'name']);
    assert.ok('replicas' in s.properties && 'memory' in s.properties);
  });

  test('the object is expanded, placed, and its backplane publishes a discovery entry', async () => {
    const r = await deploy(c, 'f1', 'kind: flaky\nname: f1\n');
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /f1: flaky object, new: f1 \(1 instance\)/);
    const app = await waitFor('f1 ok with its member in discovery', async () => {
      const a = await opJson<AppJson>(c, ['app', 'f1']);
      return a.summary === 'flaky ok with 1 member(s)' && (a.discovery['main']?.length ?? 0) === 1 ? a : undefined;
    });
    assert.equal(app.error, undefined);
  });

  test('its backplane runs an action the spec declares in the member, once; an undeclared one is refused', async () => {
    await waitFor('the action ran and its result came back', async () => (await opJson<AppJson>(c, ['app', 'f1'])).fields['action'] === 'mark m1 ok');
    const [id] = (await instances(c, 'f1')).map((i) => i.id);
    assert.equal(await readFile(join(work, 'marked'), 'utf8'), `mark m1 ${id ?? '?'}`);
    await rm(join(work, 'marked'));
    await writeFile(mode, 'evil');
    await waitFor('the refusal in the events', async () => {
      const ev = await opJson<{ events: { message: string }[] }>(c, ['service', 'f1', '--events', '50']);
      return ev.events.some((e) => /asked to run "wipe" in .*which its spec does not declare: refused/.test(e.message));
    });
    await writeFile(mode, 'ok');
    await sleep(1000);
    assert.equal(existsSync(join(work, 'marked')), false, 'the same action id does not run again');
  });

  for (const [how, pattern] of [
    ['hang', /did not return within 500 ms/],
    ['throw', /flaky is throwing/],
    ['exit', /worker ended/],
  ] as const) {
    test(`a backplane that ${how}s is an error for its object; the controller goes on`, async () => {
      await writeFile(mode, how);
      const a = await waitFor(`f1's error`, async () => {
        const x = await opJson<AppJson>(c, ['app', 'f1']);
        return x.error !== undefined && pattern.test(x.error) ? x : undefined;
      });
      // Its last state stays: the member keeps its discovery entry.
      assert.equal(a.discovery['main']?.length, 1);
      // The controller still places and heals other services meanwhile.
      const name = `web-${how}`;
      assert.equal((await deploy(c, name, workloadSpec(name, 2, work))).code, 0);
      await waitFor(`${name} healthy`, async () => (await instances(c, name)).filter((i) => i.state === 'healthy').length === 2, 60_000);
      assert.equal((await op(c, ['remove', name])).code, 0);
      assert.equal(c.agents.get('solo')?.cli.proc.exitCode, null, 'the agent is alive');
    });
  }

  test('once the module behaves again, its object is back to normal', async () => {
    await writeFile(mode, 'ok');
    await waitFor('f1 back', async () => {
      const a = await opJson<AppJson>(c, ['app', 'f1']);
      return a.error === undefined && a.summary === 'flaky ok with 1 member(s)';
    }, 30_000);
    const r = await op(c, ['app', 'remove', 'f1']);
    assert.equal(r.code, 0, r.stderr);
    await waitFor('f1 gone', async () => (await instances(c, 'f1')).length === 0);
  });
});
