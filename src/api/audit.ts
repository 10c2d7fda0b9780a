import { constants as fsc } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import type { Caller } from './ops.js';

/**
 * The audit log: one JSON line per change asked of this agent's API by a known caller (who, what, when, and how it
 * ended: ok, error, or refused for a role or namespace that does not allow it), in `<stateDir>/audit.log`, 0600. Appended with O_APPEND (each line one write, so concurrent requests never
 * interleave inside a line) and opened O_NOFOLLOW (the state dir is root's, but a planted symlink must never send root's
 * writes elsewhere). A failure to record is logged and the change still answered: the change already happened.
 */

export const AUDIT_FILE = 'audit.log';
/** A request's input is cut to this many characters in the log: an audit line is a record, not a copy of the deploy. */
const MAX_INPUT_CHARS = 4000;

export const auditEntrySchema = z.object({
  at: z.string(),
  who: z.string(),
  role: z.string(),
  via: z.string(),
  tokenId: z.string().optional(),
  namespace: z.string().optional(),
  op: z.string(),
  input: z.unknown(),
  outcome: z.enum(['ok', 'error', 'refused']),
  error: z.string().optional(),
  remote: z.string().optional(),
});
export type AuditEntry = z.infer<typeof auditEntrySchema>;

export class AuditLog {
  private readonly path: string;
  private writing: Promise<void> = Promise.resolve();

  constructor(stateDir: string) {
    this.path = join(stateDir, AUDIT_FILE);
  }

  record(caller: Caller, op: string, input: unknown, outcome: { error?: string; refused?: boolean }, remote?: string): Promise<void> {
    let text = JSON.stringify(input ?? null);
    if (text.length > MAX_INPUT_CHARS) text = JSON.stringify(`${text.slice(0, MAX_INPUT_CHARS)}... (cut)`);
    const entry: AuditEntry = {
      at: new Date().toISOString(),
      who: caller.name,
      role: caller.role,
      via: caller.via,
      ...(caller.tokenId === undefined ? {} : { tokenId: caller.tokenId }),
      ...(caller.namespace === undefined ? {} : { namespace: caller.namespace }),
      op,
      input: JSON.parse(text) as unknown,
      outcome: outcome.refused === true ? 'refused' : outcome.error === undefined ? 'ok' : 'error',
      ...(outcome.error === undefined ? {} : { error: outcome.error }),
      ...(remote === undefined ? {} : { remote }),
    };
    const line = `${JSON.stringify(entry)}\n`;
    // One at a time, in order.
    this.writing = this.writing.then(async () => {
      const fh = await open(this.path, fsc.O_WRONLY | fsc.O_APPEND | fsc.O_CREAT | fsc.O_NOFOLLOW, 0o600);
      try {
        await fh.write(line);
      } finally {
        await fh.close();
      }
    });
    return this.writing;
  }

  /** The newest `limit` entries, oldest first; lines that do not parse are skipped (a torn last line after a crash). */
  async read(limit: number): Promise<AuditEntry[]> {
    await this.writing.catch(() => undefined);
    const text = await readFile(this.path, { encoding: 'utf8', flag: fsc.O_RDONLY | fsc.O_NOFOLLOW }).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return '';
      throw err;
    });
    const out: AuditEntry[] = [];
    for (const line of text.split('\n')) {
      if (line === '') continue;
      try {
        const r = auditEntrySchema.safeParse(JSON.parse(line));
        if (r.success) out.push(r.data);
      } catch {
        // A torn line: skipped.
      }
    }
    return out.slice(-limit);
  }
}
