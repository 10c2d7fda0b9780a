import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { CollectDecl, GraphFn, GraphModule, ResourceDecl } from '../../src/api.js';

/*
 * The TypeScript API's promise is that the editor catches mistakes. These declarations are checked by `tsc` in
 * `npm test` (the typecheck step): each @ts-expect-error must really be an error, or the build fails.
 */
const ok: GraphFn = ({ host, facts }): GraphModule => ({
  resources: [
    { kind: 'file', name: `/srv/${host}`, type: 'directory', mode: '0755' },
    { kind: 'exec', name: 'e', cmd: ['true'], require: `file[/srv/${host}]` },
    { kind: 'svc', name: 'w', cmd: ['/bin/sleep', String(facts.cpus)], health: { tcp: '127.0.0.1:80' } },
    { kind: 'pkg', name: 'nginx' },
    { kind: 'template', name: '/etc/x', template: '{{ facts.hostname }}' },
  ],
  collect: [
    { kind: 'file', set: { path: '/srv/in/{basename}' }, take: ['content', 'mode'] },
    { kind: 'pkg', from: ['build1'], take: ['name'] },
  ],
});

// @ts-expect-error: a misspelt parameter
const typo: ResourceDecl = { kind: 'file', name: '/x', contnt: 'hello' };
// @ts-expect-error: a wrong type
const wrongType: ResourceDecl = { kind: 'file', name: '/x', mode: true };
// @ts-expect-error: an unknown kind
const unknownKind: ResourceDecl = { kind: 'fiel', name: '/x' };
// @ts-expect-error: exec needs cmd
const missing: ResourceDecl = { kind: 'exec', name: 'e' };
// @ts-expect-error: take names parameters of the rule's kind
const badTake: CollectDecl = { kind: 'file', take: ['contnet'] };
// @ts-expect-error: a relation is not a parameter to take
const relTake: CollectDecl = { kind: 'file', take: ['require'] };

test('the typed API compiles for valid graphs and rejects mistakes at type-check time', async () => {
  const g = await ok({ host: 'h', facts: { hostname: 'h', fqdn: 'h', os: { platform: 'linux', release: '', arch: 'x64' }, cpus: 2, memory: { total: 1, free: 1 }, interfaces: {}, ipv4: '127.0.0.1' }, collected: [], services: {} });
  assert.equal(g.resources.length, 5);
  assert.equal([typo, wrongType, unknownKind, missing, badTake, relTake].length, 6);
});
