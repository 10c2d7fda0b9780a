import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { cgroupName, detectHierarchy, removeCgroup } from '../../src/resources/svc/cgroup.js';
import { sha256Hex } from '../../src/util/hash.js';

/**
 * Tests that kill services behind their agents' backs (SIGKILL of an agent, then of its instances; a redis or
 * postgres killed by the test's own clean-up; a walkthrough's `down`, where the instances die by their fence) leave
 * their cgroups behind: only an agent that stops a service removes its cgroup. One full suite left 44 empty ones in
 * the v2 hierarchy (and more in v1 cpu and memory, where a service had limits), and a test machine had gathered
 * hundreds.
 */

/** Directories named `resources` (an agent's resource state) under `base`, a few levels down. */
async function resourceDirs(base: string, depth = 4): Promise<string[]> {
  let entries;
  try {
    entries = await readdir(base, { withFileTypes: true });
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const e of entries) {
    if (!e.isDirectory()) continue;
    if (e.name === 'resources') out.push(join(base, e.name));
    else if (depth > 0) out.push(...(await resourceDirs(join(base, e.name), depth - 1)));
  }
  return out;
}

/**
 * The cgroup directories (every hierarchy) of the svc resources whose state lies under `base`: a svc's cgroup is
 * named for its id and its resource state directory (cgroupName), and that directory's own name (resourceStateDir:
 * `svc_<name>_-<first 12 hex of sha256(id)>`) gives the id back, checked against its hash (for names of letters,
 * digits, `.`, `_` and `-`, as the tests' are; any other is skipped, never guessed). Only this test's agents'
 * cgroups are found, never another test's running beside it. Read while the state exists (a walkthrough's `down`
 * deletes it).
 */
export async function agentCgroups(base: string): Promise<string[]> {
  const h = await detectHierarchy();
  const roots = [...new Set(h.v1.values()), ...(h.v2 === undefined ? [] : [h.v2])];
  const out: string[] = [];
  for (const resources of await resourceDirs(base)) {
    for (const entry of await readdir(resources).catch(() => [] as string[])) {
      const m = /^svc_(.+)_-([0-9a-f]{12})$/.exec(entry);
      if (m === null) continue;
      const id = `svc[${m[1]}]`;
      if (sha256Hex(id).slice(0, 12) !== m[2]) continue;
      const name = cgroupName(id, join(resources, entry));
      for (const root of roots) if (existsSync(join(root, name))) out.push(join(root, name));
    }
  }
  return out;
}

/** SIGKILLs every process in these cgroups: what a test's killed agents left running (the cgroups are the test's own). */
export async function killCgroups(dirs: readonly string[]): Promise<void> {
  for (const dir of dirs) {
    const procs = await readFile(join(dir, 'cgroup.procs'), 'utf8').catch(() => '');
    for (const pid of procs.split('\n').filter((l) => /^\d+$/.test(l))) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
}

/** Removes these cgroups once their processes are gone (EBUSY until then), waiting at most timeoutMs in all. */
export function removeCgroups(dirs: readonly string[], timeoutMs = 5000): Promise<void> {
  return removeCgroup({ dirs }, timeoutMs);
}

/** The svc cgroup directories (made by an agent: `/backplane/svc_...`) that `pid` is in, in every hierarchy. */
export async function cgroupsOfPid(pid: number): Promise<string[]> {
  const h = await detectHierarchy();
  const out: string[] = [];
  for (const line of (await readFile(`/proc/${pid}/cgroup`, 'utf8').catch(() => '')).split('\n')) {
    const m = /^\d+:([^:]*):((?:\/.*)?\/backplane\/svc_[^/]+)$/.exec(line);
    if (m === null) continue;
    const mount = m[1] === '' ? h.v2 : h.v1.get(m[1]?.split(',')[0] ?? '');
    if (mount !== undefined) out.push(join(mount, m[2] ?? ''));
  }
  return out;
}
