import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { which } from '../lib/proc.js';
import { templateIn, type Desired, type ExecSpec, type FileSpec, type Invocation, type NginxStack, type Tool } from './types.js';

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
 * Paths and names that go into the policy as they are, also into its process regex, where a "." matching any
 * character only widens the match a little.
 */
function plain(s: string): string {
  if (!/^[\w./:-]+$/.test(s)) throw new Error(`cannot use ${JSON.stringify(s)} in the CFEngine nginx policy`);
  return s;
}

/**
 * The stack in its own bundle, as a CFEngine user writes it without the masterfiles: a class from dpkg-query for
 * the package (the apt_get package module is not deployed by Debian's package, and loading the stdlib for it would
 * add parse time the others do not pay) with apt-get as the repair, the config from a mustache template file, and
 * a processes promise that defines a class when no master of this config runs, which starts it. A changed config
 * reloads a server that was already running.
 */
function nginxBundle(stack: NginxStack, template: string): string[] {
  const pkg = plain(stack.package);
  const data = JSON.stringify(stack.vars);
  if (data.includes("'")) throw new Error(`cannot use ${data} in the CFEngine nginx policy`);
  return [
    'bundle agent nginx_stack {',
    '  vars:',
    `    "conf" string => "${plain(stack.conf)}";`,
    `    "data" data => parsejson('${data}');`,
    '  classes:',
    `    "nginx_installed" expression => returnszero("/usr/bin/dpkg-query -s ${pkg} | /bin/grep -qx 'Status: install ok installed'", "useshell");`,
    '  files:',
    `    "${plain(stack.docRoot)}/." create => "true", perms => bench_mode("0755");`,
    filePromise(stack.index),
    '    nginx_installed::',
    `      "$(conf)" create => "true", edit_template => "${plain(template)}", template_method => "mustache",`,
    '        template_data => @(data), perms => bench_mode("0644"), edit_defaults => bench_no_backup,',
    '        classes => bench_if_repaired("nginx_conf_changed");',
    '  processes:',
    `    "nginx: master process ${plain(stack.binary)} -c $(conf)" restart_class => "nginx_start";`,
    '  commands:',
    '    !nginx_installed::',
    `      "/usr/bin/env DEBIAN_FRONTEND=noninteractive /usr/bin/apt-get install -y -q ${pkg}";`,
    '    nginx_start::',
    `      "${plain(stack.binary)} -c $(conf)";`,
    '    nginx_conf_changed.!nginx_start::',
    `      "${plain(stack.binary)} -c $(conf) -s reload";`,
    '}',
  ];
}

/** The nginx template in mustache; triple braces, since double ones would HTML-escape the values. */
export function cfengineNginxTemplate(stack: NginxStack): string {
  return templateIn(stack, (name) => `{{{${name}}}}`);
}

/**
 * A standalone policy: the stdlib is not loaded (it would add parse time the other tools do not pay), so the one
 * perms body is defined here. rxdirs is set explicitly because 3.21 warns once per file and pass otherwise.
 */
export function cfenginePolicy(desired: Desired, nginxTemplate: string): string {
  const bundles = desired.nginx === undefined ? '"main"' : '"main", "nginx_stack"';
  const lines = [`body common control { bundlesequence => { ${bundles} }; }`];
  lines.push('body perms bench_mode(m) { mode => "$(m)"; rxdirs => "false"; }');
  if (desired.nginx !== undefined) {
    lines.push('body classes bench_if_repaired(c) { promise_repaired => { "$(c)" }; }');
    lines.push('body edit_defaults bench_no_backup { edit_backup => "false"; }');
  }
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
  if (desired.nginx !== undefined) lines.push(...nginxBundle(desired.nginx, nginxTemplate));
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
      const template = join(workDir, 'nginx.conf.mustache');
      if (desired.nginx !== undefined) writeFileSync(template, cfengineNginxTemplate(desired.nginx));
      writeFileSync(policy, cfenginePolicy(desired, template));
      return { argv: ['cf-agent', '-K', '-f', policy], okCodes: [0] };
    },
  };
}
