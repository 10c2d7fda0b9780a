import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { BackplaneError } from '../errors.js';
import { buildGraph, type KindRegistry } from '../graph/build.js';
import type { Graph } from '../graph/graph.js';
import type { RawGraph } from '../graph/raw.js';
import { isMgmtGraph, readMgmtGraph } from './yaml-mgmt.js';
import { readNativeGraph } from './yaml-native.js';
import { parseYamlDocument } from './document.js';

/** Parses graph text (native or mgmt YAML) into raw declarations; syntax errors stop here. */
export function parseGraphText(file: string, text: string): RawGraph {
  const doc = parseYamlDocument(file, text);
  return isMgmtGraph(doc) ? readMgmtGraph(doc) : readNativeGraph(doc);
}

/** Reads and validates a graph file. Throws ValidationErrors (input) or BackplaneError E_IO (unreadable file). */
export async function loadGraphFile(path: string, registry: KindRegistry): Promise<Graph> {
  const file = resolve(path);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new BackplaneError('E_IO', `cannot read graph file ${file}: ${code === 'ENOENT' ? 'no such file' : String(code ?? err)}`, {
      hint: code === 'ENOENT' ? 'check the path given to --file' : 'check the file permissions',
      cause: err,
    });
  }
  return buildGraph(parseGraphText(file, text), registry);
}
