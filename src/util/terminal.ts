/**
 * Text for a terminal from data others may have written (store keys and values, host names, file names): control
 * characters other than newline and tab are shown escaped (`\x1b`), so a hostile name cannot move the cursor, rewrite
 * what an operator sees, or send escape sequences to the terminal. C1 controls (U+0080-U+009F) count too: some
 * terminals act on them.
 */
export function terminalSafe(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}
