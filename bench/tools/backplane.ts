import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { templateIn, type Desired, type Invocation, type NginxStack, type Tool } from './types.js';

/** The repository root, found from this file so the bench can be started from any directory. */
export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const BACKPLANE_BIN = join(REPO_ROOT, 'bin', 'backplane.js');

/**
 * The built file a launcher loads, relative to it: `import '../dist/x.mjs'` (an ES module launcher) or
 * `require('../dist/x.cjs')` (a CommonJS one); undefined when it names none.
 */
export function launcherTarget(launcher: string): string | undefined {
  // Comment lines go first: the launcher's comments may well mention what it used to import.
  const code = launcher
    .split('\n')
    .filter((line) => !/^\s*(\/\/|#!)/.test(line))
    .join('\n');
  return /(?:\bimport\s*\(?|\brequire\s*\()\s*['"]([^'"]+)['"]/.exec(code)?.[1];
}

/**
 * The launcher only loads the built CLI, so Backplane can be measured only once `npm run build` produced it.
 * The built file's name is read from the launcher rather than assumed, since the build layout may change.
 */
export function backplaneBuilt(): boolean {
  const target = launcherTarget(readFileSync(BACKPLANE_BIN, 'utf8'));
  return target !== undefined && existsSync(join(dirname(BACKPLANE_BIN), target));
}

export function backplaneVersion(): string {
  const pkg: unknown = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8'));
  const version = typeof pkg === 'object' && pkg !== null && 'version' in pkg ? pkg.version : undefined;
  return typeof version === 'string' ? version : 'unknown';
}

/**
 * The stack as examples/nginx.yaml writes it: the config template needs the package and notifies the server, which
 * Backplane supervises itself (nginx in the foreground) and counts as up once it answers its health check. It is
 * left running when the agent exits, as a peer's daemon is.
 */
function nginxResources(stack: NginxStack): Record<string, unknown>[] {
  const svc = `${stack.package}-bench`;
  return [
    { kind: 'pkg', name: stack.package },
    { kind: 'file', name: stack.docRoot, type: 'directory', mode: '0755' },
    { kind: 'file', name: stack.index.path, content: stack.index.content, mode: '0644' },
    {
      kind: 'template',
      name: stack.conf,
      mode: '0644',
      require: [`pkg[${stack.package}]`],
      notify: [`svc[${svc}]`],
      vars: { ...stack.vars },
      template: templateIn(stack, (name) => `{{ vars.${name} }}`),
    },
    {
      kind: 'svc',
      name: svc,
      cmd: [stack.binary, '-c', stack.conf, '-g', 'daemon off;'],
      reload: { signal: 'SIGHUP' },
      stopSignal: 'SIGQUIT',
      onAgentExit: 'keep',
      health: { http: `http://127.0.0.1:${stack.port}/` },
    },
  ];
}

/** The graph as Backplane's YAML frontend reads it; the directory is a resource because a file's parent must be. */
export function backplaneGraph(desired: Desired): string {
  const resources: Record<string, unknown>[] = [];
  if (desired.dir !== undefined) resources.push({ kind: 'file', name: desired.dir, type: 'directory' });
  for (const f of desired.files) resources.push({ kind: 'file', name: f.path, content: f.content, mode: '0644' });
  for (const e of desired.execs) {
    const exec: Record<string, unknown> = { kind: 'exec', name: e.name, cmd: [...e.argv] };
    if (e.after.length > 0) exec['require'] = e.after.map((name) => `exec[${name}]`);
    resources.push(exec);
  }
  if (desired.nginx !== undefined) resources.push(...nginxResources(desired.nginx));
  return stringify({ resources });
}

/** `run --converged-timeout 0`: apply once and exit as soon as everything is converged, like a peer's one-shot run. */
export function backplaneTool(): Tool {
  return {
    id: 'backplane',
    label: 'Backplane',
    version: backplaneVersion(),
    prepare(desired: Desired, workDir: string): Invocation {
      const graph = join(workDir, 'graph.yaml');
      writeFileSync(graph, backplaneGraph(desired));
      const argv = [process.execPath, BACKPLANE_BIN, 'run', '--file', graph, '--converged-timeout', '0'];
      // The svc record (pid, definition) must not land in the machine's /var/lib/backplane.
      if (desired.nginx !== undefined) argv.push('--state-dir', join(workDir, 'state'));
      return { argv, okCodes: [0] };
    },
  };
}
