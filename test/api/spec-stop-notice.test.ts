import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ValidationErrors } from '../../src/errors.js';
import { renderInstance } from '../../src/scheduler/render.js';
import { parseServiceText } from '../../src/scheduler/spec.js';
import { gatherFacts } from '../../src/facts.js';

const base = (run = '', env = ''): string => `name: web\ncount: 1\nrun:\n  cmd: [/bin/true]\n${env}${run}`;

test('run.stopNotice: a duration in the spec, stopNoticeMs in the task; 0 or none is no notice', () => {
  assert.equal(parseServiceText('s.yaml', base('  stopNotice: 2s\n'))[0]?.task.stopNoticeMs, 2000);
  assert.equal(parseServiceText('s.yaml', base('  stopNotice: 0\n'))[0]?.task.stopNoticeMs, undefined);
  assert.equal(parseServiceText('s.yaml', base())[0]?.task.stopNoticeMs, undefined);
  assert.throws(() => parseServiceText('s.yaml', base('  stopNotice: soon\n')), ValidationErrors);
});

test('BACKPLANE_API and BACKPLANE_TOKEN are the scheduler\'s: a spec may not set them, and the render puts them in the env', () => {
  for (const name of ['BACKPLANE_API', 'BACKPLANE_TOKEN']) {
    assert.throws(
      () => parseServiceText('s.yaml', base('', `  env: { ${name}: x }\n`)),
      (err: Error) => err instanceof ValidationErrors && new RegExp(`run\\.env\\.${name} is set by the scheduler`).test(err.message),
    );
  }
  const spec = parseServiceText('s.yaml', base())[0];
  assert.ok(spec !== undefined);
  const alloc = { id: 'web.0.00000001', service: 'web', index: 0, version: spec.version, host: 'h1', resources: spec.resources, ports: {}, createdAt: 0, reschedules: [] };
  const host = { name: 'h1', facts: gatherFacts(), labels: {} };
  const env = (r: ReturnType<typeof renderInstance>): Record<string, string> => r.resources[0]?.params['env'] as Record<string, string>;
  const withApi = env(renderInstance(spec, alloc, host, { api: { url: 'http://127.0.0.1:4000', token: 'ab'.repeat(32) } }));
  assert.equal(withApi['BACKPLANE_API'], 'http://127.0.0.1:4000');
  assert.equal(withApi['BACKPLANE_TOKEN'], 'ab'.repeat(32));
  assert.equal(env(renderInstance(spec, alloc, host))['BACKPLANE_API'], undefined);
});
