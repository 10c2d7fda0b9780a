import assert from 'node:assert/strict';
import { BackplaneError } from '../../src/errors.js';

/** The BackplaneError a promise rejects with; fails the test when it resolves or rejects with anything else. */
export async function rejection(p: Promise<unknown>): Promise<BackplaneError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof BackplaneError, `expected a BackplaneError, got ${String(err)}`);
    return err;
  }
  return assert.fail('expected the call to reject');
}
