import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/**
 * Tiny real Debian packages and a private apt repository for tests. Packages are built with dpkg-deb; the
 * repository is a flat `file:` one whose Packages index is written here (no dpkg-dev needed). apt is pointed at it
 * only through `-o Dir::…` options, so the machine's apt configuration, lists and caches are never touched
 * (FACTS.md fact 14). Every package is named `bp-test-<random>-…`, so it can never collide with a real one.
 */

export interface DebSpec {
  /** Suffix after the repository's prefix: `a` becomes `bp-test-1a2b3c-a`. */
  readonly name: string;
  readonly version: string;
  readonly depends?: string;
  readonly provides?: string;
  /** Absolute path -> content. */
  readonly files?: Readonly<Record<string, string>>;
  /** Paths among `files` that dpkg should treat as conffiles (kept on remove, deleted on purge). */
  readonly conffiles?: readonly string[];
  /** Shell text for DEBIAN/postinst. */
  readonly postinst?: string;
}

const APT_ENV = { ...process.env, DEBIAN_FRONTEND: 'noninteractive', LC_ALL: 'C' };

export class DebRepo {
  readonly prefix: string;
  private readonly built: { file: string; control: string }[] = [];

  private constructor(
    readonly dir: string,
    prefix: string,
  ) {
    this.prefix = prefix;
  }

  static async create(): Promise<DebRepo> {
    const dir = await mkdtemp(join(tmpdir(), 'bp-debrepo-'));
    for (const d of ['repo', 'build', 'lists/partial', 'cache/archives/partial']) await mkdir(join(dir, d), { recursive: true });
    const prefix = `bp-test-${randomBytes(3).toString('hex')}`;
    await writeFile(join(dir, 'sources.list'), `deb [trusted=yes] file:${join(dir, 'repo')} ./\n`);
    return new DebRepo(dir, prefix);
  }

  /** The full package name of a suffix. */
  pkg(suffix: string): string {
    return `${this.prefix}-${suffix}`;
  }

  /** apt-get options that make apt see this repository and nothing else, and keep its cache private. */
  get aptOptions(): string[] {
    return [
      '-o', `Dir::Etc::sourcelist=${join(this.dir, 'sources.list')}`,
      '-o', 'Dir::Etc::sourceparts=-',
      '-o', `Dir::State::Lists=${join(this.dir, 'lists')}`,
      '-o', 'APT::Get::List-Cleanup=0',
      '-o', `Dir::Cache=${join(this.dir, 'cache')}`,
      // Other tests and people on this machine run apt too: wait for them rather than fail (the product's 60 s
      // is too short on a busy shared machine). A test that wants a short wait appends its own option after these.
      '-o', 'DPkg::Lock::Timeout=300',
    ];
  }

  /** Builds a .deb into the repository (call publish() afterwards). Returns the path of the .deb. */
  async add(spec: DebSpec): Promise<string> {
    const name = this.pkg(spec.name);
    const root = join(this.dir, 'build', `${name}_${spec.version}`);
    await mkdir(join(root, 'DEBIAN'), { recursive: true });
    const fields = [
      `Package: ${name}`,
      `Version: ${spec.version}`,
      'Architecture: all',
      'Maintainer: Backplane tests <tests@backplane.invalid>',
      'Priority: optional',
      'Section: misc',
      ...(spec.depends === undefined ? [] : [`Depends: ${spec.depends}`]),
      ...(spec.provides === undefined ? [] : [`Provides: ${spec.provides}`]),
      `Description: Backplane test package ${spec.name}`,
      ' Built by test/helpers/deb.ts; safe to purge.',
    ];
    const control = `${fields.join('\n')}\n`;
    await writeFile(join(root, 'DEBIAN', 'control'), control);
    for (const [path, content] of Object.entries(spec.files ?? {})) {
      const target = join(root, path);
      await mkdir(dirname(target), { recursive: true });
      await writeFile(target, content);
    }
    if (spec.conffiles !== undefined) await writeFile(join(root, 'DEBIAN', 'conffiles'), `${spec.conffiles.join('\n')}\n`);
    if (spec.postinst !== undefined) {
      await writeFile(join(root, 'DEBIAN', 'postinst'), `#!/bin/sh\nset -e\n${spec.postinst}\n`);
      await chmod(join(root, 'DEBIAN', 'postinst'), 0o755);
    }
    const file = join(this.dir, 'repo', `${name}_${spec.version}_all.deb`);
    await run('dpkg-deb', ['--root-owner-group', '-Zgzip', '--build', root, file]);
    this.built.push({ file, control });
    return file;
  }

  /** Writes the Packages index and has apt read it into the private lists directory. */
  async publish(): Promise<void> {
    const stanzas: string[] = [];
    for (const { file, control } of this.built) {
      const data = await readFile(file);
      const extra = [
        `Filename: ./${file.slice(file.lastIndexOf('/') + 1)}`,
        `Size: ${data.length}`,
        `MD5sum: ${createHash('md5').update(data).digest('hex')}`,
        `SHA256: ${createHash('sha256').update(data).digest('hex')}`,
      ];
      // Description must stay last: its continuation line follows it.
      const lines = control.trimEnd().split('\n');
      const descAt = lines.findIndex((l) => l.startsWith('Description:'));
      lines.splice(descAt, 0, ...extra);
      stanzas.push(lines.join('\n'));
    }
    await writeFile(join(this.dir, 'repo', 'Packages'), `${stanzas.join('\n\n')}\n`);
    await run('apt-get', ['update', '-q', ...this.aptOptions], { env: APT_ENV });
  }

  /** Installed (in any state) packages of this repository, from dpkg's database. */
  async installed(): Promise<string[]> {
    const text = await readFile('/var/lib/dpkg/status', 'utf8');
    const out: string[] = [];
    for (const m of text.matchAll(/^Package: (\S+)$/gm)) if (m[1]?.startsWith(`${this.prefix}-`)) out.push(m[1]);
    return out;
  }

  /** Purges every package of this repository and deletes the repository. */
  async cleanup(): Promise<void> {
    const names = await this.installed();
    if (names.length > 0) {
      try {
        await run('apt-get', ['purge', '-y', '-q', '-o', 'DPkg::Lock::Timeout=120', ...this.aptOptions, ...names], { env: APT_ENV });
      } catch {
        // apt refuses when something is in a broken state; dpkg itself is blunter.
        await dpkg(['--purge', '--force-all', ...names]);
      }
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}

/**
 * Runs dpkg directly, as a person would. dpkg does not wait for its lock (apt does), and other tests on this machine
 * may be running apt: retry while the lock is held.
 */
export async function dpkg(args: readonly string[], timeoutMs = 120_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const { stdout } = await run('dpkg', [...args], { env: APT_ENV });
      return stdout;
    } catch (err) {
      const stderr = (err as { stderr?: string }).stderr ?? '';
      if (!/lock/i.test(stderr) || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}
