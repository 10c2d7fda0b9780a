import { lstatSync, readdirSync, readFileSync, renameSync, rmdirSync, type Dirent } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { cgroupName, detectHierarchy, type Hierarchy } from '../resources/svc/cgroup.js';
import { isAlive, parseStat } from '../resources/svc/proc.js';
import { readRecord } from '../resources/svc/record.js';
import { sha256Hex } from '../util/hash.js';
import { ALLOC_ID_SOURCE } from '../scheduler/alloc-id.js';

/**
 * The state directories of stopped instances, collected.
 *
 * Every scheduled instance is a `svc[<alloc id>]` resource with a state directory of its own (resourceStateDir): its
 * stdout and stderr logs with their rotations, its pid record, its logger's spare pipes. Alloc ids are never reused, so
 * every rollout, rescheduling and scale-down left its instances' directories, and their logs, in `resources/` for
 * good: a host that had rolled a busy service a few hundred times held a few hundred dead instances' logs. And the
 * cgroup of an instance that died by its fence (its agent gone) stayed until something stopped that same alloc again,
 * which never happens.
 *
 * Kept, as Nomad keeps terminal allocations for a while (`gc_max_allocs`): the `keep` most recently used directories
 * of stopped instances per service, so the logs of what a rollout just replaced or a crash just took down can still
 * be read; any that has not been written for `maxAgeMs` goes even so. A directory is collected only when:
 * - its name gives back an alloc id, checked against the name's hash (resourceStateDir's `svc_<id>_-<hash>`): any other
 *   directory, a hand-written graph's svc among them, is never touched; nor is a name a long service name truncated;
 * - the alloc is not in use here: not assigned, not stopping or in its stop notice, not in the running graph
 *   (`inUse`, asked again just before the directory is moved away, so an alloc assigned back meanwhile keeps it);
 * - its process is gone (the pid record names no live process with the recorded start time) and its cgroups, in
 *   every hierarchy, hold no process. Something still running there is left alone, never killed: that is the fence's
 *   job, or the operator's.
 * An empty cgroup of a stopped instance goes at once, whatever happens to its directory.
 *
 * The directory is first renamed to `.gc-<name>` beside it, synchronously after the last check, then deleted: if the
 * alloc came back and its svc started between the two, it makes a new directory and never sees files vanish under
 * it. A `.gc-` directory a crash left behind is deleted by the next pass. The state directory is the agent's private
 * one (0700, checked at start), so nobody else can put a directory or a symlink there; rm does not follow symlinks.
 */

export interface RetentionPolicy {
  /** Directories of stopped instances kept per service, the most recently used first (0: none is kept). */
  readonly keep: number;
  /** One not written to for this long goes even if it is among the `keep`. */
  readonly maxAgeMs: number;
}

export const DEFAULT_RETENTION: RetentionPolicy = { keep: 5, maxAgeMs: 24 * 60 * 60 * 1000 };

/** A stopped instance's state directory, found by name. */
export interface InstanceDir {
  readonly allocId: string;
  readonly service: string;
  /** Its name in `resources/`. */
  readonly name: string;
  /** Epoch ms of the latest change to it or anything in it (its logs' last line, its record). */
  readonly lastUsed: number;
}

/**
 * resourceStateDir's name of `svc[<service>.<index>.<8 hex>]`: `svc_` + the id (all of its characters are kept) + `_`
 * (for `]`) + `-` + the first 12 hex of sha256 of the resource id; the id as ALLOC_ID_SOURCE has it.
 */
const INSTANCE_DIR = new RegExp(`^svc_(${ALLOC_ID_SOURCE})_-([0-9a-f]{12})$`);
const TRASH_PREFIX = '.gc-';

/** The alloc id and service a state directory's name stands for, when it is an instance's; undefined otherwise. */
export function parseInstanceDirName(name: string): { allocId: string; service: string } | undefined {
  const m = INSTANCE_DIR.exec(name);
  if (m === null) return undefined;
  const [, allocId, hash] = m as unknown as [string, string, string];
  const service = allocId.slice(0, allocId.indexOf('.'));
  // resourceStateDir keeps the first 80 characters of `svc_<id>_`; a longer one was cut and names no id we can check.
  if (`svc_${allocId}_`.length > 80) return undefined;
  if (sha256Hex(`svc[${allocId}]`).slice(0, 12) !== hash) return undefined;
  return { allocId, service };
}

/**
 * Pure: which of the stopped instances' directories go. Per service, the `keep` most recently used stay unless older
 * than maxAgeMs; everything else goes. Ties keep the name order, so two passes over the same listing agree.
 */
export function pickCollectable(dirs: readonly InstanceDir[], policy: RetentionPolicy, now: number): InstanceDir[] {
  const byService = new Map<string, InstanceDir[]>();
  for (const d of dirs) {
    const list = byService.get(d.service);
    if (list === undefined) byService.set(d.service, [d]);
    else list.push(d);
  }
  const out: InstanceDir[] = [];
  for (const list of byService.values()) {
    list.sort((a, b) => b.lastUsed - a.lastUsed || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    list.forEach((d, i) => {
      if (i >= policy.keep || now - d.lastUsed > policy.maxAgeMs) out.push(d);
    });
  }
  return out;
}

export interface CollectOptions {
  /** The engine's state directory (the one holding `resources/`). */
  readonly root: string;
  /** Whether the alloc is assigned here, stopping, or in the running graph: its directory is in use. */
  readonly inUse: (allocId: string) => boolean;
  readonly policy: RetentionPolicy;
  readonly log: Logger;
  /** The clock (tests). */
  readonly now?: () => number;
  /** The cgroup hierarchy (tests give a temporary one). */
  readonly hierarchy?: Hierarchy;
}

export interface CollectResult {
  /** Names of the directories deleted. */
  readonly removed: string[];
  /** Empty cgroup directories of stopped instances removed. */
  cgroups: number;
  /** Stopped instances' directories left because something of theirs still runs. */
  readonly busy: string[];
}

/** One pass over `<root>/resources`; never throws (a failure is logged and left for the next pass). */
export async function collectInstanceDirs(o: CollectOptions): Promise<CollectResult> {
  const resources = join(o.root, 'resources');
  const result: CollectResult = { removed: [], cgroups: 0, busy: [] };
  let entries: Dirent[];
  try {
    entries = readdirSync(resources, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') o.log.warn(`state directory clean-up: cannot list ${resources}: ${errorMessage(err)}`);
    return result;
  }
  // Asked for at the first stopped instance: most hosts run none, and their passes stop at the listing.
  let roots: string[] | undefined;
  const stopped: InstanceDir[] = [];
  const trash: string[] = [];
  for (const e of entries) {
    if (!e.isDirectory()) continue;
    if (e.name.startsWith(TRASH_PREFIX)) {
      trash.push(e.name);
      continue;
    }
    const parsed = parseInstanceDirName(e.name);
    if (parsed === undefined || o.inUse(parsed.allocId)) continue;
    const dir = join(resources, e.name);
    if (await processRuns(dir)) {
      result.busy.push(e.name);
      continue;
    }
    // Its cgroups: one with a process in it means something of the instance still runs (a child that left its
    // process group); an empty one is garbage now, whatever becomes of the directory.
    if (roots === undefined) {
      const h = o.hierarchy ?? (await detectHierarchy());
      roots = [...new Set(h.v1.values()), ...(h.v2 === undefined ? [] : [h.v2])];
    }
    const cg = cgroupName(`svc[${parsed.allocId}]`, dir);
    const present: string[] = [];
    let busy = false;
    for (const r of roots) {
      const cgDir = join(r, cg);
      let procs: string;
      try {
        procs = readFileSync(join(cgDir, 'cgroup.procs'), 'utf8');
      } catch {
        continue;
      }
      present.push(cgDir);
      if (procs.trim() !== '') busy = true;
    }
    if (busy) {
      result.busy.push(e.name);
      continue;
    }
    for (const cgDir of present) {
      try {
        rmdirSync(cgDir);
        result.cgroups++;
      } catch (err) {
        // EBUSY: a process moved in since the read; ENOENT: gone. Either way the next pass looks again.
        o.log.debug(`state directory clean-up: cgroup ${cgDir} stays: ${errorMessage(err)}`);
      }
    }
    stopped.push({ ...parsed, name: e.name, lastUsed: lastUsed(dir) });
  }
  const now = (o.now ?? Date.now)();
  for (const d of pickCollectable(stopped, o.policy, now)) {
    // Asked again, synchronously with the rename: the checks above awaited, and an alloc assigned back meanwhile
    // keeps its directory.
    if (o.inUse(d.allocId)) continue;
    const moved = `${TRASH_PREFIX}${d.name}`;
    try {
      renameSync(join(resources, d.name), join(resources, moved));
    } catch (err) {
      o.log.warn(`state directory clean-up: cannot move ${join(resources, d.name)} away: ${errorMessage(err)}`);
      continue;
    }
    trash.push(moved);
    result.removed.push(d.name);
  }
  for (const name of trash) {
    await rm(join(resources, name), { recursive: true, force: true }).catch((err: unknown) => o.log.warn(`state directory clean-up: cannot delete ${join(resources, name)}: ${errorMessage(err)}`));
  }
  return result;
}

/** Whether the pid record in `dir` names a live process with the recorded start time (a reused pid has another). */
async function processRuns(dir: string): Promise<boolean> {
  const rec = await readRecord(dir);
  if (rec === undefined) return false;
  let text: string;
  try {
    text = readFileSync(`/proc/${rec.pid}/stat`, 'utf8');
  } catch {
    return false;
  }
  const st = parseStat(text);
  return isAlive(st) && st.starttime === rec.starttime;
}

/** The latest mtime of the directory and its entries (not followed: nothing here is a symlink the agent made). */
function lastUsed(dir: string): number {
  let latest = 0;
  try {
    latest = lstatSync(dir).mtimeMs;
    for (const name of readdirSync(dir)) {
      try {
        latest = Math.max(latest, lstatSync(join(dir, name)).mtimeMs);
      } catch {
        // gone meanwhile
      }
    }
  } catch {
    // gone meanwhile: 0 makes it the oldest, and the rename finds nothing
  }
  return latest;
}
