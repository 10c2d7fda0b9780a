import { join } from 'node:path';
import { watchPath } from '../../util/dirwatch.js';
import { DPKG_ADMIN_DIR, readDpkgStatus, type PkgEntry } from './status.js';

/**
 * One watch on the dpkg database for all `pkg` resources: a change by hand (`apt-get remove`, `dpkg -r`) shows up as
 * a new `status` file (dpkg writes a new one and renames it over the old) and, before that, as entries in its
 * journal directory `updates/`. On each burst of events the database is read once (the parse is cached and shared)
 * and only the resources whose own package changed are told — 100 packages cost one watch and one parse, and an
 * unrelated package upgrade wakes none of them.
 */

interface Sub {
  readonly name: string;
  readonly cb: (reason: string) => void;
  last: string;
}

/** Events of one dpkg run come in bursts; one re-read per burst is enough. */
const SETTLE_MS = 25;

class StatusMonitor {
  private readonly subs = new Set<Sub>();
  private controller: AbortController | undefined;
  private established: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private refreshing = false;
  private again = false;

  constructor(private readonly adminDir: string) {}

  async subscribe(name: string, cb: (reason: string) => void, signal: AbortSignal): Promise<void> {
    if (signal.aborted) return;
    const sub: Sub = { name, cb, last: '' };
    this.subs.add(sub);
    signal.addEventListener('abort', () => this.unsubscribe(sub), { once: true });
    // Watch first, then take the baseline: a change in between is then seen (at worst once, spuriously).
    try {
      await this.start();
    } catch (err) {
      this.unsubscribe(sub);
      throw err;
    }
    try {
      sub.last = fingerprint((await readDpkgStatus(this.adminDir)).get(name));
    } catch {
      // No readable database (not a Debian host, or dpkg mid-way): checkApply reports that properly; the watch
      // just treats whatever appears later as a change.
    }
  }

  private start(): Promise<void> {
    if (this.established === undefined) {
      const controller = new AbortController();
      this.controller = controller;
      const onEvent = (): void => this.schedule();
      this.established = Promise.all([
        watchPath(join(this.adminDir, 'status'), onEvent, controller.signal),
        watchPath(join(this.adminDir, 'updates'), onEvent, controller.signal, { children: true }),
      ]).then(() => undefined);
      // A failed start must not stick: the next subscriber tries again.
      this.established.catch(() => {
        if (this.controller === controller) this.stop();
      });
    }
    return this.established;
  }

  private unsubscribe(sub: Sub): void {
    this.subs.delete(sub);
    if (this.subs.size === 0) this.stop();
  }

  private stop(): void {
    this.controller?.abort();
    this.controller = undefined;
    this.established = undefined;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private schedule(): void {
    if (this.timer !== undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.refresh();
    }, SETTLE_MS);
  }

  private async refresh(): Promise<void> {
    if (this.refreshing) {
      this.again = true;
      return;
    }
    this.refreshing = true;
    try {
      do {
        this.again = false;
        let get: (name: string) => PkgEntry | undefined;
        try {
          const db = await readDpkgStatus(this.adminDir);
          get = (n) => db.get(n);
        } catch (err) {
          // Cannot tell what changed: say so to everyone (a spurious check is harmless, a missed change is not).
          const reason = `cannot read the dpkg database: ${err instanceof Error ? err.message : String(err)}`;
          for (const s of this.subs) s.cb(reason);
          continue;
        }
        for (const s of [...this.subs]) {
          const entry = get(s.name);
          const fp = fingerprint(entry);
          if (fp === s.last) continue;
          s.last = fp;
          s.cb(`dpkg status of ${s.name} is now ${entry === undefined ? 'absent' : `${entry.want} ${entry.flag} ${entry.state} ${entry.version}`.trimEnd()}`);
        }
      } while (this.again);
    } finally {
      this.refreshing = false;
    }
  }
}

function fingerprint(e: PkgEntry | undefined): string {
  return e === undefined ? '' : `${e.want} ${e.flag} ${e.state} ${e.version} ${e.arch}`;
}

const monitors = new Map<string, StatusMonitor>();

/**
 * Calls `cb` whenever the dpkg entry of package `name` changes. Resolves once watching; stops when `signal` aborts.
 */
export function watchPackage(name: string, cb: (reason: string) => void, signal: AbortSignal, adminDir: string = DPKG_ADMIN_DIR): Promise<void> {
  let m = monitors.get(adminDir);
  if (m === undefined) monitors.set(adminDir, (m = new StatusMonitor(adminDir)));
  return m.subscribe(name, cb, signal);
}
