import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Member } from '../../src/backplanes/sdk.js';
import { applyReact, type AppWork } from '../../src/scheduler/apps.js';
import type { AppStateRecord } from '../../src/scheduler/records.js';

// What the controller takes from a backplane's answer: only what concerns its own object's live members and
// services, whatever the backplane (a third party's module) says.

function member(allocId: string, over: Partial<Member> = {}): Member {
  return { allocId, service: 'cache', index: 0, version: 'v1', host: 'h1', address: '10.0.0.1', ports: { redis: 20001 }, restarts: 0, hostAlive: true, fenced: false, stopping: false, ...over };
}

function work(members: Member[], prev?: AppStateRecord): AppWork {
  return {
    name: 'cache',
    kind: 'redis',
    deployedAt: 'd1',
    services: ['cache'],
    requested: new Map([['cache.1.bbbbbbbb', 'asked-1']]),
    ...(prev === undefined ? {} : { prev }),
    input: { now: 1000, object: { kind: 'redis', name: 'cache', params: {} }, deployedAt: 'd1', services: [], members },
  };
}

describe('applyReact', () => {
  const members = [member('cache.0.aaaaaaaa', { config: { role: 'primary', epoch: 1 } }), member('cache.1.bbbbbbbb', { index: 1, host: 'h2' }), member('cache.2.cccccccc', { index: 2, stopping: true })];

  it('takes configs only for its own live members, and only where they change', () => {
    const r = applyReact(
      work(members),
      { ok: true, output: { config: { 'cache.0.aaaaaaaa': { role: 'primary', epoch: 1 }, 'cache.1.bbbbbbbb': { role: 'replica', epoch: 1 }, 'cache.2.cccccccc': { role: 'primary' }, 'web.0.dddddddd': { role: 'primary' } } } },
      1000,
    );
    assert.deepEqual([...r.configs.keys()], ['cache.1.bbbbbbbb']);
  });

  it('keeps discovery entries to its own live members and their real ports', () => {
    const r = applyReact(
      work(members),
      { ok: true, output: { discovery: { primary: [{ allocId: 'cache.0.aaaaaaaa', port: 'redis' }, { allocId: 'cache.0.aaaaaaaa', port: 'ssh' }, { allocId: 'web.0.dddddddd', port: 'http' }, { allocId: 'cache.2.cccccccc', port: 'redis' }] } } },
      1000,
    );
    assert.deepEqual(r.record.discovery, { primary: [{ allocId: 'cache.0.aaaaaaaa', port: 'redis' }] });
    assert.equal(r.changed, true);
  });

  it('steers and scales only its own services', () => {
    const r = applyReact(work(members), { ok: true, output: { gates: { cache: { order: [1, 0] }, web: { hold: [0] } }, scale: { cache: 3, web: 10 } } }, 1000);
    assert.deepEqual(r.record.gates, { cache: { order: [1, 0] } });
    assert.deepEqual(
      r.asks.map((a) => [a.service, a.count]),
      [['cache', 3]],
    );
  });

  it('a failed call keeps the last state (members keep their roles), says so once, and records the error', () => {
    const prev: AppStateRecord = { name: 'cache', kind: 'redis', deployedAt: 'd1', updatedAt: 1, memory: { primary: 'cache.0.aaaaaaaa' }, discovery: { primary: [{ allocId: 'cache.0.aaaaaaaa', port: 'redis' }] }, gates: {} };
    const r = applyReact(work(members, prev), { ok: false, error: 'react threw: boom' }, 2000);
    assert.deepEqual(r.record.memory, prev.memory);
    assert.deepEqual(r.record.discovery, prev.discovery);
    assert.equal(r.record.error?.message, 'react threw: boom');
    assert.equal(r.configs.size, 0);
    assert.match(r.events[0]?.message ?? '', /backplane redis failed: react threw: boom/);
    const again = applyReact(work(members, r.record), { ok: false, error: 'react threw: boom' }, 3000);
    assert.equal(again.events.length, 0, 'the same error is not an event again');
    assert.equal(again.changed, false, 'nor a write');
    const back = applyReact(work(members, r.record), { ok: true, output: { memory: prev.memory } }, 4000);
    assert.equal(back.record.error, undefined);
    assert.match(back.events[0]?.message ?? '', /works again/);
  });

  it('runs only actions the member\'s spec declares, once per request id', () => {
    const ms = [member('cache.0.aaaaaaaa', { actions: ['bgsave'] }), member('cache.1.bbbbbbbb', { index: 1, actions: ['bgsave'] }), member('cache.2.dddddddd', { index: 2, actions: ['bgsave'], action: { name: 'bgsave', id: 'done-1', state: 'ok', at: 1 } })];
    const r = applyReact(
      work(ms),
      { ok: true, output: { exec: { 'cache.0.aaaaaaaa': { action: 'rm-rf', id: 'x1' }, 'cache.1.bbbbbbbb': { action: 'bgsave', id: 'asked-1' }, 'cache.2.dddddddd': { action: 'bgsave', id: 'done-1' } } } },
      1000,
    );
    assert.equal(r.actions.size, 0, 'an undeclared action is refused; an asked or answered one is not asked again');
    assert.match(r.events.map((e) => e.message).join('\n'), /asked to run "rm-rf" in cache\.0\.aaaaaaaa, which its spec does not declare: refused/);
    const again = applyReact(work(ms), { ok: true, output: { exec: { 'cache.0.aaaaaaaa': { action: 'bgsave', id: 'x2' }, 'cache.1.bbbbbbbb': { action: 'bgsave', id: 'asked-2' } } } }, 1000);
    assert.deepEqual([...again.actions.keys()].sort(), ['cache.0.aaaaaaaa', 'cache.1.bbbbbbbb']);
  });

  it('an unchanged answer is not a write', () => {
    const first = applyReact(work(members), { ok: true, output: { status: { summary: 'ok' }, memory: { a: 1 } } }, 1000);
    const second = applyReact(work(members, first.record), { ok: true, output: { status: { summary: 'ok' }, memory: { a: 1 } } }, 5000);
    assert.equal(second.changed, false);
  });
});
