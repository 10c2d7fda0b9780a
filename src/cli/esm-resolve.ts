import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { isBuiltin } from 'node:module';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';

/**
 * What `import.meta.resolve(specifier)` answers in an ES module, for the launcher (src/cli/launcher.ts), which is built as CommonJS:
 * the CLI bundle asks for the file an ES module import of a package gets (tsx's `esm/api`, which a worker then
 * imports), and require.resolve would give the package's CommonJS build instead. A bare specifier of a package with
 * an `exports` map resolves with the conditions of an ES module import in Node (`node`, `import`, `default`), in the
 * map's order; a package without one, or a subpath it does not list as a plain target, resolves as require() would.
 * test/cli/startup.test.ts holds it to import.meta.resolve.
 */
export function resolveImport(specifier: string, require: NodeJS.Require): string {
  if (isBuiltin(specifier)) return specifier.startsWith('node:') ? specifier : `node:${specifier}`;
  const m = /^((?:@[^/]+\/)?[^/.@][^/]*)(\/.*)?$/.exec(specifier);
  if (m?.[1] !== undefined) {
    // The package's directory as Node looks for it: node_modules/<name> in this directory and each one above.
    const name = m[1];
    const manifest = (require.resolve.paths(name) ?? []).map((dir) => join(dir, name, 'package.json')).find((f) => existsSync(f));
    if (manifest !== undefined) {
      const exportsField = (JSON.parse(readFileSync(manifest, 'utf8')) as { exports?: unknown }).exports;
      const subpath = `.${m[2] ?? ''}`;
      const entry = isConditions(exportsField) && Object.keys(exportsField).every((k) => k.startsWith('.')) ? exportsField[subpath] : subpath === '.' ? exportsField : undefined;
      const target = conditional(entry);
      // Real paths, as Node's resolver gives (a package directory may be a symlink, as npm link and pnpm make).
      if (target?.startsWith('./') === true) return pathToFileURL(realpathSync(join(dirname(manifest), target))).href;
    }
  }
  return pathToFileURL(require.resolve(specifier)).href;
}

function isConditions(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The target a conditional export picks for an ES module import (Node's PACKAGE_TARGET_RESOLVE, strings only). */
function conditional(target: unknown): string | undefined {
  if (typeof target === 'string') return target;
  if (!isConditions(target)) return undefined;
  for (const [condition, value] of Object.entries(target)) {
    if (condition !== 'node' && condition !== 'import' && condition !== 'default') continue;
    const picked = conditional(value);
    if (picked !== undefined) return picked;
  }
  return undefined;
}
