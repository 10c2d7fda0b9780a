import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import type { Desired, Invocation, Tool } from './types.js';

/**
 * A playbook as an Ansible user would write it: the directory, then one `copy` task looping over the files, then
 * one `command` task per exec in dependency order (Ansible runs tasks one after another, so order is its edge).
 * Facts are not gathered: nothing here needs them, and gathering costs ~3.7 s per run.
 */
export function ansiblePlaybook(desired: Desired): string {
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
  if (desired.files.length > 0) play['vars'] = { bench_files: desired.files.map((f) => ({ ...f })) };
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
      writeFileSync(playbook, ansiblePlaybook(desired));
      return { argv: ['ansible-playbook', '-c', 'local', '-i', 'localhost,', playbook], env: ANSIBLE_ENV, okCodes: [0] };
    },
  };
}
