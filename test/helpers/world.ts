import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gatherFacts } from '../../src/facts.js';
import type { ResourceWorld } from '../../src/resources/types.js';
import { resourceStateDir } from '../../src/state-dir.js';

let sharedRoot: string | undefined;

/** One state root per test process, removed when the process exits. */
function processStateRoot(): string {
  if (sharedRoot === undefined) {
    const root = mkdtempSync(join(tmpdir(), 'bp-state-'));
    sharedRoot = root;
    process.once('exit', () => rmSync(root, { recursive: true, force: true }));
  }
  return sharedRoot;
}

/** A real world for resources under test: real facts, a real (temporary) state directory. */
export function testWorld(opts: { provided?: readonly string[]; stateRoot?: string } = {}): ResourceWorld {
  const keys = new Set(opts.provided ?? []);
  const root = opts.stateRoot ?? processStateRoot();
  const facts = gatherFacts();
  return {
    isProvided: (key) => keys.has(key),
    stateDir: (id) => resourceStateDir(root, id),
    facts: () => facts,
  };
}
