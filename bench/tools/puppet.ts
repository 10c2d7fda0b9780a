import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Desired, ExecSpec, FileSpec, Invocation, Tool } from './types.js';

/** A Puppet double-quoted string: escape what Puppet would interpolate or end the string on. */
function pq(s: string): string {
  return `"${s.replace(/[\\"$]/g, (c) => `\\${c}`).replace(/\n/g, '\\n')}"`;
}

function fileResource(f: FileSpec): string {
  return `file { ${pq(f.path)}: ensure => file, content => ${pq(f.content)}, mode => '0644' }`;
}

/** Ordering through `require`, Puppet's own primitive; `path` lets the command be written as in the other tools. */
function execResource(e: ExecSpec): string {
  const attrs = [`command => ${pq(e.argv.join(' '))}`, `path => ['/usr/bin', '/bin']`];
  if (e.after.length > 0) attrs.push(`require => [${e.after.map((n) => `Exec[${pq(n)}]`).join(', ')}]`);
  return `exec { ${pq(e.name)}: ${attrs.join(', ')} }`;
}

/** The files' parent directory needs no explicit edge: Puppet autorequires a file's managed parent. */
export function puppetManifest(desired: Desired): string {
  const lines: string[] = [];
  if (desired.dir !== undefined) lines.push(`file { ${pq(desired.dir)}: ensure => directory }`);
  for (const f of desired.files) lines.push(fileResource(f));
  for (const e of desired.execs) lines.push(execResource(e));
  return lines.join('\n') + '\n';
}

/**
 * `puppet apply` of a generated manifest. --detailed-exitcodes makes a failed resource visible in the exit code
 * (2 only means "changes were applied").
 */
export function puppetTool(version: string): Tool {
  return {
    id: 'puppet',
    label: 'Puppet',
    version,
    prepare(desired: Desired, workDir: string): Invocation {
      const manifest = join(workDir, 'site.pp');
      writeFileSync(manifest, puppetManifest(desired));
      return { argv: ['puppet', 'apply', '--color=false', '--detailed-exitcodes', manifest], okCodes: [0, 2] };
    },
  };
}
