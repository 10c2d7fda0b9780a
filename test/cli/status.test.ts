import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { agentStatusSchema } from '../../src/api/ops.js';
import { runCli, startCli, type RunningCli } from '../helpers/cli.js';

/**
 * `backplane status` asks the local agent (through its API socket in --state-dir): a real agent on a graph with a
 * resource that fails and one blocked behind it.
 */

describe('backplane status', { timeout: 120_000 }, () => {
  let dir: string;
  let stateDir: string;
  let agent: RunningCli;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bp-status-'));
    stateDir = join(dir, 'state');
    const graph = join(dir, 'g.yaml');
    await writeFile(
      graph,
      `resources:
  - kind: file
    name: ${join(dir, 'ok.txt')}
    content: ok
  - kind: file
    name: /nonexistent-bp-status/sub/x.txt
    content: never
  - kind: file
    name: ${join(dir, 'after.txt')}
    content: after
    require: ["file[/nonexistent-bp-status/sub/x.txt]"]
`,
    );
    agent = startCli(['run', '-f', graph, '--state-dir', stateDir, '--hostname', 'st1', '--no-services'], { timeoutMs: 120_000 });
    await agent.waitFor(/failed/, 30_000);
  });

  after(async () => {
    agent.proc.kill('SIGTERM');
    await agent.exited;
    await rm(dir, { recursive: true, force: true });
  });

  test('shows the failed resource and why, what it blocks, the repairs; exit 1', async () => {
    const r = await runCli(['status', '--state-dir', stateDir]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stdout, /^host st1: backplane \S+, up \S+ \(pid \d+\)/);
    assert.match(r.stdout, /resources: 3 \(1 blocked, 1 converged, 1 failed\)/);
    assert.match(r.stdout, /FAILED 1\n {2}file\[\/nonexistent-bp-status\/sub\/x\.txt\]: parent directory \/nonexistent-bp-status\/sub does not exist/);
    assert.match(r.stdout, new RegExp(`BLOCKED 1\\n {2}file\\[${join(dir, 'after.txt').replace(/[/.]/g, '\\$&')}\\]: waits for file\\[/nonexistent-bp-status/sub/x\\.txt\\]`));
    assert.match(r.stdout, new RegExp(`last repairs\\n {2}file\\[${join(dir, 'ok.txt').replace(/[/.]/g, '\\$&')}\\] +\\d+s ago`));
    assert.match(r.stdout, /cluster: /);
  });

  test('--output json is the agent.status answer, and --graph adds every resource', async () => {
    const r = await runCli(['status', '--state-dir', stateDir, '--output', 'json', '--graph']);
    assert.equal(r.code, 1, r.stderr);
    const s = JSON.parse(r.stdout) as { graph: { vertices: { id: string; state: string }[] } };
    const parsed = agentStatusSchema.parse(s);
    assert.equal(parsed.host, 'st1');
    assert.deepEqual(parsed.failed.map((f) => f.id), ['file[/nonexistent-bp-status/sub/x.txt]']);
    assert.match(parsed.failed[0]?.error ?? '', /does not exist/);
    assert.equal(s.graph.vertices.length, 3);
    const text = await runCli(['status', '--state-dir', stateDir, '--graph']);
    assert.match(text.stdout, /RESOURCE +STATE +CHANGES +LAST CHANGE\n/);
  });

  test('--json is the same as --output json', async () => {
    const r = await runCli(['status', '--state-dir', stateDir, '--json']);
    assert.equal(agentStatusSchema.parse(JSON.parse(r.stdout)).host, 'st1');
  });

  test('no agent on the state dir: exit 2, and it says where it looked', async () => {
    const r = await runCli(['status', '--state-dir', join(dir, 'nobody')]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /no agent answers on .*nobody\/api\.sock/);
  });
});
