import { statSync, watch, type FSWatcher } from 'node:fs';
import { stat } from 'node:fs/promises';
import { basename, dirname } from 'node:path';

/**
 * Path watching built on one `fs.watch` per directory, shared by every subscriber in the process.
 *
 * Why directories: `fs.watch(file)` dies silently when the file is replaced (unlink+create, rename-over), while a
 * directory watch sees every create, delete, rename, write and chmod of its entries (~0.3 ms latency, measured).
 * Why shared: inotify instances are limited (max_user_instances is 128 here) and 10,000 managed files in one
 * directory must cost one watch, not 10,000.
 *
 * A path whose parent does not exist yet is watched through its nearest existing ancestor and re-attached deeper
 * as directories appear. A watched directory that is itself removed is detected and its subscribers re-attached.
 */

/**
 * `child`: for a subscription with `children`, the name of the entry inside its directory that the event is about
 * (undefined for anything else: the path itself, its directory's own events, a re-attach), so a subscriber can tell
 * which entry changed without a look at the directory.
 */
export type ChangeCallback = (reason: string, child?: string) => void;

interface Subscription {
  readonly path: string;
  readonly children: boolean;
  readonly cb: ChangeCallback;
  /** The directory currently watched for this subscription and the entry name in it that matters. */
  dir: string;
  name: string;
  closed: boolean;
  /**
   * Where this subscription is registered, so removing it costs O(1) even with 10,000 subscribers per directory: its
   * entry's name in the nearest existing directory, and with `children` its own directory's '*' too. Two fields,
   * not a list of records: 100,000 files mean 100,000 subscriptions, and each list cost ~80 bytes.
   */
  at: DirWatch | undefined;
  atName: string;
  own: DirWatch | undefined;
}

/**
 * The subscriptions of one name in a directory: the subscription itself while it is the only one (nearly always: one
 * managed file per name), a set once there are more. A set per name cost ~180 bytes, 18 MiB at 100,000 files.
 */
type Subscribers = Subscription | Set<Subscription>;

interface DirWatch {
  readonly dir: string;
  readonly watcher: FSWatcher;
  readonly byName: Map<string, Subscribers>;
  ino: number;
  /** A liveness check is running / another was asked for meanwhile: a burst of renames costs two stats, not one each. */
  checking: boolean;
  recheck: boolean;
}

const dirs = new Map<string, DirWatch>();

export interface WatchOptions {
  /** Also report changes to entries inside `path` (for a directory whose contents are managed). */
  readonly children?: boolean;
}

/**
 * Calls `cb` whenever `path` (and, with `children`, anything directly inside it) may have changed. Resolves once
 * the watch is established; stops when `signal` aborts. Spurious calls are possible; missed changes are not.
 */
export async function watchPath(path: string, cb: ChangeCallback, signal: AbortSignal, opts: WatchOptions = {}): Promise<void> {
  if (signal.aborted) return;
  const w = subscribePath(path, cb, opts);
  signal.addEventListener('abort', () => w.close(), { once: true });
  await w.attached;
}

/** A watch made by subscribePath: `attached` once it is established (undefined: at once), ended by close(). */
export interface PathWatch {
  readonly attached: Promise<void> | undefined;
  close(): void;
}

class PathSubscription implements PathWatch {
  attached: Promise<void> | undefined;
  constructor(private readonly sub: Subscription) {}
  close(): void {
    unsubscribe(this.sub);
  }
}

/**
 * watchPath without a signal: ended by the returned watch's close(), synchronously. A file's watch is one of these
 * (resources/file.ts attachWatch), so 100,000 files need no AbortController and listeners each. `attached` rejects
 * when the path cannot be watched (the subscription is then closed already).
 */
export function subscribePath(path: string, cb: ChangeCallback, opts: WatchOptions = {}): PathWatch {
  const sub: Subscription = { path, children: opts.children ?? false, cb, dir: '', name: '', closed: false, at: undefined, atName: '', own: undefined };
  const w = new PathSubscription(sub);
  // An existing parent is subscribed to now, without attach()'s stat of it on the thread pool: in an agent starting
  // 100,000 files that round trip held the first file's check while further slices of workers started (~2x as many
  // before the first write, 20-40 ms). A parent watched already (the other files of its directory) needs no look at
  // all: a watch in `dirs` is on a directory that existed when it was opened, and one removed or replaced since is
  // re-attached with all its subscribers, this one included, when its event arrives. Otherwise a stat on this
  // thread: fs.watch() looks the same path up on this thread right after it anyway.
  if (!sub.children) {
    const dir = dirname(path);
    const dw = dirs.get(dir);
    if (dw !== undefined) {
      if (subscribe(sub, dw.dir, basename(path)) === undefined) return w;
    } else if (statSync(dir, { throwIfNoEntry: false })?.isDirectory() === true) {
      if (subscribe(sub, dir, basename(path)) === undefined) return w;
    }
  }
  w.attached = attach(sub).catch((err: unknown) => {
    unsubscribe(sub);
    throw err;
  });
  return w;
}

/** Number of directories currently watched (for tests and the idle-cost benchmark). */
export function watchedDirectoryCount(): number {
  return dirs.size;
}

async function attach(sub: Subscription): Promise<void> {
  // A directory can vanish between the check and fs.watch(); then walk again from the start.
  let failure: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    if (sub.closed) return;
    failure = await attachOnce(sub);
    if (failure === undefined) return;
    removeEverywhere(sub);
  }
  if (sub.closed) return;
  throw new Error(`cannot watch ${sub.path}: ${failure instanceof Error ? failure.message : String(failure)}`, { cause: failure });
}

/** Returns the error of a directory that could not be watched, or undefined once subscribed (or closed). */
async function attachOnce(sub: Subscription): Promise<unknown> {
  // Watch the deepest existing directory on the way to the path: its parent, or an ancestor while it is missing.
  let target = sub.path;
  let dir = dirname(target);
  for (;;) {
    if (sub.children && target === sub.path && (await isDirectory(sub.path))) {
      // The directory itself exists: its own watch reports both its entries and (via name '') nothing else, so
      // also keep watching it from its parent for deletion/replacement.
      const failed = subscribe(sub, sub.path, '*');
      if (failed !== undefined) return failed;
    }
    if (await isDirectory(dir)) break;
    if (dir === '/') break;
    target = dir;
    dir = dirname(dir);
  }
  if (sub.closed) return undefined;
  return subscribe(sub, dir, basename(target));
}

function subscribe(sub: Subscription, dir: string, name: string): unknown {
  if (sub.closed) return undefined;
  let dw = dirs.get(dir);
  if (dw === undefined) {
    const created = openDir(dir);
    if (!('watcher' in created)) return created.error;
    dw = created;
  }
  if (name !== '*') {
    // The watch's own copy of the directory name: 100,000 files in one directory share one string, not one each.
    sub.dir = dw.dir;
    sub.name = name;
    // attach() registers a subscription at most once per slot; one left over would only be a spurious callback.
    if (sub.at !== undefined) unregister(sub.at, sub.atName, sub);
    sub.at = dw;
    sub.atName = name;
  } else {
    if (sub.own !== undefined) unregister(sub.own, '*', sub);
    sub.own = dw;
  }
  const cur = dw.byName.get(name);
  if (cur === undefined) dw.byName.set(name, sub);
  else if (cur instanceof Set) cur.add(sub);
  else if (cur !== sub) dw.byName.set(name, new Set([cur, sub]));
  return undefined;
}

/** Takes `sub` off `name` in `dw`; closes the watch once nobody uses it. */
function unregister(dw: DirWatch, name: string, sub: Subscription): void {
  const cur = dw.byName.get(name);
  if (cur === sub) dw.byName.delete(name);
  else if (cur instanceof Set && cur.delete(sub)) {
    if (cur.size === 0) dw.byName.delete(name);
    else if (cur.size === 1) for (const only of cur) dw.byName.set(name, only);
  }
  if (dw.byName.size === 0 && dirs.get(dw.dir) === dw) {
    dw.watcher.close();
    dirs.delete(dw.dir);
  }
}

/** A copy: callbacks may subscribe and unsubscribe while the caller goes through them. */
function listOf(subs: Subscribers): Subscription[] {
  return subs instanceof Set ? [...subs] : [subs];
}

function openDir(dir: string): DirWatch | { error: unknown } {
  let watcher: FSWatcher;
  try {
    watcher = watch(dir, { persistent: true });
  } catch (error) {
    return { error };
  }
  const dw: DirWatch = { dir, watcher, byName: new Map(), ino: 0, checking: false, recheck: false };
  dirs.set(dir, dw);
  stat(dir).then(
    (s) => (dw.ino = s.ino),
    () => undefined,
  );
  watcher.on('change', (event, filename) => onEvent(dw, event, filename === null ? null : String(filename)));
  watcher.on('error', () => reattachAll(dw));
  return dw;
}

function onEvent(dw: DirWatch, event: string, filename: string | null): void {
  if (filename === null) {
    notifyAll(dw, `${event} in ${dw.dir}`);
    void checkAlive(dw);
    return;
  }
  const exact = dw.byName.get(filename);
  const reason = `${event === 'rename' ? 'created/removed' : 'changed'}: ${dw.dir === '/' ? '' : dw.dir}/${filename}`;
  if (exact !== undefined) {
    for (const sub of listOf(exact)) {
      sub.cb(reason);
      // The missing ancestor we were waiting on may now exist (or a directory may have been replaced): move deeper.
      if (sub.dir === dw.dir && `${dw.dir === '/' ? '' : dw.dir}/${filename}` !== sub.path) void reattach(sub);
      else if (event === 'rename' && sub.children && sub.path === `${dw.dir === '/' ? '' : dw.dir}/${filename}`) void reattach(sub);
    }
  }
  const all = dw.byName.get('*');
  if (all !== undefined) for (const sub of listOf(all)) sub.cb(reason, filename);
  if (event !== 'rename') return;
  // inotify reports the watched directory's own deletion or move under the directory's basename. stat() cannot
  // be trusted to tell afterwards: a directory re-created at once often gets the same inode number back (ext4),
  // and the watch on the old one is dead. A child that merely shares the name costs a spurious re-attach.
  if (filename === basename(dw.dir)) reattachAll(dw);
  else void checkAlive(dw);
}

function notifyAll(dw: DirWatch, reason: string): void {
  for (const subs of [...dw.byName.values()]) for (const sub of listOf(subs)) sub.cb(reason);
}

/** A removed or replaced directory leaves a dead watch behind: detect it and re-attach everyone who used it. */
async function checkAlive(dw: DirWatch): Promise<void> {
  if (dw.checking) {
    dw.recheck = true;
    return;
  }
  dw.checking = true;
  try {
    do {
      dw.recheck = false;
      let alive = false;
      try {
        const s = await stat(dw.dir);
        alive = s.isDirectory() && (dw.ino === 0 || s.ino === dw.ino);
      } catch {
        alive = false;
      }
      if (dirs.get(dw.dir) !== dw) return;
      if (!alive) {
        reattachAll(dw);
        return;
      }
    } while (dw.recheck);
  } finally {
    dw.checking = false;
  }
}

function reattachAll(dw: DirWatch): void {
  if (dirs.get(dw.dir) === dw) dirs.delete(dw.dir);
  dw.watcher.close();
  const subs = new Set<Subscription>();
  for (const entry of dw.byName.values()) for (const sub of listOf(entry)) subs.add(sub);
  dw.byName.clear();
  for (const sub of subs) {
    sub.cb(`watched directory ${dw.dir} went away`);
    void reattach(sub);
  }
}

async function reattach(sub: Subscription): Promise<void> {
  removeEverywhere(sub);
  try {
    await attach(sub);
  } catch (err) {
    // Nobody awaits a re-attach: report it as a change so the resource is at least checked once more.
    sub.cb(err instanceof Error ? err.message : String(err));
    return;
  }
  // Something may have happened while we were re-attaching; a spurious event is harmless.
  sub.cb('re-attached watch');
}

function unsubscribe(sub: Subscription): void {
  sub.closed = true;
  removeEverywhere(sub);
}

function removeEverywhere(sub: Subscription): void {
  if (sub.at !== undefined) unregister(sub.at, sub.atName, sub);
  if (sub.own !== undefined) unregister(sub.own, '*', sub);
  sub.at = undefined;
  sub.atName = '';
  sub.own = undefined;
}

/** Concurrent look-ups of one path share a stat: 10,000 files in one directory attach with one stat, not 10,000. */
const statsInFlight = new Map<string, Promise<boolean>>();

function isDirectory(p: string): Promise<boolean> {
  let pending = statsInFlight.get(p);
  if (pending === undefined) {
    pending = stat(p).then(
      (s) => s.isDirectory(),
      () => false,
    );
    statsInFlight.set(p, pending);
    const done = (): void => {
      statsInFlight.delete(p);
    };
    pending.then(done, done);
  }
  return pending;
}
