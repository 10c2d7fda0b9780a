import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { templateIn, type Desired, type ExecSpec, type FileSpec, type Invocation, type NginxStack, type Tool } from './types.js';

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

/** A Puppet single-quoted string: only a quote and a backslash need escaping, nothing is interpolated. */
function sq(s: string): string {
  return `'${s.replace(/[\\']/g, (c) => `\\${c}`)}'`;
}

/**
 * The stack as a Puppet user writes it without a service manager: the config from inline_epp() with the variables
 * as typed EPP parameters, and a `base` provider service whose start, stop, reload and status are nginx's own
 * commands. `subscribe` reloads nginx when the config changes; on a cold start Puppet starts it and does not reload.
 */
function nginxResources(stack: NginxStack): string[] {
  const nginx = `${stack.binary} -c ${stack.conf}`;
  const params = Object.entries(stack.vars).map(([k, v]) => `${typeof v === 'number' ? 'Integer' : 'String'} $${k}`);
  const args = Object.entries(stack.vars).map(([k, v]) => `${k} => ${typeof v === 'number' ? String(v) : sq(v)}`);
  // The heredoc's lines are indented by 2 for reading; the `|` of its end marker takes that margin off again.
  const body = `<%- | ${params.join(', ')} | -%>\n${templateIn(stack, (name) => `<%= $${name} %>`)}`;
  const indented = body
    .trimEnd()
    .split('\n')
    .map((l) => (l === '' ? l : `  ${l}`))
    .join('\n');
  return [
    `package { ${sq(stack.package)}: ensure => installed }`,
    `file { ${sq(stack.docRoot)}: ensure => directory, mode => '0755' }`,
    fileResource(stack.index),
    `file { ${sq(stack.conf)}:`,
    `  ensure  => file,`,
    `  mode    => '0644',`,
    `  require => Package[${sq(stack.package)}],`,
    `  content => inline_epp(@(EOT), { ${args.join(', ')} }),`,
    indented,
    `  | EOT`,
    `}`,
    `service { ${sq(`${stack.package}-bench`)}:`,
    `  ensure    => running,`,
    `  provider  => base,`,
    `  start     => ${sq(nginx)},`,
    `  stop      => ${sq(`${nginx} -s quit`)},`,
    `  restart   => ${sq(`${nginx} -s reload`)},`,
    `  status    => ${sq(`kill -0 "$(cat ${stack.pidFile} 2>/dev/null)" 2>/dev/null`)},`,
    `  subscribe => File[${sq(stack.conf)}],`,
    `}`,
  ];
}

/** The files' parent directory needs no explicit edge: Puppet autorequires a file's managed parent. */
export function puppetManifest(desired: Desired): string {
  const lines: string[] = [];
  if (desired.dir !== undefined) lines.push(`file { ${pq(desired.dir)}: ensure => directory }`);
  for (const f of desired.files) lines.push(fileResource(f));
  for (const e of desired.execs) lines.push(execResource(e));
  if (desired.nginx !== undefined) lines.push(...nginxResources(desired.nginx));
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
