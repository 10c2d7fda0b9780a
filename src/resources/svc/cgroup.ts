import { accessSync, existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sha256Hex } from '../../util/hash.js';

/**
 * cgroups for supervised processes. Hosts differ (FACTS.md fact 11: this one is v1/hybrid, with a v2 tree at
 * /sys/fs/cgroup/unified that has no cpu or memory controller), so every feature is found, not assumed:
 *
 * - limits: cpu and memory go to the v2 tree when it has the controller, else to the v1 hierarchy of that
 *   controller; when neither can be written, the caller gets a warning and the process runs without the limit.
 * - tracking: a v2 cgroup per service (even without limits, wherever v2 is writable) holds the whole process tree,
 *   also daemons that left the process group, and `cgroup.kill` ends them all at once.
 *
 * The file operations are synchronous: cgroupfs and /proc are in-kernel, microseconds per call. Through libuv's
 * thread pool each one queued behind the file resources' reads and fsyncs, and a cold start's cgroup set-up, stray
 * check and placement took 3-10 ms each on the way to the service's spawn and its record.
 */

export interface Limits {
  readonly cpu?: number | undefined;
  readonly memory?: number | undefined;
}

export interface Hierarchy {
  readonly v1: ReadonlyMap<string, string>;
  readonly v2: string | undefined;
  readonly v2Controllers: ReadonlySet<string>;
}

let detected: Promise<Hierarchy> | undefined;

/**
 * Mount points from /proc/self/mounts: `cgroup` mounts carry their controllers in the options. `mountsFile` reads
 * another mount table instead (not cached): tests use it to lay out a host this one is not, e.g. v2-only.
 */
export function detectHierarchy(mountsFile?: string): Promise<Hierarchy> {
  if (mountsFile !== undefined) return readHierarchy(mountsFile);
  detected ??= readHierarchy('/proc/self/mounts');
  return detected;
}

async function readHierarchy(mountsFile: string): Promise<Hierarchy> {
  const v1 = new Map<string, string>();
  let v2: string | undefined;
  let mounts = '';
  try {
    mounts = readFileSync(mountsFile, 'utf8');
  } catch {
    // no /proc: no cgroups either
  }
  for (const line of mounts.split('\n')) {
    const [, dir, type, options] = line.split(' ');
    if (dir === undefined || options === undefined) continue;
    if (type === 'cgroup2') v2 ??= dir;
    if (type === 'cgroup') for (const opt of options.split(',')) if (opt === 'cpu' || opt === 'memory') v1.set(opt, dir);
  }
  let controllers = '';
  try {
    if (v2 !== undefined) controllers = readFileSync(join(v2, 'cgroup.controllers'), 'utf8');
  } catch {
    // no controllers to offer
  }
  return { v1, v2, v2Controllers: new Set(controllers.split(/\s+/).filter((c) => c !== '')) };
}

/**
 * `backplane/<readable>-<hash>`: valid as a directory name, stable per resource, and distinct for two agents (two
 * state directories) on one host that both run a `svc[web]` — a stop must never kill the other one's processes.
 */
export function cgroupName(id: string, stateDir: string): string {
  const safe = id.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 60);
  const hash = sha256Hex(`${stateDir}\0${id}`).slice(0, 10);
  return join('backplane', `${safe}-${hash}`);
}

export interface SvcCgroup {
  /** Directories the process is placed in (v1 per controller, and the v2 one). */
  readonly dirs: readonly string[];
  /** The v2 directory, when there is one: it sees the whole tree. */
  readonly v2Dir: string | undefined;
}

/**
 * Creates (or re-uses) the cgroups of one service and writes its limits. Problems with limits are reported through
 * `warn`; problems with tracking only through `debug` (it is a bonus, the process group still works).
 */
export async function setupCgroup(
  id: string,
  stateDir: string,
  limits: Limits | undefined,
  log: { warn(m: string): void; debug(m: string): void },
  hierarchy?: Hierarchy,
): Promise<SvcCgroup> {
  const h = hierarchy ?? (await detectHierarchy());
  const name = cgroupName(id, stateDir);
  const dirs: string[] = [];
  let v2Dir: string | undefined;

  const ensureV2 = async (controllers: readonly string[]): Promise<string | undefined> => {
    if (h.v2 === undefined) return undefined;
    const base = join(h.v2, 'backplane');
    const dir = join(h.v2, name);
    mkdirSync(dir, { recursive: true });
    // Controllers must be enabled on every level above the leaf that uses them.
    for (const c of controllers) {
      writeFileSync(join(h.v2, 'cgroup.subtree_control'), `+${c}`);
      writeFileSync(join(base, 'cgroup.subtree_control'), `+${c}`);
    }
    if (!dirs.includes(dir)) dirs.push(dir);
    v2Dir = dir;
    return dir;
  };
  const ensureV1 = async (controller: string): Promise<string> => {
    const root = h.v1.get(controller);
    if (root === undefined) throw new Error(`no ${controller} controller`);
    const dir = join(root, name);
    mkdirSync(dir, { recursive: true });
    if (!dirs.includes(dir)) dirs.push(dir);
    return dir;
  };

  const apply = async (what: string, controller: 'cpu' | 'memory', v2File: string, v2Value: string, v1: Record<string, string>): Promise<void> => {
    let lastErr = '';
    if (h.v2Controllers.has(controller)) {
      try {
        const dir = await ensureV2([controller]);
        if (dir !== undefined) {
          writeFileSync(join(dir, v2File), v2Value);
          log.debug(`${what}: ${v2File}=${v2Value} in ${dir}`);
          return;
        }
      } catch (err) {
        lastErr = `${(err as Error).message}; `;
      }
    }
    if (h.v1.has(controller)) {
      try {
        const dir = await ensureV1(controller);
        for (const [file, value] of Object.entries(v1)) writeFileSync(join(dir, file), value);
        log.debug(`${what}: ${Object.entries(v1).map(([f, v]) => `${f}=${v}`).join(', ')} in ${dir}`);
        return;
      } catch (err) {
        lastErr += (err as Error).message;
      }
    } else if (lastErr === '') {
      lastErr = `this host has no cgroup ${controller} controller (no v1 ${controller} hierarchy${h.v2 !== undefined ? `, and the v2 tree at ${h.v2} does not offer it` : ''})`;
    }
    log.warn(`${what} not applied, the process runs without it: ${lastErr}`);
  };

  if (limits?.memory !== undefined) {
    const bytes = String(limits.memory);
    await apply(`memory limit ${bytes} bytes`, 'memory', 'memory.max', bytes, { 'memory.limit_in_bytes': bytes });
  }
  if (limits?.cpu !== undefined) {
    const period = 100_000;
    const quota = String(Math.max(1000, Math.round(limits.cpu * period)));
    await apply(`cpu limit ${limits.cpu} cores`, 'cpu', 'cpu.max', `${quota} ${period}`, { 'cpu.cfs_period_us': String(period), 'cpu.cfs_quota_us': quota });
  }
  if (v2Dir === undefined && h.v2 !== undefined) {
    try {
      await ensureV2([]);
    } catch (err) {
      log.debug(`no v2 cgroup for tracking the process tree: ${(err as Error).message}`);
    }
  }
  return { dirs, v2Dir };
}

/** The service's cgroups that exist already (left by an earlier agent or supervisor), for stopping and removal. */
export async function existingCgroup(id: string, stateDir: string, hierarchy?: Hierarchy): Promise<SvcCgroup> {
  const h = hierarchy ?? (await detectHierarchy());
  const name = cgroupName(id, stateDir);
  const dirs: string[] = [];
  for (const root of new Set(h.v1.values())) if (existsSync(join(root, name))) dirs.push(join(root, name));
  const v2Dir = h.v2 !== undefined && existsSync(join(h.v2, name)) ? join(h.v2, name) : undefined;
  if (v2Dir !== undefined) dirs.push(v2Dir);
  return { dirs, v2Dir };
}

/** Moves a process into every cgroup of the service. Failures are returned, not thrown: the process runs anyway. */
export async function placeInCgroup(cg: SvcCgroup, pid: number): Promise<string[]> {
  const problems: string[] = [];
  for (const dir of cg.dirs) {
    try {
      writeFileSync(join(dir, 'cgroup.procs'), String(pid));
    } catch (err) {
      problems.push(`${dir}: ${(err as Error).message}`);
    }
  }
  return problems;
}

/** Every process in the service's cgroups (the v2 one sees the whole tree). */
export async function cgroupMembers(cg: SvcCgroup): Promise<number[]> {
  const pids = new Set<number>();
  for (const dir of cg.dirs) {
    let text = '';
    try {
      text = readFileSync(join(dir, 'cgroup.procs'), 'utf8');
    } catch {
      // gone: no members
    }
    for (const l of text.split('\n')) if (l !== '') pids.add(Number(l));
  }
  return [...pids];
}

/** Signals every process of the service; SIGKILL goes through cgroup.kill where the kernel has it. */
export async function signalCgroup(cg: SvcCgroup, sig: NodeJS.Signals): Promise<void> {
  if (sig === 'SIGKILL' && cg.v2Dir !== undefined) {
    try {
      accessSync(join(cg.v2Dir, 'cgroup.kill'));
      writeFileSync(join(cg.v2Dir, 'cgroup.kill'), '1');
      return;
    } catch {
      // an older kernel: one by one below
    }
  }
  for (const pid of await cgroupMembers(cg)) {
    try {
      process.kill(pid, sig);
    } catch {
      // gone already
    }
  }
}

/**
 * Removes the service's (empty) cgroups; a cgroup that still has processes after EMPTY_WAIT_MS stays. A stop may
 * see its process gone a moment before the cgroup is empty (something it forked still exiting): with one rmdir, 3 of
 * the stopped instances of test/scheduler/rollouts-etcd.test.ts kept their (then empty) cgroups for good; retried on
 * EBUSY, none were left.
 */
export async function removeCgroup(cg: Pick<SvcCgroup, 'dirs'>, waitMs = EMPTY_WAIT_MS): Promise<void> {
  const deadline = Date.now() + waitMs;
  for (const dir of cg.dirs) {
    for (;;) {
      try {
        rmdirSync(dir);
        break;
      } catch (err) {
        // ENOENT: gone already; anything else but EBUSY will not pass by waiting.
        if ((err as NodeJS.ErrnoException).code !== 'EBUSY' || Date.now() >= deadline) break;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    }
  }
}
const EMPTY_WAIT_MS = 500;
