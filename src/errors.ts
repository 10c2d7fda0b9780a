/**
 * One error type for everything Backplane reports to a user. `code` is a stable literal so callers (and tests) can
 * branch on it; `where` points at user input (file:line:col) or a resource; `hint` says what to do about it.
 */
export type ErrorCode =
  | 'E_YAML'
  | 'E_SCHEMA'
  | 'E_UNKNOWN_KIND'
  | 'E_DUPLICATE'
  | 'E_MISSING_REF'
  | 'E_BAD_REF'
  | 'E_CYCLE'
  | 'E_IO'
  | 'E_APPLY'
  | 'E_TIMEOUT'
  | 'E_ABORTED'
  | 'E_USAGE'
  /** The operator API: no token, or one that is malformed, unknown, forged, expired or revoked. */
  | 'E_AUTH'
  /** The operator API: the caller's role or namespace does not allow it. */
  | 'E_DENIED'
  | 'E_NOT_FOUND'
  | 'E_CONFLICT'
  /** Not now: this agent has no cluster store connection yet. */
  | 'E_UNAVAILABLE'
  /** Input past a limit that keeps the agent bounded: file size, alias expansion, nesting, a module's time or memory. */
  | 'E_LIMIT'
  /** Two resources manage the same thing (a path, a package, an account) under different names. */
  | 'E_OVERLAP'
  /** A resource changed again and again on nothing but its own watch events: something is fighting it. */
  | 'E_OSCILLATION'
  /** A warning, not an error: a collect rule lets exporters choose a parameter that gives power here. */
  | 'W_POWER_TAKE'
  /** A warning: an automatic edge was left out because it would have closed a dependency cycle. */
  | 'W_AUTOEDGE_DROPPED';

export interface SourceLocation {
  readonly file: string;
  readonly line: number;
  readonly col: number;
}

/** `file:line:col`; just the file part when there is no line (a module's resources[3], a collected resource). */
export function formatLocation(loc: SourceLocation | undefined): string {
  if (loc === undefined) return '';
  return loc.line === 0 ? loc.file : `${loc.file}:${loc.line}:${loc.col}`;
}

export interface BackplaneErrorOptions {
  readonly where?: SourceLocation | undefined;
  readonly resource?: string | undefined;
  readonly hint?: string | undefined;
  readonly retryable?: boolean | undefined;
  readonly cause?: unknown;
}

export class BackplaneError extends Error {
  readonly code: ErrorCode;
  readonly where: SourceLocation | undefined;
  readonly resource: string | undefined;
  readonly hint: string | undefined;
  readonly retryable: boolean;

  constructor(code: ErrorCode, message: string, opts: BackplaneErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'BackplaneError';
    this.code = code;
    this.where = opts.where;
    this.resource = opts.resource;
    this.hint = opts.hint;
    this.retryable = opts.retryable ?? false;
  }

  /**
   * `file:line:col: resource: message (hint)` — the one-line form every CLI error is printed in. `about` is the
   * resource the line is already prefixed with (a resource's log line): its id is then not said twice.
   */
  format(about?: string): string {
    const parts: string[] = [];
    const loc = formatLocation(this.where);
    if (loc !== '') parts.push(loc);
    if (this.resource !== undefined && this.resource !== about) parts.push(this.resource);
    parts.push(this.message);
    const line = parts.join(': ');
    return this.hint === undefined ? line : `${line}\n  hint: ${this.hint}`;
  }
}

/** Several input errors found in one pass: users fix a file faster when they see every problem at once. */
export class ValidationErrors extends Error {
  readonly errors: readonly BackplaneError[];
  constructor(errors: readonly BackplaneError[]) {
    super(`${errors.length} error${errors.length === 1 ? '' : 's'} in graph:\n${errors.map((e) => e.format()).join('\n')}`);
    this.name = 'ValidationErrors';
    this.errors = errors;
  }
  format(): string {
    return this.errors.map((e) => e.format()).join('\n');
  }
}

/** `about`: the resource the message will be printed under, so a BackplaneError about it does not repeat its id. */
export function errorMessage(err: unknown, about?: string): string {
  if (err instanceof BackplaneError) return err.format(about);
  if (err instanceof ValidationErrors) return err.format();
  if (err instanceof Error) return err.message;
  return String(err);
}
