import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { BACKPLANE_BIN, launcherTarget } from '../../bench/tools/backplane.js';

/** How the bench tells whether Backplane is built: from what bin/backplane.js loads, whatever its module format. */

describe('bench: the Backplane launcher', () => {
  test('an ES module launcher and a CommonJS one both name their built file; comments do not count', () => {
    assert.equal(launcherTarget("#!/usr/bin/env node\n// import '../old.mjs'\nimport '../dist/backplane.mjs';\n"), '../dist/backplane.mjs');
    assert.equal(launcherTarget("#!/usr/bin/env node\n// was: import '../dist/backplane.mjs'\nrequire('../dist/backplane.cjs');\n"), '../dist/backplane.cjs');
    assert.equal(launcherTarget('#!/usr/bin/env node\nconsole.log(1);\n'), undefined);
  });

  test("the repository's launcher names a file under dist/", () => {
    assert.match(launcherTarget(readFileSync(BACKPLANE_BIN, 'utf8')) ?? '', /^\.\.\/dist\/[\w.-]+\.(c|m)?js$/);
  });
});
