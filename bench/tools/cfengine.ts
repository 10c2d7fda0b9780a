import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { which } from '../lib/proc.js';
import type { Desired, ExecSpec, FileSpec, Invocation, Tool } from './types.js';

/**
 * A CFEngine double-quoted string. A newline is written as $(const.n) and a quote escaped; "$(" and "${" would be
 * expanded as variables, so content containing them is refused rather than silently changed.
 */
function cq(s: string): string {
  if (/\$[({]/.test(s) || s.includes('\\')) throw new Error(`cannot express ${JSON.stringify(s)} in the CFEngine policy`);
  return `"${s.replace(/"/g, '\\"').replace(/\n/g, '$(const.n)')}"`;
}

/** `content =>` (CFEngine ≥ 3.16) is the direct equivalent of the other tools' inline content. */
function filePromise(f: FileSpec): string {
  return `    ${cq(f.path)} create => "true", content => ${cq(f.content)}, perms => bench_mode("0644");`;
}

/** commands: need an absolute path; ordering is by handle + depends_on (bundle order would give the same). */
function commandPromise(e: ExecSpec): string {
  const [cmd, ...args] = e.argv;
  if (cmd === undefined) throw new Error(`exec ${e.name} has no command`);
  const path = cmd.startsWith('/') ? cmd : (which(cmd) ?? cmd);
  const attrs = [`handle => ${cq(e.name)}`];
  if (e.after.length > 0) attrs.push(`depends_on => { ${e.after.map(cq).join(', ')} }`);
  return `    ${cq([path, ...args].join(' '))} ${attrs.join(', ')};`;
}

/**
 * A standalone policy: the stdlib is not loaded (it would add parse time the other tools do not pay), so the one
 * perms body is defined here. rxdirs is set explicitly because 3.21 warns once per file and pass otherwise.
 */
export function cfenginePolicy(desired: Desired): string {
  const lines = ['body common control { bundlesequence => { "main" }; }'];
  lines.push('body perms bench_mode(m) { mode => "$(m)"; rxdirs => "false"; }');
  lines.push('bundle agent main {');
  if (desired.dir !== undefined || desired.files.length > 0) {
    lines.push('  files:');
    // A trailing "/." makes CFEngine create a directory rather than a file.
    if (desired.dir !== undefined) lines.push(`    ${cq(`${desired.dir}/.`)} create => "true";`);
    for (const f of desired.files) lines.push(filePromise(f));
  }
  if (desired.execs.length > 0) {
    lines.push('  commands:');
    for (const e of desired.execs) lines.push(commandPromise(e));
  }
  lines.push('}');
  return lines.join('\n') + '\n';
}

/** -K ignores promise locks, so consecutive runs really re-check (and re-run commands) as a scheduled run would. */
export function cfengineTool(version: string): Tool {
  return {
    id: 'cfengine',
    label: 'CFEngine',
    version,
    prepare(desired: Desired, workDir: string): Invocation {
      const policy = join(workDir, 'policy.cf');
      writeFileSync(policy, cfenginePolicy(desired));
      return { argv: ['cf-agent', '-K', '-f', policy], okCodes: [0] };
    },
  };
}
