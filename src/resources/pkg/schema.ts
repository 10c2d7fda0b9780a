import { z } from 'zod';
import { once } from '../../util/once.js';

/** Debian policy §5.6.1: lowercase alphanumerics and + - . , at least two characters, starting alphanumeric. */
const PACKAGE_NAME = /^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?$/;
/** Debian policy §5.6.12: [epoch:]upstream[-revision]; starting with a digit is only a should, so not enforced. */
const VERSION = /^([0-9]+:)?[A-Za-z0-9][A-Za-z0-9.+~:-]*$/;

/** The pkg kind's parameters, built on first use: a graph without a pkg does not pay for them at start-up. */
export const pkgSchema = once(() =>
  z
    .strictObject({
      name: z
        .string()
        .regex(PACKAGE_NAME, 'must be a Debian package name such as "nginx" or "libc6:i386" (lowercase letters, digits, + - .)')
        .meta({ description: 'package name, optionally with :arch; defaults to the resource name' }),
      state: z
        .string()
        .min(1)
        .default('installed')
        .refine((s) => s === 'installed' || s === 'absent' || VERSION.test(s), {
          message: 'must be "installed", "absent" or an exact version such as "1.24.0-2" or "1:2.3-1"',
        })
        .meta({ description: '"installed" (any version), "absent", or an exact version to install, upgrade or downgrade to' }),
      purge: z.boolean().default(false).meta({ description: 'with state: absent, also remove configuration files (apt-get purge)' }),
      aptOptions: z
        .array(z.string().min(1))
        .default([])
        .meta({ description: 'extra apt-get arguments, e.g. ["-o", "APT::Install-Recommends=1"] or ["-t", "bookworm-backports"]' }),
    })
    .superRefine((p, ctx) => {
      if (p.purge && p.state !== 'absent')
        ctx.addIssue({ code: 'custom', path: ['purge'], message: 'purge only applies to state: absent' });
    }),
);

export type PkgSchema = ReturnType<typeof pkgSchema>;
export type PkgParams = z.output<PkgSchema>;

/** The keys quickPkgParams takes: all of them (the schema is small), each checked as the schema checks it. */
const QUICK_KEYS = new Set(['name', 'state', 'purge', 'aptOptions']);

/**
 * pkgSchema's answer without zod, for a pkg declared with any of its four parameters (`{ kind: pkg, name: nginx }`
 * is nearly all of them): loading zod and building and running this schema was ~3 ms of a cold run with one package
 * (zod alone is a 304 KB script). The same checks (PACKAGE_NAME, VERSION, the purge rule), the schema's key order
 * and defaults, fresh arrays. Anything else, or any problem, is undefined: the schema decides and reports it.
 */
export function quickPkgParams(name: string, params: Readonly<Record<string, unknown>>): PkgParams | undefined {
  for (const key in params) if (!QUICK_KEYS.has(key) || params[key] === undefined) return undefined;
  const pkg = 'name' in params ? params['name'] : name;
  if (typeof pkg !== 'string' || !PACKAGE_NAME.test(pkg)) return undefined;
  // Not `??`: a null is refused by the schema, not defaulted.
  const state = params['state'] === undefined ? 'installed' : params['state'];
  if (typeof state !== 'string' || !(state === 'installed' || state === 'absent' || VERSION.test(state))) return undefined;
  const purge = params['purge'] === undefined ? false : params['purge'];
  if (typeof purge !== 'boolean' || (purge && state !== 'absent')) return undefined;
  const optsIn = params['aptOptions'];
  let aptOptions: string[] = [];
  if (optsIn !== undefined) {
    if (!Array.isArray(optsIn)) return undefined;
    for (const o of optsIn as unknown[]) if (typeof o !== 'string' || o.length === 0) return undefined;
    aptOptions = [...(optsIn as string[])];
  }
  return { name: pkg, state, purge, aptOptions };
}
