import assert from 'node:assert/strict';
import { test } from 'node:test';
import { standIn } from '../../scripts/stand-in.mjs';

/**
 * The build's stand-in modules (scripts/stand-in.mjs): a module of Node's, or of another of the CLI's scripts, that
 * loads at the first read of one of its exports. Run here as the bundle runs it: CommonJS, then read through
 * esbuild's interop (a copy of the module's own properties on an object with the same prototype).
 */
function make(names: readonly string[]): { module: object; loads: () => number; proto: object } {
  let loads = 0;
  const real = { readFile: (): string => 'read', constants: { O_RDONLY: 0 }, then: 'real then' };
  const mod = { exports: {} as object };
  // The build's generated source, run as the bundle runs it.
  // eslint-disable-next-line @typescript-eslint/no-implied-eval
  const run = new Function('module', 'loadReal', standIn('loadReal()', names)) as (module: { exports: object }, loadReal: () => object) => void;
  run(mod, () => {
    loads++;
    return real;
  });
  // esbuild's __toESM: a new object on the module's prototype, with the module's own properties (none) copied.
  const proto = Object.getPrototypeOf(mod.exports) as object;
  const module = Object.assign(Object.create(proto) as object, mod.exports);
  return { module, loads: () => loads, proto };
}

test('a stand-in loads its module at the first read of an export, not before, and gives its exports', () => {
  const { module, loads } = make(['readFile', 'constants']);
  assert.equal(loads(), 0, 'made and imported: nothing loaded yet');
  const m = module as { readFile: () => string; constants: { O_RDONLY: number } };
  assert.equal(m.readFile(), 'read');
  assert.equal(loads(), 1);
  assert.deepEqual(m.constants, { O_RDONLY: 0 });
  assert.equal(m.readFile(), 'read');
  assert.equal(loads(), 1, 'loaded once');
  assert.ok('readFile' in module && 'constants' in module);
  assert.deepEqual(Object.keys(module), []);
});

test('what is not an export loads nothing: then (an awaited module), __esModule (interop), symbols, `in`', async () => {
  const { module, loads } = make(['readFile']);
  const m = module as Record<string | symbol, unknown>;
  assert.equal(m['then'], undefined);
  assert.equal(m['__esModule'], undefined);
  assert.equal(m[Symbol.toStringTag], undefined);
  assert.equal(m['nope'], undefined);
  assert.ok(!('nope' in module));
  assert.ok('readFile' in module);
  assert.equal(await Promise.resolve(module), module, 'an awaited stand-in resolves to itself');
  assert.equal(loads(), 0);
});

test('the getter of an export is made at its first read, not for every export up front (~460 at every start)', () => {
  const { module, proto } = make(['readFile', 'constants']);
  assert.deepEqual(Object.getOwnPropertyNames(proto), [], 'a getter per export before any was read');
  void (module as { readFile: unknown }).readFile;
  assert.deepEqual(Object.getOwnPropertyNames(proto), ['readFile']);
  const d = Object.getOwnPropertyDescriptor(proto, 'readFile');
  assert.equal(typeof d?.get, 'function', 'a read export is a getter on the prototype: no proxy on the hot path');
});
