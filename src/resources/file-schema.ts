import { z } from 'zod';
import { parseFileMode } from '../graph/file-mode.js';
import { absolutePath, fileMode, pathProblem, pathString } from '../graph/schema-util.js';
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

const QUICK_KEYS = new Set(['path', 'state', 'type', 'content', 'mode']);

/**
 * fileSchema's answer for the parameters nearly every file is declared with (a path, content, a mode, a type or a
 * state, nothing else), worked out without zod: the schema was ~6 µs a resource, about half of validating a graph of
 * files, which every cold start pays before its first change. The same checks as the schema's (pathProblem, the
 * absolute-path refinements, parseFileMode, the cross-field rules), the output in the schema's key order with its
 * defaults. Anything else (owner, source, purge, a symlink, a value of another type, any problem at all) is
 * undefined: the schema decides and reports it, so no message and no accepted input differs.
 */
export function quickFileParams(name: string, params: Readonly<Record<string, unknown>>): FileParams | undefined {
  for (const key in params) if (!QUICK_KEYS.has(key) || params[key] === undefined) return undefined;
  const path = 'path' in params ? params['path'] : name;
  if (typeof path !== 'string' || path.length === 0 || path.charCodeAt(0) !== 0x2f || pathProblem(path) !== undefined) return undefined;
  if (path.includes('..') && path.split('/').includes('..')) return undefined;
  // Not `??`: a null is refused by the schema, not defaulted.
  const state = params['state'] === undefined ? 'exists' : params['state'];
  if (state !== 'exists' && state !== 'absent') return undefined;
  const type = params['type'] === undefined ? 'file' : params['type'];
  // A symlink needs a target, which this shortcut does not take.
  if (type !== 'file' && type !== 'directory') return undefined;
  const content = params['content'];
  if (content !== undefined && (typeof content !== 'string' || type !== 'file')) return undefined;
  const modeIn = params['mode'];
  let mode: number | undefined;
  if (modeIn !== undefined) {
    if (typeof modeIn !== 'string' && typeof modeIn !== 'number') return undefined;
    // The files of a graph mostly share a mode or two: the last one read is not parsed again.
    if (modeIn !== lastMode.text) {
      const m = parseFileMode(modeIn);
      if (!m.ok) return undefined;
      lastMode = { text: modeIn, mode: m.mode };
    }
    mode = lastMode.mode;
  }
  // Keys as the schema's output has them: its shape's order, present ones only, then the defaults. Each shape written
  // out whole: properties added one by one past a literal's own go to a separate, grown backing store (an object and
  // its copies per file, ~60 ms of building 100,000 files' parameters).
  const out =
    content === undefined
      ? mode === undefined
        ? { path, state, type, purge: false, force: false }
        : { path, state, type, mode, purge: false, force: false }
      : mode === undefined
        ? { path, state, type, content, purge: false, force: false }
        : { path, state, type, content, mode, purge: false, force: false };
  return out as FileParams;
}

/** The last mode quickFileParams parsed (text: undefined until then). */
let lastMode: { readonly text: string | number | undefined; readonly mode: number } = { text: undefined, mode: 0 };
