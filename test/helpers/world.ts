import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gatherFacts } from '../../src/facts.js';
import type { ResourceWorld } from '../../src/resources/types.js';
import { resourceStateDir } from '../../src/state-dir.js';

/** A real world for resources under test: real facts, a real (temporary) state directory. */
export function testWorld(opts: { provided?: readonly string[]; stateRoot?: string } = {}): ResourceWorld {
  const keys = new Set(opts.provided ?? []);
  const root = opts.stateRoot ?? mkdtempSync(join(tmpdir(), 'bp-state-'));
  const facts = gatherFacts();
  return {
    isProvided: (key) => keys.has(key),
    stateDir: (id) => resourceStateDir(root, id),
    facts: () => facts,
  };
}
