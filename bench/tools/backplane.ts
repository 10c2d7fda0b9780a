import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import type { Desired, Invocation, Tool } from './types.js';

/** The repository root, found from this file so the bench can be started from any directory. */
export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const BACKPLANE_BIN = join(REPO_ROOT, 'bin', 'backplane.js');

/**
 * The launcher only imports the built CLI, so Backplane can be measured only once `npm run build` produced it.
 * The built file's name is read from the launcher rather than assumed, since the build layout may change.
 */
export function backplaneBuilt(): boolean {
  const launcher = readFileSync(BACKPLANE_BIN, 'utf8');
  const target = /import\s+['"]([^'"]+)['"]/.exec(launcher)?.[1];
  return target !== undefined && existsSync(join(dirname(BACKPLANE_BIN), target));
}

export function backplaneVersion(): string {
  const pkg: unknown = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8'));
  const version = typeof pkg === 'object' && pkg !== null && 'version' in pkg ? pkg.version : undefined;
  return typeof version === 'string' ? version : 'unknown';
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
      return {
        argv: [process.execPath, BACKPLANE_BIN, 'run', '--file', graph, '--converged-timeout', '0'],
        okCodes: [0],
      };
    },
  };
}
