import { BackplaneError } from '../errors.js';
import type { ResourceId } from '../graph/ids.js';
import type { FailureClass } from './pkg/apt.js';
import { aptBatcher, type PkgAction, type PkgOutcome, type PkgRequest } from './pkg/batcher.js';
import { watchPackage } from './pkg/monitor.js';
import { packageDirectories } from './pkg/owned-dirs.js';
import { pkgSchema, quickPkgParams, type PkgParams } from './pkg/schema.js';
import { databaseSignature, readLookup, writeLookup } from './pkg/lookup-cache.js';
import { describeEntry, DPKG_ADMIN_DIR, DpkgDb, hasArchNativeFile, hasTraces, isInstalled, nativeArchAsync, readDpkgStatus, type PkgEntry } from './pkg/status.js';
import { defineKind, type CheckResult, type Resource, type ResourceWorld } from './types.js';

/**
 * A Debian package, installed (at any or an exact version) or absent, through apt-get (Puppet's `package`, mgmt's
 * `pkg`). The installed state is read from dpkg's own database, parsed here and shared by every resource, with
 * dpkg's meaning of "installed": a package left half-installed or with only its configuration files is not. After
 * apt-get reports success the database is read again, so a request apt satisfies some other way (a virtual package,
 * a package it holds back) is an error now instead of a change repeated forever.
 *
 * Resources that need apt at the same moment share one transaction (see pkg/batcher.ts); each still gets its own
 * result, and a broken package fails alone.
 */
export const pkgKind = defineKind<PkgParams>({
  kind: 'pkg',
  description: 'a Debian package installed (optionally at an exact version) or absent, via apt-get; concurrent changes share one apt transaction',
  get schema() {
    return pkgSchema();
  },
  refreshable: false,
  defaults: (name) => ({ name }),
  quickParams: quickPkgParams,
  // What another host's export may choose here only when the collect rule takes it (see CollectPolicy).
  collect: {
    power: {
      name: 'which package root installs (its maintainer scripts run as root)',
      state: 'which version is installed, or that the package is removed',
    },
    fromName: ['name'],
  },
  // packageDirectories reads dpkg's file list: the build must not ask twice (see autoEdgesReadHost).
  autoEdgesReadHost: true,
  autoEdges: (params) => {
    const provides = [`pkg:${params.name}`];
    // Files under the package's own directories are managed after it. Only known once it is installed: on the
    // first run, declare `require: pkg:name` on such files.
    if (params.state !== 'absent') for (const d of packageDirectories(params.name)) provides.push(`path:${d}`);
    return { provides };
  },
  manages: (params) => `package ${params.name}`,
  create: (id, params, world) => createPkg(id, params, world),
});

const CONVERGED: CheckResult = { converged: true, changes: [] };

interface Plan {
  readonly action: PkgAction;
  readonly version?: string | undefined;
  /** What noop mode reports. */
  readonly would: string;
  /** What is reported once done, given the entry afterwards. */
  done(after: PkgEntry | undefined): string;
}

function createPkg(id: ResourceId, p: PkgParams, world: ResourceWorld): Resource {
  const base = p.name.split(':')[0] ?? p.name;
  /** This resource's state directory, where its last lookup is kept (lookup-cache.ts); undefined: none to be had. */
  const stateDir = async (): Promise<string | undefined> => world.stateDir(id).catch(() => undefined);
  return {
    async watch({ signal, ready, changed }) {
      await watchPackage(p.name, changed, signal);
      ready();
      if (signal.aborted) return;
      await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    },
    async checkApply({ apply, signal, log }) {
      if (signal.aborted) throw aborted(id);
      // The answer kept by the last run, while the database is the one it was read from; else a read, kept.
      const dir = await stateDir();
      const signature = dir === undefined ? undefined : databaseSignature(DPKG_ADMIN_DIR);
      const kept = dir === undefined || signature === undefined ? undefined : readLookup(dir, p.name, signature);
      let native: string;
      let before: PkgEntry | undefined;
      if (kept !== undefined) {
        native = kept.native;
        before = new DpkgDb(kept.entries).get(p.name, native);
      } else {
        const [db, archFile] = await Promise.all([readDb(id), hasArchNativeFile()]);
        // The database says it (see nativeArch); dpkg is asked only where it does not, or may think otherwise.
        native = (archFile ? undefined : db.nativeArch()) ?? (await nativeArchAsync());
        before = db.get(p.name, native);
        // The signature was taken before the read: a database replaced in between is kept under the old one, which
        // the next run's cannot match.
        if (dir !== undefined && signature !== undefined) writeLookup(dir, p.name, signature, { native, entries: db.entriesFor(base) });
      }
      const plan = planFor(p, before);
      if (plan === undefined) {
        log.debug(`${p.name}: ${describeEntry(before)}`);
        return CONVERGED;
      }
      if (!apply) return { converged: false, changes: [plan.would] };
      const req: PkgRequest = { name: p.name, action: plan.action, version: plan.version, aptOptions: p.aptOptions };
      const outcome = await aptBatcher.submit(req, signal);
      if (outcome.kind === 'aborted') throw aborted(id);
      if (outcome.kind === 'failed') throw aptFailure(id, p, plan, outcome);
      if (outcome.batchSize > 1) log.debug(`done in one apt transaction with ${outcome.batchSize - 1} other package(s)`);
      if (outcome.alsoRemoved.length > 0) log.warn(`apt-get also removed ${outcome.alsoRemoved.join(', ')} (dependencies or conflicts)`);
      const after = (await readDb(id)).get(p.name, native);
      if (planFor(p, after) !== undefined) throw notReached(id, p, after);
      return { converged: false, changes: [plan.done(after)] };
    },
  };
}

/** What to do to reach the declared state from `e`, or undefined when it is reached already. */
function planFor(p: PkgParams, e: PkgEntry | undefined): Plan | undefined {
  const now = describeEntry(e);
  const partial = hasTraces(e, true) && !isInstalled(e);
  if (p.state === 'absent') {
    if (!hasTraces(e, p.purge)) return undefined;
    const what = e?.state === 'config-files' ? 'configuration files' : (e?.version ?? '');
    const verb = p.purge ? 'purge' : 'remove';
    return {
      action: p.purge ? 'purge' : 'remove',
      would: `would ${verb} ${what}`.trimEnd(),
      done: () => `${verb === 'purge' ? 'purged' : 'removed'} ${what}`.trimEnd(),
    };
  }
  if (p.state === 'installed') {
    if (isInstalled(e)) return undefined;
    return {
      action: 'install',
      would: partial ? `would install (now ${now})` : 'would install',
      done: (a) => `installed ${a?.version ?? ''}${partial ? ` (was ${now})` : ''}`.trimEnd(),
    };
  }
  const version = p.state;
  if (isInstalled(e) && e?.version === version) return undefined;
  if (isInstalled(e))
    return { action: 'install', version, would: `would change version ${e?.version ?? '?'} -> ${version}`, done: () => `version ${e?.version ?? '?'} -> ${version}` };
  return {
    action: 'install',
    version,
    would: partial ? `would install ${version} (now ${now})` : `would install ${version}`,
    done: () => `installed ${version}${partial ? ` (was ${now})` : ''}`,
  };
}

async function readDb(id: ResourceId): Promise<DpkgDb> {
  try {
    return await readDpkgStatus();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new BackplaneError('E_APPLY', `there is no dpkg database (${DPKG_ADMIN_DIR}/status is missing)`, {
        resource: id,
        hint: 'pkg manages Debian packages with dpkg and apt; this host does not use them',
        cause: err,
      });
    throw new BackplaneError('E_IO', `cannot read the dpkg database ${DPKG_ADMIN_DIR}/status: ${(err as Error).message}`, { resource: id, cause: err, retryable: true });
  }
}

const HINTS: Record<FailureClass, (p: PkgParams, waitedMs: number) => string> = {
  // The wait is measured, not taken from DPkg::Lock::Timeout: aptOptions may change the limit, and apt gives up
  // early on a lock it cannot wait for. A message naming the limit instead of the wait sent people looking for a
  // 60 s hang that never happened.
  lock: (_p, waitedMs) =>
    `another apt-get or dpkg held the dpkg lock; apt-get gave up after ${(waitedMs / 1000).toFixed(1)} s. \`lslocks\` shows who holds it; set meta retry to try again later`,
  interrupted: () => 'an earlier dpkg run was interrupted: run `dpkg --configure -a`, then try again',
  'version-not-found': (p) => `see which versions apt knows with \`apt-cache policy ${p.name}\`; run \`apt-get update\` if the lists are old`,
  'not-found': (p) =>
    `check the name (\`apt-cache search ${p.name.split(':')[0] ?? p.name}\`); if it is right, the package lists may be stale or empty (a fresh container has none): run \`apt-get update\``,
  unmet: (p) => `its dependencies cannot be satisfied from the configured sources; \`apt-get install ${p.name}\` by hand shows apt's reasoning`,
  fetch: () => 'downloading failed: check the network and proxy, or run `apt-get update` (the lists may name files the mirror has dropped)',
  other: () => 'run the command by hand to see its whole output',
};

function aptFailure(id: ResourceId, p: PkgParams, plan: Plan, o: Extract<PkgOutcome, { kind: 'failed' }>): BackplaneError {
  const verb = plan.action === 'install' ? (plan.version === undefined ? 'install' : `install version ${plan.version} of`) : plan.action;
  const detail = o.lines.length === 0 ? '' : `\n${o.lines.map((l) => `  | ${l}`).join('\n')}`;
  return new BackplaneError('E_APPLY', `could not ${verb} ${p.name}: \`${o.command}\` failed (${o.exit})${detail}`, {
    resource: id,
    hint: HINTS[o.cls](p, o.durationMs),
    retryable: o.cls === 'lock' || o.cls === 'fetch' || o.cls === 'other',
  });
}

function notReached(id: ResourceId, p: PkgParams, after: PkgEntry | undefined): BackplaneError {
  const now = describeEntry(after);
  if (p.state === 'absent')
    return new BackplaneError('E_APPLY', `apt-get succeeded, but dpkg still lists ${p.name} as ${now}`, {
      resource: id,
      hint: `look at \`dpkg -s ${p.name}\`; an essential or protected package cannot be removed this way`,
    });
  if (after === undefined || after.state === 'not-installed')
    return new BackplaneError('E_APPLY', `apt-get succeeded, but dpkg has no package ${p.name} installed: it is probably a virtual package, and apt installed a package that provides it`, {
      resource: id,
      hint: `name the real package instead (\`apt-cache showpkg ${p.name}\` lists the providers)`,
    });
  return new BackplaneError('E_APPLY', `apt-get succeeded, but dpkg lists ${p.name} as ${now}${p.state === 'installed' ? '' : ` (wanted ${p.state})`}`, {
    resource: id,
    hint: after.flag !== 'ok' || !isInstalled(after) ? 'run `dpkg --configure -a` and look at its errors' : `see \`apt-cache policy ${p.name}\``,
  });
}

function aborted(id: ResourceId): BackplaneError {
  return new BackplaneError('E_ABORTED', 'aborted', { resource: id });
}
