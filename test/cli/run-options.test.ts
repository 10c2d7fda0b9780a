import assert from 'node:assert/strict';
import { readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { until, withTempDir } from '../helpers/engine.js';
import { runCli, startCli, type RunningCli } from '../helpers/cli.js';

/** `timer`, `print`, `--parallel`, `--no-watch-graph`, the embedded store through `run`, and TypeScript graphs. */

const content = (p: string): Promise<string> => readFile(p, 'utf8').catch(() => '<missing>');
const lines = async (p: string): Promise<string[]> => (await content(p)).split('\n').filter((l) => l !== '' && l !== '<missing>');

async function stop(agent: RunningCli): Promise<void> {
  agent.proc.kill('SIGTERM');
  await agent.exited;
}

/** Writes the way an editor that saves atomically does: the agent never reads half a file. */
async function save(path: string, text: string): Promise<void> {
  await writeFile(`${path}.tmp`, text);
  await rename(`${path}.tmp`, path);
}

describe('run: timer and print (real processes)', () => {
  test('a timer ticks every interval, not faster; each tick refreshes what it notifies; print logs its message', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      const ticks = join(dir, 'ticks');
      await writeFile(
        graph,
        `resources:
  - { kind: timer, name: t, interval: 300ms, notify: ["exec[tick]", "print[p]"] }
  - { kind: exec, name: tick, cmd: ["sh", "-c", "echo x >> ${ticks}"], refreshOnly: true }
  - { kind: print, name: p, msg: "the timer went off" }
`,
      );
      const agent = startCli(['run', '--file', graph, '--state-dir', join(dir, 'state')]);
      try {
        await agent.waitFor(/converged: 3 of 3/);
        const t0 = performance.now();
        // refreshOnly: nothing ran before the first tick.
        assert.deepEqual(await lines(ticks), []);
        assert.match(agent.output(), /print\[p\]: the timer went off$/m);
        await until(async () => (await lines(ticks)).length >= 4, 15_000, 'four ticks');
        const ms = performance.now() - t0;
        // Four ticks need four intervals; a timer that ticked on every check would be far quicker.
        assert.ok(ms >= 4 * 300 - 50, `four ticks after ${ms.toFixed(0)} ms: faster than the 300 ms interval`);
        assert.match(agent.output(), /timer\[t\]: tick/);
        assert.match(agent.output(), /print\[p\]: the timer went off \(refreshed\)/);
      } finally {
        await stop(agent);
      }
    });
  });
});

describe("run: how long stopped instances' state directories are kept", () => {
  test('--keep-stopped-instances and --stopped-instance-max-age: a bad value is refused with what to write, before anything runs', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      const marker = join(dir, 'ran');
      await writeFile(graph, `resources:\n  - { kind: file, name: ${marker}, content: "x" }\n`);
      const base = ['run', '--file', graph, '--converged-timeout', '0', '--no-api', '--state-dir', join(dir, 'state')];
      for (const [flags, message] of [
        [['--keep-stopped-instances', '-1'], /--keep-stopped-instances "-1" is not a whole number of at least 0/],
        [['--keep-stopped-instances', 'all'], /--keep-stopped-instances "all" is not a whole number/],
        [['--stopped-instance-max-age', 'a day'], /--stopped-instance-max-age "a day" is not a duration[\s\S]*e\.g\. --stopped-instance-max-age 24h/],
      ] as const) {
        const r = await runCli([...base, ...flags]);
        assert.equal(r.code, 2, r.stderr);
        assert.match(r.stderr, message);
        assert.equal(await content(marker), '<missing>', 'nothing was applied');
      }
      const ok = await runCli([...base, '--keep-stopped-instances', '0', '--stopped-instance-max-age', '30m']);
      assert.equal(ok.code, 0, ok.stderr);
      assert.equal(await content(marker), 'x');
    });
  });
});

describe('run: --parallel and --no-watch-graph (real processes)', () => {
  test('--parallel 2 runs at most two of six independent execs at once, and does run two', async () => {
    await withTempDir(async (dir) => {
      const log = join(dir, 'log');
      const execs = [1, 2, 3, 4, 5, 6]
        .map((n) => `  - { kind: exec, name: e${n}, cmd: ["sh", "-c", "echo start >> ${log}; sleep 0.3; echo end >> ${log}"] }`)
        .join('\n');
      const graph = join(dir, 'graph.yaml');
      await writeFile(graph, `resources:\n${execs}\n`);
      const r = await runCli(['run', '--file', graph, '--parallel', '2', '--converged-timeout', '0', '--state-dir', join(dir, 'state')]);
      assert.equal(r.code, 0, r.stderr);
      // O_APPEND lines from sh arrive in the order they happened: count how many are between start and end.
      let now = 0;
      let most = 0;
      for (const l of await lines(log)) {
        now += l === 'start' ? 1 : -1;
        most = Math.max(most, now);
      }
      assert.equal(now, 0);
      assert.equal(most, 2, `at most ${most} execs ran at once`);
    });
  });

  test('--no-watch-graph: an edit of the graph is not picked up, while drift is still repaired', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      await writeFile(graph, `resources:\n  - { kind: file, name: ${dir}/a, content: "a\\n" }\n`);
      const agent = startCli(['run', '--file', graph, '--no-watch-graph', '--state-dir', join(dir, 'state')]);
      try {
        await agent.waitFor(/converged: 1 of 1/);
        await save(graph, `resources:\n  - { kind: file, name: ${dir}/a, content: "a\\n" }\n  - { kind: file, name: ${dir}/b, content: "b\\n" }\n`);
        // The agent is alive and reacting: a deletion after the edit is repaired...
        await sleep(300);
        await rm(join(dir, 'a'));
        await until(async () => (await content(join(dir, 'a'))) === 'a\n', 5000, 'a repaired');
        // ...and a watched graph is swapped within milliseconds, so a second more is plenty.
        await sleep(1000);
        assert.equal(await content(join(dir, 'b')), '<missing>', 'the edited graph was loaded');
        assert.doesNotMatch(agent.output(), /graph swapped/);
      } finally {
        await stop(agent);
      }
    });
  });
});

describe('run: the embedded store (one host, no etcd)', () => {
  test('export and collect on one host; cluster commands work while the agent runs (its control socket), and after', async () => {
    await withTempDir(async (dir) => {
      const state = join(dir, 'state');
      const graph = join(dir, 'graph.yaml');
      await writeFile(
        graph,
        `resources:
  - { kind: file, name: ${dir}/in, type: directory, purge: true }
  - { kind: file, name: /anywhere/shared-1, content: "exported\\n", export: true }
collect:
  - { kind: file, set: { path: "${dir}/in/{host}-{basename}" } }
`,
      );
      const agent = startCli(['run', '--file', graph, '--state-dir', state, '--hostname', 'solo']);
      try {
        await agent.waitFor(/cluster store: embedded/);
        await until(async () => (await content(join(dir, 'in', 'solo-shared-1'))) === 'exported\n', 10_000, 'the export collected');
        // The agent holds the store; the commands reach it through the agent's control socket (control-server.ts).
        for (const cmd of ['members', 'status']) {
          const r = await runCli(['cluster', cmd, '--state-dir', state]);
          assert.equal(r.code, 0, `cluster ${cmd} while the agent runs: ${r.stderr}`);
        }
        // Un-exporting is collected too: the purged directory loses the file.
        await save(graph, (await readFile(graph, 'utf8')).replace(', export: true', ''));
        await until(async () => (await readdir(join(dir, 'in'))).length === 0, 10_000, 'the withdrawn export removed');
      } finally {
        await stop(agent);
      }
      const status = await runCli(['cluster', 'status', '--state-dir', state]);
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, new RegExp(`store: embedded, healthy \\(embedded store ${state}/store`));
      const members = await runCli(['cluster', 'members', '--state-dir', state, '--json']);
      assert.equal(members.code, 0, members.stderr);
      // Membership lives on the agent's lease: a stopped agent is no longer a member.
      assert.deepEqual(JSON.parse(members.stdout), []);
    });
  });
});

describe('run: --no-watch-graph still follows the cluster', () => {
  test('collected data is applied with --no-watch-graph: the flag is about the graph file, not collected data', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      await writeFile(
        graph,
        `resources:
  - { kind: file, name: ${dir}/in, type: directory }
  - { kind: file, name: /anywhere/shared-1, content: "exported\\n", export: true }
collect:
  - { kind: file, set: { path: "${dir}/in/{host}-{basename}" } }
`,
      );
      const agent = startCli(['run', '--file', graph, '--no-watch-graph', '--state-dir', join(dir, 'state'), '--hostname', 'solo']);
      try {
        await until(async () => (await content(join(dir, 'in', 'solo-shared-1'))) === 'exported\n', 10_000, 'the export collected');
      } finally {
        await stop(agent);
      }
    });
  });
});

describe('run: TypeScript graphs (real processes)', () => {
  test('a graph module runs through run, and saving an edit of it swaps the new graph in', async () => {
    await withTempDir(async (dir) => {
      const file = join(dir, 'graph.ts');
      const mod = (v: string): string => `interface Ctx { host: string }
const version: string = '${v}';
export default ({ host }: Ctx) => ({
  resources: [{ kind: 'file', name: '${dir}/motd', content: \`\${version} on \${host}\\n\` }],
});
`;
      await save(file, mod('v1'));
      const agent = startCli(['run', '--file', file, '--hostname', 'tshost', '--state-dir', join(dir, 'state')]);
      try {
        await agent.waitFor(/converged: 1 of 1/, 20_000);
        assert.equal(await content(join(dir, 'motd')), 'v1 on tshost\n');
        await save(file, mod('v2'));
        await until(async () => (await content(join(dir, 'motd'))) === 'v2 on tshost\n', 10_000, 'the edited module applied');
        await agent.waitFor(/graph swapped: 0 added, 0 removed, 1 changed/, 5000);
      } finally {
        await stop(agent);
      }
    });
  });
});
