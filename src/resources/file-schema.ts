import { z } from 'zod';
import { absolutePath, fileMode, pathString } from '../graph/schema-util.js';
import { once } from '../util/once.js';

/**
 * Parameters of `file`; kept apart from the implementation so the schema can be read on its own. Built on first use:
 * its ~40 schema nodes were milliseconds of every start-up, an empty graph's and a `--version`'s too.
 */
export const fileSchema = once(() =>
  z
  .strictObject({
    path: absolutePath().meta({ description: 'absolute path; defaults to the resource name' }),
    state: z.enum(['exists', 'absent']).default('exists'),
    type: z.enum(['file', 'directory', 'symlink']).default('file').meta({ description: 'what should be at path' }),
    content: z.string().optional().meta({ description: 'inline content of a regular file' }),
    source: absolutePath().optional().meta({ description: 'copy content from this local file' }),
    target: pathString().optional().meta({ description: 'where a symlink points' }),
    mode: fileMode().optional().meta({ description: 'permission bits in octal as chmod reads them ("0644", 644) or symbolic, absolute ("u=rw,go=r")' }),
    owner: z.union([z.string().min(1), z.number().int().nonnegative()]).optional().meta({ description: 'user name or uid' }),
    group: z.union([z.string().min(1), z.number().int().nonnegative()]).optional().meta({ description: 'group name or gid' }),
    purge: z.boolean().default(false).meta({ description: 'directory only: remove entries no resource in the graph manages' }),
    force: z.boolean().default(false).meta({ description: 'replace something of another type at path (e.g. a directory where a file belongs)' }),
  })
  .superRefine((p, ctx) => {
    if (p.content !== undefined && p.source !== undefined)
      ctx.addIssue({ code: 'custom', path: ['source'], message: 'give either content or source, not both' });
    if (p.type !== 'file' && (p.content !== undefined || p.source !== undefined))
      ctx.addIssue({ code: 'custom', path: [p.content !== undefined ? 'content' : 'source'], message: `only a regular file has content; this one is a ${p.type}` });
    if (p.type === 'symlink' && p.state === 'exists' && p.target === undefined)
      ctx.addIssue({ code: 'custom', path: ['target'], message: 'a symlink needs a target' });
    if (p.type !== 'symlink' && p.target !== undefined)
      ctx.addIssue({ code: 'custom', path: ['target'], message: 'target is only for type: symlink' });
    if (p.purge && p.type !== 'directory')
      ctx.addIssue({ code: 'custom', path: ['purge'], message: 'purge is only for type: directory' });
  }),
);

export type FileSchema = ReturnType<typeof fileSchema>;
export type FileParams = z.output<FileSchema>;
