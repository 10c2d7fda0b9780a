import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BackplaneError, ValidationErrors } from '../../src/errors.js';
import { parseServiceText, serviceJsonSchema } from '../../src/scheduler/spec.js';
import type { ServiceSpec } from '../../src/scheduler/types.js';

/** `scale: { min, max }` in a service spec: read, checked with file:line, and kept out of the version. */

const FILE = '/srv/specs/worker.yaml';

const spec = (count: string, scale: string): string => `name: worker
${count}run:
  cmd: [/usr/bin/worker]
${scale}`;

function one(text: string): ServiceSpec {
  const [s] = parseServiceText(FILE, text);
  assert.ok(s !== undefined);
  return s;
}

function refused(text: string): BackplaneError {
  try {
    parseServiceText(FILE, text);
  } catch (err) {
    if (!(err instanceof ValidationErrors)) throw err;
    assert.equal(err.errors.length, 1, err.errors.map((e) => e.format()).join('\n'));
    const [e] = err.errors;
    assert.ok(e !== undefined);
    assert.equal(e.where?.file, FILE);
    return e;
  }
  assert.fail('expected the spec to be refused');
}

describe('scale bounds in a service spec', () => {
  test('read into ServiceSpec.scale', () => {
    assert.deepEqual(one(spec('count: 2\n', 'scale: { min: 1, max: 4 }\n')).scale, { min: 1, max: 4 });
    assert.equal(one(spec('count: 2\n', '')).scale, undefined);
  });

  test('not part of the version: changing the bounds rolls nothing', () => {
    const a = one(spec('count: 2\n', 'scale: { min: 1, max: 4 }\n'));
    const b = one(spec('count: 2\n', 'scale: { min: 2, max: 9 }\n'));
    const c = one(spec('count: 2\n', ''));
    assert.equal(a.version, b.version);
    assert.equal(a.version, c.version);
  });

  test('the operator\'s count must lie within the bounds: refused at count\'s line', () => {
    const text = spec('count: 7\n', 'scale:\n  min: 1\n  max: 4\n');
    const e = refused(text);
    assert.match(e.message, /^count \(7\) is outside the scale bounds 1\.\.4$/);
    assert.match(e.hint ?? '', /must lie within scale\.min\.\.scale\.max/);
    assert.equal(e.where?.line, 2);
    const low = refused(spec('count: 0\n', 'scale: { min: 1, max: 4 }\n'));
    assert.match(low.message, /count \(0\) is outside the scale bounds 1\.\.4/);
  });

  test('the default count outside the bounds: refused at scale', () => {
    const e = refused(spec('', 'scale: { min: 2, max: 4 }\n'));
    assert.match(e.message, /count \(1, the default\) is outside the scale bounds 2\.\.4/);
    assert.equal(e.where?.line, 4);
  });

  test('min above max: refused at min', () => {
    const e = refused(spec('count: 3\n', 'scale:\n  max: 2\n  min: 5\n'));
    assert.match(e.message, /scale\.min \(5\) is more than scale\.max \(2\)/);
    assert.equal(e.where?.line, 7);
  });

  test('max above 100000, a fraction, a missing bound, an unknown key: refused with the line', () => {
    const big = refused(spec('count: 3\n', 'scale:\n  min: 1\n  max: 100001\n'));
    assert.match(big.message, /scale\.max is at most 100000/);
    assert.equal(big.where?.line, 7);
    assert.match(refused(spec('count: 3\n', 'scale: { min: 1.5, max: 4 }\n')).message, /scale\.min is a whole number/);
    assert.match(refused(spec('count: 3\n', 'scale: { min: 1 }\n')).message, /scale\.max is required/);
    const unknown = refused(spec('count: 3\n', 'scale:\n  min: 1\n  max: 4\n  maxx: 5\n'));
    assert.match(unknown.message, /maxx/);
    assert.equal(unknown.where?.line, 8);
  });

  test('in the JSON Schema for editors', () => {
    const s = JSON.stringify(serviceJsonSchema());
    assert.match(s, /"scale":\{/);
  });
});
