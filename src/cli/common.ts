import { accessSync, constants as fsc, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { BackplaneError, ValidationErrors, errorMessage } from '../errors.js';
import { terminalSafe } from '../util/terminal.js';
import { flushStderr } from '../util/stderr.js';
import { errorLabel } from '../log.js';
import { parseDuration } from '../util/duration.js';

/** Exit codes: scripts and cron jobs branch on these. */
export const EXIT = {
  ok: 0,
  /** Something could not be converged. */
  failed: 1,
  /** The input (graph file, flags) is invalid; nothing was applied. */
  invalid: 2,
  /**
   * `run --noop`: everything could be checked and some resources are not as the graph wants them. Puppet's and
   * Terraform's detailed exit codes use 2 for this, but our 2 already means invalid input.
   */
  changesPending: 3,
  /** Stopped by a second signal. */
  interrupted: 130,
} as const;

/** Prints a user-facing error and returns the exit code it deserves. */
export function reportError(err: unknown): number {
  // Log lines still waiting for the end of this turn belong before the error.
  flushStderr();
  if (err instanceof ValidationErrors) {
    process.stderr.write(`${err.format()}\n${err.errors.length} error${err.errors.length === 1 ? '' : 's'}; nothing was applied.\n`);
    return EXIT.invalid;
  }
  if (err instanceof BackplaneError) {
    process.stderr.write(`${errorLabel(process.stderr)} ${err.format()}\n`);
    return err.code === 'E_IO' || err.code === 'E_USAGE' ? EXIT.invalid : EXIT.failed;
  }
  process.stderr.write(`${errorLabel(process.stderr)} ${errorMessage(err)}\n`);
  return EXIT.failed;
}

/** The graph file of `validate` and `graph`: `backplane validate FILE`, or `-f FILE` as `run` takes it. */
export function graphFileArg(positional: string | undefined, flag: string | undefined): string {
  if (positional !== undefined && flag !== undefined && positional !== flag) {
    throw new BackplaneError('E_USAGE', `two graph files given: ${positional} and -f ${flag}`, { hint: 'give one graph file' });
  }
  const file = positional ?? flag;
  if (file === undefined) throw new BackplaneError('E_USAGE', 'no graph file given', { hint: 'pass it as an argument (FILE) or with -f FILE' });
  return file;
}

export function parseIntOption(name: string, min = Number.MIN_SAFE_INTEGER) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isInteger(n)) throw new BackplaneError('E_USAGE', `${name} must be a whole number, got "${value}"`);
    if (n < min) throw new BackplaneError('E_USAGE', `${name} must be at least ${min}, got ${n}`, { hint: min === 0 ? `0 means no limit` : undefined });
    return n;
  };
}

/**
 * A duration flag in seconds: `2s`, `250ms`, `1.5m`, or a bare number of seconds (what these flags took before they
 * took units). `-1` is allowed when `forever` names what it means.
 */
export function parseSecondsOption(name: string, forever?: string) {
  return (value: string): number => {
    if (forever !== undefined && value.trim() === '-1') return -1;
    const ms = parseDuration(value);
    if (ms === undefined) {
      throw new BackplaneError('E_USAGE', `${name} "${value}" is not a duration`, {
        hint: `e.g. ${name} 30s, 500ms, 5m or 30 (seconds)${forever === undefined ? '' : `; -1 ${forever}`}`,
      });
    }
    return ms / 1000;
  };
}

/**
 * An output file flag (`--graphviz`) is checked before anything runs: finding out after a run converged that its
 * picture could never be written wastes the run, and a warning in the middle of a log is easy to miss.
 */
export function checkWritableFile(flag: string, path: string): void {
  const dir = dirname(path);
  const fail = (why: string, err?: unknown): never => {
    throw new BackplaneError('E_USAGE', `${flag} ${path} cannot be written: ${why}`, { hint: `choose a path in an existing directory you can write`, cause: err });
  };
  try {
    if (!statSync(dir).isDirectory()) fail(`${dir} is not a directory`);
    accessSync(dir, fsc.W_OK);
  } catch (err) {
    if (err instanceof BackplaneError) throw err;
    fail((err as NodeJS.ErrnoException).code === 'ENOENT' ? `the directory ${dir} does not exist` : (err as Error).message, err);
  }
  try {
    if (statSync(path).isDirectory()) fail('it is a directory');
  } catch (err) {
    if (err instanceof BackplaneError) throw err;
    // ENOENT: the file will be created.
  }
}

/** Writes text output that may hold names others wrote (store keys, host names) with control characters escaped. */
export function print(text: string): void {
  process.stdout.write(terminalSafe(text));
}
