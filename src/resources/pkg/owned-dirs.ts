import { readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { DPKG_ADMIN_DIR, nativeArch } from './status.js';

/**
 * The directories an installed package can be said to own, for auto-edges: a `file` under /etc/nginx should be
 * managed after pkg[nginx]. dpkg's `info/<pkg>.list` names every path the package installed, including every
 * parent directory, so a path is a directory exactly when another listed path lies under it — no stat needed.
 *
 * Many directories are listed by hundreds of packages (/etc, /usr/share/doc, /etc/logrotate.d); an edge from one of
 * them would order unrelated files after an arbitrary package and easily close a cycle (a config file declared
 * *before* its package, as for preseeding /etc/default/x). Those shared directories are left out: everything at
 * depth 1, the FHS directories below it, drop-in directories (`*.d`) and whole shared trees (man pages, locales,
 * systemd units, multiarch library directories). Leaving out a directory the package does own costs nothing when
 * an owned ancestor remains, since a file wants every one of its ancestors.
 */

/** Shared directories themselves (their package-specific subdirectories are kept). */
const SHARED = new Set([
  '/usr/bin', '/usr/sbin', '/usr/lib', '/usr/lib32', '/usr/lib64', '/usr/libx32', '/usr/libexec', '/usr/include',
  '/usr/share', '/usr/src', '/usr/local', '/usr/games',
  '/var/lib', '/var/log', '/var/cache', '/var/spool', '/var/run', '/var/tmp', '/var/backups', '/var/mail', '/var/opt',
  '/var/local', '/var/www',
  '/etc/default', '/etc/X11', '/etc/xdg', '/etc/systemd', '/etc/init', '/etc/network', '/etc/security', '/etc/ssl',
  '/etc/cron.daily', '/etc/cron.hourly', '/etc/cron.weekly', '/etc/cron.monthly', '/etc/cron.yearly',
  '/etc/dbus-1', '/etc/alternatives', '/etc/apt', '/etc/dpkg', '/etc/perl', '/etc/python3', '/etc/gss', '/etc/kernel',
  '/usr/share/doc', '/usr/share/doc-base', '/usr/share/common-licenses', '/usr/share/perl5', '/usr/share/java',
  '/usr/share/python3', '/usr/share/fonts', '/usr/share/themes', '/usr/share/sounds', '/usr/share/keyrings',
  '/usr/share/pkgconfig', '/usr/share/aclocal', '/usr/share/gettext', '/usr/share/emacs', '/usr/share/vim',
  '/usr/share/misc', '/usr/share/debconf', '/usr/share/initramfs-tools', '/usr/share/glib-2.0',
  '/usr/share/glib-2.0/schemas',
  '/usr/lib/python3', '/usr/lib/python3/dist-packages', '/usr/lib/node_modules', '/usr/lib/pkgconfig',
  '/usr/lib/mime', '/usr/lib/mime/packages', '/usr/lib/sysctl.d', '/usr/lib/tmpfiles.d', '/usr/lib/sysusers.d',
  '/usr/lib/modules-load.d', '/usr/lib/binfmt.d', '/usr/lib/environment.d', '/usr/lib/locale', '/usr/lib/jvm',
  '/usr/local/bin', '/usr/local/sbin', '/usr/local/lib', '/usr/local/share', '/usr/local/etc', '/usr/local/include',
]);

/** Shared trees: the directory and everything below it. */
const SHARED_TREES = [
  '/usr/share/man', '/usr/share/locale', '/usr/share/info', '/usr/share/icons', '/usr/share/pixmaps',
  '/usr/share/applications', '/usr/share/lintian', '/usr/share/bug', '/usr/share/menu', '/usr/share/mime',
  '/usr/share/metainfo', '/usr/share/bash-completion', '/usr/share/zsh', '/usr/share/fish', '/usr/share/help',
  '/usr/share/dbus-1', '/usr/share/polkit-1', '/usr/share/systemd',
  '/lib/systemd', '/usr/lib/systemd', '/etc/systemd', '/lib/udev', '/usr/lib/udev', '/lib/modules', '/usr/lib/modules',
  '/lib/firmware', '/usr/lib/firmware', '/etc/rc0.d', '/etc/rc1.d', '/etc/rc2.d', '/etc/rc3.d', '/etc/rc4.d',
  '/etc/rc5.d', '/etc/rc6.d', '/etc/rcS.d', '/usr/lib/debug', '/var/lib/dpkg', '/var/lib/ucf', '/var/lib/systemd',
];

/** Multiarch library directories such as /usr/lib/x86_64-linux-gnu, shared by every library package. */
const MULTIARCH = /^\/(usr\/)?lib\/[a-z0-9_]+-linux-[a-z0-9_]+(\/|$)/;

export function isSharedDirectory(dir: string): boolean {
  if (dir === '/' || dir.lastIndexOf('/') === 0) return true;
  if (SHARED.has(dir)) return true;
  // Drop-in directories (/etc/logrotate.d, /etc/apt/apt.conf.d) are where other packages and admins put files. A
  // package's own drop-in directory loses nothing by this: files in /etc/nginx/conf.d also want /etc/nginx.
  if (dir.endsWith('.d')) return true;
  if (MULTIARCH.test(dir)) return true;
  for (const t of SHARED_TREES) if (dir === t || dir.startsWith(`${t}/`)) return true;
  return false;
}

/** Directories named in a dpkg `.list` text that this package owns in particular (see above). */
export function ownedDirectories(listText: string): string[] {
  const paths = new Set<string>();
  for (const raw of listText.split('\n')) {
    const p = raw.trim();
    if (p.startsWith('/') && p !== '/.') paths.add(p.length > 1 && p.endsWith('/') ? p.slice(0, -1) : p);
  }
  const dirs = new Set<string>();
  for (const p of paths) {
    const d = dirname(p);
    if (d !== p && paths.has(d)) dirs.add(d);
  }
  return [...dirs].filter((d) => !isSharedDirectory(d)).sort();
}

interface Cached {
  readonly signature: string;
  readonly dirs: readonly string[];
}
const cache = new Map<string, Cached>();

/**
 * Owned directories of an installed package, read from dpkg's file list (`<name>.list`, or `<name>:<arch>.list`
 * for a Multi-Arch: same package). Empty when the package is not installed. Synchronous because auto-edges are;
 * cached per list file version, since the graph builder asks again on every graph swap. The native architecture
 * (`arch`, a dpkg process) is asked only when there is no `<name>.list`: most packages have one.
 */
export function packageDirectories(name: string, adminDir: string = DPKG_ADMIN_DIR, arch: () => string = nativeArch): readonly string[] {
  const colon = name.indexOf(':');
  const candidates = colon !== -1 ? [() => name, () => name.slice(0, colon)] : [() => name, () => `${name}:${arch()}`];
  for (const candidate of candidates) {
    const file = join(adminDir, 'info', `${candidate()}.list`);
    let signature: string;
    try {
      const st = statSync(file);
      signature = `${st.ino}:${st.size}:${st.mtimeMs}`;
    } catch {
      continue;
    }
    const hit = cache.get(file);
    if (hit !== undefined && hit.signature === signature) return hit.dirs;
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    const dirs = ownedDirectories(text);
    cache.set(file, { signature, dirs });
    return dirs;
  }
  return [];
}
