import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { ValidationErrors } from '../../src/errors.js';
import { loadGraphFile } from '../../src/frontends/load.js';
import { withTempDir } from '../helpers/engine.js';
import { registry } from '../helpers/graph.js';

/**
 * YAML keeps a `__proto__` key as an own property, but the frontends copy each resource's keys into a fresh params
 * object (`params[key] = value`), and that assignment set the copy's prototype: `content` then came from it, past
 * the schema's unknown-parameter check. It stays an own property now (setParam), an unknown parameter at its line.
 */
describe('a __proto__ key', () => {
  const cases: [string, string][] = [
    ['ours, as a parameter', 'resources:\n  - kind: file\n    name: DIR/x\n    __proto__:\n      content: "y"\n'],
    ['ours, in meta', 'resources:\n  - kind: file\n    name: DIR/x\n    meta:\n      __proto__: { retry: 3 }\n'],
    ["mgmt's", 'graph: g\nresources:\n  file:\n    - name: f\n      path: DIR/x\n      __proto__:\n        content: "y"\n'],
  ];
  for (const [what, yaml] of cases) {
    test(`is refused with its line: ${what}`, async () => {
      await withTempDir(async (dir) => {
        const file = join(dir, 'g.yaml');
        await writeFile(file, yaml.replaceAll('DIR', dir));
        await assert.rejects(loadGraphFile(file, registry), (err: unknown) => {
          assert.ok(err instanceof ValidationErrors, String(err));
          const line = yaml.split('\n').findIndex((l) => l.includes('__proto__')) + 1;
          assert.match(err.format(), new RegExp(`g\\.yaml:${line}:\\d+: [^\\n]*unknown (parameter|meta) "__proto__"`));
          return true;
        });
      });
    });
  }
});
