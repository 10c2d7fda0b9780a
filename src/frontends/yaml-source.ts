import { LineCounter, isAlias, isMap, isPair, isScalar, isSeq, parseDocument, type Document, type Node, type Pair } from 'yaml';
import { BackplaneError, type SourceLocation } from '../errors.js';

/**
 * A parsed YAML document that can point back into itself: every error about user input names file:line:col.
 */
export class YamlSource {
  readonly doc: Document.Parsed;
  private readonly lines = new LineCounter();

  constructor(
    readonly file: string,
    text: string,
  ) {
    this.doc = parseDocument(text, { lineCounter: this.lines, prettyErrors: false, uniqueKeys: true });
  }

  /** Syntax errors, each with its position and the parser's own words. */
  syntaxErrors(): BackplaneError[] {
    return this.doc.errors.map((e) => {
      const pos = this.lines.linePos(e.pos[0]);
      return new BackplaneError('E_YAML', `invalid YAML: ${firstLine(e.message).replace(/ at line \d+, column \d+:?$/, '')}`, {
        where: { file: this.file, line: pos.line, col: pos.col },
        hint: /flow (sequence|collection|map)/i.test(e.message)
          ? 'check brackets and commas; inside a flow list [...] quote references written kind[name]: ["exec[x]"], or write kind:name; nothing was applied'
          : 'fix the YAML syntax (indentation, quotes, a missing colon); nothing was applied',
      });
    });
  }

  at(node: Node | Pair | null | undefined): SourceLocation {
    let range: readonly number[] | null | undefined;
    if (isPair(node)) range = (node.key as Node | null)?.range;
    else range = node?.range;
    const offset = range?.[0] ?? 0;
    const pos = this.lines.linePos(offset);
    return { file: this.file, line: pos.line, col: pos.col };
  }

  /**
   * Where `path` lies below `node`: the key of the last map entry found on the way, so an unknown or wrong
   * parameter points at the line that names it; falls back to the deepest node found.
   */
  locate(node: Node | null | undefined, path: readonly PropertyKey[], value = false): SourceLocation {
    let cur: unknown = node;
    let best: SourceLocation = this.at(node ?? undefined);
    for (const [i, seg] of path.entries()) {
      if (isMap(cur)) {
        const pair = cur.items.find((p) => isScalar(p.key) && String(p.key.value) === String(seg));
        if (pair === undefined) break;
        const last = i === path.length - 1;
        best = this.at((last && value && pair.value !== null ? pair.value : pair.key) as Node);
        cur = pair.value;
      } else if (isSeq(cur) && typeof seg === 'number') {
        const item = cur.items[seg];
        if (item === undefined) break;
        best = this.at(item as Node);
        cur = item;
      } else {
        break;
      }
    }
    return best;
  }

  /**
   * The text a scalar was written as, at `path` (keys and indexes from the root), following an alias to its anchor;
   * undefined when there is no scalar there.
   */
  scalarSource(path: readonly PropertyKey[]): string | undefined {
    let cur: unknown = this.doc.contents;
    for (const seg of path) {
      if (isAlias(cur)) cur = cur.resolve(this.doc);
      if (isMap(cur)) cur = cur.items.find((p) => isScalar(p.key) && String(p.key.value) === String(seg))?.value;
      else if (isSeq(cur) && typeof seg === 'number') cur = cur.items[seg];
      else return undefined;
    }
    if (isAlias(cur)) cur = cur.resolve(this.doc);
    return isScalar(cur) ? cur.source : undefined;
  }
}

function firstLine(s: string): string {
  return s.split('\n')[0] ?? s;
}

/** The plain value of a YAML node (maps to objects, sequences to arrays, scalars to their values). */
export function plain(node: unknown): unknown {
  if (node === null || node === undefined) return undefined;
  if (isScalar(node) || isMap(node) || isSeq(node)) return node.toJSON();
  return undefined;
}
