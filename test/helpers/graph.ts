import assert from 'node:assert/strict';
import { BackplaneError, ValidationErrors } from '../../src/errors.js';
import { parseGraphText } from '../../src/frontends/load.js';
import { buildGraph } from '../../src/graph/build.js';
import type { Edge, Graph } from '../../src/graph/graph.js';
import { resourceId, type ResourceId } from '../../src/graph/ids.js';
import { fileKind } from '../../src/resources/file.js';
import { builtinKinds } from '../../src/resources/builtin-kinds.js';
import { createRegistry } from '../../src/resources/registry.js';
import type { AnyResourceKind } from '../../src/resources/types.js';

/** Every kind the agent knows, `file` included whether or not the registry lists it yet. */
export const allKinds: readonly AnyResourceKind[] = builtinKinds.some((k) => k.kind === 'file')
  ? builtinKinds
  : [...builtinKinds, fileKind];

export const registry = createRegistry(allKinds);

/** The file name graphs built from text are said to come from; every error location names it. */
export const GRAPH_FILE = '/test/graph.yaml';

/** Parses and builds graph text (native or mgmt) the way `validate` and `run` do. */
export function build(text: string, file: string = GRAPH_FILE): Graph {
  return buildGraph(parseGraphText(file, text), registry);
}

/** The errors building `text` reports; fails the test when the text builds. */
export function buildErrors(text: string, file: string = GRAPH_FILE): readonly BackplaneError[] {
  try {
    build(text, file);
  } catch (err) {
    if (err instanceof ValidationErrors) {
      for (const e of err.errors) assert.ok(e instanceof BackplaneError);
      return err.errors;
    }
    throw err;
  }
  assert.fail(`expected the graph to be rejected:\n${text}`);
}

/** The only error building `text` reports. */
export function onlyError(text: string, file: string = GRAPH_FILE): BackplaneError {
  const errors = buildErrors(text, file);
  assert.equal(errors.length, 1, `expected one error, got:\n${errors.map((e) => e.format()).join('\n')}`);
  return errors[0] as BackplaneError;
}

export function id(kind: string, name: string): ResourceId {
  return resourceId(kind, name);
}

/** Edges as sortable text: `noop[a] -> noop[b]`, with ` notify` and ` auto` marks. */
export function edgeText(e: Edge): string {
  return `${e.from} -> ${e.to}${e.notify ? ' notify' : ''}${e.auto ? ' auto' : ''}`;
}

export function edgeTexts(g: Graph): string[] {
  return g.edges.map(edgeText).sort();
}

/** `file:line:col` of an error, or '' when it has no location. */
export function where(e: BackplaneError): string {
  return e.where === undefined ? '' : `${e.where.file}:${e.where.line}:${e.where.col}`;
}
