import { chmodSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FILE_MODE, type FileSpec } from '../tools/types.js';

/** `count` files f0001… in dir, each with small distinct content that every tool can express without escaping. */
export function makeFiles(dir: string, count: number): FileSpec[] {
  const width = String(count).length;
  const files: FileSpec[] = [];
  for (let i = 1; i <= count; i++) {
    files.push({ path: join(dir, `f${String(i).padStart(width, '0')}`), content: `hello ${i}\n` });
  }
  return files;
}

/** An empty target directory, as for a cold run. */
export function emptyDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
}

/**
 * Writes the converged state directly: the "already converged" and "repair" workloads must not depend on an
 * untimed run of the tool itself (for Ansible that alone would take five minutes).
 */
export function writeConverged(dir: string, files: readonly FileSpec[]): void {
  emptyDir(dir);
  for (const f of files) writeFileSync(f.path, f.content, { mode: FILE_MODE });
  // writeFileSync's mode is filtered by the umask; set it explicitly so "converged" really is.
  for (const f of files) chmodSync(f.path, FILE_MODE);
}

/** Deletes one `fraction` of the files and alters the content of another, disjoint `fraction`. */
export function damage(files: readonly FileSpec[], fraction: number): void {
  const n = Math.round(files.length * fraction);
  const step = Math.max(1, Math.floor(files.length / (2 * n)));
  // Spread the damage evenly: even slots are deleted, odd slots altered, so both touch every part of the set.
  for (let k = 0; k < 2 * n; k++) {
    const f = files[(k * step) % files.length];
    if (f === undefined) continue;
    if (k % 2 === 0) unlinkSync(f.path);
    else writeFileSync(f.path, `altered ${k}\n`);
  }
}

/** Describes the first few differences from the desired state, or returns undefined when the files are right. */
export function verifyFiles(dir: string, files: readonly FileSpec[]): string | undefined {
  const problems: string[] = [];
  for (const f of files) {
    const problem = checkFile(f);
    if (problem !== undefined) problems.push(problem);
    if (problems.length >= 3) break;
  }
  if (problems.length === 0 && readdirSync(dir).length !== files.length) {
    problems.push(`${dir} has ${readdirSync(dir).length} entries, expected ${files.length}`);
  }
  return problems.length === 0 ? undefined : problems.join('; ');
}

export function checkFile(f: FileSpec): string | undefined {
  try {
    if (readFileSync(f.path, 'utf8') !== f.content) return `${f.path}: wrong content`;
    const mode = statSync(f.path).mode & 0o7777;
    if (mode !== FILE_MODE) return `${f.path}: mode ${mode.toString(8)}`;
    return undefined;
  } catch {
    return `${f.path}: missing`;
  }
}

/** Cheaper check for tight loops: content only. */
export function hasContent(path: string, content: string): boolean {
  try {
    return readFileSync(path, 'utf8') === content;
  } catch {
    return false;
  }
}
