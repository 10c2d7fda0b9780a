import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, constants as fsc, fstatSync, openSync, unlinkSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { lstat, readdir, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { FENCE_WATCHDOG_JS, type ServiceIdentity, type WatchdogConfig } from './fence.js';
import { randomHex } from '../../util/random.js';

/**
 * Why a logger process: a log must stay within maxSize × (keep + 1) whatever the service writes, and the service
 * must survive agent restarts with its logs. A size check from the agent (once a second, copy-then-truncate) let a
 * fast writer put gigabytes on disk between two checks, and a kernel limit (RLIMIT_FSIZE) would kill the service
 * instead of rotating. So every write goes through one small process per service start: the service writes into a
 * pipe, and the logger appends to the file and rotates (by rename, losing nothing) the moment the next byte would
 * pass maxSize. A slow disk slows the writer (the pipe fills), it never grows the file.
 *
 * The logger is not the agent: it lives in its own session, so it outlives an agent restart like the service does,
 * and it ends by itself at end of file, when the last process holding the pipe (the service and all it forked) is
 * gone. It ignores SIGTERM/SIGINT/SIGHUP for that reason: killing it would only give the service SIGPIPE.
 *
 * The pipe is a FIFO (not the socketpair that spawn's 'pipe' gives: `open("/dev/stderr")` fails on a socket, and
 * nginx does that), made in the resource's private state directory and unlinked at once, so nobody else can open it.
 * The log files are opened by the agent with every check of openLogForAppend and passed as descriptors; rotation
 * moves names with rename (which never writes through a symlink) and creates the new file O_EXCL|O_NOFOLLOW, as
 * logfile.ts does.
 *
 * With a fence (fence.ts), the logger is also the service's watchdog: it outlives the agent, which is what a watchdog
 * against a frozen or partitioned agent needs, and it ends with the service. It then runs even for a service without
 * log files (zero streams), and the agent tells it which process it started on its stdin right after the spawn.
 */

/** Plain JavaScript for `node -e`: no import, so it runs the same from the sources and from the bundle. */
const LOGGER_JS = String.raw`
'use strict';
const fs = require('fs');
const net = require('net');
const C = fs.constants;
const cfg = JSON.parse(process.argv[1]);
for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(s, () => {});
// With a fence, the watchdog (startFence, appended below) decides when to exit once the pipes are at end of file.
const fence = cfg.fence ? startFence(cfg.fence, cfg.streams.map((st) => st.in)) : undefined;
const allEnded = () => { if (fence) fence.streamsEnded(); else process.exit(0); };
let open = 0;
for (const st of cfg.streams) {
  open++;
  const out = { fd: st.out, size: fs.fstatSync(st.out).size };
  const rotate = () => {
    if (st.keep === 0) {
      fs.ftruncateSync(out.fd, 0);
      out.size = 0;
      return;
    }
    const old = fs.fstatSync(out.fd);
    for (let i = st.keep - 1; i >= 1; i--) {
      let l;
      try { l = fs.lstatSync(st.path + '.' + i); } catch { continue; }
      if (l.isFile()) fs.renameSync(st.path + '.' + i, st.path + '.' + (i + 1));
      else fs.unlinkSync(st.path + '.' + i);
    }
    fs.renameSync(st.path, st.path + '.1');
    let fd;
    for (let attempt = 0; ; attempt++) {
      try {
        fd = fs.openSync(st.path, C.O_WRONLY | C.O_APPEND | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
        break;
      } catch (e) {
        if (e.code !== 'EEXIST' || attempt >= 3) throw e;
        fs.unlinkSync(st.path);
      }
    }
    fs.fchownSync(fd, old.uid, old.gid);
    fs.fchmodSync(fd, old.mode & 0o666);
    fs.closeSync(out.fd);
    out.fd = fd;
    out.size = 0;
  };
  const write = (b) => {
    for (let pos = 0; pos < b.length; ) pos += fs.writeSync(out.fd, b, pos, b.length - pos);
    out.size += b.length;
  };
  const take = (buf) => {
    while (buf.length > 0) {
      const room = st.maxSize - out.size;
      if (buf.length <= room) { write(buf); return; }
      if (room > 0) {
        // Whole lines in each file where they fit; a line longer than maxSize is cut.
        let cut = buf.lastIndexOf(10, room - 1) + 1;
        if (cut === 0 && out.size === 0) cut = room;
        if (cut > 0) { write(buf.subarray(0, cut)); buf = buf.subarray(cut); }
      }
      if (out.size === 0 && st.maxSize <= 0) return;
      try {
        rotate();
      } catch (e) {
        // Rotation failed (a name we may not move): start the file over rather than grow past the bound.
        try { fs.ftruncateSync(out.fd, 0); } catch {}
        out.size = 0;
      }
    }
  };
  const input = new net.Socket({ fd: st.in, readable: true, writable: false });
  input.on('data', (b) => { try { take(b); } catch {} });
  const done = () => { if (--open === 0) allEnded(); };
  input.once('end', done);
  input.once('error', () => { input.destroy(); done(); });
}
if (open === 0) allEnded();
// The next start's pipes (see spareFifos in logger.ts), made here, beside the service, rather than by the agent.
if (cfg.spares.length > 0) {
  try {
    require('child_process').execFileSync('mkfifo', ['-m', '0600', '--', ...cfg.spares], { stdio: 'ignore', timeout: 10000 });
  } catch {}
}
${FENCE_WATCHDOG_JS}`;

export interface LoggedStream {
  /** The log file, opened and checked by the agent (openLogForAppend). The logger gets its own copy. */
  readonly fd: number;
  readonly path: string;
  readonly maxSize: number;
  readonly keep: number;
}

export interface Logger {
  /** Write ends of the pipes, one per stream, for the service's stdout/stderr. The caller closes them after the spawn. */
  readonly inputs: readonly number[];
  /**
   * Resolves once the logger has exited (everything the service wrote is in the files), or at once when it was
   * ended without being started. Never rejects.
   */
  readonly done: Promise<void>;
  /**
   * Starts the logger process if it is not running yet (a fenced one runs from the start). Called right after the
   * service's spawn: until then the pipes hold what the service writes (64 KiB each; a writer past that waits).
   * Throws the spawn error; the caller must then stop the service, whose output would have no reader.
   */
  launch(): void;
  /**
   * Tells the watchdog which process is the service (undefined: none was started, and the logger is not needed).
   * Call once, right after the spawn; without a fence it only ends a logger that was never started.
   */
  announce(service: ServiceIdentity | undefined): void;
}

async function makeFifos(dir: string, n: number): Promise<string[]> {
  const names = fifoNames(dir, n);
  // One mkfifo for all: Node has no mkfifo(3).
  // promisify()'d here, not at load: reading execFile loads child_process, which a run without services never needs.
  await promisify(execFile)('mkfifo', ['-m', '0600', '--', ...names], { timeout: 10_000 });
  return names;
}

const FIFO_PREFIX = '.log-pipe-';

/** Names for `n` new FIFOs in `dir` (made by makeFifos, or by the logger as spares). */
function fifoNames(dir: string, n: number): string[] {
  return Array.from({ length: n }, () => join(dir, `${FIFO_PREFIX}${randomHex(6)}`));
}

/**
 * The spare FIFOs in `dir`, as paths; anything else named like one is removed. Spares are made ahead for the next
 * start by the logger (see LOGGER_JS): mkfifo is an exec, 25-100 ms on a loaded 2-core host and its fork 6-10 ms of
 * the agent's main thread, on the way to the service's spawn; the logger runs beside it. They sit unopened in the
 * private state directory, and stay there when the agent exits and leaves the service running, for the next
 * agent's start of it. A pipe in use is unlinked the moment it is opened, so a name still there is one no process
 * holds open, unless root put it there. Only what this module makes is taken: a FIFO of this user, mode 0600, one
 * link; the private directory (0700, checked by the caller) is where only root can plant one.
 */
async function spareFifos(dir: string): Promise<string[]> {
  const uid = process.geteuid?.() ?? 0;
  const kept: string[] = [];
  for (const name of await readdir(dir).catch(() => [])) {
    if (!name.startsWith(FIFO_PREFIX)) continue;
    const path = join(dir, name);
    const st = await lstat(path).catch(() => undefined);
    if (st !== undefined && st.isFIFO() && st.uid === uid && (st.mode & 0o777) === 0o600 && st.nlink === 1) kept.push(path);
    else await rm(path, { force: true });
  }
  return kept;
}

/** `n` FIFOs for this start: spares if there are enough, else made now. */
async function takeFifos(dir: string, n: number): Promise<string[]> {
  // A fenced service without log files: a watchdog with no pipes.
  if (n === 0) return [];
  const spares = await spareFifos(dir);
  if (spares.length < n) {
    await Promise.all(spares.map((f) => rm(f, { force: true })));
    return makeFifos(dir, n);
  }
  await Promise.all(spares.slice(n).map((f) => rm(f, { force: true })));
  return spares.slice(0, n);
}

/** Removes the spare FIFOs of `dir`: the service is gone, no start will take them. */
export async function dropSpareFifos(dir: string): Promise<void> {
  await Promise.all((await spareFifos(dir)).map((f) => rm(f, { force: true })));
}

/**
 * Opens the pipes of a logger for `streams` (FIFOs made, opened and unlinked in the private directory `fifoDir`)
 * and returns it ready to launch. Without a fence the process is started by launch(), after the service's spawn:
 * a spawn is a fork of the agent (6-10 ms of its main thread), and made before the service's it stood between the
 * service's config file being written and its start. A fenced service's logger is its watchdog (fence.ts), which
 * must run before the service does: it is started here.
 */
export async function startLogger(streams: readonly LoggedStream[], fifoDir: string, fence?: WatchdogConfig): Promise<Logger> {
  const readEnds: number[] = [];
  const writeEnds: number[] = [];
  try {
    const names = await takeFifos(fifoDir, streams.length);
    for (const name of names) {
      try {
        // Read end first, non-blocking (it cannot wait for a writer); then the write end, which now has a reader.
        const r = openSync(name, fsc.O_RDONLY | fsc.O_NONBLOCK | fsc.O_NOFOLLOW);
        readEnds.push(r);
        if (!fstatSync(r).isFIFO()) throw new Error(`${name} is not the pipe just made`);
        writeEnds.push(openSync(name, fsc.O_WRONLY | fsc.O_NOFOLLOW));
      } finally {
        unlinkSync(name);
      }
    }
  } catch (err) {
    for (const fd of [...readEnds, ...writeEnds]) closeSync(fd);
    throw err;
  }
  // fds 3.. in the logger: the read ends, then the log files.
  const n = streams.length;
  // Absolute paths: the logger runs in / (a state directory given as a relative path would be looked for there).
  const cfg = {
    streams: streams.map((s, i) => ({ in: 3 + i, out: 3 + n + i, path: resolve(s.path), maxSize: s.maxSize, keep: s.keep })),
    fence: fence === undefined ? undefined : { ...fence, marker: resolve(fence.marker) },
    spares: fifoNames(resolve(fifoDir), n),
  };
  let child: ChildProcess | undefined;
  let ended = false;
  let settle: () => void = () => undefined;
  const done = new Promise<void>((resolve) => (settle = resolve));
  /** The agent's read ends go once the logger has its own, or once no logger will read them. */
  const closeReadEnds = (): void => {
    for (const fd of readEnds.splice(0)) closeSync(fd);
  };
  const launch = (): void => {
    if (child !== undefined || ended) return;
    try {
      child = spawn(process.execPath, ['--max-old-space-size=16', '-e', LOGGER_JS, JSON.stringify(cfg)], {
        detached: true,
        env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' },
        cwd: '/',
        // stdin: the watchdog learns the service's pid there (it is started before the service).
        stdio: [fence !== undefined ? 'pipe' : 'ignore', 'ignore', 'ignore', ...readEnds, ...streams.map((s) => s.fd)],
      });
    } finally {
      closeReadEnds();
    }
    child.once('exit', () => settle());
    // A spawn that failed after the fork (EAGAIN in the child) reports here; nothing reads the pipes then.
    child.once('error', () => settle());
    // The agent must not wait for it, nor keep its event loop alive for it.
    child.unref();
    // A watchdog that died already (EPIPE) must not take the agent down with an unhandled error.
    child.stdin?.on('error', () => undefined);
  };
  let announced = false;
  const announce = (service: ServiceIdentity | undefined): void => {
    if (announced) return;
    announced = true;
    if (child === undefined) {
      // Never started (no service, or a failed start): nothing will read the pipes.
      ended = true;
      closeReadEnds();
      settle();
      return;
    }
    // End of file with no message means "no service": the watchdog then exits with its pipes.
    child.stdin?.end(service === undefined ? '' : JSON.stringify(service));
  };
  if (fence !== undefined) {
    try {
      launch();
    } catch (err) {
      for (const fd of writeEnds) closeSync(fd);
      throw err;
    }
    // The watchdog must be running before the service is: wait for its exec.
    const c = child;
    if (c !== undefined) {
      try {
        await new Promise<void>((resolve, reject) => {
          c.once('spawn', resolve);
          c.once('error', reject);
        });
      } catch (err) {
        for (const fd of writeEnds) closeSync(fd);
        throw err;
      }
    }
  }
  return { inputs: writeEnds, done, launch, announce };
}
