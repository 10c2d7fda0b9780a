import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { templateIn, type Desired, type Invocation, type NginxStack, type Tool } from './types.js';

/**
 * The stack's tasks: apt, the page, the config from a Jinja2 template file (the variables are play vars), and the
 * `command` that starts nginx with `creates:` on its pid file, the usual guard without a service manager. A config
 * change notifies a handler that reloads nginx.
 */
function nginxTasks(stack: NginxStack, template: string): { tasks: Record<string, unknown>[]; handlers: Record<string, unknown>[] } {
  return {
    tasks: [
      { name: 'nginx package', 'ansible.builtin.apt': { name: stack.package, state: 'present' } },
      { name: 'document root', 'ansible.builtin.file': { path: stack.docRoot, state: 'directory', mode: '0755' } },
      { name: 'index page', 'ansible.builtin.copy': { dest: stack.index.path, content: stack.index.content, mode: '0644' } },
      {
        name: 'nginx config',
        'ansible.builtin.template': { src: template, dest: stack.conf, mode: '0644' },
        notify: 'reload nginx',
      },
      {
        name: 'start nginx',
        'ansible.builtin.command': { argv: [stack.binary, '-c', stack.conf], creates: stack.pidFile },
      },
    ],
    handlers: [{ name: 'reload nginx', 'ansible.builtin.command': { argv: [stack.binary, '-c', stack.conf, '-s', 'reload'] } }],
  };
}

/** The nginx template in Jinja2, written beside the playbook as a role's templates/ file would be. */
export function ansibleNginxTemplate(stack: NginxStack): string {
  return templateIn(stack, (name) => `{{ ${name} }}`);
}

/**
 * A playbook as an Ansible user would write it: the directory, then one `copy` task looping over the files, then
 * one `command` task per exec in dependency order (Ansible runs tasks one after another, so order is its edge),
 * then the nginx stack's tasks, whose template is the file nginxTemplate. Facts are not gathered: nothing here
 * needs them, and gathering costs ~3.7 s per run.
 */
export function ansiblePlaybook(desired: Desired, nginxTemplate: string): string {
  const tasks: Record<string, unknown>[] = [];
  if (desired.dir !== undefined) {
    tasks.push({ name: 'target directory', 'ansible.builtin.file': { path: desired.dir, state: 'directory' } });
  }
  if (desired.files.length > 0) {
    tasks.push({
      name: 'files',
      'ansible.builtin.copy': { dest: '{{ item.path }}', content: '{{ item.content }}', mode: '0644' },
      loop: '{{ bench_files }}',
      loop_control: { label: '{{ item.path }}' },
    });
  }
  for (const e of desired.execs) tasks.push({ name: e.name, 'ansible.builtin.command': { argv: [...e.argv] } });
  const play: Record<string, unknown> = { name: 'bench', hosts: 'localhost', gather_facts: false, tasks };
  const vars: Record<string, unknown> = {};
  if (desired.files.length > 0) vars['bench_files'] = desired.files.map((f) => ({ ...f }));
  if (desired.nginx !== undefined) {
    const nginx = nginxTasks(desired.nginx, nginxTemplate);
    tasks.push(...nginx.tasks);
    play['handlers'] = nginx.handlers;
    Object.assign(vars, desired.nginx.vars);
  }
  if (Object.keys(vars).length > 0) play['vars'] = vars;
  return stringify([play]);
}

/** Environment that silences interpreter discovery and colour codes; it changes no behaviour being measured. */
const ANSIBLE_ENV: Readonly<Record<string, string>> = {
  ANSIBLE_NOCOLOR: '1',
  ANSIBLE_PYTHON_INTERPRETER: '/usr/bin/python3',
  ANSIBLE_LOCALHOST_WARNING: 'false',
  ANSIBLE_RETRY_FILES_ENABLED: 'false',
};

export function ansibleTool(version: string): Tool {
  return {
    id: 'ansible',
    label: 'Ansible',
    version,
    prepare(desired: Desired, workDir: string): Invocation {
      const playbook = join(workDir, 'playbook.yml');
      const template = join(workDir, 'nginx.conf.j2');
      if (desired.nginx !== undefined) writeFileSync(template, ansibleNginxTemplate(desired.nginx));
      writeFileSync(playbook, ansiblePlaybook(desired, template));
      return { argv: ['ansible-playbook', '-c', 'local', '-i', 'localhost,', playbook], env: ANSIBLE_ENV, okCodes: [0] };
    },
  };
}
