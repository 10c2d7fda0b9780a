import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { withTempDir } from '../helpers/engine.js';
import { runCli, startCli } from '../helpers/cli.js';

describe('backplane run (real processes)', () => {
  test('mgmt example 1: a chain of three execs and one alone finish in the time of the chain, not the sum', async () => {
    await withTempDir(async (dir) => {
      // The mgmt announcement's graph, in mgmt's own YAML format, with shorter sleeps.
      const graph = join(dir, 'graph.yaml');
      // Each exec notes when it started and ended, so running alongside is seen as an overlap, not guessed from a
      // wall-clock bound that a loaded machine's slow spawns could break.
      const trace = join(dir, 'trace');
      const exec = (n: number) => `  - name: exec${n}
    cmd: echo start${n} $(date +%s%N) >> ${trace}; sleep 0.4; echo end${n} $(date +%s%N) >> ${trace}
    shell: /bin/sh
    timeout: 0
    watchcmd: ''
    watchshell: ''
    ifcmd: ''
    ifshell: ''
    pollint: 0
    state: present`;
      const edge = (n: number, a: number, b: number) => `- name: e${n}
  from:
    kind: exec
    name: exec${a}
  to:
    kind: exec
    name: exec${b}`;
      await writeFile(graph, `---\ngraph: mygraph\nresources:\n  exec:\n${[1, 2, 3, 4].map(exec).join('\n')}\nedges:\n${edge(1, 1, 2)}\n${edge(2, 2, 3)}\n`);
      const r = await runCli(['run', '--file', graph, '--converged-timeout', '0']);
      assert.equal(r.code, 0, r.stderr);
      const m = /converged: 4 of 4 resources in (\d+)ms/.exec(r.stderr);
      assert.ok(m !== null, r.stderr);
      const ms = Number(m[1]);
      assert.ok(ms >= 1200, `chain of three 0.4 s sleeps took only ${ms}ms`);
      const at = new Map((await readFile(trace, 'utf8')).trim().split('\n').map((l) => [l.split(' ')[0]!, Number(l.split(' ')[1]) / 1e6] as const));
      const t = (k: string): number => at.get(k) ?? assert.fail(`no ${k} in the trace: ${JSON.stringify([...at])}`);
      // The chain is serial ...
      assert.ok(t('end1') <= t('start2') && t('end2') <= t('start3'), `the chain overlapped: ${JSON.stringify([...at])}`);
      // ... and the lone exec runs alongside it (a serial run would start it after something else ended).
      assert.ok(t('start4') < t('end1') && t('start1') < t('end4'), `the lone exec did not run alongside the chain: ${JSON.stringify([...at])}`);
      for (const n of [1, 2, 3, 4]) assert.match(r.stderr, new RegExp(`exec\\[exec${n}\\]: ran echo start${n}`));
    });
  });

  test('something that cannot converge: exit 1 with a summary naming the failure and what it blocked', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      await writeFile(
        graph,
        `resources:
  - kind: exec
    name: broken
    cmd: ["sh", "-c", "echo disk on fire >&2; exit 3"]
  - kind: exec
    name: after
    cmd: ["touch", "${dir}/after"]
    require: ["exec[broken]"]
  - kind: exec
    name: independent
    cmd: ["touch", "${dir}/independent"]
`,
      );
      const r = await runCli(['run', '--file', graph, '--converged-timeout', '0']);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /exec\[broken\] failed: .*exited with code 3/);
      assert.match(r.stderr, /disk on fire/);
      assert.match(r.stderr, /exec\[after\] not applied: it depends on exec\[broken\]/);
      await readFile(join(dir, 'independent')); // independent work still happened
      await assert.rejects(readFile(join(dir, 'after')), /ENOENT/);
    });
  });

  test('invalid graph: exit 2, file:line:col, and nothing is applied', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      await writeFile(graph, `resources:\n  - kind: exec\n    name: a\n    cmd: ["touch", "${dir}/marker"]\n  - kind: exec\n    name: b\n    cmd: 42\n`);
      const r = await runCli(['run', '--file', graph, '--converged-timeout', '0']);
      assert.equal(r.code, 2);
      assert.match(r.stderr, new RegExp(`${graph}:7:5: exec\\[b\\]: parameter "cmd"`));
      assert.match(r.stderr, /nothing was applied/);
      await assert.rejects(readFile(join(dir, 'marker')), /ENOENT/);
    });
  });

  test('SIGTERM stops a busy agent within a second or two, killing its children', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      await writeFile(graph, `resources:\n  - kind: exec\n    name: long\n    cmd: ["sh", "-c", "echo $$ > ${dir}/pid; exec sleep 60"]\n`);
      const agent = startCli(['run', '--file', graph]);
      const pidFile = join(dir, 'pid');
      let pid = 0;
      for (let i = 0; i < 200 && pid === 0; i++) {
        pid = Number((await readFile(pidFile, 'utf8').catch(() => '0')).trim()) || 0;
        if (pid === 0) await new Promise((r) => setTimeout(r, 20));
      }
      assert.ok(pid > 0, 'the exec never started');
      const t0 = performance.now();
      agent.proc.kill('SIGTERM');
      const r = await agent.exited;
      const ms = performance.now() - t0;
      assert.ok(ms < 2000, `took ${ms}ms to stop`);
      assert.equal(r.signal, null, 'exited by itself, not killed');
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => 'gone');
      assert.ok(stat === 'gone' || / Z /.test(stat), `child ${pid} still alive: ${stat}`);
      // Stopped before anything converged: the summary must not read as a success.
      assert.match(r.stderr, /stopped before converging: 0 of 1 resources converged/);
      assert.doesNotMatch(r.stderr, /converged: 0 of 1 resources in/);
    });
  });

  test('a second signal exits at once', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      // A child that ignores SIGTERM keeps the first stop busy.
      await writeFile(graph, `resources:\n  - kind: exec\n    name: stubborn\n    cmd: ["sh", "-c", "trap '' TERM; echo > ${dir}/up; sleep 30"]\n`);
      const agent = startCli(['run', '--file', graph]);
      for (let i = 0; i < 200; i++) {
        if (await readFile(join(dir, 'up')).then(() => true, () => false)) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      agent.proc.kill('SIGINT');
      await agent.waitFor(/SIGINT: stopping/);
      agent.proc.kill('SIGINT');
      const r = await agent.exited;
      assert.ok(r.code === 130 || r.code === 0, `exit code ${String(r.code)}`);
    });
  });

  test('--graphviz writes the graph with each vertex labelled kind[name] and coloured by state', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      const dot = join(dir, 'out.dot');
      await writeFile(graph, `resources:\n  - { kind: noop, name: a }\n  - { kind: exec, name: b, cmd: ["true"], require: "noop[a]" }\n`);
      const r = await runCli(['run', '--file', graph, '--converged-timeout', '0', '--graphviz', dot]);
      assert.equal(r.code, 0, r.stderr);
      const text = await readFile(dot, 'utf8');
      assert.match(text, /^digraph backplane \{/);
      assert.match(text, /"noop\[a\]" \[label="noop\[a\]\\nconverged", fillcolor="#a1d99b"\]/);
      assert.match(text, /"noop\[a\]" -> "exec\[b\]"/);
    });
  });

  test('--log-format json prints one JSON object per line with the resource id', async () => {
    await withTempDir(async (dir) => {
      const graph = join(dir, 'graph.yaml');
      await writeFile(graph, `resources:\n  - { kind: exec, name: b, cmd: ["true"] }\n`);
      const r = await runCli(['run', '--file', graph, '--converged-timeout', '0', '--log-format', 'json']);
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stderr.trim().split('\n').map((l) => JSON.parse(l) as { msg: string; resource?: string });
      assert.ok(lines.some((l) => l.resource === 'exec[b]' && /^ran true/.test(l.msg)), r.stderr);
    });
  });
});
