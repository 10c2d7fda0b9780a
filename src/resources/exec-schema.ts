import { z } from 'zod';
import { absolutePath, duration } from '../graph/schema-util.js';
import { once } from '../util/once.js';

/** A command: an argv array (no shell), or a string run by the shell. */
const commandSchema = () => z.union([z.array(z.string()).min(1), z.string().min(1)]);
export type Command = z.output<ReturnType<typeof commandSchema>>;

/** The exec kind's parameters, built on first use: a graph without an exec does not pay for them at start-up. */
export const execSchema = once(() => {
  const command = commandSchema();
  return z
    .strictObject({
      cmd: command.meta({ description: 'argv array, e.g. ["systemctl", "reload", "nginx"]; a string needs shell: true' }),
      shell: z.union([z.boolean(), absolutePath()]).default(false).meta({ description: 'run cmd (a string) with /bin/sh, or with the shell at this path' }),
      cwd: absolutePath().optional(),
      env: z.record(z.string(), z.string()).default({}).meta({ description: 'extra environment variables' }),
      timeout: duration().default(0).meta({ description: 'kill the command after this long; 0 = no limit' }),
      creates: absolutePath().optional().meta({ description: 'skip when this path exists' }),
      onlyif: command.optional().meta({ description: 'run only if this command succeeds (a string runs in the shell)' }),
      unless: command.optional().meta({ description: 'run only if this command fails (a string runs in the shell)' }),
      refreshOnly: z.boolean().default(false).meta({ description: 'run only when notified by a changed resource' }),
      watch: z
        .strictObject({
          cmd: command.optional().meta({ description: 'long-running command; each line it prints re-triggers the exec' }),
          files: z.array(absolutePath()).default([]).meta({ description: 'paths whose changes re-trigger the exec' }),
        })
        .optional(),
    })
    .superRefine((p, ctx) => {
      if (typeof p.cmd === 'string' && p.shell === false)
        ctx.addIssue({
          code: 'custom',
          path: ['cmd'],
          message: 'a command string needs shell: true; or give an argv array such as ["sleep", "2"]',
        });
    });
});

export type ExecSchema = ReturnType<typeof execSchema>;
export type ExecParams = z.output<ExecSchema>;
