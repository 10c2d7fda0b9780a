/**
 * File modes as users write them, read into permission bits (0..0o7777).
 *
 * - A number is taken as the bits it is: TypeScript's `0o644` or a JSON export's 420. (YAML's unquoted numbers never
 *   get here as numbers: the YAML reader hands over their source text, because `mode: 644` parses as decimal 644,
 *   which is 0o1204 — see frontends/document.ts.)
 * - Octal text, as chmod reads it: "644", "0644", "4755", "04755", or YAML 1.2's "0o644".
 * - Symbolic text, absolute forms only: "u=rw,go=r", "a=rx,u=rwx", "u=rwxs,g=rx,o=". A mode is a desired state, so it
 *   must say every bit: each of u, g and o must be assigned (clauses apply left to right, so a later clause overrides
 *   an earlier one). Relative forms (`a+x`, `go-w`, `X`, `g=u`) depend on the mode found on disk and are refused with
 *   the absolute form to write instead, rather than meaning something that changes with the file.
 */
export type ParsedMode = { readonly ok: true; readonly mode: number } | { readonly ok: false; readonly message: string };

const OCTAL = /^0?[0-7]{3,4}$/;
const OCTAL_1_2 = /^0o[0-7]{1,4}$/i;
/** What mode text looks like, for editors: octal, or absolute symbolic clauses. The parser has the last word. */
export const MODE_TEXT_PATTERN = '^(0?[0-7]{3,4}|0[oO][0-7]{1,4}|[ugoa]+=[rwxst]*(,[ugoa]+=[rwxst]*)*)$';
const WRITE = 'write the permission bits in octal ("0644", "0755") or symbolically ("u=rw,go=r")';

export function parseFileMode(v: string | number): ParsedMode {
  if (typeof v === 'number') {
    if (Number.isInteger(v) && v >= 0 && v <= 0o7777) return { ok: true, mode: v };
    return { ok: false, message: `${v} is not a file mode (0 to 0o7777); ${WRITE}` };
  }
  const s = v.trim();
  if (OCTAL.test(s)) return { ok: true, mode: parseInt(s, 8) };
  if (OCTAL_1_2.test(s)) return { ok: true, mode: parseInt(s.slice(2), 8) };
  if (/^[ugoa]*[=+-]/.test(s)) return parseSymbolic(s);
  if (/^\d+$/.test(s)) {
    const why = /[89]/.test(s) ? `${/[89]/.exec(s)?.[0] ?? '8'} is not an octal digit` : 'a mode has 3 or 4 octal digits';
    return { ok: false, message: `"${v}" is not a file mode: ${why}; ${WRITE}` };
  }
  return { ok: false, message: `"${v}" is not a file mode; ${WRITE}` };
}

// The bits each class owns: its rwx (shifted) and its special bit.
const CLASS = {
  u: { shift: 6, special: 0o4000, specialLetter: 's' },
  g: { shift: 3, special: 0o2000, specialLetter: 's' },
  o: { shift: 0, special: 0o1000, specialLetter: 't' },
} as const;
type Cls = keyof typeof CLASS;

function parseSymbolic(text: string): ParsedMode {
  let mode = 0;
  const assigned = new Set<Cls>();
  for (const clause of text.split(',')) {
    // Name the clause inside the mode only when the mode has more than one.
    const where = clause === text ? `"${text}"` : `"${text}": "${clause}"`;
    const m = /^([ugoa]*)([=+-])(.*)$/.exec(clause);
    if (m === null) return { ok: false, message: `${where} is not a clause like u=rw; ${WRITE}` };
    const [, whoText = '', op, perms = ''] = m;
    if (op !== '=')
      return {
        ok: false,
        message: `${where} changes bits relative to the mode found on disk; a mode here is the whole desired mode, so assign every class with "=", e.g. "u=rwx,go=rx"`,
      };
    if (whoText === '') return { ok: false, message: `${where} names no class; write u, g, o or a before "=", e.g. "a=r"` };
    const who: Cls[] = whoText.includes('a') ? ['u', 'g', 'o'] : [...new Set(whoText.split('') as Cls[])];
    for (const letter of perms) {
      if (!'rwxst'.includes(letter))
        return { ok: false, message: `"${text}": "${letter}" in "${clause}" is not r, w, x, s or t (X and copying another class depend on the mode on disk); ${WRITE}` };
      if ((letter === 's' || letter === 't') && !who.some((c) => CLASS[c].specialLetter === letter))
        return { ok: false, message: `"${text}": "${letter}" in "${clause}" applies to ${letter === 's' ? 'u or g (setuid, setgid)' : 'o or a (sticky)'} only` };
    }
    for (const c of who) {
      const { shift, special, specialLetter } = CLASS[c];
      let bits = 0;
      if (perms.includes('r')) bits |= 4 << shift;
      if (perms.includes('w')) bits |= 2 << shift;
      if (perms.includes('x')) bits |= 1 << shift;
      if (perms.includes(specialLetter)) bits |= special;
      mode = (mode & ~((7 << shift) | special)) | bits;
      assigned.add(c);
    }
  }
  const missing = (['u', 'g', 'o'] as const).filter((c) => !assigned.has(c));
  if (missing.length > 0)
    return {
      ok: false,
      message: `"${text}" does not say what ${missing.join(' and ')} may do; a mode here is the whole desired mode, so assign every class, e.g. "${text},${missing.join('')}="`,
    };
  return { ok: true, mode };
}

/**
 * Whether a declared mode sets setuid, setgid or sticky bits — the part of a mode that gives power to whoever chose
 * it. Every form is read by the same parser as the schema, so "u=rwxs,go=rx" or "0o4755" cannot slip a setuid bit
 * past a collect rule; a value that cannot be read counts as powerful (validation refuses it anyway).
 */
export function modeHasSpecialBits(v: unknown): boolean {
  if (typeof v !== 'string' && typeof v !== 'number') return true;
  const m = parseFileMode(v);
  return !m.ok || (m.mode & 0o7000) !== 0;
}
