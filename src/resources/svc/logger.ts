import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, closeSync, constants as fsc, fstatSync, openSync, unlinkSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { lstat, readdir, rm } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
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
 * nginx does that; Node has no pipe(2)), made in the resource's private state directory (ahead, as spares, by the
 * previous start's logger; else by the service's wrapper for the Perl logger, by the agent for node's) and unlinked
 * once both ends are open (by the Perl logger; by the agent for node's), so nobody else can open it.
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

/**
 * The same logger in Perl (perl-base is Essential on Debian), for a service without a fence: the service's /bin/sh
 * wrapper starts it (see WRAPPER in proc.ts), so the agent forks once per start instead of twice, and it starts in
 * ~5 ms of CPU where node takes ~80 ms, beside the service's own start on the same cores. Same files, same rotation
 * (exactly at maxSize, whole lines where they fit, rename then O_EXCL|O_NOFOLLOW create, owner and mode kept), same
 * spares, same end (every pipe at end of file); its pipes are opened by the wrapper. Its one argument: the open
 * flags and errno values it needs and the numbers of setsid(2) and mknodat(2) (perlConstants), `n`, then per stream
 * the pipe's fd, the log's fd, maxSize, keep and the log's path in hex, then the number of this start's FIFOs and
 * their paths in hex, which it unlinks (the wrapper has both ends open by then), then the spares' paths in hex. fd 3
 * is the agent's end-of-output signal: never read or written, it closes when this process exits. Its environment
 * is emptied by the wrapper: PERL5OPT, PERL5LIB or PERLIO in the service's environment must not reach code that runs
 * as root. A fenced service's logger is its watchdog and needs sub-second clocks (Time::HiRes is not in perl-base):
 * node's, started by the agent.
 */
const LOGGER_PL = String.raw`# backplane svc logger
use strict;
$SIG{$_} = 'IGNORE' for qw(TERM INT HUP PIPE QUIT);
my ($oflags, $EAGAIN, $EINTR, $EEXIST, $setsid, $mknodat, $n, @t) = split / /, $ARGV[0];
syscall(0 + $setsid);
my @s;
for (1 .. $n) {
  my ($in, $out, $max, $keep, $path) = splice(@t, 0, 5);
  open(my $ih, '<&=', $in) or exit 1;
  open(my $oh, '>>&=', $out) or exit 1;
  push @s, { in => $ih, fd => $in, out => $oh, size => -s $oh, max => $max, keep => $keep, path => pack('H*', $path), open => 1 };
}
my $u = shift @t;
unlink(map { pack('H*', $_) } splice(@t, 0, $u));
my @spares = map { pack('H*', $_) } @t;
sub wr {
  my ($st, $b) = @_;
  my $len = length $b;
  for (my $pos = 0; $pos < $len; ) {
    my $w = syswrite($st->{out}, $b, $len - $pos, $pos);
    die "write: $!" unless defined $w;
    $pos += $w;
  }
  $st->{size} += $len;
}
sub rotate {
  my ($st) = @_;
  if ($st->{keep} == 0) {
    truncate($st->{out}, 0) or die 'truncate';
    $st->{size} = 0;
    return;
  }
  my @old = stat($st->{out}) or die 'stat';
  for (my $i = $st->{keep} - 1; $i >= 1; $i--) {
    my $p = "$st->{path}.$i";
    next unless lstat($p);
    if (-f _) { rename($p, "$st->{path}." . ($i + 1)) or die 'rename' } else { unlink($p) or die 'unlink' }
  }
  rename($st->{path}, "$st->{path}.1") or die 'rename';
  my $fh;
  for (my $attempt = 0; ; $attempt++) {
    last if sysopen($fh, $st->{path}, 0 + $oflags, 0600);
    die 'open' if $! != $EEXIST || $attempt >= 3;
    unlink($st->{path}) or die 'unlink';
  }
  chown($old[4], $old[5], $fh) or die 'chown';
  chmod($old[2] & 0666, $fh) or die 'chmod';
  close($st->{out});
  $st->{out} = $fh;
  $st->{size} = 0;
}
sub take {
  my ($st, $buf) = @_;
  while (length $buf) {
    my $room = $st->{max} - $st->{size};
    if (length($buf) <= $room) { wr($st, $buf); return }
    if ($room > 0) {
      my $cut = rindex($buf, "\n", $room - 1) + 1;
      $cut = $room if $cut == 0 && $st->{size} == 0;
      if ($cut > 0) { wr($st, substr($buf, 0, $cut)); $buf = substr($buf, $cut) }
    }
    return if $st->{size} == 0 && $st->{max} <= 0;
    eval { rotate($st); 1 } or do { eval { truncate($st->{out}, 0) }; $st->{size} = 0 };
  }
}
# The next start's pipes: mknodat(AT_FDCWD, path, S_IFIFO | 0600, 0), with no umask bit that could narrow 0600. A
# spare that cannot be made is simply missing: the next start's wrapper makes its pipes then.
umask 077;
syscall(0 + $mknodat, -100, $_, 0010600, 0) for @spares;
my $rin = '';
vec($rin, $_->{fd}, 1) = 1 for @s;
my $open = @s;
while ($open > 0) {
  my $r = $rin;
  if (select($r, undef, undef, undef) < 0) { next if $! == $EINTR; last }
  for my $st (@s) {
    next unless $st->{open} && vec($r, $st->{fd}, 1);
    my $got = sysread($st->{in}, my $buf, 65536);
    next if !defined $got && ($! == $EAGAIN || $! == $EINTR);
    if (!$got) { $st->{open} = 0; vec($rin, $st->{fd}, 1) = 0; $open--; next }
    eval { take($st, $buf) };
  }
}
exit 0;
`;

/**
 * setsid(2) by number, for Perl's syscall(): POSIX.pm would cost the logger 13 ms of start-up and /usr/bin/setsid
 * an exec (1–3 ms), both beside the service's own start. Only for these architectures; elsewhere node's logger.
 */
const SETSID_SYSCALL: Readonly<Record<string, number>> = { x64: 112, arm64: 157, riscv64: 157, loong64: 157 };
/**
 * mknodat(2) by number, for the spares: `/usr/bin/mkfifo` was a fork and an exec of the logger's at the moment the
 * service starts, and on a 2-core host that took CPU from the service's own start (a cold nginx stack's run, 31
 * interleaved rounds with spares in place: 167.0 ms with it, 160.9 ms without). The same architectures as setsid's.
 */
const MKNODAT_SYSCALL: Readonly<Record<string, number>> = { x64: 259, arm64: 33, riscv64: 33, loong64: 33 };
let perlPresent: boolean | undefined;

/**
 * Whether a start without a fence gets the Perl logger from its wrapper: /usr/bin/perl is there (checked once), the
 * architecture's setsid and mknodat numbers are known, and BACKPLANE_SVC_LOGGER is not `node` (which keeps node's
 * logger, started by the agent, for every service).
 */
export function perlLoggerUsable(): boolean {
  if (process.env['BACKPLANE_SVC_LOGGER'] === 'node' || SETSID_SYSCALL[process.arch] === undefined || MKNODAT_SYSCALL[process.arch] === undefined) return false;
  if (perlPresent === undefined) {
    try {
      accessSync('/usr/bin/perl', fsc.X_OK);
      perlPresent = true;
    } catch {
      perlPresent = false;
    }
  }
  return perlPresent;
}

/**
 * The Perl logger's constants, from this host's node: open flags and errno values differ between architectures
 * (O_NOFOLLOW among them), and Fcntl and Errno would cost it ~2 ms each to load.
 */
function perlConstants(): string[] {
  const e = osConstants.errno;
  return [fsc.O_WRONLY | fsc.O_APPEND | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, e.EAGAIN, e.EINTR, e.EEXIST, SETSID_SYSCALL[process.arch] ?? 0, MKNODAT_SYSCALL[process.arch] ?? 0].map(String);
}

export interface LoggedStream {
  /** The log file, opened and checked by the agent (openLogForAppend). The logger gets its own copy. */
  readonly fd: number;
  /** The service's fds that write into this stream: [1], [2], or [1, 2] when both go to one file. */
  readonly std: readonly (1 | 2)[];
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
  /** Set when the service's wrapper is to start this logger (the Perl one): then launch() is never called. */
  readonly viaWrapper: WrapperLogger | undefined;
}

/**
 * A logger the service's /bin/sh wrapper starts in the background before it runs the service (WRAPPER in proc.ts),
 * on pipes the wrapper opens (spares, or FIFOs it makes): the agent forks nothing for it.
 */
export interface WrapperLogger {
  /** For the wrapper, as fds 4 on (fd 3 is the end-of-output pipe): the log files. */
  readonly fds: readonly number[];
  /** The wrapper's arguments for it: the program text and its one argument. */
  readonly args: readonly [string, string];
  /**
   * The FIFOs (in the private state directory) the wrapper puts between the service and the logger: the one for
   * the service's stdout ('' when stdout is not logged here), the one for its stderr ('' when stderr is not,
   * or goes into stdout's), '1' when stderr goes into stdout's pipe (one file for both), else '', and '1' when the
   * wrapper is to make them (they are not spares), else ''.
   */
  readonly pipes: readonly [string, string, string, string];
  /**
   * Called right after the service's spawn with the agent's end of the wrapper's fd 3 (undefined: the spawn
   * failed): `done` resolves when it reaches end of file, that is, when the logger (the last holder) has exited.
   */
  spawned(doneEnd: Readable | null | undefined): void;
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
 * start by the logger (see LOGGER_JS and LOGGER_PL): mkfifo is an exec, 25-100 ms on a loaded 2-core host and, from
 * the agent, its fork 6-10 ms of the agent's main thread, on the way to the service's spawn; node's logger runs it
 * beside the service, the Perl one makes them with a system call (MKNODAT_SYSCALL). They sit unopened in the private state directory, and stay there when the agent exits and leaves the service
 * running, for the next agent's start of it. A pipe in use is unlinked once both its ends are open (by the agent, or
 * by the Perl logger as it starts, which a restart waits for: outputDone), so a name still there is one no process
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

/** `n` spare FIFOs of `dir` for this start, the rest removed; undefined (and none left) when there are fewer. */
async function takeSpares(dir: string, n: number): Promise<string[] | undefined> {
  const spares = await spareFifos(dir);
  const taken = spares.length < n ? undefined : spares.slice(0, n);
  await Promise.all(spares.slice(taken?.length ?? 0).map((f) => rm(f, { force: true })));
  return taken;
}

/** `n` FIFOs for this start: spares if there are enough, else made now. */
async function takeFifos(dir: string, n: number): Promise<string[]> {
  // A fenced service without log files: a watchdog with no pipes.
  if (n === 0) return [];
  return (await takeSpares(dir, n)) ?? makeFifos(dir, n);
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
  // The Perl logger's pipes are opened by the wrapper (WRAPPER in proc.ts): spares if there are enough (as node's
  // logger's are), else new names the wrapper makes FIFOs of, beside the service's start rather than in a fork of
  // this thread. Node's logger gets its pipes here.
  const perl = fence === undefined && perlLoggerUsable();
  const spares = perl ? await takeSpares(fifoDir, streams.length) : undefined;
  const wrapperPipes = !perl ? [] : (spares ?? fifoNames(fifoDir, streams.length)).map((f) => resolve(f));
  try {
    const names = perl ? [] : await takeFifos(fifoDir, streams.length);
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
    if (child !== undefined || ended || byWrapper) return;
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
  /** Started by the service's wrapper (viaWrapper), not by launch(). */
  let byWrapper = false;
  const hex = (p: string): string => Buffer.from(p, 'utf8').toString('hex');
  const viaWrapper: WrapperLogger | undefined = !perl
    ? undefined
    : {
        fds: streams.map((s) => s.fd),
        // fds in the wrapper, so in the logger: 3 the end-of-output pipe, 4 on the log files; the read ends of the
        // pipes it makes are 8 (stdout's, or the one both share) and 9 (stderr's).
        args: [
          LOGGER_PL,
          [
            ...perlConstants(),
            String(n),
            ...streams.flatMap((st, i) => [st.std.includes(1) ? '8' : '9', String(4 + i), String(st.maxSize), String(st.keep), hex(resolve(st.path))]),
            String(wrapperPipes.length),
            ...wrapperPipes.map(hex),
            ...cfg.spares.map(hex),
          ].join(' '),
        ],
        pipes: [
          wrapperPipes[streams.findIndex((st) => st.std.includes(1))] ?? '',
          wrapperPipes[streams.findIndex((st) => st.std.includes(2) && !st.std.includes(1))] ?? '',
          streams.some((st) => st.std.length === 2) ? '1' : '',
          spares === undefined ? '1' : '',
        ],
        spawned: (doneEnd) => {
          closeReadEnds();
          if (doneEnd === undefined || doneEnd === null) {
            ended = true;
            settle();
            return;
          }
          byWrapper = true;
          doneEnd.once('end', () => settle());
          doneEnd.once('close', () => settle());
          doneEnd.once('error', () => settle());
          doneEnd.resume();
          // The agent must not wait for it: a one-shot run ends with the service (and its logger) running.
          (doneEnd as Readable & { unref?: () => void }).unref?.();
        },
      };
  let announced = false;
  const announce = (service: ServiceIdentity | undefined): void => {
    if (announced) return;
    announced = true;
    if (byWrapper) return;
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
  return { inputs: writeEnds, done, launch, announce, viaWrapper };
}
