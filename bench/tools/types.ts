/**
 * What every tool is asked to do, stated once and independently of any tool's syntax, so each adapter renders the
 * same desired state in its own idiomatic language and the comparison stays like for like.
 */

export type ToolId = 'backplane' | 'puppet' | 'ansible' | 'cfengine';

export const PEER_IDS: readonly ToolId[] = ['puppet', 'ansible', 'cfengine'];

/** A regular file; every benchmark file has mode 0644 (FILE_MODE). */
export interface FileSpec {
  readonly path: string;
  readonly content: string;
}

export const FILE_MODE = 0o644;

/** A command with no shell; `after` names the execs it must run after (the ordering edges). */
export interface ExecSpec {
  readonly name: string;
  readonly argv: readonly string[];
  readonly after: readonly string[];
}

/**
 * A web server stack: nginx from Debian, a document root with one page, nginx's configuration rendered from a
 * template with variables, and nginx running from that configuration. Everything but the package lives under `dir`
 * and listens on `port`, so each tool's stack stays apart from the others' and from any nginx of the machine.
 */
export interface NginxStack {
  readonly package: string;
  /** The server binary; its `-c` argument is `conf`. */
  readonly binary: string;
  readonly dir: string;
  readonly port: number;
  /** Directory holding `index`; created by the tool. */
  readonly docRoot: string;
  readonly index: FileSpec;
  /** Where the configuration is rendered. */
  readonly conf: string;
  /** nginx's own pid file, named in the configuration: how the bench finds the server to stop it. */
  readonly pidFile: string;
  /** The configuration template, with `{{name}}` for each of `vars`; see templateIn(). */
  readonly template: string;
  readonly vars: Readonly<Record<string, string | number>>;
}

/** The stack's template in one tool's template language, given how that language spells a variable. */
export function templateIn(stack: NginxStack, spell: (name: string) => string): string {
  return stack.template.replace(/\{\{(\w+)\}\}/g, (_, name: string) => spell(name));
}

/** The desired state of one workload. `dir` is the managed target directory, when files are involved. */
export interface Desired {
  readonly dir?: string;
  readonly files: readonly FileSpec[];
  readonly execs: readonly ExecSpec[];
  readonly nginx?: NginxStack;
}

/** How to apply a prepared input once: argv[0] is an absolute path or a PATH name. */
export interface Invocation {
  readonly argv: readonly string[];
  readonly env?: Readonly<Record<string, string>>;
  /** Exit codes that mean success (Puppet's --detailed-exitcodes uses 2 for "changes applied"). */
  readonly okCodes: readonly number[];
}

export interface Tool {
  readonly id: ToolId;
  readonly label: string;
  /** Version string shown in the tables, e.g. "7.23.0". */
  readonly version: string;
  /** Writes the tool's input for `desired` into workDir (not timed) and says how to apply it. */
  prepare(desired: Desired, workDir: string): Invocation;
}
