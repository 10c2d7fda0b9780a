import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, test } from 'node:test';
import { BIN, ensureBuilt } from '../helpers/cli.js';
import { harness } from '../helpers/engine.js';
import { ProbeWorld, probeKind } from '../helpers/probe-kind.js';

const run = promisify(execFile);

describe('msg', () => {
  test('logs its body once when it starts being managed, again when refreshed, and counts as a change', async () => {
    const world = new ProbeWorld();
    const { engine, graph, settled, lines } = harness([probeKind(world)]);
    await engine.setGraph(
      graph(`resources:
  - { kind: probe, name: src, notify: ["msg[m]"] }
  - { kind: msg, name: m, body: "hello from msg", priority: warning, notify: ["probe[after]"] }
  - { kind: probe, name: after }
  - { kind: probe, name: dep, before: ["msg[m]"] }
`),
    );
    await settled();
    const logged = (): string[] => lines.filter((l) => l.includes('hello from msg'));
    // src changed on its first run and notified m; m logs once for starting and once for the refresh, at most.
    const first = logged().length;
    assert.ok(first >= 1 && first <= 2, lines.join('\n'));
    assert.ok(logged().every((l) => /warn/i.test(l)), logged().join('\n'));
    assert.ok(world.of('after', 'check').some((e) => e.refresh === true), 'the msg run that logged fired its notify edge');
    // An unrelated event re-runs nothing that logs; a refresh logs again.
    world.drift('src');
    await settled();
    assert.equal(logged().length, first + 1, lines.join('\n'));
    // dep is a plain dependency: its change re-runs m without a refresh, which must not log again.
    const runs = world.of('after', 'check').length;
    world.drift('dep');
    await settled();
    assert.equal(logged().length, first + 1, 'a run without a refresh must not log again');
    assert.equal(world.of('after', 'check').length, runs, 'a msg that logged nothing is no change');
    await engine.stop();
  });
});

/**
 * The hostname kind changes the machine's hostname, so it runs in a fresh UTS and mount namespace: the kernel
 * hostname is private to it, and /etc is an overlay whose writes land in a temp dir. The test machine's hostname
 * and /etc/hostname are checked untouched afterwards.
 */
describe('hostname', () => {
  test("an mgmt hostname resource sets /etc/hostname and the running hostname, in a private namespace", async () => {
    ensureBuilt();
    const realKernel = hostname();
    const realStatic = await readFile('/etc/hostname', 'utf8').catch(() => '');
    const dir = await mkdtemp(join(tmpdir(), 'bp-hostname-'));
    try {
      await mkdir(join(dir, 'up'));
      await mkdir(join(dir, 'work'));
      await writeFile(join(dir, 'g.yaml'), 'graph: g\nresources:\n  hostname:\n  - name: h\n    hostname: bp-test-host\n    statichostname: bp-test-host\n');
      const script = [
        'set -e',
        `mount -t overlay overlay -o lowerdir=/etc,upperdir=${dir}/up,workdir=${dir}/work /etc`,
        'echo before > /proc/sys/kernel/hostname',
        'printf "# a comment\\nbefore\\n" > /etc/hostname',
        `"${process.execPath}" "${BIN}" run -f ${dir}/g.yaml --converged-timeout 1 --state-dir ${dir}/state --no-watch-graph`,
        'echo "kernel=$(cat /proc/sys/kernel/hostname)"',
        'echo "static=$(cat /etc/hostname)"',
        // Drift of the running hostname alone is repaired alone.
        'echo drifted > /proc/sys/kernel/hostname',
        `"${process.execPath}" "${BIN}" run -f ${dir}/g.yaml --converged-timeout 1 --state-dir ${dir}/state --no-watch-graph`,
        'echo "kernel2=$(cat /proc/sys/kernel/hostname)"',
      ].join('\n');
      const { stdout, stderr } = await run('unshare', ['--uts', '--mount', '--propagation', 'private', 'sh', '-c', script], { timeout: 60_000 });
      assert.match(stdout, /^kernel=bp-test-host$/m, stderr);
      assert.match(stdout, /^static=bp-test-host$/m, stderr);
      assert.match(stdout, /^kernel2=bp-test-host$/m, stderr);
      assert.match(stderr, /hostname\[h\]: \/etc\/hostname "before" -> "bp-test-host"/);
      assert.match(stderr, /hostname\[h\]: running hostname "drifted" -> "bp-test-host"/);
      assert.doesNotMatch(stderr.split('drifted')[1] ?? '', /\/etc\/hostname/, 'the second run rewrote /etc/hostname, which was right');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    assert.equal(hostname(), realKernel, "the test machine's hostname changed");
    assert.equal(await readFile('/etc/hostname', 'utf8').catch(() => ''), realStatic, "the test machine's /etc/hostname changed");
  });
});
