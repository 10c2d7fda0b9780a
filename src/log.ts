import { createRequire } from 'node:module';
import type { Logger as PinoLogger } from 'pino';
import { stderrIsTTY, writeStderr } from './util/stderr.js';
import { terminalSafe } from './util/terminal.js';

/**
 * Two audiences: people get one short line per event (`12:00:01.234 file[/etc/motd]: content changed`), machines
 * get JSON lines from pino. Every line about a resource carries its id, printed `kind[name]`.
 */
export type LogFormat = 'human' | 'json';
export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';

export type Fields = Record<string, unknown>;

export interface Logger {
  debug(msg: string, fields?: Fields): void;
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
  /** A logger whose lines are about one resource. */
  forResource(id: string): Logger;
}

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 99 };

export interface LoggerOptions {
  readonly format?: LogFormat;
  readonly level?: LogLevel;
  /** Where human lines go (tests capture them); defaults to stderr. */
  readonly write?: (line: string) => void;
  /** Colour human lines written to `write` (default: only when writing to stderr itself, and it is a terminal). */
  readonly colour?: boolean;
}

/**
 * pino, loaded by the first JSON logger: with its streams and worker plumbing it is milliseconds of every
 * start-up, and most runs log for people. Required, not imported, because createLogger is synchronous; it comes from
 * node_modules beside the CLI (the bundle leaves it out; scripts/build.mjs).
 */
function loadPino(): typeof import('pino').pino {
  return (createRequire(import.meta.url)('pino') as typeof import('pino')).pino;
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const level = opts.level ?? 'info';
  if (opts.format === 'json') {
    const pino = loadPino();
    const base = pino(
      { level: level === 'silent' ? 'silent' : level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime },
      opts.write === undefined ? pino.destination({ dest: 2, sync: true }) : { write: opts.write },
    );
    return new JsonLogger(base);
  }
  const paint = (opts.colour ?? (opts.write === undefined && useColour({ isTTY: stderrIsTTY() }))) ? COLOURS : NO_COLOURS;
  return new HumanLogger(ORDER[level], opts.write ?? writeStderr, undefined, paint);
}

/**
 * Colour only for a person at a terminal: never in a pipe, a file or a journal (escape codes there are noise that
 * breaks grep), and never when NO_COLOR is set to anything (https://no-color.org).
 */
export function useColour(stream: { readonly isTTY?: boolean }): boolean {
  const no = process.env['NO_COLOR'];
  return stream.isTTY === true && (no === undefined || no === '');
}

interface Paint {
  readonly dim: (s: string) => string;
  readonly bold: (s: string) => string;
  readonly level: Partial<Record<LogLevel, (s: string) => string>>;
}

const sgr = (code: string) => (s: string): string => `\x1b[${code}m${s}\x1b[0m`;
const COLOURS: Paint = { dim: sgr('2'), bold: sgr('1'), level: { warn: sgr('33'), error: sgr('31') } };
const plain = (s: string): string => s;
const NO_COLOURS: Paint = { dim: plain, bold: plain, level: {} };

/** `error:` in red on a terminal, for errors the CLI prints itself. */
export function errorLabel(stream: { readonly isTTY?: boolean }): string {
  return useColour(stream) ? COLOURS.level.error?.('error:') ?? 'error:' : 'error:';
}

class HumanLogger implements Logger {
  constructor(
    private readonly min: number,
    private readonly write: (line: string) => void,
    private readonly resource: string | undefined,
    private readonly paint: Paint,
  ) {}
  private emit(lvl: LogLevel, msg: string, fields: Fields | undefined): void {
    if (ORDER[lvl] < this.min) return;
    const t = new Date();
    const ts = `${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}.${String(t.getMilliseconds()).padStart(3, '0')}`;
    const p = this.paint;
    const tag = lvl === 'info' ? '' : `${(p.level[lvl] ?? plain)(lvl.toUpperCase())} `;
    const who = this.resource === undefined ? '' : `${p.bold(terminalSafe(this.resource))}: `;
    const extra = fields === undefined ? '' : formatFields(fields);
    // Messages carry names from the store, graphs and other hosts: escaped, so none of them can drive the terminal.
    this.write(`${p.dim(ts)} ${tag}${who}${terminalSafe(msg + extra)}\n`);
  }
  debug(msg: string, f?: Fields): void {
    this.emit('debug', msg, f);
  }
  info(msg: string, f?: Fields): void {
    this.emit('info', msg, f);
  }
  warn(msg: string, f?: Fields): void {
    this.emit('warn', msg, f);
  }
  error(msg: string, f?: Fields): void {
    this.emit('error', msg, f);
  }
  forResource(id: string): Logger {
    return new HumanLogger(this.min, this.write, id, this.paint);
  }
}

class JsonLogger implements Logger {
  constructor(private readonly p: PinoLogger) {}
  debug(msg: string, f?: Fields): void {
    this.p.debug(f ?? {}, msg);
  }
  info(msg: string, f?: Fields): void {
    this.p.info(f ?? {}, msg);
  }
  warn(msg: string, f?: Fields): void {
    this.p.warn(f ?? {}, msg);
  }
  error(msg: string, f?: Fields): void {
    this.p.error(f ?? {}, msg);
  }
  forResource(id: string): Logger {
    return new JsonLogger(this.p.child({ resource: id }));
  }
}

function pad(n: number): string {
  return String(n).padStart(2, '0');
}

function formatFields(f: Fields): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(f)) {
    if (v === undefined) continue;
    if (k === 'diff' && typeof v === 'string') {
      parts.push(`\n${v.trimEnd()}`);
      continue;
    }
    parts.push(` ${k}=${typeof v === 'string' ? (/\s/.test(v) ? JSON.stringify(v) : v) : JSON.stringify(v)}`);
  }
  return parts.join('');
}
