import { watch as fsWatch } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { hostname as kernelHostname } from 'node:os';
import { z } from 'zod';
import { BackplaneError, errorMessage } from '../errors.js';
import { writeFileAtomic } from '../util/atomic-write.js';
import { defineKind } from './types.js';
import { once } from '../util/once.js';

const ETC = '/etc';
const STATIC_FILE = `${ETC}/hostname`;
const KERNEL_FILE = '/proc/sys/kernel/hostname';
/** The kernel hostname is never announced when it changes: it is re-read on this interval. */
const KERNEL_POLL_MS = 2000;

/** RFC 1123 labels joined by dots; the kernel holds at most 64 bytes (HOST_NAME_MAX). */
const HOSTNAME = /^(?=.{1,64}$)[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$/;

/** The hostname kind's parameters, built on first use (a graph without one does not pay for them at start-up). */
const paramsSchema = once(() =>
  z.strictObject({
    hostname: z
      .string()
      .regex(HOSTNAME, 'must be a hostname: letters, digits and "-", dot-separated labels, at most 64 characters')
      .meta({ description: 'the hostname; defaults to the resource name' }),
  }),
);

/**
 * The machine's hostname (mgmt's `hostname`): the static one in /etc/hostname, read at boot, and the running
 * kernel's, which is what `hostname` prints and other programs see now. Both are set together, without systemd.
 */
export const hostnameKind = defineKind({
  kind: 'hostname',
  description: "the machine's hostname: /etc/hostname and the running kernel's",
  get schema() {
    return paramsSchema();
  },
  defaults: (name) => ({ hostname: name }),
  // Another host's export must not rename this one unless the collect rule says so (see CollectPolicy).
  collect: { power: { hostname: "this host's name" }, fromName: ['hostname'] },
  create: (id, p) => ({
    async watch({ signal, ready, changed }) {
      // /etc is watched as a directory, because the file itself is replaced by rename (FACTS 9).
      const w = fsWatch(ETC, { signal }, (_event, file) => {
        if (file === 'hostname') changed('/etc/hostname changed');
      });
      w.on('error', () => undefined);
      let last = kernelHostname();
      const timer = setInterval(() => {
        const now = kernelHostname();
        if (now !== last) changed(`kernel hostname changed to ${now}`);
        last = now;
      }, KERNEL_POLL_MS);
      ready();
      await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
      clearInterval(timer);
      w.close();
    },
    async checkApply({ apply }) {
      const changes: string[] = [];
      const staticNow = await readStatic();
      const kernelNow = kernelHostname();
      if (staticNow !== p.hostname) changes.push(`/etc/hostname ${staticNow === undefined ? 'missing' : `"${staticNow}"`} -> "${p.hostname}"`);
      if (kernelNow !== p.hostname) changes.push(`running hostname "${kernelNow}" -> "${p.hostname}"`);
      if (changes.length === 0) return { converged: true, changes };
      if (!apply) return { converged: false, changes };
      try {
        if (staticNow !== p.hostname) await writeStatic(p.hostname);
        if (kernelNow !== p.hostname) await writeFile(KERNEL_FILE, p.hostname);
      } catch (err) {
        throw new BackplaneError('E_APPLY', `could not set the hostname to "${p.hostname}": ${errorMessage(err)}`, {
          resource: id,
          cause: err,
          hint: 'the agent must run as root (with CAP_SYS_ADMIN for the running hostname)',
        });
      }
      return { converged: false, changes };
    },
  }),
});

/** The first non-comment line of /etc/hostname, as hostname(5) reads it. */
async function readStatic(): Promise<string | undefined> {
  let text: string;
  try {
    text = await readFile(STATIC_FILE, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  return text
    .split('\n')
    .map((l) => l.trim())
    .find((l) => l !== '' && !l.startsWith('#'));
}

/** Atomically and durably (temp file in /etc, fsync, rename, fsync of /etc). */
async function writeStatic(name: string): Promise<void> {
  await writeFileAtomic(STATIC_FILE, `${name}\n`, 0o644);
}
