// The build's stand-in modules (scripts/build.mjs): a module of Node's or of another of the CLI's scripts, loaded at
// the first read of one of its exports. Its own file so that test/cli/stand-in.test.ts runs the very code the build emits.

/**
 * The source of the stand-in module for `names`, the exports of the module `load` (an expression) gives, read on first use.
 *
 * A getter on the prototype per export, made when the export is first read: a proxy behind the prototype answers
 * a read of an export it has not seen (and makes its getter), `in`, and nothing else (a symbol, `then`,
 * `__esModule` are not exports, so reading them loads nothing). Made for every export up front, the getters were
 * ~460 accessor properties with a closure each at every start of the core (zod's stand-in alone ~260): an empty
 * run allocated 2,824 KB before, 2,547 KB after (sampled), 2,898 -> 2,816 page faults, 97.4 -> 95.5 ms (21 rounds
 * interleaved, load ~4). Once read, an export is a getter on the prototype as before: no proxy on the hot path.
 */
export function standIn(load, names) {
  return [
    'let real;',
    `const load = () => (real ??= ${load});`,
    'let names;',
    `const exported = (k) => (names ??= new Set(${JSON.stringify(names)})).has(k);`,
    'const getters = Object.create(new Proxy({}, {',
    '  get(_, k) {',
    '    if (!exported(k)) return undefined;',
    '    Object.defineProperty(getters, k, { enumerable: true, get: () => load()[k] });',
    '    return load()[k];',
    '  },',
    '  has: (_, k) => exported(k),',
    '}));',
    'module.exports = Object.create(getters);',
  ].join('\n');
}
