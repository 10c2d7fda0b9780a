import { BackplaneError, ValidationErrors, errorMessage } from '../errors.js';

/** Exit codes: scripts and cron jobs branch on these. */
export const EXIT = {
  ok: 0,
  /** Something could not be converged. */
  failed: 1,
  /** The input (graph file, flags) is invalid; nothing was applied. */
  invalid: 2,
  /** Stopped by a second signal. */
  interrupted: 130,
} as const;

/** Prints a user-facing error and returns the exit code it deserves. */
export function reportError(err: unknown): number {
  if (err instanceof ValidationErrors) {
    process.stderr.write(`${err.format()}\n${err.errors.length} error${err.errors.length === 1 ? '' : 's'}; nothing was applied.\n`);
    return EXIT.invalid;
  }
  if (err instanceof BackplaneError) {
    process.stderr.write(`error: ${err.format()}\n`);
    return err.code === 'E_IO' || err.code === 'E_USAGE' ? EXIT.invalid : EXIT.failed;
  }
  process.stderr.write(`error: ${errorMessage(err)}\n`);
  return EXIT.failed;
}

export function parseIntOption(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n)) throw new BackplaneError('E_USAGE', `${name} must be a whole number, got "${value}"`);
    return n;
  };
}
