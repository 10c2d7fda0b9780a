import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, test } from 'node:test';
import {
  cgroupMembers,
  cgroupName,
  detectHierarchy,
  existingCgroup,
  removeCgroup,
  setupCgroup,
  signalCgroup,
  type Hierarchy,
} from '../../src/resources/svc/cgroup.js';
import { readStat } from '../../src/resources/svc/proc.js';

/**
 * The cgroup code on hosts this one is not. This machine is v1/hybrid (FACTS.md fact 11), so the v2 limit branch
 * never runs against its real hierarchy; here it runs against directory trees laid out like a v2 (and a hybrid)
 * host, through a mount table the detection is given, and the v2 tracking runs for real on the kernel's v2 mount.
 */

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'bp-cgroup-'));
  dirs.push(d);
  return d;
}

interface Logged {
  readonly warnings: string[];
  readonly log: { warn(m: string): void; debug(m: string): void };
}

function logged(): Logged {
  const warnings: string[] = [];
  return { warnings, log: { warn: (m) => warnings.push(m), debug: () => undefined } };
}

/** A mount table in the format of /proc/self/mounts. */
async function mountTable(lines: readonly string[]): Promise<string> {
  const file = join(await tempDir(), 'mounts');
  await writeFile(file, lines.map((l) => `${l}\n`).join(''));
  return file;
}

/** A directory laid out like the root of a v2 hierarchy that offers `controllers` (as the kernel lists them). */
async function fakeV2Root(controllers: string): Promise<string> {
  const root = await tempDir();
  await writeFile(join(root, 'cgroup.controllers'), `${controllers}\n`);
  await writeFile(join(root, 'cgroup.subtree_control'), '');
  await writeFile(join(root, 'cgroup.procs'), '');
  return root;
}

const read = async (file: string): Promise<string> => (await readFile(file, 'utf8')).trim();

describe('svc cgroups: a v2-only host', () => {
  test('the detection takes the cgroup2 mount and the controllers it offers, and finds no v1 hierarchy', async () => {
    const root = await fakeV2Root('cpuset cpu io memory hugetlb pids rdma misc');
    const h = await detectHierarchy(await mountTable(['proc /proc proc rw,nosuid 0 0', `cgroup2 ${root} cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0`]));
    assert.equal(h.v2, root);
    assert.deepEqual([...h.v2Controllers].sort(), ['cpu', 'cpuset', 'hugetlb', 'io', 'memory', 'misc', 'pids', 'rdma']);
    assert.equal(h.v1.size, 0);
  });

  test('limits go to cpu.max and memory.max, with the controller enabled on every level above the leaf', async () => {
    const root = await fakeV2Root('cpu memory pids');
    const h = await detectHierarchy(await mountTable([`cgroup2 ${root} cgroup2 rw,relatime 0 0`]));
    const stateDir = await tempDir();

    // One controller per service: the fake subtree_control is a plain file (each write replaces it, where the
    // kernel's adds), so its content shows exactly what the last write enabled.
    const mem = logged();
    const memCg = await setupCgroup('svc[mem]', stateDir, { memory: 64 * 1024 * 1024 }, mem.log, h);
    const memDir = join(root, cgroupName('svc[mem]', stateDir));
    assert.deepEqual(mem.warnings, []);
    assert.equal(memCg.v2Dir, memDir);
    assert.deepEqual(memCg.dirs, [memDir], 'no v1 directory on a v2-only host');
    assert.equal(await read(join(memDir, 'memory.max')), '67108864');
    assert.equal(await read(join(root, 'cgroup.subtree_control')), '+memory');
    assert.equal(await read(join(root, 'backplane', 'cgroup.subtree_control')), '+memory');
    assert.ok(!existsSync(join(memDir, 'cpu.max')));

    const cpu = logged();
    const cpuCg = await setupCgroup('svc[cpu]', stateDir, { cpu: 0.5 }, cpu.log, h);
    const cpuDir = join(root, cgroupName('svc[cpu]', stateDir));
    assert.deepEqual(cpu.warnings, []);
    assert.deepEqual(cpuCg.dirs, [cpuDir]);
    assert.equal(await read(join(cpuDir, 'cpu.max')), '50000 100000', 'quota and period in µs: half a core');
    assert.equal(await read(join(root, 'cgroup.subtree_control')), '+cpu');
    assert.equal(await read(join(root, 'backplane', 'cgroup.subtree_control')), '+cpu');

    // Both limits in one cgroup; the quota has the kernel's minimum of 1 ms per period.
    const both = logged();
    const bothCg = await setupCgroup('svc[both]', stateDir, { cpu: 0.000001, memory: 1024 }, both.log, h);
    const bothDir = join(root, cgroupName('svc[both]', stateDir));
    assert.deepEqual(both.warnings, []);
    assert.deepEqual(bothCg.dirs, [bothDir]);
    assert.equal(await read(join(bothDir, 'memory.max')), '1024');
    assert.equal(await read(join(bothDir, 'cpu.max')), '1000 100000');

    // A later agent finds the same cgroup through the same layout.
    assert.deepEqual(await existingCgroup('svc[both]', stateDir, h), { dirs: [bothDir], v2Dir: bothDir });
  });

  test('a v2 tree without the controller, and no v1 hierarchy: a warning that says so, and tracking still', async () => {
    const root = await fakeV2Root('pids');
    const h = await detectHierarchy(await mountTable([`cgroup2 ${root} cgroup2 rw 0 0`]));
    const stateDir = await tempDir();
    const l = logged();
    const cg = await setupCgroup('svc[web]', stateDir, { cpu: 0.5 }, l.log, h);
    assert.equal(l.warnings.length, 1);
    assert.match(l.warnings[0] ?? '', /cpu limit 0\.5 cores not applied.*no v1 cpu hierarchy, and the v2 tree at .* does not offer it/);
    const dir = join(root, cgroupName('svc[web]', stateDir));
    assert.deepEqual(cg, { dirs: [dir], v2Dir: dir });
    assert.ok(!existsSync(join(dir, 'cpu.max')));
  });
});

describe('svc cgroups: a hybrid host (v1 controllers, a v2 tree without them)', () => {
  test('limits go to the v1 files of each controller, and the v2 cgroup is kept for tracking', async () => {
    const v2 = await fakeV2Root('hugetlb');
    const cpuRoot = await tempDir();
    const memRoot = await tempDir();
    const h = await detectHierarchy(
      await mountTable([
        `cgroup ${cpuRoot} cgroup rw,relatime,cpu 0 0`,
        `cgroup ${memRoot} cgroup rw,relatime,memory 0 0`,
        `cgroup2 ${v2} cgroup2 rw,relatime 0 0`,
      ]),
    );
    assert.deepEqual([...h.v1.entries()].sort(), [['cpu', cpuRoot], ['memory', memRoot]]);
    const stateDir = await tempDir();
    const l = logged();
    const cg = await setupCgroup('svc[web]', stateDir, { cpu: 0.5, memory: 64 * 1024 * 1024 }, l.log, h);
    const name = cgroupName('svc[web]', stateDir);
    assert.deepEqual(l.warnings, []);
    assert.equal(await read(join(memRoot, name, 'memory.limit_in_bytes')), '67108864');
    assert.equal(await read(join(cpuRoot, name, 'cpu.cfs_quota_us')), '50000');
    assert.equal(await read(join(cpuRoot, name, 'cpu.cfs_period_us')), '100000');
    assert.ok(!existsSync(join(v2, name, 'cpu.max')) && !existsSync(join(v2, name, 'memory.max')));
    assert.deepEqual(cg, { dirs: [join(memRoot, name), join(cpuRoot, name), join(v2, name)], v2Dir: join(v2, name) });
  });
});

/** Dead, or a zombie waiting for its parent (FACTS.md fact 5). */
async function alive(pid: number): Promise<boolean> {
  const st = await readStat(pid);
  return st !== undefined && st.state !== 'Z';
}

async function waitFor(what: string, cond: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe("svc cgroups: the kernel's own v2 mount, as the only hierarchy", () => {
  test('limits where that tree offers the controller (else a warning); the whole process tree tracked and killed', async (t) => {
    const real = await detectHierarchy();
    if (real.v2 === undefined) return t.skip('no cgroup v2 mount on this host');
    // Only the v2 mount is listed: the code sees a v2-only host, whatever v1 hierarchies this one has.
    const h: Hierarchy = await detectHierarchy(await mountTable([`cgroup2 ${real.v2} cgroup2 rw,relatime 0 0`]));
    const stateDir = await tempDir();
    const l = logged();
    const cg = await setupCgroup('svc[tree]', stateDir, { cpu: 0.5, memory: 64 * 1024 * 1024 }, l.log, h);
    const dir = join(real.v2, cgroupName('svc[tree]', stateDir));
    t.after(async () => {
      await signalCgroup(cg, 'SIGKILL');
      await waitFor('the cgroup to empty', async () => (await cgroupMembers(cg)).length === 0).catch(() => undefined);
      await removeCgroup(cg);
      await rmdir(join(real.v2 ?? '', 'backplane')).catch(() => undefined);
    });
    assert.deepEqual(cg, { dirs: [dir], v2Dir: dir });
    // On this host (v2 has neither, FACTS.md fact 11) both limits warn; on a v2-only host the kernel has the files.
    if (h.v2Controllers.has('cpu')) assert.equal(await read(join(dir, 'cpu.max')), '50000 100000');
    else assert.ok(l.warnings.some((w) => /cpu limit .* not applied.*does not offer it/.test(w)), l.warnings.join('\n'));
    if (h.v2Controllers.has('memory')) assert.equal(await read(join(dir, 'memory.max')), '67108864');
    else assert.ok(l.warnings.some((w) => /memory limit .* not applied.*does not offer it/.test(w)), l.warnings.join('\n'));

    // A shell joins the cgroup (as the start wrapper does) and forks a child plus a daemon in its own session.
    const sh = spawn('sh', ['-c', `echo $$ >"$1" && { sleep 30 & setsid sleep 30 & wait; }`, 'sh', join(dir, 'cgroup.procs')], { stdio: 'ignore' });
    await waitFor('three processes in the cgroup', async () => (await cgroupMembers(cg)).length === 3);
    const pids = await cgroupMembers(cg);
    assert.ok(sh.pid !== undefined && pids.includes(sh.pid));
    await signalCgroup(cg, 'SIGKILL');
    // Bounded: left alone, the shell would end by itself when its sleeps do, 30 s later.
    await waitFor('every process of the tree to end', async () => (await Promise.all(pids.map(alive))).every((a) => !a), 2000);
    assert.deepEqual(await cgroupMembers(cg), []);
  });

  test('removing a cgroup waits a moment for its last process to leave, and leaves one that stays busy', async (t) => {
    const real = await detectHierarchy();
    if (real.v2 === undefined) return t.skip('no cgroup v2 mount on this host');
    const h: Hierarchy = await detectHierarchy(await mountTable([`cgroup2 ${real.v2} cgroup2 rw,relatime 0 0`]));
    const stateDir = await tempDir();
    const join2 = async (name: string, seconds: string): Promise<{ cg: Awaited<ReturnType<typeof setupCgroup>>; dir: string }> => {
      const cg = await setupCgroup(name, stateDir, {}, logged().log, h);
      const dir = join(real.v2 ?? '', cgroupName(name, stateDir));
      spawn('sh', ['-c', `echo $$ >"$1" && exec sleep ${seconds}`, 'sh', join(dir, 'cgroup.procs')], { stdio: 'ignore' });
      await waitFor(`${name}'s process in its cgroup`, async () => (await cgroupMembers(cg)).length === 1);
      return { cg, dir };
    };
    // Ends 0.2 s from now: the removal, asked at once, waits for it (a single rmdir failed with EBUSY and left it).
    const soon = await join2('svc[soon]', '0.2');
    await removeCgroup(soon.cg);
    assert.equal(existsSync(soon.dir), false, 'the cgroup stayed after its process ended');
    // Still busy past the wait: left as it is, its process untouched.
    const busy = await join2('svc[busy]', '30');
    t.after(async () => {
      await signalCgroup(busy.cg, 'SIGKILL');
      await waitFor('the cgroup to empty', async () => (await cgroupMembers(busy.cg)).length === 0).catch(() => undefined);
      await removeCgroup(busy.cg);
      await rmdir(join(real.v2 ?? '', 'backplane')).catch(() => undefined);
    });
    const t0 = performance.now();
    await removeCgroup(busy.cg);
    assert.ok(performance.now() - t0 < 5000);
    assert.equal(existsSync(busy.dir), true);
    assert.equal((await cgroupMembers(busy.cg)).length, 1);
  });
});
